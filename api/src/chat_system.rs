//! Reads from the chat-system: for seeding counters (the highest chat
//! number of an application, the highest message number of a chat, a
//! message's revision; only `numbers` asks, on a counter miss), and the clients' reads the api
//! passes through (`reads.rs`).

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ChatSystemError {
    /// Without its URL, which holds the application token (a credential):
    /// the error goes to the log.
    #[error("chat-system unreachable")]
    Unreachable(#[source] reqwest::Error),
    #[error("chat-system answered {0}")]
    Status(StatusCode),
    #[error("chat-system did not answer within {0:?}")]
    TimedOut(Duration),
}

impl From<reqwest::Error> for ChatSystemError {
    fn from(error: reqwest::Error) -> Self {
        Self::Unreachable(error.without_url())
    }
}

#[derive(Clone)]
pub(crate) struct ChatSystem {
    client: reqwest::Client,
    /// For the passed-through reads: no total timeout, which would cut a
    /// long body; the answer's start is bounded by `timeout`, and each
    /// read of its body by it too.
    streaming: reqwest::Client,
    timeout: Duration,
    base: Url,
}

#[derive(Deserialize)]
struct Application {
    last_chat_number: i64,
}

#[derive(Deserialize)]
struct Chat {
    last_message_number: i64,
}

#[derive(Deserialize)]
struct Message {
    revision: i64,
}

impl ChatSystem {
    pub(crate) fn new(config: &shared::config::ChatSystem) -> anyhow::Result<Self> {
        let base = Url::parse(&config.chat_system_url)
            .map_err(|error| anyhow::anyhow!("CHAT_SYSTEM_URL is not a URL: {error}"))?;
        let timeout = Duration::from_millis(config.chat_system_timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()?;
        let streaming = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .no_proxy()
            .build()?;
        Ok(Self {
            client,
            streaming,
            timeout,
            base,
        })
    }

    /// A client's read passed through: `GET` of `segments` (decoded; they
    /// are encoded again here) with `query` as the client sent it. The
    /// chat-system's status, content type and body, the body streamed.
    pub(crate) async fn pass_through(
        &self,
        segments: &[String],
        query: Option<&str>,
    ) -> Result<warp::reply::Response, ChatSystemError> {
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let mut url = self.url(&segments);
        url.set_query(query);
        let sent = self.streaming.get(url).send();
        let response = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| ChatSystemError::TimedOut(self.timeout))??;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .cloned();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .cloned();
        let (chunks, body) =
            futures::channel::mpsc::channel::<Result<warp::hyper::body::Bytes, reqwest::Error>>(4);
        tokio::spawn(forward(response, chunks));
        let mut reply = warp::reply::Reply::into_response(warp::reply::stream(body));
        *reply.status_mut() = warp::http::StatusCode::from_u16(status.as_u16())
            .unwrap_or(warp::http::StatusCode::BAD_GATEWAY);
        for (name, value) in [
            (warp::http::header::CONTENT_TYPE, content_type),
            (warp::http::header::RETRY_AFTER, retry_after),
        ] {
            if let Some(value) =
                value.and_then(|value| warp::http::HeaderValue::from_bytes(value.as_bytes()).ok())
            {
                reply.headers_mut().insert(name, value);
            }
        }
        Ok(reply)
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        shared::config::endpoint(&self.base, segments)
    }

    /// `None` when the chat-system does not know the application.
    pub(crate) async fn last_chat_number(
        &self,
        token: &str,
    ) -> Result<Option<i64>, ChatSystemError> {
        let application: Option<Application> = self.get(self.url(&["applications", token])).await?;
        Ok(application.map(|application| application.last_chat_number))
    }

    /// `None` when the chat-system does not know the application or chat.
    pub(crate) async fn last_message_number(
        &self,
        token: &str,
        chat: i64,
    ) -> Result<Option<i64>, ChatSystemError> {
        let chat = chat.to_string();
        let chat: Option<Chat> = self
            .get(self.url(&["applications", token, "chats", &chat]))
            .await?;
        Ok(chat.map(|chat| chat.last_message_number))
    }

    /// The revision of a stored message (0: never edited); `None` when
    /// the chat-system does not know the application, chat or message.
    pub(crate) async fn revision(
        &self,
        token: &str,
        chat: i64,
        message: i64,
    ) -> Result<Option<i64>, ChatSystemError> {
        let (chat, message) = (chat.to_string(), message.to_string());
        let url = self.url(&["applications", token, "chats", &chat, "messages", &message]);
        let message: Option<Message> = self.get(url).await?;
        Ok(message.map(|message| message.revision))
    }

    /// For `/readyz`: ready, and the largest request body it takes when it
    /// tells (`max_body_bytes`).
    pub(crate) async fn ping(&self) -> Result<Option<u64>, ChatSystemError> {
        #[derive(Deserialize)]
        struct Ready {
            max_body_bytes: Option<u64>,
        }
        let response = self.client.get(self.url(&["readyz"])).send().await?;
        match response.status() {
            status if status.is_success() => Ok(response
                .json::<Ready>()
                .await
                .ok()
                .and_then(|ready| ready.max_body_bytes)),
            status => Err(ChatSystemError::Status(status)),
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
    ) -> Result<Option<T>, ChatSystemError> {
        let response = self.client.get(url).send().await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(response.json().await?)),
            status => Err(ChatSystemError::Status(status)),
        }
    }
}

/// Copies `response`'s body into `chunks` as it arrives; a failure mid-way
/// ends the client's body with an error (its connection is cut, as the
/// chat-system's was).
async fn forward(
    mut response: reqwest::Response,
    mut chunks: futures::channel::mpsc::Sender<Result<warp::hyper::body::Bytes, reqwest::Error>>,
) {
    use futures::SinkExt;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => return,
            Err(error) => Err(error.without_url()),
        };
        let failed = chunk.is_err();
        if chunks.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_error_names_no_token() {
        let settings = shared::config::ChatSystem {
            // Nothing listens on port 1.
            chat_system_url: "http://127.0.0.1:1".into(),
            chat_system_timeout_ms: 500,
        };
        let chat_system = ChatSystem::new(&settings).unwrap();
        let token = "5f0c9e0a7b3c4d5e8f1a2b3c4d5e6f70";

        let error = chat_system.last_chat_number(token).await.unwrap_err();

        let logged = shared::telemetry::Chain(&error).to_string();
        assert!(logged.starts_with("chat-system unreachable"), "{logged}");
        assert!(!logged.contains(token), "{logged}");
        assert!(!logged.contains("5f0c9e"), "{logged}");
    }
}

//! The chat-system's HTTP contract (`docs/chat-system.openapi.yaml`), both
//! sides of it: the types the chat-system answers and takes, and the one
//! client the api (seeding counters, passing reads through) and the worker
//! (bulk writes) reach it with.
//!
//! API boundary: what is here is the wire. A field or result word changes
//! here, for both sides at once, or not at all.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::config;
use crate::secret::Secret;

/// The path of the bulk write.
pub const RECORDS_PATH: &str = "records";

/// Bytes of a record in the chat-system's bulk write besides its message:
/// kind, token (at most 128 bytes), numbers, job id and trace context, with
/// room to spare.
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// Bytes of the bulk write's envelope, `{"records":[` and `]}`.
pub const BULK_ENVELOPE_BYTES: usize = 16;

/// The most bytes one record can take in a bulk write, for messages of at
/// most `max_message_bytes` bytes: JSON writes a control character as
/// `\u00XX`, six bytes for one.
pub fn largest_record(max_message_bytes: usize) -> usize {
    max_message_bytes * 6 + RECORD_OVERHEAD_BYTES
}

/// One record of the bulk write, `POST /records`. `S` is the string type:
/// the worker sends borrowed `&str`s, the chat-system takes owned
/// `String`s. `job_id` and `traceparent` only go to the record's span.
#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "lowercase",
    bound(deserialize = "S: Deserialize<'de>")
)]
pub enum BulkRecord<S> {
    Chat {
        token: S,
        #[serde(deserialize_with = "integer")]
        number: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<S>,
    },
    Message {
        token: S,
        #[serde(deserialize_with = "integer")]
        chat: i64,
        #[serde(deserialize_with = "integer")]
        number: i64,
        body: S,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<S>,
    },
    /// A new body for message `message`, as its revision `revision`.
    Edit {
        token: S,
        #[serde(deserialize_with = "integer")]
        chat: i64,
        #[serde(deserialize_with = "integer")]
        message: i64,
        #[serde(deserialize_with = "integer")]
        revision: i64,
        body: S,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<S>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<S>,
    },
}

impl<S> BulkRecord<S> {
    /// The job id and trace context the record carries.
    pub fn trace(&self) -> (Option<&S>, Option<&S>) {
        let (Self::Chat {
            job_id,
            traceparent,
            ..
        }
        | Self::Message {
            job_id,
            traceparent,
            ..
        }
        | Self::Edit {
            job_id,
            traceparent,
            ..
        }) = self;
        (job_id.as_ref(), traceparent.as_ref())
    }
}

/// The body of `POST /records`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Deserialize<'de>"))]
pub struct BulkRequest<S> {
    pub records: Vec<BulkRecord<S>>,
}

/// A JSON integer, also written with a zero fraction (`130.0`), which
/// JSON Schema's `integer` allows.
fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() < 9.2e18 => Ok(float as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a 64-bit integer"
        ))),
    }
}

/// What became of one record of a bulk write, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Written {
    /// Stored now (the single `PUT`'s 201).
    Created,
    /// Stored before with the same content: a redelivery (200).
    Exists,
    /// An edit below the stored revision: its body was current once, in
    /// revision order (200).
    Superseded,
    /// The number (or revision) is stored with another content (409).
    Conflict,
    UnknownApplication,
    /// The chat is not stored (yet: its own job may be on its way).
    UnknownChat,
    /// The message is not stored (yet), for an edit.
    UnknownMessage,
    /// The record cannot be stored as it is (400).
    Invalid,
    /// A word this side does not know (a newer chat-system): judged by
    /// its status.
    #[serde(other)]
    Other,
}

impl Written {
    /// The word, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Exists => "exists",
            Self::Superseded => "superseded",
            Self::Conflict => "conflict",
            Self::UnknownApplication => "unknown_application",
            Self::UnknownChat => "unknown_chat",
            Self::UnknownMessage => "unknown_message",
            Self::Invalid => "invalid",
            Self::Other => "other",
        }
    }

    /// Whether the record is stored.
    pub fn is_stored(self) -> bool {
        matches!(self, Self::Created | Self::Exists | Self::Superseded)
    }
}

/// A record's result: `status` as its single `PUT` would answer it,
/// `result` in words, and the error's text for a failure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordResult {
    pub status: u16,
    pub result: Written,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /records`: a result per record, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct BulkAnswer {
    pub results: Vec<RecordResult>,
}

/// `GET /applications/{token}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Application {
    pub token: String,
    pub name: String,
    pub chats_count: i64,
    /// What the api seeds the chat counter from.
    pub last_chat_number: i64,
}

/// `GET /applications/{token}/chats/{number}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chat {
    pub number: i64,
    pub messages_count: i64,
    /// What the api seeds the chat's message counter from.
    pub last_message_number: i64,
}

/// `GET /applications/{token}/chats/{chat}/messages/{number}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub number: i64,
    pub body: String,
    /// 0 until edited, then the revision of `body`; what the api seeds the
    /// message's revision counter from.
    pub revision: i64,
    /// When an edit last changed `body` (RFC 3339, UTC); null if never.
    pub updated_at: Option<String>,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub status: String,
    /// The largest request body it takes.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatSystemError {
    /// Without its URL, which can hold an application token (a
    /// credential): the error goes to the log.
    #[error("chat-system unreachable")]
    Unreachable(#[source] Arc<reqwest::Error>),
    #[error("chat-system answered {status}")]
    Status { status: StatusCode, body: String },
    #[error("chat-system did not answer within {0:?}")]
    TimedOut(Duration),
}

impl From<reqwest::Error> for ChatSystemError {
    fn from(error: reqwest::Error) -> Self {
        Self::Unreachable(Arc::new(error.without_url()))
    }
}

/// The client of the chat-system; cheap to clone.
#[derive(Clone)]
pub struct ChatSystem {
    /// Every request but the streamed reads: bounded by `timeout` in all.
    client: reqwest::Client,
    /// For the reads passed through: no total timeout, which would cut a
    /// long body; each read of it is bounded by `timeout`.
    streaming: reqwest::Client,
    timeout: Duration,
    base: Url,
    /// The bearer token writes carry (`CHAT_SYSTEM_WRITE_TOKEN`).
    credential: Option<Secret>,
}

impl ChatSystem {
    pub fn new(settings: &config::ChatSystem, credential: Option<Secret>) -> anyhow::Result<Self> {
        let base = Url::parse(&settings.chat_system_url)
            .map_err(|error| anyhow::anyhow!("CHAT_SYSTEM_URL is not a URL: {error}"))?;
        let timeout = Duration::from_millis(settings.chat_system_timeout_ms);
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
            credential,
        })
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        config::endpoint(&self.base, segments)
    }

    /// The application; `None` when the chat-system does not know it.
    pub async fn application(&self, token: &str) -> Result<Option<Application>, ChatSystemError> {
        self.read(&["applications", token]).await
    }

    /// The chat; `None` when the chat-system does not know it or its
    /// application.
    pub async fn chat(&self, token: &str, chat: i64) -> Result<Option<Chat>, ChatSystemError> {
        self.read(&["applications", token, "chats", &chat.to_string()])
            .await
    }

    /// The message; `None` when the chat-system does not know it, its
    /// chat or its application.
    pub async fn message(
        &self,
        token: &str,
        chat: i64,
        message: i64,
    ) -> Result<Option<Message>, ChatSystemError> {
        let (chat, message) = (chat.to_string(), message.to_string());
        self.read(&["applications", token, "chats", &chat, "messages", &message])
            .await
    }

    /// `/readyz`, when it answers ready.
    pub async fn ready(&self) -> Result<Ready, ChatSystemError> {
        self.read(&["readyz"])
            .await?
            .ok_or(ChatSystemError::Status {
                status: StatusCode::NOT_FOUND,
                body: String::new(),
            })
    }

    /// `POST /records` of `body`, a [`BulkRequest`] already in JSON (the
    /// worker builds it from records it serialized once): the result of
    /// each record, or the failure of the whole request.
    pub async fn store_records(&self, body: Vec<u8>) -> Result<BulkAnswer, ChatSystemError> {
        let mut request = self
            .client
            .post(self.url(&[RECORDS_PATH]))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(credential) = &self.credential {
            request = request.bearer_auth(credential.expose());
        }
        let response = request.send().await?;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            return Err(ChatSystemError::Status { status, body });
        }
        Ok(response.json().await?)
    }

    /// `GET` of `segments` with `query`, the answer's start bounded by the
    /// timeout and its body left to stream (each read of it bounded too).
    pub async fn get_streaming(
        &self,
        segments: &[&str],
        query: Option<&str>,
    ) -> Result<reqwest::Response, ChatSystemError> {
        let mut url = self.url(segments);
        url.set_query(query);
        tokio::time::timeout(self.timeout, self.streaming.get(url).send())
            .await
            .map_err(|_| ChatSystemError::TimedOut(self.timeout))?
            .map_err(ChatSystemError::from)
    }

    /// A read: `None` for a 404, the decoded answer for a 2xx.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<Option<T>, ChatSystemError> {
        let response = self.client.get(self.url(segments)).send().await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => Ok(Some(response.json().await?)),
            status => Err(ChatSystemError::Status {
                status,
                body: response.text().await.unwrap_or_default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_result_word_is_other_not_an_undecodable_answer() {
        let answer: BulkAnswer = serde_json::from_str(
            r#"{"results":[{"status":201,"result":"created"},{"status":202,"result":"queued"}]}"#,
        )
        .unwrap();
        assert_eq!(answer.results[0].result, Written::Created);
        assert_eq!(answer.results[1].result, Written::Other);
        for word in [Written::Created, Written::UnknownMessage, Written::Invalid] {
            let json = serde_json::to_string(&word).unwrap();
            assert_eq!(json, format!("\"{}\"", word.as_str()));
        }
    }

    #[test]
    fn a_record_sent_borrowed_is_taken_owned_with_its_numbers() {
        let sent = BulkRecord::Edit {
            token: "t",
            chat: 2,
            message: 3,
            revision: 4,
            body: "new",
            job_id: Some("j"),
            traceparent: None,
        };
        let json = serde_json::to_string(&sent).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"edit","token":"t","chat":2,"message":3,"revision":4,"body":"new","job_id":"j"}"#
        );
        let taken: BulkRecord<String> =
            serde_json::from_str(&json.replace(r#""chat":2"#, r#""chat":2.0"#)).unwrap();
        assert!(matches!(
            taken,
            BulkRecord::Edit {
                chat: 2,
                revision: 4,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_error_names_no_token() {
        let settings = config::ChatSystem {
            // Nothing listens on port 1.
            chat_system_url: "http://127.0.0.1:1".into(),
            chat_system_timeout_ms: 500,
        };
        let chat_system = ChatSystem::new(&settings, None).unwrap();
        let token = "5f0c9e0a7b3c4d5e8f1a2b3c4d5e6f70";

        let error = chat_system.application(token).await.unwrap_err();

        let logged = crate::telemetry::Chain(&error).to_string();
        assert!(logged.starts_with("chat-system unreachable"), "{logged}");
        assert!(!logged.contains("5f0c9e"), "{logged}");
    }
}

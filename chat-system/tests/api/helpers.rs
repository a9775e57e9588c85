use serde_json::{Value, json};
use testkit::TestChatSystem;

pub(crate) struct TestApp {
    pub(crate) chat_system: TestChatSystem,
    pub(crate) client: reqwest::Client,
}

/// A status and a parsed JSON body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<String>,
}

impl Answer {
    /// The `error` text of a JSON error body, panicking when there is none.
    pub(crate) fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.body))
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    from(TestChatSystem::start().await)
}

pub(crate) fn from(chat_system: TestChatSystem) -> TestApp {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    TestApp {
        chat_system,
        client,
    }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.chat_system.url)
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the chat-system answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().expect("an ASCII header").to_owned());
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("a JSON body, got {status} {text:?}"));
        Answer {
            status,
            body,
            retry_after,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(self.url(path))).await
    }

    pub(crate) async fn create_application(&self, name: &str) -> String {
        let answer = self
            .send(
                self.client
                    .post(self.url("/applications"))
                    .json(&json!({ "name": name })),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["token"].as_str().expect("a token").to_owned()
    }

    pub(crate) async fn put_chat(&self, token: &str, chat: i64) -> Answer {
        self.send(
            self.client
                .put(self.url(&format!("/applications/{token}/chats/{chat}"))),
        )
        .await
    }

    pub(crate) async fn put_message(
        &self,
        token: &str,
        chat: i64,
        message: i64,
        body: &str,
    ) -> Answer {
        let path = format!("/applications/{token}/chats/{chat}/messages/{message}");
        self.send(
            self.client
                .put(self.url(&path))
                .json(&json!({ "body": body })),
        )
        .await
    }

    /// An application with chats `1..=chats`.
    pub(crate) async fn application_with_chats(&self, chats: i64) -> String {
        let token = self.create_application("test").await;
        for chat in 1..=chats {
            assert_eq!(self.put_chat(&token, chat).await.status, 201);
        }
        token
    }
}

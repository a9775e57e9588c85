//! The real chat-system, on port 0 with a database of its own, for the
//! suites that need an upstream to talk to, and the requests every suite
//! makes of it (create an application, store or read records).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use crate::http::{self, Answer};
use crate::{Running, TcpProxy, TestDatabase};

/// A running chat-system; stops and drops its database when dropped. Its
/// credentials are random per instance; the request helpers send them.
pub struct TestChatSystem {
    pub address: SocketAddr,
    pub url: String,
    pub client: reqwest::Client,
    /// `CHAT_SYSTEM_WRITE_TOKEN`: the writes' bearer token.
    pub write_token: String,
    /// `CHAT_SYSTEM_ADMIN_TOKEN`: the application routes' bearer token.
    pub admin_token: String,
    /// A client sending the write credential with every request.
    pub writer: reqwest::Client,
    /// A client sending the admin credential with every request.
    pub admin: reqwest::Client,
    /// The proxy between the chat-system and PostgreSQL, when asked for.
    pub database_proxy: Option<TcpProxy>,
    server: Running,
    // Declared last: dropped after the server stopped.
    pub database: TestDatabase,
}

impl TestChatSystem {
    /// Starts the chat-system and waits until it is ready.
    pub async fn start() -> Self {
        Self::start_with(false, &[]).await
    }

    /// Starts it with PostgreSQL behind a [`TcpProxy`] the test can cut, and
    /// extra command-line flags.
    pub async fn start_with(proxy_database: bool, flags: &[&str]) -> Self {
        let database = TestDatabase::new();
        let database_proxy = if proxy_database {
            Some(TcpProxy::start(TestDatabase::server_address()).await)
        } else {
            None
        };
        let database_url = match &database_proxy {
            Some(proxy) => database.url_via(proxy.address()),
            None => database.url(),
        };
        let write_token = format!("write-{}", uuid::Uuid::new_v4().simple());
        let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let mut arguments = vec![
            "chat-system",
            "--addr",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--chat-system-write-token",
            &write_token,
            "--chat-system-admin-token",
            &admin_token,
        ];
        // Patient, as the api's and worker's tests are: beside other suites
        // on two cores, a write may wait seconds for a pooled connection,
        // and a 503 would fail a test about something else. A test about
        // the wait sets its own.
        if !flags.contains(&"--database-acquire-timeout-ms") {
            arguments.extend(["--database-acquire-timeout-ms", "10000"]);
        }
        arguments.extend_from_slice(flags);
        let mut config = chat_system::Config::parse_from(arguments);
        config.database_url = database_url;
        let application = chat_system::Application::build(config)
            .await
            .expect("building the chat-system");
        let address = application.address();
        let server = Running::spawn("the chat-system", |shutdown| {
            application.run_until_stopped(shutdown)
        });
        let chat_system = Self {
            address,
            url: format!("http://{address}"),
            client: http::client(),
            writer: http::client_with_bearer(&write_token),
            admin: http::client_with_bearer(&admin_token),
            write_token,
            admin_token,
            database_proxy,
            server,
            database,
        };
        chat_system.wait_until_ready().await;
        chat_system
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    async fn wait_until_ready(&self) {
        let readyz = self.url("/readyz");
        crate::eventually(
            "the chat-system to be ready",
            Duration::from_secs(30),
            || async {
                let response = self.client.get(&readyz).send().await.ok()?;
                response.status().is_success().then_some(())
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn get(&self, path: &str) -> Answer {
        http::send(self.client.get(self.url(path))).await
    }

    /// A new application's token.
    pub async fn create_application(&self, name: &str) -> String {
        let request = self
            .client
            .post(self.url("/applications"))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "name": name }));
        let answer = http::send(request).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body["token"].as_str().expect("a token").to_owned()
    }

    pub async fn put_chat(&self, token: &str, chat: i64) -> Answer {
        let path = format!("/applications/{token}/chats/{chat}");
        http::send(
            self.client
                .put(self.url(&path))
                .bearer_auth(&self.write_token),
        )
        .await
    }

    pub async fn put_message(&self, token: &str, chat: i64, number: i64, body: &str) -> Answer {
        let path = format!("/applications/{token}/chats/{chat}/messages/{number}");
        let request = self
            .client
            .put(self.url(&path))
            .bearer_auth(&self.write_token)
            .json(&json!({ "body": body }));
        http::send(request).await
    }

    /// `POST /records` of `records` (JSON values), with the write
    /// credential.
    pub async fn post_records(&self, records: serde_json::Value) -> Answer {
        let request = self
            .client
            .post(self.url("/records"))
            .bearer_auth(&self.write_token)
            .json(&json!({ "records": records }));
        http::send(request).await
    }

    /// Stores revision `revision` of message `message` (one record of
    /// `POST /records`); the record's result word (`created`, `exists`,
    /// `superseded`, `conflict`, `unknown_message` ...).
    pub async fn put_edit(
        &self,
        token: &str,
        chat: i64,
        message: i64,
        revision: i64,
        body: &str,
    ) -> String {
        let edit = json!({ "kind": "edit", "token": token, "chat": chat,
            "message": message, "revision": revision, "body": body });
        let answer = self.post_records(json!([edit])).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["results"][0]["result"]
            .as_str()
            .expect("a result")
            .to_owned()
    }

    /// `(revision, body)` of a stored message; `None` when it is not
    /// stored.
    pub async fn revision(&self, token: &str, chat: i64, message: i64) -> Option<(i64, String)> {
        let answer = self
            .get(&format!(
                "/applications/{token}/chats/{chat}/messages/{message}"
            ))
            .await;
        if answer.status == 404 {
            return None;
        }
        assert_eq!(answer.status, 200, "{}", answer.body);
        Some((
            answer.body["revision"].as_i64().expect("a revision"),
            answer.body["body"].as_str().expect("a body").to_owned(),
        ))
    }

    /// An application with chats `1..=chats` stored.
    pub async fn application_with_chats(&self, chats: i64) -> String {
        let token = self.create_application("test").await;
        for chat in 1..=chats {
            let answer = self.put_chat(&token, chat).await;
            assert_eq!(answer.status, 201, "{}", answer.body);
        }
        token
    }

    /// The application's `chats_count`.
    pub async fn chats_count(&self, token: &str) -> i64 {
        let answer = self.get(&format!("/applications/{token}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["chats_count"].as_i64().expect("a count")
    }

    /// `(number, body)` of every stored message of a chat, in order; empty
    /// when the chat is not stored.
    pub async fn messages(&self, token: &str, chat: i64) -> Vec<(i64, String)> {
        let mut messages = Vec::new();
        let mut after = 0;
        loop {
            let path =
                format!("/applications/{token}/chats/{chat}/messages?after={after}&limit=1000");
            let page = self.get(&path).await;
            if page.status == 404 {
                return messages;
            }
            assert_eq!(page.status, 200, "{}", page.body);
            for item in page.body["items"].as_array().expect("items") {
                messages.push((
                    item["number"].as_i64().expect("a number"),
                    item["body"].as_str().expect("a body").to_owned(),
                ));
            }
            match page.body["next_after"].as_i64() {
                Some(next) => after = next,
                None => return messages,
            }
        }
    }
}

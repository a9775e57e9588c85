use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};
use shared::job::Job;
use testkit::{HttpProxy, TcpProxy, TestBroker, TestChatSystem, TestRedis, eventually};
use tokio::sync::oneshot;

pub(crate) struct TestApp {
    pub(crate) url: String,
    pub(crate) client: reqwest::Client,
    pub(crate) chat_system: TestChatSystem,
    /// In front of the chat-system: counts its requests, injects faults.
    pub(crate) upstream: HttpProxy,
    /// In front of the chat-system too, to cut it at the TCP level.
    pub(crate) upstream_link: TcpProxy,
    pub(crate) redis_proxy: TcpProxy,
    pub(crate) amqp_proxy: TcpProxy,
    pub(crate) broker: TestBroker,
    pub(crate) redis: TestRedis,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    server: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A status and a parsed JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<String>,
}

impl Answer {
    pub(crate) fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.body))
    }

    pub(crate) fn number(&self, key: &str) -> i64 {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body[key]
            .as_i64()
            .unwrap_or_else(|| panic!("no {key:?} in {}", self.body))
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub(crate) async fn spawn_app_with(flags: &[&str]) -> TestApp {
    let chat_system = TestChatSystem::start().await;
    let upstream_link = TcpProxy::start(chat_system.address).await;
    let upstream = HttpProxy::start(&format!("http://{}", upstream_link.address())).await;
    let redis_proxy = TcpProxy::start("127.0.0.1:6379".parse().expect("an address")).await;
    let amqp_proxy = TcpProxy::start("127.0.0.1:5672".parse().expect("an address")).await;
    let broker = TestBroker::new();
    let redis = TestRedis::new();

    let redis_url = format!("redis://{}", redis_proxy.address());
    let amqp_url = format!("amqp://guest:guest@{}/%2f", amqp_proxy.address());
    let mut arguments = vec![
        "api",
        "--addr",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        &redis.prefix,
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &broker.prefix,
        "--chat-system-url",
        &upstream.url,
        "--chat-system-timeout-ms",
        "500",
        "--publish-timeout-ms",
        "2000",
    ];
    arguments.extend_from_slice(flags);
    let config = api::Config::parse_from(arguments);
    let application = api::Application::build(config)
        .await
        .expect("building the api");
    let url = format!("http://{}", application.address());
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        application
            .run_until_stopped(shutdown)
            .await
            .expect("the api runs");
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let app = TestApp {
        url,
        client,
        chat_system,
        upstream,
        upstream_link,
        redis_proxy,
        amqp_proxy,
        broker,
        redis,
        stop: std::sync::Mutex::new(Some(stop)),
        server: std::sync::Mutex::new(Some(server)),
    };
    app.wait_until_ready().await;
    app
}

impl TestApp {
    pub(crate) async fn wait_until_ready(&self) {
        eventually("the api to be ready", Duration::from_secs(20), || async {
            let response = self
                .client
                .get(format!("{}/readyz", self.url))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the api answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().expect("ASCII").to_owned());
        let text = response.text().await.expect("a body");
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON, got {status} {text:?}"));
        Answer {
            status,
            body,
            retry_after,
        }
    }

    pub(crate) async fn post(&self, path: &str) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.url)))
            .await
    }

    pub(crate) async fn create_chat(&self, token: &str) -> Answer {
        self.post(&format!("/applications/{token}/chats")).await
    }

    /// `message` is put in the path as is: encode it first.
    pub(crate) async fn create_message(
        &self,
        token: &str,
        chat: i64,
        encoded_message: &str,
    ) -> Answer {
        self.post(&format!(
            "/applications/{token}/chats/{chat}/messages/{encoded_message}"
        ))
        .await
    }

    pub(crate) async fn create_message_json(&self, token: &str, chat: i64, body: &str) -> Answer {
        let url = format!("{}/applications/{token}/chats/{chat}/messages", self.url);
        self.send(self.client.post(url).json(&json!({ "body": body })))
            .await
    }

    /// An application registered in the chat-system (directly, not through
    /// the proxy), with chats `1..=chats` stored.
    pub(crate) async fn application(&self, chats: i64) -> String {
        let base = &self.chat_system.url;
        let created: Value = self
            .client
            .post(format!("{base}/applications"))
            .json(&json!({ "name": "test" }))
            .send()
            .await
            .expect("the chat-system answers")
            .json()
            .await
            .expect("JSON");
        let token = created["token"].as_str().expect("a token").to_owned();
        for chat in 1..=chats {
            self.store_chat(&token, chat).await;
        }
        token
    }

    pub(crate) async fn store_chat(&self, token: &str, chat: i64) {
        let url = format!("{}/applications/{token}/chats/{chat}", self.chat_system.url);
        let status = self
            .client
            .put(url)
            .send()
            .await
            .expect("the chat-system answers")
            .status();
        assert!(status.is_success(), "{status}");
    }

    pub(crate) async fn store_message(&self, token: &str, chat: i64, number: i64) {
        let url = format!(
            "{}/applications/{token}/chats/{chat}/messages/{number}",
            self.chat_system.url
        );
        let request = self.client.put(url).json(&json!({ "body": "stored" }));
        let status = request
            .send()
            .await
            .expect("the chat-system answers")
            .status();
        assert!(status.is_success(), "{status}");
    }

    /// Every job now on the jobs queue, taken off it.
    pub(crate) async fn jobs(&self) -> Vec<Job> {
        self.broker
            .drain(&self.broker.jobs_queue())
            .await
            .iter()
            .map(|payload| Job::decode(payload).expect("a valid job"))
            .collect()
    }

    /// Waits until the jobs queue holds `count` jobs, and takes them.
    pub(crate) async fn expect_jobs(&self, count: usize) -> Vec<Job> {
        let mut jobs = Vec::new();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while jobs.len() < count && tokio::time::Instant::now() < give_up {
            jobs.extend(self.jobs().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        jobs.extend(self.jobs().await);
        assert_eq!(jobs.len(), count, "exactly {count} jobs on the queue");
        jobs
    }

    /// Sends the shutdown signal and waits for the api to finish.
    pub(crate) async fn stop(&self) {
        if let Some(stop) = self.stop.lock().expect("stop lock").take() {
            let _ = stop.send(());
        }
        let server = self.server.lock().expect("server lock").take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().expect("server lock").take() {
            server.abort();
        }
    }
}

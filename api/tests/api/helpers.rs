use std::time::Duration;

use clap::Parser;
use serde_json::json;
use shared::job::Job;
use testkit::http::{self, Answer};
use testkit::{HttpProxy, Running, TcpProxy, TestBroker, TestChatSystem, TestRedis, eventually};

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
    server: Running,
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub(crate) async fn spawn_app_with(flags: &[&str]) -> TestApp {
    spawn_app_on(testkit::redis_address(), flags).await
}

/// The api with its counters on the Redis at `redis` (through a proxy),
/// once ready.
pub(crate) async fn spawn_app_on(redis: std::net::SocketAddr, flags: &[&str]) -> TestApp {
    let app = spawn_unready(redis, flags).await;
    app.wait_until_ready().await;
    app
}

/// The api with its counters on the Redis at `redis`, once it answers
/// (ready or not).
pub(crate) async fn spawn_unready(redis: std::net::SocketAddr, flags: &[&str]) -> TestApp {
    spawn_beside(TestChatSystem::start().await, redis, flags).await
}

/// The api in front of `chat_system`, once it answers (ready or not).
pub(crate) async fn spawn_beside(
    chat_system: TestChatSystem,
    redis: std::net::SocketAddr,
    flags: &[&str],
) -> TestApp {
    let upstream_link = TcpProxy::start(chat_system.address).await;
    let upstream = HttpProxy::start(&format!("http://{}", upstream_link.address())).await;
    let redis_proxy = TcpProxy::start(redis).await;
    let amqp_proxy = TcpProxy::start(testkit::amqp_address()).await;
    let broker = TestBroker::new();
    let redis = TestRedis::new();

    let redis_url = testkit::redis_url_via(redis_proxy.address());
    let amqp_url = testkit::amqp_url_via(amqp_proxy.address());
    let mut arguments = vec![
        "api",
        "--addr",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--redis-prefix",
        &redis.prefix,
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &broker.prefix,
        "--chat-system-url",
        &upstream.url,
    ];
    // The machine's Redis keeps nothing on disk; the durability tests
    // bring a Redis of their own and set this flag themselves. Timeouts
    // are patient, since the suite runs beside others on two cores; a test
    // about a timeout sets its own.
    let defaults = [
        ["--redis-url", redis_url.as_str()],
        ["--redis-timeout-ms", "5000"],
        ["--chat-system-timeout-ms", "5000"],
        ["--seed-wait-ms", "10000"],
        ["--publish-timeout-ms", "5000"],
        ["--redis-durability", "unsafe-none"],
    ];
    for [flag, value] in defaults {
        if !flags.contains(&flag) {
            arguments.extend([flag, value]);
        }
    }
    arguments.extend_from_slice(flags);
    let config = api::Config::parse_from(arguments);
    let application = api::Application::build(config)
        .await
        .expect("building the api");
    let url = format!("http://{}", application.address());
    let server = Running::spawn("the api", |shutdown| {
        application.run_until_stopped(shutdown)
    });
    let app = TestApp {
        url,
        client: http::client(),
        chat_system,
        upstream,
        upstream_link,
        redis_proxy,
        amqp_proxy,
        broker,
        redis,
        server,
    };
    eventually("the api to answer", Duration::from_secs(20), || async {
        let url = format!("{}/healthz", app.url);
        app.client.get(url).send().await.ok().map(|_| ())
    })
    .await;
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

    pub(crate) async fn get(&self, path: &str) -> Answer {
        http::send(self.client.get(format!("{}{path}", self.url))).await
    }

    pub(crate) async fn post(&self, path: &str) -> Answer {
        http::send(self.client.post(format!("{}{path}", self.url))).await
    }

    pub(crate) async fn post_keyed(&self, path: &str, key: &str) -> Answer {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("idempotency-key", key);
        http::send(request).await
    }

    /// POSTs to `path` exactly as written (no client-side normalisation of
    /// dot segments); the status and the body.
    pub(crate) async fn post_raw(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connecting to the api");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("sending");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reading");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .expect("a status line");
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned();
        (status, body)
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
        http::send(self.client.post(url).json(&json!({ "body": body }))).await
    }

    /// A create chat request with `Idempotency-Key: key`.
    pub(crate) async fn create_chat_keyed(&self, token: &str, key: &str) -> Answer {
        let url = format!("{}/applications/{token}/chats", self.url);
        http::send(self.client.post(url).header("idempotency-key", key)).await
    }

    /// A create message request, JSON body, with `Idempotency-Key: key`.
    pub(crate) async fn create_message_keyed(
        &self,
        token: &str,
        chat: i64,
        body: &str,
        key: &str,
    ) -> Answer {
        let url = format!("{}/applications/{token}/chats/{chat}/messages", self.url);
        let request = self
            .client
            .post(url)
            .header("idempotency-key", key)
            .json(&json!({ "body": body }));
        http::send(request).await
    }

    /// `PUT` of message `message`'s new body, with `Idempotency-Key: key`
    /// when given.
    pub(crate) async fn edit_message(
        &self,
        token: &str,
        chat: i64,
        message: i64,
        body: &str,
        key: Option<&str>,
    ) -> Answer {
        let url = format!(
            "{}/applications/{token}/chats/{chat}/messages/{message}",
            self.url
        );
        let mut request = self.client.put(url).json(&json!({ "body": body }));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        http::send(request).await
    }

    /// An application registered in the chat-system (directly, not through
    /// the proxy), with chats `1..=chats` stored.
    pub(crate) async fn application(&self, chats: i64) -> String {
        self.chat_system.application_with_chats(chats).await
    }

    pub(crate) async fn store_chat(&self, token: &str, chat: i64) {
        let answer = self.chat_system.put_chat(token, chat).await;
        assert!(answer.status < 300, "{}", answer.body);
    }

    pub(crate) async fn store_message(&self, token: &str, chat: i64, number: i64) {
        let answer = self
            .chat_system
            .put_message(token, chat, number, "stored")
            .await;
        assert!(answer.status < 300, "{}", answer.body);
    }

    /// Every job now on the jobs queue, taken off it.
    pub(crate) async fn jobs(&self) -> Vec<Job> {
        self.broker.take_jobs(&self.broker.jobs_queue()).await
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

    /// Waits until the jobs queue held at least `count` jobs, and takes
    /// every one.
    pub(crate) async fn expect_jobs_at_least(&self, count: usize) -> Vec<Job> {
        let mut jobs = Vec::new();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while jobs.len() < count && tokio::time::Instant::now() < give_up {
            jobs.extend(self.jobs().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        jobs.extend(self.jobs().await);
        assert!(jobs.len() >= count, "at least {count} jobs: {jobs:?}");
        jobs
    }

    /// Declares the api's queues again (after a test deleted one).
    pub(crate) async fn declare_topology(&self) {
        let broker = shared::config::Broker {
            amqp_url: testkit::amqp_url(),
            queue_prefix: self.broker.prefix.clone(),
            queue_type: shared::config::QueueType::Quorum,
            publish_timeout_ms: 2000,
        };
        let (_connection, channel) = self.broker.channel().await;
        shared::amqp::topology::Topology::new(&broker)
            .declare(&channel, &[])
            .await
            .expect("declaring the topology");
    }

    /// Sends the shutdown signal and waits for the api to finish.
    pub(crate) async fn stop(&self) {
        self.server.stop().await;
    }
}

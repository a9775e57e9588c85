//! The real chat-system, on port 0 with a database of its own, for the
//! suites that need an upstream to talk to.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;

use crate::{TcpProxy, TestDatabase};

/// A running chat-system; stops and drops its database when dropped.
pub struct TestChatSystem {
    pub address: SocketAddr,
    pub url: String,
    /// The proxy between the chat-system and PostgreSQL, when asked for.
    pub database_proxy: Option<TcpProxy>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
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
        let mut arguments = vec!["chat-system", "--addr", "127.0.0.1:0", "--log", "warn"];
        arguments.extend_from_slice(flags);
        let mut config = chat_system::Config::parse_from(arguments);
        config.database_url = database_url;
        let application = chat_system::Application::build(config)
            .await
            .expect("building the chat-system");
        let address = application.address();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            application
                .run_until_stopped(shutdown)
                .await
                .expect("the chat-system runs");
        });
        let url = format!("http://{address}");
        wait_until_ready(&url).await;
        Self {
            address,
            url,
            database_proxy,
            stop: Some(stop),
            server: Some(server),
            database,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestChatSystem {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn wait_until_ready(url: &str) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    let readyz = format!("{url}/readyz");
    crate::eventually(
        "the chat-system to be ready",
        Duration::from_secs(30),
        || async {
            let response = client.get(&readyz).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
}

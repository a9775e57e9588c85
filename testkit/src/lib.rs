//! Test support shared by the integration suites of every crate.
//!
//! Tests run in parallel against the machine's real PostgreSQL, Redis and
//! RabbitMQ, so everything here hands out private resources (a fresh
//! database, unique names) and removes them when dropped. Faults are
//! injected with [`TcpProxy`] and [`HttpProxy`], never by stopping a shared
//! server.

mod broker;
mod chat_system;
mod database;
mod http_proxy;
mod proxy;
mod redis_keys;
mod wait;

pub use broker::{TestBroker, amqp_url};
pub use chat_system::TestChatSystem;
pub use database::TestDatabase;
pub use http_proxy::{Fault, HttpProxy};
pub use proxy::TcpProxy;
pub use redis_keys::{TestRedis, redis_url};
pub use wait::eventually;

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Shows the logs of the code under test when `RUST_LOG` is set
/// (`RUST_LOG=worker=debug cargo test ... -- --nocapture`); silent otherwise.
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

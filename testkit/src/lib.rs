//! Test support shared by the integration suites of every crate.
//!
//! Tests run in parallel against the machine's real PostgreSQL, Redis and
//! RabbitMQ, so everything here hands out private resources (a fresh
//! database, unique names) and removes them when dropped. Faults are
//! injected with [`TcpProxy`] and [`HttpProxy`], never by stopping a shared
//! server.

mod broker;
mod chat_system;
pub mod cluster;
mod database;
mod durable_redis;
pub mod http;
mod http_proxy;
pub mod logs;
pub mod manifests;
mod proxy;
mod redis_keys;
mod running;
mod wait;

pub use broker::{Taken, TestBroker, amqp_address, amqp_url, amqp_url_via};
pub use chat_system::TestChatSystem;
pub use database::TestDatabase;
pub use durable_redis::DurableRedis;
pub use http::Answer;
pub use http_proxy::{Fault, HttpProxy, Seen};
pub use proxy::TcpProxy;
pub use redis_keys::{TestRedis, redis_address, redis_url, redis_url_via};
pub use running::{Running, Shutdown};
pub use wait::eventually;

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The `host:port` of a server URL, resolved.
fn address_of(url: &str) -> std::net::SocketAddr {
    let parsed = url::Url::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"));
    parsed
        .socket_addrs(|| None)
        .ok()
        .and_then(|addresses| addresses.into_iter().next())
        .unwrap_or_else(|| panic!("{url} names no reachable host and port"))
}

/// `url` with its host and port replaced by `address`, credentials and
/// path kept.
fn url_via(url: &str, address: std::net::SocketAddr) -> String {
    let mut parsed = url::Url::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"));
    parsed.set_ip_host(address.ip()).expect("a URL with a host");
    parsed
        .set_port(Some(address.port()))
        .expect("a URL with a host");
    parsed.to_string()
}

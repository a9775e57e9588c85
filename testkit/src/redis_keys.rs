//! A Redis key prefix of one's own, its keys deleted when the test ends.

/// The Redis tests use; `TEST_REDIS_URL` overrides it.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Redis's address, for a [`crate::TcpProxy`] to forward to.
pub fn redis_address() -> std::net::SocketAddr {
    crate::address_of(&redis_url())
}

/// [`redis_url`] reached through `address` (a proxy in front of it).
pub fn redis_url_via(address: std::net::SocketAddr) -> String {
    crate::url_via(&redis_url(), address)
}

pub struct TestRedis {
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> Self {
        Self {
            prefix: crate::unique("t"),
        }
    }

    /// A connection of its own, for inspecting keys.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(redis_url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to Redis")
    }

    /// The numbers in flight under the prefix, by in-flight set (the
    /// `…:inflight` keys of `shared::counters`).
    pub async fn in_flight(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeSet<i64>> {
        let mut connection = self.connection().await;
        let mut sets = std::collections::BTreeMap::new();
        for key in self.keys().await {
            if key.ends_with(":inflight") {
                let numbers: std::collections::BTreeSet<i64> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .expect("SMEMBERS");
                sets.insert(key, numbers);
            }
        }
        sets
    }

    /// Every key under the prefix.
    pub async fn keys(&self) -> Vec<String> {
        let mut connection = self.connection().await;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut connection)
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.prefix);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut connection = redis::Client::open(redis_url())?
                    .get_multiplexed_async_connection()
                    .await?;
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query_async(&mut connection)
                    .await?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL")
                        .arg(keys)
                        .query_async(&mut connection)
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .join();
    }
}

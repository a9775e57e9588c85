//! A Redis server of the test's own that persists every write (`appendonly
//! yes`, `appendfsync always`), as the api demands of the counters' Redis;
//! the machine's shared Redis keeps nothing on disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A `redis-server` child process on a free loopback port, with its data
/// in a folder of its own; killed and removed when dropped.
pub struct DurableRedis {
    pub address: SocketAddr,
    pub url: String,
    child: std::process::Child,
    dir: PathBuf,
}

impl DurableRedis {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// A replica of `master`, durable like it, once it holds the master's
    /// data (for `WAIT` to count it).
    pub async fn replica_of(master: &DurableRedis) -> Self {
        // Redis 7 waits 5 s for more replicas before a diskless full sync.
        master.config_set("repl-diskless-sync-delay", "0").await;
        let port = master.address.port().to_string();
        let replica = Self::start_with(&["--replicaof", "127.0.0.1", &port]).await;
        let connection = replica.connection().await;
        crate::eventually(
            "the replica to sync with its master",
            Duration::from_secs(30),
            || async {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut connection.clone())
                    .await
                    .ok()?;
                info.contains("master_link_status:up").then_some(())
            },
        )
        .await;
        replica
    }

    async fn start_with(extra: &[&str]) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("an address").port()
        };
        let dir = std::env::temp_dir().join(crate::unique("redis"));
        std::fs::create_dir_all(&dir).expect("a data folder");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let redis = Self {
            address,
            url: format!("redis://{address}"),
            child,
            dir,
        };
        let client = redis::Client::open(redis.url.as_str()).expect("a Redis URL");
        crate::eventually(
            "redis-server to answer",
            Duration::from_secs(10),
            || async {
                let mut connection = client.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut connection).await.ok()?;
                (pong == "PONG").then_some(())
            },
        )
        .await;
        redis
    }

    /// `CONFIG SET name value`, as an operator would change it live.
    pub async fn config_set(&self, name: &str, value: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut self.connection().await)
            .await
            .unwrap_or_else(|error| panic!("CONFIG SET {name} {value}: {error}"));
    }

    /// A connection of its own, to look at keys or change its settings.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to the test's Redis")
    }
}

impl Drop for DurableRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

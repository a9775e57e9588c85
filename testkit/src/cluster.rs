//! The local Redis Cluster and RabbitMQ cluster of `scripts/cluster`, for
//! the tests of node loss. The script is idempotent: the first test that
//! asks starts the clusters, the next finds them up; `scripts/test` stops
//! them at the end when it was the one to start them.

use std::path::PathBuf;
use std::process::Command;

pub struct Cluster {
    /// Every Redis node, comma-separated: the api's cluster form.
    pub redis_url: String,
    /// Every RabbitMQ node, comma-separated.
    pub amqp_url: String,
}

/// A Redis master and the replica that follows it.
#[derive(Debug, Clone, Copy)]
pub struct Shard {
    pub master: u16,
    pub replica: u16,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster")
}

fn run(verb: &str) -> Result<String, String> {
    let output = Command::new("bash")
        .arg(script())
        .arg(verb)
        .output()
        .map_err(|error| format!("running scripts/cluster {verb}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "scripts/cluster {verb} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Cluster {
    /// Starts the clusters unless they run; the reason when they cannot.
    pub async fn up() -> Result<Self, String> {
        let printed = tokio::task::spawn_blocking(|| run("up"))
            .await
            .map_err(|error| error.to_string())??;
        let value = |name: &str| {
            printed
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("scripts/cluster up printed no {name}"))
        };
        Ok(Self {
            redis_url: value("REDIS_URL")?,
            amqp_url: value("AMQP_URL")?,
        })
    }

    /// Restarts whatever node is down; it rejoins its cluster.
    pub async fn heal(&self) {
        tokio::task::spawn_blocking(|| run("heal"))
            .await
            .expect("scripts/cluster heal ran")
            .expect("scripts/cluster heal");
    }

    /// A connection to the Redis node on `port` alone.
    pub async fn redis_node(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| panic!("connecting to Redis on {port}: {error}"))
    }

    /// The master serving `key` now, and its replica, read from
    /// `CLUSTER NODES` of a live node.
    pub async fn shard_of(&self, key: &str) -> Shard {
        let mut node = self.any_live_node().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node)
            .await
            .expect("CLUSTER KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut node)
            .await
            .expect("CLUSTER NODES");
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        let port = |fields: &[&str]| -> u16 {
            let address = fields[1].split('@').next().expect("an address");
            address
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .expect("a port")
        };
        let serves = |fields: &[&str]| {
            fields.iter().skip(8).any(|range| {
                let mut bounds = range.split('-').map(|bound| bound.parse::<u16>());
                match (bounds.next(), bounds.next()) {
                    (Some(Ok(low)), Some(Ok(high))) => (low..=high).contains(&slot),
                    (Some(Ok(one)), None) => one == slot,
                    _ => false,
                }
            })
        };
        let master = lines
            .iter()
            .find(|fields| {
                fields.len() > 8
                    && fields[2].contains("master")
                    && !fields[2].contains("fail")
                    && serves(fields)
            })
            .unwrap_or_else(|| panic!("no live master serves slot {slot}:\n{nodes}"));
        let replica = lines
            .iter()
            .find(|fields| {
                fields.len() > 3 && fields[2].contains("slave") && fields[3] == master[0]
            })
            .unwrap_or_else(|| panic!("the master of slot {slot} has no replica:\n{nodes}"));
        Shard {
            master: port(master),
            replica: port(replica),
        }
    }

    /// The process id of the Redis node on `port`.
    pub async fn redis_pid(&self, port: u16) -> i32 {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.redis_node(port).await)
            .await
            .expect("INFO server");
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server gives process_id")
    }

    /// `ROLE` of the node on `port`: `master` or `slave`.
    pub async fn role(&self, port: u16) -> Option<String> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut node = client.get_multiplexed_async_connection().await.ok()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut node).await.ok()?;
        match role.first()? {
            redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            redis::Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    }

    /// The numbers in flight under `prefix` (its `…:inflight` sets), on
    /// every master of the cluster.
    pub async fn in_flight(&self, prefix: &str) -> usize {
        let mut total = 0;
        for port in 7001..=7006 {
            if self.role(port).await.as_deref() != Some("master") {
                continue;
            }
            let mut node = self.redis_node(port).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*:inflight"))
                .query_async(&mut node)
                .await
                .expect("KEYS on a master");
            for key in keys {
                let members: usize = redis::cmd("SCARD")
                    .arg(&key)
                    .query_async(&mut node)
                    .await
                    .expect("SCARD");
                total += members;
            }
        }
        total
    }

    /// Deletes every key under `prefix` on every master.
    pub async fn delete_keys(&self, prefix: &str) {
        for port in 7001..=7006 {
            if self.role(port).await.as_deref() != Some("master") {
                continue;
            }
            let mut node = self.redis_node(port).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut node)
                .await
                .expect("KEYS on a master");
            for key in keys {
                let _: () = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut node)
                    .await
                    .expect("DEL");
            }
        }
    }

    async fn any_live_node(&self) -> redis::aio::MultiplexedConnection {
        for port in 7001..=7006 {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            if let Ok(node) = client.get_multiplexed_async_connection().await {
                return node;
            }
        }
        panic!("no Redis node of the cluster answers");
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
pub fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

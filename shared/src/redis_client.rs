//! The counters' Redis connection: one node or a Redis Cluster, from
//! `REDIS_URL`.
//!
//! `REDIS_URL` holding one URL is a single node, reached through one
//! multiplexed [`ConnectionManager`] that reconnects by itself. Several
//! URLs separated by commas (seed nodes), or one URL whose scheme is
//! `redis+cluster://`, is a cluster: redis-rs' cluster client, which routes
//! each command by its key's slot and follows the cluster through
//! failovers. Every key of a token carries the token as its hash tag
//! ([`crate::counters::Keys`]), so each script's keys share one slot.
//!
//! redis-rs 1.8's cluster connection learns a new slot map only from a
//! `MOVED` answer: when a master dies, it reconnects to the dead address
//! for ever and never sees the promoted replica. So after a failure that
//! is not an answer (connection lost, refused, timed out, cluster down)
//! the connection is replaced by a fresh one, which reads the slot map
//! from the seed nodes, at most once per [`RENEW_AFTER`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
pub use redis::cluster_routing::Slot;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to the counters' Redis; cheap to clone (clones share it).
#[derive(Clone)]
pub enum RedisClient {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
}

/// The cluster connection in use, and how to make a new one.
pub struct Cluster {
    client: ClusterClient,
    config: ClusterConfig,
    current: Mutex<(ClusterConnection, Instant)>,
}

/// The least time between two replacements of the cluster connection.
const RENEW_AFTER: Duration = Duration::from_millis(500);

impl Cluster {
    fn connection(&self) -> ClusterConnection {
        self.current
            .lock()
            .expect("cluster connection lock")
            .0
            .clone()
    }

    /// After `error`: a fresh connection (and slot map) unless the error
    /// was an answer, or the connection was just replaced.
    fn renew_after(&self, error: &redis::RedisError) {
        let lost = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_cluster_error();
        if !lost {
            return;
        }
        let mut current = self.current.lock().expect("cluster connection lock");
        if current.1.elapsed() >= RENEW_AFTER {
            let fresh = self
                .client
                .get_pending_async_connection_with_config(self.config.clone());
            *current = (fresh, Instant::now());
            tracing::info!(error = %error, "Redis Cluster connection renewed to read the slot map again");
        }
    }
}

/// `REDIS_WAIT_REPLICAS` and `REDIS_WAIT_TIMEOUT_MS`: how many replicas
/// must hold a write before it counts, and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub replicas: u32,
    pub timeout: Duration,
}

/// How long connecting and each answer may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// The nodes `url` names, and whether they form a cluster.
pub fn parse(url: &str) -> (Vec<String>, bool) {
    let nodes: Vec<String> = url
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(|node| match node.strip_prefix("redis+cluster://") {
            Some(rest) => format!("redis://{rest}"),
            None => node.to_owned(),
        })
        .collect();
    let cluster = nodes.len() > 1 || url.trim_start().starts_with("redis+cluster://");
    (nodes, cluster)
}

impl RedisClient {
    /// A connection to `url` that connects on first use: a Redis down
    /// at start-up is an outage like any other, not a start failure.
    pub fn lazy(url: &str, timeouts: Timeouts) -> redis::RedisResult<Self> {
        let (nodes, cluster) = parse(url);
        if cluster {
            let client = ClusterClient::builder(nodes)
                .connection_timeout(timeouts.connect)
                .response_timeout(timeouts.response)
                // Through a failover, commands to the lost master's
                // slots wait for the promoted replica (about the
                // cluster-node-timeout) rather than fail at once.
                .retries(8)
                .max_retry_wait(1000)
                .build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeouts.connect)
                .set_response_timeout(timeouts.response);
            let connection = client.get_pending_async_connection_with_config(config.clone());
            Ok(Self::Cluster(Arc::new(Cluster {
                client,
                config,
                current: Mutex::new((connection, Instant::now())),
            })))
        } else {
            let url = nodes.first().map(String::as_str).unwrap_or(url);
            let client = redis::Client::open(url)?;
            let settings = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.response))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            Ok(Self::Single(ConnectionManager::new_lazy_with_config(
                client, settings,
            )?))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Which pipeline a command on `key` may share. redis-rs sends a
    /// cluster pipeline to one node and refuses one whose keys are in
    /// several hash slots, so on a cluster commands go in one pipeline per
    /// slot (`Some(slot)`); on a single node all share one (`None`).
    pub fn pipeline_of(&self, key: &str) -> Option<Slot> {
        self.is_cluster().then(|| Slot::for_key(key))
    }
}

impl RedisClient {
    /// Sends `cmd` to every master (the one server of a single node, each
    /// master of the cluster's slot map), each answer with the master's
    /// address (`None` on a single node) or the error it gave.
    pub async fn on_every_master(
        &self,
        cmd: Cmd,
    ) -> redis::RedisResult<Vec<(Option<String>, redis::RedisResult<Value>)>> {
        match self {
            Self::Single(connection) => {
                let answer = cmd.query_async(&mut connection.clone()).await;
                match answer {
                    // The server answered, with an error: its answer.
                    Err(error)
                        if !matches!(
                            error.kind(),
                            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                        ) =>
                    {
                        Err(error)
                    }
                    answer => Ok(vec![(None, answer)]),
                }
            }
            Self::Cluster(cluster) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let answers = cluster
                    .connection()
                    .route_command(cmd, routing)
                    .await
                    .inspect_err(|error| cluster.renew_after(error))?;
                let Value::Map(answers) = answers else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "a command to every master was not answered by each",
                    )));
                };
                answers
                    .into_iter()
                    .map(|(address, answer)| {
                        let address: String = redis::from_redis_value(address)?;
                        let answer = match answer {
                            Value::ServerError(error) => Err(error.into()),
                            value => Ok(value),
                        };
                        Ok((Some(address), answer))
                    })
                    .collect()
            }
        }
    }

    /// Sends `pipeline`, followed when `wait.replicas` > 0 by `WAIT` on
    /// the same connection (it reaches the node of the pipeline's keys and
    /// covers its writes): an error when fewer replicas confirmed them in
    /// time, since a failover could then lose them. The pipeline's own
    /// replies are parsed as `T`.
    pub async fn query_replicated<T: redis::FromRedisValue>(
        &self,
        pipeline: &Pipeline,
        wait: Wait,
    ) -> redis::RedisResult<T> {
        let mut connection = self.clone();
        if wait.replicas == 0 {
            return pipeline.query_async(&mut connection).await;
        }
        let mut waited = pipeline.clone();
        waited
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis() as u64);
        let mut replies: Vec<Value> = waited.query_async(&mut connection).await?;
        let acked: i64 = match replies.pop() {
            Some(acked) => redis::from_redis_value(acked)?,
            None => 0,
        };
        if acked < i64::from(wait.replicas) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "fewer replicas than REDIS_WAIT_REPLICAS confirmed the write in time",
            )));
        }
        Ok(redis::from_redis_value(Value::Array(replies))?)
    }
}

impl ConnectionLike for RedisClient {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(cluster) => {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let mut connection = cluster.connection();
                    connection
                        .req_packed_command(cmd)
                        .await
                        .inspect_err(|error| cluster.renew_after(error))
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => {
                let cluster = cluster.clone();
                Box::pin(async move {
                    let mut connection = cluster.connection();
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                        .inspect_err(|error| cluster.renew_after(error))
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(cluster) => cluster.connection().get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn one_url_is_a_single_node_several_or_the_cluster_scheme_a_cluster() {
        assert_eq!(
            parse("redis://127.0.0.1:6379"),
            (vec!["redis://127.0.0.1:6379".to_owned()], false)
        );
        assert_eq!(
            parse("redis://a:1, redis://b:2"),
            (
                vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()],
                true
            )
        );
        assert_eq!(
            parse("redis+cluster://a:1"),
            (vec!["redis://a:1".to_owned()], true)
        );
    }
}

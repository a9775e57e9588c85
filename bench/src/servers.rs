//! The servers a benchmark runs against, a private corner of them for each
//! run (one prefix for its queues and its Redis keys), and removing that
//! corner afterwards.

use std::time::Duration;

use clap::Parser;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use shared::amqp::connection::connect;
use shared::amqp::topology::Topology;
use shared::config::{Broker, QueueType};
use shared::redis_client::{RedisClient, Timeouts};

/// How long the bench's own publishes wait for their confirm.
pub(crate) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Redis and RabbitMQ are, as the binaries read it.
#[derive(clap::Args)]
pub(crate) struct Servers {
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    #[arg(long, value_enum, default_value_t = QueueType::Quorum)]
    pub(crate) queue_type: QueueType,
}

#[derive(clap::Args)]
pub(crate) struct CleanupArgs {
    /// The `QUEUE_PREFIX` and `REDIS_PREFIX` the run used.
    #[arg(long)]
    prefix: String,
    #[command(flatten)]
    servers: Servers,
}

pub(crate) async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    args.servers.cleanup(&args.prefix).await
}

impl Servers {
    /// A fresh prefix `{name}_{8 hex digits}` and the topology under it.
    pub(crate) fn private(&self, name: &str) -> (String, Topology) {
        let prefix = format!("{name}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let topology = Topology::new(&self.broker(&prefix));
        (prefix, topology)
    }

    /// The broker settings of the binaries, under `prefix`.
    pub(crate) fn broker(&self, prefix: &str) -> Broker {
        Broker {
            amqp_url: self.amqp_url.clone(),
            queue_prefix: prefix.to_owned(),
            queue_type: self.queue_type,
            publish_timeout_ms: PUBLISH_TIMEOUT.as_millis() as u64,
        }
    }

    /// The counters' Redis, one node or a cluster, as the api reaches it.
    pub(crate) fn redis(&self) -> anyhow::Result<RedisClient> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            response: Duration::from_secs(10),
        };
        Ok(RedisClient::lazy(&self.redis_url, timeouts)?)
    }

    /// Deletes the queues and exchanges of `prefix` (retry queues included)
    /// and its Redis keys.
    pub(crate) async fn cleanup(&self, prefix: &str) -> anyhow::Result<()> {
        let topology = Topology::new(&self.broker(prefix));
        let connection = connect(&self.amqp_url, "bench-cleanup").await?;
        let channel = connection.create_channel().await?;
        let mut queues = vec![
            topology.jobs_queue(),
            topology.dead_queue(),
            topology.discarded_queue(),
        ];
        queues.extend(retry_queues(&topology));
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [topology.jobs_exchange(), topology.dead_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        let _ = connection.close(200, "done".into()).await;

        let mut redis = self.redis()?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut redis)
            .await?;
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await?;
        }
        Ok(())
    }
}

/// The retry queues a worker declares with the settings of this
/// environment (`RETRY_*`), as the workers of the run read them.
pub(crate) fn retry_queues(topology: &Topology) -> Vec<String> {
    let config = worker::Cli::parse_from(["worker"]).config;
    let policy = worker::retry::Policy::new(
        config.retry_max_attempts,
        Duration::from_millis(config.retry_initial_delay_ms),
        Duration::from_millis(config.retry_max_delay_ms),
    );
    policy
        .queues()
        .into_iter()
        .map(|delay| topology.retry_queue(delay))
        .collect()
}

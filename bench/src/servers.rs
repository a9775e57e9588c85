//! Removes what a benchmark or chaos run left behind under its prefix:
//! the queues and exchanges of the topology (retry queues included) and
//! the Redis keys.

use std::time::Duration;

use clap::Parser;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use shared::config::{Broker, QueueType};
use shared::topology::{self, Topology};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The `QUEUE_PREFIX` and `REDIS_PREFIX` the run used.
    #[arg(long)]
    prefix: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    cleanup(&args.prefix, &args.amqp_url, &args.redis_url).await
}

pub(crate) async fn cleanup(prefix: &str, amqp_url: &str, redis_url: &str) -> anyhow::Result<()> {
    let broker = Broker {
        amqp_url: amqp_url.to_owned(),
        queue_prefix: prefix.to_owned(),
        queue_type: QueueType::Quorum,
    };
    let topology = Topology::new(&broker);
    let connection = topology::connect(amqp_url, "bench-cleanup").await?;
    let channel = connection.create_channel().await?;
    let mut queues = vec![topology.jobs_queue(), topology.dead_queue()];
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

    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await?;
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await?;
    }
    Ok(())
}

/// The retry queues a worker with default settings declares.
fn retry_queues(topology: &Topology) -> Vec<String> {
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

//! `Application`: the api assembled and bound to its socket, ready to run
//! until a shutdown future resolves. Tests build it on port 0.
//!
//! Nothing here waits for a dependency: Redis connects lazily, RabbitMQ in
//! the background, and `/readyz` tells when all are reachable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::amqp::topology::Topology;
use shared::counters::Keys;
use shared::redis_client::{RedisClient, Timeouts};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::durability::Guard;
use crate::idempotency::Keyed;
use crate::intake::{self, Intake};
use crate::limits::MessageLimit;
use crate::numbers::{Numbers, Timings};
use crate::publisher::{self, Publisher};
use crate::rate_limit::RateLimit;
use crate::routes::{State, routes};
use shared::chat_system::ChatSystem;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    state: Arc<State>,
    closer: publisher::Closer,
    /// Stops the background checks (Redis's durability, the chat-system's
    /// limit).
    stop_watching: CancellationToken,
    watching: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let address = listener.local_addr()?;
        shared::telemetry::register(crate::telemetry::METRICS);

        let redis_timeouts = redis_timeouts(&config);
        let redis = RedisClient::lazy(&config.counters.redis_url, redis_timeouts)
            .context("REDIS_URL is not a Redis URL")?;
        let chat_system = ChatSystem::new(&config.chat_system, None)?;
        let timings = Timings {
            counter_ttl: config.counters.counter_ttl(),
            negative_ttl: Duration::from_millis(config.negative_cache_ttl_ms),
            seed_lock: Duration::from_millis(config.seed_lock_ms),
            seed_wait: Duration::from_millis(config.seed_wait_ms),
            wait_replicas: config.counters.redis_wait_replicas,
            wait_timeout: Duration::from_millis(config.counters.redis_wait_timeout_ms),
            response_timeout: redis_timeouts.response,
            seed_concurrency: config.seed_concurrency,
        };
        let durability = Arc::new(Guard::new(config.redis_durability));
        let stop_watching = CancellationToken::new();
        let mut watching = vec![tokio::spawn({
            let (durability, redis, stop) =
                (durability.clone(), redis.clone(), stop_watching.clone());
            async move { durability.watch(redis, stop).await }
        })];
        let message_limit = Arc::new(MessageLimit::new(config.max_message_bytes));
        watching.push(tokio::spawn({
            let (limit, chat_system, stop) = (
                message_limit.clone(),
                chat_system.clone(),
                stop_watching.clone(),
            );
            async move { limit.learn_at_start(&chat_system, stop).await }
        }));
        // A keyed request holds its key through a draw (seeding included)
        // and a publish.
        let lease = timings.seed_wait
            + Duration::from_millis(config.chat_system.chat_system_timeout_ms)
            + config.broker.publish_timeout()
            + Duration::from_secs(1);
        let keyed = Keyed::new(
            redis.clone(),
            Keys::new(&config.counters.redis_prefix),
            Duration::from_secs(config.idempotency_ttl_secs),
            lease,
            durability.clone(),
        );
        let numbers = Numbers::new(
            redis,
            durability,
            Keys::new(&config.counters.redis_prefix),
            chat_system.clone(),
            timings,
        );

        let settings = publisher::Settings {
            url: config.broker.amqp_url.clone(),
            topology: Topology::new(&config.broker),
            channels: config.publish_channels,
            confirm_timeout: config.broker.publish_timeout(),
            batch_jobs: config.publish_batch_max,
            batch_bytes: config.publish_batch_bytes,
            queue_bytes: config.publish_queue_bytes,
        };
        let (publisher, closer) = Publisher::start(settings);

        let state = Arc::new(State {
            intake: Intake::new(intake::Parts {
                rate_limit: RateLimit::new(
                    config.rate_limit_per_application,
                    config.rate_limit_burst,
                    Duration::from_millis(config.rate_limit_hold_ms),
                ),
                numbers,
                publisher,
                keyed,
                key_wait: config.broker.publish_timeout(),
            }),
            chat_system,
            max_message_bytes: config.max_message_bytes,
            message_limit,
            metrics: shared::telemetry::metrics(),
        });
        Ok(Self {
            listener,
            address,
            state,
            closer,
            stop_watching,
            watching,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets the
    /// requests in flight get their confirms and answers, and only then
    /// closes the broker connection.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, "api listening");
        warp::serve(routes(self.state))
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
        self.closer.close().await;
        self.stop_watching.cancel();
        for task in self.watching {
            let _ = task.await;
        }
        tracing::info!("api stopped");
        Ok(())
    }
}

/// How long connecting to Redis and each answer may take. The api keeps
/// one multiplexed connection (or, on a cluster, one per node), shared by
/// every request: it pipelines concurrent commands, so it needs no pool
/// (measured: 129k draws/s against 98k for the best bb8 pool size, at 64 in
/// flight). It reconnects by itself; during an outage commands fail fast
/// rather than queue.
fn redis_timeouts(config: &Config) -> Timeouts {
    let timeout = Duration::from_millis(config.redis_timeout_ms);
    // A draw's answer comes after its `WAIT` for replicas, which may take
    // all of REDIS_WAIT_TIMEOUT_MS.
    let waiting = match config.counters.redis_wait_replicas {
        0 => Duration::ZERO,
        _ => Duration::from_millis(config.counters.redis_wait_timeout_ms),
    };
    Timeouts {
        connect: timeout,
        response: timeout + waiting,
    }
}

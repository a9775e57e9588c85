//! `Worker`: the consumer assembled, with its metrics endpoint bound,
//! ready to run until a shutdown future resolves. Tests build it with
//! their own queue prefix and drive it either whole or one delivery at a
//! time ([`Worker::process_next`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use shared::amqp::topology::Topology;
use shared::chat_system::ChatSystem;
use shared::counters::Keys;
use shared::redis_client::{RedisClient, Timeouts};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::{Filter, Reply};

use crate::config::Config;
use crate::consumer::Link;
use crate::consumer::{self, Status};
use crate::depth::Depths;
use crate::handler::{Handler, Outcome, requeue};
use crate::retry::Policy;
use crate::store::{BulkLimits, Storage};

pub struct Worker {
    config: Config,
    handler: Arc<Handler>,
    status: Arc<Status>,
    metrics_listener: TcpListener,
    metrics_address: SocketAddr,
}

impl Worker {
    /// Binds the metrics endpoint and prepares the clients; connects to
    /// nothing yet.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding {}", config.metrics_addr))?;
        let metrics_address = metrics_listener.local_addr()?;
        shared::telemetry::register(crate::telemetry::METRICS);
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            // A release may wait for its replicas too.
            response: Duration::from_secs(1) + config.counters.wait().timeout,
        };
        let redis = RedisClient::lazy(&config.counters.redis_url, timeouts)
            .context("REDIS_URL is not a Redis URL")?;
        let keys = Keys::new(&config.counters.redis_prefix);
        let limits = BulkLimits {
            records: config.batch_max,
            bytes: config.batch_bytes,
        };
        let chat_system = ChatSystem::new(&config.chat_system, config.write_credential.secret()?)?;
        let storage = Storage::new(
            chat_system,
            redis,
            keys,
            config.counters.counter_ttl(),
            config.counters.wait(),
            limits,
        );
        let policy = Policy::new(
            config.retry_max_attempts,
            Duration::from_millis(config.retry_initial_delay_ms),
            Duration::from_millis(config.retry_max_delay_ms),
        );
        let handler = Arc::new(Handler {
            storage,
            policy,
            topology: Topology::new(&config.broker),
            publish_timeout: config.broker.publish_timeout(),
        });
        Ok(Self {
            config,
            handler,
            status: Arc::default(),
            metrics_listener,
            metrics_address,
        })
    }

    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    /// Live counters of this worker, still readable after it was moved
    /// into [`Worker::run_until_stopped`].
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Takes what is on the jobs queue now, up to one batch, and handles it
    /// completely, as the consume loop would: the single step tests drive
    /// without waiting. The outcome of each job, in queue order; empty when
    /// the queue was empty.
    pub async fn process_next(&self) -> anyhow::Result<Vec<Outcome>> {
        let link = Link::open(&self.handler, &self.config.broker.amqp_url).await?;
        let queue = self.handler.topology.jobs_queue();
        let mut deliveries = Vec::new();
        let mut bytes = 0;
        while deliveries.len() < self.config.batch_max && bytes < self.config.batch_bytes {
            let got = link
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await?;
            let Some(message) = got else { break };
            bytes += message.delivery.data.len();
            deliveries.push(message.delivery);
        }
        let settled = self.handler.process(&deliveries, &link.publisher).await;
        let mut outcomes = Vec::new();
        for (delivery, settled) in deliveries.iter().zip(settled) {
            if settled.acknowledged() {
                delivery.ack(BasicAckOptions::default()).await?;
            } else {
                delivery.nack(requeue()).await?;
            }
            outcomes.extend(settled.outcomes);
        }
        link.close().await;
        Ok(outcomes)
    }

    /// Consumes until `shutdown` resolves, then drains: stops taking
    /// deliveries, finishes and acknowledges the ones in hand, exits.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let depths = Depths::new(
            &self.config.broker.amqp_url,
            &self.handler.topology,
            &self.handler.policy.queues(),
        );
        let metrics = tokio::spawn(serve_metrics(
            self.metrics_listener,
            self.handler.clone(),
            depths,
            self.status.clone(),
            stop.clone(),
        ));
        tracing::info!(metrics = %self.metrics_address, "worker starting");
        let trigger = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let settings = consumer::Settings {
            amqp_url: self.config.broker.amqp_url.clone(),
            prefetch: self.config.prefetch,
            concurrency: self.config.concurrency,
            batch_jobs: self.config.batch_max,
            batch_bytes: self.config.batch_bytes,
        };
        consumer::run(self.handler, settings, self.status, stop).await;
        let _ = metrics.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `/metrics`, `/healthz`, and `/readyz`: ready when consuming, Redis and
/// the chat-system answer, and the broker does not block the publish
/// connection (retries and dead letters could not go out).
async fn serve_metrics(
    listener: TcpListener,
    handler: Arc<Handler>,
    depths: Depths,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let prometheus = shared::telemetry::metrics();
    let depths = Arc::new(depths);
    let scraped = depths.clone();
    let metrics = warp::path!("metrics").and(warp::get()).then(move || {
        let (prometheus, depths) = (prometheus.clone(), scraped.clone());
        async move {
            depths.refresh().await;
            warp::reply::with_header(
                prometheus.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        }
    });
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let (handler, status) = (handler.clone(), status.clone());
        async move {
            let verdict = |ok: bool| if ok { "ok" } else { "unavailable" };
            let consuming = status.connected();
            let blocked = status.publish_blocked();
            let dependencies = handler.storage.ready().await;
            let ready = consuming && !blocked && dependencies.is_ok();
            let body = serde_json::json!({
                "status": if ready { "ready" } else { "not ready" },
                "rabbitmq": if blocked { "blocked" } else { verdict(consuming) },
                "redis and chat-system": dependencies.err().unwrap_or("ok"),
            });
            let code = if ready {
                warp::http::StatusCode::OK
            } else {
                warp::http::StatusCode::SERVICE_UNAVAILABLE
            };
            shared::http::json_with_status(&body, code)
        }
    });
    let routes = shared::http::healthz()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .recover(shared::http::recover)
        .unify();
    warp::serve(routes)
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run()
        .await;
    depths.close().await;
}

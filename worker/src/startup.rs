//! `Worker`: the consumer assembled, with its metrics endpoint bound,
//! ready to run until a shutdown future resolves. Tests build it with
//! their own queue prefix and drive it either whole or one delivery at a
//! time ([`Worker::process_next`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::BasicGetOptions;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use shared::counters::Keys;
use shared::topology::Topology;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::{Filter, Reply};

use crate::config::Config;
use crate::consumer::{self, Status};
use crate::handler::{Handler, Outcome};
use crate::retry::Policy;
use crate::store::Storage;

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
        let client = redis::Client::open(config.counters.redis_url.as_str())
            .context("REDIS_URL is not a Redis URL")?;
        let redis_settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, redis_settings)?;
        let keys = Keys::new(&config.counters.redis_prefix);
        let storage = Storage::new(
            &config.chat_system,
            redis,
            keys,
            config.counters.counter_ttl(),
        )?;
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

    /// Takes one delivery off the jobs queue, if there is one, and handles
    /// it completely: the single step tests drive without waiting.
    pub async fn process_next(&self) -> anyhow::Result<Option<Outcome>> {
        let (connection, channel, publisher) =
            consumer::open(&self.handler, &self.config.broker.amqp_url).await?;
        let queue = self.handler.topology.jobs_queue();
        let handled = match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            Some(message) => Some(self.handler.handle(&message.delivery, &publisher).await?),
            None => None,
        };
        connection.close(200, "done".into()).await?;
        Ok(handled)
    }

    /// Consumes until `shutdown` resolves, then drains: stops taking
    /// deliveries, finishes and acknowledges the ones in hand, exits.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let metrics = tokio::spawn(serve_metrics(
            self.metrics_listener,
            self.handler.clone(),
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
        };
        consumer::run(self.handler, settings, self.status, stop).await;
        let _ = metrics.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `/metrics`, `/healthz`, and `/readyz` (consuming, and Redis and the
/// chat-system answer).
async fn serve_metrics(
    listener: TcpListener,
    handler: Arc<Handler>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let prometheus = shared::telemetry::metrics();
    let metrics = warp::path!("metrics").and(warp::get()).map(move || {
        warp::reply::with_header(
            prometheus.render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    let readyz = warp::path!("readyz").and(warp::get()).then(move || {
        let (handler, status) = (handler.clone(), status.clone());
        async move {
            let ready = status.connected() && handler.storage.ready().await;
            let (code, text) = if ready {
                (200, "ready")
            } else {
                (503, "not ready")
            };
            let status = warp::http::StatusCode::from_u16(code).expect("a valid status");
            shared::http::json_with_status(&serde_json::json!({ "status": text }), status)
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
}

//! The dead-letter console (`worker console`): a web page where an
//! operator sees the queues at a glance, searches the dead letters, and
//! replays or discards them, one, selected, or every letter a filter
//! matches.
//!
//! A subcommand of the worker, not a binary of its own: it acts through
//! the worker's replay path (`replay::Run::settle`: nothing leaves the
//! dead-letter queue before its copy is confirmed) on the worker's
//! topology and retry schedule, from the same settings.
//!
//! `letters` reads the queue (a snapshot: every letter taken unacknowledged,
//! then returned) and filters, groups and pages it; `actions` moves what an
//! operator picked; `overview` reads depths and the workers' rates; `auth`
//! keeps credentials, sessions and CSRF tokens; `audit` writes who did
//! what; `routes` is the HTTP surface, `assets` the page itself.

mod actions;
mod audit;
mod auth;
mod letters;
mod overview;
mod routes;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::amqp::topology::Topology;
use tokio::net::TcpListener;

use crate::config::{Config, ConsoleArgs};
use crate::retry::Policy;
use state::State;

pub struct Console {
    state: Arc<State>,
    listener: TcpListener,
    address: SocketAddr,
}

impl Console {
    /// Checks the credentials (none configured: an error), binds the
    /// address; connects to nothing yet.
    pub async fn build(config: Config, arguments: ConsoleArgs) -> anyhow::Result<Self> {
        let auth = auth::Auth::from_arguments(&arguments)?;
        let listener = TcpListener::bind(arguments.console_addr)
            .await
            .with_context(|| format!("binding {}", arguments.console_addr))?;
        let address = listener.local_addr()?;
        let topology = Topology::new(&config.broker);
        let policy = Policy::new(
            config.retry_max_attempts,
            Duration::from_millis(config.retry_initial_delay_ms),
            Duration::from_millis(config.retry_max_delay_ms),
        );
        let overview = overview::Overview::new(
            &config.broker.amqp_url,
            &topology,
            &policy.queues(),
            arguments.worker_metrics.clone(),
        );
        let state = State {
            letters: letters::Letters::new(&config.broker.amqp_url, topology.dead_queue()),
            audit: audit::Audit::open(arguments.audit_log.as_deref())?,
            retention: Duration::from_secs(arguments.discard_retention_hours * 3600),
            topology,
            auth,
            overview,
            config,
        };
        tracing::info!(
            %address,
            credentials = %state.auth.describe(),
            "console listening"
        );
        Ok(Self {
            state: Arc::new(state),
            listener,
            address,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves; the overview's sampler runs as
    /// long.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let sampling = self.state.clone();
        let sampler = tokio::spawn(async move { sampling.overview.sample_forever().await });
        let routes = routes::routes(self.state.clone());
        warp::serve(routes)
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
        sampler.abort();
        Ok(())
    }
}

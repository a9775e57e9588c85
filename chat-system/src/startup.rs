//! `Application`: the chat-system assembled and bound to its socket, ready
//! to run until a shutdown future resolves. Tests build it on port 0.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use sqlx::postgres::PgPool;
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::database::{self, Database, Readiness};
use crate::routes::{Limits, routes};
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    pool: PgPool,
    readiness: Readiness,
    config: Config,
    auth: Arc<Auth>,
}

impl Application {
    /// Binds the listener and creates the (lazy) pool. PostgreSQL need not
    /// be up yet: the database is prepared in the background once running.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let address = listener.local_addr()?;
        let auth = Arc::new(Auth::from_config(&config)?);
        let pool = database::pool(&config)?;
        Ok(Self {
            listener,
            address,
            pool,
            readiness: Readiness::default(),
            config,
            auth,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// requests in flight finish and closes the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let preparing = tokio::spawn(database::prepare_until_ready(
            self.config.database_url.clone(),
            self.pool.clone(),
            self.readiness.clone(),
        ));
        let search_pool = database::search_pool(&self.config)?;
        let database = Database::new(self.pool.clone(), search_pool, self.readiness);
        let store = Store::new(
            database,
            self.config.database_write_lanes,
            self.config.database_write_batch,
        );
        tracing::info!(address = %self.address, "chat-system listening");
        let limits = Limits {
            max_body_bytes: self.config.max_body_bytes,
            search_max_terms: self.config.search_max_terms,
        };
        warp::serve(routes(store, limits, self.auth))
            .incoming(self.listener)
            .graceful(shutdown)
            .run()
            .await;
        preparing.abort();
        self.pool.close().await;
        tracing::info!("chat-system stopped");
        Ok(())
    }
}

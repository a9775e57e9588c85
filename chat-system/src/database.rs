//! The database: its pools, getting PostgreSQL ready (the database itself
//! when it does not exist yet, and the embedded migrations), and
//! [`Database`], the handle `reads` and `writes` run their SQL on, with
//! what a write of a record can come to ([`Outcome`], [`Stored`]).
//!
//! The service starts listening before any of this has succeeded, so it
//! comes up while PostgreSQL is still starting; requests answer 503 and
//! `/readyz` says "not ready" until [`prepare_until_ready`] is done.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Config;
use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Builds the pool without connecting: connections open on first use, and
/// a dead one is replaced on the next acquire, so a PostgreSQL restart
/// needs no restart here.
pub(crate) fn pool(config: &Config) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_millis(config.database_acquire_timeout_ms))
        .test_before_acquire(false)
        .connect_lazy_with(options(config)?))
}

/// The pool searches run on, apart from the one writes take their
/// connections from: a burst of searches over large chats cannot hold the
/// connections the workers' writes need. Each statement on it is cancelled
/// after `SEARCH_TIMEOUT_MS`.
pub(crate) fn search_pool(config: &Config) -> anyhow::Result<PgPool> {
    let timeout = config.search_timeout_ms.to_string();
    Ok(PgPoolOptions::new()
        .max_connections(config.search_max_connections)
        .acquire_timeout(Duration::from_millis(config.database_acquire_timeout_ms))
        .test_before_acquire(false)
        .connect_lazy_with(options(config)?.options([("statement_timeout", timeout.as_str())])))
}

fn options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(&config.database_url)
        .map_err(|error| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {error}"))?
        .application_name("chat-system"))
}

/// Set once the schema is in place; requests are refused with 503 before.
#[derive(Clone, Default)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub(crate) fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Creates the database when missing and runs the migrations, retrying with
/// backoff for as long as PostgreSQL is unreachable.
pub(crate) async fn prepare_until_ready(database_url: String, pool: PgPool, readiness: Readiness) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let prepared = (|| prepare(&database_url, &pool))
        .retry(backoff)
        .notify(
            |error, delay| tracing::warn!(error = %error, ?delay, "database not ready, retrying"),
        )
        .await;
    match prepared {
        Ok(()) => {
            readiness.set_ready();
            tracing::info!("database ready");
        }
        Err(error) => tracing::error!(%error, "giving up on the database"),
    }
}

async fn prepare(database_url: &str, pool: &PgPool) -> Result<(), sqlx::Error> {
    if !sqlx::Postgres::database_exists(database_url).await? {
        match sqlx::Postgres::create_database(database_url).await {
            Ok(()) => tracing::info!("created the database"),
            // Another replica created it between our check and our create.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error),
        }
    }
    // The migrator holds an advisory lock, so replicas starting together
    // apply each migration once.
    MIGRATOR
        .run(pool)
        .await
        .map_err(|error| sqlx::Error::Migrate(Box::new(error)))
}

/// The database, usable once its migrations have run; cheap to clone.
#[derive(Clone)]
pub(crate) struct Database {
    pool: PgPool,
    /// Searches only ([`search_pool`]).
    search_pool: PgPool,
    readiness: Readiness,
}

impl Database {
    pub(crate) fn new(pool: PgPool, search_pool: PgPool, readiness: Readiness) -> Self {
        Self {
            pool,
            search_pool,
            readiness,
        }
    }

    /// The pool, once migrations have run; 503 before.
    pub(crate) fn pool(&self) -> Result<&PgPool, StoreError> {
        if self.readiness.is_ready() {
            Ok(&self.pool)
        } else {
            Err(StoreError::Starting)
        }
    }

    /// The searches' pool, once migrations have run.
    pub(crate) fn search_pool(&self) -> Result<&PgPool, StoreError> {
        self.pool()?;
        Ok(&self.search_pool)
    }
}

/// Whether a write stored a new row or found the same one already there;
/// for an edit, whether its body is now the stored one, was already, or
/// has been superseded by a higher revision (stored all the same: each
/// revision's body is current once, in revision order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Created,
    AlreadyThere,
    Superseded,
}

/// What became of one record: stored now or already there, or why not
/// (`NotFound`, `Conflict`).
pub(crate) type Stored = Result<Outcome, StoreError>;

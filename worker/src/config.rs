//! The worker's settings and commands: each setting an environment
//! variable and a flag.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{Broker, ChatSystem, Counters, Telemetry};
use shared::job::Kind;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Persists queued chats and messages through the chat-system"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume the jobs queue until SIGTERM (the default).
    Run,
    /// Re-publish dead-lettered jobs to the jobs exchange, attempts reset;
    /// each leaves the dead-letter queue only once its re-publish is
    /// confirmed.
    Replay(Selection),
    /// List the dead-lettered jobs with their reasons; changes nothing.
    DeadLetters(Selection),
}

/// Which dead letters a replay or a listing takes.
#[derive(Debug, Clone, Default, Args)]
pub struct Selection {
    /// At most this many jobs.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only jobs of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Only jobs of this application token.
    #[arg(long)]
    pub token: Option<String>,
    /// Show what would be replayed without replaying it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Deliveries the broker hands this worker before it acknowledges any
    /// (a delivery holds one job, or a batch the api gathered).
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 256)]
    pub prefetch: u16,

    /// Batches stored at once (bulk requests in flight).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,

    /// Most jobs one batch takes, and one bulk request to the chat-system
    /// carries.
    #[arg(long, env = "WORKER_BATCH_MAX", default_value_t = 256)]
    pub batch_max: usize,

    /// Most bytes of jobs one batch takes, and of records one bulk request
    /// carries. Keep it under the chat-system's `MAX_BODY_BYTES`: a bulk
    /// request it refuses (413) is sent again in halves, and the halved
    /// size kept.
    #[arg(long, env = "WORKER_BATCH_BYTES", default_value_t = 512 * 1024)]
    pub batch_bytes: usize,

    /// Attempts before a job that keeps failing transiently is
    /// dead-lettered.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 10)]
    pub retry_max_attempts: u32,

    /// Delay before the first retry; doubles each attempt.
    #[arg(long, env = "RETRY_INITIAL_DELAY_MS", default_value_t = 1000)]
    pub retry_initial_delay_ms: u64,

    /// Longest delay between two attempts.
    #[arg(long, env = "RETRY_MAX_DELAY_MS", default_value_t = 300_000)]
    pub retry_max_delay_ms: u64,

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(long, env = "WORKER_METRICS_ADDR", default_value = "0.0.0.0:3002")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub broker: Broker,

    #[command(flatten)]
    pub counters: Counters,

    #[command(flatten)]
    pub chat_system: ChatSystem,

    /// The chat-system's write credential, sent with every bulk write.
    #[command(flatten)]
    pub write_credential: shared::secret::WriteCredential,

    #[command(flatten)]
    pub telemetry: Telemetry,
}

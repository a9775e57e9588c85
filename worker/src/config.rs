//! The worker's settings and commands: each setting an environment
//! variable and a flag.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Serve the dead-letter console: the queues at a glance, dead letters
    /// searched, replayed and discarded from a browser.
    Console(ConsoleArgs),
}

/// The console's settings. It refuses to start without a credential.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Where the console is served.
    #[arg(long, env = "CONSOLE_ADDR", default_value = "127.0.0.1:3010")]
    pub console_addr: SocketAddr,

    /// The name the admin logs in with (replays and discards).
    #[arg(long, env = "CONSOLE_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,

    /// The admin's password (16 to 512 visible ASCII characters). A
    /// secret: never logged.
    #[arg(long, env = "CONSOLE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// A file holding `CONSOLE_ADMIN_PASSWORD` instead.
    #[arg(long, env = "CONSOLE_ADMIN_PASSWORD_FILE")]
    pub admin_password_file: Option<PathBuf>,

    /// The name the read-only user logs in with (sees, cannot act).
    #[arg(long, env = "CONSOLE_VIEWER_USER", default_value = "viewer")]
    pub viewer_user: String,

    /// The read-only user's password. A secret: never logged.
    #[arg(long, env = "CONSOLE_VIEWER_PASSWORD", hide_env_values = true)]
    pub viewer_password: Option<String>,

    /// A file holding `CONSOLE_VIEWER_PASSWORD` instead.
    #[arg(long, env = "CONSOLE_VIEWER_PASSWORD_FILE")]
    pub viewer_password_file: Option<PathBuf>,

    /// How long a discarded letter is kept in `{prefix}.discarded`.
    #[arg(long, env = "CONSOLE_DISCARD_RETENTION_HOURS", default_value_t = 168)]
    pub discard_retention_hours: u64,

    /// Where the audit log's lines are appended (one JSON object each);
    /// they go to the log too.
    #[arg(long, env = "CONSOLE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// The workers' `/metrics` URLs, comma-separated: the overview's rates
    /// are read from them every few seconds.
    #[arg(long, env = "CONSOLE_WORKER_METRICS", value_delimiter = ',')]
    pub worker_metrics: Vec<String>,

    /// A session ends after this many hours without a request.
    #[arg(long, env = "CONSOLE_SESSION_HOURS", default_value_t = 8)]
    pub session_hours: u64,

    /// Mark the session cookie `Secure` (set it when the console is served
    /// behind TLS).
    #[arg(long, env = "CONSOLE_SECURE_COOKIE")]
    pub secure_cookie: bool,
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

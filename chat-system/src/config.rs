//! The chat-system's settings: each an environment variable and a flag.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-system",
    version,
    about = "The reference chat-system service on PostgreSQL"
)]
pub struct Config {
    /// PostgreSQL to store in; the database is created when missing.
    /// May hold a password: never logged.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/chat_system",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Address the HTTP server listens on (port 0 picks a free one).
    #[arg(
        long = "addr",
        env = "CHAT_SYSTEM_ADDR",
        default_value = "0.0.0.0:3000"
    )]
    pub addr: SocketAddr,

    /// Upper bound on PostgreSQL connections held by the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// How long a request waits for a pooled connection before it is
    /// answered 503: bounds the wait while PostgreSQL is down.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub database_acquire_timeout_ms: u64,

    /// Connections searches may hold at once, apart from the pool writes
    /// and other reads use.
    #[arg(long, env = "SEARCH_MAX_CONNECTIONS", default_value_t = 4)]
    pub search_max_connections: u32,

    /// A search statement is cancelled (503) after this many milliseconds.
    #[arg(long, env = "SEARCH_TIMEOUT_MS", default_value_t = 2000)]
    pub search_timeout_ms: u64,

    /// Most words a search query may have (400 beyond).
    #[arg(long, env = "SEARCH_MAX_TERMS", default_value_t = 16)]
    pub search_max_terms: usize,

    /// Transactions writing at once. Writes that arrive while they are busy
    /// gather and share the next one (group commit).
    #[arg(long, env = "DATABASE_WRITE_LANES", default_value_t = 1)]
    pub database_write_lanes: usize,

    /// Most writes (bulk requests, single `PUT`s) one transaction takes.
    #[arg(long, env = "DATABASE_WRITE_BATCH", default_value_t = 64)]
    pub database_write_batch: usize,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: u64,

    /// `required`: writes need `CHAT_SYSTEM_WRITE_TOKEN`, the application
    /// routes `CHAT_SYSTEM_ADMIN_TOKEN`, and the service does not start
    /// without them. `none`: unsafe, anyone who reaches the port writes.
    #[arg(long, env = "CHAT_SYSTEM_AUTH", value_enum, default_value_t = AuthMode::Required)]
    pub auth: AuthMode,

    #[command(flatten)]
    pub write_credential: shared::secret::WriteCredential,

    #[command(flatten)]
    pub admin_credential: shared::secret::AdminCredential,

    #[command(flatten)]
    pub telemetry: shared::config::Telemetry,
}

/// `CHAT_SYSTEM_AUTH` (checked by `auth`, which reads this module; kept
/// here so that the configuration depends on nothing else of the crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Writes and admin routes need their credential.
    Required,
    /// Unsafe: anyone who reaches the port may write.
    None,
}

//! Configuration groups that several binaries share.
//!
//! Every setting is an environment variable and a command-line flag at once
//! (clap's `env`), with a default that works on one machine. Each binary has
//! its own `Config` that flattens the groups it needs, so `--help` lists
//! exactly what that binary reads.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Logging: the filter (`RUST_LOG`) and the output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Args)]
pub struct Telemetry {
    /// Log filter, in `tracing-subscriber`'s `EnvFilter` syntax.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            rust_log: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// RabbitMQ: where it is and the names and kind of the queues.
#[derive(Debug, Clone, Args)]
pub struct Broker {
    /// RabbitMQ URL. Holds a password: never logged.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name (`{prefix}.jobs`,
    /// `{prefix}.dead`, `{prefix}.retry.*`).
    #[arg(long, env = "QUEUE_PREFIX", default_value = "chat")]
    pub queue_prefix: String,

    /// `quorum` (replicated, at-least-once dead-lettering) or `classic`.
    #[arg(long, env = "QUEUE_TYPE", value_enum, default_value_t = QueueType::Quorum)]
    pub queue_type: QueueType,

    /// How long a publish waits for the broker's confirm, in milliseconds.
    /// Past it the api answers 503 and the worker requeues the delivery.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5000)]
    pub publish_timeout_ms: u64,
}

impl Broker {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }
}

/// The kind of RabbitMQ queue every queue of the topology is declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    Quorum,
    Classic,
}

/// Redis, where the counters live, and how long an idle counter stays.
#[derive(Debug, Clone, Args)]
pub struct Counters {
    /// Redis URL. May hold a password: never logged.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key (`{prefix}:{token}:...`).
    #[arg(long, env = "REDIS_PREFIX", default_value = "chat")]
    pub redis_prefix: String,

    /// Seconds an idle counter stays in Redis once none of its numbers is
    /// in flight. While one is, the counter does not expire at all.
    #[arg(long, env = "COUNTER_TTL_SECS", default_value_t = 3600)]
    pub counter_ttl_secs: u64,

    /// How many replicas must hold a write to the counters before it
    /// counts: a draw before its number is answered, a release or a
    /// give-back before it is done (Redis `WAIT`). Redis replicates
    /// asynchronously: with 0, a master that dies right after a draw may
    /// not have passed it on, and its promoted replica hands the number
    /// out again; a release it loses leaves a number in flight. 0 for a
    /// single node; 1 on a cluster with a replica per master.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long a write waits for `REDIS_WAIT_REPLICAS`, in milliseconds.
    /// Past it a draw is answered 503 (its number given back), and a
    /// release or give-back is tried again later.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,
}

impl Counters {
    pub fn counter_ttl(&self) -> Duration {
        Duration::from_secs(self.counter_ttl_secs)
    }

    /// `REDIS_WAIT_REPLICAS` and `REDIS_WAIT_TIMEOUT_MS`.
    pub fn wait(&self) -> crate::redis_client::Wait {
        crate::redis_client::Wait {
            replicas: self.redis_wait_replicas,
            timeout: Duration::from_millis(self.redis_wait_timeout_ms),
        }
    }
}

/// The chat-system's HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ChatSystem {
    /// Base URL of the chat-system.
    #[arg(long, env = "CHAT_SYSTEM_URL", default_value = "http://127.0.0.1:3000")]
    pub chat_system_url: String,

    /// Timeout of one request to the chat-system, in milliseconds.
    #[arg(long, env = "CHAT_SYSTEM_TIMEOUT_MS", default_value_t = 2000)]
    pub chat_system_timeout_ms: u64,
}

/// `segments` appended to `base`, each percent-encoded: the chat-system
/// URL of a resource, whatever the token or number holds.
pub fn endpoint(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("an http(s) base URL has path segments")
        .pop_if_empty()
        .extend(segments);
    url
}

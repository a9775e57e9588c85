//! The api's settings: each an environment variable and a flag.

use std::net::SocketAddr;

use clap::Parser;
use shared::config::{Broker, ChatSystem, Counters, Telemetry};

use crate::durability::Durability;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "api",
    version,
    about = "Hands out chat and message numbers and queues their records"
)]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free one).
    #[arg(long = "addr", env = "API_ADDR", default_value = "0.0.0.0:3001")]
    pub addr: SocketAddr,

    /// Largest message accepted, in bytes of UTF-8 text.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// How long a token or chat the chat-system does not know is answered
    /// 404 without asking it again, in milliseconds.
    #[arg(long, env = "NEGATIVE_CACHE_TTL_MS", default_value_t = 5000)]
    pub negative_cache_ttl_ms: u64,

    /// Lifetime of the lock held while one request seeds a counter from the
    /// chat-system; longer than a chat-system request may take.
    #[arg(long, env = "SEED_LOCK_MS", default_value_t = 5000)]
    pub seed_lock_ms: u64,

    /// How long a request waits for another one's seed before giving up
    /// with 503.
    #[arg(long, env = "SEED_WAIT_MS", default_value_t = 5000)]
    pub seed_wait_ms: u64,

    /// Seeds (chat-system reads on a counter miss) one api process runs at
    /// once; further misses wait, up to `SEED_WAIT_MS`. Bounds what a flood
    /// of unknown tokens costs the chat-system.
    #[arg(long, env = "SEED_CONCURRENCY", default_value_t = 32)]
    pub seed_concurrency: usize,

    /// Creates per second one application may make through this api
    /// process (a token bucket per application); beyond, 429 with
    /// `Retry-After` and nothing drawn. 0 turns the limit off.
    #[arg(long, env = "RATE_LIMIT_PER_APPLICATION", default_value_t = 0.0)]
    pub rate_limit_per_application: f64,

    /// Creates one application may make at once above its rate (the
    /// bucket's size); 0 means one second's worth.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,

    /// How long a create over its application's rate is held before its
    /// 429, in milliseconds: a client that ignores `Retry-After` then
    /// cannot turn 429s into a flood of their own.
    #[arg(long, env = "RATE_LIMIT_HOLD_MS", default_value_t = 100)]
    pub rate_limit_hold_ms: u64,

    /// What the api demands of its Redis before it draws numbers: `verify`
    /// (`appendonly yes` and `appendfsync always`, checked with `CONFIG
    /// GET`), `trust` (the operator vouches for it, where `CONFIG` is not
    /// allowed), or `unsafe-none` (any Redis; after a Redis crash numbers
    /// may be handed out twice).
    #[arg(long, env = "REDIS_DURABILITY", value_enum, default_value_t = Durability::Verify)]
    pub redis_durability: Durability,

    /// Timeout of one Redis command, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,

    /// Publish lanes, each a confirm channel on the one connection: how
    /// many batches of jobs wait for their confirm at once.
    #[arg(long, env = "PUBLISH_CHANNELS", default_value_t = 1)]
    pub publish_channels: usize,

    /// Most jobs a lane publishes under one confirm wait: those of the
    /// requests that gathered while the lanes were busy.
    #[arg(long, env = "PUBLISH_BATCH_MAX", default_value_t = 512)]
    pub publish_batch_max: usize,

    /// Most bytes of jobs in one batch message; a lane's jobs beyond it go
    /// in further messages under the same confirm wait.
    #[arg(long, env = "PUBLISH_BATCH_BYTES", default_value_t = 256 * 1024)]
    pub publish_batch_bytes: usize,

    /// Most bytes of jobs waiting for a publish lane; a request that finds
    /// no room within `PUBLISH_TIMEOUT_MS` is answered 503 and its number
    /// given back.
    #[arg(long, env = "PUBLISH_QUEUE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub publish_queue_bytes: usize,

    /// Seconds an `Idempotency-Key` is remembered: a retry with it within
    /// that time gets the first request's number.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,

    #[command(flatten)]
    pub counters: Counters,

    #[command(flatten)]
    pub broker: Broker,

    #[command(flatten)]
    pub chat_system: ChatSystem,

    #[command(flatten)]
    pub telemetry: Telemetry,
}

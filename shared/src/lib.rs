//! What the api, the worker and the chat-system must agree on, and nothing
//! else: configuration groups, telemetry and shutdown set-up, the JSON error
//! convention of the HTTP services, the record kinds and their jobs
//! (`job`), everything of RabbitMQ (`amqp`), the chat-system's contract
//! and its one client (`chat_system`), the counters' keys and scripts and
//! their Redis connection (one node or a cluster), one group-commit
//! helper (`group_commit`), and the trace context that follows a record through
//! all of them.
//!
//! Like rust-analyzer's `stdx`, this crate stays small: no handlers; the
//! only clients are those of a contract two crates share.

pub mod amqp;
pub mod chat_system;
pub mod config;
pub mod counters;
pub mod group_commit;
pub mod http;
pub mod job;
pub mod redis_client;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

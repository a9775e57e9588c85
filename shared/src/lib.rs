//! What the api, the worker and the chat-system must agree on, and nothing
//! else: configuration groups, telemetry and shutdown set-up, the JSON error
//! convention of the HTTP services, the job schema and its confirmed
//! publish, the queue topology, the counters' keys and scripts and their
//! Redis connection (one node or a cluster), and the
//! trace context that follows a record through all of them.
//!
//! Like rust-analyzer's `stdx`, this crate stays small: no handlers, no
//! clients of its own.

pub mod config;
pub mod counters;
pub mod http;
pub mod job;
pub mod publish;
pub mod redis_client;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;

//! What the api, the worker and the chat-system must agree on, and nothing
//! else: configuration groups, telemetry and shutdown set-up, the JSON error
//! convention of the HTTP services, the job schema, the queue topology and
//! the counters' keys and scripts.
//!
//! Like rust-analyzer's `stdx`, this crate stays small: no handlers, no
//! clients of its own.

pub mod config;
pub mod counters;
pub mod http;
pub mod job;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

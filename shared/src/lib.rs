//! What the api, the worker and the chat-system must agree on, and nothing
//! else: configuration groups, telemetry and shutdown set-up, the JSON error
//! convention of the HTTP services.
//!
//! Like rust-analyzer's `stdx`, this crate stays small: no handlers, no
//! clients of its own.

pub mod config;
pub mod http;
pub mod shutdown;
pub mod telemetry;

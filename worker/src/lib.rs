//! The worker: takes the jobs the api queued and persists each through
//! the chat-system's HTTP API, at-least-once delivery with an exactly-once
//! effect.
//!
//! `consumer` runs the consume loop and its reconnects; `handler` takes one
//! delivery through decode, `store` (the record through the chat-system,
//! then its number released in Redis) and `retry` (transient or permanent,
//! delay or dead letter), and acknowledges it only once its fate is safe
//! (`acks`); `replay` brings dead letters home, and `console` serves
//! them to a browser.

mod acks;
pub mod config;
pub mod console;
mod consumer;
mod depth;
mod handler;
pub mod replay;
pub mod retry;
mod startup;
mod store;
pub mod telemetry;

pub use config::{Cli, Command, Config, ConsoleArgs, Selection};
pub use consumer::Status;
pub use handler::Outcome;
pub use startup::Worker;

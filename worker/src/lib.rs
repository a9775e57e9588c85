//! The worker: takes the jobs the api queued and persists each through
//! the chat-system's HTTP API, at-least-once delivery with an exactly-once
//! effect.
//!
//! `consumer` runs the consume loop and its reconnects; `handler` takes one
//! delivery through decode, `persist` (store, then release the number in
//! Redis) and `retry` (transient or permanent, delay or dead letter), and
//! acknowledges it only once its fate is safe; `replay` brings dead
//! letters home.

mod acks;
pub mod config;
mod consumer;
mod handler;
mod persist;
pub mod replay;
pub mod retry;
mod startup;

pub use config::{Cli, Command, Config, Filter, KindFilter};
pub use consumer::Status;
pub use handler::Handled;
pub use startup::Worker;

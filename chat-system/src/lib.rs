//! The reference chat-system: applications, chats and messages on
//! PostgreSQL, behind the HTTP contract the worker persists through and the
//! api seeds its counters from (`docs/chat-system.openapi.yaml`).
//!
//! `routes` turns HTTP into calls on `store` (the reads) and `records` (the
//! one write path, a batch of any size), the only modules that speak SQL;
//! `database` creates and migrates the database; `startup` wires them.

pub mod config;
mod database;
mod error;
mod records;
mod routes;
mod startup;
mod store;

pub use config::Config;
pub use startup::Application;

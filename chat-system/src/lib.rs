//! The reference chat-system: applications, chats and messages on
//! PostgreSQL, behind the HTTP contract the worker persists through and the
//! api seeds its counters from (`docs/chat-system.openapi.yaml`).
//!
//! `routes` turns HTTP into calls on `store`: reads, and writes that
//! `writer` gathers into shared transactions (group commit) of `records`,
//! the one write path; `store` and `records` are the only modules that
//! speak SQL. `database` creates and migrates the database; `startup`
//! wires them.

pub mod auth;
pub mod config;
mod database;
mod error;
mod records;
mod routes;
mod startup;
mod store;
mod writer;

pub use config::Config;
pub use startup::Application;

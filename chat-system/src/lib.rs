//! The reference chat-system: applications, chats and messages on
//! PostgreSQL, behind the HTTP contract the worker persists through and the
//! api seeds its counters from (`docs/chat-system.openapi.yaml`).
//!
//! The modules, each importing only those listed before it (no circle):
//!
//! - `config`, `error`, `auth`: settings, the two error types and the
//!   credentials.
//! - `database`: the pools, creating and migrating the database, and
//!   [`Database`](database::Database), the handle SQL runs on, with a
//!   write's results (`Outcome`, `Stored`).
//! - `reads`: every read (`Application`, `Chat`, `Message`, search ...).
//! - `writes`: the one write path of records (`transact`, a batch in one
//!   transaction) and the applications' own writes.
//! - `writer`: group commit: writes arriving together share a `transact`.
//! - `store`: `Store`, the database and its writer, which the routes get.
//! - `routes`: HTTP, by resource, calling `reads` and `store`.
//! - `startup`: wires them.
//!
//! `database`, `reads` and `writes` are the only modules that speak SQL.

pub mod auth;
pub mod config;
mod database;
mod error;
mod reads;
mod routes;
mod startup;
mod store;
mod writer;
mod writes;

pub use config::Config;
pub use startup::Application;

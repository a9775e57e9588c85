//! The front-end clients talk to. A create request is taken in by
//! `intake`: `numbers` draws the next number from Redis (seeding the
//! counter from the chat-system through `shared::chat_system` on a miss),
//! `publisher` publishes the job to RabbitMQ and waits for the broker's
//! confirm, and only then does `routes` answer the number.

pub mod config;
pub mod durability;
mod error;
mod idempotency;
mod intake;
mod limits;
mod negative_cache;
mod numbers;
mod publisher;
mod rate_limit;
mod reads;
mod rounds;
mod routes;
mod startup;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;

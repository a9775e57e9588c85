//! The api against the real Redis, RabbitMQ and chat-system. Each test gets
//! its own api on port 0, its own chat-system and database, its own key
//! and queue prefixes, and proxies in front of every dependency to cut.

mod cluster;
mod durability;
mod edits;
mod errors;
mod fairness;
mod helpers;
mod idempotency;
mod jobs;
mod numbers;
mod outages;
mod reads;
mod seeding;

//! The worker against the real RabbitMQ, Redis and chat-system: each test
//! has its own queue prefix, key prefix and chat-system database, a fault
//! proxy in front of the chat-system and a TCP proxy in front of RabbitMQ.

mod batches;
mod browser;
mod cluster;
mod console;
mod edits;
mod end_to_end;
mod helpers;
mod metrics_reference;
mod persistence;
mod probes;
mod replay;
mod resilience;
mod retries;

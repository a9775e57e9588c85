//! The chat-system's HTTP contract, against the real PostgreSQL: each test
//! gets a chat-system on port 0 with a freshly created database.

mod applications;
mod auth;
mod chats;
mod concurrency;
mod edits;
mod helpers;
mod messages;
mod outage;
mod records;
mod search;

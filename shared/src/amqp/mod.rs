//! Everything of RabbitMQ the api, the worker and the bench share: the
//! topology's names and declarations (`topology`), the headers of its
//! messages (`headers`), the one confirmed publish (`publish`), how jobs
//! travel in messages (`batch`), reaching the broker (`connection`) and
//! watching a connection (`watch`).
//!
//! ```text
//! api --publish--> [{p}.jobs exchange] --job--> ({p}.jobs queue) --> worker
//!                                                     | delivery limit
//! worker --retry--> ({p}.retry.{ms}) --TTL--> [{p}.jobs exchange]
//! worker --dead---> [{p}.dead exchange] --> ({p}.dead queue) --replay--> [{p}.jobs]
//! ```
//!
//! Architecture invariant: no other module of any crate spells an AMQP
//! header name, a queue or exchange name, or a queue argument.

pub mod batch;
pub mod connection;
pub mod headers;
pub mod publish;
pub mod topology;
pub mod watch;

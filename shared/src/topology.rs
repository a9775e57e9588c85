//! The RabbitMQ topology the api and the worker agree on, declared by both
//! (declarations are idempotent), so whichever starts first finds it ready.
//!
//! ```text
//! api --publish--> [{p}.jobs exchange] --job--> ({p}.jobs queue) --> worker
//!                                                     | delivery limit
//! worker --retry--> ({p}.retry.{ms}) --TTL--> [{p}.jobs exchange]
//! worker --dead---> [{p}.dead exchange] --> ({p}.dead queue) --replay--> [{p}.jobs]
//! ```
//!
//! With quorum queues (the default), every queue is replicated, and the
//! queues that dead-letter (jobs, after the delivery limit; retry, after
//! the TTL) do it at-least-once, so a broker failure mid-move cannot lose a
//! job.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{Broker, QueueType};

/// The routing key of every job.
pub const ROUTING_KEY: &str = "job";

/// Deliveries of one job (crashes, connection losses) before the broker
/// dead-letters it by itself: a payload that kills its worker must not kill
/// every worker forever. High, because a delivery interrupted by a worker
/// restart counts too.
const DELIVERY_LIMIT: i64 = 50;

/// How long connecting to RabbitMQ may take before it counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
}

impl Topology {
    pub fn new(broker: &Broker) -> Self {
        Self {
            prefix: broker.queue_prefix.clone(),
            queue_type: broker.queue_type,
        }
    }

    /// Where the api publishes jobs, and where retries and replays return.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// What the workers consume.
    pub fn jobs_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Jobs that will not succeed by being retried, kept until replayed.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The queue where a job waits `delay` before going back to the jobs
    /// exchange. One queue per delay: RabbitMQ expires messages only at the
    /// head of a queue, so a queue must hold one delay only.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}ms", self.prefix, delay.as_millis())
    }

    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        insert(&mut arguments, "x-queue-type", string(kind));
        arguments
    }

    /// Arguments that send what a queue drops to `exchange` with `key`,
    /// at-least-once where the queue type supports it.
    fn dead_lettering(&self, arguments: &mut FieldTable, exchange: String, key: &str) {
        insert(arguments, "x-dead-letter-exchange", string(&exchange));
        insert(arguments, "x-dead-letter-routing-key", string(key));
        if self.queue_type == QueueType::Quorum {
            insert(arguments, "x-dead-letter-strategy", string("at-least-once"));
            insert(arguments, "x-overflow", string("reject-publish"));
        }
    }

    /// Declares the exchanges, the jobs queue and the dead-letter queue.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in [self.jobs_exchange(), self.dead_exchange()] {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }

        let mut jobs = self.queue_arguments();
        self.dead_lettering(&mut jobs, self.dead_exchange(), ROUTING_KEY);
        if self.queue_type == QueueType::Quorum {
            insert(
                &mut jobs,
                "x-delivery-limit",
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
        }
        self.declare_queue(channel, &self.jobs_queue(), jobs, &self.jobs_exchange())
            .await?;
        self.declare_queue(
            channel,
            &self.dead_queue(),
            self.queue_arguments(),
            &self.dead_exchange(),
        )
        .await
    }

    /// Declares the retry queue of one delay (the worker does, for each
    /// delay of its schedule).
    pub async fn declare_retry_queue(
        &self,
        channel: &Channel,
        delay: Duration,
    ) -> lapin::Result<()> {
        let mut arguments = self.queue_arguments();
        insert(
            &mut arguments,
            "x-message-ttl",
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        self.dead_lettering(&mut arguments, self.jobs_exchange(), ROUTING_KEY);
        channel
            .queue_declare(self.retry_queue(delay).into(), durable_queue(), arguments)
            .await?;
        Ok(())
    }

    async fn declare_queue(
        &self,
        channel: &Channel,
        queue: &str,
        arguments: FieldTable,
        exchange: &str,
    ) -> lapin::Result<()> {
        channel
            .queue_declare(queue.into(), durable_queue(), arguments)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn insert(table: &mut FieldTable, key: &str, value: AMQPValue) {
    table.insert(ShortString::from(key), value);
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Opens a connection named `name` (as the broker's management UI shows
/// it), failing after [`CONNECT_TIMEOUT`] rather than hanging on a broker
/// that accepts TCP but does not answer.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(connection) => connection,
        Err(_) => Err(lapin::Error::from(lapin::ErrorKind::IOError(
            std::sync::Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out connecting to RabbitMQ",
            )),
        ))),
    }
}

/// The delays between attempts to reach RabbitMQ again: 100 ms doubling to
/// 5 s, jittered so a fleet does not reconnect in step, never giving up.
pub fn reconnect_delays() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// The blocked state of `connection` as it changes: `true` when the
/// broker blocks it (a memory or disk alarm: publishes on it wait), `false`
/// when the block is lifted.
pub fn blocked(
    connection: &Connection,
) -> impl futures::Stream<Item = bool> + Send + Unpin + 'static {
    connection
        .events_listener()
        .filter_map(|event| async move {
            match event {
                lapin::Event::ConnectionBlocked(_) => Some(true),
                lapin::Event::ConnectionUnblocked => Some(false),
                _ => None,
            }
        })
        .boxed()
}

/// How a watched connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLost {
    #[error("RabbitMQ connection failed")]
    Failed(#[source] lapin::Error),
    #[error("RabbitMQ connection closed")]
    Closed,
}

/// Resolves when `connection` fails (the broker went away, a heartbeat was
/// missed) or closes. lapin does not always end a consumer's stream or
/// answer a pending ack once its connection is dead, so whoever holds a
/// connection watches this and gives up on the connection's work. A
/// connection that died before the call is reported at once: lapin's I/O
/// runs on a thread of its own, so that can happen between connecting and
/// watching.
pub fn lost(connection: &Connection) -> impl Future<Output = ConnectionLost> + Send + 'static {
    let mut events = connection.events_listener();
    // Checked after subscribing: an error from here on is in `events`.
    let dead_already = !connection.status().connected();
    async move {
        if dead_already {
            return ConnectionLost::Closed;
        }
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                return ConnectionLost::Failed(error);
            }
        }
        ConnectionLost::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let broker = Broker {
            amqp_url: String::new(),
            queue_prefix: "t1".into(),
            queue_type: QueueType::Quorum,
            publish_timeout_ms: 5000,
        };
        let topology = Topology::new(&broker);

        assert_eq!(topology.jobs_exchange(), "t1.jobs");
        assert_eq!(topology.jobs_queue(), "t1.jobs");
        assert_eq!(topology.dead_queue(), "t1.dead");
        assert_eq!(
            topology.retry_queue(Duration::from_millis(1500)),
            "t1.retry.1500ms"
        );
    }
}

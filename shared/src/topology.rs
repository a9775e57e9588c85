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

/// Deliveries of one job (crashes, connection losses, requeues) before the
/// broker dead-letters it by itself: a payload that kills its worker must
/// not kill every worker forever. High, because a delivery interrupted by a
/// worker restart counts too. Declared on every quorum queue but the
/// dead-letter queue, which must keep its letters however often they are
/// browsed (see [`Dialect`]).
const DELIVERY_LIMIT: i64 = 50;

/// How the broker's quorum queues take a delivery limit.
///
/// RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default,
/// and before 4.3 every requeue counts toward it (a get-and-requeue
/// browse too); `x-delivery-limit: -1` disables it. RabbitMQ 3 has no
/// default limit, and there -1 is a limit below one: the first requeue
/// dead-letters the message. So the dead-letter queue is declared with -1
/// on 4 and without the argument on 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// RabbitMQ 3.x (or a broker whose version could not be read).
    V3,
    /// RabbitMQ 4.x and later.
    V4,
}

impl Dialect {
    /// From the broker's version string (`3.10.8`, `4.1.2`).
    pub fn from_version(version: &str) -> Self {
        match version
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
        {
            Some(major) if major >= 4 => Self::V4,
            _ => Self::V3,
        }
    }

    /// The `x-delivery-limit` of a quorum queue of `role`: `None` leaves
    /// the argument out.
    pub fn delivery_limit(self, role: Role) -> Option<i64> {
        match (role, self) {
            (Role::Dead, Self::V4) => Some(-1),
            (Role::Dead, Self::V3) => None,
            (Role::Jobs | Role::Retry, _) => Some(DELIVERY_LIMIT),
        }
    }
}

/// What a queue of the topology is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Jobs,
    Retry,
    Dead,
}

/// How long connecting to RabbitMQ may take before it counts as a failure.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
    /// Where to read the broker's version from.
    amqp_url: String,
}

impl Topology {
    pub fn new(broker: &Broker) -> Self {
        Self {
            prefix: broker.queue_prefix.clone(),
            queue_type: broker.queue_type,
            amqp_url: broker.amqp_url.clone(),
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

    /// The arguments of a queue of `role`: its type and, for a quorum
    /// queue, its delivery limit as the broker's dialect takes it.
    pub fn queue_arguments(&self, role: Role, dialect: Dialect) -> FieldTable {
        let mut arguments = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        insert(&mut arguments, "x-queue-type", string(kind));
        if self.queue_type == QueueType::Quorum
            && let Some(limit) = dialect.delivery_limit(role)
        {
            insert(
                &mut arguments,
                "x-delivery-limit",
                AMQPValue::LongLongInt(limit),
            );
        }
        arguments
    }

    /// The broker's dialect, from the version it announces.
    async fn dialect(&self) -> Dialect {
        match broker_version(&self.amqp_url).await {
            Some(version) => Dialect::from_version(&version),
            None => {
                tracing::warn!(
                    "could not read RabbitMQ's version: declaring queues as for RabbitMQ 3 (on 4 the dead-letter queue keeps the default delivery limit)"
                );
                Dialect::V3
            }
        }
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

        let dialect = self.dialect().await;
        let mut jobs = self.queue_arguments(Role::Jobs, dialect);
        self.dead_lettering(&mut jobs, self.dead_exchange(), ROUTING_KEY);
        self.declare_queue(channel, &self.jobs_queue(), jobs, &self.jobs_exchange())
            .await?;
        self.declare_queue(
            channel,
            &self.dead_queue(),
            self.queue_arguments(Role::Dead, dialect),
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
        let mut arguments = self.queue_arguments(Role::Retry, self.dialect().await);
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

/// The nodes `AMQP_URL` names: one URL, or several separated by commas
/// (the nodes of a cluster), tried in order.
pub fn nodes(url: &str) -> impl Iterator<Item = &str> {
    url.split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
}

/// Opens a connection named `name` (as the broker's management UI shows
/// it) to the first node of `url` that answers, failing after
/// [`CONNECT_TIMEOUT`] per node rather than hanging on a broker that
/// accepts TCP but does not answer. Called again after a connection is
/// lost, it moves to the next node that answers.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut failure = None;
    for node in nodes(url) {
        match connect_node(node, name).await {
            Ok(connection) => return Ok(connection),
            Err(error) => failure = Some(error),
        }
    }
    Err(failure.unwrap_or_else(|| {
        lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
            lapin::ConnectionState::Closed,
        ))
    }))
}

async fn connect_node(url: &str, name: &str) -> lapin::Result<Connection> {
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

/// The version RabbitMQ announces in its `connection.start` (lapin does
/// not keep it), read over a throwaway TCP connection: send the protocol
/// header, read the first frame, find `version` in its server properties.
pub async fn broker_version(url: &str) -> Option<String> {
    for node in nodes(url) {
        if let Some(version) = node_version(node).await {
            return Some(version);
        }
    }
    None
}

async fn node_version(url: &str) -> Option<String> {
    use lapin::types::parsing::parse_field_table;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    let address = (uri.authority.host.as_str(), uri.authority.port);
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.ok()?;
        // Frame: type (1), channel (2), size (4), payload, end (0xCE).
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.ok()?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        let mut payload = vec![0u8; size.min(1 << 20)];
        stream.read_exact(&mut payload).await.ok()?;
        // connection.start: class 10, method 10, version major and minor,
        // then the server properties.
        if header[0] != 1 || payload.get(..4) != Some(&[0, 10, 0, 10]) {
            return None;
        }
        let (_, properties) = parse_field_table(payload.get(6..)?).ok()?;
        match properties.inner().get("version")? {
            AMQPValue::LongString(version) => Some(version.to_string()),
            AMQPValue::ShortString(version) => Some(version.to_string()),
            _ => None,
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read).await.ok()?
}

/// How a watched connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLost {
    #[error("RabbitMQ connection failed")]
    Failed(#[source] lapin::Error),
    #[error("RabbitMQ connection closed")]
    Closed,
}

/// What happens to a connection: whether the broker blocks it, and its
/// end. lapin hands each connection event to one of its listeners only
/// (they share a queue), so one watcher per connection reads them all;
/// two would each miss what the other took.
pub struct Watched {
    /// Resolves when the connection fails (the broker went away, a
    /// heartbeat was missed) or closes. lapin does not always end a
    /// consumer's stream or answer a pending ack once its connection is
    /// dead, so whoever holds a connection watches this and gives up on
    /// the connection's work.
    pub lost: futures::future::BoxFuture<'static, ConnectionLost>,
    /// `true` while the broker blocks the connection (a memory or disk
    /// alarm: publishes on it wait).
    pub blocked: tokio::sync::watch::Receiver<bool>,
}

/// Starts watching `connection` (a task that lives as long as it does).
/// A connection that died before the call is reported lost at once:
/// lapin's I/O runs on a thread of its own, so that can happen between
/// connecting and watching.
pub fn watch(connection: &Connection) -> Watched {
    let mut events = connection.events_listener();
    // Checked after subscribing: an error from here on is in `events`.
    let dead_already = !connection.status().connected();
    let (blocked_sender, blocked) = tokio::sync::watch::channel(false);
    let (lost_sender, lost) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if dead_already {
            let _ = lost_sender.send(ConnectionLost::Closed);
            return;
        }
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(_) => {
                    blocked_sender.send_replace(true);
                }
                lapin::Event::ConnectionUnblocked => {
                    blocked_sender.send_replace(false);
                }
                lapin::Event::Error(error) => {
                    let _ = lost_sender.send(ConnectionLost::Failed(error));
                    return;
                }
                _ => {}
            }
        }
        let _ = lost_sender.send(ConnectionLost::Closed);
    });
    Watched {
        lost: Box::pin(async move { lost.await.unwrap_or(ConnectionLost::Closed) }),
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_queue_is_exempt_from_the_delivery_limit_in_each_dialect() {
        let topology = Topology::new(&Broker {
            amqp_url: String::new(),
            queue_prefix: "t".into(),
            queue_type: QueueType::Quorum,
            publish_timeout_ms: 5000,
        });
        let limit = |role, dialect| {
            topology
                .queue_arguments(role, dialect)
                .inner()
                .get("x-delivery-limit")
                .cloned()
        };
        assert_eq!(Dialect::from_version("4.1.2"), Dialect::V4);
        assert_eq!(Dialect::from_version("3.10.8"), Dialect::V3);
        assert_eq!(Dialect::from_version("garbage"), Dialect::V3);
        // RabbitMQ 4: -1 disables its default limit of 20.
        assert_eq!(
            limit(Role::Dead, Dialect::V4),
            Some(AMQPValue::LongLongInt(-1))
        );
        // RabbitMQ 3: no default limit, and -1 would dead-letter a letter
        // on its first requeue.
        assert_eq!(limit(Role::Dead, Dialect::V3), None);
        for dialect in [Dialect::V3, Dialect::V4] {
            for role in [Role::Jobs, Role::Retry] {
                assert_eq!(
                    limit(role, dialect),
                    Some(AMQPValue::LongLongInt(DELIVERY_LIMIT)),
                    "{role:?} {dialect:?}"
                );
            }
        }
    }

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

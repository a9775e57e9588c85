//! The names of the topology's exchanges and queues, the role of each
//! queue, and their declaration from one list ([`Topology::queues`]),
//! done by every process that uses them (declarations are idempotent),
//! so whichever starts first finds them ready.
//!
//! With quorum queues (the default), every queue is replicated, and the
//! queues that dead-letter (jobs, after the delivery limit; retry, after
//! the TTL) do it at-least-once, so a broker failure mid-move cannot lose a
//! job.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::connection::broker_version;
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
            (Role::Dead | Role::Discarded, Self::V4) => Some(-1),
            (Role::Dead | Role::Discarded, Self::V3) => None,
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
    /// Dead letters an operator discarded from the console, kept until
    /// their per-message expiration (the console's retention) passes.
    Discarded,
}

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

    /// Discarded dead letters, published to it by name (no exchange),
    /// each expiring after the console's retention; never consumed.
    pub fn discarded_queue(&self) -> String {
        format!("{}.discarded", self.prefix)
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

    /// Every queue of the topology, for a worker whose retry schedule has
    /// `retry_delays` (none: the queues the api and the tools need).
    pub fn queues(&self, retry_delays: &[Duration]) -> Vec<Queue> {
        let mut queues = vec![
            Queue {
                role: Role::Jobs,
                name: self.jobs_queue(),
                delay: None,
            },
            Queue {
                role: Role::Dead,
                name: self.dead_queue(),
                delay: None,
            },
            Queue {
                role: Role::Discarded,
                name: self.discarded_queue(),
                delay: None,
            },
        ];
        queues.extend(retry_delays.iter().map(|&delay| Queue {
            role: Role::Retry,
            name: self.retry_queue(delay),
            delay: Some(delay),
        }));
        queues
    }

    /// Declares the exchanges and every queue of [`Topology::queues`]:
    /// the jobs queue bound to the jobs exchange, dead-lettering to the
    /// dead exchange; the dead-letter queue bound to that; the discarded
    /// queue unbound (the console publishes to it by name); each retry
    /// queue unbound (jobs are published to it by name), its messages
    /// going back to the jobs exchange after its delay.
    pub async fn declare(&self, channel: &Channel, retry_delays: &[Duration]) -> lapin::Result<()> {
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
        for queue in self.queues(retry_delays) {
            let mut arguments = self.queue_arguments(queue.role, dialect);
            let bound_to = match queue.role {
                Role::Jobs => {
                    self.dead_lettering(&mut arguments, self.dead_exchange(), ROUTING_KEY);
                    Some(self.jobs_exchange())
                }
                Role::Dead => Some(self.dead_exchange()),
                Role::Discarded => None,
                Role::Retry => {
                    let delay = queue.delay.expect("a retry queue has a delay");
                    insert(
                        &mut arguments,
                        "x-message-ttl",
                        AMQPValue::LongLongInt(delay.as_millis() as i64),
                    );
                    self.dead_lettering(&mut arguments, self.jobs_exchange(), ROUTING_KEY);
                    None
                }
            };
            channel
                .queue_declare(queue.name.as_str().into(), durable_queue(), arguments)
                .await?;
            if let Some(exchange) = bound_to {
                channel
                    .queue_bind(
                        queue.name.into(),
                        exchange.into(),
                        ROUTING_KEY.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// A queue of the topology: what it is for, its name, and for a retry
/// queue its delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub role: Role,
    pub name: String,
    pub delay: Option<Duration>,
}

/// How many messages wait in `queue` and how many consumers it has, read
/// with a passive declaration (an error, never a 0, for a queue that
/// cannot be read: a wrong name is not an empty queue).
pub async fn depth(channel: &Channel, queue: &str) -> lapin::Result<(u32, u32)> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok((declared.message_count(), declared.consumer_count()))
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
        assert_eq!(topology.discarded_queue(), "t1.discarded");
        assert_eq!(
            topology.retry_queue(Duration::from_millis(1500)),
            "t1.retry.1500ms"
        );
    }
}

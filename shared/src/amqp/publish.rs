//! The one confirmed publish: persistent, `mandatory`, and done only when
//! the broker confirmed it. The api publishes jobs with it, the worker its
//! retry and dead-letter copies, `worker replay` the jobs it brings back,
//! the bench its ceiling and backlog, the tests their fixtures: one path,
//! one error type.
//!
//! The error tells apart what the caller must: whether the broker certainly
//! does not hold the message (not connected, not routed, refused), so that
//! a number can be given back, or may hold it (no confirm, or not in time).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};

use super::headers::{self, TRACEPARENT};
use crate::job::Job;

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(crate) const PERSISTENT: u8 = 2;

/// How a confirmed publish failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The channel was closed: nothing was sent.
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The broker returned it (`mandatory`): no queue is bound for it.
    #[error("RabbitMQ could not route the message to a queue")]
    Unroutable,
    /// The broker nacked it: it did not take it.
    #[error("RabbitMQ refused the message")]
    Nacked,
    /// It may have been sent, but no confirm came: the channel or the
    /// connection failed first. The broker may hold it.
    #[error("no confirm from RabbitMQ")]
    Unconfirmed(#[source] lapin::Error),
    /// It may have been sent, but the confirm did not come in time (a slow
    /// or blocked broker). The broker may hold it.
    #[error("no confirm from RabbitMQ within {0:?}")]
    TimedOut(Duration),
    /// Its wait ran out before it was sent (no room in the queue of
    /// publishes, or no lane took it in time), and it never will be.
    #[error("not sent to RabbitMQ within {0:?}")]
    NotSent(Duration),
}

impl PublishError {
    /// A label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Unroutable => "unroutable",
            Self::Nacked => "nacked",
            Self::Unconfirmed(_) => "unconfirmed",
            Self::TimedOut(_) => "timed_out",
            Self::NotSent(_) => "not_sent",
        }
    }

    /// The broker certainly does not hold the message.
    pub fn never_queued(&self) -> bool {
        matches!(
            self,
            Self::NotConnected | Self::Unroutable | Self::Nacked | Self::NotSent(_)
        )
    }
}

/// What to publish, and where.
#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub properties: BasicProperties,
}

/// Publishes `message` persistent and `mandatory` on `channel` (which must
/// be in confirm mode) and waits at most `timeout` for the broker's
/// confirm. `Ok` means the message is on a durable queue.
pub async fn publish(
    channel: &Channel,
    message: Message,
    timeout: Duration,
) -> Result<(), PublishError> {
    if !channel.status().connected() {
        return Err(PublishError::NotConnected);
    }
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    // The timeout covers sending too: a connection the broker blocked (a
    // resource alarm) holds the frames back.
    let confirmed = async {
        let confirm = channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                options,
                &message.payload,
                message.properties.with_delivery_mode(PERSISTENT),
            )
            .await?;
        confirm.await
    };
    match tokio::time::timeout(timeout, confirmed).await {
        Err(_) => Err(PublishError::TimedOut(timeout)),
        Ok(Err(error)) => Err(PublishError::Unconfirmed(error)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unconfirmed(
            std::io::Error::other("the channel is not in confirm mode").into(),
        )),
    }
}

/// The properties of a job's message: JSON, its id as `message_id`, its
/// kind as `type`, and its trace context as the `traceparent` header.
pub fn job_properties(job: &Job) -> BasicProperties {
    let properties = json_properties()
        .with_message_id(job.id.to_string().into())
        .with_type(job.kind().as_str().into());
    match job.trace {
        Some(trace) => headers::with(properties, &[(TRACEPARENT, &trace.to_string())]),
        None => properties,
    }
}

/// The properties of any JSON message of the topology.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceParent;

    #[test]
    fn a_jobs_message_says_what_it_is_and_carries_its_trace() {
        let mut job = Job::message("t".into(), 1, 2, "b".into());
        let trace = TraceParent::root();
        job.trace = Some(trace);

        let properties = job_properties(&job);

        assert_eq!(properties.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some(job.id.to_string().as_str())
        );
        assert_eq!(
            properties.kind().as_ref().map(|kind| kind.as_str()),
            Some("message")
        );
        assert_eq!(
            headers::get(properties.headers().as_ref(), TRACEPARENT),
            Some(trace.to_string())
        );
    }

    #[test]
    fn only_certain_refusals_count_as_never_queued() {
        assert!(PublishError::NotConnected.never_queued());
        assert!(PublishError::Unroutable.never_queued());
        assert!(PublishError::Nacked.never_queued());
        assert!(PublishError::NotSent(Duration::from_secs(1)).never_queued());
        assert!(!PublishError::TimedOut(Duration::from_secs(1)).never_queued());
        assert!(!PublishError::Unconfirmed(std::io::Error::other("x").into()).never_queued());
    }
}

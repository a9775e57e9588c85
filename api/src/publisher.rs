//! Publishing jobs to RabbitMQ, and keeping the connection that does it.
//!
//! One long-lived connection with a few confirm-mode channels, kept by a
//! background task that reconnects with backoff whenever it breaks. Many
//! publishes are in flight on a channel at once; each request awaits only
//! its own confirm. Without a connection, a publish fails at once (the
//! request gets a quick 503) instead of waiting for the broker to return.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use shared::job::Job;
use shared::topology::{self, Topology};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How a publish failed, which decides what happens to its number.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The job never left this process: its number can be given back.
    #[error("not connected to RabbitMQ")]
    NotSent,
    /// The broker answered that it did not take the job: its number can be
    /// given back.
    #[error("RabbitMQ refused the job: {0}")]
    Refused(&'static str),
    /// The job was sent but no confirm came back (connection lost, or too
    /// slow). It may be queued: its number stays in flight.
    #[error("no confirm from RabbitMQ: {0}")]
    Unconfirmed(String),
}

impl PublishError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::NotSent => "not_connected",
            Self::Refused(reason) => reason,
            Self::Unconfirmed(_) => "unconfirmed",
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        ApiError::unavailable("rabbitmq", error)
    }
}

/// Open channels of the current connection.
struct Link {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Link {
    fn channel(&self) -> &Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[index]
    }
}

pub(crate) struct Publisher {
    link: watch::Receiver<Option<Arc<Link>>>,
    broken: Arc<Notify>,
    exchange: String,
    confirm_timeout: Duration,
}

/// What the connection keeper needs.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) topology: Topology,
    pub(crate) channels: usize,
    pub(crate) confirm_timeout: Duration,
}

impl Publisher {
    /// Starts the task that keeps the connection; it closes the connection
    /// and ends once `stop` is cancelled.
    pub(crate) fn start(
        settings: Settings,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, link) = watch::channel(None);
        let broken = Arc::new(Notify::new());
        let publisher = Self {
            link,
            broken: broken.clone(),
            exchange: settings.topology.jobs_exchange(),
            confirm_timeout: settings.confirm_timeout,
        };
        let keeper = tokio::spawn(keep_connected(settings, sender, broken, stop));
        (publisher, keeper)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.link.borrow().is_some()
    }

    /// Publishes `job`, persistent and mandatory, and waits for the
    /// broker's confirm: `Ok` means the job is on a durable queue.
    pub(crate) async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let link = self.link.borrow().clone().ok_or(PublishError::NotSent)?;
        let channel = link.channel();
        if !channel.status().connected() {
            self.broken.notify_waiters();
            return Err(PublishError::NotSent);
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.id.to_string().into())
            .with_type(job.kind.as_str().into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let payload = job.encode();
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                topology::ROUTING_KEY.into(),
                options,
                &payload,
                properties,
            )
            .await
            .map_err(|error| {
                self.broken.notify_waiters();
                PublishError::Unconfirmed(error.to_string())
            })?;
        match tokio::time::timeout(self.confirm_timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Refused("unroutable")),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Refused("nacked")),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unconfirmed(
                "the channel is not in confirm mode".into(),
            )),
            Ok(Err(error)) => {
                self.broken.notify_waiters();
                Err(PublishError::Unconfirmed(error.to_string()))
            }
            Err(_) => Err(PublishError::Unconfirmed(format!(
                "no confirm within {:?}",
                self.confirm_timeout
            ))),
        }
    }
}

/// Connects, publishes the link, waits for it to break, and again, with
/// exponential backoff between failed attempts.
async fn keep_connected(
    settings: Settings,
    sender: watch::Sender<Option<Arc<Link>>>,
    broken: Arc<Notify>,
    stop: CancellationToken,
) {
    let backoff = topology::reconnect_delays();
    let mut delays = backoff.build();
    while !stop.is_cancelled() {
        match open(&settings).await {
            Ok((connection, link)) => {
                tracing::info!(channels = link.channels.len(), "connected to RabbitMQ");
                delays = backoff.build();
                let lost = topology::lost(&connection);
                sender.send_replace(Some(Arc::new(link)));
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = broken.notified() => tracing::warn!("a publish failed: reconnecting to RabbitMQ"),
                    error = lost => tracing::warn!(error, "RabbitMQ connection lost"),
                }
                sender.send_replace(None);
                let closing = connection.close(200, "api reconnecting or stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            }
            Err(error) => tracing::warn!(%error, "cannot connect to RabbitMQ"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn open(settings: &Settings) -> lapin::Result<(Connection, Link)> {
    let connection = topology::connect(&settings.url, "api").await?;
    let mut channels = Vec::with_capacity(settings.channels);
    for _ in 0..settings.channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    settings.topology.declare(&channels[0]).await?;
    Ok((
        connection,
        Link {
            channels,
            next: AtomicUsize::new(0),
        },
    ))
}

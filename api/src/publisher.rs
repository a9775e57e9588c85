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
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use shared::job::Job;
use shared::publish::{self, Message, PublishError};
use shared::telemetry::Chain;
use shared::topology::{self, Topology};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

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

    /// Publishes `job` and waits for the broker's confirm: `Ok` means the
    /// job is on a durable queue. A channel found closed, or a publish
    /// that failed with it, makes the keeper reconnect.
    pub(crate) async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let link = self
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let message = Message {
            exchange: self.exchange.clone(),
            routing_key: topology::ROUTING_KEY.into(),
            payload: job.encode(),
            properties: publish::job_properties(job),
        };
        let published = publish::publish(link.channel(), message, self.confirm_timeout).await;
        if let Err(PublishError::NotConnected | PublishError::Unconfirmed(_)) = &published {
            self.broken.notify_waiters();
        }
        published
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
                    lost = lost => tracing::warn!(error = %Chain(&lost), "RabbitMQ connection lost"),
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

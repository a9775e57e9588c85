//! The consume loop: one connection at a time, reconnected with backoff
//! when it breaks; deliveries handled concurrently up to
//! `WORKER_CONCURRENCY`, with at most `WORKER_PREFETCH` unacknowledged.
//!
//! Acknowledgements are batched per channel ([`crate::acks`]).
//!
//! Stopping (SIGTERM): cancel the consumer so no new delivery arrives,
//! finish and settle the ones being handled, send the last acks, close. Deliveries prefetched
//! but not started are returned to the queue by the channel's close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use shared::telemetry::Chain;
use shared::topology;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acks::Acks;
use crate::handler::{Handler, Outcome};

/// Why consuming on a connection stopped, other than being told to.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("RabbitMQ refused an operation")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Lost(#[from] topology::ConnectionLost),
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// What the loop needs besides the handler.
pub(crate) struct Settings {
    pub(crate) amqp_url: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
}

/// Live facts about this worker, for `/readyz` and tests.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    stored: AtomicU64,
}

impl Status {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Jobs this worker stored since it started.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// Consumes until `stop` is cancelled.
pub(crate) async fn run(
    handler: Arc<Handler>,
    settings: Settings,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let backoff = topology::reconnect_delays();
    let mut delays = backoff.build();
    while !stop.is_cancelled() {
        match session(&handler, &settings, &status, &stop).await {
            Ok(()) => delays = backoff.build(),
            Err(error) => tracing::warn!(
                error = %Chain(&error),
                "consuming stopped; reconnecting to RabbitMQ"
            ),
        }
        status.connected.store(false, Ordering::Relaxed);
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Opens a connection with the topology, a consume channel and a
/// confirm-mode publish channel.
pub(crate) async fn open(
    handler: &Handler,
    amqp_url: &str,
) -> lapin::Result<(Connection, Channel, Channel)> {
    let connection = topology::connect(amqp_url, "worker").await?;
    let channel = connection.create_channel().await?;
    handler.topology.declare(&channel).await?;
    for delay in handler.policy.queues() {
        handler
            .topology
            .declare_retry_queue(&channel, delay)
            .await?;
    }
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel, publisher))
}

/// One connection's worth of consuming. `Ok` when stopped on purpose,
/// the reason otherwise.
async fn session(
    handler: &Arc<Handler>,
    settings: &Settings,
    status: &Arc<Status>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let (connection, channel, publisher) = open(handler, &settings.amqp_url).await?;
    // Cancelled when the connection dies: the consume loop and every job in
    // hand give up then, since lapin may leave them waiting forever; the
    // broker redelivers what was not acknowledged.
    let abandon = CancellationToken::new();
    let watcher = tokio::spawn({
        let (lost, abandon) = (topology::lost(&connection), abandon.clone());
        async move {
            let error = lost.await;
            abandon.cancel();
            error
        }
    });
    let ended = consume(
        handler, settings, status, stop, &channel, &publisher, &abandon,
    )
    .await;
    if abandon.is_cancelled() {
        let lost = watcher.await.unwrap_or(topology::ConnectionLost::Closed);
        return Err(lost.into());
    }
    watcher.abort();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        connection.close(200, "worker stopping".into()),
    )
    .await;
    ended
}

async fn consume(
    handler: &Arc<Handler>,
    settings: &Settings,
    status: &Arc<Status>,
    stop: &CancellationToken,
    channel: &Channel,
    publisher: &Channel,
    abandon: &CancellationToken,
) -> Result<(), SessionError> {
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("worker-{}", std::process::id());
    let mut deliveries = channel
        .basic_consume(
            handler.topology.jobs_queue().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    status.connected.store(true, Ordering::Relaxed);
    tracing::info!(
        queue = handler.topology.jobs_queue(),
        prefetch = settings.prefetch,
        "consuming"
    );

    let hold = usize::from(settings.prefetch).saturating_sub(settings.concurrency);
    let (acks, sending) = Acks::new(channel.clone(), hold);
    let sending = tokio::spawn(sending);
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tasks = TaskTracker::new();
    let ended = loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            () = abandon.cancelled() => break Err(topology::ConnectionLost::Closed.into()),
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let delivery = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            () = abandon.cancelled() => break Err(topology::ConnectionLost::Closed.into()),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break Err(error.into()),
                None => break Err(SessionError::Cancelled),
            },
        };
        let taken = acks.taken(delivery.delivery_tag);
        let (handler, publisher, status, abandon) = (
            handler.clone(),
            publisher.clone(),
            status.clone(),
            abandon.clone(),
        );
        tasks.spawn(async move {
            metrics::gauge!("worker_jobs_in_flight").increment(1.0);
            tokio::select! {
                outcome = handler.process(&delivery, &publisher) => {
                    if outcome == Outcome::Stored {
                        status.stored.fetch_add(1, Ordering::Relaxed);
                    }
                    if outcome.acknowledged() {
                        taken.done();
                    } else if let Err(error) = taken.requeue().await {
                        tracing::warn!(
                            error = %Chain(&error),
                            "could not requeue a delivery; the broker redelivers it"
                        );
                    }
                }
                () = abandon.cancelled() => tracing::debug!("connection lost mid-job; the broker redelivers it"),
            }
            metrics::gauge!("worker_jobs_in_flight").decrement(1.0);
            drop(permit);
        });
    };
    if ended.is_ok() {
        tracing::info!("stopping: no new deliveries; finishing the jobs in hand");
        let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
        tokio::select! {
            _ = cancel => {}
            () = abandon.cancelled() => {}
        }
    }
    tasks.close();
    tasks.wait().await;
    // Every job in hand is settled; the last acks go out before the
    // connection closes.
    drop(acks);
    tokio::select! {
        sent = sending => {
            if let Ok(Err(error)) = sent {
                tracing::warn!(%error, "could not send the last acks; the broker redelivers those jobs");
            }
        }
        () = abandon.cancelled() => {}
    }
    ended
}

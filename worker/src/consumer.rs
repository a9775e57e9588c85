//! The consume loop: a consume connection and a publish connection at a
//! time, reconnected with backoff when either breaks; deliveries gathered
//! into batches and handled `WORKER_CONCURRENCY` batches at once, with at
//! most `WORKER_PREFETCH` unacknowledged.
//!
//! Group commit without waiting: once a batch slot is free, the loop takes
//! the next delivery and whatever else has already arrived, up to
//! `WORKER_BATCH_MAX` jobs or `WORKER_BATCH_BYTES`, and never waits for
//! more. An idle worker handles a lone job at once; a busy one takes in one
//! batch what arrived while its slots were full.
//!
//! Publishing (retry and dead-letter copies) has its own connection, as
//! RabbitMQ advises: a resource alarm blocks publishing connections, and a
//! blocked publish must not hold back the consume connection's acks.
//!
//! Acknowledgements are batched per channel ([`crate::acks`]).
//!
//! Stopping (SIGTERM): cancel the consumer so no new delivery arrives,
//! finish and settle the batches in hand, send the last acks, close.
//! Deliveries prefetched but not taken are returned to the queue by the
//! channel's close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use shared::amqp::connection::{connect, reconnect_delays};
use shared::amqp::headers;
use shared::amqp::watch::{ConnectionLost, watch};
use shared::group_commit::{self, Limits, Weight};
use shared::telemetry::Chain;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acks::{Acks, Taken};
use crate::handler::{Handler, Outcome};

/// Why consuming on a connection stopped, other than being told to.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("RabbitMQ refused an operation")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Lost(#[from] ConnectionLost),
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// What the loop needs besides the handler.
pub(crate) struct Settings {
    pub(crate) amqp_url: String,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    /// Jobs and bytes one batch takes at most (a delivery is never split).
    pub(crate) batch_jobs: usize,
    pub(crate) batch_bytes: usize,
}

/// Live facts about this worker, for `/readyz` and tests.
#[derive(Debug, Default)]
pub struct Status {
    connected: AtomicBool,
    stored: AtomicU64,
    publish_blocked: AtomicBool,
}

impl Status {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Jobs this worker stored since it started.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// The broker blocks the publish connection (a resource alarm).
    pub fn publish_blocked(&self) -> bool {
        self.publish_blocked.load(Ordering::Relaxed)
    }
}

/// Consumes until `stop` is cancelled.
pub(crate) async fn run(
    handler: Arc<Handler>,
    settings: Settings,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    let backoff = reconnect_delays();
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

/// The two connections of a session and their channels.
pub(crate) struct Link {
    pub(crate) consume_connection: Connection,
    pub(crate) publish_connection: Connection,
    /// Consumes and acknowledges.
    pub(crate) channel: Channel,
    /// Confirm mode: the retry and dead-letter copies.
    pub(crate) publisher: Channel,
}

impl Link {
    /// Opens both connections, declares the topology and the retry queues.
    pub(crate) async fn open(handler: &Handler, amqp_url: &str) -> lapin::Result<Self> {
        let consume_connection = connect(amqp_url, "worker-consume").await?;
        let publish_connection = connect(amqp_url, "worker-publish").await?;
        let channel = consume_connection.create_channel().await?;
        handler
            .topology
            .declare(&channel, &handler.policy.queues())
            .await?;
        let publisher = publish_connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            consume_connection,
            publish_connection,
            channel,
            publisher,
        })
    }

    pub(crate) async fn close(&self) {
        for connection in [&self.consume_connection, &self.publish_connection] {
            let closing = connection.close(200, "worker stopping".into());
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
    }
}

/// One session's worth of consuming. `Ok` when stopped on purpose, the
/// reason otherwise.
async fn session(
    handler: &Arc<Handler>,
    settings: &Settings,
    status: &Arc<Status>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let link = Link::open(handler, &settings.amqp_url).await?;
    // Cancelled when either connection dies: the consume loop and every
    // batch in hand give up then, since lapin may leave them waiting
    // forever; the broker redelivers what was not acknowledged.
    let abandon = CancellationToken::new();
    let consume_watched = watch(&link.consume_connection);
    let publish_watched = watch(&link.publish_connection);
    let watcher = tokio::spawn({
        let abandon = abandon.clone();
        async move {
            let lost = tokio::select! {
                lost = consume_watched.lost => lost,
                lost = publish_watched.lost => lost,
            };
            abandon.cancel();
            lost
        }
    });
    let blocked = tokio::spawn(watch_blocked(publish_watched.blocked, status.clone()));
    let ended = consume(handler, settings, status, stop, &link, &abandon).await;
    blocked.abort();
    status.publish_blocked.store(false, Ordering::Relaxed);
    if abandon.is_cancelled() {
        let lost = watcher.await.unwrap_or(ConnectionLost::Closed);
        return Err(lost.into());
    }
    watcher.abort();
    link.close().await;
    ended
}

/// Mirrors the publish connection's blocked state into `status` and the
/// `worker_publish_blocked` gauge.
async fn watch_blocked(mut changes: tokio::sync::watch::Receiver<bool>, status: Arc<Status>) {
    while changes.changed().await.is_ok() {
        let blocked = *changes.borrow_and_update();
        status.publish_blocked.store(blocked, Ordering::Relaxed);
        metrics::gauge!("worker_publish_blocked").set(if blocked { 1.0 } else { 0.0 });
        if blocked {
            tracing::warn!("RabbitMQ blocks the publish connection (a resource alarm)");
        } else {
            tracing::info!("RabbitMQ unblocked the publish connection");
        }
    }
}

async fn consume(
    handler: &Arc<Handler>,
    settings: &Settings,
    status: &Arc<Status>,
    stop: &CancellationToken,
    link: &Link,
    abandon: &CancellationToken,
) -> Result<(), SessionError> {
    link.channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("worker-{}", std::process::id());
    let mut deliveries = link
        .channel
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

    // Done deliveries may wait behind an unsettled one for a shared ack;
    // at most half the window does, so a slow batch cannot starve the rest.
    let hold = usize::from(settings.prefetch) / 2;
    let (acks, sending) = Acks::new(link.channel.clone(), hold);
    let sending = tokio::spawn(sending);
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tasks = TaskTracker::new();
    let mut ended = None;
    while ended.is_none() {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            () = abandon.cancelled() => {
                ended = Some(Err(ConnectionLost::Closed.into()));
                break;
            }
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let first = tokio::select! {
            () = stop.cancelled() => break,
            () = abandon.cancelled() => {
                ended = Some(Err(ConnectionLost::Closed.into()));
                break;
            }
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    ended = Some(Err(error.into()));
                    break;
                }
                None => {
                    ended = Some(Err(SessionError::Cancelled));
                    break;
                }
            },
        };
        let (batch, stopped) = gather(first, &mut deliveries, settings);
        ended = stopped;
        let taken: Vec<Taken> = batch
            .iter()
            .map(|delivery| acks.taken(delivery.delivery_tag))
            .collect();
        let (handler, publisher, status, abandon) = (
            handler.clone(),
            link.publisher.clone(),
            status.clone(),
            abandon.clone(),
        );
        tasks.spawn(async move {
            metrics::gauge!("worker_batches_in_flight").increment(1.0);
            tokio::select! {
                settled = handler.process(&batch, &publisher) => {
                    for (taken, settled) in taken.into_iter().zip(settled) {
                        let stored = settled.outcomes.iter().filter(|outcome| **outcome == Outcome::Stored).count();
                        status.stored.fetch_add(stored as u64, Ordering::Relaxed);
                        if settled.acknowledged() {
                            taken.done();
                        } else if let Err(error) = taken.requeue().await {
                            tracing::warn!(
                                error = %Chain(&error),
                                "could not requeue a delivery; the broker redelivers it"
                            );
                        }
                    }
                }
                () = abandon.cancelled() => tracing::debug!("connection lost mid-batch; the broker redelivers it"),
            }
            metrics::gauge!("worker_batches_in_flight").decrement(1.0);
            drop(permit);
        });
    }
    let ended = ended.unwrap_or(Ok(()));
    if ended.is_ok() {
        tracing::info!("stopping: no new deliveries; finishing the batches in hand");
        let cancel = link
            .channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
        tokio::select! {
            _ = cancel => {}
            () = abandon.cancelled() => {}
        }
    }
    tasks.close();
    tasks.wait().await;
    // Every delivery in hand is settled; the last acks go out before the
    // connection closes.
    drop(acks);
    tokio::select! {
        sent = sending => {
            if let Ok(Err(error)) = sent {
                tracing::warn!(error = %Chain(&error), "could not send the last acks; the broker redelivers those jobs");
            }
        }
        () = abandon.cancelled() => {}
    }
    ended
}

/// `first` and the deliveries that have already arrived after it, up to the
/// batch limits, without waiting for more; and the end of the consumer, if
/// it ended meanwhile.
fn gather(
    first: Delivery,
    deliveries: &mut Consumer,
    settings: &Settings,
) -> (Vec<Delivery>, Option<Result<(), SessionError>>) {
    let mut ended = None;
    let ready = || match deliveries.next().now_or_never() {
        Some(Some(Ok(delivery))) => Some(delivery),
        Some(Some(Err(error))) => {
            ended = Some(Err(error.into()));
            None
        }
        Some(None) => {
            ended = Some(Err(SessionError::Cancelled));
            None
        }
        None => None,
    };
    let limits = Limits {
        count: settings.batch_jobs,
        size: settings.batch_bytes,
    };
    let batch = group_commit::take_ready(first, ready, limits, |delivery| Weight {
        count: jobs_in(delivery),
        size: delivery.data.len(),
    });
    metrics::histogram!("worker_batch_deliveries").record(batch.len() as f64);
    (batch, ended)
}

/// How many jobs a delivery holds (`x-jobs`, set by the api on a batch).
fn jobs_in(delivery: &Delivery) -> usize {
    headers::get(delivery.properties.headers().as_ref(), headers::JOBS)
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

//! Publishing jobs to RabbitMQ with group commit, and keeping the
//! connection that does it.
//!
//! Requests hand their job to a queue. `PUBLISH_CHANNELS` lanes, each with
//! a confirm-mode channel of its own, take turns at that queue: a lane
//! takes everything waiting there (up to `PUBLISH_BATCH_MAX` jobs),
//! publishes it and waits for the broker's confirm, while the next
//! requests gather for the next free lane. One job goes out as it is; more
//! go out as batch messages of at most `PUBLISH_BATCH_BYTES` each, all
//! under one confirm wait. No lane waits to fill a batch: on an idle api a
//! lone request is published at once, as it would be without batching.
//!
//! Each request is answered by its own message's confirm; a refused or
//! timed-out message fails each of its requests as a single job would
//! fail. After a confirm timeout the lane replaces its channel (the client
//! library would keep every abandoned confirm until the channel closes).
//!
//! A request's whole wait, room in the queue included, is bounded by
//! `PUBLISH_TIMEOUT_MS`. A job still waiting for a lane when its request
//! gives up is never sent (the request takes it back, atomically against
//! a lane taking it), so its number can be given back as a gap. The queue
//! is bounded in jobs and in bytes (`PUBLISH_QUEUE_BYTES`).
//!
//! A job that was sent but not confirmed (the connection broke, or the
//! confirm came too late) may or may not be queued. Its request is
//! answered 503, and the job is published again in the background, with
//! backoff, until one publish of it is confirmed: then it certainly exists,
//! the worker stores it once and releases its number. Without that its
//! number would stay in flight for good, keeping its counter alive and its
//! in-flight set growing.
//!
//! One long-lived connection, kept by a background task that reconnects
//! with backoff whenever it breaks. Without a connection a publish fails at
//! once (the request gets a quick 503) instead of waiting for the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use futures::future::join_all;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use shared::amqp::batch::jobs_message;
use shared::amqp::connection::{connect, reconnect_delays};
use shared::amqp::publish::{self, Message, PublishError};
use shared::amqp::topology::Topology;
use shared::group_commit::{self, Limits, Weight};
use shared::job::Job;
use shared::telemetry::Chain;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

impl From<PublishError> for ApiError {
    fn from(error: PublishError) -> Self {
        ApiError::unavailable("rabbitmq", error)
    }
}

/// A job waiting for a lane, encoded by its request, and where its answer
/// goes.
struct Pending {
    payload: Vec<u8>,
    properties: lapin::BasicProperties,
    reply: oneshot::Sender<Result<(), PublishError>>,
    /// [`WAITING`], then [`TAKEN`] by a lane or [`ABANDONED`] by its
    /// request, whichever comes first.
    state: Arc<AtomicU8>,
    /// Its bytes' share of the queue, given back when a lane takes it.
    _room: Option<OwnedSemaphorePermit>,
}

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

impl Pending {
    /// A lane takes the job, unless its request gave up on it first.
    fn take(&self) -> bool {
        self.state
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// A job that was sent without a confirm, to publish again.
struct Unsure {
    payload: Vec<u8>,
    properties: lapin::BasicProperties,
}

/// The connection of the moment.
type Link = watch::Receiver<Option<Arc<Connection>>>;

pub(crate) struct Publisher {
    queue: mpsc::Sender<Pending>,
    link: Link,
    blocked: Arc<AtomicBool>,
    /// `PUBLISH_TIMEOUT_MS`: the most a request waits for its answer.
    timeout: Duration,
    /// Bytes of jobs the queue may hold (`PUBLISH_QUEUE_BYTES`).
    room: Arc<Semaphore>,
    room_bytes: usize,
    /// Jobs sent without a confirm, for the resend task.
    unsure: mpsc::UnboundedSender<Unsure>,
}

/// What the publisher needs.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) topology: Topology,
    pub(crate) channels: usize,
    pub(crate) confirm_timeout: Duration,
    /// Most jobs a lane takes at once.
    pub(crate) batch_jobs: usize,
    /// Most payload bytes of one batch message.
    pub(crate) batch_bytes: usize,
    /// Most payload bytes waiting for a lane.
    pub(crate) queue_bytes: usize,
}

/// Stops the publisher once every request has its answer.
pub(crate) struct Closer {
    resend: JoinHandle<()>,
    lanes: Vec<JoinHandle<()>>,
    stop_keeper: CancellationToken,
    keeper: JoinHandle<()>,
}

impl Closer {
    /// Waits until the lanes answered every request handed over and the
    /// jobs sent without a confirm were published again (they end once the
    /// last [`Publisher`] is dropped), then closes the connection.
    pub(crate) async fn close(self) {
        let _ = self.resend.await;
        for lane in self.lanes {
            let _ = lane.await;
        }
        self.stop_keeper.cancel();
        let _ = self.keeper.await;
    }
}

impl Publisher {
    /// Starts the connection keeper and the lanes.
    pub(crate) fn start(settings: Settings) -> (Self, Closer) {
        let (sender, link) = watch::channel(None);
        let broken = Arc::new(Notify::new());
        let blocked = Arc::new(AtomicBool::new(false));
        let (queue, receiver) = mpsc::channel(settings.batch_jobs.max(1) * 64);
        let receiver = Arc::new(Mutex::new(receiver));
        let settings = Arc::new(settings);
        let lanes = (0..settings.channels.max(1))
            .map(|_| {
                let lane = Lane {
                    receiver: receiver.clone(),
                    link: link.clone(),
                    broken: broken.clone(),
                    settings: settings.clone(),
                };
                tokio::spawn(lane.run())
            })
            .collect();
        let timeout = settings.confirm_timeout;
        let room_bytes = settings.queue_bytes.clamp(1, u32::MAX as usize);
        let (unsure, unsure_jobs) = mpsc::unbounded_channel();
        let resend = tokio::spawn(resend(queue.clone(), unsure_jobs, timeout));
        let stop_keeper = CancellationToken::new();
        let keeper = tokio::spawn(keep_connected(
            settings,
            sender,
            broken,
            blocked.clone(),
            stop_keeper.clone(),
        ));
        let publisher = Self {
            queue,
            link,
            blocked,
            timeout,
            room: Arc::new(Semaphore::new(room_bytes)),
            room_bytes,
            unsure,
        };
        let closer = Closer {
            resend,
            lanes,
            stop_keeper,
            keeper,
        };
        (publisher, closer)
    }

    /// Connected to RabbitMQ.
    pub(crate) fn is_connected(&self) -> bool {
        self.link.borrow().is_some()
    }

    /// The broker blocks publishing (a memory or disk alarm).
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Publishes `job` with the jobs of concurrent requests, and waits for
    /// the broker's confirm: `Ok` means the job is on a durable queue. The
    /// whole wait is bounded by `PUBLISH_TIMEOUT_MS`. On an error whose
    /// outcome is unknown the job is also handed to the resend task.
    pub(crate) async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let payload = job.encode();
        let properties = publish::job_properties(job);
        let published = self.send(payload.clone(), properties.clone()).await;
        if let Err(error) = &published
            && !error.never_queued()
        {
            metrics::counter!("api_publish_resends_total").increment(1);
            let _ = self.unsure.send(Unsure {
                payload,
                properties,
            });
        }
        published
    }

    async fn send(
        &self,
        payload: Vec<u8>,
        properties: lapin::BasicProperties,
    ) -> Result<(), PublishError> {
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        let deadline = Instant::now() + self.timeout;
        let not_sent = PublishError::NotSent(self.timeout);
        let share = payload.len().clamp(1, self.room_bytes) as u32;
        let room = tokio::time::timeout_at(deadline, self.room.clone().acquire_many_owned(share))
            .await
            .map_err(|_| not_sent.clone())?
            .map_err(|_| PublishError::NotConnected)?;
        let (reply, answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let pending = Pending {
            payload,
            properties,
            reply,
            state: state.clone(),
            _room: Some(room),
        };
        match tokio::time::timeout_at(deadline, self.queue.send(pending)).await {
            Err(_) => return Err(not_sent),
            Ok(Err(_)) => return Err(PublishError::NotConnected),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answered)) => answered,
            // A lane took the job and went away without an answer: whether
            // the broker has it is unknown.
            Ok(Err(_)) => Err(PublishError::Unconfirmed(
                std::io::Error::other("the publisher stopped").into(),
            )),
            // No lane took it yet: it is taken back and never sent.
            Err(_)
                if state
                    .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok() =>
            {
                Err(not_sent)
            }
            Err(_) => Err(PublishError::TimedOut(self.timeout)),
        }
    }
}

/// Publishes the jobs sent without a confirm again, through the lanes, each
/// until one publish of it is confirmed, backing off while the broker is
/// away. Ends once the [`Publisher`] is gone and the backlog is empty, or,
/// when the broker does not come back, a little after that (what is left
/// is logged: those numbers stay in flight, their counters kept).
async fn resend(
    queue: mpsc::Sender<Pending>,
    mut unsure: mpsc::UnboundedReceiver<Unsure>,
    timeout: Duration,
) {
    let backoff = reconnect_delays();
    let mut delays = backoff.build();
    let mut backlog: Vec<Unsure> = Vec::new();
    let mut closed_at: Option<Instant> = None;
    loop {
        if backlog.is_empty() {
            match unsure.recv().await {
                Some(job) => backlog.push(job),
                None => return,
            }
        }
        loop {
            match unsure.try_recv() {
                Ok(job) => backlog.push(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        let answers = join_all(backlog.iter().map(|job| async {
            let (reply, answer) = oneshot::channel();
            let pending = Pending {
                payload: job.payload.clone(),
                properties: job.properties.clone(),
                reply,
                state: Arc::new(AtomicU8::new(WAITING)),
                _room: None,
            };
            if queue.send(pending).await.is_err() {
                return false;
            }
            matches!(answer.await, Ok(Ok(())))
        }))
        .await;
        let mut answers = answers.into_iter();
        backlog.retain(|_| !answers.next().unwrap_or(false));
        if backlog.is_empty() {
            delays = backoff.build();
            continue;
        }
        if closed_at.is_some_and(|closed| closed.elapsed() > timeout * 2) {
            tracing::warn!(
                jobs = backlog.len(),
                "stopping with jobs sent but never confirmed; their numbers stay in flight"
            );
            return;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(delay.min(timeout)).await;
    }
}

/// One confirm-mode channel taking turns at the queue.
struct Lane {
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    link: Link,
    broken: Arc<Notify>,
    settings: Arc<Settings>,
}

impl Lane {
    async fn run(self) {
        let mut channel: Option<(Arc<Connection>, Channel)> = None;
        let mut taken = Vec::with_capacity(self.settings.batch_jobs);
        loop {
            let count = {
                let mut receiver = self.receiver.lock().await;
                group_commit::take_waiting(
                    &mut receiver,
                    &mut taken,
                    Limits::count(self.settings.batch_jobs),
                    |_| Weight::ONE,
                )
                .await
            };
            if count == 0 {
                // Every sender is gone and the queue is empty. The channel
                // is closed here, before the connection: dropped, it would
                // close itself later, on a connection already closing, and
                // the client library would log that as an error.
                if let Some((_, open)) = channel {
                    let _ = open.close(200, "api stopping".into()).await;
                }
                return;
            }
            // Those whose requests gave up are dropped unsent.
            let pending: Vec<Pending> = std::mem::take(&mut taken)
                .into_iter()
                .filter(Pending::take)
                .collect();
            if pending.is_empty() {
                continue;
            }
            metrics::histogram!("api_publish_batch_jobs").record(pending.len() as f64);
            match self.channel(&mut channel).await {
                Ok(current) => {
                    let timed_out = self.publish(&current, pending).await;
                    if timed_out {
                        // Abandoned confirms live as long as their channel.
                        // Closed aside: on a blocked connection the close
                        // waits as long as the block.
                        channel = None;
                        metrics::counter!("api_publish_channels_replaced_total").increment(1);
                        tracing::warn!("a confirm timed out: replacing the publish channel");
                        tokio::spawn(async move {
                            let _ = current.close(200, "confirm timed out".into()).await;
                        });
                    }
                }
                Err(error) => {
                    for pending in pending {
                        let _ = pending.reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }

    /// This lane's channel on the current connection, opened when there is
    /// none yet or the connection changed.
    async fn channel(
        &self,
        channel: &mut Option<(Arc<Connection>, Channel)>,
    ) -> Result<Channel, PublishError> {
        let connection = self
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        if let Some((on, open)) = channel
            && Arc::ptr_eq(on, &connection)
            && open.status().connected()
        {
            return Ok(open.clone());
        }
        let timeout = self.settings.confirm_timeout;
        let opened = tokio::time::timeout(timeout, async {
            let open = connection.create_channel().await?;
            open.confirm_select(ConfirmSelectOptions::default()).await?;
            lapin::Result::Ok(open)
        })
        .await;
        match opened {
            Ok(Ok(open)) => {
                *channel = Some((connection, open.clone()));
                Ok(open)
            }
            Err(_) => {
                // Nothing was sent: the jobs' numbers can be given back.
                tracing::warn!(?timeout, "no publish channel in time (a blocked broker?)");
                Err(PublishError::NotConnected)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %Chain(&error), "cannot open a publish channel");
                self.broken.notify_waiters();
                Err(PublishError::NotConnected)
            }
        }
    }

    /// Publishes the jobs as messages under one confirm wait and answers
    /// each request; says whether a confirm timed out.
    async fn publish(&self, channel: &Channel, pending: Vec<Pending>) -> bool {
        let groups = group_commit::split(pending, Limits::size(self.settings.batch_bytes), |one| {
            Weight {
                count: 1,
                size: one.payload.len() + 1,
            }
        });
        let timeout = self.settings.confirm_timeout;
        let exchange = self.settings.topology.jobs_exchange();
        let published = join_all(groups.iter().map(|group| {
            let message = message(&exchange, group);
            publish::publish(channel, message, timeout)
        }))
        .await;
        let mut timed_out = false;
        for (group, result) in groups.into_iter().zip(published) {
            match &result {
                Err(PublishError::NotConnected | PublishError::Unconfirmed(_)) => {
                    self.broken.notify_waiters();
                }
                Err(PublishError::TimedOut(_)) => timed_out = true,
                _ => {}
            }
            for pending in group {
                let _ = pending.reply.send(result.clone());
            }
        }
        timed_out
    }
}

/// One job as itself, several as a batch message.
fn message(exchange: &str, group: &[Pending]) -> Message {
    let jobs: Vec<(&[u8], &lapin::BasicProperties)> = group
        .iter()
        .map(|pending| (pending.payload.as_slice(), &pending.properties))
        .collect();
    jobs_message(exchange.to_owned(), &jobs)
}

/// Connects, publishes the link, watches it, and again, with exponential
/// backoff between failed attempts.
async fn keep_connected(
    settings: Arc<Settings>,
    sender: watch::Sender<Option<Arc<Connection>>>,
    broken: Arc<Notify>,
    blocked: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let backoff = reconnect_delays();
    let mut delays = backoff.build();
    while !stop.is_cancelled() {
        match open(&settings).await {
            Ok(connection) => {
                tracing::info!("connected to RabbitMQ");
                delays = backoff.build();
                let shared::amqp::watch::Watched {
                    lost,
                    blocked: mut changes,
                } = shared::amqp::watch::watch(&connection);
                let connection = Arc::new(connection);
                sender.send_replace(Some(connection.clone()));
                let watching = async {
                    while changes.changed().await.is_ok() {
                        let now_blocked = *changes.borrow_and_update();
                        set_blocked(&blocked, now_blocked);
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = broken.notified() => tracing::warn!("a publish failed: reconnecting to RabbitMQ"),
                    lost = lost => tracing::warn!(error = %Chain(&lost), "RabbitMQ connection lost"),
                    () = watching => {}
                }
                sender.send_replace(None);
                set_blocked(&blocked, false);
                let closing = connection.close(200, "api reconnecting or stopping".into());
                let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
            }
            Err(error) => tracing::warn!(error = %Chain(&error), "cannot connect to RabbitMQ"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn set_blocked(blocked: &AtomicBool, now: bool) {
    if blocked.swap(now, Ordering::Relaxed) != now {
        metrics::gauge!("api_publish_blocked").set(if now { 1.0 } else { 0.0 });
        if now {
            tracing::warn!("RabbitMQ blocks publishing (a resource alarm)");
        } else {
            tracing::info!("RabbitMQ unblocked publishing");
        }
    }
}

async fn open(settings: &Settings) -> lapin::Result<Connection> {
    let connection = connect(&settings.url, "api").await?;
    let channel = connection.create_channel().await?;
    settings.topology.declare(&channel, &[]).await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(connection)
}

//! Draws that must reach `REDIS_WAIT_REPLICAS` replicas before their
//! numbers are answered, in groups, one lane per hash slot.
//!
//! `WAIT` blocks the connection it is sent on until the replicas catch up,
//! and the api has one connection per Redis node: one `WAIT` per draw
//! would let one draw through per replica round trip (measured: 1.3k
//! creates/s on the local cluster). `WAIT` covers every write made on its
//! connection before it, so draws are grouped instead, as the publisher
//! groups jobs: while a lane's round waits for its replicas, the draws that
//! arrive gather, and go out together when it ends, in one pipeline of
//! their scripts followed by a single `WAIT`. An idle api sends a draw at
//! once, in a group of one.
//!
//! One lane per hash slot (a cluster pipeline must stay in one slot; on a
//! single node there is one lane): a master whose replica lags holds back
//! only the lanes of its own slots, and the applications of the other
//! masters keep their latency. Each lane's queue is bounded
//! ([`QUEUE_MAX`] draws: a draw that finds it full is refused at once), and
//! a caller waits at most `REDIS_WAIT_TIMEOUT_MS` plus [`MARGIN`]: then it
//! is answered 503 and its number, if drawn, stays in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shared::group_commit::{self, Limits, Weight};
use shared::redis_client::{RedisClient, Slot};
use tokio::sync::{mpsc, oneshot};

/// What one grouped draw got back: the script's reply, or why not.
pub(crate) type Reply = Result<i64, Unreplicated>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreplicated {
    #[error("redis unavailable")]
    Redis(#[from] redis::RedisError),
    /// The draw was made (`drawn`, the script's reply) but not enough
    /// replicas confirmed it.
    #[error("only {acked} of {wanted} Redis replicas confirmed the draw in time")]
    TooFew {
        acked: i64,
        wanted: u32,
        drawn: Option<i64>,
    },
    /// The lane of the draw's slot has [`QUEUE_MAX`] draws waiting.
    #[error("too many draws waiting for the replicas of this shard")]
    Busy,
    /// No answer within `REDIS_WAIT_TIMEOUT_MS` plus [`MARGIN`].
    #[error("the replicas of this shard did not answer in time")]
    TimedOut,
    #[error("the api is stopping")]
    Stopped,
}

/// A draw script to run: its source, keys and arguments.
pub(crate) struct Call {
    pub(crate) source: &'static str,
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<String>,
}

struct Pending {
    call: Call,
    reply: oneshot::Sender<Reply>,
}

/// Sends draws in groups, each followed by one `WAIT`, a lane per slot.
pub(crate) struct Replicated {
    redis: RedisClient,
    wanted: u32,
    timeout: Duration,
    lanes: Mutex<HashMap<Option<Slot>, mpsc::Sender<Pending>>>,
}

/// One round: the draws waiting, at most 512 in one pipeline (a few tens
/// of KB to send and answer; under one `WAIT` either way).
const ROUND: Limits = Limits::count(512);

/// At most this many draws wait in one lane.
const QUEUE_MAX: usize = 4096;

/// How much longer than `REDIS_WAIT_TIMEOUT_MS` a caller waits: the
/// pipeline's own round trip.
const MARGIN: Duration = Duration::from_millis(500);

impl Replicated {
    /// Lanes start as their slots are first drawn from; each ends when
    /// `self` is dropped.
    pub(crate) fn start(redis: RedisClient, wanted: u32, timeout: Duration) -> Self {
        Self {
            redis,
            wanted,
            timeout,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `call`, answering once `wanted` replicas hold its writes.
    pub(crate) async fn run(&self, call: Call) -> Reply {
        let slot = call
            .keys
            .first()
            .and_then(|key| self.redis.pipeline_of(key));
        let lane = self.lane(slot);
        let (reply, answer) = oneshot::channel();
        lane.try_send(Pending { call, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => Unreplicated::Busy,
                mpsc::error::TrySendError::Closed(_) => Unreplicated::Stopped,
            })?;
        match tokio::time::timeout(self.timeout + MARGIN, answer).await {
            Ok(answered) => answered.unwrap_or(Err(Unreplicated::Stopped)),
            Err(_) => Err(Unreplicated::TimedOut),
        }
    }

    /// The lane of `slot`, started on first use.
    fn lane(&self, slot: Option<Slot>) -> mpsc::Sender<Pending> {
        let mut lanes = self.lanes.lock().expect("replica lanes lock");
        lanes
            .entry(slot)
            .or_insert_with(|| {
                let (queue, waiting) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(lane(self.redis.clone(), waiting, self.wanted, self.timeout));
                queue
            })
            .clone()
    }
}

/// One slot's rounds: what gathered while the last one waited, in one
/// pipeline and one `WAIT`.
async fn lane(
    redis: RedisClient,
    mut waiting: mpsc::Receiver<Pending>,
    wanted: u32,
    timeout: Duration,
) {
    let mut group = Vec::new();
    while group_commit::take_waiting(&mut waiting, &mut group, ROUND, |_| Weight::ONE).await > 0 {
        // A caller that gave up needs no draw: it was never sent.
        group.retain(|pending: &Pending| !pending.reply.is_closed());
        if !group.is_empty() {
            send(redis.clone(), std::mem::take(&mut group), wanted, timeout).await;
        }
    }
}

impl Replicated {
    /// Waits until `wanted` replicas hold what this connection wrote up
    /// to now on `key`'s node (a read of `key` routes the pipeline there).
    /// For writes made outside the grouped draws: a claim of an
    /// `Idempotency-Key` that republishes a number drawn earlier.
    pub(crate) async fn settle(
        redis: &RedisClient,
        key: &str,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), Unreplicated> {
        let (_, acked): (i64, i64) = redis::pipe()
            .cmd("EXISTS")
            .arg(key)
            .cmd("WAIT")
            .arg(wanted)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut redis.clone())
            .await?;
        if acked < i64::from(wanted) {
            return Err(Unreplicated::TooFew {
                acked,
                wanted,
                drawn: None,
            });
        }
        Ok(())
    }
}

/// One pipeline: every script of the group, then `WAIT`.
async fn send(mut redis: RedisClient, group: Vec<Pending>, wanted: u32, timeout: Duration) {
    let mut pipe = redis::pipe();
    for pending in &group {
        // EVAL, not EVALSHA: a promoted replica may not have the script
        // cached, and a pipeline cannot load it halfway.
        pipe.cmd("EVAL")
            .arg(pending.call.source)
            .arg(pending.call.keys.len())
            .arg(&pending.call.keys)
            .arg(&pending.call.args);
    }
    pipe.cmd("WAIT").arg(wanted).arg(timeout.as_millis() as u64);
    let replies: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut redis).await;
    metrics::histogram!("api_replicated_group_size").record(group.len() as f64);
    match replies {
        Ok(mut replies) => {
            let acked = replies.pop().unwrap_or(0);
            for (pending, reply) in group.into_iter().zip(replies) {
                let answer = if acked >= i64::from(wanted) {
                    Ok(reply)
                } else {
                    Err(Unreplicated::TooFew {
                        acked,
                        wanted,
                        drawn: Some(reply),
                    })
                };
                let _ = pending.reply.send(answer);
            }
        }
        Err(error) => {
            for pending in group {
                let _ = pending.reply.send(Err(Unreplicated::Redis(error.clone())));
            }
        }
    }
}

//! Draws in rounds, as the publisher sends jobs: one lane per hash slot
//! (a single node has one), and while a lane's round is out the draws
//! that arrive gather, and go out together when it ends. An idle api
//! sends a draw at once, in a round of one.
//!
//! Without `REDIS_WAIT_REPLICAS` a round is one call of
//! [`counters::DRAW_MANY`]: one script run in Redis and one command here
//! for the whole round, where each draw was a script call of its own
//! (measured on the bench's message load: ~6 µs of the api's CPU per
//! draw, most of it that command's encoding, routing and reply).
//!
//! With `REDIS_WAIT_REPLICAS` a round is one pipeline of its scripts
//! followed by a single `WAIT`. `WAIT` blocks the connection it is sent on
//! until the replicas catch up, and the api has one connection per Redis
//! node: one `WAIT` per draw would let one draw through per replica round
//! trip (measured: 1.3k creates/s on the local cluster). `WAIT` covers
//! every write made on its connection before it, so one covers the round.
//!
//! One lane per hash slot (a cluster call or pipeline must stay in one
//! slot): a master whose replica lags holds back only the lanes of its own
//! slots, and the applications of the other masters keep their latency.
//! Each lane's queue is bounded ([`QUEUE_MAX`] draws: a draw that finds it
//! full is refused at once), and a caller waits at most its bound (the
//! Redis response timeout, `REDIS_WAIT_TIMEOUT_MS` included) plus
//! [`MARGIN`]: then it is answered 503 and its number, if drawn, is looked
//! up by its receipt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;
use shared::counters;
use shared::group_commit::{self, Limits, Weight};
use shared::redis_client::{RedisClient, Slot, Wait};
use tokio::sync::{mpsc, oneshot};

/// What one draw of a round got back: the script's reply, or why not.
pub(crate) type Reply = Result<redis::Value, RoundError>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RoundError {
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
    reply: Hearer,
}

/// Who hears a call's reply.
enum Hearer {
    /// A caller, waiting for it.
    Caller(oneshot::Sender<Reply>),
    /// Nobody waits for it: this hears a failure ([`Rounds::enqueue`]).
    Nobody(Box<dyn FnOnce(RoundError) + Send>),
}

impl Hearer {
    fn hear(self, reply: Reply) {
        match self {
            Self::Caller(caller) => {
                let _ = caller.send(reply);
            }
            Self::Nobody(on_error) => {
                if let Err(error) = reply {
                    on_error(error);
                }
            }
        }
    }

    /// A caller that gave up needs no draw: it is not sent.
    fn gone(&self) -> bool {
        matches!(self, Self::Caller(caller) if caller.is_closed())
    }
}

/// Sends draws in rounds, a lane per slot.
pub(crate) struct Rounds {
    redis: RedisClient,
    /// `replicas` 0: no `WAIT`.
    wait: Wait,
    /// The longest a caller waits, [`MARGIN`] aside.
    bound: Duration,
    lanes: Mutex<HashMap<Option<Slot>, mpsc::Sender<Pending>>>,
}

/// One round: the draws waiting, at most 512 in one pipeline (a few tens
/// of KB to send and answer; under one `WAIT` either way).
const ROUND: Limits = Limits::count(512);

/// At most this many draws wait in one lane.
const QUEUE_MAX: usize = 4096;

/// How much longer than its bound a caller waits: the round's own round
/// trip.
const MARGIN: Duration = Duration::from_millis(500);

impl Rounds {
    /// Lanes start as their slots are first drawn from; each ends when
    /// `self` is dropped.
    pub(crate) fn start(redis: RedisClient, wait: Wait, bound: Duration) -> Self {
        Self {
            redis,
            wait,
            bound,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `call` in the next round of its slot, answering once the
    /// replicas `wait` asks for hold its writes.
    pub(crate) async fn run(&self, call: Call) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue(call, Hearer::Caller(reply))
            .map_err(|(error, _)| error)?;
        match tokio::time::timeout(self.bound + MARGIN, answer).await {
            Ok(answered) => answered.unwrap_or(Err(RoundError::Stopped)),
            Err(_) => Err(RoundError::TimedOut),
        }
    }

    /// Runs `call` in the next round of its slot, with nobody waiting for
    /// it: no task, timer or channel of its own; `on_error` hears why it
    /// failed, if it does.
    pub(crate) fn enqueue(&self, call: Call, on_error: impl FnOnce(RoundError) + Send + 'static) {
        if let Err((error, refused)) = self.queue(call, Hearer::Nobody(Box::new(on_error))) {
            refused.reply.hear(Err(error));
        }
    }

    /// Queues `call` in its slot's lane; a full or stopped lane gives it
    /// back, with why.
    fn queue(&self, call: Call, reply: Hearer) -> Result<(), (RoundError, Pending)> {
        let slot = call
            .keys
            .first()
            .and_then(|key| self.redis.pipeline_of(key));
        self.lane(slot)
            .try_send(Pending { call, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(pending) => (RoundError::Busy, pending),
                mpsc::error::TrySendError::Closed(pending) => (RoundError::Stopped, pending),
            })
    }

    /// The lane of `slot`, started on first use.
    fn lane(&self, slot: Option<Slot>) -> mpsc::Sender<Pending> {
        let mut lanes = self.lanes.lock().expect("replica lanes lock");
        lanes
            .entry(slot)
            .or_insert_with(|| {
                let (queue, waiting) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(lane(self.redis.clone(), waiting, self.wait));
                queue
            })
            .clone()
    }
}

/// One slot's rounds: what gathered while the last one was out.
async fn lane(redis: RedisClient, mut waiting: mpsc::Receiver<Pending>, wait: Wait) {
    let draw_many = Script::new(counters::DRAW_MANY);
    let mut group = Vec::new();
    while group_commit::take_waiting(&mut waiting, &mut group, ROUND, |_| Weight::ONE).await > 0 {
        group.retain(|pending: &Pending| !pending.reply.gone());
        if group.is_empty() {
            continue;
        }
        let group = std::mem::take(&mut group);
        metrics::histogram!("api_draw_round_size").record(group.len() as f64);
        let in_one_call = group.iter().all(|pending| {
            let source = pending.call.source;
            source == counters::DRAW || source == counters::CONFIRM
        });
        if wait.replicas == 0 && in_one_call {
            draw_all(&draw_many, redis.clone(), group).await;
        } else {
            send(redis.clone(), group, wait).await;
        }
    }
}

impl Rounds {
    /// Waits until `wanted` replicas hold what this connection wrote up
    /// to now on `key`'s node (a read of `key` routes the pipeline there).
    /// For writes made outside the grouped draws: a claim of an
    /// `Idempotency-Key` that republishes a number drawn earlier.
    pub(crate) async fn settle(
        redis: &RedisClient,
        key: &str,
        wanted: u32,
        timeout: Duration,
    ) -> Result<(), RoundError> {
        let (_, acked): (i64, i64) = redis::pipe()
            .cmd("EXISTS")
            .arg(key)
            .cmd("WAIT")
            .arg(wanted)
            .arg(timeout.as_millis() as u64)
            .query_async(&mut redis.clone())
            .await?;
        if acked < i64::from(wanted) {
            return Err(RoundError::TooFew {
                acked,
                wanted,
                drawn: None,
            });
        }
        Ok(())
    }
}

/// A round of draws and confirms only, without replicas to wait for: one
/// call of [`counters::DRAW_MANY`] (`EVALSHA`, loading the script on a
/// server that lacks it: nothing ran then). A confirm is its entry of one
/// key and no arguments.
async fn draw_all(draw_many: &Script, mut redis: RedisClient, group: Vec<Pending>) {
    let mut invocation = draw_many.prepare_invoke();
    for pending in &group {
        let Call { keys, args, .. } = &pending.call;
        counters::add_entry(&mut invocation, keys, args);
    }
    let replies: redis::RedisResult<Vec<redis::Value>> = invocation.invoke_async(&mut redis).await;
    answer(
        group,
        replies.map(|replies| replies.into_iter().map(Ok).collect()),
    );
}

/// Each caller its reply, or the round's error.
fn answer(group: Vec<Pending>, replies: redis::RedisResult<Vec<Reply>>) {
    match replies {
        Ok(replies) if replies.len() == group.len() => {
            for (pending, reply) in group.into_iter().zip(replies) {
                pending.reply.hear(reply);
            }
        }
        Ok(replies) => {
            let error = redis::RedisError::from((
                redis::ErrorKind::Parse,
                "a round answered a reply count other than its draws'",
                format!("{} replies to {} draws", replies.len(), group.len()),
            ));
            for pending in group {
                pending.reply.hear(Err(RoundError::Redis(error.clone())));
            }
        }
        Err(error) => {
            for pending in group {
                pending.reply.hear(Err(RoundError::Redis(error.clone())));
            }
        }
    }
}

/// One pipeline: every script of the group, then `WAIT` when `wait` asks
/// for replicas.
async fn send(mut redis: RedisClient, group: Vec<Pending>, wait: Wait) {
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
    let wanted = wait.replicas;
    if wanted > 0 {
        pipe.cmd("WAIT")
            .arg(wanted)
            .arg(wait.timeout.as_millis() as u64);
        metrics::histogram!("api_replicated_group_size").record(group.len() as f64);
    }
    let replies: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut redis).await;
    let replies = replies.map(|mut replies| {
        // WAIT's reply, the last, is not a draw's.
        let acked = match replies.pop_if(|_| wanted > 0) {
            Some(redis::Value::Int(acked)) => acked,
            _ => 0,
        };
        replies
            .into_iter()
            .map(|reply| {
                if acked >= i64::from(wanted) {
                    Ok(reply)
                } else {
                    let drawn = match reply {
                        redis::Value::Int(number) => Some(number),
                        _ => None,
                    };
                    Err(RoundError::TooFew {
                        acked,
                        wanted,
                        drawn,
                    })
                }
            })
            .collect()
    });
    answer(group, replies);
}

//! Where numbers are drawn. The only module that talks to the counters in
//! Redis, through the scripts of `shared::counters` (see there for the
//! keys and the in-flight invariant).
//!
//! A draw is one script round trip when the counter is in Redis (the
//! multiplexed connection pipelines the draws of concurrent requests). On a
//! miss exactly one caller gets the seed lock, reads the highest stored
//! number from the chat-system and seeds-and-draws in one more script; the
//! others wait for it, polling with a short backoff, instead of each
//! calling the chat-system. At most `SEED_CONCURRENCY` seeds run at once in
//! this process, and a token found unknown is remembered here too
//! ([`NegativeCache`]), so a flood of bad tokens costs neither Redis calls
//! after their first miss nor more than a bounded load on the chat-system.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use shared::counters::{self, Drawn, Invocation, Keys, Release, Scope};
use shared::redis_client::{RedisClient, Wait};
use shared::telemetry::Chain;
use tokio::time::Instant;

use crate::durability::{Guard, Refusal};
use crate::error::ApiError;
use crate::idempotency::{Claim, Found, KeyError};
use crate::negative_cache::NegativeCache;
use crate::rounds::{Call, RoundError, Rounds};
use shared::chat_system::{ChatSystem, ChatSystemError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum NumberError {
    #[error("unknown application")]
    UnknownApplication,
    #[error("unknown chat")]
    UnknownChat,
    /// A message number never handed out (or whose create was refused).
    #[error("unknown message")]
    UnknownMessage,
    #[error("redis unavailable")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    ChatSystem(#[from] ChatSystemError),
    #[error("timed out waiting for another request to seed the counter")]
    SeedTimeout,
    /// The lane of the draw's slot has too many draws waiting.
    #[error("too many draws waiting for Redis")]
    Crowded,
    /// No answer in time (or the api is stopping): perhaps drawn.
    #[error("Redis did not answer the draw in time")]
    Unanswered,
    #[error("the draw script answered {0}, which it never does")]
    UnexpectedReply(String),
    /// The `Idempotency-Key` the draw claimed holds what this api never
    /// writes.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    NotDurable(#[from] Refusal),
    /// The `Idempotency-Key` to record the number under was taken over.
    #[error("the Idempotency-Key was taken over by another request")]
    KeyLost,
    /// Fewer replicas than `REDIS_WAIT_REPLICAS` confirmed the draw in
    /// time; its number stays in flight, never handed out again.
    /// `drawn`: the script's reply, when the draw was made.
    #[error("only {acked} of {wanted} Redis replicas confirmed the draw in time")]
    NotReplicated {
        acked: i64,
        wanted: u32,
        drawn: Option<i64>,
    },
}

impl From<NumberError> for ApiError {
    fn from(error: NumberError) -> Self {
        match error {
            NumberError::UnknownApplication => ApiError::UnknownApplication,
            NumberError::UnknownChat => ApiError::UnknownChat,
            NumberError::UnknownMessage => ApiError::UnknownMessage,
            NumberError::KeyLost => ApiError::IdempotencyKeyBusy,
            NumberError::Redis(error) => ApiError::unavailable("redis", error),
            NumberError::ChatSystem(error) => ApiError::unavailable("chat-system", error),
            NumberError::Key(error) => error.into(),
            error @ (NumberError::SeedTimeout
            | NumberError::Crowded
            | NumberError::Unanswered
            | NumberError::UnexpectedReply(_)
            | NumberError::NotDurable(_)
            | NumberError::NotReplicated { .. }) => ApiError::unavailable("redis", error),
        }
    }
}

/// Timings of the counters, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    pub(crate) counter_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) seed_lock: Duration,
    pub(crate) seed_wait: Duration,
    /// Replicas that must hold a draw before its number is answered.
    pub(crate) wait_replicas: u32,
    pub(crate) wait_timeout: Duration,
    /// The longest a draw's answer takes (`REDIS_TIMEOUT_MS`, and
    /// `REDIS_WAIT_TIMEOUT_MS` with replicas).
    pub(crate) response_timeout: Duration,
    /// Seeds this process runs at once.
    pub(crate) seed_concurrency: usize,
}

pub(crate) struct Numbers {
    redis: RedisClient,
    durability: Arc<Guard>,
    keys: Keys,
    chat_system: ChatSystem,
    timings: Timings,
    /// Every draw goes through it; seeds too with `REDIS_WAIT_REPLICAS`.
    rounds: Rounds,
    draw: Counted,
    seed: Counted,
    unlock: Script,
    seeding: tokio::sync::Semaphore,
    unknown: NegativeCache,
}

impl Numbers {
    pub(crate) fn new(
        redis: RedisClient,
        durability: Arc<Guard>,
        keys: Keys,
        chat_system: ChatSystem,
        timings: Timings,
    ) -> Self {
        let wait = Wait {
            replicas: timings.wait_replicas,
            timeout: timings.wait_timeout,
        };
        Self {
            rounds: Rounds::start(redis.clone(), wait, timings.response_timeout),
            redis,
            durability,
            keys,
            chat_system,
            timings,
            draw: Counted::new(counters::DRAW),
            seed: Counted::new(counters::SEED),
            unlock: Script::new(counters::UNLOCK),
            seeding: tokio::sync::Semaphore::new(timings.seed_concurrency.max(1)),
            unknown: NegativeCache::new(timings.negative_ttl),
        }
    }

    /// The next number of `scope`, now in flight until its job is stored
    /// (the worker releases it) or refused ([`Numbers::give_back`]).
    pub(crate) async fn draw(&self, scope: Scope<'_>) -> Result<i64, NumberError> {
        match self.draw_with(scope, None).await? {
            Ok(number) => Ok(number),
            // Only a claim answers what it found.
            Err(found) => Err(NumberError::UnexpectedReply(format!("{found:?}"))),
        }
    }

    /// A draw that first claims an `Idempotency-Key`, in the same script:
    /// the number, recorded under the key, or what the key held instead
    /// (nothing drawn).
    pub(crate) async fn draw_claiming(
        &self,
        scope: Scope<'_>,
        claim: &Claim,
    ) -> Result<Result<i64, Found>, NumberError> {
        self.draw_with(scope, Some(claim)).await
    }

    async fn draw_with(
        &self,
        scope: Scope<'_>,
        claim: Option<&Claim>,
    ) -> Result<Result<i64, Found>, NumberError> {
        if self.unknown.knows_unknown(scope.token()) {
            return Err(NumberError::UnknownApplication);
        }
        self.durability.ensure(&self.redis).await?;
        let offer = Offer::new(&self.keys, scope);
        let give_up = Instant::now() + self.timings.seed_wait;
        let mut pause = Duration::from_millis(2);
        let key = claim.map(|claim| (claim.held.key.as_str(), claim.held.owner.as_str()));
        loop {
            let mut call = self.keys.draw(
                scope,
                &offer.lock_value,
                self.timings.seed_lock,
                &offer.receipts,
            );
            if let Some(claim) = claim {
                call = call.claiming(&claim.held.key, &claim.args);
            }
            let refused = |error| self.refused(scope, key, &offer, error);
            let mut drawn = match self.run(&self.draw, call).await.map_err(refused)? {
                Ok(drawn) => drawn,
                Err(found) => return Ok(Err(found)),
            };
            if drawn == Drawn::MustSeed {
                drawn = self
                    .seed(scope, &offer, key, give_up)
                    .await
                    .map_err(refused)?;
            }
            match drawn {
                Drawn::Number(number) => {
                    metrics::counter!("api_numbers_drawn_total", "scope" => scope.label())
                        .increment(1);
                    return Ok(Ok(number));
                }
                Drawn::Unknown => {
                    if let Scope::Chats { token } = scope {
                        self.unknown.remember(token);
                    }
                    return Err(unknown(scope));
                }
                Drawn::KeyLost => return Err(NumberError::KeyLost),
                Drawn::Wait | Drawn::MustSeed => {
                    // Another request holds the seed lock (or ours expired
                    // while seeding): draw again, for a while.
                    if Instant::now() >= give_up {
                        return Err(NumberError::SeedTimeout);
                    }
                    metrics::counter!("api_seed_lock_waits_total", "scope" => scope.label())
                        .increment(1);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Holding the seed lock: reads the highest stored number and seeds
    /// and draws in one script. On a chat-system failure the lock is
    /// released at once, so the next request tries again.
    async fn seed(
        &self,
        scope: Scope<'_>,
        offer: &Offer,
        key: Option<(&str, &str)>,
        give_up: Instant,
    ) -> Result<Drawn, NumberError> {
        let lock_value = offer.lock_value.as_str();
        let permit = tokio::time::timeout_at(give_up, self.seeding.acquire()).await;
        let Ok(Ok(_permit)) = permit else {
            self.unlock(scope, lock_value).await;
            return Err(NumberError::SeedTimeout);
        };
        metrics::counter!("api_counter_seeds_total", "scope" => scope.label()).increment(1);
        let highest = match self.highest_stored(scope).await {
            Ok(highest) => highest,
            Err(error) => {
                self.unlock(scope, lock_value).await;
                return Err(error);
            }
        };
        let call = self.keys.seed(
            scope,
            lock_value,
            highest,
            self.timings.negative_ttl,
            &offer.receipts,
        );
        match self.run(&self.seed, recorded(call, key)).await? {
            Ok(drawn) => Ok(drawn),
            Err(found) => Err(NumberError::UnexpectedReply(format!("{found:?}"))),
        }
    }

    /// What a counter is seeded from: the highest number of `scope` the
    /// chat-system has stored, `None` when it does not know the scope.
    ///
    /// A message's revisions start at 0 when the message is not stored
    /// yet but its number is in flight (its create is queued): no edit of
    /// it can be stored before it. In flight is asked first: a create
    /// leaves flight only once stored, so a message in flight before the
    /// read or stored by then is found by one of the two.
    async fn highest_stored(&self, scope: Scope<'_>) -> Result<Option<i64>, NumberError> {
        Ok(match scope {
            Scope::Chats { token } => self
                .chat_system
                .application(token)
                .await?
                .map(|application| application.last_chat_number),
            Scope::Messages { token, chat } => self
                .chat_system
                .chat(token, chat)
                .await?
                .map(|chat| chat.last_message_number),
            Scope::Revisions {
                token,
                chat,
                message,
            } => {
                let queued: bool = redis::cmd("SISMEMBER")
                    .arg(self.keys.in_flight(Scope::Messages { token, chat }))
                    .arg(message)
                    .query_async(&mut self.redis.clone())
                    .await
                    .inspect_err(|_| self.durability.suspect())?;
                let stored = self.chat_system.message(token, chat, message).await?;
                stored
                    .map(|message| message.revision)
                    .or(queued.then_some(0))
            }
        })
    }

    /// A draw made but not confirmed by the replicas is answered 503, so
    /// its number is given back (in the background, until a replica holds
    /// that too): no job will ever carry it. A draw whose reply never came
    /// may have been made all the same: its receipt is looked up and that
    /// number given back ([`Numbers::resolve_later`]). With an
    /// `Idempotency-Key` the number is kept, for a retry to publish.
    fn refused(
        &self,
        scope: Scope<'_>,
        key: Option<(&str, &str)>,
        offer: &Offer,
        error: NumberError,
    ) -> NumberError {
        if key.is_some() {
            return error;
        }
        match &error {
            NumberError::NotReplicated {
                drawn: Some(number),
                ..
            } if *number > 0 => self.give_back_later(scope, *number),
            // Timed out or stopped while its round was out: perhaps drawn.
            NumberError::NotReplicated { drawn: None, .. } | NumberError::Unanswered => {
                self.resolve_later(scope, offer);
            }
            // Not an answer: the script may have run before the
            // connection (or the master) went.
            NumberError::Redis(redis_error)
                if !matches!(
                    redis_error.kind(),
                    redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                ) =>
            {
                self.resolve_later(scope, offer);
            }
            _ => {}
        }
        error
    }

    /// Looks up the receipt of the draw that made `offer`, a few times
    /// over some 15 s (the receipt lives 30 s; a failover promotes the
    /// replica within seconds, and a draw queued behind a timeout may still
    /// run): found, its number is given back like any refused one; not
    /// found twice, the draw was never made (or was lost with its master,
    /// receipt and in-flight mark together).
    fn resolve_later(&self, scope: Scope<'_>, offer: &Offer) {
        let (receipts, lock_value) = (offer.receipts.clone(), offer.lock_value.clone());
        // The give-back of no number yet: the receipt's joins it.
        let release = self
            .keys
            .release(scope, &[], self.timings.counter_ttl, Release::Refused);
        let (redis, durability, wait) = (self.redis.clone(), self.durability.clone(), self.wait());
        tokio::spawn(async move {
            let mut absent = 0;
            for pause in [1, 2, 4, 8] {
                tokio::time::sleep(Duration::from_secs(pause)).await;
                let found: redis::RedisResult<Option<i64>> = redis::cmd("HGET")
                    .arg(&receipts)
                    .arg(&lock_value)
                    .query_async(&mut redis.clone())
                    .await;
                match found {
                    Ok(Some(number)) => {
                        let mut call = release.clone();
                        call.args.push(number.to_string());
                        metrics::counter!("api_draw_receipts_total", "outcome" => "given_back")
                            .increment(1);
                        give_back(&redis, &durability, wait, call, number).await;
                        let _: redis::RedisResult<()> = redis::cmd("HDEL")
                            .arg(&receipts)
                            .arg(&lock_value)
                            .query_async(&mut redis.clone())
                            .await;
                        return;
                    }
                    Ok(None) => {
                        absent += 1;
                        if absent == 2 {
                            metrics::counter!("api_draw_receipts_total", "outcome" => "none")
                                .increment(1);
                            return;
                        }
                    }
                    Err(_) => durability.suspect(),
                }
            }
            metrics::counter!("api_draw_receipts_total", "outcome" => "unresolved").increment(1);
            tracing::warn!(
                "could not learn whether a draw whose reply was lost was made; its number, if any, stays in flight"
            );
        });
    }

    fn wait(&self) -> Wait {
        Wait {
            replicas: self.timings.wait_replicas,
            timeout: self.timings.wait_timeout,
        }
    }

    /// Gives up a seed lock, if it is still ours.
    async fn unlock(&self, scope: Scope<'_>, lock_value: &str) {
        let unlocked: Result<i64, _> = self
            .unlock
            .key(self.keys.lock(scope))
            .arg(lock_value)
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(unlock_error) = unlocked {
            tracing::warn!(%unlock_error, "could not release the seed lock; it expires by itself");
        }
    }

    /// With `REDIS_WAIT_REPLICAS`: waits until enough replicas hold what
    /// this api wrote on `key` (an `Idempotency-Key` hash whose number,
    /// drawn by an earlier attempt perhaps never replicated, is about to
    /// be answered). A no-op without the setting.
    pub(crate) async fn settle(&self, key: &str) -> Result<(), NumberError> {
        if self.timings.wait_replicas == 0 {
            return Ok(());
        }
        let (wanted, timeout) = (self.timings.wait_replicas, self.timings.wait_timeout);
        Rounds::settle(&self.redis, key, wanted, timeout)
            .await
            .map_err(|error| self.round_failed(error))
    }

    /// A failed call of a round as a draw error.
    fn round_failed(&self, error: RoundError) -> NumberError {
        match error {
            RoundError::Redis(error) => NumberError::Redis(error),
            RoundError::Busy if self.timings.wait_replicas == 0 => NumberError::Crowded,
            RoundError::TimedOut | RoundError::Stopped if self.timings.wait_replicas == 0 => {
                NumberError::Unanswered
            }
            RoundError::TooFew {
                acked,
                wanted,
                drawn,
            } => {
                metrics::counter!("api_draws_not_replicated_total", "why" => "too_few")
                    .increment(1);
                NumberError::NotReplicated {
                    acked,
                    wanted,
                    drawn,
                }
            }
            // No replica confirmed the draw (if it was made): the lane is
            // full or slow (its shard's replica lags), or gone (the runtime
            // is stopping).
            RoundError::Busy | RoundError::TimedOut | RoundError::Stopped => {
                let why = match error {
                    RoundError::Busy => "busy",
                    RoundError::TimedOut => "timed_out",
                    _ => "stopped",
                };
                metrics::counter!("api_draws_not_replicated_total", "why" => why).increment(1);
                NumberError::NotReplicated {
                    acked: 0,
                    wanted: self.timings.wait_replicas,
                    drawn: None,
                }
            }
        }
    }

    /// Runs [`counters::DRAW`] or [`counters::SEED`] and parses the reply.
    /// Draws go out in rounds ([`Rounds`]); a seed, rare, on its own,
    /// unless `REDIS_WAIT_REPLICAS` asks for replicas to hold it too.
    async fn run(
        &self,
        script: &Counted,
        call: Invocation,
    ) -> Result<Result<Drawn, Found>, NumberError> {
        let in_rounds = script.source == counters::DRAW || self.timings.wait_replicas > 0;
        let reply = if in_rounds {
            let call = Call {
                source: script.source,
                keys: call.keys,
                args: call.args,
            };
            self.rounds
                .run(call)
                .await
                .map_err(|error| self.round_failed(error))
        } else {
            script
                .script
                .key(call.keys)
                .arg(call.args)
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(NumberError::from)
        };
        let reply: redis::Value = reply.inspect_err(|error| {
            if matches!(error, NumberError::Redis(_)) {
                self.durability.suspect();
            }
        })?;
        match reply {
            redis::Value::Int(code) => Drawn::from_reply(code)
                .map(Ok)
                .ok_or_else(|| NumberError::UnexpectedReply(code.to_string())),
            redis::Value::Array(fields) => Ok(Err(Found::from_reply(&fields)?)),
            other => Err(NumberError::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Takes back a number no job will carry (the broker certainly did not
    /// take its job, or its draw was answered 503): out of flight, so its
    /// counter can expire again, and for a chat its message counter
    /// removed, so messages to it get 404. Tried at once, then again in
    /// the background with backoff (for some ten minutes) until Redis, and
    /// `REDIS_WAIT_REPLICAS` replicas, hold it: a give-back lost in a
    /// failover would leave the number in flight for good.
    pub(crate) fn give_back_later(&self, scope: Scope<'_>, number: i64) {
        let ttl = self.timings.counter_ttl;
        let call = self.keys.release(scope, &[number], ttl, Release::Refused);
        let (redis, durability, wait) = (self.redis.clone(), self.durability.clone(), self.wait());
        tokio::spawn(async move { give_back(&redis, &durability, wait, call, number).await });
    }

    /// Marks the `Idempotency-Key` hash `key` queued ([`counters::CONFIRM`])
    /// in the next round of its slot, where it shares the draws' script
    /// call and fsync (a call of its own cost keyed creates a fifth of
    /// their rate, measured on the api alone). Nobody waits for it: a
    /// failure is logged in the request's span, not counted as a draw's.
    /// Should it never land, a retry publishes the job once more, which
    /// stores nothing twice.
    pub(crate) fn confirm_later(&self, key: String) {
        let call = Call {
            source: counters::CONFIRM,
            keys: vec![key],
            args: Vec::new(),
        };
        let (durability, span) = (self.durability.clone(), tracing::Span::current());
        self.rounds.enqueue(call, move |error| {
            if matches!(error, RoundError::Redis(_)) {
                durability.suspect();
            }
            span.in_scope(|| {
                tracing::warn!(error = %Chain(&error), "could not mark the Idempotency-Key queued");
            });
        });
    }

    /// For `/readyz`: Redis answers, and may be drawn from.
    pub(crate) async fn ready(&self) -> Result<(), NumberError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.redis.clone())
            .await
            .inspect_err(|_| self.durability.suspect())?;
        self.durability.ensure(&self.redis).await?;
        Ok(())
    }

    /// What the durability check last found, for `/readyz`.
    pub(crate) fn durability(&self) -> String {
        self.durability.said()
    }
}

/// Runs the give-back `call` (a [`counters::RELEASE`]) of `number` until
/// Redis, and `wait`'s replicas, hold it; with backoff, for some ten
/// minutes.
async fn give_back(
    redis: &RedisClient,
    durability: &Guard,
    wait: Wait,
    call: Invocation,
    number: i64,
) {
    let mut pipeline = redis::pipe();
    // EVAL, not EVALSHA: a promoted replica may not have the script.
    pipeline
        .cmd("EVAL")
        .arg(counters::RELEASE)
        .arg(call.keys.len())
        .arg(call.keys)
        .arg(call.args)
        .ignore();
    let mut delay = Duration::from_millis(100);
    for _ in 0..150 {
        let given: redis::RedisResult<()> = redis.query_replicated(&pipeline, wait).await;
        match given {
            Ok(()) => return,
            Err(_) => {
                durability.suspect();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::warn!(
        number,
        "could not give a number back; it stays in flight and keeps its counter"
    );
}

/// A counters script and its source (a pipelined `EVAL` sends the source).
struct Counted {
    script: Script,
    source: &'static str,
}

impl Counted {
    fn new(source: &'static str) -> Self {
        Self {
            script: Script::new(source),
            source,
        }
    }
}

fn recorded(call: Invocation, key: Option<(&str, &str)>) -> Invocation {
    match key {
        Some((key, owner)) => call.recorded_under(key, owner),
        None => call,
    }
}

fn unknown(scope: Scope<'_>) -> NumberError {
    match scope {
        Scope::Chats { .. } => NumberError::UnknownApplication,
        Scope::Messages { .. } => NumberError::UnknownChat,
        Scope::Revisions { .. } => NumberError::UnknownMessage,
    }
}

/// What a draw offers: the seed lock value it would hold, and where it
/// leaves its receipt (under that value, see `Keys::receipts`).
struct Offer {
    lock_value: String,
    receipts: String,
}

impl Offer {
    fn new(keys: &Keys, scope: Scope<'_>) -> Self {
        Self {
            lock_value: lock_value(),
            receipts: keys.receipts(scope, shared::amqp::headers::now_ms() / 1000),
        }
    }
}

/// A value no other holder of a seed lock uses: random per process, then
/// counted, so drawing (which must offer one) costs no random bytes.
fn lock_value() -> String {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static PROCESS: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", *PROCESS, NEXT.fetch_add(1, Ordering::Relaxed))
}

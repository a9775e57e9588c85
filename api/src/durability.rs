//! Whether the counters' Redis keeps every write it acknowledged.
//!
//! Numbers in flight exist nowhere else until their jobs are stored: a
//! Redis that comes back from a crash with older counters hands numbers out
//! again. So the api draws only from a Redis with `appendonly yes` and
//! `appendfsync always`, checked with `CONFIG GET` before the first draw,
//! again after any Redis error (a reconnect follows one, perhaps to another
//! server) and every few seconds (a `CONFIG SET` changes it live). Where
//! `CONFIG` is not allowed (managed Redis), the operator says so with
//! `REDIS_DURABILITY=trust`; `unsafe-none` draws from any Redis, knowing
//! numbers may repeat after a crash.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use shared::redis_client::RedisClient;
use tokio::sync::Mutex;

/// `REDIS_DURABILITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Draw only once `CONFIG GET` shows `appendonly yes` and `appendfsync
    /// always`.
    Verify,
    /// The operator vouches that Redis persists every write (where `CONFIG`
    /// is not allowed).
    Trust,
    /// Unsafe: draw from any Redis. After a Redis crash numbers already
    /// answered may be handed out again.
    UnsafeNone,
}

/// What the last check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Unknown = 0,
    Durable = 1,
    /// AOF off, or not fsynced on every write.
    NotDurable = 2,
    /// `CONFIG` is not allowed on this Redis.
    Unverifiable = 3,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Durable,
            2 => Self::NotDurable,
            3 => Self::Unverifiable,
            _ => Self::Unknown,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Unknown => "unchecked",
            Self::Durable => "ok",
            Self::NotDurable => "not durable",
            Self::Unverifiable => "durability unverifiable",
        }
    }
}

/// Why no number may be drawn.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "Redis does not persist every write ({0}); numbers are not handed out (run it with appendonly yes and appendfsync always, or set REDIS_DURABILITY=unsafe-none)"
    )]
    NotDurable(String),
    #[error(
        "Redis does not allow CONFIG, so its durability cannot be checked; numbers are not handed out (set REDIS_DURABILITY=trust if it persists every write)"
    )]
    Unverifiable,
    #[error("Redis did not answer the durability check")]
    Unreachable(#[source] redis::RedisError),
}

pub(crate) struct Guard {
    setting: Durability,
    state: AtomicU8,
    /// One check at a time; the others wait for its result.
    checking: Mutex<()>,
    /// The last `NotDurable` reason, for the log and the answer.
    reason: std::sync::Mutex<String>,
    /// The last verdict logged: a check that finds what the previous one
    /// found says nothing (the state goes back to `Unknown` before each).
    logged: AtomicU8,
}

/// How often a durable Redis is checked again even without an error.
const RECHECK: Duration = Duration::from_secs(5);

impl Guard {
    pub(crate) fn new(setting: Durability) -> Self {
        if setting == Durability::UnsafeNone {
            tracing::warn!(
                "REDIS_DURABILITY=unsafe-none: numbers are drawn from a Redis that may lose them in a crash, and then handed out again"
            );
        }
        Self {
            setting,
            state: AtomicU8::new(State::Unknown as u8),
            checking: Mutex::new(()),
            reason: std::sync::Mutex::new(String::new()),
            logged: AtomicU8::new(State::Unknown as u8),
        }
    }

    pub(crate) fn state(&self) -> State {
        if self.setting == Durability::Verify {
            State::from_u8(self.state.load(Ordering::Acquire))
        } else {
            State::Durable
        }
    }

    /// `Ok` when numbers may be drawn; checks Redis first when nothing is
    /// known.
    pub(crate) async fn ensure(&self, redis: &RedisClient) -> Result<(), Refusal> {
        if self.setting != Durability::Verify {
            return Ok(());
        }
        let state = match self.state() {
            State::Unknown => self.check(redis).await?,
            known => known,
        };
        match state {
            State::Durable | State::Unknown => Ok(()),
            State::NotDurable => Err(Refusal::NotDurable(
                self.reason.lock().expect("reason lock").clone(),
            )),
            State::Unverifiable => Err(Refusal::Unverifiable),
        }
    }

    /// A Redis command failed: the connection may come back to another
    /// server, so check again before the next draw.
    pub(crate) fn suspect(&self) {
        self.state.store(State::Unknown as u8, Ordering::Release);
    }

    /// Asks Redis (once for all callers waiting) and records the answer.
    async fn check(&self, redis: &RedisClient) -> Result<State, Refusal> {
        let _one_at_a_time = self.checking.lock().await;
        if self.state() != State::Unknown {
            return Ok(self.state());
        }
        let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut redis.clone())
            .await;
        let state = match answer {
            Ok(pairs) => {
                let value = |name: &str| {
                    pairs
                        .chunks(2)
                        .find(|pair| pair[0] == name)
                        .and_then(|pair| pair.get(1).cloned())
                        .unwrap_or_else(|| "?".into())
                };
                let (appendonly, appendfsync) = (value("appendonly"), value("appendfsync"));
                if appendonly == "yes" && appendfsync == "always" {
                    State::Durable
                } else {
                    *self.reason.lock().expect("reason lock") =
                        format!("appendonly {appendonly}, appendfsync {appendfsync}");
                    State::NotDurable
                }
            }
            Err(error) if refused(&error) => State::Unverifiable,
            Err(error) => return Err(Refusal::Unreachable(error)),
        };
        self.state.store(state as u8, Ordering::Release);
        let before = State::from_u8(self.logged.swap(state as u8, Ordering::AcqRel));
        if state != before {
            match state {
                State::Durable => tracing::info!("Redis persists every write: drawing numbers"),
                State::NotDurable | State::Unverifiable => {
                    let refusal = if state == State::NotDurable {
                        Refusal::NotDurable(self.reason.lock().expect("reason lock").clone())
                    } else {
                        Refusal::Unverifiable
                    };
                    tracing::error!(error = %refusal, "refusing to draw numbers");
                }
                State::Unknown => {}
            }
        }
        Ok(state)
    }

    /// Checks again every few seconds, until `stop` (a `CONFIG SET` can
    /// change a server's durability without a reconnect).
    pub(crate) async fn watch(
        &self,
        redis: RedisClient,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.setting != Durability::Verify {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RECHECK) => {}
            }
            self.suspect();
            if let Err(error) = self.check(&redis).await {
                tracing::warn!(error = %shared::telemetry::Chain(&error), "durability check failed");
            }
        }
    }
}

/// `CONFIG` refused: an ACL without it (NOPERM), or renamed or disabled
/// (unknown command), as managed services do.
fn refused(error: &redis::RedisError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("noperm") || text.contains("unknown command") || text.contains("not allowed")
}

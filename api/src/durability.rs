//! Whether the counters' Redis keeps every write it acknowledged.
//!
//! Numbers in flight exist nowhere else until their jobs are stored: a
//! Redis that comes back from a crash with older counters, or that evicted
//! one, hands numbers out again (an evicted `Idempotency-Key` hash makes a
//! retry a second record). So the api draws only from a Redis whose every
//! master has `appendonly yes`, `appendfsync always` and
//! `maxmemory-policy noeviction` (or `maxmemory 0`), checked with `CONFIG
//! GET` before the first draw, again after any Redis error on any path (a
//! reconnect follows one, perhaps to another server) and every few seconds
//! (a `CONFIG SET` changes it live). Where
//! `CONFIG` is not allowed (managed Redis), the operator says so with
//! `REDIS_DURABILITY=trust`; `unsafe-none` draws from any Redis, knowing
//! numbers may repeat after a crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use clap::ValueEnum;
use shared::redis_client::RedisClient;
use tokio::sync::Mutex;

/// `REDIS_DURABILITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// Draw only once `CONFIG GET` shows, on every master, `appendonly
    /// yes`, `appendfsync always` and no eviction.
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
    /// AOF off, not fsynced on every write, or keys evicted.
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
        "Redis does not keep every write ({0}); numbers are not handed out (run every master with appendonly yes, appendfsync always and maxmemory-policy noeviction, or set REDIS_DURABILITY=unsafe-none)"
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

    /// What `/readyz` says of Redis's durability: the label, and for a
    /// Redis that does not keep every write, which setting of which server.
    pub(crate) fn said(&self) -> String {
        match self.state() {
            State::NotDurable => format!(
                "{}: {}",
                State::NotDurable.label(),
                self.reason.lock().expect("reason lock")
            ),
            state => state.label().to_owned(),
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

    /// A Redis command failed (on any path: draws, seeds, claims,
    /// confirms, give-backs): the connection may come back to another
    /// server, or the server may have been reconfigured, so check again
    /// before the next draw.
    pub(crate) fn suspect(&self) {
        self.state.store(State::Unknown as u8, Ordering::Release);
    }

    /// Asks every master (once for all callers waiting) and records the
    /// answer.
    async fn check(&self, redis: &RedisClient) -> Result<State, Refusal> {
        let _one_at_a_time = self.checking.lock().await;
        if self.state() != State::Unknown {
            return Ok(self.state());
        }
        let state = match settings(redis).await {
            Ok(masters) => {
                let wrong: Vec<String> = masters
                    .iter()
                    .filter_map(|(address, settings)| {
                        let wrong = settings.wrong()?;
                        Some(match address {
                            Some(address) => format!("{wrong} on {address}"),
                            None => wrong,
                        })
                    })
                    .collect();
                if wrong.is_empty() {
                    State::Durable
                } else {
                    *self.reason.lock().expect("reason lock") = wrong.join("; ");
                    State::NotDurable
                }
            }
            Err(error) if refused(&error) => State::Unverifiable,
            Err(error) => return Err(Refusal::Unreachable(error)),
        };
        self.state.store(state as u8, Ordering::Release);
        let durable = if state == State::Durable { 1.0 } else { 0.0 };
        metrics::gauge!("api_redis_durable").set(durable);
        let before = State::from_u8(self.logged.swap(state as u8, Ordering::AcqRel));
        if state != before {
            match state {
                State::Durable => tracing::info!("Redis keeps every write: drawing numbers"),
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

/// The settings of one master that decide whether it keeps every key it
/// acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    appendonly: String,
    appendfsync: String,
    maxmemory: String,
    maxmemory_policy: String,
}

impl Settings {
    /// From the answers of `CONFIG GET append*` and `CONFIG GET
    /// maxmemory*` (name, value pairs; a setting missing reads `?`).
    fn from_pairs(pairs: &HashMap<String, String>) -> Self {
        let value = |name: &str| pairs.get(name).cloned().unwrap_or_else(|| "?".into());
        Self {
            appendonly: value("appendonly"),
            appendfsync: value("appendfsync"),
            maxmemory: value("maxmemory"),
            maxmemory_policy: value("maxmemory-policy"),
        }
    }

    /// What keeps this master from holding every write, `None` when
    /// nothing: every write fsynced to the append-only file, and no key
    /// evicted (`noeviction`, or no memory limit to evict at).
    pub(crate) fn wrong(&self) -> Option<String> {
        let mut wrong = Vec::new();
        if self.appendonly != "yes" {
            wrong.push(format!("appendonly {}", self.appendonly));
        }
        if self.appendfsync != "always" {
            wrong.push(format!("appendfsync {}", self.appendfsync));
        }
        if self.maxmemory != "0" && self.maxmemory_policy != "noeviction" {
            wrong.push(format!(
                "maxmemory-policy {} (maxmemory {})",
                self.maxmemory_policy, self.maxmemory
            ));
        }
        (!wrong.is_empty()).then(|| wrong.join(", "))
    }
}

/// The durability settings of every master, each with its address
/// (`None` on a single node).
async fn settings(redis: &RedisClient) -> redis::RedisResult<Vec<(Option<String>, Settings)>> {
    let mut masters: Vec<(Option<String>, HashMap<String, String>)> = Vec::new();
    // Two patterns, not one CONFIG GET of four names: Redis before 7
    // takes one parameter.
    for pattern in ["append*", "maxmemory*"] {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(pattern);
        for (address, answer) in redis.on_every_master(cmd).await? {
            let pairs: HashMap<String, String> = redis::from_redis_value(answer?)?;
            match masters.iter_mut().find(|(known, _)| *known == address) {
                Some((_, known)) => known.extend(pairs),
                None => masters.push((address, pairs)),
            }
        }
    }
    Ok(masters
        .into_iter()
        .map(|(address, pairs)| (address, Settings::from_pairs(&pairs)))
        .collect())
}

/// `CONFIG` refused: an ACL without it (NOPERM), or renamed or disabled
/// (unknown command), as managed services do.
fn refused(error: &redis::RedisError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("noperm") || text.contains("unknown command") || text.contains("not allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let pairs = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Settings::from_pairs(&pairs)
    }

    const DURABLE: [(&str, &str); 4] = [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory", "0"),
        ("maxmemory-policy", "allkeys-lru"),
    ];

    #[test]
    fn a_master_keeps_every_key_with_fsynced_aof_and_nothing_to_evict() {
        assert_eq!(settings(&DURABLE).wrong(), None, "no limit, no eviction");
        let mut capped = DURABLE;
        capped[2] = ("maxmemory", "209715200");
        capped[3] = ("maxmemory-policy", "noeviction");
        assert_eq!(
            settings(&capped).wrong(),
            None,
            "a full Redis refuses writes"
        );
    }

    #[test]
    fn each_wrong_setting_is_named() {
        for (policy, name) in [
            ("allkeys-lru", "allkeys-lru"),
            ("volatile-lru", "volatile-lru"),
        ] {
            let mut evicting = DURABLE;
            evicting[2] = ("maxmemory", "209715200");
            evicting[3] = ("maxmemory-policy", policy);
            assert_eq!(
                settings(&evicting).wrong().as_deref(),
                Some(format!("maxmemory-policy {name} (maxmemory 209715200)").as_str())
            );
        }
        let lazy = [("appendonly", "yes"), ("appendfsync", "everysec")];
        assert_eq!(
            settings(&lazy).wrong().as_deref(),
            Some("appendfsync everysec, maxmemory-policy ? (maxmemory ?)"),
            "a setting not answered is not assumed"
        );
    }
}

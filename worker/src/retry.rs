//! Where a job is retried, or given up on.
//!
//! One place decides, from the chat-system's answer or the error kind,
//! whether a failure is transient (try again later) or permanent
//! (dead-letter now), as apalis does; [`Policy`] then turns a transient
//! failure into a delay or, once the attempts are spent, into a dead
//! letter. Delays follow an exponential schedule (backon) with equal
//! jitter, and are served by RabbitMQ: the job waits in the retry queue of
//! its delay (`{prefix}.retry.{ms}ms`) and comes back to the jobs exchange
//! when its TTL runs out. No consumer slot is held while it waits.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;

/// Why a job was dead-lettered; the `x-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The number is stored with another body: never overwritten.
    Conflict,
    /// The chat-system does not know the application.
    UnknownApplication,
    /// The chat-system refused the job as invalid (another 4xx).
    Rejected,
    /// The payload is not a job this worker can read.
    Malformed,
    /// Transient failures, retried until the attempts ran out.
    Exhausted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::UnknownApplication => "unknown_application",
            Self::Rejected => "rejected",
            Self::Malformed => "malformed",
            Self::Exhausted => "exhausted",
        }
    }
}

/// Why an attempt to store a job failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request failed in transport (refused, reset, timed out). The
    /// error has no URL: URLs hold application tokens.
    #[error("chat-system unreachable")]
    Unreachable(#[source] Arc<reqwest::Error>),
    #[error("chat-system answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("chat {0} is not stored yet")]
    ChatNotStored(i64),
    #[error("message {message} of chat {chat} is not stored yet")]
    MessageNotStored { chat: i64, message: i64 },
    #[error("unknown application")]
    UnknownApplication,
    /// Redis was away, or (with `REDIS_WAIT_REPLICAS`) no replica confirmed
    /// the release in time.
    #[error("stored, but the number's release did not reach Redis")]
    Release(#[source] Arc<redis::RedisError>),
}

/// A failed attempt to store a job, sorted.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Worth trying again later: the chat-system or Redis is down, slow,
    /// overloaded, or the message's chat is not stored yet.
    #[error("transient failure")]
    Transient(#[source] StoreError),
    /// Will fail the same way every time.
    #[error("permanent failure ({})", .reason.as_str())]
    Permanent {
        reason: Reason,
        #[source]
        error: StoreError,
    },
}

impl Failure {
    /// The cause, for the `x-last-error` header and the log.
    pub fn error(&self) -> &StoreError {
        match self {
            Self::Transient(error) | Self::Permanent { error, .. } => error,
        }
    }
}

/// What a chat-system status means for the job that got it. 404 is left
/// to the caller: for a message it may only mean that its chat is not
/// stored yet.
pub(crate) fn classify(status: StatusCode, body: String) -> Result<(), Failure> {
    let error = StoreError::Status { status, body };
    match status {
        status if status.is_success() => Ok(()),
        StatusCode::CONFLICT => Err(Failure::Permanent {
            reason: Reason::Conflict,
            error,
        }),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Err(Failure::Transient(error))
        }
        // The worker's credential is wrong or missing: a configuration to
        // fix, not a job to give up on.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Failure::Transient(error)),
        status if status.is_server_error() => Err(Failure::Transient(error)),
        _ => Err(Failure::Permanent {
            reason: Reason::Rejected,
            error,
        }),
    }
}

/// How often a job has failed so far: the job's own `attempt` field, and
/// the `x-release-attempts` header of its retry copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts that failed to store the record (they count toward
    /// `RETRY_MAX_ATTEMPTS`).
    pub failed: u32,
    /// Attempts that stored the record but could not release its number
    /// (they never exhaust a job: its record is safe, only its number is
    /// still in flight).
    pub releases_failed: u32,
}

/// What is to become of a job after an attempt.
#[derive(Debug)]
pub enum Verdict {
    /// Stored: acknowledge.
    Done,
    /// Publish a copy with `attempts` to the retry queue of `delay`
    /// (waiting `wait`, at most `delay`), then acknowledge.
    Retry {
        delay: Duration,
        wait: Duration,
        attempts: Attempts,
        failure: Failure,
    },
    /// Publish to the dead-letter queue, then acknowledge.
    Dead { reason: Reason, error: String },
}

/// The retry schedule.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay before retry `n` (index `n - 1`); one retry queue each.
    /// Never empty: a release is retried even when a job gets one attempt.
    delays: Vec<Duration>,
    max_attempts: u32,
}

impl Policy {
    pub fn new(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        let retries = max_attempts.saturating_sub(1).max(1) as usize;
        let delays = ExponentialBuilder::default()
            .with_factor(2.0)
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_max_times(retries)
            .build()
            .collect();
        Self {
            delays,
            max_attempts: max_attempts.max(1),
        }
    }

    /// The distinct delays: the retry queues to declare.
    pub fn queues(&self) -> Vec<Duration> {
        let mut delays = self.delays.clone();
        delays.dedup();
        delays
    }

    /// What becomes of a job that failed `before` and now got `outcome`.
    pub fn decide(&self, before: Attempts, outcome: Result<(), Failure>) -> Verdict {
        let failure = match outcome {
            Ok(()) => return Verdict::Done,
            Err(Failure::Permanent { reason, error }) => {
                return Verdict::Dead {
                    reason,
                    error: last_error(&error),
                };
            }
            Err(failure) => failure,
        };
        if let StoreError::Release(_) = failure.error() {
            // Stored; only its number could not leave flight (Redis is
            // away). Retried on the schedule for as long as it takes.
            let index = (before.releases_failed as usize).min(self.delays.len() - 1);
            let delay = self.delays[index];
            let attempts = Attempts {
                releases_failed: before.releases_failed.saturating_add(1),
                ..before
            };
            return Verdict::Retry {
                delay,
                wait: equal_jitter(delay),
                attempts,
                failure,
            };
        }
        let failed = before.failed.saturating_add(1);
        match self.delays.get(before.failed as usize) {
            Some(&delay) if failed < self.max_attempts => Verdict::Retry {
                delay,
                wait: equal_jitter(delay),
                attempts: Attempts { failed, ..before },
                failure,
            },
            _ => Verdict::Dead {
                reason: Reason::Exhausted,
                error: format!(
                    "gave up after {failed} attempts: {}",
                    last_error(failure.error())
                ),
            },
        }
    }
}

/// An error and its causes on one line, for the `x-last-error` header.
pub(crate) fn last_error(error: &(dyn std::error::Error + 'static)) -> String {
    shared::telemetry::Chain(error).to_string()
}

/// A wait in `[delay / 2, delay]`: retries of jobs that failed together
/// spread out instead of returning together. It never exceeds `delay`, the
/// TTL of the queue the job waits in (RabbitMQ expires only at a queue's
/// head, so a longer per-message TTL would hold up the jobs behind it).
fn equal_jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(5, Duration::from_millis(1000), Duration::from_millis(5000))
    }

    #[test]
    fn delays_double_up_to_the_maximum() {
        let delays: Vec<u128> = policy().delays.iter().map(Duration::as_millis).collect();
        assert_eq!(delays, [1000, 2000, 4000, 5000]);
        assert_eq!(policy().queues().len(), 4);
    }

    #[test]
    fn transient_failures_retry_until_the_attempts_are_spent() {
        let policy = policy();
        let failure = || Err(Failure::Transient(StoreError::ChatNotStored(1)));
        for failed_before in 0..4 {
            let before = Attempts {
                failed: failed_before,
                releases_failed: 0,
            };
            match policy.decide(before, failure()) {
                Verdict::Retry {
                    delay,
                    wait,
                    attempts,
                    ..
                } => {
                    assert_eq!(attempts.failed, failed_before + 1);
                    assert_eq!(delay, policy.delays[failed_before as usize]);
                    assert!(
                        wait >= delay / 2 && wait <= delay,
                        "{wait:?} within [{:?}, {delay:?}]",
                        delay / 2
                    );
                }
                other => panic!("attempt {failed_before}: {other:?}"),
            }
        }
        let spent = Attempts {
            failed: 4,
            releases_failed: 0,
        };
        assert!(matches!(
            policy.decide(spent, failure()),
            Verdict::Dead {
                reason: Reason::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn permanent_failures_are_dead_lettered_at_once() {
        let failure = Err(Failure::Permanent {
            reason: Reason::Conflict,
            error: StoreError::UnknownApplication,
        });
        assert!(matches!(
            policy().decide(Attempts::default(), failure),
            Verdict::Dead {
                reason: Reason::Conflict,
                ..
            }
        ));
    }

    #[test]
    fn statuses_are_sorted_into_transient_and_permanent() {
        let cases = [
            (200, None),
            (201, None),
            (409, Some(false)),
            (400, Some(false)),
            (422, Some(false)),
            (408, Some(true)),
            (429, Some(true)),
            (500, Some(true)),
            (502, Some(true)),
            (503, Some(true)),
        ];
        for (status, transient) in cases {
            let outcome = classify(StatusCode::from_u16(status).unwrap(), String::new());
            let got = outcome
                .err()
                .map(|failure| matches!(failure, Failure::Transient(_)));
            assert_eq!(got, transient, "{status}");
        }
    }

    #[test]
    fn a_failed_release_is_retried_without_spending_attempts() {
        let policy = policy();
        let redis_down = || {
            let error = redis::RedisError::from(std::io::Error::other("down"));
            Err(Failure::Transient(StoreError::Release(Arc::new(error))))
        };
        let mut before = Attempts {
            failed: 4,
            releases_failed: 0,
        };
        for round in 0..20 {
            match policy.decide(before, redis_down()) {
                Verdict::Retry {
                    delay, attempts, ..
                } => {
                    assert_eq!(attempts.failed, 4, "round {round}");
                    assert_eq!(attempts.releases_failed, round + 1);
                    assert!(delay <= Duration::from_millis(5000));
                    before = attempts;
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert!(
            matches!(
                Policy::new(1, Duration::from_secs(1), Duration::from_secs(1))
                    .decide(before, redis_down()),
                Verdict::Retry { .. }
            ),
            "even with one attempt allowed"
        );
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let policy = Policy::new(1, Duration::from_secs(1), Duration::from_secs(1));
        assert!(matches!(
            policy.decide(
                Attempts::default(),
                Err(Failure::Transient(StoreError::ChatNotStored(1)))
            ),
            Verdict::Dead { .. }
        ));
    }
}

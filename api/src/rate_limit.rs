//! Fairness between applications: a token bucket per application, in this
//! api process, so one application sending at full speed can be held to
//! `RATE_LIMIT_PER_APPLICATION` creates per second (with bursts of
//! `RATE_LIMIT_BURST`) and the others keep their latency. A create over
//! the limit is answered 429 with `Retry-After` before anything is drawn.
//!
//! A refused create is held for `RATE_LIMIT_HOLD_MS` before its 429: a
//! client that ignores `Retry-After` and asks again at once (a closed-loop
//! flood) would otherwise make the cheap 429s a load of their own, on the
//! CPU the other applications need. The hold costs a timer, not CPU.
//!
//! Off by default. The buckets live in the process: behind a load balancer
//! of N api replicas an application gets up to N times the rate, so set it
//! to the share one replica should give (the README says how). Idle buckets
//! (full again) are dropped now and then, so a flood of tokens cannot grow
//! the table without bound.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Buckets are kept in this many shards, each behind its own lock.
const SHARDS: usize = 16;

/// A shard holding more buckets than this drops its full ones.
const PRUNE_ABOVE: usize = 4096;

pub(crate) struct RateLimit {
    /// Tokens per second; `None` when the limit is off.
    rate: Option<f64>,
    burst: f64,
    /// How long a refusal is held before it is answered.
    pub(crate) hold: Duration,
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

struct Shard {
    buckets: HashMap<String, Bucket>,
    /// The size past which the full buckets are dropped next: twice what
    /// the last pruning left, so pruning costs O(1) per request however
    /// many tokens come.
    prune_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` 0 turns the limit off; `burst` 0 means one second's
    /// worth.
    pub(crate) fn new(per_second: f64, burst: u32, hold: Duration) -> Self {
        let rate = (per_second > 0.0).then_some(per_second);
        let burst = if burst == 0 {
            per_second.max(1.0)
        } else {
            f64::from(burst)
        };
        Self {
            rate,
            burst,
            hold,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        prune_at: PRUNE_ABOVE,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one token of `application`'s bucket; `Err` with how long until
    /// the next one when it is empty.
    pub(crate) fn admit(&self, application: &str) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = Instant::now();
        let shard = self.hasher.hash_one(application) as usize % SHARDS;
        let mut shard = self.shards[shard].lock().expect("rate limit lock");
        if shard.buckets.len() > shard.prune_at {
            let burst = self.burst;
            shard
                .buckets
                .retain(|_, bucket| bucket.refilled(now, rate, burst) < burst);
            shard.prune_at = (shard.buckets.len() * 2).max(PRUNE_ABOVE);
        }
        let bucket = shard
            .buckets
            .entry(application.to_owned())
            .or_insert(Bucket {
                tokens: self.burst,
                at: now,
            });
        bucket.tokens = bucket.refilled(now, rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_lets_its_burst_through_then_its_rate() {
        let limit = RateLimit::new(10.0, 5, Duration::ZERO);
        for _ in 0..5 {
            assert!(limit.admit("a").is_ok());
        }
        let wait = limit.admit("a").expect_err("the burst is spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limit.admit("b").is_ok(), "another application has its own");

        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limit.admit("a").is_ok(), "one token a tenth of a second");
        assert!(limit.admit("a").is_err());
    }

    #[test]
    fn off_admits_everything() {
        let limit = RateLimit::new(0.0, 0, Duration::ZERO);
        for _ in 0..10_000 {
            assert!(limit.admit("a").is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_dropped_when_a_shard_grows() {
        let limit = RateLimit::new(1000.0, 1, Duration::ZERO);
        for token in 0..(PRUNE_ABOVE * SHARDS * 2) {
            let _ = limit.admit(&token.to_string());
        }
        let shard = limit.hasher.hash_one("x") as usize % SHARDS;
        let size = || limit.shards[shard].lock().unwrap().buckets.len();
        assert!(size() > PRUNE_ABOVE);
        tokio::time::advance(Duration::from_secs(1)).await;
        // New tokens of that shard, a millisecond apart (each bucket full
        // again a millisecond after its one request), until it is pruned.
        let mut pruned = false;
        for n in 0..1_000_000 {
            let token = format!("x{n}");
            if limit.hasher.hash_one(&token) as usize % SHARDS == shard {
                tokio::time::advance(Duration::from_millis(1)).await;
                let _ = limit.admit(&token);
                if size() < PRUNE_ABOVE {
                    pruned = true;
                    break;
                }
            }
        }
        assert!(pruned, "the full buckets were never dropped: {}", size());
    }
}

//! Tokens the chat-system does not know, remembered in this process for
//! `NEGATIVE_CACHE_TTL_MS` in front of Redis's own marker: a flood of
//! requests for an unknown token costs one seed and its two Redis writes on
//! the first miss, one read-only script call per api process on the next,
//! and nothing in Redis after that until the entry expires.
//!
//! Only applications: a chat unknown a moment ago exists as soon as a draw
//! creates it, on any api replica, and its messages must be taken at once
//! (the draw script checks the message counter before the unknown marker;
//! a cache here would not know). A token does not come to exist that way:
//! the chat-system makes it, and Redis's marker already answers 404 for
//! the same time.
//!
//! Bounded: past [`CAPACITY`] entries the expired ones are dropped, and if
//! none are, everything is (a flood of distinct random tokens then costs
//! what it would without this cache, never memory without bound).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Most entries held at once.
const CAPACITY: usize = 100_000;

pub(crate) struct NegativeCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Instant>>,
}

impl NegativeCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `token` was found unknown lately.
    pub(crate) fn knows_unknown(&self, token: &str) -> bool {
        let mut entries = self.entries.lock().expect("negative cache lock");
        match entries.get(token) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                entries.remove(token);
                false
            }
            None => false,
        }
    }

    /// The chat-system does not know `token`.
    pub(crate) fn remember(&self, token: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("negative cache lock");
        if entries.len() >= CAPACITY {
            entries.retain(|_, until| *until > now);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), now + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unknown_token_is_remembered_for_its_ttl() {
        let cache = NegativeCache::new(Duration::from_secs(5));
        assert!(!cache.knows_unknown("t"));
        cache.remember("t");
        assert!(cache.knows_unknown("t"));
        assert!(!cache.knows_unknown("u"));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!cache.knows_unknown("t"));
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let cache = NegativeCache::new(Duration::from_secs(60));
        for token in 0..CAPACITY + 10 {
            cache.remember(&token.to_string());
        }
        assert!(cache.entries.lock().unwrap().len() <= CAPACITY);
    }
}

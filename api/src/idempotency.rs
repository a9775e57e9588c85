//! `Idempotency-Key`: a client may retry a create with the same key and
//! get the same number, with one record stored, even when the first
//! attempt's answer was lost or was a 503 after its job reached the queue.
//!
//! A key belongs to an application token and a kind of create (`chat`,
//! `message`); it lives in Redis next to the token's counters (same hash
//! tag) for `IDEMPOTENCY_TTL_SECS`, as a hash:
//!
//! - `fingerprint`: SHA-1 of the request (kind, chat, body), taken here;
//!   the same key with another request is refused (422);
//! - `owner`, `lease`: the request working on it, until when (Redis time);
//!   another request with the key waits for it, then gets 409;
//! - `job_id`, `created_at`: the job's identity, chosen at the claim;
//! - `number`: recorded by the draw script itself, so a number is never
//!   drawn for a key without being recorded under it.
//!
//! The key is claimed by the draw itself (the draw script claims it
//! before it draws, see `shared::counters::CLAIM_ARGS`): one script call,
//! and one fsynced write, for a keyed create's claim and number, where a
//! claim of its own took a round trip and a write more. A retry of an
//!   attempt whose job is not known to be queued publishes that job again,
//!   rebuilt from its own (identical) request: same id, same number, same
//!   body; storing it is idempotent;
//! - `queued`: the broker confirmed the job; a retry is answered the
//!   number at once.
//!
//! A number recorded under a key is never given back: a retry may still
//! publish its job, and after the key expires the number simply stays in
//! flight (its counter kept, as for any job whose fate is unknown).

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use shared::counters::{CLAIM_ARGS, Keys};
use shared::job::Kind;
use shared::redis_client::RedisClient;

use crate::durability::Guard;
use crate::error::ApiError;

/// The longest key accepted, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 255;

/// A key as the client sent it: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    pub(crate) fn parse(value: &[u8]) -> Result<Self, ApiError> {
        let visible = value.iter().all(|byte| (0x21..=0x7e).contains(byte));
        if value.is_empty() || value.len() > MAX_KEY_BYTES || !visible {
            return Err(ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
            )));
        }
        let text = std::str::from_utf8(value).expect("visible ASCII is UTF-8");
        Ok(Self(text.to_owned()))
    }
}

/// What a key says to a request that carries it, when that request is
/// not to draw (else the draw answers its number).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The first attempt's job is queued: its number is the answer.
    Queued(i64),
    /// The first attempt's job, `number` and `identity`, is not known to
    /// be queued: this request now holds the key and publishes it again.
    Republish(i64, Identity),
    /// Another request with the key is at work.
    Busy,
    /// The key was used for another request.
    Mismatch,
}

impl Found {
    /// Parses what the claim answers when the request is not to draw
    /// ([`CLAIM_ARGS`] lists its answers).
    pub(crate) fn from_reply(fields: &[redis::Value]) -> Result<Self, KeyError> {
        let field = |index: usize| -> Option<String> {
            fields
                .get(index)
                .and_then(|field| redis::from_redis_value(field.clone()).ok())
        };
        let number = || field(1).and_then(|number| number.parse().ok());
        match field(0).as_deref() {
            Some("queued") => number().map(Found::Queued).ok_or(KeyError::Corrupt),
            Some("republish") => {
                let id = field(2).and_then(|id| id.parse().ok());
                let created_at_ms = field(3).and_then(|at| at.parse().ok());
                match (number(), id, created_at_ms) {
                    (Some(number), Some(id), Some(created_at_ms)) => {
                        Ok(Found::Republish(number, Identity { id, created_at_ms }))
                    }
                    _ => Err(KeyError::Corrupt),
                }
            }
            Some("busy") => Ok(Found::Busy),
            Some("mismatch") => Ok(Found::Mismatch),
            _ => Err(KeyError::Corrupt),
        }
    }
}

/// A request's claim of its key, for the draw to make: the key's hash,
/// and the claim's arguments ([`CLAIM_ARGS`]).
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) held: Held,
    pub(crate) args: [String; CLAIM_ARGS],
}

/// The id and creation time of a key's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) id: uuid::Uuid,
    pub(crate) created_at_ms: u64,
}

/// A key this request works on, until its lease ends.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) key: String,
    pub(crate) owner: String,
}

pub(crate) struct Keyed {
    redis: RedisClient,
    /// Told of every Redis error here, as of the draws': the server may
    /// have changed under them.
    durability: Arc<Guard>,
    keys: Keys,
    ttl: Duration,
    lease: Duration,
    abandon: Script,
}

/// This request gives up: a key with a number is left for a retry at once
/// (lease over); one without is forgotten, as if never sent.
const ABANDON: &str = "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'number') == 1 then
  redis.call('HSET', KEYS[1], 'lease', '0')
else
  redis.call('DEL', KEYS[1])
end
return 1";

impl Keyed {
    /// `lease` must outlast a request: a draw (seeding included) and a
    /// publish.
    pub(crate) fn new(
        redis: RedisClient,
        keys: Keys,
        ttl: Duration,
        lease: Duration,
        durability: Arc<Guard>,
    ) -> Self {
        Self {
            redis,
            durability,
            keys,
            ttl,
            lease,
            abandon: Script::new(ABANDON),
        }
    }

    /// The claim of `key` by a request of `kind` described by `request`
    /// (what its fingerprint is taken of), for a job of `identity` should
    /// the key be free: its draw makes it.
    pub(crate) fn claim(
        &self,
        token: &str,
        kind: Kind,
        key: &IdempotencyKey,
        request: &str,
        identity: Identity,
    ) -> Claim {
        let key = self.keys.idempotency(token, kind.as_str(), &key.0);
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let args = [
            fingerprint(request),
            owner.clone(),
            (self.lease.as_millis() as u64).to_string(),
            self.ttl.as_secs().max(1).to_string(),
            identity.id.to_string(),
            identity.created_at_ms.to_string(),
        ];
        Claim {
            held: Held { key, owner },
            args,
        }
    }

    /// This request gives the key up (see [`ABANDON`]); a failure is
    /// only logged, the lease then ends by itself.
    pub(crate) async fn abandon(&self, held: &Held) {
        let abandoned: Result<i64, _> = self
            .abandon
            .key(&held.key)
            .arg(&held.owner)
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(error) = abandoned {
            self.durability.suspect();
            tracing::warn!(%error, "could not give up the Idempotency-Key; its lease ends by itself");
        }
    }
}

/// The fingerprint of a request described by `request`: its SHA-1 in hex,
/// as Redis's `redis.sha1hex` took it when the draw script did (so keys
/// written then still match).
fn fingerprint(request: &str) -> String {
    sha1_smol::Sha1::from(request).digest().to_string()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("redis unavailable")]
    Redis(#[from] redis::RedisError),
    #[error("an Idempotency-Key record in Redis is not one this api writes")]
    Corrupt,
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        ApiError::unavailable("redis", error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_what_redis_sha1hex_gives() {
        // `redis-cli eval "return redis.sha1hex(ARGV[1])" 0 ...`
        assert_eq!(
            fingerprint("chat"),
            "7ecde348ff9cda2c3ba69a0c4543365039d0d65b"
        );
        assert_eq!(
            fingerprint("message\n7\nhello, \u{fc}"),
            "041db4c5240985440eb9fc22c1d4eceb0f7341f9"
        );
    }

    #[test]
    fn a_key_is_one_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse(b"8e03978e-40d5-43e8-bc93-6894a57f9324").is_ok());
        assert!(IdempotencyKey::parse(b"\"quoted\",{braces}:~").is_ok());
        assert!(IdempotencyKey::parse(&[b'k'; MAX_KEY_BYTES]).is_ok());
        for bad in [
            &b""[..],
            &[b'k'; MAX_KEY_BYTES + 1][..],
            b"with space",
            b"tab\t",
            "caf\u{e9}".as_bytes(),
            b"\x7f",
        ] {
            assert!(
                matches!(IdempotencyKey::parse(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}

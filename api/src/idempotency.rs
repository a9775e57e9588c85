//! `Idempotency-Key`: a client may retry a create with the same key and
//! get the same number, with one record stored, even when the first
//! attempt's answer was lost or was a 503 after its job reached the queue.
//!
//! A key belongs to an application token and a kind of create (`chat`,
//! `message`); it lives in Redis next to the token's counters (same hash
//! tag) for `IDEMPOTENCY_TTL_SECS`, as a hash:
//!
//! - `fingerprint`: SHA-1 of the request (kind, chat, body); the same key
//!   with another request is refused (422);
//! - `owner`, `lease`: the request working on it, until when (Redis time);
//!   another request with the key waits for it, then gets 409;
//! - `job_id`, `created_at`: the job's identity, chosen at the claim;
//! - `number`: recorded by the draw script itself, so a number is never
//!   drawn for a key without being recorded under it. A retry of an
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
use shared::counters::Keys;
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

/// What a key says about a request that carries it.
#[derive(Debug)]
pub(crate) enum Claimed {
    /// Unused: this request holds it and creates the record, as the job
    /// `identity`.
    New(Held),
    /// The first attempt's job is queued: its number is the answer.
    Queued(i64),
    /// The first attempt's job, `number` and `identity`, is not known to
    /// be queued: this request holds the key and publishes it again.
    Republish(Held, i64, Identity),
    /// Another request with the key is at work.
    Busy,
    /// The key was used for another request.
    Mismatch,
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
    claim: Script,
    confirm: Script,
    abandon: Script,
}

/// KEYS: the key's hash. ARGV: the request, the owner, the lease and
/// TTL, the job's identity should the key be new. Time from Redis, so api
/// instances with different clocks agree on leases.
const CLAIM: &str = "local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fingerprint = redis.sha1hex(ARGV[1])
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'lease', 'number', 'queued')
if not held[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', fingerprint, 'owner', ARGV[2],
    'lease', now + tonumber(ARGV[3]), 'job_id', ARGV[5], 'created_at', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return {'new'}
end
if held[1] ~= fingerprint then return {'mismatch'} end
if held[4] then return {'queued', held[3]} end
if tonumber(held[2]) > now then return {'busy'} end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease', now + tonumber(ARGV[3]))
if held[3] then
  local job = redis.call('HMGET', KEYS[1], 'job_id', 'created_at')
  return {'republish', held[3], job[1], job[2]}
end
-- The attempt that held it drew nothing: this one starts afresh, as its
-- own job.
redis.call('HSET', KEYS[1], 'job_id', ARGV[5], 'created_at', ARGV[6])
return {'new'}";

/// The job is queued, whoever published it.
const CONFIRM: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'queued', '1', 'lease', '0')
return 1";

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
            claim: Script::new(CLAIM),
            confirm: Script::new(CONFIRM),
            abandon: Script::new(ABANDON),
        }
    }

    /// Looks `key` up for a request of `kind` described by `request`
    /// (what its fingerprint is taken of), claiming it for a job of
    /// `identity` when free.
    pub(crate) async fn claim(
        &self,
        token: &str,
        kind: Kind,
        key: &IdempotencyKey,
        request: &str,
        identity: Identity,
    ) -> Result<Claimed, KeyError> {
        let key = self.keys.idempotency(token, kind.as_str(), &key.0);
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let reply: Vec<Vec<u8>> = self
            .claim
            .key(&key)
            .arg(request)
            .arg(&owner)
            .arg(self.lease.as_millis() as u64)
            .arg(self.ttl.as_secs().max(1))
            .arg(identity.id.to_string())
            .arg(identity.created_at_ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .inspect_err(|_| self.durability.suspect())?;
        let held = Held { key, owner };
        let field = |index: usize| {
            reply
                .get(index)
                .and_then(|field| std::str::from_utf8(field).ok())
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"new") => Ok(Claimed::New(held)),
            Some(b"queued") => {
                let number = field(1).and_then(|number| number.parse().ok());
                number.map(Claimed::Queued).ok_or(KeyError::Corrupt)
            }
            Some(b"republish") => {
                let number = field(1).and_then(|number| number.parse().ok());
                let id = field(2).and_then(|id| id.parse().ok());
                let created_at_ms = field(3).and_then(|at| at.parse().ok());
                match (number, id, created_at_ms) {
                    (Some(number), Some(id), Some(created_at_ms)) => Ok(Claimed::Republish(
                        held,
                        number,
                        Identity { id, created_at_ms },
                    )),
                    _ => Err(KeyError::Corrupt),
                }
            }
            Some(b"busy") => Ok(Claimed::Busy),
            Some(b"mismatch") => Ok(Claimed::Mismatch),
            _ => Err(KeyError::Corrupt),
        }
    }

    /// The key's job is queued.
    pub(crate) async fn confirm(&self, held: &Held) -> Result<(), KeyError> {
        let _: i64 = self
            .confirm
            .key(&held.key)
            .invoke_async(&mut self.redis.clone())
            .await
            .inspect_err(|_| self.durability.suspect())?;
        Ok(())
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

//! The counters in Redis: their key names and the Lua scripts that change
//! them. The api draws numbers and the worker releases them; both run the
//! scripts defined here, so the protocol lives in one place.
//!
//! Each scope (an application's chats, a chat's messages, a message's
//! revisions) has:
//!
//! - a counter, the last number handed out;
//! - an in-flight set, the numbers handed out whose job is not yet stored;
//! - a seed lock, held while one api instance reads the chat-system on a
//!   miss;
//! - an "unknown" marker, a brief negative cache for a token or chat the
//!   chat-system does not know (never for a message: a number not handed
//!   out yet may be handed out the next moment, and its chat's counter
//!   does not know its revisions).
//!
//! Invariant: a counter has a TTL only while its in-flight set is empty.
//! Drawing adds to the set and clears the TTL in one script; releasing
//! removes from the set and, when the set is empty, restores the TTL in one
//! script. A counter with jobs in flight therefore never expires, however
//! long the chat-system is down, and is never reseeded from a chat-system
//! that has not stored those jobs yet. Removal from a set is idempotent, so
//! a redelivered job cannot release its counter early.
//!
//! Every key of a token carries `{token}` as a Redis Cluster hash tag: all
//! keys a script touches share one slot.

use std::time::Duration;

/// Which counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope<'a> {
    /// The chat numbers of an application.
    Chats { token: &'a str },
    /// The message numbers of one chat.
    Messages { token: &'a str, chat: i64 },
    /// The revisions of one message: each edit draws the next.
    Revisions {
        token: &'a str,
        chat: i64,
        message: i64,
    },
}

impl<'a> Scope<'a> {
    /// `chats`, `messages` or `revisions`, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Chats { .. } => "chats",
            Self::Messages { .. } => "messages",
            Self::Revisions { .. } => "revisions",
        }
    }

    /// The application the counter belongs to.
    pub fn token(&self) -> &'a str {
        match *self {
            Self::Chats { token }
            | Self::Messages { token, .. }
            | Self::Revisions { token, .. } => token,
        }
    }
}

/// Could a chat-system have issued this token? Tokens are URL-safe words:
/// 1 to 128 ASCII letters, digits, `-` and `_` (hex, base58, base64url and
/// UUIDs all are). Anything else names no application, and is refused
/// before Redis or the chat-system is asked: a `{` or `}` would break the
/// keys' hash tag, and `.` or `..` would be a dot segment of the
/// chat-system's URL (`/applications/..` is `/`).
pub fn is_usable_token(token: &str) -> bool {
    (1..=128).contains(&token.len())
        && token
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Key names under a prefix (`REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn base(&self, scope: Scope<'_>) -> String {
        match scope {
            Scope::Chats { token } => format!("{}:{{{token}}}:chats", self.prefix),
            Scope::Messages { token, chat } => {
                let (head, tail) = self.message_counter_parts(token);
                format!("{head}{chat}{tail}")
            }
            Scope::Revisions {
                token,
                chat,
                message,
            } => format!(
                "{}:{{{token}}}:chat:{chat}:message:{message}:revisions",
                self.prefix
            ),
        }
    }

    /// The message counter of chat `n` is `head + n + tail`: the chat draw
    /// script creates it for the number it has just drawn.
    pub fn message_counter_parts(&self, token: &str) -> (String, String) {
        (
            format!("{}:{{{token}}}:chat:", self.prefix),
            ":messages".to_owned(),
        )
    }

    pub fn counter(&self, scope: Scope<'_>) -> String {
        self.base(scope)
    }

    pub fn in_flight(&self, scope: Scope<'_>) -> String {
        format!("{}:inflight", self.base(scope))
    }

    pub fn lock(&self, scope: Scope<'_>) -> String {
        format!("{}:lock", self.base(scope))
    }

    pub fn unknown(&self, scope: Scope<'_>) -> String {
        format!("{}:unknown", self.base(scope))
    }

    /// Where the api keeps an `Idempotency-Key` of `token`'s creates of
    /// `kind` (`chat`, `message`): in the token's slot, like its counters.
    pub fn idempotency(&self, token: &str, kind: &str, key: &str) -> String {
        format!("{}:{{{token}}}:idempotency:{kind}:{key}", self.prefix)
    }

    /// The hash where the draws of `scope`'s application made in the 10 s
    /// around `unix_secs` leave their receipts, each under the lock value
    /// it offered, for 30 s at least (the hash lives 40 s from its first
    /// receipt). A draw whose reply was lost (the connection dropped, Redis
    /// died after it ran and wrote its AOF, a master died after it ran)
    /// left a number in flight that the api never learnt; the receipt,
    /// written by the same script and so persisted and replicated with the
    /// draw or not at all, tells which to give back. Every draw leaves one:
    /// on one Redis with `appendfsync always` a SIGKILL between the AOF
    /// write and the replies left up to a round of pipelined draws in
    /// flight for good (7 in one chaos run). One hash per application and
    /// 10 s, not one key per draw: a receipt is a field written, not a key
    /// created and expired (at 9k draws/s that was 270k keys alive).
    pub fn receipts(&self, scope: Scope<'_>, unix_secs: u64) -> String {
        let token = scope.token();
        format!("{}:{{{token}}}:draws:{}", self.prefix, unix_secs / 10)
    }

    /// The invocation of [`DRAW`] for `scope`, offering `lock_value` for
    /// its seed lock, which lives `lock`; with its receipt in `receipts`
    /// ([`Keys::receipts`]).
    pub fn draw(
        &self,
        scope: Scope<'_>,
        lock_value: &str,
        lock: Duration,
        receipts: &str,
    ) -> Invocation {
        let (head, tail) = self.head_and_tail(scope);
        Invocation {
            keys: self.scope_keys(scope).to_vec(),
            args: vec![
                lock_value.to_owned(),
                lock.as_millis().to_string(),
                head,
                tail,
                receipts.to_owned(),
            ],
        }
    }

    /// The invocation of [`SEED`]: seed `scope` at `highest` (or remember
    /// it as unknown for `negative`, when `None`) and draw a number.
    pub fn seed(
        &self,
        scope: Scope<'_>,
        lock_value: &str,
        highest: Option<i64>,
        negative: Duration,
        receipts: &str,
    ) -> Invocation {
        let (head, tail) = self.head_and_tail(scope);
        let seed = highest
            .map(|highest| highest.to_string())
            .unwrap_or_default();
        // No unknown marker for a message: see the module's notes.
        let negative = match scope {
            Scope::Revisions { .. } => String::new(),
            Scope::Chats { .. } | Scope::Messages { .. } => negative.as_millis().to_string(),
        };
        Invocation {
            keys: self.scope_keys(scope).to_vec(),
            args: vec![
                lock_value.to_owned(),
                seed,
                head,
                tail,
                negative,
                receipts.to_owned(),
            ],
        }
    }

    /// Counter, in-flight set, unknown marker, seed lock.
    fn scope_keys(&self, scope: Scope<'_>) -> [String; 4] {
        [
            self.counter(scope),
            self.in_flight(scope),
            self.unknown(scope),
            self.lock(scope),
        ]
    }

    /// The message counter head and tail of a chat scope's numbers; empty
    /// for the other scopes.
    fn head_and_tail(&self, scope: Scope<'_>) -> (String, String) {
        match scope {
            Scope::Chats { token } => self.message_counter_parts(token),
            Scope::Messages { .. } | Scope::Revisions { .. } => (String::new(), String::new()),
        }
    }

    /// The invocation of [`RELEASE`] that takes `numbers` of `scope` out
    /// of flight, `why` they leave it; counters get `ttl` back.
    pub fn release(
        &self,
        scope: Scope<'_>,
        numbers: &[i64],
        ttl: Duration,
        why: Release,
    ) -> Invocation {
        let (head, tail) = self.head_and_tail(scope);
        let mut args = vec![
            ttl.as_millis().to_string(),
            why.as_arg().to_owned(),
            head,
            tail,
        ];
        args.extend(numbers.iter().map(i64::to_string));
        Invocation {
            keys: vec![self.counter(scope), self.in_flight(scope)],
            args,
        }
    }
}

/// The KEYS and ARGV of one script call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// The arguments of the claim of an `Idempotency-Key` that a [`DRAW`]
/// makes before it draws: the key's fingerprint (the SHA-1, in hex, of
/// what describes the request; taken by the api, not by Redis, which runs
/// every draw on one thread), the owner, the lease in milliseconds, the
/// key's TTL in seconds, the job's id and creation time should the key be
/// new. The key
/// is a hash (the api's `idempotency` module says what it holds). Time is
/// Redis's, so api instances with different clocks agree on leases.
///
/// The draw goes on when the key is new, already this owner's with no
/// number (a draw again after a seed wait), or held by nobody (a lease
/// over) with no number; it records its number there. Otherwise it draws
/// nothing and answers `{'mismatch'}` (another request's key), `{'queued',
/// number}`, `{'busy'}` (another request holds it), or `{'republish',
/// number, job_id, created_at}`: a lease over with a number whose job is
/// not known to be queued, now this owner's, to publish again.
pub const CLAIM_ARGS: usize = 6;

impl Invocation {
    /// A [`DRAW`] that first claims the `Idempotency-Key` hash `key` with
    /// `claim` ([`CLAIM_ARGS`]), and records its number there.
    pub fn claiming(mut self, key: &str, claim: &[String; CLAIM_ARGS]) -> Self {
        self.keys.push(key.to_owned());
        self.args.extend(claim.iter().cloned());
        self
    }

    /// A [`SEED`] that records the number under the
    /// `Idempotency-Key` hash `key`, which `owner` must hold (else it
    /// draws nothing and answers [`Drawn::KeyLost`]).
    pub fn recorded_under(mut self, key: &str, owner: &str) -> Self {
        self.keys.push(key.to_owned());
        self.args.push(owner.to_owned());
        self
    }
}

/// Why a number leaves flight, the third ARGV of [`RELEASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The chat-system stored the record.
    Stored,
    /// The broker refused the job: the record will never exist.
    Refused,
}

impl Release {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Stored => "expire",
            Self::Refused => "delete",
        }
    }
}

/// What [`DRAW`] and [`SEED`] answer, parsed from the scripts' integer
/// replies in this one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drawn {
    /// The number drawn, now in flight.
    Number(i64),
    /// The counter is missing and the caller now holds the seed lock: it
    /// must seed the counter.
    MustSeed,
    /// The chat-system does not know this token or chat (negative cache).
    Unknown,
    /// Another caller is seeding: wait and draw again.
    Wait,
    /// The `Idempotency-Key` the draw was to be recorded under is no
    /// longer the caller's (its lease ran out): nothing was seeded.
    KeyLost,
}

impl Drawn {
    /// `None` for a reply the scripts never give.
    pub fn from_reply(reply: i64) -> Option<Self> {
        match reply {
            number if number > 0 => Some(Self::Number(number)),
            0 => Some(Self::MustSeed),
            -1 => Some(Self::Unknown),
            -2 => Some(Self::Wait),
            -3 => Some(Self::KeyLost),
            _ => None,
        }
    }
}

/// Takes the next number of a live counter (KEYS and ARGV as in [`DRAW`]
/// and [`SEED`], which both end with it): in flight, the counter kept, a
/// chat's message counter started, the receipt left in `receipts` under
/// the lock value (an empty string: none), the number recorded under the
/// `Idempotency-Key` of KEYS[5] when `keyed`. `ttl` is the counter's PTTL
/// before the draw (-1: none, nothing to persist). `lease`, for a key
/// claimed by this draw, is its lease's end: the claim is written here,
/// with its number, in one write (`hold`, whose extra arguments are more
/// fields and values).
///
/// The functions here read one draw's KEYS and ARGV at an offset (`k`,
/// `a`: its KEYS[1] is `K[k + 1]`), so that [`DRAW_MANY`] hands each draw
/// its place in the call's own tables: copying them into tables of its
/// own was a sixth of the instructions Redis spent per draw (callgrind).
/// The number is turned into text once (`text`) for all its writes, as
/// the claim does with its lease's end: Redis 7.0 formats each Lua number
/// handed to `redis.call` with `snprintf("%.17g")`, and Lua each one it
/// concatenates with `"%.14g"` (`vfprintf` was 8% of Redis's
/// instructions per draw).
macro_rules! take_function {
    () => {
        "local function hold(key, a, o, lease, ...)
  redis.call('HSET', key, 'fingerprint', a[o], 'owner', a[o + 1], 'lease', lease,
    'job_id', a[o + 4], 'created_at', a[o + 5], ...)
  redis.call('EXPIRE', key, a[o + 3])
end
local function take(K, k, A, a, receipts, keyed, ttl, lease)
  local n = redis.call('INCR', K[k + 1])
  local text = string.format('%d', n)
  if ttl ~= -1 then redis.call('PERSIST', K[k + 1]) end
  redis.call('SADD', K[k + 2], text)
  if A[a + 3] ~= '' then redis.call('SET', A[a + 3] .. text .. A[a + 4], '0', 'NX') end
  if receipts ~= '' then
    redis.call('HSET', receipts, A[a + 1], text)
    if redis.call('PTTL', receipts) < 0 then redis.call('PEXPIRE', receipts, '40000') end
  end
  if lease then
    hold(K[k + 5], A, a + 6, lease, 'number', text)
  elseif keyed then
    redis.call('HSET', K[k + 5], 'number', text)
  end
  return n
end"
    };
}

/// Walks the entries of a `_MANY` call ([`DRAW_MANY`], [`RELEASE_MANY`]):
/// for each, `f(k, a, nk, na)` with its offsets into KEYS and ARGV (its
/// first key is `KEYS[k + 1]`, its first argument `ARGV[a + 1]`) and the
/// counts of its keys and arguments.
macro_rules! entries_function {
    () => {
        "local function each_entry(f)
  local k, a = 0, 1
  while a <= #ARGV do
    local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    f(k, a + 1, nk, na)
    k, a = k + nk, a + 2 + na
  end
end"
    };
}

/// The body of [`CONFIRM`], which [`DRAW_MANY`] runs too. One write: a
/// live key always has its `lease` field (every write of a claim sets
/// it), so an `HSET` that adds both fields found the key gone (its TTL
/// ran out) and made it anew: deleted again in the same script, nobody
/// sees it, and no key is left without a TTL.
macro_rules! confirm_function {
    () => {
        "local function confirm(key)
  if redis.call('HSET', key, 'queued', '1', 'lease', '0') == 2 then
    redis.call('DEL', key)
    return 0
  end
  return 1
end"
    };
}

/// The body of [`DRAW`], as a Lua function of one draw's KEYS and ARGV,
/// so [`DRAW_MANY`] runs the same text; and the claim of an
/// `Idempotency-Key` it makes first (see [`CLAIM_ARGS`]). A key that is
/// new is claimed by the draw's one write of it (`hold`): with its number,
/// or without when the draw has none yet (a seed to make or wait for).
/// Redis's clock is read once per script call (`now_ms`): a script runs
/// at one instant, so every claim of a round sees the same time.
macro_rules! draw_function {
    () => {
        concat!(
            take_function!(),
            "
local clock
local function now_ms()
  if not clock then
    local time = redis.call('TIME')
    clock = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  end
  return clock
end
local function claim(key, a, o)
  local now = now_ms()
  local fingerprint = a[o]
  local held = redis.call('HMGET', key, 'fingerprint', 'lease', 'number', 'queued', 'owner')
  local lease = string.format('%d', now + tonumber(a[o + 2]))
  if not held[1] then return nil, lease end
  if held[1] ~= fingerprint then return {'mismatch'} end
  if held[4] then return {'queued', held[3]} end
  if held[5] == a[o + 1] and not held[3] then return nil end
  if tonumber(held[2]) > now then return {'busy'} end
  redis.call('HSET', key, 'owner', a[o + 1], 'lease', lease)
  if held[3] then
    local job = redis.call('HMGET', key, 'job_id', 'created_at')
    return {'republish', held[3], job[1], job[2]}
  end
  redis.call('HSET', key, 'job_id', a[o + 4], 'created_at', a[o + 5])
  return nil
end
local function draw(K, k, A, a, keyed)
local lease
if keyed then
  local found
  found, lease = claim(K[k + 5], A, a + 6)
  if found then return found end
end
local ttl = redis.call('PTTL', K[k + 1])
if ttl == -2 then
  if lease then hold(K[k + 5], A, a + 6, lease) end
  if redis.call('EXISTS', K[k + 3]) == 1 then return -1 end
  if redis.call('SET', K[k + 4], A[a + 1], 'NX', 'PX', A[a + 2]) then return 0 end
  return -2
end
return take(K, k, A, a, A[a + 5], keyed, ttl, lease)
end"
        )
    };
}

/// Draws the next number of a scope.
///
/// KEYS: counter, in-flight set, unknown marker, seed lock.
/// ARGV: the lock value it would hold (random), the lock's PX
/// milliseconds, the message counter head and tail (for the chats of an
/// application; empty strings for a chat's messages), the hash of the
/// draw's receipt or an empty string (see [`Keys::receipts`]; the receipt
/// is the number under the lock value).
/// Optionally KEYS[5], an `Idempotency-Key` hash, with the claim's
/// [`CLAIM_ARGS`] arguments after the others: see [`Invocation::claiming`].
/// Returns the number, or a code of [`Drawn`], or, for a claim that
/// finds its key taken, what it found (an array, see [`CLAIM_ARGS`]).
/// `INCR` runs only on an
/// existing counter: a missing one is seeded, never started at 1. The
/// number is recorded in flight and keeps the counter from expiring; a
/// chat's number also starts that chat's message counter at 0 (no
/// chat-system read needed for a chat just created; its key is built from
/// head .. n .. tail and shares the token's hash tag, so it is in the same
/// cluster slot).
pub const DRAW: &str = concat!(
    draw_function!(),
    "\nreturn draw(KEYS, 0, ARGV, 0, KEYS[5] ~= nil)"
);

/// Runs [`DRAW`] for each of several draws at once, in one script call,
/// and [`CONFIRM`] for the `Idempotency-Key`s of jobs queued meanwhile:
/// a round costs Redis one script run and one fsync, and the api one
/// command.
///
/// KEYS: each entry's keys, one entry after the other. ARGV: for each
/// entry, the count of its keys and of its arguments, then its arguments.
/// An entry of one key and no arguments is a [`CONFIRM`] of that key (a
/// draw has four keys at least). Returns each entry's reply, in order. All
/// the keys of a call must be in one hash slot on a cluster (the api sends
/// one call per slot).
pub const DRAW_MANY: &str = concat!(
    confirm_function!(),
    "\n",
    draw_function!(),
    "\n",
    entries_function!(),
    "
local out = {}
each_entry(function(k, a, nk, na)
  if nk == 1 and na == 0 then
    out[#out + 1] = confirm(KEYS[k + 1])
  else
    out[#out + 1] = draw(KEYS, k, ARGV, a, nk > 4)
  end
end)
return out"
);

/// The job of an `Idempotency-Key` (KEYS[1]) is queued, whoever
/// published it: a retry is answered its number at once. Returns 1, or 0
/// for a key gone.
pub const CONFIRM: &str = concat!(confirm_function!(), "\nreturn confirm(KEYS[1])");

/// Seeds a counter from the chat-system's highest stored number and draws
/// from it, releasing the seed lock, all at once.
///
/// KEYS: counter, in-flight set, unknown marker, seed lock.
/// ARGV: lock value, the seed value (an empty string when the chat-system
/// does not know the scope), message counter head and tail (as in
/// [`DRAW`]), the negative cache PX milliseconds (an empty string: no
/// marker), the receipt key (as in [`DRAW`]). Returns the number,
/// [`Drawn::Unknown`], or [`Drawn::Wait`] when the lock expired meanwhile
/// (the caller draws again). `SET NX`: a live counter is never overwritten.
/// An `Idempotency-Key` hash as in [`DRAW`].
pub const SEED: &str = concat!(
    take_function!(),
    "
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -2 end
if KEYS[5] and redis.call('HGET', KEYS[5], 'owner') ~= ARGV[#ARGV] then
  redis.call('DEL', KEYS[4])
  return -3
end
redis.call('DEL', KEYS[4])
if ARGV[2] == '' then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[3], 1, 'PX', ARGV[5]) end
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
return take(KEYS, 0, ARGV, 0, ARGV[6], KEYS[5] ~= nil, 0)"
);

/// Releases the lock of a seed that failed (the chat-system was down), if
/// it is still ours. KEYS: seed lock. ARGV: lock value.
pub const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// The body of [`RELEASE`], a Lua function of one release's KEYS and ARGV
/// at an offset (as in [`DRAW`]'s functions), `na` its argument count.
macro_rules! release_function {
    () => {
        "local function release(K, k, A, a, na)
  local ttl, mode, head, tail = A[a + 1], A[a + 2], A[a + 3], A[a + 4]
  for i = a + 5, a + na do
    redis.call('SREM', K[k + 2], A[i])
    if head ~= '' then
      local messages = head .. A[i] .. tail
      if redis.call('SCARD', messages .. ':inflight') == 0 then
        if mode == 'delete' then redis.call('DEL', messages) else redis.call('PEXPIRE', messages, ttl) end
      end
    end
  end
  if redis.call('SCARD', K[k + 2]) == 0 then redis.call('PEXPIRE', K[k + 1], ttl) end
  return 1
end"
    };
}

/// Takes numbers of one scope out of flight: after their records were
/// stored (the worker) or after the broker refused their jobs (the api).
/// When the scope has nothing left in flight, its counter gets its TTL
/// back.
///
/// KEYS: counter, in-flight set.
/// ARGV: TTL milliseconds; `expire` (stored) or `delete` (refused); for an
/// application's chats the head and tail of their message counters' keys
/// (empty strings for a chat's messages); then the numbers. Each chat
/// number's own message counter, `head .. n .. tail` (in the same slot, as
/// in [`DRAW`]), once nothing of it is in flight either gets its TTL
/// (`expire`: the chat is stored) or is deleted (`delete`: the chat will
/// never exist, so messages to it get 404). `SREM` is idempotent: a
/// redelivered job cannot release anything early.
pub const RELEASE: &str = concat!(
    release_function!(),
    "\nreturn release(KEYS, 0, ARGV, 0, #ARGV)"
);

/// Runs [`RELEASE`] for each of several scopes at once, in one script call
/// (entries as in [`DRAW_MANY`]: the counts of an entry's keys and
/// arguments, then its arguments): the worker's releases of one batch cost
/// Redis one script call, not one per scope (22% fewer instructions per
/// released record, counted with callgrind on batches of 27 records). All
/// the keys of a call must be in one hash slot on a cluster. Returns 1.
pub const RELEASE_MANY: &str = concat!(
    release_function!(),
    "\n",
    entries_function!(),
    "
each_entry(function(k, a, nk, na) release(KEYS, k, ARGV, a, na) end)
return 1"
);

/// Adds one call's keys and arguments to a call of [`DRAW_MANY`] or
/// [`RELEASE_MANY`] as its next entry.
pub fn add_entry(invocation: &mut redis::ScriptInvocation<'_>, keys: &[String], args: &[String]) {
    invocation
        .key(keys)
        .arg(keys.len())
        .arg(args.len())
        .arg(args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_token_shares_its_hash_tag() {
        let keys = Keys::new("p");
        let chats = Scope::Chats { token: "abc" };
        let messages = Scope::Messages {
            token: "abc",
            chat: 5,
        };

        assert_eq!(keys.counter(chats), "p:{abc}:chats");
        assert_eq!(keys.in_flight(chats), "p:{abc}:chats:inflight");
        assert_eq!(keys.lock(chats), "p:{abc}:chats:lock");
        assert_eq!(keys.unknown(chats), "p:{abc}:chats:unknown");
        assert_eq!(keys.counter(messages), "p:{abc}:chat:5:messages");
        let revisions = Scope::Revisions {
            token: "abc",
            chat: 5,
            message: 7,
        };
        assert_eq!(
            keys.counter(revisions),
            "p:{abc}:chat:5:message:7:revisions"
        );
        assert_eq!(
            keys.in_flight(revisions),
            "p:{abc}:chat:5:message:7:revisions:inflight"
        );
        assert_eq!(keys.in_flight(messages), "p:{abc}:chat:5:messages:inflight");
        let (head, tail) = keys.message_counter_parts("abc");
        assert_eq!(format!("{head}5{tail}"), keys.counter(messages));
        assert_eq!(
            format!("{}:inflight", keys.counter(messages)),
            keys.in_flight(messages),
            "RELEASE builds a chat's message in-flight key so"
        );
    }

    #[test]
    fn a_release_names_its_scope_and_numbers() {
        let keys = Keys::new("p");
        let ttl = Duration::from_secs(2);
        let chats = keys.release(Scope::Chats { token: "t" }, &[3, 4], ttl, Release::Refused);
        assert_eq!(chats.keys, ["p:{t}:chats", "p:{t}:chats:inflight"]);
        assert_eq!(
            chats.args,
            ["2000", "delete", "p:{t}:chat:", ":messages", "3", "4"]
        );
        let messages = Scope::Messages {
            token: "t",
            chat: 3,
        };
        let released = keys.release(messages, &[9], ttl, Release::Stored);
        assert_eq!(released.keys[0], "p:{t}:chat:3:messages");
        assert_eq!(released.args, ["2000", "expire", "", "", "9"]);
    }

    #[test]
    fn a_message_the_chat_system_does_not_know_is_not_remembered_as_unknown() {
        let keys = Keys::new("p");
        let negative = Duration::from_secs(5);
        let revisions = Scope::Revisions {
            token: "t",
            chat: 1,
            message: 2,
        };
        let seed = |scope| keys.seed(scope, "lock", None, negative, "").args[4].clone();
        assert_eq!(seed(revisions), "");
        assert_eq!(seed(Scope::Chats { token: "t" }), "5000");
        assert_eq!(
            seed(Scope::Messages {
                token: "t",
                chat: 1
            }),
            "5000"
        );
    }

    #[test]
    fn script_replies_are_parsed_in_one_place() {
        assert_eq!(Drawn::from_reply(7), Some(Drawn::Number(7)));
        assert_eq!(Drawn::from_reply(0), Some(Drawn::MustSeed));
        assert_eq!(Drawn::from_reply(-1), Some(Drawn::Unknown));
        assert_eq!(Drawn::from_reply(-2), Some(Drawn::Wait));
        assert_eq!(Drawn::from_reply(-3), Some(Drawn::KeyLost));
        assert_eq!(Drawn::from_reply(-4), None);
    }

    #[test]
    fn only_url_safe_words_are_tokens() {
        for token in [
            "abc",
            "a-b_c",
            "5f0c9e0a7b3c4d5e8f1a2b3c4d5e6f70",
            "0f8b2c7e-9d3a-4b5c-8e1f-2a3b4c5d6e7f",
            &"x".repeat(128),
        ] {
            assert!(is_usable_token(token), "{token}");
        }
        for token in [
            "",
            ".",
            "..",
            "a.b",
            "a/b",
            "a b",
            "a%2Fb",
            "a{b",
            "a}b",
            "a\nb",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!is_usable_token(token), "{token:?}");
        }
    }
}

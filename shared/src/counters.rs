//! The counters in Redis: their key names and the Lua scripts that change
//! them. The api draws numbers and the worker releases them; both run the
//! scripts defined here, so the protocol lives in one place.
//!
//! Each scope (an application's chats, a chat's messages) has:
//!
//! - a counter, the last number handed out;
//! - an in-flight set, the numbers handed out whose job is not yet stored;
//! - a seed lock, held while one api instance reads the chat-system on a
//!   miss;
//! - an "unknown" marker, a brief negative cache for a token or chat the
//!   chat-system does not know.
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

/// Which counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The chat numbers of an application.
    Chats { token: &'a str },
    /// The message numbers of one chat.
    Messages { token: &'a str, chat: i64 },
}

impl Scope<'_> {
    /// `chats` or `messages`, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Chats { .. } => "chats",
            Self::Messages { .. } => "messages",
        }
    }
}

/// Can this token be used in key names? Braces would break the hash tag.
pub fn is_usable_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && !token.contains(['{', '}'])
        && !token.chars().any(char::is_control)
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

    /// The KEYS of [`RELEASE`] for number `number` of `scope`: for a chat,
    /// its own message counter and in-flight set too.
    pub fn release_keys(&self, scope: Scope<'_>, number: i64) -> Vec<String> {
        let mut keys = vec![self.counter(scope), self.in_flight(scope)];
        if let Scope::Chats { token } = scope {
            let chat = Scope::Messages {
                token,
                chat: number,
            };
            keys.push(self.counter(chat));
            keys.push(self.in_flight(chat));
        }
        keys
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

/// What [`DRAW`] and [`SEED`] answer, parsed from the script's integer
/// reply in this one place.
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
}

impl Drawn {
    /// `None` for a reply the scripts never give.
    pub fn from_reply(reply: i64) -> Option<Self> {
        match reply {
            number if number > 0 => Some(Self::Number(number)),
            0 => Some(Self::MustSeed),
            -1 => Some(Self::Unknown),
            -2 => Some(Self::Wait),
            _ => None,
        }
    }
}

/// The common tail of [`DRAW`] and [`SEED`]: take the next number, keep
/// the counter from expiring, record the number as in flight and, for a
/// chat, start its message counter at 0 (no chat-system read needed for a
/// chat that was just created). The message counter's key is built here
/// from `ARGV[3] .. n .. ARGV[4]`; it shares the token's hash tag, so it is
/// in the same cluster slot as the declared keys.
macro_rules! take_next {
    () => {
        "local n = redis.call('INCR', KEYS[1])
redis.call('PERSIST', KEYS[1])
redis.call('SADD', KEYS[2], n)
if ARGV[3] ~= '' then redis.call('SET', ARGV[3] .. n .. ARGV[4], 0, 'NX') end
return n
"
    };
}

/// Draws the next number of a scope.
///
/// KEYS: counter, in-flight set, unknown marker, seed lock.
/// ARGV: lock value (random), lock PX milliseconds, message counter head
/// and tail (empty strings for a message scope).
/// Returns the number, or a code of [`Drawn`]. `INCR` runs only on an
/// existing counter: a missing one is seeded, never started at 1.
pub const DRAW: &str = concat!(
    "if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
  if redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
  return -2
end
",
    take_next!()
);

/// Seeds a counter from the chat-system's highest stored number and draws
/// from it, releasing the seed lock, all at once.
///
/// KEYS and ARGV as [`DRAW`], with ARGV[2] replaced by the seed value, or
/// an empty string when the chat-system does not know the scope, and
/// ARGV[5] the negative cache PX milliseconds. Returns the number,
/// [`Drawn::Unknown`], or [`Drawn::Wait`] when the lock expired meanwhile
/// (the caller draws again). `SET NX`: a live counter is never overwritten.
pub const SEED: &str = concat!(
    "if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -2 end
redis.call('DEL', KEYS[4])
if ARGV[2] == '' then
  redis.call('SET', KEYS[3], 1, 'PX', ARGV[5])
  return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'NX')
",
    take_next!()
);

/// Releases the lock of a seed that failed (the chat-system was down), if
/// it is still ours. KEYS: seed lock. ARGV: lock value.
pub const UNLOCK: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Takes a number out of flight: after its record was stored (the worker)
/// or after the broker refused its job (the api). When the scope has
/// nothing left in flight, the counter gets its TTL back.
///
/// KEYS: counter, in-flight set; for a chat job also that chat's message
/// counter and message in-flight set.
/// ARGV: number, TTL milliseconds, and for a chat job `expire` (stored: its
/// message counter may now expire) or `delete` (refused: the chat does not
/// exist, so its message counter goes and messages to it get 404).
pub const RELEASE: &str = "redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if #KEYS == 4 and redis.call('SCARD', KEYS[4]) == 0 then
  if ARGV[3] == 'delete' then redis.call('DEL', KEYS[3]) else redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
end
return 1";

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
        assert_eq!(keys.in_flight(messages), "p:{abc}:chat:5:messages:inflight");
        let (head, tail) = keys.message_counter_parts("abc");
        assert_eq!(format!("{head}5{tail}"), keys.counter(messages));
    }

    #[test]
    fn script_replies_are_parsed_in_one_place() {
        assert_eq!(Drawn::from_reply(7), Some(Drawn::Number(7)));
        assert_eq!(Drawn::from_reply(0), Some(Drawn::MustSeed));
        assert_eq!(Drawn::from_reply(-1), Some(Drawn::Unknown));
        assert_eq!(Drawn::from_reply(-2), Some(Drawn::Wait));
        assert_eq!(Drawn::from_reply(-3), None);
    }

    #[test]
    fn tokens_that_would_break_the_hash_tag_are_unusable() {
        for token in ["abc", "a-b_c.d", "5f0c9e"] {
            assert!(is_usable_token(token), "{token}");
        }
        for token in ["", "a{b", "a}b", "a\nb", &"x".repeat(129)] {
            assert!(!is_usable_token(token), "{token:?}");
        }
    }
}

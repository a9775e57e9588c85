//! The job: the only thing that crosses the queue from the api to the
//! worker. Versioned JSON, so a worker can refuse (dead-letter) what it
//! does not understand instead of guessing.
//!
//! The job carries the number the client was given; nothing downstream
//! recomputes it. A job's [`Record`] is a chat or a message with its
//! number and body, or an edit of a message with its revision and new
//! body: a job that is none of these cannot be built, and a payload that
//! describes none of them does not decode.
//!
//! This module is the home of the record kinds: what a client asks to
//! create ([`Create`], a record without its number yet), the counter its
//! number is drawn from ([`Create::scope`], [`Job::scope`]) and its wire
//! form. A new kind is a variant of both enums and its arms here.
//!
//! How jobs travel in AMQP messages, one or a batch, is
//! `crate::amqp::batch`'s.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::counters::Scope;
use crate::trace::TraceParent;

/// The schema version this code writes and reads.
pub const VERSION: u32 = 1;

/// What a job stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Chat `number` of the application.
    Chat { number: i64 },
    /// Message `number` of chat `chat`; the body is never empty.
    Message {
        chat: i64,
        number: i64,
        body: String,
    },
    /// Revision `revision` of message `message` of chat `chat`: its new
    /// body, never empty. The chat-system keeps the body of the highest
    /// revision it has stored, whatever order they arrive in.
    Edit {
        chat: i64,
        message: i64,
        revision: i64,
        body: String,
    },
}

/// What a client asks to create: a record without its number yet. The
/// number is drawn from [`Create::scope`] and makes it a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    Chat,
    Message {
        chat: i64,
        body: String,
    },
    /// A new body for message `message` of chat `chat`; the number drawn
    /// is its revision.
    Edit {
        chat: i64,
        message: i64,
        body: String,
    },
}

impl Create {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Chat => Kind::Chat,
            Self::Message { .. } => Kind::Message,
            Self::Edit { .. } => Kind::Edit,
        }
    }

    /// The counter its number is drawn from.
    pub fn scope<'a>(&self, token: &'a str) -> Scope<'a> {
        match *self {
            Self::Chat => Scope::Chats { token },
            Self::Message { chat, .. } => Scope::Messages { token, chat },
            Self::Edit { chat, message, .. } => Scope::Revisions {
                token,
                chat,
                message,
            },
        }
    }

    /// The record, with the number drawn for it.
    pub fn numbered(self, number: i64) -> Record {
        match self {
            Self::Chat => Record::Chat { number },
            Self::Message { chat, body } => Record::Message { chat, number, body },
            Self::Edit {
                chat,
                message,
                body,
            } => Record::Edit {
                chat,
                message,
                revision: number,
                body,
            },
        }
    }

    /// What an `Idempotency-Key`'s fingerprint is taken of: the same for
    /// the same request, whichever form (path or JSON body) it came in.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Chat => "chat".to_owned(),
            Self::Message { chat, body } => format!("message\n{chat}\n{body}"),
            Self::Edit {
                chat,
                message,
                body,
            } => format!("edit\n{chat}\n{message}\n{body}"),
        }
    }
}

/// A record's kind, for metrics, logs and filters (`"chat"`, `"message"`,
/// `"edit"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Chat,
    Message,
    Edit,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Message => "message",
            Self::Edit => "edit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique per job; travels through every log line about it.
    pub id: Uuid,
    pub token: String,
    pub record: Record,
    /// When the api accepted the record, in milliseconds since the epoch.
    pub created_at_ms: u64,
    /// How many times storing it has failed so far.
    pub attempt: u32,
    /// The trace of the request that created it (absent in jobs queued
    /// before traces were carried).
    pub trace: Option<TraceParent>,
}

/// Why bytes from the queue are not a job this code can run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("payload is not a job")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported job version {0}, this worker reads {VERSION}")]
    Version(u32),
    #[error("invalid job: {0}")]
    Invalid(&'static str),
}

impl Job {
    pub fn new(token: String, record: Record, trace: Option<TraceParent>) -> Self {
        let created_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self {
            id: Uuid::now_v7(),
            token,
            record,
            created_at_ms,
            attempt: 0,
            trace,
        }
    }

    pub fn chat(token: String, number: i64) -> Self {
        Self::new(token, Record::Chat { number }, None)
    }

    pub fn message(token: String, chat: i64, number: i64, body: String) -> Self {
        Self::new(token, Record::Message { chat, number, body }, None)
    }

    pub fn edit(token: String, chat: i64, message: i64, revision: i64, body: String) -> Self {
        let record = Record::Edit {
            chat,
            message,
            revision,
            body,
        };
        Self::new(token, record, None)
    }

    pub fn kind(&self) -> Kind {
        match self.record {
            Record::Chat { .. } => Kind::Chat,
            Record::Message { .. } => Kind::Message,
            Record::Edit { .. } => Kind::Edit,
        }
    }

    /// The chat: the record itself, or the message's chat.
    pub fn chat_number(&self) -> i64 {
        match self.record {
            Record::Chat { number }
            | Record::Message { chat: number, .. }
            | Record::Edit { chat: number, .. } => number,
        }
    }

    /// The number the client was given: a chat's or a message's number,
    /// an edit's revision.
    pub fn number(&self) -> i64 {
        match self.record {
            Record::Chat { number }
            | Record::Message { number, .. }
            | Record::Edit {
                revision: number, ..
            } => number,
        }
    }

    /// The counter this job's number was drawn from.
    pub fn scope(&self) -> Scope<'_> {
        let token = &self.token;
        match self.record {
            Record::Chat { .. } => Scope::Chats { token },
            Record::Message { chat, .. } => Scope::Messages { token, chat },
            Record::Edit { chat, message, .. } => Scope::Revisions {
                token,
                chat,
                message,
            },
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.wire()).expect("a job always serializes: plain fields")
    }

    /// Parses and checks a payload: right version, the fields of its kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, JobError> {
        serde_json::from_slice::<Wire<String>>(bytes)?.try_into()
    }

    fn wire(&self) -> Wire<&str> {
        let (message_number, revision, body) = match &self.record {
            Record::Chat { .. } => (None, None, None),
            Record::Message { number, body, .. } => (Some(*number), None, Some(body.as_str())),
            Record::Edit {
                message,
                revision,
                body,
                ..
            } => (Some(*message), Some(*revision), Some(body.as_str())),
        };
        Wire {
            v: VERSION,
            id: self.id,
            kind: self.kind(),
            token: &self.token,
            chat_number: self.chat_number(),
            message_number,
            revision,
            body,
            created_at_ms: self.created_at_ms,
            attempt: self.attempt,
            traceparent: self.trace,
        }
    }
}

/// The JSON shape of a job, unchanged since version 1 but for the optional
/// `traceparent` and the kind `edit`: `kind`, then `message_number` and
/// `body` for a message; for an edit those of the message edited and its
/// `revision`. Chats and messages are written as before edits existed.
#[derive(Serialize, Deserialize)]
struct Wire<S> {
    v: u32,
    id: Uuid,
    kind: Kind,
    token: S,
    chat_number: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_number: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<S>,
    created_at_ms: u64,
    attempt: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_trace"
    )]
    traceparent: Option<TraceParent>,
}

/// A trace is metadata: one that does not parse is dropped, never a
/// reason to refuse the record it came with.
fn lenient_trace<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TraceParent>, D::Error> {
    let text = Option::<std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    Ok(text.as_deref().and_then(TraceParent::parse))
}

impl TryFrom<Wire<String>> for Job {
    type Error = JobError;

    fn try_from(wire: Wire<String>) -> Result<Self, JobError> {
        if wire.v != VERSION {
            return Err(JobError::Version(wire.v));
        }
        if wire.token.is_empty() {
            return Err(JobError::Invalid("empty token"));
        }
        if wire.chat_number <= 0 {
            return Err(JobError::Invalid("chat number must be positive"));
        }
        let record = match (wire.kind, wire.message_number, wire.revision, wire.body) {
            (Kind::Chat, None, None, None) => Record::Chat {
                number: wire.chat_number,
            },
            (Kind::Chat, ..) => {
                return Err(JobError::Invalid(
                    "a chat job has no message number, revision or body",
                ));
            }
            (Kind::Message, Some(number), None, Some(body)) if number > 0 && !body.is_empty() => {
                Record::Message {
                    chat: wire.chat_number,
                    number,
                    body,
                }
            }
            (Kind::Message, ..) => {
                return Err(JobError::Invalid(
                    "a message job needs a positive number and a body, and no revision",
                ));
            }
            (Kind::Edit, Some(message), Some(revision), Some(body))
                if message > 0 && revision > 0 && !body.is_empty() =>
            {
                Record::Edit {
                    chat: wire.chat_number,
                    message,
                    revision,
                    body,
                }
            }
            (Kind::Edit, ..) => {
                return Err(JobError::Invalid(
                    "an edit job needs a positive message number and revision, and a body",
                ));
            }
        };
        Ok(Self {
            id: wire.id,
            token: wire.token,
            record,
            created_at_ms: wire.created_at_ms,
            attempt: wire.attempt,
            trace: wire.traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_round_trip_byte_for_byte() {
        let body = "commas, \"quotes\", slashes / \\ and 你好 🎉\n".to_owned();
        let mut job = Job::message("tok".into(), 3, 7, body.clone());
        job.trace = Some(TraceParent::root());

        let decoded = Job::decode(&job.encode()).expect("decodes");

        assert_eq!(decoded, job);
        assert!(matches!(decoded.record, Record::Message { body: b, .. } if b == body));
    }

    /// Jobs queued (and dead letters kept) by the code before the record
    /// enum, byte for byte as it wrote them, still decode.
    #[test]
    fn jobs_in_the_version_1_format_decode() {
        let chat = br#"{"v":1,"id":"019ad0a5-7f3e-7c52-9a5e-0f5d2b9b7a11","kind":"chat","token":"5f0c9e","chat_number":3,"created_at_ms":1764428400000,"attempt":0}"#;
        let message = br#"{"v":1,"id":"019ad0a5-7f3e-7c52-9a5e-0f5d2b9b7a12","kind":"message","token":"5f0c9e","chat_number":3,"message_number":9,"body":"hello, world","created_at_ms":1764428400001,"attempt":2}"#;

        let chat = Job::decode(chat).expect("a chat job");
        let message = Job::decode(message).expect("a message job");

        assert_eq!(chat.record, Record::Chat { number: 3 });
        assert_eq!((chat.token.as_str(), chat.attempt), ("5f0c9e", 0));
        assert_eq!(chat.trace, None);
        assert_eq!(
            message.record,
            Record::Message {
                chat: 3,
                number: 9,
                body: "hello, world".into()
            }
        );
        assert_eq!((message.attempt, message.created_at_ms), (2, 1764428400001));
    }

    #[test]
    fn a_malformed_trace_is_dropped_not_the_job() {
        let mut value: serde_json::Value =
            serde_json::from_slice(&Job::chat("t".into(), 1).encode()).unwrap();
        value["traceparent"] = "not a trace".into();

        let job = Job::decode(&serde_json::to_vec(&value).unwrap()).expect("still a job");

        assert_eq!(job.trace, None);
    }

    #[test]
    fn the_wire_format_is_the_version_1_format() {
        let chat: serde_json::Value =
            serde_json::from_slice(&Job::chat("t".into(), 1).encode()).unwrap();
        assert_eq!(chat["kind"], "chat");
        assert_eq!(chat["chat_number"], 1);
        assert!(chat.get("message_number").is_none());
        assert!(chat.get("body").is_none());
        assert!(chat.get("traceparent").is_none());
        assert_eq!(chat["v"], 1);
        assert_eq!(chat["attempt"], 0);

        let message: serde_json::Value =
            serde_json::from_slice(&Job::message("t".into(), 2, 5, "b".into()).encode()).unwrap();
        assert_eq!(message["kind"], "message");
        assert_eq!(message["chat_number"], 2);
        assert_eq!(message["message_number"], 5);
        assert_eq!(message["body"], "b");
        assert!(message.get("revision").is_none());
    }

    #[test]
    fn an_edit_names_its_message_and_revision() {
        let mut edit = Job::edit("t".into(), 2, 5, 3, "new, \"text\"".into());
        edit.trace = Some(TraceParent::root());
        let wire: serde_json::Value = serde_json::from_slice(&edit.encode()).unwrap();
        assert_eq!(wire["kind"], "edit");
        assert_eq!(wire["chat_number"], 2);
        assert_eq!(wire["message_number"], 5);
        assert_eq!(wire["revision"], 3);
        assert_eq!(wire["body"], "new, \"text\"");

        assert_eq!(Job::decode(&edit.encode()).unwrap(), edit);
        assert_eq!(edit.number(), 3, "an edit's number is its revision");
        assert_eq!(
            edit.scope(),
            Scope::Revisions {
                token: "t",
                chat: 2,
                message: 5
            }
        );
    }

    #[test]
    fn a_create_numbered_is_the_record_of_its_scope() {
        let creates = [
            Create::Chat,
            Create::Message {
                chat: 4,
                body: "b".into(),
            },
            Create::Edit {
                chat: 4,
                message: 2,
                body: "c".into(),
            },
        ];
        for create in creates {
            let scope = create.scope("t");
            let kind = create.kind();
            let job = Job::new("t".into(), create.numbered(9), None);
            assert_eq!(job.scope(), scope);
            assert_eq!(job.kind(), kind);
            assert_eq!(job.number(), 9);
        }
    }

    #[test]
    fn payloads_that_are_not_valid_jobs_are_refused() {
        let chat = serde_json::from_slice::<serde_json::Value>(&Job::chat("t".into(), 1).encode())
            .unwrap();
        let with = |edit: fn(&mut serde_json::Value)| {
            let mut value = chat.clone();
            edit(&mut value);
            serde_json::to_vec(&value).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not JSON", b"nope".to_vec()),
            ("future version", with(|v| v["v"] = 2.into())),
            ("zero chat", with(|v| v["chat_number"] = 0.into())),
            ("empty token", with(|v| v["token"] = "".into())),
            ("chat with body", with(|v| v["body"] = "x".into())),
            ("chat with number", with(|v| v["message_number"] = 1.into())),
            (
                "message without body",
                with(|v| {
                    v["kind"] = "message".into();
                    v["message_number"] = 1.into();
                }),
            ),
            (
                "message with empty body",
                with(|v| {
                    v["kind"] = "message".into();
                    v["message_number"] = 1.into();
                    v["body"] = "".into();
                }),
            ),
            (
                "message without number",
                with(|v| {
                    v["kind"] = "message".into();
                    v["body"] = "x".into();
                }),
            ),
            ("chat with revision", with(|v| v["revision"] = 1.into())),
            (
                "message with revision",
                with(|v| {
                    v["kind"] = "message".into();
                    v["message_number"] = 1.into();
                    v["body"] = "x".into();
                    v["revision"] = 1.into();
                }),
            ),
            (
                "edit without revision",
                with(|v| {
                    v["kind"] = "edit".into();
                    v["message_number"] = 1.into();
                    v["body"] = "x".into();
                }),
            ),
            (
                "edit of revision 0",
                with(|v| {
                    v["kind"] = "edit".into();
                    v["message_number"] = 1.into();
                    v["body"] = "x".into();
                    v["revision"] = 0.into();
                }),
            ),
            (
                "edit with empty body",
                with(|v| {
                    v["kind"] = "edit".into();
                    v["message_number"] = 1.into();
                    v["body"] = "".into();
                    v["revision"] = 1.into();
                }),
            ),
            ("unknown kind", with(|v| v["kind"] = "thread".into())),
        ];
        for (case, payload) in cases {
            assert!(Job::decode(&payload).is_err(), "{case}");
        }
    }
}

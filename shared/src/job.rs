//! The job: the only thing that crosses the queue from the api to the
//! worker. Versioned JSON, so a worker can refuse (dead-letter) what it
//! does not understand instead of guessing.
//!
//! The job carries the number the client was given; nothing downstream
//! recomputes it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::counters::Scope;

/// The schema version this code writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Chat,
    Message,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Message => "message",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Schema version, [`VERSION`].
    pub v: u32,
    /// Unique per job; travels through every log line about it.
    pub id: Uuid,
    pub kind: Kind,
    pub token: String,
    pub chat_number: i64,
    /// Present exactly when `kind` is `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_number: Option<i64>,
    /// Present exactly when `kind` is `message`; never empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When the api accepted the record, in milliseconds since the epoch.
    pub created_at_ms: u64,
    /// How many times persisting it has failed so far.
    pub attempt: u32,
}

/// Why bytes from the queue are not a job this code can run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("payload is not a job: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported job version {0}, this worker reads {VERSION}")]
    Version(u32),
    #[error("invalid job: {0}")]
    Invalid(&'static str),
}

impl Job {
    pub fn chat(token: String, chat_number: i64) -> Self {
        Self::new(Kind::Chat, token, chat_number, None, None)
    }

    pub fn message(token: String, chat_number: i64, message_number: i64, body: String) -> Self {
        Self::new(
            Kind::Message,
            token,
            chat_number,
            Some(message_number),
            Some(body),
        )
    }

    fn new(
        kind: Kind,
        token: String,
        chat_number: i64,
        message_number: Option<i64>,
        body: Option<String>,
    ) -> Self {
        let created_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Self {
            v: VERSION,
            id: Uuid::now_v7(),
            kind,
            token,
            chat_number,
            message_number,
            body,
            created_at_ms,
            attempt: 0,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes: plain fields, string keys")
    }

    /// Parses and checks a payload: right version, the fields of its kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, JobError> {
        let job: Self = serde_json::from_slice(bytes)?;
        if job.v != VERSION {
            return Err(JobError::Version(job.v));
        }
        if job.token.is_empty() {
            return Err(JobError::Invalid("empty token"));
        }
        if job.chat_number <= 0 {
            return Err(JobError::Invalid("chat number must be positive"));
        }
        match (job.kind, job.message_number, job.body.as_deref()) {
            (Kind::Chat, None, None) => Ok(job),
            (Kind::Chat, _, _) => Err(JobError::Invalid(
                "a chat job has no message number or body",
            )),
            (Kind::Message, Some(number), Some(body)) if number > 0 && !body.is_empty() => Ok(job),
            (Kind::Message, _, _) => Err(JobError::Invalid(
                "a message job needs a positive number and a body",
            )),
        }
    }

    /// The counter this job's number was drawn from.
    pub fn scope(&self) -> Scope<'_> {
        match self.kind {
            Kind::Chat => Scope::Chats { token: &self.token },
            Kind::Message => Scope::Messages {
                token: &self.token,
                chat: self.chat_number,
            },
        }
    }

    /// The number the client was given.
    pub fn number(&self) -> i64 {
        self.message_number.unwrap_or(self.chat_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_round_trip_byte_for_byte() {
        let body = "commas, \"quotes\", slashes / \\ and 你好 🎉\n".to_owned();
        let job = Job::message("tok".into(), 3, 7, body.clone());

        let decoded = Job::decode(&job.encode()).expect("decodes");

        assert_eq!(decoded, job);
        assert_eq!(decoded.body.as_deref(), Some(body.as_str()));
    }

    #[test]
    fn a_chat_job_has_no_message_fields_on_the_wire() {
        let json: serde_json::Value =
            serde_json::from_slice(&Job::chat("t".into(), 1).encode()).unwrap();

        assert_eq!(json["kind"], "chat");
        assert!(json.get("message_number").is_none());
        assert!(json.get("body").is_none());
        assert_eq!(json["v"], 1);
        assert_eq!(json["attempt"], 0);
    }

    #[test]
    fn payloads_that_are_not_valid_jobs_are_refused() {
        let chat = Job::chat("t".into(), 1);
        let with = |edit: fn(&mut serde_json::Value)| {
            let mut value = serde_json::to_value(&chat).unwrap();
            edit(&mut value);
            serde_json::to_vec(&value).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not JSON", b"nope".to_vec()),
            ("future version", with(|v| v["v"] = 2.into())),
            ("zero chat", with(|v| v["chat_number"] = 0.into())),
            ("empty token", with(|v| v["token"] = "".into())),
            ("chat with body", with(|v| v["body"] = "x".into())),
            (
                "message without body",
                with(|v| {
                    v["kind"] = "message".into();
                    v["message_number"] = 1.into();
                }),
            ),
            ("unknown kind", with(|v| v["kind"] = "thread".into())),
        ];
        for (case, payload) in cases {
            assert!(Job::decode(&payload).is_err(), "{case}");
        }
    }
}

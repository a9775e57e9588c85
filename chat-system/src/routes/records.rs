//! `POST /records`: many chats, messages and edits, of any applications, stored
//! at once (the worker's write), with a result per record that means what
//! the single `PUT`'s status means.
//!
//! A record that is not valid is answered `400` on its own and the others
//! are stored. An error of the whole request (a malformed body, the
//! database unreachable) answers the request as a single write would.

use serde::{Deserialize, Serialize};
use shared::trace::TraceParent;
use tracing::Span;
use warp::Reply;
use warp::reply::Response;

use super::input::{body_error, check_body};
use super::reply::answer;
use crate::database::Outcome;
use crate::error::{HttpError, Missing, StoreError};
use crate::store::Store;
use crate::writes::NewRecord;

/// More records than this in one request is refused (413): the worker
/// sends far fewer, and one transaction should stay short.
pub(crate) const MAX_RECORDS: usize = 5000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Request {
    records: Vec<Record>,
}

/// One record of the request, as the worker sends it. `job_id` and
/// `traceparent` only go to its span (log lines, exported spans).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Record {
    Chat {
        token: String,
        #[serde(deserialize_with = "integer")]
        number: i64,
        #[serde(default)]
        job_id: Option<String>,
        #[serde(default)]
        traceparent: Option<String>,
    },
    Message {
        token: String,
        #[serde(deserialize_with = "integer")]
        chat: i64,
        #[serde(deserialize_with = "integer")]
        number: i64,
        body: String,
        #[serde(default)]
        job_id: Option<String>,
        #[serde(default)]
        traceparent: Option<String>,
    },
    /// A new body for message `message`, as its revision `revision`.
    Edit {
        token: String,
        #[serde(deserialize_with = "integer")]
        chat: i64,
        #[serde(deserialize_with = "integer")]
        message: i64,
        #[serde(deserialize_with = "integer")]
        revision: i64,
        body: String,
        #[serde(default)]
        job_id: Option<String>,
        #[serde(default)]
        traceparent: Option<String>,
    },
}

/// A JSON integer, also written with a zero fraction (`130.0`), which
/// JSON Schema's `integer` allows.
fn integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(integer) = number.as_i64() {
        return Ok(integer);
    }
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() < 9.2e18 => Ok(float as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a 64-bit integer"
        ))),
    }
}

#[derive(Debug, Serialize)]
struct Answer {
    results: Vec<RecordResult>,
}

/// A record's result: `status` as its single `PUT` would answer it, and
/// `result` in words (`created`, `exists`, `superseded`, `conflict`,
/// `unknown_application`, `unknown_chat`, `unknown_message`, `invalid`).
#[derive(Debug, Serialize)]
struct RecordResult {
    status: u16,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl RecordResult {
    fn stored(outcome: Outcome) -> Self {
        let (status, result) = match outcome {
            Outcome::Created => (201, "created"),
            Outcome::AlreadyThere => (200, "exists"),
            Outcome::Superseded => (200, "superseded"),
        };
        Self {
            status,
            result,
            error: None,
        }
    }

    fn failed(error: &StoreError) -> Self {
        let result = match error {
            StoreError::NotFound(Missing::Application) => "unknown_application",
            StoreError::NotFound(Missing::Chat) => "unknown_chat",
            StoreError::NotFound(Missing::Message) => "unknown_message",
            StoreError::Conflict { .. } | StoreError::RevisionConflict { .. } => "conflict",
            _ => "invalid",
        };
        Self {
            status: error.status().as_u16(),
            result,
            error: Some(error.to_string()),
        }
    }

    fn invalid(reason: String) -> Self {
        Self {
            status: 400,
            result: "invalid",
            error: Some(reason),
        }
    }
}

impl Record {
    /// The record to store, or why it cannot be one. A token PostgreSQL
    /// cannot hold (a NUL) names no application, as in the single `PUT`s.
    fn check(self) -> Result<NewRecord, RecordResult> {
        let positive = |value: i64, what: &str| {
            if shared::http::is_valid_number(value) {
                Ok(value)
            } else {
                Err(RecordResult::invalid(format!(
                    "{what} must be a positive integer"
                )))
            }
        };
        let unknown = || RecordResult::failed(&StoreError::NotFound(Missing::Application));
        match self {
            Record::Chat { token, number, .. } => {
                let number = positive(number, "chat number")?;
                if token.is_empty() || token.contains('\0') {
                    return Err(unknown());
                }
                Ok(NewRecord::Chat { token, number })
            }
            Record::Message {
                token,
                chat,
                number,
                body,
                ..
            } => {
                let chat = positive(chat, "chat number")?;
                let number = positive(number, "message number")?;
                check_body(&body).map_err(RecordResult::invalid)?;
                if token.is_empty() || token.contains('\0') {
                    return Err(unknown());
                }
                Ok(NewRecord::Message {
                    token,
                    chat,
                    number,
                    body,
                })
            }
            Record::Edit {
                token,
                chat,
                message,
                revision,
                body,
                ..
            } => {
                let chat = positive(chat, "chat number")?;
                let message = positive(message, "message number")?;
                let revision = positive(revision, "revision")?;
                check_body(&body).map_err(RecordResult::invalid)?;
                if token.is_empty() || token.contains('\0') {
                    return Err(unknown());
                }
                Ok(NewRecord::Edit {
                    token,
                    chat,
                    message,
                    revision,
                    body,
                })
            }
        }
    }

    /// The span of this record: its job and trace, as the worker sent
    /// them; with spans exported, a child of the worker's span for the job.
    /// None (no cost per record) unless spans are exported or its debug
    /// line is logged.
    fn span(&self) -> Span {
        if !shared::telemetry::exporting() && !tracing::enabled!(tracing::Level::DEBUG) {
            return Span::none();
        }
        let (Record::Chat {
            job_id,
            traceparent,
            ..
        }
        | Record::Message {
            job_id,
            traceparent,
            ..
        }
        | Record::Edit {
            job_id,
            traceparent,
            ..
        }) = self;
        let span = tracing::info_span!(
            "record",
            job_id = job_id.as_deref(),
            trace_id = tracing::field::Empty,
        );
        if let Some(incoming) = traceparent.as_deref().and_then(TraceParent::parse) {
            shared::telemetry::hop(&span, Some(incoming));
        }
        span
    }
}

pub(crate) async fn store_records(
    body: Result<Request, shared::http::BodyError>,
    store: Store,
) -> Response {
    answer(
        async {
            let records = body.map_err(body_error)?.records;
            if records.len() > MAX_RECORDS {
                return Ok(shared::http::error(
                    warp::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!("at most {MAX_RECORDS} records per request"),
                ));
            }
            let spans: Vec<Span> = records.iter().map(Record::span).collect();
            let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(records.len());
            let mut valid = Vec::with_capacity(records.len());
            let mut positions = Vec::with_capacity(records.len());
            for (index, record) in records.into_iter().enumerate() {
                match record.check() {
                    Ok(record) => {
                        valid.push(record);
                        positions.push(index);
                        results.push(None);
                    }
                    Err(invalid) => results.push(Some(invalid)),
                }
            }
            let stored = store.store(valid).await.map_err(HttpError::Store)?;
            for (index, stored) in positions.into_iter().zip(stored) {
                results[index] = Some(match stored {
                    Ok(outcome) => RecordResult::stored(outcome),
                    Err(error) => RecordResult::failed(&error),
                });
            }
            let results: Vec<RecordResult> = results
                .into_iter()
                .map(|result| result.expect("every record got a result"))
                .collect();
            for (result, span) in results.iter().zip(spans) {
                span.in_scope(|| {
                    tracing::debug!(
                        status = result.status,
                        result = result.result,
                        "record written"
                    );
                });
            }
            Ok(warp::reply::json(&Answer { results }).into_response())
        }
        .await,
    )
}

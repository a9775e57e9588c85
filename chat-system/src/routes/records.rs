//! `POST /records`: many chats, messages and edits, of any applications, stored
//! at once (the worker's write), with a result per record that means what
//! the single `PUT`'s status means.
//!
//! A record that is not valid is answered `400` on its own and the others
//! are stored. An error of the whole request (a malformed body, the
//! database unreachable) answers the request as a single write would.

use shared::chat_system::{BulkAnswer, BulkRecord, BulkRequest, RecordResult, Written};
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

/// The body of `POST /records` (the contract's type, taken owned).
pub(crate) type Request = BulkRequest<String>;

/// One record of the request, as the worker sends it. `job_id` and
/// `traceparent` only go to its span (log lines, exported spans).
type Record = BulkRecord<String>;

/// A stored record's result.
fn stored(outcome: Outcome) -> RecordResult {
    let (status, result) = match outcome {
        Outcome::Created => (201, Written::Created),
        Outcome::AlreadyThere => (200, Written::Exists),
        Outcome::Superseded => (200, Written::Superseded),
    };
    RecordResult {
        status,
        result,
        error: None,
    }
}

/// The result of a record storage refused.
fn failed(error: &StoreError) -> RecordResult {
    let result = match error {
        StoreError::NotFound(Missing::Application) => Written::UnknownApplication,
        StoreError::NotFound(Missing::Chat) => Written::UnknownChat,
        StoreError::NotFound(Missing::Message) => Written::UnknownMessage,
        StoreError::Conflict { .. } | StoreError::RevisionConflict { .. } => Written::Conflict,
        _ => Written::Invalid,
    };
    RecordResult {
        status: error.status().as_u16(),
        result,
        error: Some(error.to_string()),
    }
}

/// The result of a record that is not valid.
fn invalid(reason: String) -> RecordResult {
    RecordResult {
        status: 400,
        result: Written::Invalid,
        error: Some(reason),
    }
}

/// The record to store, or why it cannot be one. A token PostgreSQL
/// cannot hold (a NUL) names no application, as in the single `PUT`s.
fn check(record: Record) -> Result<NewRecord, RecordResult> {
    let positive = |value: i64, what: &str| {
        if shared::http::is_valid_number(value) {
            Ok(value)
        } else {
            Err(invalid(format!("{what} must be a positive integer")))
        }
    };
    let unknown = || failed(&StoreError::NotFound(Missing::Application));
    match record {
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
            check_body(&body).map_err(invalid)?;
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
            check_body(&body).map_err(invalid)?;
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

/// The span of `record`: its job and trace, as the worker sent them; with
/// spans exported, a child of the worker's span for the job. None (no cost
/// per record) unless spans are exported or its debug line is logged.
fn span(record: &Record) -> Span {
    if !shared::telemetry::exporting() && !tracing::enabled!(tracing::Level::DEBUG) {
        return Span::none();
    }
    let (job_id, traceparent) = record.trace();
    let span = tracing::info_span!(
        "record",
        job_id = job_id.map(String::as_str),
        trace_id = tracing::field::Empty,
    );
    if let Some(incoming) = traceparent.and_then(|header| TraceParent::parse(header)) {
        shared::telemetry::hop(&span, Some(incoming));
    }
    span
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
            let spans: Vec<Span> = records.iter().map(span).collect();
            let mut results: Vec<Option<RecordResult>> = Vec::with_capacity(records.len());
            let mut valid = Vec::with_capacity(records.len());
            let mut positions = Vec::with_capacity(records.len());
            for (index, record) in records.into_iter().enumerate() {
                match check(record) {
                    Ok(record) => {
                        valid.push(record);
                        positions.push(index);
                        results.push(None);
                    }
                    Err(invalid) => results.push(Some(invalid)),
                }
            }
            let written = store.store(valid).await.map_err(HttpError::Store)?;
            for (index, written) in positions.into_iter().zip(written) {
                results[index] = Some(match written {
                    Ok(outcome) => stored(outcome),
                    Err(error) => failed(&error),
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
                        result = result.result.as_str(),
                        "record written"
                    );
                });
            }
            Ok(warp::reply::json(&BulkAnswer { results }).into_response())
        }
        .await,
    )
}

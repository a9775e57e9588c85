//! The HTTP contract (`docs/chat-system.openapi.yaml`): parses and checks
//! every input, calls `store`, and shapes the answer. `records` holds the
//! bulk write, `POST /records`.
//!
//! Handlers never reject: bad input is answered here with a 4xx, so warp
//! does not go on to try other routes and report a misleading 405. Only
//! warp's own rejections (no such route, wrong method, oversized body) reach
//! `shared::http::recover`.

use std::collections::HashMap;
use std::convert::Infallible;

use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use shared::http::{BodyError, decode_segment, json_body, json_with_status, positive_number};
use shared::trace::TraceParent;
use tracing::{Instrument, Span};

use std::sync::Arc;

use warp::http::HeaderValue;

use crate::auth::{Access, Auth};
use crate::error::{HttpError, Missing, StoreError};
use crate::records::NewRecord;
use crate::store::{Outcome, Store};

mod records;

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
const MAX_NAME_CHARS: usize = 255;

/// The limits the routes enforce, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest request body; `/readyz` tells it, so callers can check that
    /// what they send fits.
    pub(crate) max_body_bytes: u64,
    /// Most words in a search query.
    pub(crate) search_max_terms: usize,
}

/// Every route of the service, errors included.
pub(crate) fn routes(
    store: Store,
    limits: Limits,
    auth: Arc<Auth>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let max_body_bytes = limits.max_body_bytes;
    let limits = warp::any().map(move || limits);
    let store = warp::any().map(move || store.clone());
    let query = warp::query::<HashMap<String, String>>();
    let auth = warp::any().map(move || auth.clone());
    // The credential a write or admin route needs, checked before anything
    // else of the request.
    let needs = move |access: Access| {
        warp::header::optional::<String>("authorization")
            .or(warp::any().map(|| None))
            .unify()
            .and(auth.clone())
            .map(move |header: Option<String>, auth: Arc<Auth>| {
                let header = header.and_then(|value| HeaderValue::from_str(&value).ok());
                auth.check(access, header.as_ref())
            })
    };

    let create_application = warp::path!("applications")
        .and(warp::post())
        .and(needs(Access::Admin))
        .and(json_body::<NewApplication>(max_body_bytes))
        .and(store.clone())
        .then(|allowed, body, store| guarded(allowed, create_application(body, store)));
    let get_application = warp::path!("applications" / String)
        .and(warp::get())
        .and(store.clone())
        .then(get_application);
    let list_chats = warp::path!("applications" / String / "chats")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .then(list_chats);
    let put_chat = warp::path!("applications" / String / "chats" / String)
        .and(warp::put())
        .and(needs(Access::Write))
        .and(store.clone())
        .and(write_span())
        .then(|token, chat, allowed, store, span: Span| {
            guarded(allowed, put_chat(token, chat, store)).instrument(span)
        });
    let get_chat = warp::path!("applications" / String / "chats" / String)
        .and(warp::get())
        .and(store.clone())
        .then(get_chat);
    let list_messages = warp::path!("applications" / String / "chats" / String / "messages")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .then(list_messages);
    // Before `get_message`, whose `{m}` segment would otherwise take "search".
    let search = warp::path!("applications" / String / "chats" / String / "messages" / "search")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .and(limits)
        .then(search_messages);
    let put_message = warp::path!("applications" / String / "chats" / String / "messages" / String)
        .and(warp::put())
        .and(needs(Access::Write))
        .and(json_body::<NewMessage>(max_body_bytes))
        .and(store.clone())
        .and(write_span())
        .then(
            |token, chat, message: String, allowed, body, store, span: Span| async move {
                if message == "search" {
                    // The search path, which only has GET: 405 before any
                    // credential is asked for.
                    return shared::http::not_allowed("GET");
                }
                guarded(allowed, put_message(token, chat, message, body, store))
                    .instrument(span)
                    .await
            },
        );
    let store_records = warp::path!("records")
        .and(warp::post())
        .and(needs(Access::Write))
        .and(json_body::<records::Request>(max_body_bytes))
        .and(store.clone())
        .then(|allowed, body, store| guarded(allowed, records::store_records(body, store)));
    let get_message = warp::path!("applications" / String / "chats" / String / "messages" / String)
        .and(warp::get())
        .and(store.clone())
        .then(get_message);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(store)
        .and(limits)
        .then(readyz);

    shared::http::healthz()
        .or(readyz)
        .unify()
        .or(create_application)
        .unify()
        .or(get_application)
        .unify()
        .or(list_chats)
        .unify()
        .or(put_chat)
        .unify()
        .or(get_chat)
        .unify()
        .or(list_messages)
        .unify()
        .or(search)
        .unify()
        .or(put_message)
        .unify()
        .or(get_message)
        .unify()
        .or(store_records)
        .unify()
        .or(shared::http::method_not_allowed(allowed_methods))
        .unify()
        .recover(shared::http::recover)
        .unify()
}

/// The methods of each path of the contract, for 405's `Allow`.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["applications"] | ["records"] => Some("POST"),
        ["applications", _]
        | ["applications", _, "chats"]
        | ["applications", _, "chats", _, "messages"]
        | ["applications", _, "chats", _, "messages", "search"]
        | ["healthz" | "readyz"] => Some("GET"),
        ["applications", _, "chats", _] | ["applications", _, "chats", _, "messages", _] => {
            Some("GET, PUT")
        }
        _ => None,
    }
}

/// The span of a write: its log lines carry the trace id of the caller's
/// `traceparent` and the worker's `x-job-id`, so a record can be followed
/// here from the api's request. The path is left out: it holds the
/// application token.
fn write_span() -> impl Filter<Extract = (Span,), Error = Infallible> + Clone {
    let header = |name: &'static str| {
        warp::header::optional::<String>(name)
            .or(warp::any().map(|| None))
            .unify()
    };
    header(shared::amqp::headers::TRACEPARENT)
        .and(header("x-job-id"))
        .map(|traceparent: Option<String>, job_id: Option<String>| {
            let span = tracing::info_span!(
                "write",
                trace_id = tracing::field::Empty,
                job_id = tracing::field::Empty,
            );
            if let Some(incoming) = traceparent.as_deref().and_then(TraceParent::parse) {
                shared::telemetry::hop(&span, Some(incoming));
            }
            if let Some(job_id) = job_id {
                span.record("job_id", job_id);
            }
            span
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApplication {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    body: String,
}

fn answer(result: Result<Response, HttpError>) -> Response {
    result.unwrap_or_else(HttpError::into_response)
}

/// `handler`'s answer if the request carried the credential its route
/// needs; 401 otherwise, and the handler never runs.
async fn guarded(
    allowed: Result<(), HttpError>,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    match allowed {
        Ok(()) => handler.await,
        Err(error) => error.into_response(),
    }
}

/// A token that cannot exist (not UTF-8, or holding a NUL, which
/// PostgreSQL text cannot store) is simply unknown.
fn token(raw: &str) -> Result<String, HttpError> {
    decode_segment(raw)
        .filter(|token| !token.contains('\0'))
        .ok_or(HttpError::Store(StoreError::NotFound(Missing::Application)))
}

/// A message body PostgreSQL can store and a reader can see: not empty,
/// and no U+0000 (which PostgreSQL text cannot hold: refused here as bad
/// input rather than failing in the database).
fn check_body(body: &str) -> Result<(), String> {
    if body.is_empty() {
        return Err("body must not be empty".into());
    }
    if body.contains('\0') {
        return Err("body must not contain NUL characters".into());
    }
    Ok(())
}

fn number(raw: &str, what: &str) -> Result<i64, HttpError> {
    positive_number(raw)
        .ok_or_else(|| HttpError::BadRequest(format!("{what} must be a positive integer")))
}

/// `?after=N&limit=M`: numbers above `after` (default 0), at most `limit`
/// of them (default 100, at most 1000).
fn page(query: &HashMap<String, String>) -> Result<(i64, i64), HttpError> {
    let after = match query.get("after") {
        None => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|after| *after >= 0)
            .ok_or_else(|| HttpError::BadRequest("after must be a non-negative integer".into()))?,
    };
    Ok((after, limit(query)?))
}

fn limit(query: &HashMap<String, String>) -> Result<i64, HttpError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                HttpError::BadRequest(format!("limit must be an integer from 1 to {MAX_PAGE}"))
            }),
    }
}

fn body_error(error: BodyError) -> HttpError {
    match error {
        BodyError::UnsupportedMediaType => HttpError::UnsupportedMediaType,
        BodyError::Malformed(reason) => {
            HttpError::BadRequest(format!("request body is not valid JSON: {reason}"))
        }
    }
}

fn status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::AlreadyThere | Outcome::Superseded => StatusCode::OK,
    }
}

async fn create_application(body: Result<NewApplication, BodyError>, store: Store) -> Response {
    answer(
        async {
            let name = body.map_err(body_error)?.name;
            let name = name.trim();
            if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                return Err(HttpError::BadRequest(format!(
                    "name must be 1 to {MAX_NAME_CHARS} characters"
                )));
            }
            let application = store.create_application(name).await?;
            Ok(json_with_status(&application, StatusCode::CREATED))
        }
        .await,
    )
}

async fn get_application(token_raw: String, store: Store) -> Response {
    answer(
        async {
            let application = store.application(&token(&token_raw)?).await?;
            Ok(warp::reply::json(&application).into_response())
        }
        .await,
    )
}

async fn list_chats(token_raw: String, query: HashMap<String, String>, store: Store) -> Response {
    answer(
        async {
            let (after, limit) = page(&query)?;
            let page = store.chats(&token(&token_raw)?, after, limit).await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

async fn put_chat(token_raw: String, chat_raw: String, store: Store) -> Response {
    answer(
        async {
            let number = number(&chat_raw, "chat number")?;
            let token = token(&token_raw)?;
            let record = NewRecord::Chat {
                token: token.clone(),
                number,
            };
            let outcome = store_one(&store, record).await?;
            tracing::debug!(chat = number, ?outcome, "chat stored");
            let chat = store.chat(&token, number).await?;
            Ok(json_with_status(&chat, status(outcome)))
        }
        .await,
    )
}

/// Stores one record through the batch path: its result, or the batch's
/// error.
async fn store_one(store: &Store, record: NewRecord) -> Result<Outcome, HttpError> {
    let mut results = store.store(vec![record]).await?;
    Ok(results.pop().expect("one result per record")?)
}

async fn get_chat(token_raw: String, chat_raw: String, store: Store) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let chat = store.chat(&token(&token_raw)?, chat).await?;
            Ok(warp::reply::json(&chat).into_response())
        }
        .await,
    )
}

async fn list_messages(
    token_raw: String,
    chat_raw: String,
    query: HashMap<String, String>,
    store: Store,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let (after, limit) = page(&query)?;
            let page = store
                .messages(&token(&token_raw)?, chat, after, limit)
                .await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

async fn search_messages(
    token_raw: String,
    chat_raw: String,
    query: HashMap<String, String>,
    store: Store,
    limits: Limits,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let text = query.get("q").map(|q| q.trim()).unwrap_or_default();
            if text.is_empty() {
                return Err(HttpError::BadRequest(
                    "q must be a non-empty search query".into(),
                ));
            }
            if text.contains('\0') {
                return Err(HttpError::BadRequest(
                    "q must not contain NUL characters".into(),
                ));
            }
            if text.split_whitespace().count() > limits.search_max_terms {
                return Err(HttpError::BadRequest(format!(
                    "q must have at most {} words",
                    limits.search_max_terms
                )));
            }
            let hits = store
                .search(&token(&token_raw)?, chat, text, limit(&query)?)
                .await?;
            Ok(warp::reply::json(&serde_json::json!({ "items": hits })).into_response())
        }
        .await,
    )
}

async fn put_message(
    token_raw: String,
    chat_raw: String,
    message_raw: String,
    body: Result<NewMessage, BodyError>,
    store: Store,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let message = number(&message_raw, "message number")?;
            let body = body.map_err(body_error)?.body;
            check_body(&body).map_err(HttpError::BadRequest)?;
            let record = NewRecord::Message {
                token: token(&token_raw)?,
                chat,
                number: message,
                body: body.clone(),
            };
            let outcome = store_one(&store, record).await?;
            tracing::debug!(chat, message, ?outcome, "message stored");
            /// What was written: the message as created (its reads show
            /// its current revision).
            #[derive(serde::Serialize)]
            struct Written {
                number: i64,
                body: String,
            }
            let written = Written {
                number: message,
                body,
            };
            Ok(json_with_status(&written, status(outcome)))
        }
        .await,
    )
}

async fn get_message(
    token_raw: String,
    chat_raw: String,
    message_raw: String,
    store: Store,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let message = number(&message_raw, "message number")?;
            let message = store.message(&token(&token_raw)?, chat, message).await?;
            Ok(warp::reply::json(&message).into_response())
        }
        .await,
    )
}

async fn readyz(store: Store, limits: Limits) -> Response {
    match store.ping().await {
        Ok(()) => warp::reply::json(&serde_json::json!({
            "status": "ready",
            "max_body_bytes": limits.max_body_bytes,
        }))
        .into_response(),
        Err(error) => shared::http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}"),
        ),
    }
}

//! The HTTP contract (`docs/api.openapi.yaml`), a drop-in for the old
//! client API plus a JSON-body form for long messages.
//!
//! Every input is checked here, before any number is drawn. Handlers never
//! reject: errors are answered as JSON by `ApiError`, and only warp's own
//! rejections (no route, wrong method, oversized body) reach
//! `shared::http::recover`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use shared::counters::is_usable_token;
use shared::http::{BodyError, decode_segment, json_body, positive_number};
use shared::job::{Create, Kind};
use shared::telemetry::short_token;
use shared::trace::TraceParent;
use tokio::time::Instant;
use tracing::{Instrument, Span};
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::error::ApiError;
use crate::idempotency::IdempotencyKey;
use crate::intake::Intake;
use crate::limits::MessageLimit;
use crate::numbers::NumberError;
use shared::chat_system::ChatSystem;

/// What the handlers share.
pub(crate) struct State {
    pub(crate) intake: Intake,
    pub(crate) chat_system: ChatSystem,
    pub(crate) max_message_bytes: usize,
    pub(crate) message_limit: Arc<MessageLimit>,
    pub(crate) metrics: PrometheusHandle,
}

pub(crate) fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // JSON escapes (`\u0000`) take up to six bytes per byte of text.
    let json_limit = state.max_message_bytes as u64 * 6 + 1024;
    let state = warp::any().map(move || state.clone());

    let create_chat = warp::path!("applications" / String / "chats")
        .and(warp::post())
        .and(traceparent())
        .and(idempotency_key())
        .and(state.clone())
        .then(
            |token: String,
             incoming: Option<TraceParent>,
             key: Option<HeaderValue>,
             state: Arc<State>| {
                let (span, trace) = request_span("create_chat", Kind::Chat, &token, incoming);
                observed("create_chat", create_chat(token, trace, key, state)).instrument(span)
            },
        );
    let create_message =
        warp::path!("applications" / String / "chats" / String / "messages" / String)
            .and(warp::post())
            .and(traceparent())
            .and(idempotency_key())
            .and(state.clone())
            .then(
                |token: String,
                 chat: String,
                 message: String,
                 incoming: Option<TraceParent>,
                 key: Option<HeaderValue>,
                 state: Arc<State>| {
                    let (span, trace) =
                        request_span("create_message", Kind::Message, &token, incoming);
                    let handler = create_message_in_path(token, chat, message, trace, key, state);
                    observed("create_message", handler).instrument(span)
                },
            );
    let create_message_json = warp::path!("applications" / String / "chats" / String / "messages")
        .and(warp::post())
        .and(traceparent())
        .and(idempotency_key())
        .and(json_body::<NewMessage>(json_limit))
        .and(state.clone())
        .then(
            |token: String,
             chat: String,
             incoming: Option<TraceParent>,
             key: Option<HeaderValue>,
             body: Result<NewMessage, BodyError>,
             state: Arc<State>| {
                let (span, trace) =
                    request_span("create_message_json", Kind::Message, &token, incoming);
                let handler = create_message_in_body(token, chat, body, trace, key, state);
                observed("create_message_json", handler).instrument(span)
            },
        );
    // `.../messages/search` is the search route's, which takes no `PUT`:
    // left to the 405 below.
    let edit_message =
        warp::path!("applications" / String / "chats" / String / "messages" / String)
            .and_then(|token: String, chat: String, message: String| async move {
                if message == "search" {
                    Err(warp::reject::not_found())
                } else {
                    Ok((token, chat, message))
                }
            })
            .untuple_one()
            .and(warp::put())
            .and(traceparent())
            .and(idempotency_key())
            .and(json_body::<NewMessage>(json_limit))
            .and(state.clone())
            .then(
                |token: String,
                 chat: String,
                 message: String,
                 incoming: Option<TraceParent>,
                 key: Option<HeaderValue>,
                 body: Result<NewMessage, BodyError>,
                 state: Arc<State>| {
                    let (span, trace) = request_span("edit_message", Kind::Edit, &token, incoming);
                    let handler = edit_message(token, chat, message, body, trace, key, state);
                    observed("edit_message", handler).instrument(span)
                },
            );
    let read = warp::path("applications")
        .and(warp::path::tail())
        .and(warp::get())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(state.clone())
        .then(
            |tail: warp::path::Tail, query: Option<String>, state: Arc<State>| {
                let tail = tail.as_str().to_owned();
                observed("read", async move {
                    crate::reads::read(tail, query, &state.chat_system).await
                })
            },
        );
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(state.clone())
        .then(readyz);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(state)
        .map(|state: Arc<State>| {
            let mut response = Response::new(state.metrics.render().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4"
                    .parse()
                    .expect("a valid header value"),
            );
            response
        });

    create_chat
        .or(create_message)
        .unify()
        .or(create_message_json)
        .unify()
        .or(edit_message)
        .unify()
        .or(read)
        .unify()
        .or(shared::http::healthz())
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(shared::http::method_not_allowed(allowed_methods))
        .unify()
        .recover(shared::http::recover)
        .unify()
}

/// The methods of each path of the contract, for 405's `Allow`.
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["applications", _, "chats"] | ["applications", _, "chats", _, "messages"] => {
            Some("GET, POST")
        }
        // `search` is a message's text too; a message number is edited.
        ["applications", _, "chats", _, "messages", "search"] => Some("GET, POST"),
        ["applications", _, "chats", _, "messages", _] => Some("GET, POST, PUT"),
        ["applications", _] | ["applications", _, "chats", _] => Some("GET"),
        ["healthz" | "readyz" | "metrics"] => Some("GET"),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    body: String,
}

/// The client's `traceparent`, if it sent one that parses (the standard
/// says to ignore one that does not); [`request_span`] continues it.
fn traceparent() -> impl Filter<Extract = (Option<TraceParent>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("traceparent")
        .or(warp::any().map(|| None))
        .unify()
        .map(|header: Option<String>| header.as_deref().and_then(TraceParent::parse))
}

/// The `Idempotency-Key` header as sent, checked by the handler (so a bad
/// one is a counted 400 like any bad input).
fn idempotency_key() -> impl Filter<Extract = (Option<HeaderValue>,), Error = Infallible> + Clone {
    warp::header::value("idempotency-key")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The span every log line of a create request is in, and the trace
/// context its job carries on: the client's continued by this request.
/// `job_id` and `number` are filled in once drawn; `attempt` is 0 here
/// (the worker's spans count the retries).
fn request_span(
    route: &'static str,
    kind: Kind,
    token: &str,
    incoming: Option<TraceParent>,
) -> (Span, TraceParent) {
    let span = tracing::info_span!(
        "request",
        route,
        trace_id = tracing::field::Empty,
        token = %short_token(token),
        kind = kind.as_str(),
        job_id = tracing::field::Empty,
        number = tracing::field::Empty,
        attempt = 0,
    );
    let trace = shared::telemetry::hop(&span, incoming);
    (span, trace)
}

/// Counts and times a request by route and status.
async fn observed(
    route: &'static str,
    handler: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let response = handler.await.unwrap_or_else(ApiError::into_response);
    let status = response.status();
    metrics::counter!("api_requests_total", "route" => route, "status" => status.as_str().to_owned()).increment(1);
    metrics::histogram!("api_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn create_chat(
    token: String,
    trace: TraceParent,
    key: Option<HeaderValue>,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    let token = parse_token(&token)?;
    let key = parse_key(key.as_ref())?;
    let number = state.intake.create(token, Create::Chat, trace, key).await?;
    Ok(number_reply("chat number", number))
}

async fn create_message_in_path(
    token: String,
    chat: String,
    message: String,
    trace: TraceParent,
    key: Option<HeaderValue>,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    let token = parse_token(&token)?;
    let chat = parse_chat(&chat)?;
    let key = parse_key(key.as_ref())?;
    let text = decode_segment(&message)
        .ok_or_else(|| ApiError::BadRequest("message is not valid UTF-8".into()))?;
    create_message(token, chat, text, trace, key, &state).await
}

async fn create_message_in_body(
    token: String,
    chat: String,
    body: Result<NewMessage, BodyError>,
    trace: TraceParent,
    key: Option<HeaderValue>,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    let token = parse_token(&token)?;
    let chat = parse_chat(&chat)?;
    let key = parse_key(key.as_ref())?;
    let text = message_text(body)?;
    create_message(token, chat, text, trace, key, &state).await
}

/// A new body for message `message`: its next revision, once queued.
async fn edit_message(
    token: String,
    chat: String,
    message: String,
    body: Result<NewMessage, BodyError>,
    trace: TraceParent,
    key: Option<HeaderValue>,
    state: Arc<State>,
) -> Result<Response, ApiError> {
    let token = parse_token(&token)?;
    let chat = parse_chat(&chat)?;
    let message = positive_number(&message)
        .ok_or_else(|| ApiError::BadRequest("message number must be a positive integer".into()))?;
    let key = parse_key(key.as_ref())?;
    let text = message_text(body)?;
    check_message(&text)?;
    state.message_limit.check(&text)?;
    let edit = Create::Edit {
        chat,
        message,
        body: text,
    };
    let revision = state.intake.create(token, edit, trace, key).await?;
    Ok(json_reply(format!(
        "{{\"message number\":{message},\"revision\":{revision}}}"
    )))
}

/// The text of a `{"body": "..."}` request.
fn message_text(body: Result<NewMessage, BodyError>) -> Result<String, ApiError> {
    match body {
        Ok(message) => Ok(message.body),
        Err(BodyError::UnsupportedMediaType) => Err(ApiError::UnsupportedMediaType),
        Err(BodyError::Malformed(reason)) => Err(ApiError::BadRequest(format!(
            "body must be JSON {{\"body\": \"...\"}}: {reason}"
        ))),
    }
}

async fn create_message(
    token: String,
    chat: i64,
    text: String,
    trace: TraceParent,
    key: Option<IdempotencyKey>,
    state: &State,
) -> Result<Response, ApiError> {
    check_message(&text)?;
    state.message_limit.check(&text)?;
    let create = Create::Message { chat, body: text };
    let number = state.intake.create(token, create, trace, key).await?;
    Ok(number_reply("message number", number))
}

fn parse_key(key: Option<&HeaderValue>) -> Result<Option<IdempotencyKey>, ApiError> {
    key.map(|key| IdempotencyKey::parse(key.as_bytes()))
        .transpose()
}

/// A token that could not be stored (not UTF-8, braces that would break
/// the Redis hash tag, control characters, too long) is unknown, without
/// asking Redis or the chat-system.
fn parse_token(raw: &str) -> Result<String, ApiError> {
    decode_segment(raw)
        .filter(|token| is_usable_token(token))
        .ok_or(ApiError::UnknownApplication)
}

fn parse_chat(raw: &str) -> Result<i64, ApiError> {
    positive_number(raw)
        .ok_or_else(|| ApiError::BadRequest("chat number must be a positive integer".into()))
}

/// The content checks; the size is `MessageLimit`'s.
fn check_message(text: &str) -> Result<(), ApiError> {
    if text.is_empty() {
        return Err(ApiError::BadRequest("message must not be empty".into()));
    }
    if text.contains('\0') {
        return Err(ApiError::BadRequest(
            "message must not contain NUL characters".into(),
        ));
    }
    Ok(())
}

/// `{"chat number": 7}`: the old API's exact shape, space included.
fn number_reply(key: &str, number: i64) -> Response {
    json_reply(format!("{{\"{key}\":{number}}}"))
}

fn json_reply(json: String) -> Response {
    let mut response = Response::new(json.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Ready when Redis answers and keeps every write (see `durability`), the
/// broker connection is up and not blocked
/// by a resource alarm, and the chat-system answers; each check bounded so
/// a hung dependency is reported, not waited for.
async fn readyz(state: Arc<State>) -> Response {
    const CHECK: Duration = Duration::from_secs(1);
    let (redis, chat_system) = tokio::join!(
        tokio::time::timeout(CHECK, state.intake.numbers().ready()),
        tokio::time::timeout(CHECK, state.chat_system.ready()),
    );
    let verdict = |ok: bool| if ok { "ok" } else { "unavailable" };
    let redis_ready = matches!(redis, Ok(Ok(())));
    let redis_said = match redis {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(NumberError::NotDurable(_))) => state.intake.numbers().durability(),
        _ => "unavailable".to_owned(),
    };
    let fits = match &chat_system {
        Ok(Ok(shared::chat_system::Ready {
            max_body_bytes: Some(max_body_bytes),
            ..
        })) => state.message_limit.learn(*max_body_bytes),
        _ => state.message_limit.fits_chat_system(),
    };
    let chat_system_said = match (&chat_system, fits) {
        (Ok(Ok(_)), true) => "ok",
        (Ok(Ok(_)), false) => "MAX_BODY_BYTES too small for MAX_MESSAGE_BYTES",
        _ => "unavailable",
    };
    let chat_system = matches!(chat_system, Ok(Ok(_))) && fits;
    let publisher = state.intake.publisher();
    let blocked = publisher.is_blocked();
    let rabbitmq = publisher.is_connected() && !blocked;
    let body = serde_json::json!({
        "redis": redis_said,
        "rabbitmq": if blocked { "blocked" } else { verdict(rabbitmq) },
        "chat-system": chat_system_said,
    });
    let status = if redis_ready && rabbitmq && chat_system {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    shared::http::json_with_status(&body, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_checked_before_a_number_is_drawn() {
        assert!(check_message("hello, world / 你好").is_ok());
        assert!(matches!(check_message(""), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            check_message("a\0b"),
            Err(ApiError::BadRequest(_))
        ));
        let limit = MessageLimit::new(64);
        assert!(matches!(
            limit.check(&"x".repeat(65)),
            Err(ApiError::TooLarge(_))
        ));
        assert!(
            limit.check(&"é".repeat(32)).is_ok(),
            "the limit counts bytes"
        );
    }

    #[test]
    fn tokens_that_cannot_exist_are_unknown() {
        assert_eq!(parse_token("abc").ok().as_deref(), Some("abc"));
        for raw in ["%7Babc%7D", "%FF", "a%00b", ""] {
            assert!(
                matches!(parse_token(raw), Err(ApiError::UnknownApplication)),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_answer_keeps_the_old_apis_key() {
        let response = number_reply("chat number", 7);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}

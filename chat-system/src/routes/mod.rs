//! The HTTP contract (`docs/chat-system.openapi.yaml`): the filter tree
//! of every route, the methods of each path (405's `Allow`), and the
//! credential check in front of the write and admin routes. The handlers
//! live by resource: `applications`, `chats`, `messages`, and `records`
//! (the bulk write, `POST /records`); `input` parses and checks what a
//! request brings, `reply` shapes what it gets back. The children import
//! each other and the crate's modules, never this one.
//!
//! Handlers never reject: bad input is answered there with a 4xx, so warp
//! does not go on to try other routes and report a misleading 405. Only
//! warp's own rejections (no such route, wrong method, oversized body) reach
//! `shared::http::recover`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use shared::http::json_body;
use shared::trace::TraceParent;
use tracing::{Instrument, Span};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth::{Access, Auth};
use crate::error::HttpError;
use crate::store::Store;

mod applications;
mod chats;
mod input;
mod messages;
mod records;
mod reply;

pub(crate) use input::Limits;

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
        .and(json_body::<applications::NewApplication>(max_body_bytes))
        .and(store.clone())
        .then(|allowed, body, store| {
            guarded(allowed, applications::create_application(body, store))
        });
    let list_applications = warp::path!("applications")
        .and(warp::get())
        .and(needs(Access::Admin))
        .and(query)
        .and(store.clone())
        .then(|allowed, query, store| {
            guarded(allowed, applications::list_applications(query, store))
        });
    let rename_application = warp::path!("applications" / String)
        .and(warp::patch())
        .and(needs(Access::Admin))
        .and(json_body::<applications::NewApplication>(max_body_bytes))
        .and(store.clone())
        .then(|token, allowed, body, store| {
            guarded(
                allowed,
                applications::rename_application(token, body, store),
            )
        });
    let get_application = warp::path!("applications" / String)
        .and(warp::get())
        .and(store.clone())
        .then(applications::get_application);
    let list_chats = warp::path!("applications" / String / "chats")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .then(chats::list_chats);
    let put_chat = warp::path!("applications" / String / "chats" / String)
        .and(warp::put())
        .and(needs(Access::Write))
        .and(store.clone())
        .and(write_span())
        .then(|token, chat, allowed, store, span: Span| {
            guarded(allowed, chats::put_chat(token, chat, store)).instrument(span)
        });
    let get_chat = warp::path!("applications" / String / "chats" / String)
        .and(warp::get())
        .and(store.clone())
        .then(chats::get_chat);
    let list_messages = warp::path!("applications" / String / "chats" / String / "messages")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .then(messages::list_messages);
    // Before `get_message`, whose `{m}` segment would otherwise take "search".
    let search = warp::path!("applications" / String / "chats" / String / "messages" / "search")
        .and(warp::get())
        .and(query)
        .and(store.clone())
        .and(limits)
        .then(messages::search_messages);
    let put_message = warp::path!("applications" / String / "chats" / String / "messages" / String)
        .and(warp::put())
        .and(needs(Access::Write))
        .and(json_body::<messages::NewMessage>(max_body_bytes))
        .and(store.clone())
        .and(write_span())
        .then(
            |token, chat, message: String, allowed, body, store, span: Span| async move {
                if message == "search" {
                    // The search path, which only has GET: 405 before any
                    // credential is asked for.
                    return shared::http::not_allowed("GET");
                }
                guarded(
                    allowed,
                    messages::put_message(token, chat, message, body, store),
                )
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
        .then(messages::get_message);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(store)
        .and(limits)
        .then(readyz);

    // Boxed by resource: one flat chain of sixteen `or`s makes a type the
    // compiler's trait solver takes minutes over in release builds, and
    // then gives up on (E0275, overflow evaluating `Unpin`).
    let applications = create_application
        .or(list_applications)
        .unify()
        .or(get_application)
        .unify()
        .or(rename_application)
        .unify()
        .boxed();
    let chats = list_chats.or(put_chat).unify().or(get_chat).unify().boxed();
    let messages = list_messages
        .or(search)
        .unify()
        .or(put_message)
        .unify()
        .or(get_message)
        .unify()
        .boxed();
    shared::http::healthz()
        .or(readyz)
        .unify()
        .or(applications)
        .unify()
        .or(chats)
        .unify()
        .or(messages)
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
        ["applications"] => Some("GET, POST"),
        ["records"] => Some("POST"),
        ["applications", _] => Some("GET, PATCH"),
        ["applications", _, "chats"]
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

//! A chat's messages: list, search, store (idempotent), read.

use std::collections::HashMap;

use serde::Deserialize;
use shared::http::{BodyError, json_with_status};
use warp::Reply;
use warp::reply::Response;

use super::input::{Limits, body_error, check_body, limit, number, offset, page, token};
use super::reply::{answer, status};
use crate::error::HttpError;
use crate::reads;
use crate::store::Store;
use crate::writes::NewRecord;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMessage {
    body: String,
}

pub(crate) async fn list_messages(
    token_raw: String,
    chat_raw: String,
    query: HashMap<String, String>,
    store: Store,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let (after, limit) = page(&query)?;
            let page =
                reads::messages(store.database(), &token(&token_raw)?, chat, after, limit).await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

pub(crate) async fn search_messages(
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
            let (limit, offset) = (limit(&query)?, offset(&query)?);
            let page = reads::search(
                store.database(),
                &token(&token_raw)?,
                chat,
                text,
                offset,
                limit,
            )
            .await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

pub(crate) async fn put_message(
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
            let outcome = store.store_one(record).await?;
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

pub(crate) async fn get_message(
    token_raw: String,
    chat_raw: String,
    message_raw: String,
    store: Store,
) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let message = number(&message_raw, "message number")?;
            let message =
                reads::message(store.database(), &token(&token_raw)?, chat, message).await?;
            Ok(warp::reply::json(&message).into_response())
        }
        .await,
    )
}

//! An application's chats: list, store (idempotent), read.

use std::collections::HashMap;

use shared::http::json_with_status;
use warp::Reply;
use warp::reply::Response;

use super::input::{number, page, token};
use super::reply::{answer, status};
use crate::reads;
use crate::store::Store;
use crate::writes::NewRecord;

pub(crate) async fn list_chats(
    token_raw: String,
    query: HashMap<String, String>,
    store: Store,
) -> Response {
    answer(
        async {
            let (after, limit) = page(&query)?;
            let page = reads::chats(store.database(), &token(&token_raw)?, after, limit).await?;
            Ok(warp::reply::json(&page).into_response())
        }
        .await,
    )
}

pub(crate) async fn put_chat(token_raw: String, chat_raw: String, store: Store) -> Response {
    answer(
        async {
            let number = number(&chat_raw, "chat number")?;
            let token = token(&token_raw)?;
            let record = NewRecord::Chat {
                token: token.clone(),
                number,
            };
            let outcome = store.store_one(record).await?;
            tracing::debug!(chat = number, ?outcome, "chat stored");
            let chat = reads::chat(store.database(), &token, number).await?;
            Ok(json_with_status(&chat, status(outcome)))
        }
        .await,
    )
}

pub(crate) async fn get_chat(token_raw: String, chat_raw: String, store: Store) -> Response {
    answer(
        async {
            let chat = number(&chat_raw, "chat number")?;
            let chat = reads::chat(store.database(), &token(&token_raw)?, chat).await?;
            Ok(warp::reply::json(&chat).into_response())
        }
        .await,
    )
}

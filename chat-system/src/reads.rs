//! The reads: what the routes answer `GET`s with, each one statement or a
//! few on the [`Database`], none of them writing.

use serde::Serialize;

use crate::database::Database;
use crate::error::{Missing, StoreError};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct Application {
    pub(crate) token: String,
    pub(crate) name: String,
    pub(crate) chats_count: i64,
    pub(crate) last_chat_number: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct Chat {
    pub(crate) number: i64,
    pub(crate) messages_count: i64,
    pub(crate) last_message_number: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct Message {
    pub(crate) number: i64,
    pub(crate) body: String,
    /// 0 until edited, then the revision of `body`.
    pub(crate) revision: i64,
    /// When an edit last changed `body` (RFC 3339, UTC); null if never.
    pub(crate) updated_at: Option<String>,
}

/// The columns of a [`Message`] from `messages m` (a macro: statements
/// are `&'static str`, built with `concat!`).
macro_rules! message_columns {
    () => {
        "m.number, m.body, m.revision, \
         to_char(m.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS updated_at"
    };
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub(crate) struct SearchHit {
    pub(crate) number: i64,
    pub(crate) body: String,
    pub(crate) rank: f32,
}

/// One page of a list ordered by number; `next_after` is the cursor for the
/// following page, absent on the last one.
#[derive(Debug, Serialize)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_after: Option<i64>,
}

impl<T> Page<T> {
    fn new(items: Vec<T>, limit: i64, number: impl Fn(&T) -> i64) -> Self {
        let next_after = match items.last() {
            Some(last) if items.len() as i64 == limit => Some(number(last)),
            _ => None,
        };
        Self { items, next_after }
    }
}

pub(crate) async fn application(
    database: &Database,
    token: &str,
) -> Result<Application, StoreError> {
    sqlx::query_as(
        "SELECT token, name, chats_count, last_chat_number FROM applications WHERE token = $1",
    )
    .bind(token)
    .fetch_optional(database.pool()?)
    .await?
    .ok_or(StoreError::NotFound(Missing::Application))
}

/// An application as listed: its row id, the cursor of the list (never
/// shown otherwise).
#[derive(sqlx::FromRow)]
struct Listed {
    id: i64,
    #[sqlx(flatten)]
    application: Application,
}

/// One page of every application, in the order they were created (by
/// their row id): ids above `after`, at most `limit`. `next_after` is the
/// last one's id when the page is full.
pub(crate) async fn applications(
    database: &Database,
    after: i64,
    limit: i64,
) -> Result<Page<Application>, StoreError> {
    let listed: Vec<Listed> = sqlx::query_as(
        "SELECT id, token, name, chats_count, last_chat_number FROM applications
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(database.pool()?)
    .await?;
    let next_after = match listed.last() {
        Some(last) if listed.len() as i64 == limit => Some(last.id),
        _ => None,
    };
    Ok(Page {
        items: listed
            .into_iter()
            .map(|listed| listed.application)
            .collect(),
        next_after,
    })
}

async fn application_id(database: &Database, token: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT id FROM applications WHERE token = $1")
        .bind(token)
        .fetch_optional(database.pool()?)
        .await?
        .ok_or(StoreError::NotFound(Missing::Application))
}

async fn chat_id(database: &Database, token: &str, chat: i64) -> Result<i64, StoreError> {
    let id = sqlx::query_scalar(
        "SELECT c.id FROM chats c JOIN applications a ON a.id = c.application_id
         WHERE a.token = $1 AND c.number = $2",
    )
    .bind(token)
    .bind(chat)
    .fetch_optional(database.pool()?)
    .await?;
    match id {
        Some(id) => Ok(id),
        None => Err(missing_chat(database, token).await),
    }
}

/// The 404 for a chat that was not found: its application's, when that
/// is missing too.
async fn missing_chat(database: &Database, token: &str) -> StoreError {
    match application_id(database, token).await {
        Ok(_) => StoreError::NotFound(Missing::Chat),
        Err(error) => error,
    }
}

pub(crate) async fn chat(
    database: &Database,
    token: &str,
    number: i64,
) -> Result<Chat, StoreError> {
    let chat = sqlx::query_as(
        "SELECT c.number, c.messages_count, c.last_message_number
         FROM chats c JOIN applications a ON a.id = c.application_id
         WHERE a.token = $1 AND c.number = $2",
    )
    .bind(token)
    .bind(number)
    .fetch_optional(database.pool()?)
    .await?;
    match chat {
        Some(chat) => Ok(chat),
        None => Err(missing_chat(database, token).await),
    }
}

pub(crate) async fn chats(
    database: &Database,
    token: &str,
    after: i64,
    limit: i64,
) -> Result<Page<Chat>, StoreError> {
    let application = application_id(database, token).await?;
    let chats = sqlx::query_as(
        "SELECT number, messages_count, last_message_number FROM chats
         WHERE application_id = $1 AND number > $2 ORDER BY number LIMIT $3",
    )
    .bind(application)
    .bind(after)
    .bind(limit)
    .fetch_all(database.pool()?)
    .await?;
    Ok(Page::new(chats, limit, |chat: &Chat| chat.number))
}

pub(crate) async fn message(
    database: &Database,
    token: &str,
    chat: i64,
    number: i64,
) -> Result<Message, StoreError> {
    let chat_id = chat_id(database, token, chat).await?;
    sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m WHERE m.chat_id = $1 AND m.number = $2"
    ))
    .bind(chat_id)
    .bind(number)
    .fetch_optional(database.pool()?)
    .await?
    .ok_or(StoreError::NotFound(Missing::Message))
}

pub(crate) async fn messages(
    database: &Database,
    token: &str,
    chat: i64,
    after: i64,
    limit: i64,
) -> Result<Page<Message>, StoreError> {
    let chat_id = chat_id(database, token, chat).await?;
    let messages = sqlx::query_as(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages m WHERE m.chat_id = $1 AND m.number > $2 ORDER BY m.number LIMIT $3"
    ))
    .bind(chat_id)
    .bind(after)
    .bind(limit)
    .fetch_all(database.pool()?)
    .await?;
    Ok(Page::new(messages, limit, |message: &Message| {
        message.number
    }))
}

/// Full-text search of one chat's messages, best match first. The query
/// is bound as a parameter and parsed by `websearch_to_tsquery`, which
/// accepts any text (quotes, `or`, `-word`) without a syntax error.
pub(crate) async fn search(
    database: &Database,
    token: &str,
    chat: i64,
    query: &str,
    limit: i64,
) -> Result<Vec<SearchHit>, StoreError> {
    let chat_id = chat_id(database, token, chat).await?;
    let hits = sqlx::query_as(
        "SELECT m.number, m.body, ts_rank(m.search, q) AS rank
         FROM messages m, websearch_to_tsquery('simple', $2) q
         WHERE m.chat_id = $1 AND m.search @@ q
         ORDER BY rank DESC, m.number LIMIT $3",
    )
    .bind(chat_id)
    .bind(query)
    .bind(limit)
    .fetch_all(database.search_pool()?)
    .await
    .map_err(|error| match &error {
        // query_canceled: the statement timeout of the search pool.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            StoreError::SearchTimedOut
        }
        _ => StoreError::from(error),
    })?;
    Ok(hits)
}

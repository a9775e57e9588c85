//! Where SQL is spoken: the reads here, the one write path in `records`.

use serde::Serialize;
use sqlx::postgres::PgPool;

use crate::database::Readiness;
use crate::error::{Missing, StoreError};
use crate::records::{NewRecord, Stored};
use crate::writer::Writer;

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

/// Whether a write stored a new row or found the same one already there;
/// for an edit, whether its body is now the stored one, was already, or
/// has been superseded by a higher revision (stored all the same: each
/// revision's body is current once, in revision order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Created,
    AlreadyThere,
    Superseded,
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

/// The database, usable once its migrations have run.
#[derive(Clone)]
pub(crate) struct Database {
    pool: PgPool,
    /// Searches only (`database::search_pool`).
    search_pool: PgPool,
    readiness: Readiness,
}

impl Database {
    pub(crate) fn new(pool: PgPool, search_pool: PgPool, readiness: Readiness) -> Self {
        Self {
            pool,
            search_pool,
            readiness,
        }
    }

    /// The pool, once migrations have run; 503 before.
    pub(crate) fn pool(&self) -> Result<&PgPool, StoreError> {
        if self.readiness.is_ready() {
            Ok(&self.pool)
        } else {
            Err(StoreError::Starting)
        }
    }

    /// The searches' pool, once migrations have run.
    fn search_pool(&self) -> Result<&PgPool, StoreError> {
        self.pool()?;
        Ok(&self.search_pool)
    }
}

/// Reads and writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    database: Database,
    writer: Writer,
}

impl Store {
    /// The store, with `write_lanes` transactions writing at once, each
    /// taking up to `write_batch` writes.
    pub(crate) fn new(database: Database, write_lanes: usize, write_batch: usize) -> Self {
        let writer = Writer::start(database.clone(), write_lanes, write_batch);
        Self { database, writer }
    }

    fn db(&self) -> Result<&PgPool, StoreError> {
        self.database.pool()
    }

    /// Stores `records`, sharing a transaction with the writes that come at
    /// the same time ([`Writer`]): a result per record, in order.
    pub(crate) async fn store(&self, records: Vec<NewRecord>) -> Result<Vec<Stored>, StoreError> {
        self.writer.write(records).await
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.db()?).await?;
        Ok(())
    }

    pub(crate) async fn create_application(&self, name: &str) -> Result<Application, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let application = sqlx::query_as(
            "INSERT INTO applications (token, name) VALUES ($1, $2)
             RETURNING token, name, chats_count, last_chat_number",
        )
        .bind(token)
        .bind(name)
        .fetch_one(self.db()?)
        .await?;
        Ok(application)
    }

    pub(crate) async fn application(&self, token: &str) -> Result<Application, StoreError> {
        sqlx::query_as(
            "SELECT token, name, chats_count, last_chat_number FROM applications WHERE token = $1",
        )
        .bind(token)
        .fetch_optional(self.db()?)
        .await?
        .ok_or(StoreError::NotFound(Missing::Application))
    }

    async fn application_id(&self, token: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT id FROM applications WHERE token = $1")
            .bind(token)
            .fetch_optional(self.db()?)
            .await?
            .ok_or(StoreError::NotFound(Missing::Application))
    }

    async fn chat_id(&self, token: &str, chat: i64) -> Result<i64, StoreError> {
        let id = sqlx::query_scalar(
            "SELECT c.id FROM chats c JOIN applications a ON a.id = c.application_id
             WHERE a.token = $1 AND c.number = $2",
        )
        .bind(token)
        .bind(chat)
        .fetch_optional(self.db()?)
        .await?;
        match id {
            Some(id) => Ok(id),
            None => Err(self.missing_chat(token).await),
        }
    }

    /// The 404 for a chat that was not found: its application's, when that
    /// is missing too.
    async fn missing_chat(&self, token: &str) -> StoreError {
        match self.application_id(token).await {
            Ok(_) => StoreError::NotFound(Missing::Chat),
            Err(error) => error,
        }
    }

    pub(crate) async fn chat(&self, token: &str, number: i64) -> Result<Chat, StoreError> {
        let chat = sqlx::query_as(
            "SELECT c.number, c.messages_count, c.last_message_number
             FROM chats c JOIN applications a ON a.id = c.application_id
             WHERE a.token = $1 AND c.number = $2",
        )
        .bind(token)
        .bind(number)
        .fetch_optional(self.db()?)
        .await?;
        match chat {
            Some(chat) => Ok(chat),
            None => Err(self.missing_chat(token).await),
        }
    }

    pub(crate) async fn chats(
        &self,
        token: &str,
        after: i64,
        limit: i64,
    ) -> Result<Page<Chat>, StoreError> {
        let application = self.application_id(token).await?;
        let chats = sqlx::query_as(
            "SELECT number, messages_count, last_message_number FROM chats
             WHERE application_id = $1 AND number > $2 ORDER BY number LIMIT $3",
        )
        .bind(application)
        .bind(after)
        .bind(limit)
        .fetch_all(self.db()?)
        .await?;
        Ok(Page::new(chats, limit, |chat: &Chat| chat.number))
    }

    pub(crate) async fn message(
        &self,
        token: &str,
        chat: i64,
        number: i64,
    ) -> Result<Message, StoreError> {
        let chat_id = self.chat_id(token, chat).await?;
        sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.number = $2"
        ))
        .bind(chat_id)
        .bind(number)
        .fetch_optional(self.db()?)
        .await?
        .ok_or(StoreError::NotFound(Missing::Message))
    }

    pub(crate) async fn messages(
        &self,
        token: &str,
        chat: i64,
        after: i64,
        limit: i64,
    ) -> Result<Page<Message>, StoreError> {
        let chat_id = self.chat_id(token, chat).await?;
        let messages = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m WHERE m.chat_id = $1 AND m.number > $2 ORDER BY m.number LIMIT $3"
        ))
        .bind(chat_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.db()?)
        .await?;
        Ok(Page::new(messages, limit, |message: &Message| {
            message.number
        }))
    }

    /// Full-text search of one chat's messages, best match first. The query
    /// is bound as a parameter and parsed by `websearch_to_tsquery`, which
    /// accepts any text (quotes, `or`, `-word`) without a syntax error.
    pub(crate) async fn search(
        &self,
        token: &str,
        chat: i64,
        query: &str,
        limit: i64,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let chat_id = self.chat_id(token, chat).await?;
        let hits = sqlx::query_as(
            "SELECT m.number, m.body, ts_rank(m.search, q) AS rank
             FROM messages m, websearch_to_tsquery('simple', $2) q
             WHERE m.chat_id = $1 AND m.search @@ q
             ORDER BY rank DESC, m.number LIMIT $3",
        )
        .bind(chat_id)
        .bind(query)
        .bind(limit)
        .fetch_all(self.database.search_pool()?)
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
}

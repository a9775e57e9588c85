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

/// One message found by a search. `snippet` is HTML: the body's text
/// around the matches (PostgreSQL's `ts_headline`), escaped, with each
/// match in `<mark>…</mark>`.
#[derive(Debug, Serialize)]
pub(crate) struct SearchHit {
    pub(crate) number: i64,
    pub(crate) body: String,
    pub(crate) rank: f32,
    pub(crate) snippet: String,
}

/// One page of a search; `next_offset` is the `offset` of the next page,
/// absent (null) on the last one.
#[derive(Debug, Serialize)]
pub(crate) struct SearchPage {
    pub(crate) items: Vec<SearchHit>,
    pub(crate) next_offset: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct SearchRow {
    number: i64,
    body: String,
    rank: f32,
    headline: String,
}

/// A near miss: a message in which every word of the query is at least
/// this close to a word (pg_trgm's `strict_word_similarity`, 0 to 1):
/// `helo` is 0.57 from `hello`, `rain` 0.38 from `brain`.
const NEAR_MISS: f32 = 0.5;

/// Where `ts_headline` starts and ends a match: private-use characters,
/// taken out of the body first, turned into `<mark>` once the rest is
/// escaped.
const MARK_START: char = '\u{E000}';
const MARK_END: char = '\u{E001}';

/// The search of one chat, in one statement on the search pool:
///
/// - `query`: `q` parsed by `websearch_to_tsquery` (bound, never spliced
///   into SQL: any text is a query, operators included), then each of its
///   lexemes made a prefix (`'hel':*`) by rewriting the query's own text
///   form, in which PostgreSQL quotes every lexeme; and the words a near
///   miss must have (the query's lexemes, negated ones aside: `querytree`).
/// - `matched`: the word matches (the GIN index on `search` serves prefix
///   terms), best `ts_rank` first, as many as the page needs.
/// - `near`: only when the word matches do not fill the page, the chat's
///   other messages in which every word is a near miss, closest first.
/// - the page of both, word matches first, and only for its rows the
///   snippet: the query's lexemes, or a near miss's words close to the
///   query's, highlighted; a body of up to 300 characters whole, a longer
///   one in up to two fragments of at most 20 words around the matches.
const SEARCH: &str = r#"
WITH query AS (
    SELECT regexp_replace(w::text, '''((?:[^'']|'''')*)''', '''\1'':*', 'g')::tsquery AS prefixed,
           ARRAY(SELECT replace(t[1], '''''', '''')
                 FROM regexp_matches(querytree(w), '''((?:[^'']|'''')*)''', 'g') AS t) AS words
    FROM websearch_to_tsquery('simple', $2) AS w
),
matched AS MATERIALIZED (
    SELECT m.id, m.number, ts_rank(m.search, query.prefixed) AS rank, 1::real AS likeness
    FROM messages m, query
    WHERE m.chat_id = $1 AND m.search @@ query.prefixed
    ORDER BY rank DESC, m.number
    LIMIT $3
),
near AS (
    SELECT m.id, m.number, 0::real AS rank, n.likeness
    FROM messages m, query,
         LATERAL (SELECT min(strict_word_similarity(word, left(m.body, 100000))) AS likeness
                  FROM unnest(query.words) AS word) n
    WHERE m.chat_id = $1
      AND (SELECT count(*) FROM matched) < $3
      AND cardinality(query.words) > 0
      AND NOT m.search @@ query.prefixed
      AND n.likeness >= $6
    ORDER BY n.likeness DESC, m.number
    LIMIT $3
),
page AS (
    SELECT id, number, rank, likeness, false AS near FROM matched
    UNION ALL
    SELECT id, number, rank, likeness, true FROM near
    ORDER BY near, rank DESC, likeness DESC, number
    OFFSET $4 LIMIT $5
)
SELECT page.number, m.body, page.rank,
       ts_headline('simple',
           translate(left(m.body, 100000), chr(57344) || chr(57345), ''),
           CASE WHEN page.near THEN COALESCE(
               (SELECT string_agg('''' || replace(replace(l, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery
                FROM unnest(tsvector_to_array(m.search)) AS l
                WHERE EXISTS (SELECT 1 FROM unnest(query.words) AS word
                              WHERE strict_word_similarity(word, l) >= $6)),
               query.prefixed)
           ELSE query.prefixed END,
           'StartSel=' || chr(57344) || ', StopSel=' || chr(57345) || CASE
               WHEN length(m.body) <= 300 THEN ', MaxWords=60, MinWords=30'
               ELSE ', MaxFragments=2, MaxWords=20, MinWords=8, FragmentDelimiter=" … "' END
       ) AS headline
FROM page JOIN messages m ON m.id = page.id, query
ORDER BY page.near, page.rank DESC, page.likeness DESC, page.number
"#;

/// Searches one chat's messages for `query`: word matches (whole words
/// and words that start with a word of the query), best `ts_rank` first,
/// then near misses (a typo), closest first; `limit` of them from
/// `offset` on.
pub(crate) async fn search(
    database: &Database,
    token: &str,
    chat: i64,
    query: &str,
    offset: i64,
    limit: i64,
) -> Result<SearchPage, StoreError> {
    let chat_id = chat_id(database, token, chat).await?;
    let mut rows: Vec<SearchRow> = sqlx::query_as(SEARCH)
        .bind(chat_id)
        .bind(query)
        .bind(offset + limit + 1)
        .bind(offset)
        .bind(limit + 1)
        .bind(NEAR_MISS)
        .fetch_all(database.search_pool()?)
        .await
        .map_err(|error| match &error {
            // query_canceled: the statement timeout of the search pool.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                StoreError::SearchTimedOut
            }
            _ => StoreError::from(error),
        })?;
    let next_offset = (rows.len() as i64 > limit).then_some(offset + limit);
    rows.truncate(limit as usize);
    let items = rows
        .into_iter()
        .map(|row| SearchHit {
            snippet: snippet(&row.headline),
            number: row.number,
            body: row.body,
            rank: row.rank,
        })
        .collect();
    Ok(SearchPage { items, next_offset })
}

/// `headline` as HTML: its text escaped, its marks `<mark>…</mark>`.
fn snippet(headline: &str) -> String {
    let mut html = String::with_capacity(headline.len() + 32);
    for character in headline.chars() {
        match character {
            MARK_START => html.push_str("<mark>"),
            MARK_END => html.push_str("</mark>"),
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            other => html.push(other),
        }
    }
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_is_escaped_html_with_its_marks() {
        let headline = format!("a <b> & \"c\" {MARK_START}it's{MARK_END}");
        assert_eq!(
            snippet(&headline),
            "a &lt;b&gt; &amp; &quot;c&quot; <mark>it&#39;s</mark>"
        );
    }
}

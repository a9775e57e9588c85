//! The writes: the one write path of records ([`transact`]), and the
//! applications' own writes (create, rename), which the admin makes one at
//! a time and which need no group commit. A rename locks its one
//! application row, as a batch with chats of it does: it waits for such a
//! batch, or the batch for it.
//!
//! [`transact`] stores a batch of chats, messages and edits of messages,
//! of any applications, in one transaction with a few set-based
//! statements. The single `PUT`s are batches of one.
//!
//! Per batch: lock the applications that get chats, insert the chats and
//! move their applications' counters in one statement; lock the chats that
//! get messages (chats of this batch included, so a chat and its first
//! messages can travel together), insert the messages and move their
//! chats' counters in one statement; read back the bodies of numbers that
//! were taken, to tell a redelivery (same body) from a conflict; then lock
//! the messages that get edits (messages of this batch included) and
//! apply, per message, the batch's highest revision if it is above the
//! stored one. Rows are locked in id order, applications before chats
//! before messages, so concurrent batches (and single writes, which lock
//! one row) cannot deadlock. Inserts
//! are `ON CONFLICT DO NOTHING`, so a redelivered record changes nothing,
//! and the counters move by exactly the rows inserted.
//!
//! Each record gets its own result with the meaning of the single `PUT`s.
//! Within a batch the first record of a number wins; a later one of the
//! same number is a redelivery or a conflict, as it would be later on.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};

use crate::database::{Database, Outcome, Stored};
use crate::error::{Missing, StoreError};
use crate::reads::Application;

/// A record to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NewRecord {
    Chat {
        token: String,
        number: i64,
    },
    Message {
        token: String,
        chat: i64,
        number: i64,
        body: String,
    },
    /// Revision `revision` (at least 1) of message `message`: its body.
    Edit {
        token: String,
        chat: i64,
        message: i64,
        revision: i64,
        body: String,
    },
}

/// Stores `records` in one transaction and answers a result per record,
/// in order. An error of the whole batch (the database is unreachable)
/// stores nothing.
pub(crate) async fn transact(
    database: &Database,
    records: &[NewRecord],
) -> Result<Vec<Stored>, StoreError> {
    let mut results: Vec<Option<Stored>> = records.iter().map(|_| None).collect();
    let mut transaction = database.pool()?.begin().await?;
    store_chats(&mut transaction, records, &mut results).await?;
    store_messages(&mut transaction, records, &mut results).await?;
    store_edits(&mut transaction, records, &mut results).await?;
    transaction.commit().await?;
    Ok(results
        .into_iter()
        .map(|result| result.expect("every record got a result"))
        .collect())
}

/// A new application named `name` (checked by the route), with a new
/// random token.
pub(crate) async fn create_application(
    database: &Database,
    name: &str,
) -> Result<Application, StoreError> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let application = sqlx::query_as(
        "INSERT INTO applications (token, name) VALUES ($1, $2)
         RETURNING token, name, chats_count, last_chat_number",
    )
    .bind(token)
    .bind(name)
    .fetch_one(database.pool()?)
    .await?;
    Ok(application)
}

/// Names the application of `token` `name` (checked by the route): the
/// application renamed, or `NotFound`.
pub(crate) async fn rename_application(
    database: &Database,
    token: &str,
    name: &str,
) -> Result<Application, StoreError> {
    sqlx::query_as(
        "UPDATE applications SET name = $2 WHERE token = $1
         RETURNING token, name, chats_count, last_chat_number",
    )
    .bind(token)
    .bind(name)
    .fetch_optional(database.pool()?)
    .await?
    .ok_or(StoreError::NotFound(Missing::Application))
}

/// Index of each record, by a key: the first record of the key, and the
/// later ones (duplicates within the batch).
struct FirstOf<K> {
    first: HashMap<K, usize>,
    later: Vec<(usize, K)>,
}

impl<K: std::hash::Hash + Eq + Clone> FirstOf<K> {
    fn new() -> Self {
        Self {
            first: HashMap::new(),
            later: Vec::new(),
        }
    }

    fn add(&mut self, key: K, index: usize) {
        match self.first.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => {
                self.later.push((index, first.key().clone()));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
    }
}

async fn store_chats(
    transaction: &mut Transaction<'_, Postgres>,
    records: &[NewRecord],
    results: &mut [Option<Stored>],
) -> Result<(), StoreError> {
    let chats: Vec<(usize, &str, i64)> = records
        .iter()
        .enumerate()
        .filter_map(|(index, record)| match record {
            NewRecord::Chat { token, number } => Some((index, token.as_str(), *number)),
            NewRecord::Message { .. } | NewRecord::Edit { .. } => None,
        })
        .collect();
    if chats.is_empty() {
        return Ok(());
    }
    let tokens = distinct(chats.iter().map(|(_, token, _)| *token));
    let applications = lock_applications(transaction, &tokens).await?;

    let mut keys = FirstOf::new();
    for &(index, token, number) in &chats {
        match applications.get(token) {
            Some(&application) => keys.add((application, number), index),
            None => results[index] = Some(Err(StoreError::NotFound(Missing::Application))),
        }
    }
    let (application_ids, numbers): (Vec<i64>, Vec<i64>) = keys.first.keys().copied().unzip();
    let inserted: Vec<(i64, i64)> = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO chats (application_id, number)
             SELECT * FROM unnest($1::bigint[], $2::bigint[])
             ON CONFLICT (application_id, number) DO NOTHING
             RETURNING application_id, number),
         counted AS (
             UPDATE applications a
             SET chats_count = a.chats_count + c.created,
                 last_chat_number = GREATEST(a.last_chat_number, c.highest)
             FROM (SELECT application_id, count(*) AS created, max(number) AS highest
                   FROM inserted GROUP BY application_id) c
             WHERE a.id = c.application_id)
         SELECT application_id, number FROM inserted",
    )
    .bind(&application_ids)
    .bind(&numbers)
    .fetch_all(&mut **transaction)
    .await?;
    let created: std::collections::HashSet<(i64, i64)> = inserted.into_iter().collect();
    for (key, &index) in &keys.first {
        results[index] = Some(Ok(if created.contains(key) {
            Outcome::Created
        } else {
            Outcome::AlreadyThere
        }));
    }
    for (index, _) in keys.later {
        results[index] = Some(Ok(Outcome::AlreadyThere));
    }
    Ok(())
}

async fn store_messages(
    transaction: &mut Transaction<'_, Postgres>,
    records: &[NewRecord],
    results: &mut [Option<Stored>],
) -> Result<(), StoreError> {
    let messages: Vec<(usize, &str, i64, i64, &str)> = records
        .iter()
        .enumerate()
        .filter_map(|(index, record)| match record {
            NewRecord::Message {
                token,
                chat,
                number,
                body,
            } => Some((index, token.as_str(), *chat, *number, body.as_str())),
            NewRecord::Chat { .. } | NewRecord::Edit { .. } => None,
        })
        .collect();
    if messages.is_empty() {
        return Ok(());
    }
    let wanted = distinct(messages.iter().map(|&(_, token, chat, _, _)| (token, chat)));
    let chats = lock_chats(transaction, &wanted).await?;
    let missing_tokens = distinct(
        wanted
            .iter()
            .filter(|key| !chats.contains_key(*key))
            .map(|(token, _)| *token),
    );
    let known = known_applications(transaction, &missing_tokens).await?;

    let mut keys = FirstOf::new();
    for &(index, token, chat, number, _) in &messages {
        match chats.get(&(token, chat)) {
            Some(&chat_id) => keys.add((chat_id, number), index),
            None if known.contains(token) => {
                results[index] = Some(Err(StoreError::NotFound(Missing::Chat)));
            }
            None => results[index] = Some(Err(StoreError::NotFound(Missing::Application))),
        }
    }
    let mut chat_ids = Vec::with_capacity(keys.first.len());
    let mut numbers = Vec::with_capacity(keys.first.len());
    let mut bodies = Vec::with_capacity(keys.first.len());
    for (&(chat_id, number), &index) in &keys.first {
        chat_ids.push(chat_id);
        numbers.push(number);
        bodies.push(messages_body(records, index));
    }
    let inserted: Vec<(i64, i64)> = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO messages (chat_id, number, body)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])
             ON CONFLICT (chat_id, number) DO NOTHING
             RETURNING chat_id, number),
         counted AS (
             UPDATE chats c
             SET messages_count = c.messages_count + m.created,
                 last_message_number = GREATEST(c.last_message_number, m.highest)
             FROM (SELECT chat_id, count(*) AS created, max(number) AS highest
                   FROM inserted GROUP BY chat_id) m
             WHERE c.id = m.chat_id)
         SELECT chat_id, number FROM inserted",
    )
    .bind(&chat_ids)
    .bind(&numbers)
    .bind(&bodies)
    .fetch_all(&mut **transaction)
    .await?;
    let created: std::collections::HashSet<(i64, i64)> = inserted.into_iter().collect();

    // Numbers that were taken already, or twice in this batch: their
    // stored bodies decide between a redelivery and a conflict.
    let taken: Vec<(usize, (i64, i64))> = keys
        .first
        .iter()
        .filter(|(key, _)| !created.contains(*key))
        .map(|(key, &index)| (index, *key))
        .chain(keys.later.iter().map(|&(index, key)| (index, key)))
        .collect();
    for (key, &index) in &keys.first {
        if created.contains(key) {
            results[index] = Some(Ok(Outcome::Created));
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    let stored = stored_bodies(transaction, taken.iter().map(|(_, key)| *key)).await?;
    for (index, (chat_id, number)) in taken {
        let NewRecord::Message { chat, body, .. } = &records[index] else {
            unreachable!("only message records are in `taken`");
        };
        results[index] = Some(match stored.get(&(chat_id, number)) {
            Some(stored) if stored == body => Ok(Outcome::AlreadyThere),
            _ => Err(StoreError::Conflict {
                chat: *chat,
                number,
            }),
        });
    }
    Ok(())
}

fn messages_body(records: &[NewRecord], index: usize) -> &str {
    match &records[index] {
        NewRecord::Message { body, .. } => body,
        NewRecord::Chat { .. } | NewRecord::Edit { .. } => {
            unreachable!("only message records are keyed by chat id")
        }
    }
}

/// One edit of the batch: its index, its message's key, revision, body.
struct Edit<'a> {
    index: usize,
    key: (&'a str, i64, i64),
    revision: i64,
    body: &'a str,
}

async fn store_edits(
    transaction: &mut Transaction<'_, Postgres>,
    records: &[NewRecord],
    results: &mut [Option<Stored>],
) -> Result<(), StoreError> {
    let edits: Vec<Edit<'_>> = records
        .iter()
        .enumerate()
        .filter_map(|(index, record)| match record {
            NewRecord::Edit {
                token,
                chat,
                message,
                revision,
                body,
            } => Some(Edit {
                index,
                key: (token.as_str(), *chat, *message),
                revision: *revision,
                body: body.as_str(),
            }),
            NewRecord::Chat { .. } | NewRecord::Message { .. } => None,
        })
        .collect();
    if edits.is_empty() {
        return Ok(());
    }
    let wanted = distinct(edits.iter().map(|edit| edit.key));
    let stored = lock_messages(transaction, &wanted).await?;
    let missing_tokens = distinct(
        wanted
            .iter()
            .filter(|key| !stored.contains_key(*key))
            .map(|(token, _, _)| *token),
    );
    let known = known_applications(transaction, &missing_tokens).await?;

    // The batch's highest revision of each stored message (the first edit
    // of it, should two carry it).
    let mut highest: HashMap<(&str, i64, i64), &Edit<'_>> = HashMap::new();
    for edit in &edits {
        if stored.contains_key(&edit.key) {
            highest
                .entry(edit.key)
                .and_modify(|best| {
                    if edit.revision > best.revision {
                        *best = edit;
                    }
                })
                .or_insert(edit);
        } else if known.contains(edit.key.0) {
            // Its create may still be on its way: the worker tries again.
            results[edit.index] = Some(Err(StoreError::NotFound(Missing::Message)));
        } else {
            results[edit.index] = Some(Err(StoreError::NotFound(Missing::Application)));
        }
    }
    let mut ids = Vec::new();
    let mut revisions = Vec::new();
    let mut bodies = Vec::new();
    for (key, best) in &highest {
        let row = &stored[key];
        if best.revision > row.revision {
            ids.push(row.id);
            revisions.push(best.revision);
            bodies.push(best.body);
        }
    }
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE messages m
             SET body = u.body, revision = u.revision, updated_at = now(),
                 created_body = COALESCE(m.created_body, m.body)
             FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(id, revision, body)
             WHERE m.id = u.id AND m.revision < u.revision",
        )
        .bind(&ids)
        .bind(&revisions)
        .bind(&bodies)
        .execute(&mut **transaction)
        .await?;
    }
    // An edit of the revision already stored is a redelivery if its body
    // is the stored one: those bodies are read, and only those.
    let same = distinct(edits.iter().filter_map(|edit| {
        let row = stored.get(&edit.key)?;
        (row.revision == edit.revision).then_some(row.id)
    }));
    let current = bodies_of(transaction, &same).await?;
    for edit in &edits {
        let (Some(row), Some(best)) = (stored.get(&edit.key), highest.get(&edit.key)) else {
            continue;
        };
        let (_, chat, message) = edit.key;
        let conflict = || StoreError::RevisionConflict {
            chat,
            message,
            revision: edit.revision,
        };
        results[edit.index] = Some(if edit.revision > row.revision {
            if std::ptr::eq(edit, *best) {
                Ok(Outcome::Created)
            } else if edit.revision < best.revision {
                Ok(Outcome::Superseded)
            } else if edit.body == best.body {
                Ok(Outcome::AlreadyThere)
            } else {
                Err(conflict())
            }
        } else if edit.revision < row.revision {
            Ok(Outcome::Superseded)
        } else if current.get(&row.id).map(String::as_str) == Some(edit.body) {
            Ok(Outcome::AlreadyThere)
        } else {
            Err(conflict())
        });
    }
    Ok(())
}

/// A stored message an edit is for, as the transaction found it.
struct StoredMessage {
    id: i64,
    revision: i64,
}

/// `(token, chat number, number) → message` of the messages among
/// `wanted`, locked (in id order) until the transaction ends.
async fn lock_messages<'a>(
    transaction: &mut Transaction<'_, Postgres>,
    wanted: &[(&'a str, i64, i64)],
) -> Result<HashMap<(&'a str, i64, i64), StoredMessage>, StoreError> {
    let mut tokens = Vec::with_capacity(wanted.len());
    let mut chats = Vec::with_capacity(wanted.len());
    let mut numbers = Vec::with_capacity(wanted.len());
    for &(token, chat, number) in wanted {
        tokens.push(token);
        chats.push(chat);
        numbers.push(number);
    }
    let rows: Vec<(i64, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT m.id, a.token, c.number, m.number, m.revision
         FROM messages m
         JOIN chats c ON c.id = m.chat_id
         JOIN applications a ON a.id = c.application_id
         JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS k(token, chat, number)
           ON a.token = k.token AND c.number = k.chat AND m.number = k.number
         ORDER BY m.id FOR NO KEY UPDATE OF m",
    )
    .bind(&tokens)
    .bind(&chats)
    .bind(&numbers)
    .fetch_all(&mut **transaction)
    .await?;
    let mut by_key: HashMap<(String, i64, i64), StoredMessage> = rows
        .into_iter()
        .map(|(id, token, chat, number, revision)| {
            ((token, chat, number), StoredMessage { id, revision })
        })
        .collect();
    Ok(wanted
        .iter()
        .filter_map(|&(token, chat, number)| {
            by_key
                .remove(&(token.to_owned(), chat, number))
                .map(|row| ((token, chat, number), row))
        })
        .collect())
}

/// The stored body of each message of `ids`.
async fn bodies_of(
    transaction: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<HashMap<i64, String>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, body FROM messages WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **transaction)
            .await?;
    Ok(rows.into_iter().collect())
}

/// `token → id` of the applications among `tokens`, locked (in id order)
/// until the transaction ends.
async fn lock_applications(
    transaction: &mut Transaction<'_, Postgres>,
    tokens: &[&str],
) -> Result<HashMap<String, i64>, StoreError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, token FROM applications WHERE token = ANY($1)
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(tokens)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(rows.into_iter().map(|(id, token)| (token, id)).collect())
}

/// `(token, number) → id` of the chats among `wanted`, locked (in id
/// order) until the transaction ends.
async fn lock_chats<'a>(
    transaction: &mut Transaction<'_, Postgres>,
    wanted: &[(&'a str, i64)],
) -> Result<HashMap<(&'a str, i64), i64>, StoreError> {
    let (tokens, numbers): (Vec<&str>, Vec<i64>) = wanted.iter().copied().unzip();
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT c.id, a.token, c.number
         FROM chats c
         JOIN applications a ON a.id = c.application_id
         JOIN unnest($1::text[], $2::bigint[]) AS k(token, number)
           ON a.token = k.token AND c.number = k.number
         ORDER BY c.id FOR NO KEY UPDATE OF c",
    )
    .bind(&tokens)
    .bind(&numbers)
    .fetch_all(&mut **transaction)
    .await?;
    let by_key: HashMap<(String, i64), i64> = rows
        .into_iter()
        .map(|(id, token, number)| ((token, number), id))
        .collect();
    Ok(wanted
        .iter()
        .filter_map(|&(token, number)| {
            by_key
                .get(&(token.to_owned(), number))
                .map(|&id| ((token, number), id))
        })
        .collect())
}

/// Which of `tokens` name an application.
async fn known_applications(
    transaction: &mut Transaction<'_, Postgres>,
    tokens: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if tokens.is_empty() {
        return Ok(Default::default());
    }
    let known: Vec<String> =
        sqlx::query_scalar("SELECT token FROM applications WHERE token = ANY($1)")
            .bind(tokens)
            .fetch_all(&mut **transaction)
            .await?;
    Ok(known.into_iter().collect())
}

/// The body each `(chat id, number)` there is was created with.
async fn stored_bodies(
    transaction: &mut Transaction<'_, Postgres>,
    keys: impl Iterator<Item = (i64, i64)>,
) -> Result<HashMap<(i64, i64), String>, StoreError> {
    let (chat_ids, numbers): (Vec<i64>, Vec<i64>) = keys.unzip();
    // A fresh statement: it sees rows committed by concurrent writers after
    // the insert's snapshot, and this batch's own.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT m.chat_id, m.number, COALESCE(m.created_body, m.body)
         FROM messages m
         JOIN unnest($1::bigint[], $2::bigint[]) AS k(chat_id, number)
           ON m.chat_id = k.chat_id AND m.number = k.number",
    )
    .bind(&chat_ids)
    .bind(&numbers)
    .fetch_all(&mut **transaction)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(chat_id, number, body)| ((chat_id, number), body))
        .collect())
}

/// The distinct items, in first-seen order.
fn distinct<T: std::hash::Hash + Eq + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items.filter(|item| seen.insert(*item)).collect()
}

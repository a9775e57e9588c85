//! The dead letters as the console shows them: the queue read whole into
//! a snapshot (every letter taken unacknowledged, described, then all
//! returned at once), kept a few seconds and shared by every page, then
//! filtered, grouped and paged in memory.
//!
//! While a snapshot is being read (about a second for 50,000 letters) its
//! letters are invisible to other readers: a replay started then finds
//! fewer, never the same letter twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::{Deserialize, Serialize};
use shared::amqp::batch;
use shared::amqp::connection::connect;
use shared::amqp::headers::{self, ATTEMPTS, DEAD_AT_MS, DEATHS, LAST_ERROR, TRACEPARENT};
use shared::amqp::topology::depth;
use shared::job::{Job, Record};
use shared::telemetry::short_token;
use shared::trace::TraceParent;

use crate::replay::{counted_again, reason};

/// How long a snapshot serves before the next page reads the queue again.
const FRESH_FOR: Duration = Duration::from_secs(5);
/// A read that gets nothing for this long has every letter it will get
/// (others may hold the rest).
pub(crate) const IDLE: Duration = Duration::from_secs(2);
/// How long a read waits for its first letter: a quorum queue that just
/// took back tens of thousands of letters starts delivering only after
/// applying them (seconds, measured with 50,000).
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(30);

/// How long to wait for the next letter, `read` of them read so far.
pub(crate) fn wait_for(read: usize) -> Duration {
    if read == 0 { FIRST_WAIT } else { IDLE }
}
/// Most rows one page shows.
const MAX_PER_PAGE: usize = 500;
/// Most groups of each kind listed.
const MAX_GROUPS: usize = 20;

/// One dead job, as listed. A letter holds one job, or a batch the broker
/// dead-lettered whole: each of its jobs is a row.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) kind: &'static str,
    /// The application's token, shortened: never shown whole.
    pub(crate) application: String,
    pub(crate) chat: i64,
    pub(crate) message: Option<i64>,
    pub(crate) revision: Option<i64>,
    pub(crate) reason: String,
    pub(crate) attempts: Option<u32>,
    pub(crate) last_error: String,
    pub(crate) dead_at_ms: Option<u64>,
    #[serde(skip)]
    pub(crate) job: Job,
    #[serde(skip)]
    pub(crate) letter: Arc<Letter>,
}

/// What a letter says about its jobs: its headers.
#[derive(Debug)]
pub(crate) struct Letter {
    pub(crate) headers: FieldTable,
    pub(crate) reason: String,
}

impl Letter {
    pub(crate) fn of(delivery: &Delivery) -> Self {
        Self {
            headers: delivery.properties.headers().clone().unwrap_or_default(),
            reason: reason(delivery),
        }
    }
}

impl Row {
    pub(crate) fn of(job: &Job, letter: &Arc<Letter>) -> Self {
        let headers = Some(&letter.headers);
        let (chat, message, revision) = match &job.record {
            Record::Chat { number } => (*number, None, None),
            Record::Message { chat, number, .. } => (*chat, Some(*number), None),
            Record::Edit {
                chat,
                message,
                revision,
                ..
            } => (*chat, Some(*message), Some(*revision)),
        };
        Self {
            id: job.id.to_string(),
            kind: job.kind().as_str(),
            application: short_token(&job.token),
            chat,
            message,
            revision,
            reason: letter.reason.clone(),
            attempts: headers::get(headers, ATTEMPTS).and_then(|value| value.parse().ok()),
            last_error: headers::get(headers, LAST_ERROR).unwrap_or_default(),
            dead_at_ms: headers::get(headers, DEAD_AT_MS)
                .and_then(|value| value.parse().ok())
                .or_else(|| x_death_time_ms(&letter.headers)),
            job: job.clone(),
            letter: letter.clone(),
        }
    }

    /// Everything about this row: its job with the token shortened, every
    /// header of its letter, and its trace id.
    pub(crate) fn detail(&self) -> serde_json::Value {
        let mut payload: serde_json::Value =
            serde_json::from_slice(&self.job.encode()).unwrap_or_default();
        if let Some(token) = payload.get_mut("token") {
            *token = self.application.clone().into();
        }
        let headers: BTreeMap<String, String> = self
            .letter
            .headers
            .inner()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    show(value, &self.job.token, &self.application),
                )
            })
            .collect();
        let trace_id = headers::get(Some(&self.letter.headers), TRACEPARENT)
            .as_deref()
            .and_then(TraceParent::parse)
            .map(|trace| trace.trace_id());
        serde_json::json!({
            "row": self,
            "payload": payload,
            "headers": headers,
            "trace_id": trace_id,
        })
    }
}

/// When the broker dead-lettered a letter by itself (`x-death`'s `time`).
fn x_death_time_ms(headers: &FieldTable) -> Option<u64> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get(DEATHS)? else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    match death.inner().get("time")? {
        AMQPValue::Timestamp(seconds) => Some(seconds * 1000),
        _ => None,
    }
}

/// A header's value as text, with the application token shortened.
fn show(value: &AMQPValue, token: &str, short: &str) -> String {
    let text = match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.to_string(),
        other => format!("{other:?}"),
    };
    if token.is_empty() {
        text
    } else {
        text.replace(token, short)
    }
}

/// What an operator searches by; every field optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Filter {
    pub(crate) reason: Option<String>,
    pub(crate) kind: Option<String>,
    /// A full token, or its shortened form as listed.
    pub(crate) application: Option<String>,
    /// Part of the last error, any case.
    pub(crate) error: Option<String>,
    /// Dead-lettered at or after, ms since the epoch.
    pub(crate) from_ms: Option<u64>,
    /// Dead-lettered before, ms since the epoch.
    pub(crate) to_ms: Option<u64>,
}

impl Filter {
    /// Empty strings count as not given (an HTML form sends them).
    pub(crate) fn normalized(mut self) -> Self {
        for field in [
            &mut self.reason,
            &mut self.kind,
            &mut self.application,
            &mut self.error,
        ] {
            if field
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                *field = None;
            }
        }
        self.error = self.error.map(|error| error.to_lowercase());
        self
    }

    pub(crate) fn matches(&self, row: &Row) -> bool {
        self.reason
            .as_deref()
            .is_none_or(|reason| reason == row.reason)
            && self.kind.as_deref().is_none_or(|kind| kind == row.kind)
            && self.application.as_deref().is_none_or(|application| {
                application == row.job.token || application == row.application
            })
            && self
                .error
                .as_deref()
                .is_none_or(|error| row.last_error.to_lowercase().contains(error))
            && self
                .from_ms
                .is_none_or(|from| row.dead_at_ms.is_some_and(|at| at >= from))
            && self
                .to_ms
                .is_none_or(|to| row.dead_at_ms.is_some_and(|at| at < to))
    }

    /// The filter as an audit line shows it: the application shortened.
    pub(crate) fn describe(&self) -> String {
        let mut shown = self.clone();
        shown.application = shown.application.map(|token| short_token(&token));
        serde_json::to_string(&shown).unwrap_or_default()
    }
}

/// The dead-letter queue as read at one moment.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) taken_at_ms: u64,
    /// The whole read; of it, taking every letter.
    pub(crate) read_ms: u64,
    pub(crate) consume_ms: u64,
    pub(crate) letters: usize,
    pub(crate) rows: Vec<Row>,
    /// Jobs that could not be decoded (left in the queue).
    pub(crate) unreadable: usize,
}

/// A page of a filtered snapshot.
#[derive(Debug, Serialize)]
pub(crate) struct Page<'a> {
    pub(crate) taken_at_ms: u64,
    pub(crate) read_ms: u64,
    pub(crate) consume_ms: u64,
    pub(crate) letters: usize,
    pub(crate) unreadable: usize,
    /// Rows the filter matched.
    pub(crate) total: usize,
    pub(crate) page: usize,
    pub(crate) per_page: usize,
    pub(crate) rows: Vec<&'a Row>,
    pub(crate) by_reason: Vec<Group>,
    pub(crate) by_error: Vec<Group>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) key: String,
    pub(crate) count: usize,
}

impl Snapshot {
    /// Page `page` (from 1) of the rows `filter` matches, newest first,
    /// with the matches grouped by reason and by error.
    pub(crate) fn page(&self, filter: &Filter, page: usize, per_page: usize) -> Page<'_> {
        let per_page = per_page.clamp(1, MAX_PER_PAGE);
        let page = page.max(1);
        let matched: Vec<&Row> = self.rows.iter().filter(|row| filter.matches(row)).collect();
        let by_reason = groups(matched.iter().map(|row| row.reason.as_str()));
        let by_error = groups(matched.iter().map(|row| row.last_error.as_str()));
        let rows = matched
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .copied()
            .collect();
        Page {
            taken_at_ms: self.taken_at_ms,
            read_ms: self.read_ms,
            consume_ms: self.consume_ms,
            letters: self.letters,
            unreadable: self.unreadable,
            total: matched.len(),
            page,
            per_page,
            rows,
            by_reason,
            by_error,
        }
    }

    pub(crate) fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.id == id)
    }
}

/// The largest groups of `keys`, largest first.
fn groups<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<Group> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for key in keys {
        *counts.entry(key).or_default() += 1;
    }
    let mut groups: Vec<Group> = counts
        .into_iter()
        .map(|(key, count)| Group {
            key: key.to_owned(),
            count,
        })
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    groups.truncate(MAX_GROUPS);
    groups
}

/// The snapshot shared by the console's pages, read again when stale or
/// after an action changed the queue.
pub(crate) struct Letters {
    amqp_url: String,
    queue: String,
    current: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
    /// The last read's letters on their way back (counted back into the
    /// queue after the page was answered): the next read or action waits
    /// for it.
    returning: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Letters {
    pub(crate) fn new(amqp_url: &str, queue: String) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            queue,
            current: tokio::sync::Mutex::default(),
            returning: tokio::sync::Mutex::default(),
        }
    }

    /// Waits until the letters of the last read are back in the queue.
    pub(crate) async fn returned(&self) {
        if let Some(returning) = self.returning.lock().await.take() {
            let _ = returning.await;
        }
    }

    /// The snapshot, read again if it is older than a few seconds or
    /// `fresh` is asked for. One read at a time: pages asking meanwhile
    /// wait for it and share it.
    pub(crate) async fn snapshot(&self, fresh: bool) -> anyhow::Result<Arc<Snapshot>> {
        let mut current = self.current.lock().await;
        if let Some((read_at, snapshot)) = current.as_ref()
            && !fresh
            && read_at.elapsed() < FRESH_FOR
        {
            return Ok(snapshot.clone());
        }
        self.returned().await;
        let (snapshot, returning) = read(&self.amqp_url, &self.queue).await?;
        let snapshot = Arc::new(snapshot);
        *self.returning.lock().await = Some(returning);
        *current = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Forgets the snapshot: the next page reads the queue.
    pub(crate) async fn invalidate(&self) {
        *self.current.lock().await = None;
    }
}

/// Prefetch for a reader expecting `letters`: all of them at once where
/// AMQP's 16 bits allow, else unlimited (0).
pub(crate) fn prefetch_for(letters: u32) -> u16 {
    u16::try_from(letters).unwrap_or(0)
}

/// Reads every letter now ready in `queue`: each taken unacknowledged,
/// described, then all returned with one `nack`. Counting them back (a
/// quorum queue takes seconds for tens of thousands) is left to the task
/// it returns, so the page is answered meanwhile.
async fn read(
    amqp_url: &str,
    queue: &str,
) -> anyhow::Result<(Snapshot, tokio::task::JoinHandle<()>)> {
    let started = Instant::now();
    let connection = connect(amqp_url, "worker-console-read").await?;
    let channel = connection.create_channel().await?;
    let found = depth(&channel, queue).await?.0;
    let mut snapshot = Snapshot {
        taken_at_ms: headers::now_ms(),
        ..Snapshot::default()
    };
    if found > 0 {
        channel
            .basic_qos(prefetch_for(found), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut last_tag = None;
        while snapshot.letters < found as usize {
            let Ok(Some(delivery)) =
                tokio::time::timeout(wait_for(snapshot.letters), consumer.next()).await
            else {
                break;
            };
            let delivery = delivery?;
            last_tag = Some(delivery.delivery_tag);
            snapshot.letters += 1;
            describe(&delivery, &mut snapshot);
        }
        snapshot.consume_ms = started.elapsed().as_millis() as u64;
        give_back(&channel, consumer.tag(), last_tag).await?;
    }
    let returned = snapshot.letters;
    let queue = queue.to_owned();
    let returning = tokio::spawn(async move {
        if let Err(error) = counted_again(&channel, &queue, returned).await {
            tracing::warn!(%error, "counting the letters read back into the queue");
        }
        let _ = connection.close(200, "read".into()).await;
    });
    snapshot
        .rows
        .sort_by_key(|row| std::cmp::Reverse(row.dead_at_ms));
    snapshot.read_ms = started.elapsed().as_millis() as u64;
    Ok((snapshot, returning))
}

/// Stops `consumer` and returns every letter up to `last_tag` it holds
/// unacknowledged with one `nack`. Cancelled first: a consumer still on
/// the queue would be handed the returned letters again at once.
pub(crate) async fn give_back(
    channel: &lapin::Channel,
    consumer: lapin::types::ShortString,
    last_tag: Option<u64>,
) -> lapin::Result<()> {
    channel
        .basic_cancel(consumer, BasicCancelOptions::default())
        .await?;
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(())
}

fn describe(delivery: &Delivery, snapshot: &mut Snapshot) {
    let letter = Arc::new(Letter::of(delivery));
    let kind = delivery
        .properties
        .kind()
        .as_ref()
        .map(|kind| kind.as_str());
    for unpacked in batch::unpack(kind, &delivery.data) {
        match unpacked.job {
            Ok(job) => snapshot.rows.push(Row::of(&job, &letter)),
            Err(_) => snapshot.unreadable += 1,
        }
    }
}

//! Group commit in the chat-system: writes that arrive together share one
//! transaction.
//!
//! Every write (a bulk request of the workers, a single `PUT`) is handed to
//! a queue. `DATABASE_WRITE_LANES` lanes take turns at it: a lane takes
//! every write waiting there, stores their records in one transaction
//! (`writes::transact`), and answers each write with its own records'
//! results, while the next writes gather for the next free lane. No lane
//! waits to fill a transaction: a lone write goes at once. Under load,
//! the workers' concurrent bulk requests become one transaction instead of
//! one each, which is what a transaction costs PostgreSQL most of.
//!
//! Results stay per record, and a record the database refuses for what it
//! holds (a value it cannot hold, a constraint it breaks, a limit it
//! exceeds: `StoreError::Refused`) fails alone: the transaction it was in
//! is split and stored again in halves until the refused record is found,
//! and every other record of the transaction, of whatever worker or
//! application, is stored.

use std::sync::Arc;

use shared::group_commit::{self, Limits, Weight};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::database::{Database, Stored};
use crate::error::StoreError;
use crate::writes::{NewRecord, transact};

/// At most this many records go in one transaction; writes beyond wait for
/// the next.
const MAX_RECORDS: usize = 10_000;

/// One write: its records, and where its results go.
struct Write {
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Vec<Stored>, StoreError>>,
}

/// Hands writes to the lanes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Write>,
}

impl Writer {
    /// Starts `lanes` lanes writing to `database`, each taking up to
    /// `writes` writes into one transaction. They end once every `Writer`
    /// is dropped and the queue is empty.
    pub(crate) fn start(database: Database, lanes: usize, writes: usize) -> Self {
        let (queue, receiver) = mpsc::channel(1024);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(database.clone(), receiver.clone(), writes.max(1)));
        }
        Self { queue }
    }

    /// Stores `records` in a transaction shared with the writes that came
    /// at the same time.
    pub(crate) async fn write(&self, records: Vec<NewRecord>) -> Result<Vec<Stored>, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Write { records, reply }).await.is_err() {
            return Err(StoreError::Starting);
        }
        answer.await.unwrap_or(Err(StoreError::Starting))
    }
}

async fn lane(database: Database, receiver: Arc<Mutex<mpsc::Receiver<Write>>>, writes: usize) {
    let mut taken = Vec::new();
    loop {
        // Whatever is waiting, as long as the transaction stays within
        // bounds: `writes` writes, `MAX_RECORDS` records.
        let limits = Limits {
            count: writes,
            size: MAX_RECORDS,
        };
        let taken_now = group_commit::take_waiting(
            &mut *receiver.lock().await,
            &mut taken,
            limits,
            |write: &Write| Weight {
                count: 1,
                size: write.records.len(),
            },
        )
        .await;
        if taken_now == 0 {
            return;
        }
        commit(&database, std::mem::take(&mut taken)).await;
    }
}

/// Stores the writes' records in one transaction and answers each write.
async fn commit(database: &Database, mut writes: Vec<Write>) {
    let mut records = Vec::new();
    let mut lengths = Vec::with_capacity(writes.len());
    for write in &mut writes {
        lengths.push(write.records.len());
        records.append(&mut write.records);
    }
    tracing::debug!(
        writes = writes.len(),
        records = records.len(),
        "transaction"
    );
    match isolating(database, &records).await {
        Ok(results) => {
            let mut results = results.into_iter();
            for (write, length) in writes.into_iter().zip(lengths) {
                let _ = write
                    .reply
                    .send(Ok(results.by_ref().take(length).collect()));
            }
        }
        Err(error) => {
            for write in writes {
                let _ = write.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Stores `records` in one transaction; if the database refuses one of
/// them, stores the halves apart, down to the record it refuses, which
/// alone gets the refusal.
async fn isolating(database: &Database, records: &[NewRecord]) -> Result<Vec<Stored>, StoreError> {
    match transact(database, records).await {
        Err(error @ StoreError::Refused(_)) if records.len() == 1 => Ok(vec![Err(error)]),
        Err(StoreError::Refused(_)) => {
            let (first, second) = records.split_at(records.len() / 2);
            let mut results = Box::pin(isolating(database, first)).await?;
            results.extend(Box::pin(isolating(database, second)).await?);
            Ok(results)
        }
        other => other,
    }
}

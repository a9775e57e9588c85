//! `Store`: what the routes are given: the [`Database`] the reads run on,
//! and the [`Writer`] every write goes through.

use crate::database::{Database, Outcome, Stored};
use crate::error::StoreError;
use crate::writer::Writer;
use crate::writes::NewRecord;

/// The database and its writer; cheap to clone.
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

    /// The database, for the reads and the application writes (which are
    /// not records and need no group commit).
    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// Stores `records`, sharing a transaction with the writes that come at
    /// the same time ([`Writer`]): a result per record, in order.
    pub(crate) async fn store(&self, records: Vec<NewRecord>) -> Result<Vec<Stored>, StoreError> {
        self.writer.write(records).await
    }

    /// Stores one record through the batch path: its result, or the
    /// batch's error.
    pub(crate) async fn store_one(&self, record: NewRecord) -> Result<Outcome, StoreError> {
        let mut results = self.store(vec![record]).await?;
        results.pop().expect("one result per record")
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.database.pool()?)
            .await?;
        Ok(())
    }
}

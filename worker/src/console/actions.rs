//! What an operator does to dead letters: replay (back to the jobs
//! exchange, attempts reset) or discard (to `{prefix}.discarded`, kept for
//! the retention), of the letters picked by id or of every letter a filter
//! matches.
//!
//! An action reads the queue once through, as `worker replay` does, and
//! moves each chosen job through the same confirmed path
//! ([`Run::settle`](crate::replay)): a letter leaves the dead-letter queue
//! only after its copies are confirmed. The letters it does not take are
//! held unacknowledged until the end and then all returned, so a second
//! console or a `worker replay` running meanwhile never gets a letter this
//! one holds: nothing is moved twice, nothing lost.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use shared::amqp::connection::connect;
use shared::amqp::topology::depth;

use super::letters::{Filter, Letter, Row, give_back, prefetch_for, wait_for};
use super::state::State;
use crate::replay::{Destination, Run, counted_again};

/// Letters settled at once: their re-publishes awaited together.
const IN_FLIGHT: usize = 64;

/// What an action takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    /// The jobs of these ids.
    #[serde(default)]
    pub(crate) ids: Vec<String>,
    /// Every job this filter matches (when no ids are given).
    pub(crate) filter: Option<Filter>,
}

impl Selection {
    /// No ids and no filter: nothing to act on.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.filter.is_none()
    }

    /// How the audit line shows it.
    pub(crate) fn describe(&self) -> String {
        match &self.filter {
            Some(filter) if self.ids.is_empty() => format!("matching {}", filter.describe()),
            _ => format!("{} ids", self.ids.len()),
        }
    }
}

/// What an action did.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Done {
    /// Letters in the queue when it started.
    pub(crate) found: usize,
    /// Jobs the selection matched among the letters read.
    pub(crate) matched: usize,
    /// Jobs replayed or discarded.
    pub(crate) moved: usize,
}

enum Choice {
    Ids(HashSet<String>),
    Matching(Filter),
}

/// Moves what `selection` picks to `destination`. An empty selection (no
/// ids, no filter) is refused: "everything" is a filter with no field.
pub(crate) async fn act(
    state: &State,
    destination: Destination,
    selection: &Selection,
) -> anyhow::Result<Done> {
    let choice = match (&selection.filter, selection.ids.is_empty()) {
        (_, false) => Choice::Ids(selection.ids.iter().cloned().collect()),
        (Some(filter), true) => Choice::Matching(filter.clone().normalized()),
        (None, true) => anyhow::bail!("nothing selected"),
    };
    // The console's last read must be back in the queue first.
    state.letters.returned().await;
    let queue = state.topology.dead_queue();
    let connection = connect(&state.config.broker.amqp_url, "worker-console-action").await?;
    let channel = connection.create_channel().await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let found = depth(&channel, &queue).await?.0;
    let run = Run {
        config: &state.config,
        topology: &state.topology,
        publisher: &publisher,
        dry_run: false,
        destination,
    };
    let mut done = Done {
        found: found as usize,
        ..Done::default()
    };
    let mut consumer_tag = None;
    let mut held = 0;
    // The highest tag of a letter held back: one `nack` returns them all
    // (every letter below it is held or already acknowledged).
    let mut last_held = None;
    let outcome = async {
        if found == 0 {
            return anyhow::Ok(());
        }
        channel
            .basic_qos(prefetch_for(found), BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumer_tag = Some(consumer.tag());
        let mut read = 0;
        let mut settling = FuturesUnordered::new();
        let wanted = match &choice {
            Choice::Ids(ids) => Some(ids.len()),
            Choice::Matching(_) => None,
        };
        loop {
            let all_found = wanted.is_some_and(|wanted| done.matched >= wanted);
            let reading = read < found && !all_found;
            if !reading && settling.is_empty() {
                break;
            }
            tokio::select! {
                next = tokio::time::timeout(wait_for(read as usize), consumer.next()), if reading && settling.len() < IN_FLIGHT => {
                    let Ok(Some(delivery)) = next else {
                        // Idle: the rest is held by another reader.
                        read = found;
                        continue;
                    };
                    let delivery = delivery?;
                    read += 1;
                    let letter = Arc::new(Letter::of(&delivery));
                    let choice = &choice;
                    let run = &run;
                    settling.push(async move {
                        let choose = |job: &shared::job::Job| match choice {
                            Choice::Ids(ids) => ids.contains(&job.id.to_string()),
                            Choice::Matching(filter) => filter.matches(&Row::of(job, &letter)),
                        };
                        run.settle(delivery, &choose, None, &mut std::io::sink()).await
                    });
                }
                Some(settled) = settling.next(), if !settling.is_empty() => {
                    let settled = settled?;
                    done.matched += settled.matched;
                    done.moved += settled.moved;
                    if let Some(kept) = settled.kept {
                        held += 1;
                        last_held = last_held.max(Some(kept.delivery_tag));
                    }
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    // The letters not taken go back at once; after an error, closing the
    // connection returns whatever else is unacknowledged.
    if let Some(consumer) = consumer_tag
        && outcome.is_ok()
    {
        give_back(&channel, consumer, last_held).await?;
        if last_held.is_some() {
            counted_again(&channel, &queue, held).await?;
        }
    }
    connection.close(200, "action done".into()).await?;
    outcome.map(|()| done)
}

//! The acknowledgements of one consume channel, batched.
//!
//! A job is acknowledged as soon as it is done, but a run of done jobs
//! travels in one `basic.ack` with `multiple`: once every earlier delivery
//! is settled, the highest tag of the run acknowledges them all. Under load
//! that turns one broker command per job into one per handful (for a
//! quorum queue, one Raft command instead of many). A requeue goes out
//! alone and at once, and then counts as settled.
//!
//! An ack is still sent only for jobs that are done: `multiple` covers a
//! tag only when every tag below it is done or was requeued.
//!
//! Done jobs held back behind a slow one still count against the prefetch
//! window, so at most `hold` of them wait (half of `WORKER_PREFETCH`, so
//! the other half keeps deliveries coming). Past that they
//! are acknowledged one by one, and one slow job cannot starve the worker
//! of deliveries.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;

use crate::handler::requeue;

#[derive(Default)]
struct Tags {
    /// Taken by the consume loop, not yet done.
    open: BTreeSet<u64>,
    /// Done, waiting for every earlier delivery to be settled.
    done: BTreeSet<u64>,
    /// How many done tags may wait behind an open one.
    hold: usize,
}

/// What to acknowledge now.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    /// Acknowledge every tag up to this one (`multiple`).
    run: Option<u64>,
    /// Acknowledge each of these alone.
    singles: Vec<u64>,
}

impl Tags {
    fn finish(&mut self, tag: u64) {
        self.open.remove(&tag);
        self.done.insert(tag);
    }

    /// Takes out what can be acknowledged: the highest done tag with
    /// nothing open below it (one `multiple` ack covers every done tag up
    /// to it), and, once more than `hold` wait behind an open one, those.
    fn due(&mut self) -> Due {
        let floor = self.open.first().copied().unwrap_or(u64::MAX);
        let run = self.done.range(..floor).next_back().copied();
        if let Some(highest) = run {
            self.done = self.done.split_off(&(highest + 1));
        }
        let singles = if self.done.len() > self.hold {
            std::mem::take(&mut self.done).into_iter().collect()
        } else {
            Vec::new()
        };
        Due { run, singles }
    }
}

enum Event {
    Done(u64),
    /// A delivery was requeued: the runs behind it may go now.
    Settled,
}

/// Cheap to clone: the consume loop and every job in hand hold one.
#[derive(Clone)]
pub(crate) struct Acks {
    channel: Channel,
    tags: Arc<Mutex<Tags>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// The acks of `channel`, and the future that sends them. It ends once
    /// every clone of `Acks` is dropped and what was done is acknowledged.
    /// `hold`: how many done jobs may wait behind a slow one (see the
    /// module doc).
    pub(crate) fn new(
        channel: Channel,
        hold: usize,
    ) -> (
        Self,
        impl Future<Output = lapin::Result<()>> + Send + 'static,
    ) {
        let tags = Arc::new(Mutex::new(Tags {
            hold,
            ..Tags::default()
        }));
        let (events, receiver) = mpsc::unbounded_channel();
        let acks = Self {
            channel: channel.clone(),
            tags: tags.clone(),
            events,
        };
        (acks, send(channel, tags, receiver))
    }

    /// A delivery was taken: nothing after it is acknowledged past it until
    /// it is settled. Call in delivery order, before its job starts.
    pub(crate) fn taken(&self, tag: u64) -> Taken {
        self.tags.lock().expect("acks lock").open.insert(tag);
        Taken {
            acks: self.clone(),
            tag,
            settled: false,
        }
    }

    /// Puts the delivery back on its queue, now.
    async fn requeue(&self, tag: u64) -> lapin::Result<()> {
        let nacked = self.channel.basic_nack(tag, requeue()).await;
        // Settled either way: if the nack failed, the channel is gone and
        // the broker requeues every unacknowledged delivery of it.
        self.tags.lock().expect("acks lock").open.remove(&tag);
        let _ = self.events.send(Event::Settled);
        nacked
    }
}

/// A taken delivery, to be settled exactly once. Dropped unsettled (its
/// job was abandoned or panicked) it is requeued, so it cannot hold back
/// the acks of the deliveries after it.
pub(crate) struct Taken {
    acks: Acks,
    tag: u64,
    settled: bool,
}

impl Taken {
    /// The job is done: acknowledge it, perhaps with others.
    pub(crate) fn done(mut self) {
        self.settled = true;
        let _ = self.acks.events.send(Event::Done(self.tag));
    }

    /// Puts the delivery back on its queue, now.
    pub(crate) async fn requeue(mut self) -> lapin::Result<()> {
        self.settled = true;
        self.acks.requeue(self.tag).await
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if !self.settled {
            let (acks, tag) = (self.acks.clone(), self.tag);
            tokio::spawn(async move { acks.requeue(tag).await });
        }
    }
}

async fn send(
    channel: Channel,
    tags: Arc<Mutex<Tags>>,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> lapin::Result<()> {
    let mut batch = Vec::new();
    while events.recv_many(&mut batch, 1024).await > 0 {
        let due = {
            let mut tags = tags.lock().expect("acks lock");
            for event in batch.drain(..) {
                if let Event::Done(tag) = event {
                    tags.finish(tag);
                }
            }
            tags.due()
        };
        if let Some(tag) = due.run {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
        }
        for &tag in &due.singles {
            channel.basic_ack(tag, BasicAckOptions::default()).await?;
        }
        let sent = due.singles.len() + usize::from(due.run.is_some());
        metrics::counter!("worker_acks_sent_total").increment(sent as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Due, Tags};

    fn taken(tags: &[u64], hold: usize) -> Tags {
        Tags {
            open: tags.iter().copied().collect(),
            hold,
            ..Tags::default()
        }
    }

    fn run(tag: u64) -> Due {
        Due {
            run: Some(tag),
            singles: Vec::new(),
        }
    }

    #[test]
    fn a_run_is_acknowledged_only_once_everything_before_it_is_settled() {
        let mut tags = taken(&[1, 2, 3, 4], 8);
        tags.finish(2);
        tags.finish(3);
        assert_eq!(tags.due(), Due::default(), "1 is still being stored");
        tags.finish(1);
        assert_eq!(tags.due(), run(3), "one ack for 1, 2 and 3");
        assert_eq!(tags.due(), Due::default(), "nothing twice");
        tags.finish(4);
        assert_eq!(tags.due(), run(4));
    }

    #[test]
    fn a_requeued_delivery_does_not_hold_back_the_ones_after_it() {
        let mut tags = taken(&[1, 2, 3], 8);
        tags.finish(1);
        tags.finish(3);
        assert_eq!(tags.due(), run(1), "2 is open: 3 waits");
        tags.open.remove(&2); // requeued, so settled
        assert_eq!(tags.due(), run(3));
    }

    #[test]
    fn a_slow_job_holds_back_at_most_hold_acks() {
        let mut tags = taken(&[1, 2, 3, 4, 5], 2);
        tags.finish(2);
        tags.finish(3);
        assert_eq!(tags.due(), Due::default(), "two may wait behind 1");
        tags.finish(4);
        assert_eq!(
            tags.due(),
            Due {
                run: None,
                singles: vec![2, 3, 4]
            },
            "a third would eat into the prefetch"
        );
        tags.finish(1);
        assert_eq!(tags.due(), run(1), "2, 3 and 4 are acknowledged already");
        tags.finish(5);
        assert_eq!(tags.due(), run(5));
    }
}

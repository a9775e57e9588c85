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
}

enum Event {
    Done(u64),
    /// A delivery was requeued: the runs behind it may go now.
    Settled,
}

/// Cheap to clone: the consume loop and every job in hand hold one.
#[derive(Clone)]
pub(crate) struct Acks {
    tags: Arc<Mutex<Tags>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// The acks of `channel`, and the future that sends them. It ends once
    /// every clone of `Acks` is dropped and what was done is acknowledged.
    pub(crate) fn new(
        channel: Channel,
    ) -> (
        Self,
        impl Future<Output = lapin::Result<()>> + Send + 'static,
    ) {
        let tags = Arc::new(Mutex::new(Tags::default()));
        let (events, receiver) = mpsc::unbounded_channel();
        (
            Self {
                tags: tags.clone(),
                events,
            },
            send(channel, tags, receiver),
        )
    }

    /// A delivery was taken: nothing after it is acknowledged past it until
    /// it is settled. Call in delivery order, before its job starts.
    pub(crate) fn taken(&self, tag: u64) {
        self.tags.lock().expect("acks lock").open.insert(tag);
    }

    /// The job of `tag` is done: acknowledge it, perhaps with others.
    pub(crate) fn done(&self, tag: u64) {
        let _ = self.events.send(Event::Done(tag));
    }

    /// Puts the delivery back on its queue, now.
    pub(crate) async fn requeue(&self, channel: &Channel, tag: u64) -> lapin::Result<()> {
        let nacked = channel.basic_nack(tag, requeue()).await;
        // Settled either way: if the nack failed, the channel is gone and
        // the broker requeues every unacknowledged delivery of it.
        self.tags.lock().expect("acks lock").open.remove(&tag);
        let _ = self.events.send(Event::Settled);
        nacked
    }
}

async fn send(
    channel: Channel,
    tags: Arc<Mutex<Tags>>,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> lapin::Result<()> {
    let mut batch = Vec::new();
    while events.recv_many(&mut batch, 1024).await > 0 {
        let highest = {
            let mut tags = tags.lock().expect("acks lock");
            for event in batch.drain(..) {
                if let Event::Done(tag) = event {
                    tags.open.remove(&tag);
                    tags.done.insert(tag);
                }
            }
            let floor = tags.open.first().copied().unwrap_or(u64::MAX);
            let highest = tags.done.range(..floor).next_back().copied();
            if let Some(highest) = highest {
                tags.done = tags.done.split_off(&(highest + 1));
            }
            highest
        };
        if let Some(tag) = highest {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await?;
            metrics::counter!("worker_acks_sent_total").increment(1);
        }
    }
    Ok(())
}

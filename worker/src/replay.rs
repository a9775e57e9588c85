//! Bringing dead letters home: `worker replay` re-publishes dead-lettered
//! jobs to the jobs exchange with their attempts reset, and `worker
//! dead-letters` lists them.
//!
//! Each replayed job leaves the dead-letter queue (is acknowledged) only
//! after its re-publish was confirmed, so a crash mid-replay loses nothing
//! and at worst replays a job twice, which storing absorbs.
//!
//! A run reads at most as many letters as the queue held when it started:
//! a replayed job that fails again at once comes back to the tail while
//! the run goes on, and must not keep it going forever. Letters it does not
//! take (filtered out, unreadable, or a dry run) are held unacknowledged,
//! so the read moves past them, and returned in place at the end; at most
//! [`MAX_HELD`] of them. Past that, a replay moves the letters it passes
//! over to the tail (re-published as they are, confirmed, then
//! acknowledged), and a listing stops and says how many it did not show.

use std::io::Write;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use shared::amqp::batch;
use shared::amqp::connection::connect;
use shared::amqp::headers::{
    self, ATTEMPTS, DISCARDED_AT_MS, FIRST_DEATH_REASON, JOBS, LAST_ERROR, REASON,
};
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{ROUTING_KEY, Topology, depth};
use shared::job::{Job, Record};
use shared::telemetry::short_token;

use crate::config::{Config, Selection};

/// Most letters a run holds back unacknowledged.
pub const MAX_HELD: usize = 10_000;

/// A progress line goes to standard error every this many letters.
const PROGRESS_EVERY: usize = 1000;

/// Counts of one run. A letter holds one job, or the jobs of a batch the
/// broker dead-lettered whole; all but `found` count jobs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Letters in the queue when the run started: the most it reads.
    pub found: usize,
    /// Jobs that passed the filter (listed, or replayed).
    pub matched: usize,
    /// Re-published and removed from the dead-letter queue.
    pub replayed: usize,
    /// Filtered out, left in the queue.
    pub skipped: usize,
    /// Not a readable job, left in the queue.
    pub unreadable: usize,
    /// A listing that reached [`MAX_HELD`] and stopped: letters not shown.
    pub not_shown: usize,
}

/// The command: prints one line per dead letter taken and a summary. Each
/// line is written on its own: standard output is never held locked while
/// the broker is waited for (the log writes there too).
pub async fn run(config: &Config, filter: &Selection, list_only: bool) -> anyhow::Result<()> {
    let dry_run = list_only || filter.dry_run;
    let report = replay(config, filter, dry_run, &mut std::io::stdout()).await?;
    let verb = if dry_run { "would replay" } else { "replayed" };
    let done = if dry_run {
        report.matched
    } else {
        report.replayed
    };
    println!(
        "{verb} {done} of {} matching dead-lettered jobs ({} filtered out, {} unreadable, left in the queue; {} letters in the queue at the start)",
        report.matched, report.skipped, report.unreadable, report.found
    );
    if report.not_shown > 0 {
        println!(
            "{} more not shown: a listing holds at most {MAX_HELD} letters",
            report.not_shown
        );
    }
    Ok(())
}

/// Reads the dead-letter queue once through, up to `filter.limit`
/// matching jobs, writing a line per match to `out`.
pub async fn replay(
    config: &Config,
    filter: &Selection,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<Report> {
    let topology = Topology::new(&config.broker);
    let connection = connect(&config.broker.amqp_url, "worker-replay").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel, &[]).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let found = depth(&channel, &topology.dead_queue()).await?.0 as usize;

    let run = Run {
        config,
        topology: &topology,
        publisher: &publisher,
        dry_run,
        destination: Destination::Jobs,
    };
    let mut report = Report {
        found,
        ..Report::default()
    };
    let mut held: Vec<Delivery> = Vec::new();
    let outcome = async {
        for read in 0..found {
            if filter.limit.is_some_and(|limit| report.matched >= limit) {
                break;
            }
            if dry_run && held.len() >= MAX_HELD {
                report.not_shown = found - read;
                break;
            }
            let Some(message) = channel
                .basic_get(topology.dead_queue().into(), BasicGetOptions::default())
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            let remaining = filter.limit.map(|limit| limit - report.matched);
            run.letter(delivery, filter, remaining, &mut report, &mut held, out)
                .await?;
            if (read + 1) % PROGRESS_EVERY == 0 {
                eprintln!(
                    "{} of {found} read: {} matched, {} replayed, {} left in the queue",
                    read + 1,
                    report.matched,
                    report.replayed,
                    report.skipped + report.unreadable
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    let returned = held.len();
    for delivery in held {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
    }
    counted_again(&channel, &topology.dead_queue(), returned).await?;
    connection.close(200, "replay done".into()).await?;
    outcome.map(|()| report)
}

/// Waits until the queue counts the `returned` letters as ready again. A
/// quorum queue applies a return through its log, after the nack has been
/// sent: a command run right after this one would otherwise find fewer
/// letters than this one left. Gives up after 30 seconds (another
/// reader may have taken them meanwhile); tens of thousands take a
/// quorum queue seconds.
pub(crate) async fn counted_again(
    channel: &lapin::Channel,
    queue: &str,
    returned: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = depth(channel, queue).await?.0 as usize;
        if ready >= returned {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(ready, returned, "returned letters not counted yet");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Where the jobs a pass takes go.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    /// Back to the jobs exchange, attempts reset: a replay.
    Jobs,
    /// To the discarded queue, each copy expiring after `retention`.
    Discarded { retention: std::time::Duration },
}

/// What a run acts with.
pub(crate) struct Run<'a> {
    pub(crate) config: &'a Config,
    pub(crate) topology: &'a Topology,
    pub(crate) publisher: &'a lapin::Channel,
    pub(crate) dry_run: bool,
    pub(crate) destination: Destination,
}

/// What became of one letter: counts of its jobs, and the letter itself
/// when it stays in the queue (for the caller to hold or return).
#[derive(Debug, Default)]
pub(crate) struct Settled {
    pub(crate) matched: usize,
    pub(crate) moved: usize,
    pub(crate) skipped: usize,
    pub(crate) unreadable: usize,
    pub(crate) kept: Option<Delivery>,
}

impl Run<'_> {
    /// One letter of the CLI's run: settled, then held back or moved to
    /// the tail when it stays.
    async fn letter(
        &self,
        delivery: Delivery,
        filter: &Selection,
        remaining: Option<usize>,
        report: &mut Report,
        held: &mut Vec<Delivery>,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let settled = self
            .settle(delivery, &|job| matches(filter, job), remaining, out)
            .await?;
        report.matched += settled.matched;
        report.replayed += settled.moved;
        report.skipped += settled.skipped;
        report.unreadable += settled.unreadable;
        match settled.kept {
            Some(delivery) => self.pass_over(delivery, held).await,
            None => Ok(()),
        }
    }

    /// One letter: each of its jobs (one, or those of a batch the broker
    /// dead-lettered whole) chosen or kept on its own, up to `remaining`
    /// chosen. The chosen go to the run's destination; a batch letter
    /// whose jobs part ways is taken apart, its kept jobs (not chosen,
    /// undecodable) going back to the dead-letter queue as letters of
    /// their own, each with the batch's headers, all confirmed before the
    /// batch letter is acknowledged. A letter with nothing chosen (or a
    /// dry run) is handed back in `kept`, untouched.
    pub(crate) async fn settle(
        &self,
        delivery: Delivery,
        choose: &(dyn Fn(&Job) -> bool + Sync),
        remaining: Option<usize>,
        out: &mut impl Write,
    ) -> anyhow::Result<Settled> {
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str());
        let units = batch::unpack(kind, &delivery.data);
        let mut settled = Settled::default();
        let mut chosen = Vec::new();
        let mut kept = Vec::new();
        for unpacked in &units {
            match &unpacked.job {
                Ok(job) if choose(job) && remaining.is_none_or(|left| chosen.len() < left) => {
                    writeln!(out, "{}", describe(job, &delivery))?;
                    chosen.push(job.clone());
                }
                Ok(_) => {
                    settled.skipped += 1;
                    kept.push(unpacked);
                }
                Err(_) => {
                    settled.unreadable += 1;
                    writeln!(
                        out,
                        "unreadable job ({} bytes), reason {}",
                        unpacked.bytes.len(),
                        reason(&delivery)
                    )?;
                    kept.push(unpacked);
                }
            }
        }
        settled.matched = chosen.len();
        if chosen.is_empty() || self.dry_run {
            drop(units);
            settled.kept = Some(delivery);
            return Ok(settled);
        }
        let timeout = self.config.broker.publish_timeout();
        let letter_headers = split_headers(&delivery);
        let mut messages: Vec<Message> = chosen
            .into_iter()
            .map(|job| self.moved(job, &letter_headers))
            .collect();
        let moving = messages.len();
        messages.extend(kept.iter().map(|unpacked| {
            let properties = match &unpacked.job {
                Ok(job) => publish::job_properties(job),
                Err(_) => publish::json_properties(),
            };
            Message {
                exchange: self.topology.dead_exchange(),
                routing_key: ROUTING_KEY.into(),
                payload: unpacked.bytes.to_vec(),
                properties: with_headers(properties, &letter_headers),
            }
        }));
        let published = futures::future::join_all(
            messages
                .into_iter()
                .map(|message| publish::publish(self.publisher, message, timeout)),
        )
        .await;
        if let Some(Err(error)) = published.into_iter().find(Result::is_err) {
            anyhow::bail!(
                "re-publishing a dead letter's jobs failed, stopping (the letter stays): {error}"
            );
        }
        delivery.ack(BasicAckOptions::default()).await?;
        settled.moved = moving;
        Ok(settled)
    }

    /// The copy of a chosen job its destination gets: a replay with its
    /// attempts reset, a discarded letter with the letter's headers (why
    /// it died) and an expiration.
    fn moved(&self, mut job: Job, letter_headers: &FieldTable) -> Message {
        match &self.destination {
            Destination::Jobs => {
                job.attempt = 0;
                Message {
                    exchange: self.topology.jobs_exchange(),
                    routing_key: ROUTING_KEY.into(),
                    payload: job.encode(),
                    properties: publish::job_properties(&job),
                }
            }
            Destination::Discarded { retention } => {
                let discarded_at = headers::now_ms().to_string();
                let properties = with_headers(publish::job_properties(&job), letter_headers);
                Message {
                    exchange: String::new(),
                    routing_key: self.topology.discarded_queue(),
                    payload: job.encode(),
                    properties: headers::with(properties, &[(DISCARDED_AT_MS, &discarded_at)])
                        .with_expiration(retention.as_millis().to_string().into()),
                }
            }
        }
    }

    /// Leaves a letter in the queue: held back while there is room, else
    /// (a replay) moved to the tail as it is.
    async fn pass_over(&self, delivery: Delivery, held: &mut Vec<Delivery>) -> anyhow::Result<()> {
        if self.dry_run || held.len() < MAX_HELD {
            held.push(delivery);
            return Ok(());
        }
        self.move_to(delivery, self.topology.dead_exchange()).await
    }

    /// Re-publishes a letter as it is to `exchange`, confirmed, then takes
    /// it off the dead-letter queue.
    async fn move_to(&self, delivery: Delivery, exchange: String) -> anyhow::Result<()> {
        let message = Message {
            exchange,
            routing_key: ROUTING_KEY.into(),
            payload: delivery.data.clone(),
            properties: delivery.properties.clone(),
        };
        let timeout = self.config.broker.publish_timeout();
        publish::publish(self.publisher, message, timeout).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

/// `properties` with the letter's headers added.
fn with_headers(properties: lapin::BasicProperties, letter: &FieldTable) -> lapin::BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in letter.inner() {
        headers.insert(name.clone(), value.clone());
    }
    properties.with_headers(headers)
}

/// A letter's headers without those that described it as a batch: what
/// each of its jobs keeps when the letter is taken apart (the worker's
/// `x-reason` and `x-last-error`, the broker's `x-death`).
pub(crate) fn split_headers(delivery: &Delivery) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(all) = delivery.properties.headers() {
        for (name, value) in all.inner() {
            if name.as_str() != JOBS {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers
}

fn matches(filter: &Selection, job: &Job) -> bool {
    filter.kind.is_none_or(|kind| kind == job.kind())
        && filter
            .token
            .as_deref()
            .is_none_or(|token| token == job.token)
}

fn describe(job: &Job, delivery: &Delivery) -> String {
    let number = match &job.record {
        Record::Message { chat, number, .. } => format!("chat {chat} message {number}"),
        Record::Chat { number } => format!("chat {number}"),
        Record::Edit {
            chat,
            message,
            revision,
            ..
        } => format!("chat {chat} message {message} revision {revision}"),
    };
    let headers = delivery.properties.headers().as_ref();
    format!(
        "{} {} token {} {number} reason {} attempts {} last error {}",
        job.id,
        job.kind().as_str(),
        short_token(&job.token),
        reason(delivery),
        headers::get(headers, ATTEMPTS).unwrap_or_else(|| job.attempt.to_string()),
        headers::get(headers, LAST_ERROR).unwrap_or_else(|| "-".into()),
    )
}

/// The worker's `x-reason`, or the broker's own reason for a job it
/// dead-lettered itself (the delivery limit).
pub(crate) fn reason(delivery: &Delivery) -> String {
    let headers = delivery.properties.headers().as_ref();
    headers::get(headers, REASON)
        .or_else(|| headers::get(headers, FIRST_DEATH_REASON))
        .unwrap_or_else(|| "unknown".into())
}

//! Bringing dead letters home: `worker replay` re-publishes dead-lettered
//! jobs to the jobs exchange with their attempts reset, and `worker
//! dead-letters` lists them.
//!
//! Each replayed job leaves the dead-letter queue (is acknowledged) only
//! after its re-publish was confirmed, so a crash mid-replay loses nothing
//! and at worst replays a job twice, which persisting absorbs. Dead letters
//! that are not taken (filtered out, unreadable, or a dry run) are held
//! unacknowledged while the queue is read, so the read moves past them,
//! and returned to the queue at the end, in place.

use std::io::Write;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use shared::job::{Job, Record};
use shared::publish::{self, Message};
use shared::telemetry::short_token;
use shared::topology::{self, ROUTING_KEY, Topology};

use crate::config::{Config, Selection};

/// Counts of one run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Dead letters that passed the filter (listed, or replayed).
    pub matched: usize,
    /// Re-published and removed from the dead-letter queue.
    pub replayed: usize,
    /// Filtered out, left in place.
    pub skipped: usize,
    /// Not a readable job, left in place.
    pub unreadable: usize,
}

/// The command: prints one line per dead letter taken and a summary.
pub async fn run(config: &Config, filter: &Selection, list_only: bool) -> anyhow::Result<()> {
    let dry_run = list_only || filter.dry_run;
    let report = replay(config, filter, dry_run, &mut std::io::stdout().lock()).await?;
    let verb = if dry_run { "would replay" } else { "replayed" };
    let done = if dry_run {
        report.matched
    } else {
        report.replayed
    };
    println!(
        "{verb} {done} of {} matching dead letters ({} filtered out, {} unreadable, left in place)",
        report.matched, report.skipped, report.unreadable
    );
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
    let connection = topology::connect(&config.broker.amqp_url, "worker-replay").await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let mut report = Report::default();
    let mut held: Vec<Delivery> = Vec::new();
    let outcome = async {
        while filter.limit.is_none_or(|limit| report.matched < limit) {
            let Some(message) = channel
                .basic_get(topology.dead_queue().into(), BasicGetOptions::default())
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            let Ok(mut job) = Job::decode(&delivery.data) else {
                report.unreadable += 1;
                writeln!(
                    out,
                    "unreadable payload ({} bytes), reason {}",
                    delivery.data.len(),
                    reason(&delivery)
                )?;
                held.push(delivery);
                continue;
            };
            if !matches(filter, &job) {
                report.skipped += 1;
                held.push(delivery);
                continue;
            }
            report.matched += 1;
            writeln!(out, "{}", describe(&job, &delivery))?;
            if dry_run {
                held.push(delivery);
                continue;
            }
            job.attempt = 0;
            let message = Message {
                exchange: topology.jobs_exchange(),
                routing_key: ROUTING_KEY.into(),
                payload: job.encode(),
                properties: publish::job_properties(&job),
            };
            let timeout = config.broker.publish_timeout();
            if let Err(error) = publish::publish(&publisher, message, timeout).await {
                held.push(delivery);
                anyhow::bail!("re-publishing job {} failed, stopping: {error}", job.id);
            }
            delivery.ack(BasicAckOptions::default()).await?;
            report.replayed += 1;
            if report.replayed % 1000 == 0 {
                eprintln!("replayed {} so far", report.replayed);
            }
        }
        anyhow::Ok(())
    }
    .await;
    for delivery in held {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
    }
    connection.close(200, "replay done".into()).await?;
    outcome.map(|()| report)
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
    };
    let headers = delivery.properties.headers().as_ref();
    format!(
        "{} {} token {} {number} reason {} attempts {} last error {}",
        job.id,
        job.kind().as_str(),
        short_token(&job.token),
        reason(delivery),
        publish::header(headers, "x-attempts").unwrap_or_else(|| job.attempt.to_string()),
        publish::header(headers, "x-last-error").unwrap_or_else(|| "-".into()),
    )
}

/// The worker's `x-reason`, or the broker's own reason for a job it
/// dead-lettered itself (the delivery limit).
fn reason(delivery: &Delivery) -> String {
    let headers = delivery.properties.headers().as_ref();
    publish::header(headers, "x-reason")
        .or_else(|| publish::header(headers, "x-first-death-reason"))
        .unwrap_or_else(|| "unknown".into())
}

//! A batch of deliveries, start to finish: unpack their jobs (a delivery
//! holds one job, or a batch the api gathered), store them all (bulk
//! requests, one Redis round trip), decide each job's fate by its own
//! result, publish the retry and dead-letter copies those fates call for,
//! and say for each delivery whether it may be acknowledged.
//!
//! A delivery is acknowledged only once the fate of every job in it is safe
//! elsewhere: the chat-system stored the record, or the job's retry or
//! dead-letter copy was confirmed by the broker. Jobs, not deliveries, are
//! settled: when some jobs of a delivery are settled and others are not
//! (their copy could not be published), the unsettled ones go back to the
//! jobs exchange as a message of their own (confirmed) and the delivery is
//! acknowledged, so no settled job is handled twice and one job cannot push
//! its neighbours toward the delivery limit. Only when that fails too, or
//! nothing of the delivery was settled, does it go back to the queue whole
//! (nack with requeue); a duplicate is harmless (writes are idempotent), a
//! loss is not. The consume loop batches the acks ([`crate::acks`]).
//!
//! Everything about one job is logged inside its span (`job_id`, `kind`,
//! `token`, `number`, `attempt`, `trace_id`).

use std::time::Duration;

use futures::future::join_all;
use lapin::message::Delivery;
use lapin::options::BasicNackOptions;
use lapin::{BasicProperties, Channel};
use shared::amqp::batch::{self, Unpacked, jobs_message};
use shared::amqp::headers::{self, LAST_ERROR, RELEASE_ATTEMPTS};
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{ROUTING_KEY, Topology};
use shared::job::Job;
use shared::telemetry::{Chain, short_token};
use shared::trace::TraceParent;
use tracing::{Instrument, Span};

use crate::retry::{Attempts, Policy, Reason, Verdict, last_error};
use crate::store::Storage;

/// Longest `x-last-error` kept on a retry copy or a dead letter.
const MAX_ERROR_BYTES: usize = 1024;

/// What became of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Retried,
    DeadLettered(Reason),
    /// Its retry or dead-letter copy could not be published: its delivery
    /// goes back to the jobs queue.
    Requeued,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Retried => "retried",
            Self::DeadLettered(_) => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

/// What became of one delivery's jobs. How the delivery is settled follows
/// from them: acknowledged unless one of them was requeued with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Settled {
    pub(crate) outcomes: Vec<Outcome>,
    /// Its requeued jobs went back as a message of their own.
    pub(crate) requeued_apart: bool,
}

impl Settled {
    pub(crate) fn acknowledged(&self) -> bool {
        self.requeued_apart || !self.outcomes.contains(&Outcome::Requeued)
    }

    /// Some of its jobs are settled and some are not.
    fn partly_settled(&self) -> bool {
        self.outcomes.contains(&Outcome::Requeued)
            && self
                .outcomes
                .iter()
                .any(|outcome| *outcome != Outcome::Requeued)
    }
}

pub(crate) struct Handler {
    pub(crate) storage: Storage,
    pub(crate) policy: Policy,
    pub(crate) topology: Topology,
    /// How long a retry or dead-letter copy may wait for its confirm.
    pub(crate) publish_timeout: Duration,
}

/// One job of a delivery, decoded or not.
struct Unit<'a> {
    delivery: usize,
    unpacked: Unpacked<'a>,
    before: Attempts,
}

impl Handler {
    /// Runs a batch of deliveries up to the point of settling them; the
    /// caller acknowledges (perhaps several at once) or requeues each as
    /// its [`Settled`] says. `publisher` is a confirm-mode channel for the
    /// copies.
    pub(crate) async fn process(
        &self,
        deliveries: &[Delivery],
        publisher: &Channel,
    ) -> Vec<Settled> {
        let units = unpack(deliveries);
        let spans: Vec<(Span, Option<TraceParent>)> = units
            .iter()
            .map(|unit| job_span(unit, &deliveries[unit.delivery]))
            .collect();
        let (jobs, traces): (Vec<&Job>, Vec<Option<TraceParent>>) = units
            .iter()
            .zip(&spans)
            .filter_map(|(unit, (_, trace))| Some((unit.unpacked.job.as_ref().ok()?, *trace)))
            .unzip();
        let span = tracing::debug_span!("batch", deliveries = deliveries.len(), jobs = jobs.len());
        let mut stored = self
            .storage
            .store(&jobs, &traces)
            .instrument(span)
            .await
            .into_iter();

        let settling = units.iter().zip(&spans).map(|(unit, (span, _))| {
            let verdict = match &unit.unpacked.job {
                Ok(_) => {
                    let stored = stored.next().expect("a result per decoded job");
                    self.policy.decide(unit.before, stored)
                }
                Err(error) => Verdict::Dead {
                    reason: Reason::Malformed,
                    error: last_error(error),
                },
            };
            let delivery = &deliveries[unit.delivery];
            self.settle(unit, verdict, delivery, publisher)
                .instrument(span.clone())
        });
        let outcomes = join_all(settling).await;

        let mut settled = vec![Settled::default(); deliveries.len()];
        for (unit, outcome) in units.iter().zip(&outcomes) {
            settled[unit.delivery].outcomes.push(*outcome);
        }
        for (index, delivery_settled) in settled.iter_mut().enumerate() {
            if delivery_settled.partly_settled() {
                let unsettled: Vec<&Unit<'_>> = units
                    .iter()
                    .zip(&outcomes)
                    .filter(|(unit, outcome)| {
                        unit.delivery == index && **outcome == Outcome::Requeued
                    })
                    .map(|(unit, _)| unit)
                    .collect();
                delivery_settled.requeued_apart = self
                    .requeue_apart(&unsettled, &deliveries[index], publisher)
                    .await;
            }
        }
        settled
    }

    /// Publishes `unsettled` jobs of `delivery` to the jobs exchange as a
    /// message of their own (each as it came, its failed releases counted
    /// as before); whether the broker confirmed it.
    async fn requeue_apart(
        &self,
        unsettled: &[&Unit<'_>],
        delivery: &Delivery,
        publisher: &Channel,
    ) -> bool {
        let properties: Vec<BasicProperties> = unsettled
            .iter()
            .map(|unit| match &unit.unpacked.job {
                Ok(job) => publish::job_properties(job),
                Err(_) => publish::json_properties(),
            })
            .collect();
        let jobs: Vec<(&[u8], &BasicProperties)> = unsettled
            .iter()
            .zip(&properties)
            .map(|(unit, properties)| (unit.unpacked.bytes, properties))
            .collect();
        let mut message = jobs_message(self.topology.jobs_exchange(), &jobs);
        let headers = delivery.properties.headers().as_ref();
        if let Some(releases) = headers::get(headers, RELEASE_ATTEMPTS) {
            message.properties =
                headers::with(message.properties, &[(RELEASE_ATTEMPTS, &releases)]);
        }
        match publish::publish(publisher, message, self.publish_timeout).await {
            Ok(()) => {
                tracing::info!(
                    jobs = unsettled.len(),
                    "requeued the unsettled jobs of a delivery apart from the settled ones"
                );
                true
            }
            Err(error) => {
                tracing::warn!(
                    error = %Chain(&error),
                    "could not requeue a delivery's unsettled jobs apart; requeueing it whole"
                );
                false
            }
        }
    }

    /// Carries out a job's verdict: publishes the retry or dead-letter copy
    /// it calls for, and says what became of the job.
    async fn settle(
        &self,
        unit: &Unit<'_>,
        verdict: Verdict,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> Outcome {
        let job = unit.unpacked.job.as_ref().ok();
        let kind = job.map_or("unknown", |job| job.kind().as_str());
        let (message, outcome) = match verdict {
            Verdict::Done => {
                tracing::debug!("job stored");
                return record(kind, Outcome::Stored);
            }
            Verdict::Retry {
                delay,
                wait,
                attempts,
                failure,
            } => {
                let mut job = job.expect("only a decoded job is retried").clone();
                job.attempt = attempts.failed;
                let error = last_error(failure.error());
                tracing::info!(?wait, error, "attempt failed, retrying");
                let properties = publish::job_properties(&job)
                    .with_expiration(wait.as_millis().to_string().into());
                let releases = attempts.releases_failed.to_string();
                let headers = [
                    (LAST_ERROR, truncate(&error, MAX_ERROR_BYTES)),
                    (RELEASE_ATTEMPTS, &releases),
                ];
                let message = Message {
                    exchange: String::new(),
                    routing_key: self.topology.retry_queue(delay),
                    payload: job.encode(),
                    properties: headers::with(properties, &headers),
                };
                (message, Outcome::Retried)
            }
            Verdict::Dead { reason, error } => {
                tracing::warn!(reason = reason.as_str(), error, "job dead-lettered");
                let attempts = job.map_or(1, |job| job.attempt + 1);
                let properties = match job {
                    Some(job) => publish::job_properties(job),
                    None => publish::json_properties()
                        .with_message_id(message_id(&delivery.properties).into()),
                };
                let message = Message {
                    exchange: self.topology.dead_exchange(),
                    routing_key: ROUTING_KEY.into(),
                    // The job as it came: a malformed one byte for byte.
                    payload: unit.unpacked.bytes.to_vec(),
                    properties: headers::dead(
                        properties,
                        reason.as_str(),
                        attempts,
                        truncate(&error, MAX_ERROR_BYTES),
                        headers::now_ms(),
                    ),
                };
                (message, Outcome::DeadLettered(reason))
            }
        };
        match publish::publish(publisher, message, self.publish_timeout).await {
            Ok(()) => {
                if let Outcome::DeadLettered(reason) = outcome {
                    metrics::counter!("worker_dead_letters_total", "reason" => reason.as_str())
                        .increment(1);
                }
                record(kind, outcome)
            }
            Err(error) => {
                tracing::warn!(
                    error = %Chain(&error),
                    "could not publish the job's retry or dead-letter copy; requeueing its delivery"
                );
                record(kind, Outcome::Requeued)
            }
        }
    }
}

fn record(kind: &'static str, outcome: Outcome) -> Outcome {
    metrics::counter!("worker_jobs_total", "kind" => kind, "outcome" => outcome.label())
        .increment(1);
    outcome
}

/// Every job of every delivery, in order.
fn unpack(deliveries: &[Delivery]) -> Vec<Unit<'_>> {
    let mut units = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let kind = delivery
            .properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str());
        let headers = delivery.properties.headers().as_ref();
        let releases_failed = headers::get(headers, RELEASE_ATTEMPTS)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        for unpacked in batch::unpack(kind, &delivery.data) {
            let failed = unpacked.job.as_ref().map_or(0, |job| job.attempt);
            units.push(Unit {
                delivery: index,
                unpacked,
                before: Attempts {
                    failed,
                    releases_failed,
                },
            });
        }
    }
    units
}

/// The span of one job: every log line about it carries these; and the
/// trace context its record carries on to the chat-system (the api's
/// continued by this attempt), when the job came with one.
fn job_span(unit: &Unit<'_>, delivery: &Delivery) -> (Span, Option<TraceParent>) {
    let Ok(job) = &unit.unpacked.job else {
        let span = tracing::info_span!("job", job_id = %message_id(&delivery.properties));
        return (span, None);
    };
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        kind = job.kind().as_str(),
        token = %short_token(&job.token),
        number = job.number(),
        attempt = job.attempt,
        trace_id = tracing::field::Empty,
    );
    let trace = job
        .trace
        .map(|incoming| shared::telemetry::hop(&span, Some(incoming)));
    (span, trace)
}

fn message_id(properties: &BasicProperties) -> String {
    properties
        .message_id()
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |id| id.to_string())
}

pub(crate) fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 3), "é");
    }
}

//! One delivery, start to finish: decode the job, store it, decide its
//! fate, and settle the delivery accordingly.
//!
//! The delivery is acknowledged only once its fate is safe elsewhere: the
//! chat-system stored the record, or the retry or dead-letter copy was
//! confirmed by the broker. If that copy cannot be published, the delivery
//! goes back to the queue (nack with requeue) and is tried again; a
//! duplicate is harmless, a loss is not. The consume loop batches the acks
//! ([`crate::acks`]); [`Handler::handle`] settles a single delivery.
//!
//! Everything about one job is logged inside its span (`job_id`, `kind`,
//! `token`, `attempt`, `trace_id`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{BasicProperties, Channel};
use shared::job::Job;
use shared::publish::{self, Message};
use shared::telemetry::{Chain, short_token};
use shared::topology::{ROUTING_KEY, Topology};
use tracing::{Instrument, Span};

use crate::retry::{Policy, Reason, Verdict, last_error};
use crate::store::Storage;

/// Longest `x-last-error` kept on a retry copy or a dead letter.
const MAX_ERROR_BYTES: usize = 1024;

/// What became of a delivery. How it is settled follows from it: a
/// requeued delivery goes back to its queue, every other one is
/// acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    Retried,
    DeadLettered(Reason),
    /// Put back on the jobs queue: its retry or dead-letter copy could not
    /// be published.
    Requeued,
}

impl Outcome {
    /// Acknowledged (its fate is safe elsewhere), or else requeued.
    pub(crate) fn acknowledged(self) -> bool {
        self != Self::Requeued
    }

    fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Retried => "retried",
            Self::DeadLettered(_) => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

pub(crate) struct Handler {
    pub(crate) storage: Storage,
    pub(crate) policy: Policy,
    pub(crate) topology: Topology,
    /// How long a retry or dead-letter copy may wait for its confirm.
    pub(crate) publish_timeout: Duration,
}

impl Handler {
    /// Runs one delivery and settles it on its own; `publisher` is a
    /// confirm-mode channel for the retry and dead-letter copies.
    pub(crate) async fn handle(
        &self,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> lapin::Result<Outcome> {
        let outcome = self.process(delivery, publisher).await;
        if outcome.acknowledged() {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            delivery.nack(requeue()).await?;
        }
        Ok(outcome)
    }

    /// Runs one delivery up to the point of settling it; the caller
    /// acknowledges (perhaps together with others) or requeues, as the
    /// outcome says.
    pub(crate) async fn process(&self, delivery: &Delivery, publisher: &Channel) -> Outcome {
        let job = Job::decode(&delivery.data);
        let span = match &job {
            Ok(job) => job_span(job),
            Err(_) => tracing::info_span!("job", job_id = %message_id(&delivery.properties)),
        };
        async {
            let kind = job.as_ref().map_or("unknown", |job| job.kind().as_str());
            let outcome = match job {
                Ok(job) => {
                    let stored = self.storage.store(&job).await;
                    let verdict = self.policy.decide(job.attempt, stored);
                    self.settle(Some(&job), verdict, delivery, publisher).await
                }
                Err(error) => {
                    let verdict = Verdict::Dead {
                        reason: Reason::Malformed,
                        error: last_error(&error),
                    };
                    self.settle(None, verdict, delivery, publisher).await
                }
            };
            metrics::counter!("worker_jobs_total", "kind" => kind, "outcome" => outcome.label())
                .increment(1);
            outcome
        }
        .instrument(span)
        .await
    }

    /// Carries out a verdict: publishes the retry or dead-letter copy it
    /// calls for, and says what became of the delivery.
    async fn settle(
        &self,
        job: Option<&Job>,
        verdict: Verdict,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> Outcome {
        let (message, outcome) = match verdict {
            Verdict::Done => {
                tracing::debug!("job stored");
                return Outcome::Stored;
            }
            Verdict::Retry {
                delay,
                wait,
                failure,
            } => {
                let mut job = job.expect("only a decoded job is retried").clone();
                job.attempt += 1;
                let error = last_error(failure.error());
                tracing::info!(?wait, error, "attempt failed, retrying");
                let properties = publish::job_properties(&job)
                    .with_expiration(wait.as_millis().to_string().into());
                let message = Message {
                    exchange: String::new(),
                    routing_key: self.topology.retry_queue(delay),
                    payload: job.encode(),
                    properties: publish::with_headers(
                        properties,
                        &[("x-last-error", truncate(&error, MAX_ERROR_BYTES))],
                    ),
                };
                (message, Outcome::Retried)
            }
            Verdict::Dead { reason, error } => {
                tracing::warn!(reason = reason.as_str(), error, "job dead-lettered");
                metrics::counter!("worker_dead_letters_total", "reason" => reason.as_str())
                    .increment(1);
                let attempts = job.map_or(1, |job| job.attempt + 1).to_string();
                let dead_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis())
                    .to_string();
                let properties = match job {
                    Some(job) => publish::job_properties(job),
                    None => publish::json_properties()
                        .with_message_id(message_id(&delivery.properties).into()),
                };
                let headers = [
                    ("x-reason", reason.as_str()),
                    ("x-attempts", &attempts),
                    ("x-last-error", truncate(&error, MAX_ERROR_BYTES)),
                    ("x-dead-at-ms", &dead_at),
                ];
                let message = Message {
                    exchange: self.topology.dead_exchange(),
                    routing_key: ROUTING_KEY.into(),
                    // The payload as it came: a malformed one byte for byte.
                    payload: delivery.data.clone(),
                    properties: publish::with_headers(properties, &headers),
                };
                (message, Outcome::DeadLettered(reason))
            }
        };
        match publish::publish(publisher, message, self.publish_timeout).await {
            Ok(()) => outcome,
            Err(error) => {
                tracing::warn!(
                    error = %Chain(&error),
                    "could not publish the job's retry or dead-letter copy; requeueing"
                );
                Outcome::Requeued
            }
        }
    }
}

/// The span of one job: every log line about it carries these.
fn job_span(job: &Job) -> Span {
    let span = tracing::info_span!(
        "job",
        job_id = %job.id,
        kind = job.kind().as_str(),
        token = %short_token(&job.token),
        number = job.number(),
        attempt = job.attempt,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace) = job.trace {
        span.record("trace_id", trace.trace_id());
    }
    span
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

//! One delivery, start to finish: decode the job, persist it, decide its
//! fate, and settle the delivery accordingly.
//!
//! The delivery is acknowledged only once its fate is safe elsewhere: the
//! chat-system stored the record, or the retry or dead-letter copy was
//! confirmed by the broker. If that copy cannot be published, the delivery
//! goes back to the queue (nack with requeue) and is tried again; a
//! duplicate is harmless, a loss is not. The consume loop batches the acks
//! ([`crate::acks`]); [`Handler::handle`] settles a single delivery.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use shared::job::Job;
use shared::topology::{ROUTING_KEY, Topology};

use crate::persist::Persister;
use crate::retry::{Failure, Policy, Reason, Verdict};

/// Longest `x-last-error` kept on a dead letter.
const MAX_ERROR_BYTES: usize = 1024;

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Stored,
    Retried,
    DeadLettered(Reason),
    /// Put back on the jobs queue: its retry or dead-letter copy could not
    /// be published, or the worker is stopping.
    Requeued,
}

pub(crate) struct Handler {
    pub(crate) persister: Persister,
    pub(crate) policy: Policy,
    pub(crate) topology: Topology,
}

impl Handler {
    /// Decodes and persists a payload, and decides what to do with it.
    pub(crate) async fn verdict(&self, payload: &[u8]) -> (Option<Job>, Verdict) {
        let job = match Job::decode(payload) {
            Ok(job) => job,
            Err(error) => {
                let verdict = Verdict::Dead {
                    reason: Reason::Malformed,
                    error: error.to_string(),
                };
                return (None, verdict);
            }
        };
        let outcome = self.persister.persist(&job).await;
        if let Err(Failure::Transient(error)) = &outcome {
            tracing::debug!(job_id = %job.id, attempt = job.attempt, error, "attempt failed");
        }
        let verdict = self.policy.decide(job.attempt, outcome);
        (Some(job), verdict)
    }

    /// Runs one delivery and settles it on its own; `publisher` is a
    /// confirm-mode channel for the retry and dead-letter copies.
    pub(crate) async fn handle(
        &self,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> lapin::Result<Handled> {
        let (handled, settle) = self.process(delivery, publisher).await;
        match settle {
            Settle::Ack => delivery.ack(BasicAckOptions::default()).await?,
            Settle::Requeue => delivery.nack(requeue()).await?,
        };
        Ok(handled)
    }

    /// Runs one delivery up to the point of settling it, and says how: the
    /// caller acknowledges (perhaps together with others) or requeues.
    pub(crate) async fn process(
        &self,
        delivery: &Delivery,
        publisher: &Channel,
    ) -> (Handled, Settle) {
        let (job, verdict) = self.verdict(&delivery.data).await;
        let job_id = job
            .as_ref()
            .map(|job| job.id.to_string())
            .unwrap_or_default();
        let kind = job.as_ref().map_or("unknown", |job| job.kind.as_str());
        let copied = match &verdict {
            Verdict::Done => Ok(Handled::Stored),
            Verdict::Retry { delay, wait, error } => {
                let mut job = job.clone().expect("only a decoded job is retried");
                job.attempt += 1;
                let properties = properties(&job_id)
                    .with_expiration(wait.as_millis().to_string().into())
                    .with_headers(headers(&[("x-last-error", error)]));
                let queue = self.topology.retry_queue(*delay);
                publish(publisher, "", &queue, &job.encode(), properties)
                    .await
                    .map(|()| Handled::Retried)
            }
            Verdict::Dead { reason, error } => {
                let attempts = job.as_ref().map_or(1, |job| job.attempt + 1).to_string();
                let dead_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
                    .to_string();
                let headers = headers(&[
                    ("x-reason", reason.as_str()),
                    ("x-attempts", &attempts),
                    ("x-last-error", truncate(error, MAX_ERROR_BYTES)),
                    ("x-dead-at-ms", &dead_at),
                ]);
                let exchange = self.topology.dead_exchange();
                publish(
                    publisher,
                    &exchange,
                    ROUTING_KEY,
                    &delivery.data,
                    properties(&job_id).with_headers(headers),
                )
                .await
                .map(|()| Handled::DeadLettered(*reason))
            }
        };
        match copied {
            Ok(handled) => {
                record(kind, &verdict);
                match &verdict {
                    Verdict::Dead { reason, error } => {
                        tracing::warn!(
                            job_id,
                            reason = reason.as_str(),
                            error,
                            "job dead-lettered"
                        );
                    }
                    Verdict::Retry { wait, error, .. } => {
                        tracing::info!(job_id, ?wait, error, "job retried")
                    }
                    Verdict::Done => tracing::debug!(job_id, "job stored"),
                }
                (handled, Settle::Ack)
            }
            Err(error) => {
                tracing::warn!(job_id, %error, "could not publish the job's retry or dead-letter copy; requeueing");
                (Handled::Requeued, Settle::Requeue)
            }
        }
    }
}

/// How a processed delivery is to be settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Its fate is safe elsewhere (stored, or its copy confirmed).
    Ack,
    /// Back on the jobs queue, to be tried again.
    Requeue,
}

pub(crate) fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

fn record(kind: &'static str, verdict: &Verdict) {
    let outcome = match verdict {
        Verdict::Done => "stored",
        Verdict::Retry { .. } => "retried",
        Verdict::Dead { reason, .. } => {
            metrics::counter!("worker_dead_letters_total", "reason" => reason.as_str())
                .increment(1);
            "dead_lettered"
        }
    };
    metrics::counter!("worker_jobs_total", "kind" => kind, "outcome" => outcome).increment(1);
}

fn properties(job_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(job_id.into())
}

fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(
            ShortString::from(*key),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    table
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

/// A persistent, mandatory publish, confirmed by the broker.
pub(crate) async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            payload,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Refused("unroutable")),
        Confirmation::Nack(_) => Err(PublishError::Refused("nacked")),
        Confirmation::NotRequested => Err(PublishError::Refused("channel not in confirm mode")),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the publish: {0}")]
    Refused(&'static str),
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

//! Taking one record in: draw its number, publish its job, and give the
//! number back if the broker certainly did not take the job. With an
//! `Idempotency-Key`, the key is claimed first and the number and job are
//! recorded under it before the publish (see `idempotency`).
//!
//! The whole sequence runs in a task of its own, so a client that hangs up
//! mid-request cannot cut it short between the draw and the publish, or
//! leave a publisher confirm unawaited. The task runs in the request's
//! span, which gets the job's id and number as soon as they are known.

use std::sync::Arc;
use std::time::Duration;

use shared::job::{Create, Job};
use shared::telemetry::Chain;
use shared::trace::TraceParent;
use tracing::Instrument;

use shared::amqp::publish::PublishError;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::idempotency::{Found, IdempotencyKey, Identity, Keyed};
use crate::numbers::Numbers;
use crate::publisher::Publisher;
use crate::rate_limit::RateLimit;

/// Cheap to clone: every request's task holds one.
#[derive(Clone)]
pub(crate) struct Intake(Arc<Parts>);

pub(crate) struct Parts {
    pub(crate) rate_limit: RateLimit,
    pub(crate) numbers: Numbers,
    pub(crate) publisher: Publisher,
    pub(crate) keyed: Keyed,
    /// How long a request waits for another one with its key.
    pub(crate) key_wait: Duration,
}

impl Intake {
    pub(crate) fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }

    pub(crate) fn numbers(&self) -> &Numbers {
        &self.0.numbers
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.0.publisher
    }

    /// The number of the new record, once its job is confirmed queued.
    /// `trace` is this request's context, carried by the job. An
    /// application over its rate is refused before anything is drawn.
    pub(crate) async fn create(
        &self,
        token: String,
        create: Create,
        trace: TraceParent,
        key: Option<IdempotencyKey>,
    ) -> Result<i64, ApiError> {
        if let Err(retry_after) = self.0.rate_limit.admit(&token) {
            metrics::counter!("api_rate_limited_total").increment(1);
            tokio::time::sleep(self.0.rate_limit.hold).await;
            return Err(ApiError::RateLimited { retry_after });
        }
        let intake = self.clone();
        let run = async move {
            match key {
                None => intake.create_once(token, create, trace).await,
                Some(key) => intake.create_keyed(token, create, trace, key).await,
            }
        };
        tokio::spawn(run.instrument(tracing::Span::current()))
            .await
            .map_err(ApiError::Internal)?
    }

    async fn create_once(
        &self,
        token: String,
        create: Create,
        trace: TraceParent,
    ) -> Result<i64, ApiError> {
        let number = self.numbers().draw(create.scope(&token)).await?;
        let job = job(token, create, number, trace, None);
        let Err(error) = self.publish(&job).await else {
            return Ok(number);
        };
        // Certainly not queued: the number is a gap. Otherwise the
        // publisher sends the job again until it is confirmed.
        if error.never_queued() {
            metrics::counter!("api_numbers_given_back_total", "reason" => error.reason())
                .increment(1);
            self.numbers().give_back_later(job.scope(), number);
        }
        Err(error.into())
    }

    /// A create with an `Idempotency-Key`: the first request with it
    /// creates; a retry gets the first one's number, publishing its job
    /// again unless it is known to be queued.
    async fn create_keyed(
        &self,
        token: String,
        create: Create,
        trace: TraceParent,
        key: IdempotencyKey,
    ) -> Result<i64, ApiError> {
        let keyed = &self.0.keyed;
        let request = create.fingerprint();
        let identity = Identity {
            id: uuid::Uuid::now_v7(),
            created_at_ms: now_ms(),
        };
        let claim = keyed.claim(&token, create.kind(), &key, &request, identity);
        let held = &claim.held;
        let give_up = Instant::now() + self.0.key_wait;
        let mut pause = Duration::from_millis(5);
        let (number, identity) = loop {
            let drawn = self
                .numbers()
                .draw_claiming(create.scope(&token), &claim)
                .await;
            match drawn {
                Ok(Ok(number)) => break (number, identity),
                Err(error) => {
                    keyed.abandon(held).await;
                    return Err(error.into());
                }
                Ok(Err(Found::Republish(number, identity))) => {
                    // The number may have been drawn by an attempt that
                    // failed for want of replicas: answer it only once
                    // they hold it (the claim wrote after the draw).
                    if let Err(error) = self.numbers().settle(&held.key).await {
                        keyed.abandon(held).await;
                        return Err(error.into());
                    }
                    metrics::counter!("api_idempotent_replays_total", "how" => "republished")
                        .increment(1);
                    break (number, identity);
                }
                Ok(Err(Found::Queued(number))) => {
                    metrics::counter!("api_idempotent_replays_total", "how" => "queued")
                        .increment(1);
                    tracing::Span::current().record("number", number);
                    return Ok(number);
                }
                Ok(Err(Found::Mismatch)) => return Err(ApiError::IdempotencyKeyReused),
                Ok(Err(Found::Busy)) if Instant::now() >= give_up => {
                    return Err(ApiError::IdempotencyKeyBusy);
                }
                Ok(Err(Found::Busy)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        };
        let job = job(token, create, number, trace, Some(identity));
        // On failure the number is kept (a retry with the key publishes
        // the job again) and the key left for that retry at once.
        if let Err(error) = self.publish(&job).await {
            keyed.abandon(held).await;
            return Err(error.into());
        }
        // Marked queued after the answer, not before: one Redis write (and
        // its fsync) less on the request's path. Until it lands, a retry
        // finds the key held and waits for it.
        self.numbers().confirm_later(claim.held.key);
        Ok(number)
    }

    async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let published = self.publisher().publish(job).await;
        match &published {
            Ok(()) => tracing::debug!("job queued"),
            Err(error) => {
                metrics::counter!("api_publish_failures_total", "reason" => error.reason())
                    .increment(1);
                tracing::warn!(error = %Chain(error), "publish failed");
            }
        }
        published
    }
}

/// The job of a create whose number is drawn: a new one, or the one an
/// `Idempotency-Key` names (`identity`).
fn job(
    token: String,
    create: Create,
    number: i64,
    trace: TraceParent,
    identity: Option<Identity>,
) -> Job {
    let mut job = Job::new(token, create.numbered(number), Some(trace));
    if let Some(identity) = identity {
        job.id = identity.id;
        job.created_at_ms = identity.created_at_ms;
    }
    record_in_span(&job);
    tracing::debug!("number drawn, publishing its job");
    job
}

fn record_in_span(job: &Job) {
    let span = tracing::Span::current();
    span.record("job_id", tracing::field::display(job.id));
    span.record("number", job.number());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

//! Taking one record in: draw its number, publish its job, and give the
//! number back if the broker certainly did not take the job.
//!
//! The whole sequence runs in a task of its own, so a client that hangs up
//! mid-request cannot cut it short between the draw and the publish, or
//! leave a publisher confirm unawaited. The task runs in the request's
//! span, which gets the job's id and number as soon as they are known.

use std::sync::Arc;

use shared::counters::Scope;
use shared::job::{Job, Record};
use shared::telemetry::Chain;
use shared::trace::TraceParent;
use tracing::Instrument;

use crate::error::ApiError;
use crate::numbers::Numbers;
use crate::publisher::Publisher;

/// What a create request asks for.
#[derive(Debug)]
pub(crate) enum Create {
    Chat,
    Message { chat: i64, body: String },
}

/// Cheap to clone: every request's task holds one.
#[derive(Clone)]
pub(crate) struct Intake(Arc<Parts>);

pub(crate) struct Parts {
    pub(crate) numbers: Numbers,
    pub(crate) publisher: Publisher,
}

impl Intake {
    pub(crate) fn new(numbers: Numbers, publisher: Publisher) -> Self {
        Self(Arc::new(Parts { numbers, publisher }))
    }

    pub(crate) fn numbers(&self) -> &Numbers {
        &self.0.numbers
    }

    pub(crate) fn publisher(&self) -> &Publisher {
        &self.0.publisher
    }

    /// The number of the new record, once its job is confirmed queued.
    /// `trace` is this request's context, carried by the job.
    pub(crate) async fn create(
        &self,
        token: String,
        create: Create,
        trace: TraceParent,
    ) -> Result<i64, ApiError> {
        let intake = self.clone();
        let run = async move { intake.run(token, create, trace).await };
        tokio::spawn(run.instrument(tracing::Span::current()))
            .await
            .map_err(ApiError::Internal)?
    }

    async fn run(
        &self,
        token: String,
        create: Create,
        trace: TraceParent,
    ) -> Result<i64, ApiError> {
        let scope = match &create {
            Create::Chat => Scope::Chats { token: &token },
            Create::Message { chat, .. } => Scope::Messages {
                token: &token,
                chat: *chat,
            },
        };
        let number = self.numbers().draw(scope).await?;
        let record = match create {
            Create::Chat => Record::Chat { number },
            Create::Message { chat, body } => Record::Message { chat, number, body },
        };
        let job = Job::new(token, record, Some(trace));
        let span = tracing::Span::current();
        span.record("job_id", tracing::field::display(job.id));
        span.record("number", number);
        tracing::debug!("number drawn, publishing its job");

        let Err(error) = self.publisher().publish(&job).await else {
            tracing::debug!("job queued");
            return Ok(number);
        };
        metrics::counter!("api_publish_failures_total", "reason" => error.reason()).increment(1);
        tracing::warn!(
            error = %Chain(&error),
            "publish failed"
        );
        if error.never_queued()
            && let Err(give_back_error) = self.numbers().give_back(job.scope(), number).await
        {
            // The number stays in flight: its counter will not expire,
            // which is safe, merely kept longer than needed.
            tracing::warn!(
                error = %Chain(&give_back_error),
                "could not give the number back"
            );
        }
        Err(error.into())
    }
}

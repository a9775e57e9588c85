//! Taking one record in: draw its number, publish its job, and settle the
//! number if the broker definitely refused the job.
//!
//! The whole sequence runs in a task of its own, so a client that hangs up
//! mid-request cannot cut it short between the draw and the publish, or
//! leave a publisher confirm unawaited.

use std::sync::Arc;

use shared::counters::Scope;
use shared::job::Job;

use crate::error::ApiError;
use crate::numbers::Numbers;
use crate::publisher::{PublishError, Publisher};

/// What a create request asks for.
#[derive(Debug)]
pub(crate) enum Record {
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
    pub(crate) async fn create(&self, token: String, record: Record) -> Result<i64, ApiError> {
        let intake = self.clone();
        tokio::spawn(async move { intake.run(token, record).await })
            .await
            .map_err(|error| ApiError::Internal(format!("intake task failed: {error}")))?
    }

    async fn run(&self, token: String, record: Record) -> Result<i64, ApiError> {
        let scope = match &record {
            Record::Chat => Scope::Chats { token: &token },
            Record::Message { chat, .. } => Scope::Messages {
                token: &token,
                chat: *chat,
            },
        };
        let number = self.numbers().draw(scope).await?;
        let job = match record {
            Record::Chat => Job::chat(token.clone(), number),
            Record::Message { chat, body } => Job::message(token.clone(), chat, number, body),
        };
        let Err(error) = self.publisher().publish(&job).await else {
            return Ok(number);
        };
        metrics::counter!("api_publish_failures_total", "reason" => error.reason()).increment(1);
        tracing::warn!(
            job_id = %job.id,
            token = %shared::telemetry::short_token(&token),
            number,
            %error,
            "publish failed"
        );
        if matches!(error, PublishError::NotSent | PublishError::Refused(_))
            && let Err(give_back_error) = self.numbers().give_back(job.scope(), number).await
        {
            // The number stays in flight: its counter will not expire,
            // which is safe, merely kept longer than needed.
            tracing::warn!(%give_back_error, number, "could not give the number back");
        }
        Err(error.into())
    }
}

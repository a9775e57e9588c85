//! `ApiError`: every way a request can fail, and the status it answers.
//! Bad input is a 4xx decided before any number is drawn; a dependency
//! that cannot be reached is a 503 with `Retry-After`, its cause kept as
//! the error's source for the log line and never shown to the client.

use warp::http::StatusCode;
use warp::reply::Response;

/// A cause kept for the log.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("unknown application")]
    UnknownApplication,
    #[error("unknown chat")]
    UnknownChat,
    /// An edit of a message number never handed out.
    #[error("unknown message")]
    UnknownMessage,
    /// A path the api does not serve.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// An `Idempotency-Key` sent before with another request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyKeyReused,
    /// Another request with the `Idempotency-Key` is still at work.
    #[error("a request with this Idempotency-Key is in progress, retry later")]
    IdempotencyKeyBusy,
    /// The application is over `RATE_LIMIT_PER_APPLICATION`.
    #[error("too many requests for this application, retry later")]
    RateLimited { retry_after: std::time::Duration },
    /// A dependency is down or too slow; the client should retry.
    #[error("{dependency} unavailable, retry later")]
    Unavailable {
        dependency: &'static str,
        #[source]
        cause: Cause,
    },
    /// A bug: the task taking the record in panicked.
    #[error("internal error")]
    Internal(#[source] tokio::task::JoinError),
}

impl ApiError {
    pub(crate) fn unavailable(dependency: &'static str, cause: impl Into<Cause>) -> Self {
        Self::Unavailable {
            dependency,
            cause: cause.into(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnknownApplication
            | Self::UnknownChat
            | Self::UnknownMessage
            | Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyKeyBusy => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The reply; the cause of a 5xx goes to the log (with its source
    /// chain), not to the client.
    pub(crate) fn into_response(self) -> Response {
        let error = shared::telemetry::Chain(&self);
        match &self {
            Self::Unavailable { dependency, .. } => {
                tracing::warn!(dependency, error = %error, "answering 503")
            }
            Self::Internal(_) => tracing::error!(error = %error, "answering 500"),
            _ => {}
        }
        let mut response = shared::http::error(self.status(), &self);
        if let Self::RateLimited { retry_after } = self {
            // Whole seconds, at least one (RFC 9110 delay-seconds).
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

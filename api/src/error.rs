//! `ApiError`: every way a request can fail, and the status it answers.
//! Bad input is a 4xx decided before any number is drawn; a dependency
//! that cannot be reached is a 503 with `Retry-After`.

use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("unknown application")]
    UnknownApplication,
    #[error("unknown chat")]
    UnknownChat,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// A dependency is down or too slow; the client should retry.
    #[error("{dependency} unavailable, retry later")]
    Unavailable {
        dependency: &'static str,
        reason: String,
    },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn unavailable(dependency: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            dependency,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnknownApplication | Self::UnknownChat => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The reply; the cause of a 5xx goes to the log, not to the client.
    pub(crate) fn into_response(self) -> Response {
        match &self {
            Self::Unavailable { dependency, reason } => {
                tracing::warn!(dependency, reason, "answering 503")
            }
            Self::Internal(reason) => tracing::error!(reason, "answering 500"),
            _ => {}
        }
        shared::http::error(self.status(), &self)
    }
}

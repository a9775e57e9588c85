//! `ApiError`: everything a chat-system request can fail with, and the
//! status each one answers. Storage failures are sorted here, once, into
//! "PostgreSQL is unreachable" (503, retry later) and bugs (500, logged).

use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database is not ready yet")]
    Starting,
    #[error("internal error")]
    Internal(#[source] sqlx::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else if is_bad_data(&error) {
            // The routes check their input; this is the safety net for text
            // PostgreSQL refuses that they did not foresee.
            tracing::warn!(%error, "input refused by the database");
            Self::BadRequest("input the database cannot store".into())
        } else {
            Self::Internal(error)
        }
    }
}

/// Class 22, data exceptions: the value itself was refused.
fn is_bad_data(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")))
}

/// Errors that mean "PostgreSQL cannot be reached or is restarting", as
/// opposed to a query the database rejected.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 is connection exceptions, 57P0x an administrator or
        // crash shutdown, 53300 too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    }
}

impl ApiError {
    pub(crate) fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(error) => {
                tracing::warn!(%error, "database unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(error) => {
                tracing::error!(?error, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        shared::http::error(status, self)
    }
}

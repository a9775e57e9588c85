//! The chat-system's two error types: `StoreError`, what storage can fail
//! with (sorted here, once, from `sqlx`'s errors into "PostgreSQL is
//! unreachable", "the value was refused" and bugs), and `HttpError`, what
//! a request can fail with, mapped to its status in one place.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::Response;

/// What was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    Application,
    Chat,
    Message,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Application => "application",
            Self::Chat => "chat",
            Self::Message => "message",
        })
    }
}

/// How a storage call failed. Cheap to clone: a failed transaction of
/// several requests answers each of them.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("unknown {0}")]
    NotFound(Missing),
    /// The number is taken by another body; the stored row is unchanged.
    #[error("message {number} of chat {chat} already exists with a different body")]
    Conflict { chat: i64, number: i64 },
    /// The revision is stored with another body; the stored row is
    /// unchanged.
    #[error(
        "revision {revision} of message {message} of chat {chat} is stored with a different body"
    )]
    RevisionConflict {
        chat: i64,
        message: i64,
        revision: i64,
    },
    /// A search ran past `SEARCH_TIMEOUT_MS` and was cancelled.
    #[error("the search took too long")]
    SearchTimedOut,
    /// The schema is not in place yet (the service just started).
    #[error("database is not ready yet")]
    Starting,
    #[error("database unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// PostgreSQL refused the record for what it holds (a data exception,
    /// a constraint, a size limit): the routes check their input, this is
    /// the safety net for what they did not foresee. It fails that record
    /// alone (see `writer.rs`); storing it again would fail the same way.
    #[error("the database refused this record: {}", database_message(.0))]
    Refused(#[source] Arc<sqlx::Error>),
    #[error("database error")]
    Internal(#[source] Arc<sqlx::Error>),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(Arc::new(error))
        } else if is_bad_data(&error) {
            Self::Refused(Arc::new(error))
        } else {
            Self::Internal(Arc::new(error))
        }
    }
}

/// Errors the record's own data causes, which no retry can cure: class 22
/// (data exceptions: a value out of range, an invalid byte sequence),
/// class 23 (a constraint the record breaks) and class 54 (a program limit
/// the record exceeds, such as a `tsvector` over 1 MiB or an index row too
/// large).
fn is_bad_data(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| {
        code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
    }))
}

/// PostgreSQL's own words for a refusal (no values of the row: those are in
/// its DETAIL, which is not shown).
fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    }
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
        // crash shutdown, 53300 too many connections, class 40 a rolled
        // back transaction (a deadlock or serialization failure): each is
        // worth trying again.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "53300"
                || code.starts_with("40")
        }),
        _ => false,
    }
}

impl StoreError {
    /// The HTTP status this failure answers.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::RevisionConflict { .. } => StatusCode::CONFLICT,
            Self::Refused(_) => StatusCode::BAD_REQUEST,
            Self::Starting | Self::Unavailable(_) | Self::SearchTimedOut => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Logs what the operator must see (the cause chain goes to the log,
    /// not to the client).
    pub(crate) fn log(&self) {
        let error = shared::telemetry::Chain(self);
        match self {
            Self::Unavailable(_) => tracing::warn!(error = %error, "database unavailable"),
            Self::Refused(_) => tracing::warn!(error = %error, "input refused by the database"),
            Self::Internal(_) => tracing::error!(error = %error, "request failed"),
            Self::SearchTimedOut => tracing::warn!(error = %error, "search cancelled"),
            Self::NotFound(_)
            | Self::Conflict { .. }
            | Self::RevisionConflict { .. }
            | Self::Starting => {}
        }
    }
}

/// How a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// A write or admin route without its credential.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HttpError {
    pub(crate) fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Store(error) => {
                error.log();
                error.status()
            }
        };
        let challenge = matches!(self, Self::Unauthorized(_));
        let mut response = shared::http::error(status, self);
        if challenge {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer realm=\"chat-system\""),
            );
        }
        response
    }
}

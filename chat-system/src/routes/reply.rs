//! Shaping answers: a handler's result as a response, a write's outcome as
//! its status.

use warp::http::StatusCode;
use warp::reply::Response;

use crate::database::Outcome;
use crate::error::HttpError;

/// The handler's response, or its error's (status and JSON body).
pub(crate) fn answer(result: Result<Response, HttpError>) -> Response {
    result.unwrap_or_else(HttpError::into_response)
}

/// A single write's status: 201 when it stored something new, 200 when
/// it found it there already.
pub(crate) fn status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::AlreadyThere | Outcome::Superseded => StatusCode::OK,
    }
}

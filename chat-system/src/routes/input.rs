//! Reading a request's input: path segments, the page of a list, bodies.
//! Each check answers its own 4xx (`HttpError`), so a handler stops at the
//! first bad input and never rejects.

use std::collections::HashMap;

use shared::http::{BodyError, decode_segment, positive_number};

use crate::error::{HttpError, Missing, StoreError};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
/// Deepest a search may page: past it, refine the query.
const MAX_OFFSET: i64 = 10_000;

/// The limits the routes enforce, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest request body; `/readyz` tells it, so callers can check that
    /// what they send fits.
    pub(crate) max_body_bytes: u64,
    /// Most words in a search query.
    pub(crate) search_max_terms: usize,
}

/// A token that cannot exist (not UTF-8, or holding a NUL, which
/// PostgreSQL text cannot store) is simply unknown.
pub(crate) fn token(raw: &str) -> Result<String, HttpError> {
    decode_segment(raw)
        .filter(|token| !token.contains('\0'))
        .ok_or(HttpError::Store(StoreError::NotFound(Missing::Application)))
}

/// A message body PostgreSQL can store and a reader can see: not empty,
/// and no U+0000 (which PostgreSQL text cannot hold: refused here as bad
/// input rather than failing in the database).
pub(crate) fn check_body(body: &str) -> Result<(), String> {
    if body.is_empty() {
        return Err("body must not be empty".into());
    }
    if body.contains('\0') {
        return Err("body must not contain NUL characters".into());
    }
    Ok(())
}

pub(crate) fn number(raw: &str, what: &str) -> Result<i64, HttpError> {
    positive_number(raw)
        .ok_or_else(|| HttpError::BadRequest(format!("{what} must be a positive integer")))
}

/// `?after=N&limit=M`: numbers above `after` (default 0), at most `limit`
/// of them (default 100, at most 1000).
pub(crate) fn page(query: &HashMap<String, String>) -> Result<(i64, i64), HttpError> {
    let after = match query.get("after") {
        None => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|after| *after >= 0)
            .ok_or_else(|| HttpError::BadRequest("after must be a non-negative integer".into()))?,
    };
    Ok((after, limit(query)?))
}

pub(crate) fn limit(query: &HashMap<String, String>) -> Result<i64, HttpError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| {
                HttpError::BadRequest(format!("limit must be an integer from 1 to {MAX_PAGE}"))
            }),
    }
}

/// `?offset=N` of a search: the hits to skip (default 0, at most 10,000).
pub(crate) fn offset(query: &HashMap<String, String>) -> Result<i64, HttpError> {
    match query.get("offset") {
        None => Ok(0),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|offset| (0..=MAX_OFFSET).contains(offset))
            .ok_or_else(|| {
                HttpError::BadRequest(format!("offset must be an integer from 0 to {MAX_OFFSET}"))
            }),
    }
}

pub(crate) fn body_error(error: BodyError) -> HttpError {
    match error {
        BodyError::UnsupportedMediaType => HttpError::UnsupportedMediaType,
        BodyError::Malformed(reason) => {
            HttpError::BadRequest(format!("request body is not valid JSON: {reason}"))
        }
    }
}

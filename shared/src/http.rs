//! The JSON error convention of every HTTP service in the workspace:
//! `{"error": "<human readable>"}` with the right status, never a bare 500.
//!
//! Handlers return `Result<impl Reply, Infallible>` with their domain error
//! already turned into a reply (see [`error`]); [`recover`] handles only
//! warp's own rejections (no route, wrong method, body too large), so that a
//! domain error never makes warp try the next route and surface as a 405.

use std::convert::Infallible;

use serde::de::DeserializeOwned;
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::{Reply, Response};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// A JSON error reply. A 503 also carries `Retry-After`.
pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": message.to_string() });
    let mut response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// A JSON reply with a status other than 200.
pub fn json_with_status<T: serde::Serialize>(value: &T, status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// The last route of a service: a path the service knows, asked with a
/// method it does not support, gets 405 with the `Allow` header RFC 9110
/// requires. `allow` gives a path's methods (`"GET, PUT"`), by its
/// segments; `None` for a path the service does not know. Any other
/// request is rejected as not found, so the rejection of the route that
/// did match (a body too large, say) is the one answered.
pub fn method_not_allowed(
    allow: fn(&[&str]) -> Option<&'static str>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path::full().and(warp::method()).and_then(
        move |path: warp::path::FullPath, method: warp::http::Method| async move {
            let segments: Vec<&str> = path.as_str().trim_matches('/').split('/').collect();
            match allow(&segments) {
                Some(methods)
                    if !methods
                        .split(", ")
                        .any(|allowed| allowed == method.as_str()) =>
                {
                    Ok(not_allowed(methods))
                }
                _ => Err(warp::reject::not_found()),
            }
        },
    )
}

/// 405, with the methods the path does have in `Allow`.
pub fn not_allowed(methods: &'static str) -> Response {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
    response
}

/// Turns warp's own rejections into the JSON convention.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    use warp::reject;
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such route")
    } else if rejection.find::<reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
    } else if rejection.find::<reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a content-length header is required",
        )
    } else if rejection.find::<reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json",
        )
    } else if rejection
        .find::<warp::filters::body::BodyDeserializeError>()
        .is_some()
    {
        (StatusCode::BAD_REQUEST, "request body is not valid JSON")
    } else if rejection.find::<reject::InvalidQuery>().is_some() {
        (StatusCode::BAD_REQUEST, "invalid query string")
    } else if rejection.find::<reject::InvalidHeader>().is_some()
        || rejection.find::<reject::MissingHeader>().is_some()
    {
        (StatusCode::BAD_REQUEST, "invalid or missing header")
    } else if rejection.find::<reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(error(status, message))
}

/// Why a JSON request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
}

/// A JSON body of at most `limit` bytes, decoded inside the handler rather
/// than by a rejecting filter: a malformed body is the handler's 400, not a
/// rejection that lets warp try other routes. Without a `content-type`
/// header the body is taken to be JSON, as warp's own `json()` does.
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (Result<T, BodyError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .map(|content_type: Option<String>, bytes: Bytes| {
            decode_json(content_type.as_deref(), &bytes)
        })
}

fn decode_json<T: DeserializeOwned>(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<T, BodyError> {
    if let Some(content_type) = content_type {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(BodyError::UnsupportedMediaType);
        }
    }
    serde_json::from_slice(bytes).map_err(|error| BodyError::Malformed(error.to_string()))
}

/// Decodes one percent-encoded path segment (warp hands segments over raw),
/// so `%2F`, `%2C` and multi-byte UTF-8 arrive as the client meant them.
/// `None` when the bytes are not UTF-8.
pub fn decode_segment(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// The highest chat or message number there can be: 2^53. A counter must
/// be able to go on from any stored number (`INCR` fails past `i64::MAX`,
/// so a stored `9223372036854775807` would stop an application's creates
/// once its counter was seeded from it), and every number must survive a
/// client's JSON: JavaScript and most JSON libraries read numbers as
/// doubles, exact only up to 2^53.
pub const MAX_NUMBER: i64 = 1 << 53;

/// Whether `number` can be a chat or message number: 1 to [`MAX_NUMBER`].
pub fn is_valid_number(number: i64) -> bool {
    (1..=MAX_NUMBER).contains(&number)
}

/// A chat or message number from a path segment: a positive integer up to
/// [`MAX_NUMBER`]. Leading `+`, zero, negatives and anything else are
/// `None`.
pub fn positive_number(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok().filter(|n| is_valid_number(*n))
}

/// `GET /healthz`: the process is alive and serving.
pub fn healthz() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({ "status": "ok" })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Named {
        name: String,
    }

    #[test]
    fn json_bodies_are_decoded_with_or_without_a_content_type() {
        let cases = [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
        ];
        for content_type in cases {
            let named: Named = decode_json(content_type, br#"{"name":"a"}"#)
                .unwrap_or_else(|e| panic!("{content_type:?}: {e}"));
            assert_eq!(named.name, "a", "{content_type:?}");
        }
    }

    #[test]
    fn other_content_types_and_bad_json_are_refused() {
        assert!(matches!(
            decode_json::<Named>(Some("text/plain"), br#"{"name":"a"}"#),
            Err(BodyError::UnsupportedMediaType)
        ));
        assert!(matches!(
            decode_json::<Named>(None, b"{"),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            decode_json::<Named>(None, br#"{"nom":1}"#),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn numbers_are_positive_up_to_2_to_the_53() {
        let cases = [
            ("1", Some(1)),
            ("42", Some(42)),
            ("007", Some(7)),
            ("9007199254740992", Some(MAX_NUMBER)),
            ("9007199254740993", None),
            ("9223372036854775807", None),
            ("9223372036854775808", None),
            ("0", None),
            ("-1", None),
            ("+1", None),
            ("1.0", None),
            ("abc", None),
            ("", None),
            (" 1", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(positive_number(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn segments_are_percent_decoded_to_utf8() {
        assert_eq!(decode_segment("a%2Cb%2Fc").as_deref(), Some("a,b/c"));
        assert_eq!(
            decode_segment("caf%C3%A9%20%22x%22").as_deref(),
            Some("café \"x\"")
        );
        assert_eq!(decode_segment("a+b").as_deref(), Some("a+b"));
        assert_eq!(decode_segment("%FF"), None);
    }

    #[test]
    fn a_503_tells_the_client_when_to_retry() {
        let response = error(StatusCode::SERVICE_UNAVAILABLE, "redis unavailable");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}

//! The chat-system's read routes, answered by the api, so clients need one
//! address: `GET /applications/{token}` (its counts), its chats, a chat,
//! a chat's messages, one message, and search. Each is passed through with
//! the api's bounded client ([`pass_through`]): the status,
//! content type and body the chat-system gives, the body streamed; a
//! chat-system that does not answer within `CHAT_SYSTEM_TIMEOUT_MS` is a
//! 503. Only these paths are forwarded, each segment decoded and encoded
//! again, so the api is no open proxy; a token that cannot exist is 404
//! here, without a request.

use shared::chat_system::{ChatSystem, ChatSystemError};
use shared::counters::is_usable_token;
use shared::http::decode_segment;
use warp::reply::Response;

use crate::error::ApiError;

/// Is `segments` (after `applications`) a read route of the contract?
fn is_read_route(segments: &[String]) -> bool {
    match segments {
        [_] | [_, _] | [_, _, _] | [_, _, _, _] | [_, _, _, _, _] => {}
        _ => return false,
    }
    let fixed = |index: usize, word: &str| segments.get(index).is_none_or(|got| got == word);
    fixed(1, "chats") && fixed(3, "messages")
}

/// `GET /applications/{tail}`: the chat-system's answer, or 404 for a path
/// that is not one of its reads.
pub(crate) async fn read(
    tail: String,
    query: Option<String>,
    chat_system: &ChatSystem,
) -> Result<Response, ApiError> {
    let segments: Option<Vec<String>> = tail.split('/').map(decode_segment).collect();
    let Some(segments) = segments.filter(|segments| is_read_route(segments)) else {
        return Err(ApiError::NotFound);
    };
    if !is_usable_token(&segments[0]) {
        return Err(ApiError::UnknownApplication);
    }
    let mut path = vec!["applications"];
    path.extend(segments.iter().map(String::as_str));
    pass_through(chat_system, &path, query.as_deref())
        .await
        .map_err(|error| ApiError::unavailable("chat-system", error))
}

/// `GET` of `segments` (decoded; the client encodes them again) with
/// `query` as the client sent it: the chat-system's status, content type
/// and body, the body streamed.
async fn pass_through(
    chat_system: &ChatSystem,
    segments: &[&str],
    query: Option<&str>,
) -> Result<Response, ChatSystemError> {
    let response = chat_system.get_streaming(segments, query).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .cloned();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .cloned();
    let (chunks, body) =
        futures::channel::mpsc::channel::<Result<warp::hyper::body::Bytes, reqwest::Error>>(4);
    tokio::spawn(forward(response, chunks));
    let mut reply = warp::reply::Reply::into_response(warp::reply::stream(body));
    *reply.status_mut() = warp::http::StatusCode::from_u16(status.as_u16())
        .unwrap_or(warp::http::StatusCode::BAD_GATEWAY);
    for (name, value) in [
        (warp::http::header::CONTENT_TYPE, content_type),
        (warp::http::header::RETRY_AFTER, retry_after),
    ] {
        if let Some(value) =
            value.and_then(|value| warp::http::HeaderValue::from_bytes(value.as_bytes()).ok())
        {
            reply.headers_mut().insert(name, value);
        }
    }
    Ok(reply)
}

/// Copies `response`'s body into `chunks` as it arrives; a failure mid-way
/// ends the client's body with an error (its connection is cut, as the
/// chat-system's was).
async fn forward(
    mut response: reqwest::Response,
    mut chunks: futures::channel::mpsc::Sender<Result<warp::hyper::body::Bytes, reqwest::Error>>,
) {
    use futures::SinkExt;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => Ok(chunk),
            Ok(None) => return,
            Err(error) => Err(error.without_url()),
        };
        let failed = chunk.is_err();
        if chunks.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_read_routes_are_passed_through() {
        let route =
            |path: &str| is_read_route(&path.split('/').map(str::to_owned).collect::<Vec<_>>());
        for path in [
            "t",
            "t/chats",
            "t/chats/1",
            "t/chats/1/messages",
            "t/chats/1/messages/search",
            "t/chats/1/messages/7",
        ] {
            assert!(route(path), "{path}");
        }
        for path in [
            "t/other",
            "t/chats/1/other",
            "t/chats/1/messages/7/x",
            "t/x/1/messages",
        ] {
            assert!(!route(path), "{path}");
        }
    }
}

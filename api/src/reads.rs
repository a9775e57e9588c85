//! The chat-system's read routes, answered by the api, so clients need one
//! address: `GET /applications/{token}` (its counts), its chats, a chat,
//! a chat's messages, one message, and search. Each is passed through with
//! the api's own bounded client (`ChatSystem::pass_through`): the status,
//! content type and body the chat-system gives, the body streamed; a
//! chat-system that does not answer within `CHAT_SYSTEM_TIMEOUT_MS` is a
//! 503. Only these paths are forwarded, each segment decoded and encoded
//! again, so the api is no open proxy; a token that cannot exist is 404
//! here, without a request.

use shared::counters::is_usable_token;
use shared::http::decode_segment;
use warp::reply::Response;

use crate::chat_system::ChatSystem;
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
    let mut path = vec!["applications".to_owned()];
    path.extend(segments);
    chat_system
        .pass_through(&path, query.as_deref())
        .await
        .map_err(|error| ApiError::unavailable("chat-system", error))
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

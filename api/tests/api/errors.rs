//! Every malformed request gets a 4xx JSON error and draws no number.

use serde_json::json;
use testkit::http;

use std::time::Duration;

use testkit::{TestChatSystem, eventually};

use crate::helpers::{TestApp, spawn_app, spawn_beside};

/// Bad requests against an application with chat 1; none may draw.
fn bad_requests(app: &TestApp, token: &str) -> Vec<(&'static str, reqwest::RequestBuilder, u16)> {
    let url = |path: &str| format!("{}/applications/{token}{path}", app.url);
    let client = &app.client;
    vec![
        (
            "chat number zero",
            client.post(url("/chats/0/messages/x")),
            400,
        ),
        (
            "chat number negative",
            client.post(url("/chats/-1/messages/x")),
            400,
        ),
        (
            "chat number text",
            client.post(url("/chats/one/messages/x")),
            400,
        ),
        (
            "chat number too big",
            client.post(url("/chats/99999999999999999999/messages/x")),
            400,
        ),
        (
            "chat number above 2^53",
            client.post(url("/chats/9007199254740993/messages/x")),
            400,
        ),
        (
            "chat number i64::MAX in JSON form",
            client
                .post(url("/chats/9223372036854775807/messages"))
                .json(&json!({ "body": "x" })),
            400,
        ),
        (
            "NUL in message",
            client.post(url("/chats/1/messages/a%00b")),
            400,
        ),
        (
            "message not UTF-8",
            client.post(url("/chats/1/messages/%FF")),
            400,
        ),
        (
            "empty JSON body",
            client
                .post(url("/chats/1/messages"))
                .json(&json!({ "body": "" })),
            400,
        ),
        (
            "JSON body not a string",
            client
                .post(url("/chats/1/messages"))
                .json(&json!({ "body": 5 })),
            400,
        ),
        (
            "JSON without body",
            client.post(url("/chats/1/messages")).json(&json!({})),
            400,
        ),
        (
            "malformed JSON",
            client
                .post(url("/chats/1/messages"))
                .header("content-type", "application/json")
                .body("{\"body\""),
            400,
        ),
        (
            "not JSON",
            client
                .post(url("/chats/1/messages"))
                .header("content-type", "text/plain")
                .body("hello"),
            415,
        ),
        (
            "JSON over the limit",
            client
                .post(url("/chats/1/messages"))
                .json(&json!({ "body": "x".repeat(65537) })),
            413,
        ),
        (
            "JSON far over the limit",
            client
                .post(url("/chats/1/messages"))
                .header("content-type", "application/json")
                .body("x".repeat(1_000_000)),
            413,
        ),
        (
            "no content-length",
            client.post(url("/chats/1/messages")),
            411,
        ),
        (
            "token with braces",
            client.post(format!("{}/applications/a%7Bb%7D/chats", app.url)),
            404,
        ),
        ("wrong method", client.delete(url("/chats")), 405),
        (
            "no such route",
            client.post(format!("{}/nothing", app.url)),
            404,
        ),
    ]
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_json_error_and_draw_no_number() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    for (case, request, status) in bad_requests(&app, &token) {
        let answer = http::send(request).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(!answer.error().is_empty(), "{case}");
    }

    assert!(app.jobs().await.is_empty(), "nothing was published");
    assert_eq!(
        app.create_chat(&token).await.number("chat number"),
        2,
        "no chat number was drawn"
    );
    assert_eq!(
        app.create_message(&token, 1, "ok")
            .await
            .number("message number"),
        1,
        "nor a message number"
    );
}

#[tokio::test]
async fn a_message_of_exactly_the_limit_is_accepted() {
    let app = spawn_app_with_small_limit().await;
    let token = app.application(1).await;

    let at_limit = app.create_message(&token, 1, &"x".repeat(16)).await;
    let over = app.create_message(&token, 1, &"x".repeat(17)).await;

    assert_eq!(at_limit.status, 200);
    assert_eq!(over.status, 413);
}

async fn spawn_app_with_small_limit() -> TestApp {
    crate::helpers::spawn_app_with(&["--max-message-bytes", "16"]).await
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    app.create_chat(&token).await.number("chat number");

    let health = http::send(app.client.get(format!("{}/healthz", app.url))).await;
    let ready = http::send(app.client.get(format!("{}/readyz", app.url))).await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("an answer")
        .text()
        .await
        .expect("text");

    assert_eq!(health.status, 200);
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.body,
        json!({ "redis": "ok", "rabbitmq": "ok", "chat-system": "ok" })
    );
    for name in [
        "api_requests_total",
        "api_request_duration_seconds",
        "api_numbers_drawn_total",
        "api_counter_seeds_total",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_method_a_path_does_not_support_is_405_with_the_methods_it_does() {
    let app = spawn_app().await;
    let base = format!("{}/applications/t", app.url);
    let cases = [
        (app.client.delete(format!("{base}/chats")), "GET, POST"),
        (
            app.client.put(format!("{base}/chats/1/messages")),
            "GET, POST",
        ),
        (
            app.client.delete(format!("{base}/chats/1/messages/hi")),
            "GET, POST, PUT",
        ),
        (
            app.client.put(format!("{base}/chats/1/messages/search")),
            "GET, POST",
        ),
        (app.client.post(format!("{base}/chats/1")), "GET"),
        (app.client.put(base.clone()), "GET"),
        (app.client.post(format!("{}/readyz", app.url)), "GET"),
        (app.client.delete(format!("{}/metrics", app.url)), "GET"),
    ];
    for (request, allow) in cases {
        let answer = http::send(request).await;
        assert_eq!(answer.status, 405, "{}", answer.body);
        assert_eq!(answer.header("allow"), Some(allow), "RFC 9110");
    }
}

#[tokio::test]
async fn a_message_the_chat_system_could_not_take_is_refused_and_readyz_says_why() {
    // 64 KiB messages need ~385 KB per record escaped; this chat-system
    // takes 100 KB per request.
    let chat_system = TestChatSystem::start_with(false, &["--max-body-bytes", "100000"]).await;
    let app = spawn_beside(chat_system, testkit::redis_address(), &[]).await;
    let token = app.application(1).await;

    let ready = eventually("the limit learnt", Duration::from_secs(10), || async {
        let ready = app.get("/readyz").await;
        let learnt = ready.body["chat-system"] != "ok" && ready.body["rabbitmq"] == "ok";
        learnt.then_some(ready)
    })
    .await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body["chat-system"],
        "MAX_BODY_BYTES too small for MAX_MESSAGE_BYTES"
    );
    let fits = app
        .create_message_json(&token, 1, &"x".repeat(20_000))
        .await;
    assert_eq!(fits.number("message number"), 1, "20 KB of text fits");
    let too_large = app
        .create_message_json(&token, 1, &"\u{1}".repeat(20_000))
        .await;
    assert_eq!(too_large.status, 413, "120 KB escaped: {}", too_large.body);
    assert_eq!(
        app.jobs().await.len(),
        1,
        "only the one that fits was queued"
    );
}

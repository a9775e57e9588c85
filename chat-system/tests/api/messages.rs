use serde_json::json;
use testkit::http;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_redelivered_message_is_stored_once() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let first = app.put_message(&token, 1, 1, "hello, world").await;
    let again = app.put_message(&token, 1, 1, "hello, world").await;

    assert_eq!(first.status, 201);
    assert_eq!(again.status, 200);
    assert_eq!(first.body, json!({ "number": 1, "body": "hello, world" }));
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 1);
    assert_eq!(chat.body["last_message_number"], 1);
}

#[tokio::test]
async fn the_same_number_with_another_body_is_a_conflict_and_changes_nothing() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "original").await;

    let conflict = app.put_message(&token, 1, 1, "impostor").await;

    assert_eq!(conflict.status, 409);
    assert!(
        conflict.error().contains("different body"),
        "{}",
        conflict.body
    );
    let stored = app
        .get(&format!("/applications/{token}/chats/1/messages/1"))
        .await;
    assert_eq!(
        stored.body,
        json!({ "number": 1, "body": "original", "revision": 0, "updated_at": null })
    );
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 1);
}

#[tokio::test]
async fn any_utf8_text_is_stored_byte_for_byte() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let bodies = [
        "commas, many, of, them",
        "slashes / and \\ backslashes",
        "\"quotes\" and 'apostrophes'",
        "héllo wörld — 你好 — 🎉",
        "new\nlines\tand tabs",
        "%2F looks encoded but is not",
    ];

    for (index, body) in bodies.iter().enumerate() {
        let number = index as i64 + 1;
        assert_eq!(
            app.put_message(&token, 1, number, body).await.status,
            201,
            "{body:?}"
        );
        let stored = app
            .get(&format!("/applications/{token}/chats/1/messages/{number}"))
            .await;
        assert_eq!(stored.body["body"], *body, "{body:?}");
    }
}

#[tokio::test]
async fn a_message_for_an_unknown_chat_or_application_gets_404() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let unknown_chat = app.put_message(&token, 2, 1, "x").await;
    let unknown_application = app.put_message("nope", 1, 1, "x").await;
    let unknown_message = app
        .get(&format!("/applications/{token}/chats/1/messages/1"))
        .await;

    assert_eq!(unknown_chat.status, 404);
    assert_eq!(unknown_chat.error(), "unknown chat");
    assert_eq!(unknown_application.status, 404);
    assert_eq!(unknown_application.error(), "unknown application");
    assert_eq!(unknown_message.status, 404);
    assert_eq!(unknown_message.error(), "unknown message");
}

#[tokio::test]
async fn bad_message_input_gets_a_4xx_json_error() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let url = |chat: &str, message: &str| {
        app.url(&format!(
            "/applications/{token}/chats/{chat}/messages/{message}"
        ))
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "message number zero",
            app.writer.put(url("1", "0")).json(&json!({ "body": "x" })),
            400,
        ),
        (
            "message number text",
            app.writer
                .put(url("1", "one"))
                .json(&json!({ "body": "x" })),
            400,
        ),
        (
            "chat number text",
            app.writer
                .put(url("one", "1"))
                .json(&json!({ "body": "x" })),
            400,
        ),
        (
            "empty body",
            app.writer.put(url("1", "1")).json(&json!({ "body": "" })),
            400,
        ),
        (
            "NUL in body",
            app.writer
                .put(url("1", "1"))
                .json(&json!({ "body": "a\u{0}b" })),
            400,
        ),
        (
            "body not a string",
            app.writer.put(url("1", "1")).json(&json!({ "body": 1 })),
            400,
        ),
        (
            "no body field",
            app.writer.put(url("1", "1")).json(&json!({})),
            400,
        ),
        (
            "not JSON",
            app.writer
                .put(url("1", "1"))
                .header("content-type", "application/json")
                .body("nope"),
            400,
        ),
        ("no content-length", app.writer.put(url("1", "1")), 411),
    ];
    for (case, request, status) in cases {
        let answer = http::send(request).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(!answer.error().is_empty(), "{case}");
    }
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(chat.body["messages_count"], 0, "bad input stored nothing");
}

#[tokio::test]
async fn messages_are_listed_in_number_order_page_by_page() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    for number in [3, 1, 2] {
        app.put_message(&token, 1, number, &format!("m{number}"))
            .await;
    }

    let first = app
        .get(&format!("/applications/{token}/chats/1/messages?limit=2"))
        .await;
    let rest = app
        .get(&format!("/applications/{token}/chats/1/messages?after=2"))
        .await;

    assert_eq!(
        first.body,
        json!({ "items": [
            { "number": 1, "body": "m1", "revision": 0, "updated_at": null },
            { "number": 2, "body": "m2", "revision": 0, "updated_at": null }
        ], "next_after": 2 })
    );
    assert_eq!(
        rest.body,
        json!({ "items": [{ "number": 3, "body": "m3", "revision": 0, "updated_at": null }], "next_after": null })
    );
}

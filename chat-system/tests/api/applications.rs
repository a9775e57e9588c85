use serde_json::json;
use testkit::http;

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_application_is_created_with_a_token_and_read_back() {
    let app = spawn_app().await;

    let created = http::send(
        app.admin
            .post(app.url("/applications"))
            .json(&json!({ "name": "shop" })),
    )
    .await;

    assert_eq!(created.status, 201);
    let token = created.body["token"].as_str().expect("a token");
    assert!(token.len() >= 20, "a token hard to guess: {token}");
    assert_eq!(created.body["name"], "shop");
    assert_eq!(created.body["chats_count"], 0);
    let read = app.get(&format!("/applications/{token}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(
        read.body,
        json!({ "token": token, "name": "shop", "chats_count": 0, "last_chat_number": 0 })
    );
}

#[tokio::test]
async fn a_token_that_cannot_exist_gets_404_not_500() {
    let app = spawn_app().await;

    for token in ["a%00b", "%FF%FE", "%7B%7D"] {
        let answer = app.get(&format!("/applications/{token}")).await;
        assert_eq!(answer.status, 404, "{token}: {}", answer.body);
    }
}

#[tokio::test]
async fn every_application_gets_its_own_token() {
    let app = spawn_app().await;

    let first = app.create_application("same name").await;
    let second = app.create_application("same name").await;

    assert_ne!(first, second);
}

#[tokio::test]
async fn an_unknown_token_gets_404() {
    let app = spawn_app().await;

    let answer = app.get("/applications/no-such-token").await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.error(), "unknown application");
}

#[tokio::test]
async fn bad_application_bodies_get_a_4xx_json_error() {
    let app = spawn_app().await;
    let url = app.url("/applications");
    let long_name = "n".repeat(256);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "empty name",
            app.admin.post(&url).json(&json!({ "name": "" })),
            400,
        ),
        (
            "blank name",
            app.admin.post(&url).json(&json!({ "name": "   " })),
            400,
        ),
        (
            "name too long",
            app.admin.post(&url).json(&json!({ "name": long_name })),
            400,
        ),
        (
            "name not a string",
            app.admin.post(&url).json(&json!({ "name": 7 })),
            400,
        ),
        ("no name", app.admin.post(&url).json(&json!({})), 400),
        (
            "unknown field",
            app.admin.post(&url).json(&json!({ "name": "a", "x": 1 })),
            400,
        ),
        (
            "not JSON",
            app.admin
                .post(&url)
                .header("content-type", "application/json")
                .body("{\"name\":"),
            400,
        ),
        (
            "not JSON content",
            app.admin
                .post(&url)
                .header("content-type", "text/plain")
                .body("{\"name\":\"a\"}"),
            415,
        ),
        (
            "over the body limit",
            app.admin
                .post(&url)
                .header("content-type", "application/json")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(2 * 1024 * 1024))),
            413,
        ),
    ];
    for (case, request, status) in cases {
        let answer = http::send(request).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(!answer.error().is_empty(), "{case}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let token = app.create_application("a").await;

    let no_route = app.get("/nothing/here").await;
    let wrong_method = http::send(
        app.client
            .delete(app.url(&format!("/applications/{token}"))),
    )
    .await;

    assert_eq!(no_route.status, 404);
    assert_eq!(wrong_method.status, 405);
    assert!(!wrong_method.error().is_empty());
    assert_eq!(wrong_method.header("allow"), Some("GET"), "RFC 9110");
    let cases = [
        ("/applications", "POST"),
        (
            &format!("/applications/{token}/chats/1") as &str,
            "GET, PUT",
        ),
        (
            &format!("/applications/{token}/chats/1/messages/1"),
            "GET, PUT",
        ),
        (
            &format!("/applications/{token}/chats/1/messages/search"),
            "GET",
        ),
        ("/records", "POST"),
    ];
    for (path, allow) in cases {
        let answer = http::send(app.client.delete(app.url(path))).await;
        assert_eq!(answer.status, 405, "{path}");
        assert_eq!(answer.header("allow"), Some(allow), "{path}");
    }
}

#[tokio::test]
async fn health_and_readiness_answer_once_the_database_is_migrated() {
    let app = spawn_app().await;

    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
}

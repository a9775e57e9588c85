//! Only the pipeline writes: every write needs the write credential, the
//! application routes the admin one, reads need neither; a request without
//! its credential is 401 and changes nothing.

use clap::Parser;
use serde_json::json;
use testkit::{TestChatSystem, http};

use crate::helpers::spawn_app;

/// Every write route, by what it needs, with a body it would accept.
fn writes(
    app: &TestChatSystem,
    token: &str,
) -> Vec<(&'static str, reqwest::Method, String, serde_json::Value)> {
    vec![
        (
            "a chat",
            reqwest::Method::PUT,
            app.url(&format!("/applications/{token}/chats/2")),
            json!(null),
        ),
        (
            "a message",
            reqwest::Method::PUT,
            app.url(&format!("/applications/{token}/chats/1/messages/1")),
            json!({ "body": "a stranger's text" }),
        ),
        (
            "a bulk write",
            reqwest::Method::POST,
            app.url("/records"),
            json!({ "records": [{ "kind": "message", "token": token, "chat": 1, "number": 2, "body": "x" }] }),
        ),
    ]
}

#[tokio::test]
async fn writes_without_the_write_credential_are_401_and_store_nothing() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    let strangers = [
        ("no credential", http::client()),
        (
            "a wrong one",
            http::client_with_bearer("not-the-write-token-at-all"),
        ),
        ("the admin one", http::client_with_bearer(&app.admin_token)),
    ];

    for (who, client) in &strangers {
        for (what, method, url, body) in writes(&app, &token) {
            let mut request = client.request(method, url);
            if !body.is_null() {
                request = request.json(&body);
            }
            let answer = http::send(request).await;
            assert_eq!(answer.status, 401, "{what} with {who}: {}", answer.body);
            assert!(answer.error().contains("credential"), "{}", answer.body);
            assert_eq!(
                answer.headers["www-authenticate"], "Bearer realm=\"chat-system\"",
                "{what} with {who}"
            );
        }
    }

    assert_eq!(app.chats_count(&token).await, 1, "no chat stored");
    assert!(
        app.messages(&token, 1).await.is_empty(),
        "no message stored"
    );
    // With the credential the same writes go through.
    for (what, method, url, body) in writes(&app, &token) {
        let mut request = app.writer.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer = http::send(request).await;
        assert!(answer.status < 300, "{what}: {}", answer.body);
    }
}

#[tokio::test]
async fn applications_are_created_with_the_admin_credential_only() {
    let app = spawn_app().await;
    let create = |client: &reqwest::Client| {
        client
            .post(app.url("/applications"))
            .json(&json!({ "name": "shop" }))
    };

    for client in [http::client(), app.writer.clone()] {
        let answer = http::send(create(&client)).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
    }
    let created = http::send(create(&app.admin)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let token = created.body["token"].as_str().unwrap();
    // Reads stay keyed by the application token alone.
    let read = http::send(http::client().get(app.url(&format!("/applications/{token}")))).await;
    assert_eq!(read.status, 200, "{}", read.body);
}

#[tokio::test]
async fn the_service_does_not_start_without_credentials_unless_told_it_runs_open() {
    let config = |extra: &[&str]| {
        let mut arguments = vec!["chat-system", "--addr", "127.0.0.1:0"];
        arguments.extend_from_slice(extra);
        chat_system::Config::parse_from(arguments)
    };

    let refused = chat_system::Application::build(config(&[
        "--chat-system-write-token",
        "w-0123456789abcdef",
    ]))
    .await
    .err()
    .expect("no admin credential: refused");
    assert!(
        refused.to_string().contains("CHAT_SYSTEM_ADMIN_TOKEN"),
        "{refused}"
    );
    let open = chat_system::Application::build(config(&["--auth", "none"])).await;
    assert!(open.is_ok(), "CHAT_SYSTEM_AUTH=none starts");
}

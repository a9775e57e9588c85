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
    assert_eq!(wrong_method.header("allow"), Some("GET, PATCH"), "RFC 9110");
    let cases = [
        ("/applications", "GET, POST"),
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

/// `name` of every application, read page by page with `limit`, and how
/// many pages that took.
async fn every_name(app: &testkit::TestChatSystem, limit: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut pages = 0;
    let mut after: Option<i64> = None;
    loop {
        let mut path = format!("/applications?limit={limit}");
        if let Some(after) = after {
            path += &format!("&after={after}");
        }
        let page = http::send(app.admin.get(app.url(&path))).await;
        assert_eq!(page.status, 200, "{}", page.body);
        pages += 1;
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= limit, "{}", page.body);
        for item in items {
            assert!(item.get("id").is_none(), "no internal id: {item}");
            names.push(item["name"].as_str().expect("a name").to_owned());
        }
        match page.body["next_after"].as_i64() {
            Some(next) => after = Some(next),
            None => return (names, pages),
        }
    }
}

#[tokio::test]
async fn the_applications_are_listed_page_by_page_in_the_order_they_were_created() {
    let app = spawn_app().await;
    let created: Vec<String> = (1..=5).map(|n| format!("app {n}")).collect();
    let mut tokens = Vec::new();
    for name in &created {
        tokens.push(app.create_application(name).await);
    }

    let (names, pages) = every_name(&app, 2).await;
    let first = http::send(app.admin.get(app.url("/applications?limit=2"))).await;

    assert_eq!(names, created, "every one once, oldest first");
    assert_eq!(pages, 3, "2 + 2 + 1");
    assert_eq!(first.body["items"][0]["token"], tokens[0].as_str());
    assert_eq!(first.body["items"][0]["chats_count"], 0);
}

#[tokio::test]
async fn listing_the_applications_needs_the_admin_credential_and_a_good_page() {
    let app = spawn_app().await;
    app.create_application("secret").await;

    let anonymous = app.get("/applications").await;
    let writer = http::send(app.writer.get(app.url("/applications"))).await;
    let bad_limit = http::send(app.admin.get(app.url("/applications?limit=0"))).await;
    let bad_after = http::send(app.admin.get(app.url("/applications?after=-1"))).await;

    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.body.get("items").is_none());
    assert_eq!(
        writer.status, 401,
        "the write credential is not the admin's"
    );
    assert_eq!(bad_limit.status, 400);
    assert_eq!(bad_after.status, 400);
}

#[tokio::test]
async fn an_application_is_renamed_and_read_back_with_its_new_name() {
    let app = spawn_app().await;
    let token = app.application_with_chats(2).await;

    let renamed = http::send(
        app.admin
            .patch(app.url(&format!("/applications/{token}")))
            .json(&json!({ "name": "  new name  " })),
    )
    .await;

    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let expected =
        json!({ "token": token, "name": "new name", "chats_count": 2, "last_chat_number": 2 });
    assert_eq!(renamed.body, expected, "trimmed, counts kept");
    let read = app.get(&format!("/applications/{token}")).await;
    assert_eq!(read.body, expected);
}

#[tokio::test]
async fn a_rename_needs_the_admin_credential_a_known_application_and_a_good_name() {
    let app = spawn_app().await;
    let token = app.create_application("kept").await;
    let url = app.url(&format!("/applications/{token}"));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no credential",
            app.client.patch(&url).json(&json!({ "name": "x" })),
            401,
        ),
        (
            "the write credential",
            app.writer.patch(&url).json(&json!({ "name": "x" })),
            401,
        ),
        (
            "unknown application",
            app.admin
                .patch(app.url("/applications/no-such-token"))
                .json(&json!({ "name": "x" })),
            404,
        ),
        (
            "blank name",
            app.admin.patch(&url).json(&json!({ "name": "  " })),
            400,
        ),
        (
            "name too long",
            app.admin
                .patch(&url)
                .json(&json!({ "name": "n".repeat(256) })),
            400,
        ),
        (
            "NUL in the name",
            app.admin.patch(&url).json(&json!({ "name": "a\u{0}b" })),
            400,
        ),
        (
            "unknown field",
            app.admin.patch(&url).json(&json!({ "name": "x", "y": 1 })),
            400,
        ),
        (
            "not JSON content",
            app.admin
                .patch(&url)
                .header("content-type", "text/plain")
                .body("{\"name\":\"x\"}"),
            415,
        ),
        (
            "over the body limit",
            app.admin
                .patch(&url)
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
    let read = app.get(&format!("/applications/{token}")).await;
    assert_eq!(read.body["name"], "kept", "no refused rename changed it");
}

//! On a miss the counter is seeded from the chat-system's highest stored
//! number, once, however many requests miss together.

use futures::future::join_all;
use testkit::Fault;

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_application_with_5_stored_chats_gets_6_next() {
    let app = spawn_app().await;
    let token = app.application(5).await;

    let answer = app.create_chat(&token).await;

    assert_eq!(answer.number("chat number"), 6);
}

#[tokio::test]
async fn seeding_starts_after_the_highest_number_not_the_count() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    app.store_chat(&token, 5).await; // two chats stored, highest 5

    let answer = app.create_chat(&token).await;

    assert_eq!(answer.number("chat number"), 6);
}

#[tokio::test]
async fn a_stored_chats_messages_continue_after_its_highest_message() {
    let app = spawn_app().await;
    let token = app.application(2).await;
    for number in [1, 2, 7] {
        app.store_message(&token, 2, number).await;
    }

    let answer = app.create_message(&token, 2, "next").await;

    assert_eq!(answer.number("message number"), 8);
}

#[tokio::test]
async fn a_hundred_concurrent_first_requests_read_the_chat_system_once() {
    let app = spawn_app().await;
    let token = app.application(3).await;

    let answers = join_all((0..100).map(|_| app.create_chat(&token))).await;

    let mut numbers: Vec<i64> = answers
        .iter()
        .map(|answer| answer.number("chat number"))
        .collect();
    numbers.sort();
    assert_eq!(numbers, (4..=103).collect::<Vec<i64>>());
    assert_eq!(
        app.upstream
            .count("GET", &format!("/applications/{token}"), ""),
        1
    );
}

#[tokio::test]
async fn a_failed_seed_releases_the_lock_and_the_next_request_seeds() {
    let app = spawn_app().await;
    let token = app.application(2).await;
    app.upstream.fail_next(1, Fault::Status(500));

    let failed = app.create_chat(&token).await;
    let next = app.create_chat(&token).await;

    assert_eq!(failed.status, 503, "{}", failed.body);
    assert_eq!(next.number("chat number"), 3);
}

#[tokio::test]
async fn an_unknown_token_is_remembered_briefly() {
    let app = spawn_app().await;

    for _ in 0..20 {
        let answer = app.create_chat("no-such-token").await;
        assert_eq!(answer.status, 404);
        assert_eq!(answer.error(), "unknown application");
    }

    assert_eq!(
        app.upstream.count("GET", "/applications/no-such-token", ""),
        1
    );
    assert!(app.jobs().await.is_empty());
}

#[tokio::test]
async fn a_message_for_a_chat_that_does_not_exist_gets_404() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    let answer = app.create_message(&token, 2, "hello").await;
    let again = app.create_message(&token, 2, "hello").await;

    assert_eq!(answer.status, 404);
    assert_eq!(answer.error(), "unknown chat");
    assert_eq!(again.status, 404);
    assert_eq!(
        app.upstream
            .count("GET", &format!("/applications/{token}/chats/2"), ""),
        1
    );
    assert!(app.jobs().await.is_empty());
}

#[tokio::test]
async fn a_token_no_chat_system_could_issue_is_404_without_asking_anyone() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    // Sent byte for byte: an HTTP client would resolve `%2E%2E` itself.
    let cases = [
        "/applications/%2E%2E/chats".to_owned(),
        "/applications/%2E/chats/1/messages/hi".to_owned(),
        "/applications/%2e%2e/chats/1/messages".to_owned(),
        format!("/applications/{token}%2F..%2F/chats"),
        "/applications/a%20b/chats".to_owned(),
        "/applications/caf%C3%A9/chats".to_owned(),
    ];
    for path in &cases {
        let (status, body) = app.post_raw(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("unknown application"), "{path}: {body}");
    }

    assert_eq!(
        app.upstream.count("GET", "/applications", ""),
        0,
        "the chat-system was not asked"
    );
    assert!(app.jobs().await.is_empty());
}

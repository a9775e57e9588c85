//! One front door: the chat-system's reads answered by the api.

use std::time::Duration;

use testkit::{Fault, eventually};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_stored_message_a_chat_and_a_search_are_read_through_the_api() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    app.store_message(&token, 1, 1).await;
    let stored = app
        .get(&format!("/applications/{token}/chats/1/messages/1"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    let body = stored.body["body"].as_str().expect("a body").to_owned();
    let word = body.split_whitespace().next().expect("a word").to_owned();

    let application = app.get(&format!("/applications/{token}")).await;
    assert_eq!(application.status, 200, "{}", application.body);
    assert_eq!(application.body["chats_count"], 1);
    let chat = app.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(
        (chat.status, chat.body["messages_count"].as_i64()),
        (200, Some(1))
    );
    let chats = app
        .get(&format!("/applications/{token}/chats?limit=10"))
        .await;
    assert_eq!(chats.body["items"][0]["number"], 1, "{}", chats.body);
    let messages = app
        .get(&format!("/applications/{token}/chats/1/messages?after=0"))
        .await;
    assert_eq!(messages.body["items"][0]["body"], body.as_str());
    let hits = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q={word}"
        ))
        .await;
    assert_eq!(hits.status, 200, "{}", hits.body);
    assert_eq!(hits.body["items"][0]["number"], 1, "{}", hits.body);
    assert_eq!(
        stored.headers["content-type"], "application/json",
        "the chat-system's content type"
    );
}

#[tokio::test]
async fn a_search_for_the_start_of_a_word_pages_through_the_api_with_snippets() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    app.store_message(&token, 1, 1).await;
    app.store_message(&token, 1, 2).await;

    let first = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=sto&limit=1"
        ))
        .await;
    let second = app
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q=sto&limit=1&offset=1"
        ))
        .await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["items"][0]["body"], "stored", "{}", first.body);
    assert_eq!(first.body["items"][0]["snippet"], "<mark>stored</mark>");
    assert_eq!(first.body["next_offset"], 1, "the query string passed on");
    assert_eq!(second.body["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(
        first.body["items"][0]["number"],
        second.body["items"][0]["number"]
    );
    assert!(second.body["next_offset"].is_null(), "{}", second.body);
}

#[tokio::test]
async fn the_chat_systems_answers_pass_as_they_are_and_its_absence_is_a_503() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    let missing = app.get(&format!("/applications/{token}/chats/9")).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.error(), "unknown chat");
    let bad = app
        .get(&format!("/applications/{token}/chats/1/messages?limit=0"))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let impossible = app.get("/applications/a%7Bb/chats").await;
    assert_eq!(
        impossible.status, 404,
        "no request for a token that cannot exist"
    );
    let elsewhere = app.get(&format!("/applications/{token}/other")).await;
    assert_eq!(elsewhere.status, 404);

    app.upstream
        .fail_always(Fault::Delay(Duration::from_secs(8)));
    let slow = app.get(&format!("/applications/{token}")).await;
    assert_eq!(slow.status, 503, "{}", slow.body);
    assert_eq!(slow.retry_after.as_deref(), Some("1"));
    app.upstream.heal();
    eventually("reads answered again", Duration::from_secs(20), || async {
        (app.get(&format!("/applications/{token}")).await.status == 200).then_some(())
    })
    .await;
}

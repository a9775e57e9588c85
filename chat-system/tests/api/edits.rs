//! Edits through `POST /records`: a message keeps the body of the highest
//! revision stored, whatever order revisions arrive in; a revision stored
//! again with its body is a redelivery, with another body a conflict.

use futures::future::join_all;
use serde_json::{Value, json};
use testkit::TestChatSystem;

use crate::helpers::spawn_app;

fn edit(token: &str, chat: i64, message: i64, revision: i64, body: &str) -> Value {
    json!({ "kind": "edit", "token": token, "chat": chat, "message": message,
        "revision": revision, "body": body })
}

fn words(answer: &testkit::Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["result"].as_str().expect("a result").to_owned())
        .collect()
}

async fn message_with_chat(app: &TestChatSystem) -> String {
    let token = app.application_with_chats(1).await;
    assert_eq!(
        app.put_message(&token, 1, 1, "first words").await.status,
        201
    );
    token
}

#[tokio::test]
async fn revisions_stored_in_any_order_leave_the_highest_ones_body() {
    let app = spawn_app().await;
    let token = message_with_chat(&app).await;

    assert_eq!(app.put_edit(&token, 1, 1, 3, "third").await, "created");
    assert_eq!(app.put_edit(&token, 1, 1, 1, "first").await, "superseded");
    assert_eq!(app.put_edit(&token, 1, 1, 2, "second").await, "superseded");

    assert_eq!(app.revision(&token, 1, 1).await, Some((3, "third".into())));
    let read = app
        .get(&format!("/applications/{token}/chats/1/messages/1"))
        .await;
    let updated_at = read.body["updated_at"].as_str().expect("an edit time");
    assert!(
        updated_at.ends_with('Z') && updated_at.contains('T'),
        "{updated_at}"
    );
    let page = app
        .get(&format!("/applications/{token}/chats/1/messages"))
        .await;
    assert_eq!(page.body["items"][0]["revision"], 3, "{}", page.body);
}

#[tokio::test]
async fn a_batch_applies_its_highest_revision_of_each_message() {
    let app = spawn_app().await;
    let token = message_with_chat(&app).await;

    let answer = app
        .post_records(json!([
            edit(&token, 1, 1, 2, "two"),
            edit(&token, 1, 1, 4, "four"),
            edit(&token, 1, 1, 4, "four"),
            edit(&token, 1, 1, 4, "not four"),
            edit(&token, 1, 1, 1, "one"),
            edit(&token, 1, 2, 1, "its message is not stored"),
            edit("no-such-token", 1, 1, 1, "no such application"),
            edit(&token, 1, 1, 0, "revision 0 is the create's"),
            edit(&token, 1, 1, 5, ""),
        ]))
        .await;

    assert_eq!(
        words(&answer),
        [
            "superseded",
            "created",
            "exists",
            "conflict",
            "superseded",
            "unknown_message",
            "unknown_application",
            "invalid",
            "invalid"
        ]
    );
    assert_eq!(app.revision(&token, 1, 1).await, Some((4, "four".into())));
}

#[tokio::test]
async fn a_revision_stored_again_is_a_redelivery_with_its_body_and_a_conflict_without() {
    let app = spawn_app().await;
    let token = message_with_chat(&app).await;
    assert_eq!(app.put_edit(&token, 1, 1, 1, "edited").await, "created");

    assert_eq!(app.put_edit(&token, 1, 1, 1, "edited").await, "exists");
    assert_eq!(app.put_edit(&token, 1, 1, 1, "other").await, "conflict");
    // The create, delivered again after the edit: still its own body.
    assert_eq!(
        app.put_message(&token, 1, 1, "first words").await.status,
        200
    );
    assert_eq!(
        app.put_message(&token, 1, 1, "not the first").await.status,
        409
    );
    assert_eq!(app.revision(&token, 1, 1).await, Some((1, "edited".into())));
}

#[tokio::test]
async fn an_edit_and_its_messages_create_in_one_batch_are_both_stored() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;

    let answer = app
        .post_records(json!([
            edit(&token, 1, 1, 1, "edited"),
            { "kind": "message", "token": token, "chat": 1, "number": 1, "body": "created" },
        ]))
        .await;

    assert_eq!(words(&answer), ["created", "created"]);
    assert_eq!(app.revision(&token, 1, 1).await, Some((1, "edited".into())));
}

#[tokio::test]
async fn search_finds_the_edited_text_not_the_old() {
    let app = spawn_app().await;
    let token = app.application_with_chats(1).await;
    app.put_message(&token, 1, 1, "apples and pears").await;

    assert_eq!(app.put_edit(&token, 1, 1, 1, "plums only").await, "created");

    let search = |query: &'static str| {
        let path = format!("/applications/{token}/chats/1/messages/search?q={query}");
        let app = &app;
        async move {
            app.get(&path).await.body["items"]
                .as_array()
                .expect("items")
                .len()
        }
    };
    assert_eq!(search("plums").await, 1);
    assert_eq!(search("apples").await, 0);
}

#[tokio::test]
async fn concurrent_batches_of_edits_leave_each_message_at_its_highest_revision() {
    let flags = ["--database-write-lanes", "8", "--database-write-batch", "1"];
    let app = TestChatSystem::start_with(false, &flags).await;
    let token = app.application_with_chats(1).await;
    for number in 1..=4 {
        app.put_message(&token, 1, number, "created").await;
    }
    // 40 batches, each of revisions of all four messages in an order of
    // its own: rows are locked in one order, so none deadlocks.
    let batch = |seed: i64| {
        let records: Vec<Value> = (0..4)
            .map(|step| {
                let number = (seed + step) % 4 + 1;
                let revision = seed * 4 + step + 1;
                edit(&token, 1, number, revision, &format!("r{revision}"))
            })
            .collect();
        app.post_records(Value::Array(records))
    };
    let answers = join_all((0..40).map(batch)).await;

    for answer in &answers {
        for word in words(answer) {
            assert!(word == "created" || word == "superseded", "{word}");
        }
    }
    for number in 1..=4 {
        let highest = (0..40)
            .flat_map(|seed: i64| (0..4).map(move |step| (seed, step)))
            .filter(|(seed, step)| (seed + step) % 4 + 1 == number)
            .map(|(seed, step)| seed * 4 + step + 1)
            .max()
            .unwrap();
        assert_eq!(
            app.revision(&token, 1, number).await,
            Some((highest, format!("r{highest}")))
        );
    }
}

//! `PUT /applications/{token}/chats/{n}/messages/{m}`: an edit draws the
//! message's next revision (seeded from the chat-system's stored one, or
//! from 0 for a message whose create is still queued) and queues an edit
//! job; a number never handed out is 404 and draws nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use shared::job::Record;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

fn revision(answer: &testkit::Answer) -> i64 {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.number("revision")
}

/// `(message, revision, body)` of each edit job.
fn edits(jobs: &[shared::job::Job]) -> Vec<(i64, i64, String)> {
    jobs.iter()
        .map(|job| match &job.record {
            Record::Edit {
                message,
                revision,
                body,
                ..
            } => (*message, *revision, body.clone()),
            other => panic!("an edit job, not {other:?}"),
        })
        .collect()
}

async fn stored_message(app: &TestApp) -> String {
    let token = app.application(1).await;
    app.store_message(&token, 1, 1).await;
    token
}

#[tokio::test]
async fn edits_of_a_stored_message_draw_its_next_revisions_and_queue_their_jobs() {
    let app = spawn_app().await;
    let token = stored_message(&app).await;

    let first = app
        .edit_message(&token, 1, 1, "edited, \"once\"", None)
        .await;
    let second = app.edit_message(&token, 1, 1, "edited twice", None).await;

    assert_eq!(
        first.body,
        serde_json::json!({"message number": 1, "revision": 1})
    );
    assert_eq!(revision(&second), 2);
    let mut queued = edits(&app.expect_jobs(2).await);
    queued.sort();
    assert_eq!(
        queued,
        [
            (1, 1, "edited, \"once\"".to_owned()),
            (1, 2, "edited twice".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_edit_seeds_from_the_revision_the_chat_system_stored() {
    let app = spawn_app().await;
    let token = stored_message(&app).await;
    assert_eq!(
        app.chat_system
            .put_edit(&token, 1, 1, 7, "edited long ago")
            .await,
        "created"
    );

    assert_eq!(
        revision(&app.edit_message(&token, 1, 1, "new", None).await),
        8
    );
}

#[tokio::test]
async fn concurrent_edits_of_one_message_get_distinct_revisions() {
    let app = spawn_app().await;
    let token = stored_message(&app).await;

    let answers = join_all((0..20).map(|n| {
        let (app, token) = (&app, &token);
        async move {
            app.edit_message(token, 1, 1, &format!("edit {n}"), None)
                .await
        }
    }))
    .await;

    let revisions: BTreeSet<i64> = answers.iter().map(revision).collect();
    assert_eq!(
        revisions,
        (1..=20).collect(),
        "one seed, twenty distinct draws"
    );
}

#[tokio::test]
async fn an_edit_of_a_message_whose_create_is_still_queued_starts_at_revision_1() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    let created = app.create_message_json(&token, 1, "not stored yet").await;
    assert_eq!(created.number("message number"), 1);

    let edit = app
        .edit_message(&token, 1, 1, "edited before stored", None)
        .await;

    assert_eq!(revision(&edit), 1);
    assert_eq!(
        app.expect_jobs(2).await.len(),
        2,
        "the create's job and the edit's"
    );
}

#[tokio::test]
async fn an_edit_of_a_number_never_handed_out_is_404_and_draws_nothing() {
    let app = spawn_app().await;
    let token = stored_message(&app).await;

    let unknown = app
        .edit_message(&token, 1, 2, "no such message", None)
        .await;
    let no_chat = app.edit_message(&token, 9, 1, "no such chat", None).await;

    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(no_chat.status, 404, "{}", no_chat.body);
    assert!(app.jobs().await.is_empty(), "nothing queued");
    let revision_keys: Vec<String> = app
        .redis
        .keys()
        .await
        .into_iter()
        .filter(|key| key.contains(":revisions"))
        .collect();
    assert_eq!(
        revision_keys,
        Vec::<String>::new(),
        "nothing drawn or remembered"
    );
    // Not remembered as unknown: once handed out, the number is editable.
    assert_eq!(
        app.create_message_json(&token, 1, "two")
            .await
            .number("message number"),
        2
    );
    assert_eq!(
        revision(&app.edit_message(&token, 1, 2, "edited", None).await),
        1
    );
}

#[tokio::test]
async fn an_edit_is_checked_like_a_create_before_anything_is_drawn() {
    let app = spawn_app_with(&["--max-message-bytes", "64"]).await;
    let token = stored_message(&app).await;
    let url = format!("{}/applications/{token}/chats/1/messages/1", app.url);

    let empty = app.edit_message(&token, 1, 1, "", None).await;
    let nul = app.edit_message(&token, 1, 1, "a\0b", None).await;
    let large = app.edit_message(&token, 1, 1, &"x".repeat(65), None).await;
    let not_json = testkit::http::send(
        app.client
            .put(&url)
            .header("content-type", "text/plain")
            .body("{\"body\":\"x\"}"),
    )
    .await;
    let not_a_number = testkit::http::send(
        app.client
            .put(format!(
                "{}/applications/{token}/chats/1/messages/one",
                app.url
            ))
            .json(&serde_json::json!({"body": "x"})),
    )
    .await;

    assert_eq!(empty.status, 400, "{}", empty.body);
    assert_eq!(nul.status, 400, "{}", nul.body);
    assert_eq!(large.status, 413, "{}", large.body);
    assert_eq!(not_json.status, 415, "{}", not_json.body);
    assert_eq!(not_a_number.status, 400, "{}", not_a_number.body);
    assert!(app.jobs().await.is_empty());
    assert_eq!(
        revision(&app.edit_message(&token, 1, 1, "fine", None).await),
        1
    );
}

#[tokio::test]
async fn a_keyed_edit_retried_after_a_confirm_that_never_came_is_one_revision_and_one_job() {
    let app = spawn_app_with(&["--publish-timeout-ms", "500"]).await;
    let token = stored_message(&app).await;

    app.amqp_proxy.freeze();
    let first = app
        .edit_message(&token, 1, 1, "edited", Some("edit-1"))
        .await;
    assert_eq!(first.status, 503, "{}", first.body);
    app.amqp_proxy.thaw();

    let retry = testkit::eventually("the retry to be answered", Duration::from_secs(20), || {
        let (app, token) = (&app, &token);
        async move {
            let retry = app
                .edit_message(token, 1, 1, "edited", Some("edit-1"))
                .await;
            (retry.status == 200).then_some(retry)
        }
    })
    .await;
    assert_eq!(revision(&retry), 1);
    let other = app
        .edit_message(&token, 1, 1, "another body", Some("edit-1"))
        .await;
    assert_eq!(
        other.status, 422,
        "the key names another edit: {}",
        other.body
    );
    assert_eq!(
        revision(&app.edit_message(&token, 1, 1, "next", None).await),
        2
    );

    let jobs = app.expect_jobs_at_least(2).await;
    let keyed: BTreeSet<_> = jobs
        .iter()
        .filter(|job| job.number() == 1)
        .map(|job| job.id)
        .collect();
    assert_eq!(keyed.len(), 1, "the first attempt's job, published again");
}

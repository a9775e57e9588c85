//! Edits through the api and the worker: answered in one order, stored in
//! another (redelivered, retried, queued before their message), each
//! message ends with the body of its highest answered revision, and
//! nothing is left in flight or waiting to retry.

use std::time::Duration;

use shared::job::{Job, Record};
use testkit::eventually;

use crate::helpers::TestStack;

async fn edit(client: &reqwest::Client, api: &str, token: &str, message: i64, body: &str) -> i64 {
    let answer = testkit::http::send(
        client
            .put(format!(
                "{api}/applications/{token}/chats/1/messages/{message}"
            ))
            .json(&serde_json::json!({ "body": body })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.number("revision")
}

async fn wait_for_revision(stack: &TestStack, token: &str, message: i64, revision: i64) -> String {
    eventually(
        &format!("revision {revision} of message {message} stored"),
        Duration::from_secs(30),
        || async {
            let (stored, body) = stack.chat_system.revision(token, 1, message).await?;
            (stored == revision).then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn edits_stored_in_reverse_of_their_answers_leave_the_highest_revisions_body() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    assert_eq!(stack.chat_system.put_chat(&token, 1).await.status, 201);
    assert_eq!(
        stack
            .chat_system
            .put_message(&token, 1, 1, "created")
            .await
            .status,
        201
    );
    let (api, _api) = stack.spawn_api().await;
    let client = testkit::http::client();
    let mut answered = Vec::new();
    for n in 1..=5 {
        answered.push(edit(&client, &api, &token, 1, &format!("edit {n}")).await);
    }
    assert_eq!(answered, [1, 2, 3, 4, 5]);

    // The highest stored first; then its elders, and all five again (as
    // a redelivery or a replay would), in later batches.
    let mut jobs: Vec<Job> = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    assert_eq!(jobs.len(), 5);
    jobs.sort_by_key(|job| std::cmp::Reverse(job.number()));
    stack.publish(&jobs[..1]).await;
    let worker = stack.spawn_worker(&[]).await;
    assert_eq!(wait_for_revision(&stack, &token, 1, 5).await, "edit 5");
    stack.publish(&jobs[1..]).await;
    stack.publish(&jobs).await;

    stack.assert_settled().await;
    assert_eq!(
        stack.chat_system.revision(&token, 1, 1).await,
        Some((5, "edit 5".into())),
        "no lower revision applied after the highest"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_edit_queued_before_its_messages_create_is_stored_after_it() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    assert_eq!(stack.chat_system.put_chat(&token, 1).await.status, 201);
    let (api, _api) = stack.spawn_api().await;
    let client = testkit::http::client();
    let created = testkit::http::send(
        client
            .post(format!("{api}/applications/{token}/chats/1/messages"))
            .json(&serde_json::json!({ "body": "created" })),
    )
    .await;
    assert_eq!(created.number("message number"), 1);
    assert_eq!(edit(&client, &api, &token, 1, "edited").await, 1);

    // The edit goes first; its create only once the edit has been tried.
    let jobs = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    let (creates, edits): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| matches!(job.record, Record::Message { .. }));
    assert_eq!((creates.len(), edits.len()), (1, 1));
    stack.publish(&edits).await;
    let worker = stack.spawn_worker(&[]).await;
    eventually(
        "the edit to be retried",
        Duration::from_secs(10),
        || async {
            let answers = stack.upstream.count("POST", "/records", "");
            (answers >= 2).then_some(())
        },
    )
    .await;
    assert_eq!(stack.chat_system.revision(&token, 1, 1).await, None);
    stack.publish(&creates).await;

    assert_eq!(wait_for_revision(&stack, &token, 1, 1).await, "edited");
    stack.assert_settled().await;
    worker.stop().await;
}

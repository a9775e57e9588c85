//! Persisting is idempotent, and a job that cannot succeed is
//! dead-lettered with its reason, never dropped, never overwriting.

use shared::job::Job;
use worker::Outcome;
use worker::retry::Reason;

use crate::helpers::{TestStack, chat_with_messages, header};

#[tokio::test]
async fn a_chat_and_its_messages_are_stored_with_their_numbers_and_bodies() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack.publish(&chat_with_messages(&token, 3)).await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(outcomes, [Outcome::Stored; 4], "one batch, chat first");
    assert!(
        worker.process_next().await.unwrap().is_empty(),
        "the queue is empty"
    );
    let messages = stack.messages(&token, 1).await;
    assert_eq!(
        messages,
        [
            (1, "message 1, ok".into()),
            (2, "message 2, ok".into()),
            (3, "message 3, ok".into())
        ]
    );
}

#[tokio::test]
async fn a_redelivered_job_yields_one_row() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let jobs = chat_with_messages(&token, 1);
    // Each job twice, as a redelivery after a lost ack would bring it.
    stack.publish(&[jobs.clone(), jobs].concat()).await;
    let worker = stack.worker(&[]).await;

    assert_eq!(worker.process_next().await.unwrap(), [Outcome::Stored; 4]);

    assert_eq!(stack.chats_count(&token).await, 1);
    assert_eq!(stack.messages(&token, 1).await.len(), 1);
    let chat = stack
        .get(&format!("/applications/{token}/chats/1"))
        .await
        .body;
    assert_eq!(chat["messages_count"], 1);
}

#[tokio::test]
async fn the_same_number_with_another_body_is_dead_lettered_as_a_conflict() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let original = Job::message(token.clone(), 1, 1, "original".into());
    let impostor = Job::message(token.clone(), 1, 1, "impostor".into());
    stack
        .publish(&[Job::chat(token.clone(), 1), original, impostor.clone()])
        .await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(
        outcomes,
        [
            Outcome::Stored,
            Outcome::Stored,
            Outcome::DeadLettered(Reason::Conflict)
        ],
        "in one batch, the first of a number wins"
    );
    assert_eq!(
        stack.messages(&token, 1).await,
        [(1, "original".into())],
        "never overwritten"
    );
    let letters = stack.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        Job::decode(&letters[0].0).unwrap(),
        impostor,
        "the payload is kept"
    );
    assert_eq!(header(&letters[0].1, "x-reason"), "conflict");
    assert_eq!(header(&letters[0].1, "x-attempts"), "1");
    assert!(header(&letters[0].1, "x-last-error").contains("409"));
}

#[tokio::test]
async fn a_job_of_an_unknown_application_is_dead_lettered_at_once() {
    let stack = TestStack::start().await;
    stack
        .publish(&[
            Job::chat("no-such-token".into(), 1),
            Job::message("no-such-token".into(), 1, 1, "x".into()),
        ])
        .await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(
        outcomes,
        [Outcome::DeadLettered(Reason::UnknownApplication); 2]
    );
    let reasons: Vec<String> = stack
        .dead_letters()
        .await
        .iter()
        .map(|(_, h)| header(h, "x-reason"))
        .collect();
    assert_eq!(reasons, ["unknown_application", "unknown_application"]);
}

#[tokio::test]
async fn a_payload_that_is_not_a_job_is_dead_lettered_byte_for_byte() {
    let stack = TestStack::start().await;
    let garbage = b"\x00not json, at all \xff".to_vec();
    let future_version = br#"{"v":99,"id":"00000000-0000-0000-0000-000000000000"}"#.to_vec();
    stack
        .publish_raw(&[garbage.clone(), future_version.clone()])
        .await;
    let worker = stack.worker(&[]).await;

    assert_eq!(
        worker.process_next().await.unwrap(),
        [Outcome::DeadLettered(Reason::Malformed); 2]
    );

    let letters = stack.dead_letters().await;
    let payloads: Vec<&Vec<u8>> = letters.iter().map(|(payload, _)| payload).collect();
    assert_eq!(payloads, [&garbage, &future_version]);
    assert_eq!(header(&letters[0].1, "x-reason"), "malformed");
}

#[tokio::test]
async fn a_message_that_arrives_before_its_chat_waits_for_it() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .publish(&[Job::message(token.clone(), 1, 1, "early".into())])
        .await;
    let worker = stack.spawn_worker(&[]).await;

    // The message fails (chat not stored) and goes to a retry queue; its
    // chat arrives meanwhile.
    stack.publish(&[Job::chat(token.clone(), 1)]).await;

    assert_eq!(
        stack.wait_for_messages(&token, 1, 1).await,
        [(1, "early".into())]
    );
    worker.stop().await;
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
}

#[tokio::test]
async fn a_record_the_database_refuses_is_dead_lettered_alone_and_its_batch_is_stored() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .chat_system
        .database
        .execute("ALTER TABLE messages ADD CONSTRAINT no_poison CHECK (body NOT LIKE '%poison%')")
        .await;
    let jobs = [
        Job::chat(token.clone(), 1),
        Job::message(token.clone(), 1, 1, "fine".into()),
        Job::message(token.clone(), 1, 2, "a poison pill".into()),
        Job::message(token.clone(), 1, 3, "also fine".into()),
    ];
    stack.publish_batches(&jobs, jobs.len()).await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(
        outcomes,
        [
            Outcome::Stored,
            Outcome::Stored,
            Outcome::DeadLettered(Reason::Rejected),
            Outcome::Stored
        ]
    );
    assert_eq!(
        stack.messages(&token, 1).await,
        [(1, "fine".to_owned()), (3, "also fine".to_owned())]
    );
    let letters = stack.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(Job::decode(&letters[0].0).unwrap(), jobs[2]);
    assert_eq!(header(&letters[0].1, "x-reason"), "rejected");
    let error = header(&letters[0].1, "x-last-error");
    assert!(
        error.contains("refused") && error.contains("no_poison"),
        "{error}"
    );
}

//! Batches: many jobs stored with one bulk request, each meeting its own
//! fate.

use std::time::Duration;

use shared::job::Job;
use worker::Outcome;
use worker::retry::Reason;

use crate::helpers::{TestStack, eventually_chats, header};

#[tokio::test]
async fn a_batch_with_permanent_failures_dead_letters_exactly_those_jobs_and_stores_the_rest() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    assert_eq!(stack.chat_system.put_chat(&token, 1).await.status, 201);
    let original = stack
        .chat_system
        .put_message(&token, 1, 1, "original")
        .await;
    assert_eq!(original.status, 201);
    let impostor = Job::message(token.clone(), 1, 1, "impostor".into());
    let unknown = Job::chat("no-such-token".into(), 1);
    let jobs = vec![
        Job::chat(token.clone(), 2),
        Job::message(token.clone(), 1, 2, "two".into()),
        impostor.clone(),
        Job::message(token.clone(), 2, 1, "in chat 2".into()),
        unknown.clone(),
        Job::message(token.clone(), 1, 3, "three".into()),
    ];
    stack.publish_batches(&jobs, jobs.len()).await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(
        outcomes,
        [
            Outcome::Stored,
            Outcome::Stored,
            Outcome::DeadLettered(Reason::Conflict),
            Outcome::Stored,
            Outcome::DeadLettered(Reason::UnknownApplication),
            Outcome::Stored,
        ]
    );
    assert_eq!(
        stack.messages(&token, 1).await,
        [
            (1, "original".into()),
            (2, "two".into()),
            (3, "three".into())
        ]
    );
    assert_eq!(stack.messages(&token, 2).await, [(1, "in chat 2".into())]);
    let letters = stack.dead_letters().await;
    let dead: Vec<Job> = letters
        .iter()
        .map(|(payload, _)| Job::decode(payload).expect("a job of its own"))
        .collect();
    assert_eq!(dead, [impostor, unknown], "exactly those, each on its own");
    assert_eq!(header(&letters[0].1, "x-reason"), "conflict");
    assert_eq!(header(&letters[1].1, "x-reason"), "unknown_application");
    stack
        .assert_queue_len(&stack.broker.jobs_queue(), 0, "no job left waiting")
        .await;
}

#[tokio::test]
async fn a_job_that_is_not_one_inside_a_batch_is_dead_lettered_alone_byte_for_byte() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let good = [Job::chat(token.clone(), 1), Job::chat(token.clone(), 2)];
    let garbage = br#"{"v":1,"kind":"thread","token":"x"}"#;
    let properties = shared::amqp::publish::job_properties;
    stack
        .publish_batch(&[
            (good[0].encode(), properties(&good[0])),
            (garbage.to_vec(), shared::amqp::publish::json_properties()),
            (good[1].encode(), properties(&good[1])),
        ])
        .await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(
        outcomes,
        [
            Outcome::Stored,
            Outcome::DeadLettered(Reason::Malformed),
            Outcome::Stored
        ]
    );
    assert_eq!(stack.chats_count(&token).await, 2);
    let letters = stack.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, garbage, "its own bytes, not the whole batch");
}

#[tokio::test]
async fn a_batch_larger_than_the_chat_system_takes_is_sent_in_smaller_requests() {
    // 200 messages of 2 KB: 400 KB, under WORKER_BATCH_BYTES (512 KiB)
    // but four times what this chat-system takes in one request.
    let stack = TestStack::start_with(&["--max-body-bytes", "100000"]).await;
    let token = stack.application().await;
    assert_eq!(stack.chat_system.put_chat(&token, 1).await.status, 201);
    let body = "x".repeat(2000);
    let jobs: Vec<Job> = (1..=200)
        .map(|number| Job::message(token.clone(), 1, number, body.clone()))
        .collect();
    stack.publish_batches(&jobs, jobs.len()).await;
    let worker = stack.worker(&[]).await;

    let outcomes = worker.process_next().await.unwrap();

    assert_eq!(outcomes, vec![Outcome::Stored; 200]);
    let stored = stack.messages(&token, 1).await;
    assert_eq!(stored.len(), 200);
    assert!(stored.iter().all(|(_, stored)| *stored == body));
    assert!(stack.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_job_of_a_batch_whose_copy_fails_goes_back_alone_and_its_neighbours_are_done() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let worker = stack.spawn_worker(&[]).await;
    // The worker declared its retry queues when it connected; the first
    // one goes away, so a retry copy to it is unroutable and not published.
    let (_connection, channel) = stack.broker.channel().await;
    channel
        .queue_delete(
            format!("{}.retry.100ms", stack.broker.prefix)
                .as_str()
                .into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("deleting the retry queue");
    let stuck = Job::message(token.clone(), 2, 1, "its chat never comes".into());
    stack
        .publish_batches(&[Job::chat(token.clone(), 1), stuck], 2)
        .await;

    // The stuck job comes back, again and again.
    let writes = || stack.upstream.count("POST", "/records", "");
    testkit::eventually(
        "the stuck job tried again",
        Duration::from_secs(20),
        || async { (writes() >= 4).then_some(()) },
    )
    .await;
    worker.stop().await;

    let chat_writes = stack
        .upstream
        .seen()
        .iter()
        .filter(|seen| seen.path == "/records")
        .filter(|seen| String::from_utf8_lossy(&seen.body).contains(r#""kind":"chat""#))
        .count();
    assert_eq!(
        chat_writes, 1,
        "the stored chat was settled with its delivery, never sent again"
    );
    assert_eq!(stack.chats_count(&token).await, 1);
}

/// The numbers of one batch's records, drawn in several scopes (the chats
/// of three applications, then two chats' messages in each), all leave
/// flight: the batch's releases go out as one script call with an entry
/// per scope, and each entry must release its own scope's numbers.
#[tokio::test]
async fn a_batch_over_many_scopes_releases_every_scopes_numbers() {
    let stack = TestStack::start().await;
    let (api, _api) = stack.spawn_api().await;
    let client = testkit::http::client();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(stack.application().await);
    }
    let create = |path: String, body: Option<&'static str>| {
        let client = client.clone();
        async move {
            let request = client.post(path);
            let request = match body {
                Some(body) => request.json(&serde_json::json!({ "body": body })),
                None => request,
            };
            let answer = testkit::http::send(request).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    };
    for token in &tokens {
        for _ in 0..2 {
            create(format!("{api}/applications/{token}/chats"), None).await;
        }
    }
    let chats = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    assert_eq!(chats.len(), 6);
    for token in &tokens {
        for chat in 1..=2 {
            for _ in 0..2 {
                let path = format!("{api}/applications/{token}/chats/{chat}/messages");
                create(path, Some("hello")).await;
            }
        }
    }
    let messages = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    assert_eq!(messages.len(), 12);
    let in_flight = stack.redis.in_flight().await;
    assert_eq!(
        in_flight
            .values()
            .map(|numbers| numbers.len())
            .sum::<usize>(),
        18
    );

    let _worker = stack.spawn_worker(&[]).await;
    stack.publish_batches(&chats, chats.len()).await;
    for token in &tokens {
        eventually_chats(&stack, token, 2).await;
    }
    stack.publish_batches(&messages, messages.len()).await;
    for token in &tokens {
        for chat in 1..=2 {
            assert_eq!(stack.wait_for_messages(token, chat, 2).await.len(), 2);
        }
    }
    stack.assert_settled().await;
}

//! Numbers are distinct, consecutive, and the chat's messages can start at
//! once.

use std::collections::BTreeSet;

use futures::future::join_all;

use crate::helpers::{spawn_app, spawn_app_with};

/// A thousand requests at once on a debug build, beside the other tests:
/// Redis and the chat-system (the one seed all the others wait for) answer
/// late, which is not what these tests are about. The seed lock outlives
/// the seed's read.
const PATIENT: &[&str] = &[
    "--redis-timeout-ms",
    "10000",
    "--chat-system-timeout-ms",
    "10000",
    "--seed-lock-ms",
    "15000",
    "--seed-wait-ms",
    "20000",
];

#[tokio::test]
async fn a_thousand_concurrent_chat_creates_get_exactly_1_to_1000() {
    let app = spawn_app_with(PATIENT).await;
    let token = app.application(0).await;

    let answers = join_all((0..1000).map(|_| app.create_chat(&token))).await;

    let numbers: BTreeSet<i64> = answers
        .iter()
        .map(|answer| answer.number("chat number"))
        .collect();
    assert_eq!(numbers, (1..=1000).collect::<BTreeSet<i64>>());
    let queued: BTreeSet<i64> = app
        .expect_jobs(1000)
        .await
        .iter()
        .map(|job| job.chat_number())
        .collect();
    assert_eq!(queued, numbers, "one job per number handed out");
}

#[tokio::test]
async fn a_thousand_concurrent_messages_in_one_chat_get_exactly_1_to_1000() {
    let app = spawn_app_with(PATIENT).await;
    let token = app.application(1).await;

    let texts: Vec<String> = (0..1000).map(|i| format!("message-{i}")).collect();
    let answers = join_all(texts.iter().map(|text| app.create_message(&token, 1, text))).await;

    let numbers: BTreeSet<i64> = answers
        .iter()
        .map(|answer| answer.number("message number"))
        .collect();
    assert_eq!(numbers, (1..=1000).collect::<BTreeSet<i64>>());
    let jobs = app.expect_jobs(1000).await;
    let queued: BTreeSet<i64> = jobs.iter().map(|job| job.number()).collect();
    assert_eq!(queued, numbers);
}

#[tokio::test]
async fn a_chat_created_through_the_api_takes_messages_at_once() {
    let app = spawn_app().await;
    let token = app.application(0).await;

    let chat = app.create_chat(&token).await.number("chat number");
    let message = app.create_message(&token, chat, "first").await;

    assert_eq!(message.number("message number"), 1);
    assert_eq!(
        app.upstream.count("GET", "/applications/", "/chats/1"),
        0,
        "the new chat's counter started at 0 without asking the chat-system"
    );
}

#[tokio::test]
async fn each_chat_counts_its_own_messages() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    let first = app.create_chat(&token).await.number("chat number");
    let second = app.create_chat(&token).await.number("chat number");

    let a = app
        .create_message(&token, first, "a")
        .await
        .number("message number");
    let b = app
        .create_message(&token, second, "b")
        .await
        .number("message number");
    let c = app
        .create_message(&token, first, "c")
        .await
        .number("message number");

    assert_eq!((a, b, c), (1, 1, 2));
}

#[tokio::test]
async fn a_drawn_number_stays_in_flight_and_its_counter_does_not_expire() {
    let app = spawn_app().await;
    let token = app.application(0).await;

    let chat = app.create_chat(&token).await.number("chat number");

    let mut redis = app.redis.connection().await;
    let counter = format!("{}:{{{token}}}:chats", app.redis.prefix);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&counter)
        .query_async(&mut redis)
        .await
        .unwrap();
    let in_flight: Vec<i64> = redis::cmd("SMEMBERS")
        .arg(format!("{counter}:inflight"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no TTL while a job of the scope is in flight");
    assert_eq!(in_flight, [chat]);
}

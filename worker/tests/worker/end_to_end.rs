//! The api and the worker together: what the api answered is what gets
//! stored, and stored numbers leave flight so their counters may expire.

use std::time::Duration;

use futures::future::join_all;
use testkit::eventually;

use crate::helpers::TestStack;

#[tokio::test]
async fn every_record_the_api_answered_for_is_stored_once_with_its_body() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = stack.spawn_api().await;
    let worker = stack.spawn_worker(&[]).await;
    let client = reqwest::Client::new();
    let chat: serde_json::Value = client
        .post(format!("{api}/applications/{token}/chats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let chat = chat["chat number"].as_i64().expect("a chat number");

    let bodies: Vec<String> = (0..200)
        .map(|i| format!("hello, {i} / \"quoted\" — é"))
        .collect();
    let answers = join_all(bodies.iter().map(|body| {
        client
            .post(format!("{api}/applications/{token}/chats/{chat}/messages"))
            .json(&serde_json::json!({ "body": body }))
            .send()
    }))
    .await;
    let mut answered = Vec::new();
    for (answer, body) in answers.into_iter().zip(&bodies) {
        let answer: serde_json::Value = answer.unwrap().json().await.unwrap();
        answered.push((
            answer["message number"].as_i64().expect("a number"),
            body.clone(),
        ));
    }
    answered.sort();

    let stored = stack.wait_for_messages(&token, chat, answered.len()).await;
    assert_eq!(stored, answered);
    worker.stop().await;
}

#[tokio::test]
async fn a_stored_number_leaves_flight_and_its_counter_gets_its_ttl_back() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = stack.spawn_api().await;
    let client = reqwest::Client::new();
    client
        .post(format!("{api}/applications/{token}/chats"))
        .send()
        .await
        .unwrap();
    let counter = format!("{}:{{{token}}}:chats", stack.redis.prefix);
    let mut redis = stack.redis.connection().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&counter)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "no TTL while chat 1 is in flight");

    let worker = stack.spawn_worker(&[]).await;
    crate::helpers::eventually_chats(&stack, &token, 1).await;

    let ttl = eventually("the counter's TTL back", Duration::from_secs(10), || {
        let (counter, mut redis) = (counter.clone(), redis.clone());
        async move {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&counter)
                .query_async(&mut redis)
                .await
                .ok()?;
            (ttl > 0).then_some(ttl)
        }
    })
    .await;
    assert!(ttl <= 3_600_000);
    let in_flight: i64 = redis::cmd("SCARD")
        .arg(format!("{counter}:inflight"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(in_flight, 0);
    let messages_ttl: i64 = redis::cmd("PTTL")
        .arg(format!(
            "{}:{{{token}}}:chat:1:messages",
            stack.redis.prefix
        ))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        messages_ttl > 0,
        "the stored chat's message counter may expire too"
    );
    worker.stop().await;
}

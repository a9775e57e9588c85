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
            answer["message number"]
                .as_i64()
                .unwrap_or_else(|| panic!("a number: {answer}")),
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

#[tokio::test]
async fn a_create_retried_with_its_key_after_a_lost_confirm_is_stored_once() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    assert_eq!(stack.chat_system.put_chat(&token, 1).await.status, 201);
    let amqp = testkit::TcpProxy::start(testkit::amqp_address()).await;
    let (api, _api) = stack
        .spawn_api_via(amqp.address(), &["--publish-timeout-ms", "500"])
        .await;
    let _worker = stack.spawn_worker(&[]).await;
    let client = testkit::http::client();
    let create = || {
        client
            .post(format!("{api}/applications/{token}/chats/1/messages"))
            .header("idempotency-key", "retry-me")
            .json(&serde_json::json!({ "body": "exactly once" }))
    };

    // The job reaches the broker, the confirm does not reach the api.
    amqp.freeze();
    let first = testkit::http::send(create()).await;
    assert_eq!(first.status, 503, "{}", first.body);
    amqp.thaw();
    let retried = eventually("the retry answered", Duration::from_secs(20), || async {
        let answer = testkit::http::send(create()).await;
        (answer.status == 200).then_some(answer)
    })
    .await;

    assert_eq!(retried.number("message number"), 1);
    let stored = stack.wait_for_messages(&token, 1, 1).await;
    assert_eq!(stored, [(1, "exactly once".to_owned())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.messages(&token, 1).await.len(), 1, "one row");
}

/// `count` distinct words (`w0`, `w1`, … in base 26), separated by spaces.
fn distinct_words(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 16);
    let mut index = 0_u64;
    while text.len() < bytes {
        let (mut word, mut rest) = (String::from("w"), index);
        loop {
            word.push((b'a' + (rest % 26) as u8) as char);
            rest /= 26;
            if rest == 0 {
                break;
            }
        }
        text.push_str(&word);
        text.push(' ');
        index += 1;
    }
    text.truncate(bytes);
    text.trim_end().to_owned()
}

#[tokio::test]
async fn a_990_kb_message_of_distinct_words_is_stored_and_found() {
    // A chat-system and an api configured for messages of a megabyte.
    let stack = TestStack::start_with(&["--max-body-bytes", "8000000"]).await;
    let token = stack.application().await;
    let (api, _api) = stack
        .spawn_api_via(testkit::amqp_address(), &["--max-message-bytes", "1000000"])
        .await;
    let worker = stack.spawn_worker(&[]).await;
    let client = testkit::http::client();
    let chat = testkit::http::send(client.post(format!("{api}/applications/{token}/chats"))).await;
    assert_eq!(chat.number("chat number"), 1);
    let body = distinct_words(990_000);

    let answer = testkit::http::send(
        client
            .post(format!("{api}/applications/{token}/chats/1/messages"))
            .json(&serde_json::json!({ "body": body })),
    )
    .await;

    assert_eq!(answer.number("message number"), 1);
    let stored = stack.wait_for_messages(&token, 1, 1).await;
    assert!(stored[0].1 == body, "stored with its whole body");
    // Search covers the first 100,000 characters of a body.
    let early = body.split(' ').nth(100).expect("a word");
    let hits = stack
        .get(&format!(
            "/applications/{token}/chats/1/messages/search?q={early}"
        ))
        .await;
    assert_eq!(hits.status, 200);
    assert_eq!(hits.body["items"][0]["number"], 1, "found by {early}");
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_strangers_writes_of_the_next_numbers_are_refused_and_the_clients_records_stored() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = stack.spawn_api().await;
    let worker = stack.spawn_worker(&[]).await;
    let client = testkit::http::client();
    let create = |body: &'static str| {
        client
            .post(format!("{api}/applications/{token}/chats/1/messages"))
            .json(&serde_json::json!({ "body": body }))
    };
    let chat = testkit::http::send(client.post(format!("{api}/applications/{token}/chats"))).await;
    assert_eq!(chat.number("chat number"), 1);
    assert_eq!(
        testkit::http::send(create("first"))
            .await
            .number("message number"),
        1
    );

    // Someone who can reach the chat-system, but has no credential, writes
    // the numbers the api is about to hand out.
    for number in [2, 3] {
        let url = stack
            .chat_system
            .url(&format!("/applications/{token}/chats/1/messages/{number}"));
        let put = testkit::http::send(
            client
                .put(url)
                .json(&serde_json::json!({ "body": "a stranger's text" })),
        )
        .await;
        assert_eq!(put.status, 401, "{}", put.body);
    }
    assert_eq!(
        testkit::http::send(create("second"))
            .await
            .number("message number"),
        2
    );
    assert_eq!(
        testkit::http::send(create("third"))
            .await
            .number("message number"),
        3
    );

    let stored = stack.wait_for_messages(&token, 1, 3).await;
    assert_eq!(
        stored,
        [
            (1, "first".to_owned()),
            (2, "second".to_owned()),
            (3, "third".to_owned())
        ]
    );
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
    worker.stop().await;
}

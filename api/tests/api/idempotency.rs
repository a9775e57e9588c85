//! `Idempotency-Key`: a retry with the key gets the first attempt's number
//! and publishes at most that attempt's job again; nothing else is drawn.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;

use testkit::{Fault, eventually};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// The next number drawn without a key: shows what the keyed requests
/// before it drew.
async fn next_chat(app: &TestApp, token: &str) -> i64 {
    app.create_chat(token).await.number("chat number")
}

#[tokio::test]
async fn a_retry_after_a_confirm_that_never_came_gets_the_first_number_and_the_same_job() {
    let app = spawn_app_with(&["--publish-timeout-ms", "500"]).await;
    let token = app.application(0).await;

    app.amqp_proxy.freeze();
    let first = app.create_chat_keyed(&token, "order-17").await;
    assert_eq!(first.status, 503, "{}", first.body);
    app.amqp_proxy.thaw();

    let retry = testkit::eventually("the retry to be answered", Duration::from_secs(20), || {
        let app = &app;
        let token = &token;
        async move {
            let retry = app.create_chat_keyed(token, "order-17").await;
            (retry.status == 200).then_some(retry)
        }
    })
    .await;
    assert_eq!(retry.number("chat number"), 1);
    let again = app.create_chat_keyed(&token, "order-17").await;
    assert_eq!(again.number("chat number"), 1, "answered from the key");
    assert_eq!(next_chat(&app, &token).await, 2, "nothing else drawn");

    let jobs = app.expect_jobs_at_least(2).await;
    let keyed: Vec<_> = jobs.iter().filter(|job| job.number() == 1).collect();
    assert!(!keyed.is_empty());
    let ids: HashSet<_> = keyed.iter().map(|job| job.id).collect();
    assert_eq!(
        ids.len(),
        1,
        "the first attempt's job, published again: {keyed:?}"
    );
}

#[tokio::test]
async fn the_same_key_with_another_request_is_422_and_draws_nothing() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    let first = app.create_message_keyed(&token, 1, "hello", "k1").await;
    assert_eq!(first.number("message number"), 1);

    let other_body = app.create_message_keyed(&token, 1, "hullo", "k1").await;
    assert_eq!(other_body.status, 422, "{}", other_body.body);
    app.store_chat(&token, 2).await;
    let other_chat = app.create_message_keyed(&token, 2, "hello", "k1").await;
    assert_eq!(other_chat.status, 422, "{}", other_chat.body);

    let by_path = app
        .post_keyed(
            &format!("/applications/{token}/chats/1/messages/hello"),
            "k1",
        )
        .await;
    assert_eq!(
        by_path.number("message number"),
        1,
        "the same request by path is the same request"
    );
    let next = app.create_message_json(&token, 1, "next").await;
    assert_eq!(
        next.number("message number"),
        2,
        "nothing drawn by the 422s"
    );
    assert_eq!(app.expect_jobs(2).await.len(), 2);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_draw_one_number() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    let answers =
        join_all((0..20).map(|_| app.create_message_keyed(&token, 1, "once", "the-key"))).await;

    for answer in &answers {
        assert_eq!(answer.number("message number"), 1, "{}", answer.body);
    }
    let next = app.create_message_json(&token, 1, "after").await;
    assert_eq!(next.number("message number"), 2);
    let jobs = app.expect_jobs(2).await;
    assert_eq!(
        jobs.iter().filter(|job| job.number() == 1).count(),
        1,
        "one job published: {jobs:?}"
    );
}

/// The draw claims the key: a draw that finds another request seeding
/// the counter draws again under the claim it already made, and gets a
/// number (not 409, as a claim found held by someone would be).
#[tokio::test]
async fn keyed_creates_waiting_for_a_seed_draw_under_their_own_claims() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    // The seed's read of the chat-system takes 300 ms: the others meanwhile
    // find the seed lock held.
    app.upstream
        .fail_next(1, Fault::Delay(Duration::from_millis(300)));

    let answers = join_all((0..10).map(|i| {
        let token = &token;
        let app = &app;
        async move { app.create_chat_keyed(token, &format!("order-{i}")).await }
    }))
    .await;

    let numbers: HashSet<i64> = answers
        .iter()
        .map(|answer| answer.number("chat number"))
        .collect();
    assert_eq!(numbers, (1..=10).collect(), "{answers:?}");
    assert_eq!(
        app.upstream.count("GET", "/applications/", &token),
        1,
        "one seed"
    );
}

#[tokio::test]
async fn a_key_used_again_after_its_ttl_is_a_new_create() {
    // Three seconds: time enough for the second request even on a loaded
    // machine; the third waits until the key is certainly gone.
    let app = spawn_app_with(&["--idempotency-ttl-secs", "3"]).await;
    let token = app.application(0).await;
    let first_request = tokio::time::Instant::now();
    assert_eq!(
        app.create_chat_keyed(&token, "k")
            .await
            .number("chat number"),
        1
    );
    assert_eq!(
        app.create_chat_keyed(&token, "k")
            .await
            .number("chat number"),
        1
    );

    tokio::time::sleep_until(first_request + Duration::from_millis(3100)).await;

    assert_eq!(
        app.create_chat_keyed(&token, "k")
            .await
            .number("chat number"),
        2
    );
}

#[tokio::test]
async fn keys_are_per_application_and_per_kind() {
    let app = spawn_app().await;
    let first = app.application(1).await;
    let second = app.application(1).await;

    assert_eq!(
        app.create_chat_keyed(&first, "k")
            .await
            .number("chat number"),
        2
    );
    assert_eq!(
        app.create_chat_keyed(&second, "k")
            .await
            .number("chat number"),
        2
    );
    let message = app.create_message_keyed(&first, 1, "m", "k").await;
    assert_eq!(message.number("message number"), 1, "{}", message.body);
    assert_eq!(app.expect_jobs(3).await.len(), 3);
}

#[tokio::test]
async fn a_key_that_is_empty_too_long_or_not_visible_ascii_is_400_and_draws_nothing() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    let long = "k".repeat(256);
    let bad: [&[u8]; 4] = [b"", long.as_bytes(), b"two words", b"caf\xc3\xa9"];
    for key in bad {
        let url = format!("{}/applications/{token}/chats", app.url);
        let value = reqwest::header::HeaderValue::from_bytes(key).expect("a header value");
        let answer =
            testkit::http::send(app.client.post(url).header("idempotency-key", value)).await;
        assert_eq!(answer.status, 400, "{key:?}: {}", answer.body);
        assert!(
            answer.error().contains("Idempotency-Key"),
            "{}",
            answer.body
        );
    }
    assert_eq!(next_chat(&app, &token).await, 1);
}

#[tokio::test]
async fn a_key_held_by_a_request_that_died_is_409_until_its_lease_ends() {
    let app = spawn_app_with(&["--publish-timeout-ms", "500"]).await;
    let token = app.application(0).await;
    app.amqp_proxy.freeze();
    let first = app.create_chat_keyed(&token, "order-9").await;
    assert_eq!(first.status, 503, "{}", first.body);
    app.amqp_proxy.thaw();

    // Another api took the key over for a retry and died holding it: its
    // lease runs a minute more (in Redis time, as the api reads it).
    let key = shared::counters::Keys::new(&app.redis.prefix).idempotency(&token, "chat", "order-9");
    let mut redis = app.redis.connection().await;
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let lease = seconds * 1000 + micros / 1000 + 60_000;
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("owner")
        .arg("a-dead-request")
        .arg("lease")
        .arg(lease)
        .query_async(&mut redis)
        .await
        .unwrap();

    let busy = app.create_chat_keyed(&token, "order-9").await;
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert_eq!(
        busy.error(),
        "a request with this Idempotency-Key is in progress, retry later"
    );

    // The lease ends: the retry publishes the first attempt's job.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("lease")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();
    let retry = app.create_chat_keyed(&token, "order-9").await;
    assert_eq!(retry.number("chat number"), 1, "{}", retry.body);
    assert_eq!(next_chat(&app, &token).await, 2, "nothing else drawn");
}

#[tokio::test]
async fn a_confirm_that_finds_its_key_gone_leaves_no_key_behind() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    let key = shared::counters::Keys::new(&app.redis.prefix).idempotency(&token, "chat", "gone");
    let redis = app.redis.connection().await;

    // The job waits for its confirm while the key goes (its TTL ran out,
    // say) before the api marks it queued.
    app.amqp_proxy.freeze();
    let key_goes = async {
        eventually("the key's number", Duration::from_secs(10), || {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                let number: Option<i64> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("number")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                number
            }
        })
        .await;
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut redis.clone())
            .await
            .unwrap();
        app.amqp_proxy.thaw();
    };
    let (create, ()) = tokio::join!(app.create_chat_keyed(&token, "gone"), key_goes);
    assert_eq!(create.number("chat number"), 1);

    // The confirm went out before this draw, in its lane's order.
    assert_eq!(next_chat(&app, &token).await, 2);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis.clone())
        .await
        .unwrap();
    assert_eq!(exists, 0, "the confirm made the key anew, without a TTL");
}

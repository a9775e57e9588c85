//! No application holds another back: a per-application rate limit, and
//! unknown tokens that cost Redis and the chat-system only their first
//! miss, with seeds bounded per process.

use std::time::{Duration, Instant};

use futures::future::join_all;
use testkit::Fault;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn an_application_over_its_rate_gets_429_and_draws_nothing_while_others_go_on() {
    let app = spawn_app_with(&[
        "--rate-limit-per-application",
        "2",
        "--rate-limit-burst",
        "5",
    ])
    .await;
    let noisy = app.application(0).await;
    let quiet = app.application(0).await;

    let answers = join_all((0..10).map(|_| app.create_chat(&noisy))).await;

    let statuses: Vec<u16> = answers.iter().map(|answer| answer.status).collect();
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        5,
        "{statuses:?}"
    );
    for refused in answers.iter().filter(|answer| answer.status != 200) {
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(
            refused.error(),
            "too many requests for this application, retry later"
        );
        let wait: u64 = refused
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
    }
    assert_eq!(app.create_chat(&quiet).await.number("chat number"), 1);
    assert_eq!(
        app.jobs().await.len(),
        6,
        "nothing drawn or queued for a 429"
    );

    // Half a second later, one more token.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.create_chat(&noisy).await.number("chat number"), 6);
}

#[tokio::test]
async fn a_token_found_unknown_costs_neither_redis_nor_the_chat_system_again() {
    let app = spawn_app_with(&[]).await;
    let first = app.create_chat("no-such-token").await;
    assert_eq!(first.status, 404, "{}", first.body);
    let reads = app.upstream.count("GET", "/applications/", "");

    // Redis away: what this process remembers answers on its own.
    app.redis_proxy.cut();
    for _ in 0..20 {
        let again = app.create_chat("no-such-token").await;
        assert_eq!(again.status, 404, "{}", again.body);
        let message = app.create_message("no-such-token", 1, "hello").await;
        assert_eq!(message.status, 404, "{}", message.body);
    }
    assert_eq!(app.upstream.count("GET", "/applications/", ""), reads);
    app.redis_proxy.restore();
}

#[tokio::test]
async fn seeds_run_at_most_seed_concurrency_at_once() {
    let app = spawn_app_with(&["--seed-concurrency", "2", "--seed-wait-ms", "20000"]).await;
    app.upstream
        .fail_always(Fault::Delay(Duration::from_millis(300)));
    let tokens: Vec<String> = (0..8).map(|n| format!("unknown-{n}")).collect();

    let started = Instant::now();
    let answers = join_all(tokens.iter().map(|token| app.create_chat(token))).await;

    assert!(answers.iter().all(|answer| answer.status == 404));
    assert!(
        started.elapsed() >= Duration::from_millis(1150),
        "8 seeds of 300 ms, 2 at a time, take four rounds: {:?}",
        started.elapsed()
    );
}

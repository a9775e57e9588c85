//! Transient failures are retried through the broker with backoff, then
//! succeed or, once the attempts are spent, are dead-lettered.

use std::time::Duration;

use shared::job::Job;
use testkit::{Fault, eventually};
use worker::Outcome;
use worker::retry::Reason;

use crate::helpers::{TestStack, header};

#[tokio::test]
async fn a_failed_attempt_waits_in_a_retry_queue_not_in_the_consumer() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack.publish(&[Job::chat(token.clone(), 1)]).await;
    stack.upstream.fail_next(1, Fault::Status(503));
    // Long enough that the copy is still waiting when the test looks,
    // however loaded the machine.
    let delay = [
        "--retry-initial-delay-ms",
        "3000",
        "--retry-max-delay-ms",
        "3000",
    ];
    let worker = stack.worker(&delay).await;
    let retry_queue = format!("{}.retry.3000ms", stack.broker.prefix);

    let started = std::time::Instant::now();
    let first = worker.process_next().await.unwrap();

    assert_eq!(first, [Outcome::Retried]);
    stack
        .assert_queue_len(&stack.broker.jobs_queue(), 0, "not requeued at once")
        .await;
    stack
        .assert_queue_len(&retry_queue, 1, "waiting out its delay in the broker")
        .await;
    let retried = eventually(
        "the job back from its retry queue",
        Duration::from_secs(10),
        || async {
            let outcomes = worker.process_next().await.unwrap();
            (!outcomes.is_empty()).then_some(outcomes)
        },
    )
    .await;
    assert_eq!(retried, [Outcome::Stored]);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "waited at least half its delay: {:?}",
        started.elapsed()
    );
    assert_eq!(stack.chats_count(&token).await, 1);
}

#[tokio::test]
async fn server_errors_429s_and_timeouts_are_retried_until_they_succeed() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .publish(&[
            Job::chat(token.clone(), 1),
            Job::chat(token.clone(), 2),
            Job::chat(token.clone(), 3),
        ])
        .await;
    stack.upstream.fail_next(1, Fault::Status(500));
    stack.upstream.fail_next(1, Fault::Status(429));
    stack
        .upstream
        .fail_next(1, Fault::Delay(Duration::from_secs(2)));

    let worker = stack.spawn_worker(&[]).await;

    crate::helpers::eventually_chats(&stack, &token, 3).await;
    worker.stop().await;
    assert_eq!(stack.upstream.pending_faults(), 0, "every fault was met");
    let writes = stack.upstream.count("POST", "/records", "");
    assert!(
        writes >= 4,
        "three failed writes, then the retries that stored: {writes}"
    );
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_dead_lettered_with_its_attempts_and_last_error() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let job = Job::message(token.clone(), 1, 1, "never stored".into());
    stack.publish(&[Job::chat(token.clone(), 1)]).await;
    let worker = stack.spawn_worker(&["--retry-max-attempts", "4"]).await;
    crate::helpers::eventually_chats(&stack, &token, 1).await;
    stack.upstream.fail_always(Fault::Status(503));

    stack.publish(std::slice::from_ref(&job)).await;
    stack.wait_for_dead_letters(1).await;

    worker.stop().await;
    let letters = stack.dead_letters().await;
    let mut dead = Job::decode(&letters[0].0).unwrap();
    assert_eq!(
        header(&letters[0].1, "x-reason"),
        Reason::Exhausted.as_str()
    );
    assert_eq!(header(&letters[0].1, "x-attempts"), "4");
    assert!(
        header(&letters[0].1, "x-last-error").contains("503"),
        "{:?}",
        letters[0].1
    );
    assert_eq!(
        dead.attempt, 3,
        "failed three times before the last attempt"
    );
    dead.attempt = 0;
    assert_eq!(dead, job);
}

#[tokio::test]
async fn a_retry_copy_keeps_its_error_without_the_token() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .publish(&[Job::message(token.clone(), 1, 1, "x".into())])
        .await;
    // Nothing listens on port 1: the chat-system is unreachable. A long
    // delay keeps the copy in its retry queue while the test reads it.
    let worker = stack
        .worker(&[
            "--chat-system-url",
            "http://127.0.0.1:1",
            "--retry-initial-delay-ms",
            "60000",
            "--retry-max-delay-ms",
            "60000",
        ])
        .await;

    assert_eq!(worker.process_next().await.unwrap(), [Outcome::Retried]);

    let retry_queue = format!("{}.retry.60000ms", stack.broker.prefix);
    let copy = stack.take_one(&retry_queue).await;
    let error = header(&copy.headers(), "x-last-error");
    assert!(error.starts_with("chat-system unreachable"), "{error}");
    assert!(!error.contains(&token), "{error}");
    assert!(!error.contains("127.0.0.1"), "no URL: {error}");
}

#[tokio::test]
async fn a_stored_job_whose_number_cannot_be_released_is_retried_without_spending_attempts() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack.publish(&[Job::chat(token.clone(), 1)]).await;
    let redis = testkit::TcpProxy::start(testkit::redis_address()).await;
    let redis_url = format!("redis://{}", redis.address());
    // One attempt only: a failure that spent it would dead-letter the job.
    // A long delay keeps each copy in its retry queue while the test reads
    // it; the test then sends it on as the queue's TTL would.
    let worker = stack
        .worker(&[
            "--redis-url",
            &redis_url,
            "--retry-max-attempts",
            "1",
            "--retry-initial-delay-ms",
            "60000",
            "--retry-max-delay-ms",
            "60000",
        ])
        .await;
    let retry_queue = format!("{}.retry.60000ms", stack.broker.prefix);
    redis.cut();

    assert_eq!(worker.process_next().await.unwrap(), [Outcome::Retried]);
    assert_eq!(stack.chats_count(&token).await, 1, "the record is stored");
    let copy = stack.take_one(&retry_queue).await;
    let headers = copy.headers();
    assert_eq!(header(&headers, "x-release-attempts"), "1");
    let error = header(&headers, "x-last-error");
    assert!(error.contains("release"), "{error}");
    assert_eq!(
        Job::decode(copy.payload()).unwrap().attempt,
        0,
        "no attempt spent"
    );
    stack.expire(copy).await;

    // A second failed release still spends nothing.
    assert_eq!(worker.process_next().await.unwrap(), [Outcome::Retried]);
    let again = stack.take_one(&retry_queue).await;
    assert_eq!(header(&again.headers(), "x-release-attempts"), "2");
    assert_eq!(Job::decode(again.payload()).unwrap().attempt, 0);
    stack.expire(again).await;

    redis.restore();
    let settled = eventually("the number released", Duration::from_secs(20), || async {
        let outcomes = worker.process_next().await.unwrap();
        match outcomes.as_slice() {
            [] => None,
            // The proxy's new connection may take a moment: a copy again.
            [Outcome::Retried] => {
                let copy = stack.take_one(&retry_queue).await;
                stack.expire(copy).await;
                None
            }
            _ => Some(outcomes),
        }
    })
    .await;
    assert_eq!(settled, [Outcome::Stored]);
    assert_eq!(stack.chats_count(&token).await, 1);
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
    stack
        .assert_queue_len(&retry_queue, 0, "no copy waiting to retry")
        .await;
}

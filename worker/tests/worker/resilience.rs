//! Killed workers, a lost broker connection, SIGTERM, competing workers:
//! nothing lost, nothing stored twice.

use std::time::Duration;

use testkit::{Fault, eventually};

use crate::helpers::{TestStack, chat_with_messages};

const JOBS: i64 = 300;

/// Every message of chat 1 stored exactly once with its body.
async fn assert_all_stored_once(stack: &TestStack, token: &str) {
    let messages = stack.wait_for_messages(token, 1, JOBS as usize).await;
    let expected: Vec<(i64, String)> = (1..=JOBS)
        .map(|n| (n, format!("message {n}, ok")))
        .collect();
    assert_eq!(messages, expected);
    let chat = stack
        .get(&format!("/applications/{token}/chats/1"))
        .await
        .body;
    assert_eq!(chat["messages_count"], JOBS, "no row twice");
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "no dead letter")
        .await;
}

#[tokio::test]
async fn killing_a_worker_mid_batch_loses_nothing() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    // As the api publishes under load: batch messages, here of 10 jobs.
    stack
        .publish_batches(&chat_with_messages(&token, JOBS), 10)
        .await;
    // Slow writes keep a full prefetch of deliveries in hand.
    stack
        .upstream
        .fail_always(Fault::Delay(Duration::from_millis(20)));

    let small_batches = ["--prefetch", "50", "--concurrency", "4", "--batch-max", "5"];
    let mut first = stack.worker_process(&small_batches);
    eventually("some messages stored", Duration::from_secs(30), || async {
        (stack.messages(&token, 1).await.len() >= 20).then_some(())
    })
    .await;
    first.kill().await.expect("SIGKILL");
    let stored_when_killed = stack.messages(&token, 1).await.len();
    assert!(stored_when_killed < JOBS as usize, "killed mid-batch");

    stack.upstream.heal();
    let mut second = stack.worker_process(&[]);
    assert_all_stored_once(&stack, &token).await;
    second.kill().await.expect("SIGKILL");
}

#[tokio::test]
async fn sigterm_finishes_the_jobs_in_hand_then_exits_cleanly() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack.publish(&chat_with_messages(&token, JOBS)).await;
    stack
        .upstream
        .fail_always(Fault::Delay(Duration::from_millis(200)));
    let small_batches = ["--prefetch", "20", "--concurrency", "2", "--batch-max", "5"];
    let mut worker = stack.worker_process(&small_batches);
    eventually("batches in hand", Duration::from_secs(30), || async {
        (stack.upstream.count("POST", "/records", "") >= 3).then_some(())
    })
    .await;

    let pid = worker.id().expect("a running worker") as i32;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("exits")
        .unwrap();

    assert!(exit.success(), "exit status {exit:?}");
    let stored = stack.messages(&token, 1).await.len() as i64 + stack.chats_count(&token).await;
    let waiting = stack.queue_len(&stack.broker.jobs_queue()).await as i64;
    assert_eq!(
        stored + waiting,
        JOBS + 1,
        "every job is either stored or back on the queue"
    );
    stack.upstream.heal();
    let mut second = stack.worker_process(&[]);
    assert_all_stored_once(&stack, &token).await;
    second.kill().await.expect("SIGKILL");
}

#[tokio::test]
async fn two_workers_share_one_queue() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .upstream
        .fail_always(Fault::Delay(Duration::from_millis(5)));
    let first = stack.spawn_worker(&["--prefetch", "10"]).await;
    let second = stack.spawn_worker(&["--prefetch", "10"]).await;

    stack.publish(&chat_with_messages(&token, JOBS)).await;

    assert_all_stored_once(&stack, &token).await;
    let (a, b) = (first.status.stored(), second.status.stored());
    assert_eq!(a + b, JOBS as u64 + 1);
    assert!(a > 0 && b > 0, "both took work: {a} and {b}");
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_lost_broker_connection_is_recovered_and_loses_nothing() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    stack
        .upstream
        .fail_always(Fault::Delay(Duration::from_millis(10)));
    let worker = stack.spawn_worker(&[]).await;
    stack.publish(&chat_with_messages(&token, JOBS)).await;
    eventually("some messages stored", Duration::from_secs(30), || async {
        (stack.messages(&token, 1).await.len() >= 20).then_some(())
    })
    .await;

    stack.amqp_proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.amqp_proxy.restore();
    stack.upstream.heal();

    assert_all_stored_once(&stack, &token).await;
    worker.stop().await;
}

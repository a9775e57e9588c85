//! On the Redis Cluster of `scripts/cluster`: a batch of the jobs of many
//! applications, whose keys live in different hash slots, is stored and
//! every number released, leaving nothing in flight and nothing to retry.

use futures::future::join_all;
use shared::counters::{Keys, Scope};
use shared::redis_client::Slot;
use testkit::cluster::Cluster;
use worker::Outcome;

use crate::helpers::TestStack;

const APPLICATIONS: usize = 6;
const MESSAGES: i64 = 5;

// Run by scripts/test in the cluster phase, after the rest of the suite.
#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_batch_mixing_applications_is_stored_and_released_on_every_slot() {
    let cluster = Cluster::up()
        .await
        .unwrap_or_else(|reason| panic!("the local clusters did not start: {reason}"));
    let stack = TestStack::start().await;
    let on_cluster = ["--redis-url", cluster.redis_url.as_str()];
    let (api, _api) = stack
        .spawn_api_via(testkit::amqp_address(), &on_cluster)
        .await;
    let mut tokens = Vec::new();
    for _ in 0..APPLICATIONS {
        tokens.push(stack.application().await);
    }
    let keys = Keys::new(&stack.redis.prefix);
    let slots: std::collections::HashSet<Slot> = tokens
        .iter()
        .map(|token| Slot::for_key(keys.counter(Scope::Chats { token })))
        .collect();
    assert!(slots.len() > 1, "the applications share one slot");

    // Every job queued before a worker runs, so one batch takes them all.
    let client = testkit::http::client();
    for token in &tokens {
        let chat =
            testkit::http::send(client.post(format!("{api}/applications/{token}/chats"))).await;
        assert_eq!(chat.number("chat number"), 1);
    }
    let (api, client) = (&api, &client);
    let messages = tokens.iter().flat_map(|token| {
        (0..MESSAGES).map(move |n| {
            let url = format!("{api}/applications/{token}/chats/1/messages/m{n}");
            testkit::http::send(client.post(url))
        })
    });
    for answer in join_all(messages).await {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let worker = stack
        .worker(&[on_cluster[0], on_cluster[1], "--batch-max", "1000"])
        .await;

    let outcomes = worker.process_next().await.unwrap();

    let jobs = APPLICATIONS * (1 + MESSAGES as usize);
    assert_eq!(outcomes.len(), jobs, "one batch took every job");
    assert!(
        outcomes.iter().all(|outcome| *outcome == Outcome::Stored),
        "{outcomes:?}"
    );
    let in_flight = cluster.in_flight(&stack.redis.prefix).await;
    for delay in ["100", "200"] {
        let queue = format!("{}.retry.{delay}ms", stack.broker.prefix);
        stack
            .assert_queue_len(&queue, 0, "no copy waiting to retry")
            .await;
    }
    cluster.delete_keys(&stack.redis.prefix).await;
    assert_eq!(in_flight, 0, "numbers left in flight");
}

#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_release_no_replica_confirmed_is_retried_until_one_does() {
    let cluster = Cluster::up()
        .await
        .unwrap_or_else(|reason| panic!("the local clusters did not start: {reason}"));
    let stack = TestStack::start().await;
    let on_cluster = ["--redis-url", cluster.redis_url.as_str()];
    let (api, _api) = stack
        .spawn_api_via(testkit::amqp_address(), &on_cluster)
        .await;
    let token = stack.application().await;
    let client = testkit::http::client();
    let chat = testkit::http::send(client.post(format!("{api}/applications/{token}/chats"))).await;
    assert_eq!(chat.number("chat number"), 1);
    let keys = Keys::new(&stack.redis.prefix);
    let shard = cluster
        .shard_of(&keys.counter(Scope::Chats { token: &token }))
        .await;
    let worker = stack
        .worker(&[
            on_cluster[0],
            on_cluster[1],
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "300",
        ])
        .await;

    // A first job with every node answering: the worker's cluster
    // connection is up before the replica stops.
    assert_eq!(worker.process_next().await.unwrap(), [Outcome::Stored]);
    let chat = testkit::http::send(client.post(format!("{api}/applications/{token}/chats"))).await;
    assert_eq!(chat.number("chat number"), 2);

    // Stored, but the release reaches no replica: a failover could lose
    // it and leave the number in flight for good, so it is retried.
    let replica_pid = cluster.redis_pid(shard.replica).await;
    testkit::cluster::signal(replica_pid, "STOP");
    let outcomes = worker.process_next().await.unwrap();
    testkit::cluster::signal(replica_pid, "CONT");
    assert_eq!(outcomes, [Outcome::Retried]);

    let settled = testkit::eventually(
        "the release confirmed",
        std::time::Duration::from_secs(20),
        || async {
            let outcomes = worker.process_next().await.unwrap();
            (outcomes == [Outcome::Stored]).then_some(())
        },
    )
    .await;
    assert_eq!(settled, ());
    let in_flight = cluster.in_flight(&stack.redis.prefix).await;
    cluster.delete_keys(&stack.redis.prefix).await;
    assert_eq!(in_flight, 0);
}

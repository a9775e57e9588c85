//! On the Redis Cluster of `scripts/cluster` (3 masters, 1 replica each):
//! a master that dies takes with it what it had not passed on to its
//! replica, so the api answers a number only once a replica holds its draw
//! (`REDIS_WAIT_REPLICAS`).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use shared::counters::{Keys, Scope};
use testkit::cluster::{Cluster, signal};
use testkit::eventually;

use crate::helpers::{TestApp, spawn_app_with};

/// The tests here stop and kill nodes: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The api on the clusters, drawing only what a replica holds.
async fn spawn_on(cluster: &Cluster) -> TestApp {
    spawn_app_with(&[
        "--redis-url",
        &cluster.redis_url,
        "--redis-wait-replicas",
        "1",
        "--redis-wait-timeout-ms",
        "300",
    ])
    .await
}

async fn clusters() -> Cluster {
    // scripts/test runs these only once the clusters are up.
    Cluster::up()
        .await
        .unwrap_or_else(|reason| panic!("the local clusters did not start: {reason}"))
}

/// Creates `count` chats at once; the numbers of those answered 200.
async fn burst(app: &TestApp, token: &str, count: usize) -> Vec<i64> {
    let answers = join_all((0..count).map(|_| app.create_chat(token))).await;
    answers
        .into_iter()
        .filter(|answer| answer.status == 200)
        .map(|answer| answer.number("chat number"))
        .collect()
}

// Run by scripts/test in a phase of its own, once the rest of the suite is
// done: booting and killing cluster nodes beside the parallel tests starves
// their timeouts on two cores.
#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn numbers_answered_before_a_master_dies_are_not_handed_out_again() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = clusters().await;
    let app = spawn_on(&cluster).await;
    let token = app.application(0).await;
    let counter = Keys::new(&app.redis.prefix).counter(Scope::Chats { token: &token });
    let shard = cluster.shard_of(&counter).await;
    let mut answered = burst(&app, &token, 40).await;
    assert_eq!(
        answered.len(),
        40,
        "every create is answered while all is well"
    );

    // The replica stops reading, and the master's replication stream
    // backs up behind it: what the master sends from now on sits in its
    // own memory, lost when it dies.
    let replica_pid = cluster.redis_pid(shard.replica).await;
    let master_pid = cluster.redis_pid(shard.master).await;
    signal(replica_pid, "STOP");
    let mut master = cluster.redis_node(shard.master).await;
    let junk = vec![b'x'; 1 << 20];
    for i in 0..48 {
        let _: () = redis::cmd("SET")
            .arg(format!("{}:{{{token}}}:junk:{i}", app.redis.prefix))
            .arg(&junk)
            .query_async(&mut master)
            .await
            .expect("SET on the master");
    }
    // These draws reach the master only: none may be answered.
    let unreplicated = burst(&app, &token, 20).await;
    answered.extend(&unreplicated);
    signal(master_pid, "KILL");
    signal(replica_pid, "CONT");
    eventually(
        "the replica to be promoted",
        Duration::from_secs(30),
        || async { (cluster.role(shard.replica).await.as_deref() == Some("master")).then_some(()) },
    )
    .await;

    // The promoted replica draws on from what it holds, once it has a
    // replica of its own: the old master, back.
    cluster.heal().await;
    let mut after = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while after.len() < 40 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "creates not answered again within 30 s of the failover"
        );
        after.extend(burst(&app, &token, 20).await);
    }

    let before: BTreeSet<i64> = answered.iter().copied().collect();
    let again: Vec<&i64> = after.iter().filter(|n| before.contains(n)).collect();
    assert!(again.is_empty(), "handed out twice: {again:?}");
    let distinct: BTreeSet<i64> = after.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        after.len(),
        "a number answered twice after the failover"
    );
    assert!(
        unreplicated.is_empty(),
        "numbers answered although no replica had them: {unreplicated:?}"
    );
}

#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_keyed_retry_is_answered_only_once_a_replica_holds_its_number() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = clusters().await;
    let app = spawn_on(&cluster).await;
    let token = app.application(0).await;
    // A warm counter: the keyed draw below needs no seed.
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    let counter = Keys::new(&app.redis.prefix).counter(Scope::Chats { token: &token });
    let shard = cluster.shard_of(&counter).await;
    let replica_pid = cluster.redis_pid(shard.replica).await;

    // The replica stops acknowledging: number 2 is drawn and recorded
    // under the key on the master, but not answered.
    signal(replica_pid, "STOP");
    let first = app.create_chat_keyed(&token, "order-1").await;
    let retry = app.create_chat_keyed(&token, "order-1").await;
    signal(replica_pid, "CONT");
    assert_eq!(first.status, 503, "{}", first.body);
    // 503 (the retry's own wait for a replica failed) or, should the first
    // attempt's give-up of the key not have landed while the node's
    // connection was blocked, 409 (the key still leased): either way no
    // number is answered.
    assert!(
        [503, 409].contains(&retry.status),
        "a retry republished a number no replica held: {} {}",
        retry.status,
        retry.body
    );

    // Within the key's lease (about 21 s here) at worst.
    let retry = eventually(
        "the retry to be answered",
        Duration::from_secs(40),
        || async {
            let retry = app.create_chat_keyed(&token, "order-1").await;
            (retry.status == 200).then_some(retry)
        },
    )
    .await;
    assert_eq!(retry.number("chat number"), 2, "the first attempt's number");
}

/// Sends SIGCONT when dropped: a failed test leaves no node stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// Latencies of `count` chat creates one after the other, all answered 200.
async fn timed_creates(app: &TestApp, token: &str, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = tokio::time::Instant::now();
        let answer = app.create_chat(token).await;
        latencies.push(started.elapsed());
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    latencies.sort();
    latencies
}

#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_master_whose_replica_lags_delays_only_its_own_applications() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = clusters().await;
    let app = spawn_on(&cluster).await;
    let keys = Keys::new(&app.redis.prefix);
    let slow = app.application(0).await;
    let slow_shard = cluster
        .shard_of(&keys.counter(Scope::Chats { token: &slow }))
        .await;
    let quiet = loop {
        let token = app.application(0).await;
        let shard = cluster
            .shard_of(&keys.counter(Scope::Chats { token: &token }))
            .await;
        if shard.master != slow_shard.master {
            break token;
        }
    };
    assert_eq!(app.create_chat(&slow).await.number("chat number"), 1);
    let alone = timed_creates(&app, &quiet, 40).await;

    // The slow application's master can no longer reach its replica: its
    // draws wait out REDIS_WAIT_TIMEOUT_MS (300 ms) and are refused, while
    // they keep coming.
    let replica_pid = cluster.redis_pid(slow_shard.replica).await;
    signal(replica_pid, "STOP");
    let resume = Resume(replica_pid);
    let measured = std::sync::atomic::AtomicBool::new(false);
    let flood = async {
        let mut longest = Duration::ZERO;
        while !measured.load(std::sync::atomic::Ordering::Relaxed) {
            let started = tokio::time::Instant::now();
            let answers = join_all((0..20).map(|_| app.create_chat(&slow))).await;
            assert!(answers.iter().all(|answer| answer.status == 503));
            longest = longest.max(started.elapsed());
        }
        longest
    };
    let measure = async {
        // Once the flood is under way.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let latencies = timed_creates(&app, &quiet, 40).await;
        measured.store(true, std::sync::atomic::Ordering::Relaxed);
        latencies
    };
    let (during, flood_waited) = tokio::join!(measure, flood);
    drop(resume);

    let median = |latencies: &[Duration]| latencies[latencies.len() / 2];
    assert!(
        median(&during) < median(&alone) * 3 + Duration::from_millis(20),
        "the other master's application slowed down: median {:?} alone, {:?} beside the lagging shard",
        median(&alone),
        median(&during)
    );
    assert!(
        flood_waited < Duration::from_secs(2),
        "the lagging shard's creates are refused within the wait timeout and its margin: {flood_waited:?}"
    );
    cluster.delete_keys(&app.redis.prefix).await;
}

#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_draw_no_replica_confirmed_gives_its_number_back_once_one_can() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = clusters().await;
    let app = spawn_on(&cluster).await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    let keys = Keys::new(&app.redis.prefix);
    let scope = Scope::Chats { token: &token };
    let shard = cluster.shard_of(&keys.counter(scope)).await;
    let replica_pid = cluster.redis_pid(shard.replica).await;
    let mut master = cluster.redis_node(shard.master).await;
    let in_flight = |mut node: redis::aio::MultiplexedConnection| {
        let key = keys.in_flight(scope);
        async move {
            let numbers: BTreeSet<i64> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut node)
                .await
                .expect("SMEMBERS");
            numbers
        }
    };

    // Drawn on the master, confirmed by no replica: 503, and no job will
    // carry number 2, so it is given back, not left in flight for good.
    signal(replica_pid, "STOP");
    let resume = Resume(replica_pid);
    let refused = app.create_chat(&token).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    eventually("number 2 given back", Duration::from_secs(10), || async {
        (!in_flight(master.clone()).await.contains(&2)).then_some(())
    })
    .await;
    drop(resume);
    let next = eventually(
        "creates answered again",
        Duration::from_secs(20),
        || async {
            let answer = app.create_chat(&token).await;
            (answer.status == 200).then_some(answer)
        },
    )
    .await;
    assert_eq!(next.number("chat number"), 3, "a gap, never reused");
    let _: () = redis::cmd("PING").query_async(&mut master).await.unwrap();
    cluster.delete_keys(&app.redis.prefix).await;
}

/// Sets `appendfsync always` on the node again when dropped, even when
/// the test that changed it fails.
struct FsyncRestored(u16);

impl Drop for FsyncRestored {
    fn drop(&mut self) {
        let restored = redis::Client::open(format!("redis://127.0.0.1:{}", self.0))
            .and_then(|client| client.get_connection())
            .and_then(|mut connection| {
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("appendfsync")
                    .arg("always")
                    .query::<()>(&mut connection)
            });
        if let Err(error) = restored {
            eprintln!(
                "could not set appendfsync always again on {}: {error}",
                self.0
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs the clusters of scripts/cluster; scripts/test runs it after the suite"]
async fn a_master_that_stops_fsyncing_every_write_stops_the_draws() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = clusters().await;
    let app = spawn_app_with(&[
        "--redis-url",
        &cluster.redis_url,
        "--redis-durability",
        "verify",
    ])
    .await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    let counter = Keys::new(&app.redis.prefix).counter(Scope::Chats { token: &token });
    let shard = cluster.shard_of(&counter).await;

    // One master of three; CONFIG GET on one node at random would miss
    // it two times in three.
    let restored = FsyncRestored(shard.master);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query_async(&mut cluster.redis_node(shard.master).await)
        .await
        .expect("CONFIG SET on the master");

    let said = eventually(
        "the periodic check to find the master",
        Duration::from_secs(10),
        || async {
            let ready = app.get("/readyz").await;
            let said = ready.body["redis"].as_str()?.to_owned();
            said.starts_with("not durable").then_some(said)
        },
    )
    .await;
    assert!(
        said.contains(&format!(
            "appendfsync everysec on 127.0.0.1:{}",
            shard.master
        )),
        "readyz names the setting and the master: {said}"
    );
    let refused = app.create_chat(&token).await;
    assert_eq!(refused.status, 503, "{}", refused.body);

    drop(restored);
    eventually(
        "draws once every master fsyncs again",
        Duration::from_secs(10),
        || async { (app.create_chat(&token).await.status == 200).then_some(()) },
    )
    .await;
    cluster.delete_keys(&app.redis.prefix).await;
}

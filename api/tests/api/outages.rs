//! Redis, RabbitMQ or the chat-system going away: a quick 503 with
//! `Retry-After`, and recovery without restarting the api.

use std::time::{Duration, Instant};

use shared::counters::{Keys, Scope};
use testkit::{Answer, DurableRedis, Fault, eventually};

use crate::helpers::{TestApp, spawn_app, spawn_app_on};

fn assert_unavailable(answer: &Answer, started: Instant) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered fast: {:?}",
        started.elapsed()
    );
}

async fn recovers(app: &TestApp, token: &str) -> i64 {
    eventually(
        "creates to succeed again",
        Duration::from_secs(20),
        || async {
            let answer = app.create_chat(token).await;
            (answer.status == 200).then(|| answer.number("chat number"))
        },
    )
    .await
}

#[tokio::test]
async fn redis_down_is_a_503_and_recovered_from() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    app.redis_proxy.cut();
    let started = Instant::now();
    let during = app.create_chat(&token).await;
    assert_unavailable(&during, started);

    app.redis_proxy.restore();
    let after = recovers(&app, &token).await;
    assert_eq!(after, 2, "the counter survived in Redis");
}

#[tokio::test]
async fn rabbitmq_down_is_a_503_and_recovered_from() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    app.amqp_proxy.cut();
    let started = Instant::now();
    let during = app.create_chat(&token).await;
    assert_unavailable(&during, started);

    app.amqp_proxy.restore();
    let after = recovers(&app, &token).await;
    assert!(after >= 2);
    let queued: Vec<i64> = app
        .jobs()
        .await
        .iter()
        .map(|job| job.chat_number())
        .collect();
    assert!(queued.contains(&1) && queued.contains(&after), "{queued:?}");
}

#[tokio::test]
async fn the_chat_system_down_is_a_503_on_a_cold_counter_and_recovered_from() {
    let app = spawn_app().await;
    let token = app.application(4).await;

    app.upstream_link.cut();
    let started = Instant::now();
    let during = app.create_chat(&token).await;
    assert_unavailable(&during, started);

    app.upstream_link.restore();
    assert_eq!(recovers(&app, &token).await, 5);
}

#[tokio::test]
async fn a_chat_system_timing_out_is_a_503() {
    let app = crate::helpers::spawn_app_with(&["--chat-system-timeout-ms", "500"]).await;
    let token = app.application(0).await;
    app.upstream
        .fail_always(Fault::Delay(Duration::from_secs(2)));

    let started = Instant::now();
    let during = app.create_chat(&token).await;
    assert_unavailable(&during, started);

    app.upstream.heal();
    assert_eq!(recovers(&app, &token).await, 1);
}

#[tokio::test]
async fn a_warm_counter_needs_no_chat_system() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    app.upstream_link.cut();

    assert_eq!(app.create_chat(&token).await.number("chat number"), 2);
}

#[tokio::test]
async fn a_refused_job_gives_its_number_back_and_leaves_a_gap() {
    let app = spawn_app().await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    // Without its queue the mandatory publish is returned as unroutable.
    let (_connection, channel) = app.broker.channel().await;
    channel
        .queue_delete(
            app.broker.jobs_queue().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("queue.delete");

    let refused = app.create_chat(&token).await;

    assert_eq!(refused.status, 503, "{}", refused.body);
    let mut redis = app.redis.connection().await;
    let counter = format!("{}:{{{token}}}:chats", app.redis.prefix);
    let in_flight: Vec<i64> = redis::cmd("SMEMBERS")
        .arg(format!("{counter}:inflight"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        in_flight,
        [1],
        "chat 2 was given back; chat 1 is still in flight"
    );
    let chat_2_messages: bool = redis::cmd("EXISTS")
        .arg(format!("{}:{{{token}}}:chat:2:messages", app.redis.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!chat_2_messages, "the refused chat takes no messages");
    let message = app
        .create_message(&token, 2, "to a chat that was refused")
        .await;
    assert_eq!(message.status, 404);

    app.declare_topology().await;
    assert_eq!(
        app.create_chat(&token).await.number("chat number"),
        3,
        "2 is a gap, never handed out again"
    );
}

#[tokio::test]
async fn shutting_down_answers_the_requests_in_flight_first() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    // A held-back chat-system read (seeding chat 1's message counter) keeps
    // the request in flight while the shutdown starts.
    app.upstream
        .fail_next(1, Fault::Delay(Duration::from_millis(1000)));

    let in_flight = app.create_message(&token, 1, "in flight during shutdown");
    let stopping = async {
        // Once the request is held at the chat-system, however long the
        // machine took to get it there.
        eventually("the request in flight", Duration::from_secs(10), || async {
            (app.upstream.pending_faults() == 0).then_some(())
        })
        .await;
        app.stop().await;
    };
    let (answer, ()) = tokio::join!(in_flight, stopping);

    assert_eq!(answer.number("message number"), 1);
    assert_eq!(
        app.jobs().await.len(),
        1,
        "its job was published before the api stopped"
    );
}

#[tokio::test]
async fn a_broker_that_stops_answering_gets_timeouts_then_a_fresh_channel() {
    let app = crate::helpers::spawn_app_with(&["--publish-timeout-ms", "500"]).await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    // Connected, but nothing comes back: no confirm, no channel.
    app.amqp_proxy.freeze();
    for _ in 0..3 {
        let started = Instant::now();
        let during = app.create_chat(&token).await;
        assert_eq!(during.status, 503, "{}", during.body);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(2),
            "answered after its publish timeout, not later: {waited:?}"
        );
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    // Only this test of the binary lets a confirm time out.
    let replaced = metrics
        .lines()
        .find_map(|line| line.strip_prefix("api_publish_channels_replaced_total "))
        .expect("the channels replaced counted");
    assert!(replaced.parse::<f64>().unwrap() >= 1.0, "{replaced}");

    app.amqp_proxy.thaw();
    let after = recovers(&app, &token).await;
    assert!(after >= 2);
    assert!(
        app.jobs()
            .await
            .iter()
            .any(|job| job.chat_number() == after),
        "published on the fresh channel"
    );
}

#[tokio::test]
async fn a_create_waits_at_most_its_publish_timeout_and_what_was_never_sent_is_never_sent() {
    // One lane publishing one job at a time, and room for a few jobs in
    // its queue: with the broker frozen, most requests never get a lane.
    let app = crate::helpers::spawn_app_with(&[
        "--publish-timeout-ms",
        "500",
        "--publish-channels",
        "1",
        "--publish-batch-max",
        "1",
        "--publish-queue-bytes",
        "2000",
    ])
    .await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    app.amqp_proxy.freeze();
    let creates = (0..20).map(|_| async {
        let started = Instant::now();
        let answer = app.create_chat(&token).await;
        (answer, started.elapsed())
    });
    let answers = futures::future::join_all(creates).await;
    for (answer, waited) in &answers {
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            *waited < Duration::from_millis(1500),
            "the whole wait is bounded by the publish timeout: {waited:?}"
        );
    }
    app.amqp_proxy.thaw();
    assert!(recovers(&app, &token).await > 21);

    // Every number drawn is now a job on the queue or a gap: the numbers
    // in flight (no worker runs) are exactly those of the queued jobs.
    let scope = format!("{}:{{{token}}}:chats:inflight", app.redis.prefix);
    let queued = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let in_flight = eventually(
        "each job sent without a confirm published again",
        Duration::from_secs(20),
        || async {
            let taken: Vec<i64> = app.jobs().await.iter().map(|job| job.number()).collect();
            let in_flight = app
                .redis
                .in_flight()
                .await
                .remove(&scope)
                .unwrap_or_default();
            let mut queued = queued.lock().expect("queued");
            queued.extend(taken);
            (*queued == in_flight).then_some(in_flight)
        },
    )
    .await;
    let queued = queued.into_inner().expect("queued");
    assert!(
        in_flight.len() < 22,
        "requests that never got a lane gave their numbers back: {in_flight:?}"
    );
    assert!(queued.contains(&1));
}

#[tokio::test]
async fn a_job_sent_without_a_confirm_is_published_again_until_one_is_confirmed() {
    let app = crate::helpers::spawn_app_with(&["--publish-timeout-ms", "500"]).await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    assert_eq!(app.jobs().await.len(), 1);

    // The job goes out, then the connection dies with it unconfirmed (the
    // frozen bytes never reach the broker).
    app.amqp_proxy.freeze();
    let lost = app.create_chat(&token).await;
    assert_eq!(lost.status, 503, "{}", lost.body);
    app.amqp_proxy.cut();
    app.amqp_proxy.thaw();
    app.amqp_proxy.restore();

    // Its number was not given back: the job is published again, so it
    // exists and the worker will release it.
    let scope = format!("{}:{{{token}}}:chats:inflight", app.redis.prefix);
    let jobs = eventually(
        "the job published again",
        Duration::from_secs(30),
        || async {
            let jobs = app.jobs().await;
            (!jobs.is_empty()).then_some(jobs)
        },
    )
    .await;
    assert!(jobs.iter().all(|job| job.number() == 2), "{jobs:?}");
    let in_flight = app
        .redis
        .in_flight()
        .await
        .remove(&scope)
        .unwrap_or_default();
    assert_eq!(in_flight, [1, 2].into());
}

/// On one Redis, a draw whose reply is lost (the connection drops after
/// the script ran, as when Redis is SIGKILLed between writing its AOF and
/// answering) is found by its receipt and its number given back.
#[tokio::test]
async fn a_draw_whose_reply_is_lost_on_a_single_redis_gives_its_number_back() {
    let app = spawn_app().await;
    let redis = app.redis.connection().await;
    lose_a_draws_reply_and_see_its_number_given_back(&app, redis).await;
}

/// With `REDIS_WAIT_REPLICAS`, a draw whose reply is lost (the connection
/// drops after the script ran, as when a master dies answering) leaves a
/// receipt, and its number is given back: nothing of it stays in flight.
#[tokio::test]
async fn a_draw_whose_reply_is_lost_gives_its_number_back() {
    let master = DurableRedis::start().await;
    let _replica = DurableRedis::replica_of(&master).await;
    let app = spawn_app_on(
        master.address,
        &[
            "--redis-wait-replicas",
            "1",
            "--redis-wait-timeout-ms",
            "1000",
        ],
    )
    .await;
    let redis = master.connection().await;
    lose_a_draws_reply_and_see_its_number_given_back(&app, redis).await;
}

/// Chat 1 drawn; chat 2's draw made with its reply lost (503); number 2
/// out of flight again (1's job waits for a worker); the next chat is 3.
/// `redis` reads the counters where the api writes them.
async fn lose_a_draws_reply_and_see_its_number_given_back(
    app: &TestApp,
    mut redis: redis::aio::MultiplexedConnection,
) {
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    let keys = Keys::new(&app.redis.prefix);
    let chats = Scope::Chats { token: &token };

    app.redis_proxy.lose_replies();
    let lost = app.create_chat(&token).await;
    app.redis_proxy.restore();

    assert_eq!(lost.status, 503, "{}", lost.body);
    let counter: i64 = redis::cmd("GET")
        .arg(keys.counter(chats))
        .query_async(&mut redis)
        .await
        .expect("the counter");
    assert_eq!(counter, 2, "the draw was made, its reply lost");
    eventually(
        "number 2 out of flight (1's job waits for a worker)",
        Duration::from_secs(20),
        || async {
            let in_flight: Vec<i64> = redis::cmd("SMEMBERS")
                .arg(keys.in_flight(chats))
                .query_async(&mut redis.clone())
                .await
                .ok()?;
            (in_flight == [1]).then_some(())
        },
    )
    .await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 3);
}

//! The api draws numbers only from a Redis that keeps every write it
//! acknowledged (`appendonly yes`, `appendfsync always`, no eviction),
//! checked at start, after a reconnect and now and then; unless told
//! otherwise.

use std::time::Duration;

use testkit::{DurableRedis, eventually};

use crate::helpers::{spawn_app_on, spawn_unready};

const VERIFY: &[&str] = &["--redis-durability", "verify"];

#[tokio::test]
async fn a_redis_that_can_forget_gets_no_draw_and_readyz_says_why() {
    // The machine's Redis keeps nothing on disk.
    let app = spawn_unready(testkit::redis_address(), VERIFY).await;
    let token = app.application(0).await;

    let refused = app.create_chat(&token).await;

    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.error(), "redis unavailable, retry later");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503);
    let said = ready.body["redis"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("not durable: appendonly no"),
        "it names the setting: {said}"
    );
    assert!(app.redis.keys().await.is_empty(), "nothing was drawn");
}

/// A Redis that syncs every write but may evict keys: `allkeys-*`
/// evicts counters in flight, `volatile-*` `Idempotency-Key` hashes.
#[tokio::test]
async fn a_redis_that_may_evict_keys_gets_no_draw_and_readyz_names_its_policy() {
    for policy in ["allkeys-lru", "volatile-lru"] {
        let redis = DurableRedis::start().await;
        redis.config_set("maxmemory", "200mb").await;
        redis.config_set("maxmemory-policy", policy).await;
        let app = spawn_unready(redis.address, VERIFY).await;
        let token = app.application(0).await;

        let refused = app.create_chat(&token).await;

        assert_eq!(refused.status, 503, "{policy}: {}", refused.body);
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status, 503, "{policy}");
        assert_eq!(
            ready.body["redis"],
            format!("not durable: maxmemory-policy {policy} (maxmemory 209715200)")
        );
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut redis.connection().await)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{policy}: nothing was drawn: {keys:?}");
    }
}

#[tokio::test]
async fn a_redis_with_a_memory_limit_that_evicts_nothing_is_drawn_from() {
    let redis = DurableRedis::start().await;
    redis.config_set("maxmemory", "200mb").await;
    redis.config_set("maxmemory-policy", "noeviction").await;
    let app = spawn_app_on(redis.address, VERIFY).await;
    let token = app.application(0).await;

    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
}

#[tokio::test]
async fn a_redis_that_keeps_every_write_is_drawn_from() {
    let redis = DurableRedis::start().await;
    let app = spawn_app_on(redis.address, VERIFY).await;
    let token = app.application(0).await;

    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);
    assert_eq!(app.get("/readyz").await.body["redis"], "ok");
}

#[tokio::test]
async fn a_redis_that_comes_back_unable_to_keep_writes_gets_no_more_draws() {
    let redis = DurableRedis::start().await;
    let app = spawn_app_on(redis.address, VERIFY).await;
    let token = app.application(0).await;
    assert_eq!(app.create_chat(&token).await.number("chat number"), 1);

    // The connection drops, and the server it comes back to no longer
    // syncs every write.
    app.redis_proxy.cut();
    assert_eq!(app.create_chat(&token).await.status, 503);
    redis.config_set("appendfsync", "everysec").await;
    app.redis_proxy.restore();

    // Checked again after the reconnect, well before the periodic check.
    eventually(
        "the check after the reconnect",
        Duration::from_secs(3),
        || async {
            let ready = app.get("/readyz").await;
            (ready.body["redis"] == "not durable: appendfsync everysec").then_some(())
        },
    )
    .await;
    let refused = app.create_chat(&token).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
}

#[tokio::test]
async fn trust_and_unsafe_none_draw_without_asking() {
    for setting in ["trust", "unsafe-none"] {
        let app = spawn_app_on(testkit::redis_address(), &["--redis-durability", setting]).await;
        let token = app.application(0).await;

        assert_eq!(
            app.create_chat(&token).await.number("chat number"),
            1,
            "{setting}"
        );
    }
}

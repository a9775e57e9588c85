//! What a healthy stack logs: a stop after traffic says nothing at WARN or
//! ERROR, and the api's durability check logs its verdict once, not at
//! every periodic check.
//!
//! A binary of its own, for the reason `trace.rs` gives: it reads the log
//! lines of the code on its test thread.

// The worker suite's helpers; this binary uses a few of them.
#[allow(dead_code)]
#[path = "worker/helpers.rs"]
mod helpers;

use std::time::Duration;

use futures::future::join_all;
use shared::config::LogFormat;
use testkit::DurableRedis;
use testkit::logs::Captured;

use crate::helpers::{TestStack, eventually_chats};

const CREATES: i64 = 300;

#[tokio::test]
async fn a_stack_that_served_traffic_stops_quietly_and_logs_its_durability_once() {
    let logs = Captured::start(LogFormat::Json, "info");
    let redis = DurableRedis::start().await;
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let durable = ["--redis-url", redis.url.as_str()];
    let api_flags = [durable[0], durable[1], "--redis-durability", "verify"];
    let (api, api_running) = stack
        .spawn_api_via(testkit::amqp_address(), &api_flags)
        .await;
    let worker = stack.spawn_worker(&durable).await;

    let client = testkit::http::client();
    let url = format!("{api}/applications/{token}/chats");
    for chunk in (0..CREATES).collect::<Vec<_>>().chunks(50) {
        let answers = join_all(chunk.iter().map(|_| testkit::http::send(client.post(&url)))).await;
        for answer in answers {
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    }
    eventually_chats(&stack, &token, CREATES).await;
    // The api checks Redis again every 5 s: let two such checks pass.
    tokio::time::sleep(Duration::from_secs(11)).await;
    worker.stop().await;
    api_running.stop().await;

    let lines = logs.lines();
    let loud: Vec<&String> = lines
        .iter()
        .filter(|line| matches!(level(line).as_str(), "WARN" | "ERROR"))
        .collect();
    assert!(loud.is_empty(), "a clean run and stop logged:\n{loud:#?}");
    let verdicts = lines
        .iter()
        .filter(|line| line.contains("Redis keeps every write"))
        .count();
    assert_eq!(verdicts, 1, "the verdict once:\n{}", lines.join("\n"));
}

fn level(line: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON line: {line}"));
    value["level"].as_str().unwrap_or_default().to_owned()
}

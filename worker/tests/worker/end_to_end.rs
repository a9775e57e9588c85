//! The api and the worker together: what the api answered is what gets
//! stored, and stored numbers leave flight so their counters may expire.

use std::time::Duration;

use clap::Parser;
use futures::future::join_all;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use shared::config::LogFormat;
use shared::publish;
use testkit::logs::Captured;
use testkit::{Running, eventually};

use crate::helpers::TestStack;

/// The api on port 0, on this stack's prefixes, straight to RabbitMQ and
/// the chat-system; stopped when the returned [`Running`] is dropped.
async fn spawn_api(stack: &TestStack) -> (String, Running) {
    let redis_url = testkit::redis_url();
    let amqp_url = testkit::amqp_url();
    let arguments = [
        "api",
        "--addr",
        "127.0.0.1:0",
        "--log",
        "warn",
        "--redis-url",
        &redis_url,
        "--redis-prefix",
        &stack.redis.prefix,
        "--amqp-url",
        &amqp_url,
        "--queue-prefix",
        &stack.broker.prefix,
        "--chat-system-url",
        &stack.chat_system.url,
    ];
    let application = api::Application::build(api::Config::parse_from(arguments))
        .await
        .expect("an api");
    let url = format!("http://{}", application.address());
    let running = Running::spawn("the api", |shutdown| {
        application.run_until_stopped(shutdown)
    });
    let client = testkit::http::client();
    eventually("the api to be ready", Duration::from_secs(20), || async {
        let response = client.get(format!("{url}/readyz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    (url, running)
}

#[tokio::test]
async fn every_record_the_api_answered_for_is_stored_once_with_its_body() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _stop) = spawn_api(&stack).await;
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
            answer["message number"].as_i64().expect("a number"),
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
    let (api, _stop) = spawn_api(&stack).await;
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

/// One create followed from the client's request to the stored row, with
/// the binaries' own log formatting at debug level, in both formats: the
/// trace id of the client's `traceparent` is in the api's log lines for
/// the request, in the job's AMQP headers, in the worker's log lines for
/// the job, on the chat-system's request, and in its log lines.
#[tokio::test]
async fn one_create_can_be_followed_by_its_trace_id_across_the_services() {
    for format in [LogFormat::Text, LogFormat::Json] {
        let logs = Captured::start(format, "warn,api=debug,worker=debug,chat_system=debug");
        let trace_id = uuid::Uuid::new_v4().simple().to_string();

        follow_one_create(&trace_id).await;

        let lines = logs.lines();
        for service in ["api", "worker", "chat_system"] {
            let traced: Vec<&String> = lines
                .iter()
                .filter(|line| {
                    line.contains(&trace_id) && target(line, format).starts_with(service)
                })
                .collect();
            assert!(
                !traced.is_empty(),
                "{format:?}: no {service} line carries the trace id {trace_id}:\n{}",
                lines.join("\n")
            );
        }
    }
}

/// The target (`api::intake` ...) of a log line.
fn target(line: &str, format: LogFormat) -> String {
    match format {
        LogFormat::Json => {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|_| panic!("a JSON line: {line}"));
            value["target"].as_str().unwrap_or_default().to_owned()
        }
        // `time LEVEL spans: target: message`
        LogFormat::Text => line
            .split(": ")
            .find(|part| part.contains("::") && !part.contains(' '))
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Creates a chat with a `traceparent` of `trace_id`, checks the job's AMQP
/// header, lets a worker store it and checks the chat-system's request.
async fn follow_one_create(trace_id: &str) {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = spawn_api(&stack).await;
    let client = testkit::http::client();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let created = testkit::http::send(
        client
            .post(format!("{api}/applications/{token}/chats"))
            .header("traceparent", &traceparent),
    )
    .await;
    assert_eq!(created.number("chat number"), 1);

    let (_connection, channel) = stack.broker.channel().await;
    let queued = channel
        .basic_get(stack.broker.jobs_queue().into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
        .expect("the job is queued");
    let header = publish::header(
        queued.delivery.properties.headers().as_ref(),
        publish::TRACEPARENT,
    )
    .expect("a traceparent header");
    assert!(header.starts_with(&format!("00-{trace_id}-")), "{header}");
    assert_ne!(header, traceparent, "the api's own span is the parent");
    queued
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("requeued");

    let worker = stack.spawn_worker(&[]).await;
    crate::helpers::eventually_chats(&stack, &token, 1).await;
    worker.stop().await;

    let stored_with_trace = stack.upstream.seen().iter().any(|request| {
        request.method == "PUT"
            && request
                .headers
                .get(publish::TRACEPARENT)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with(&format!("00-{trace_id}-")))
    });
    assert!(stored_with_trace, "the chat-system's PUT carries the trace");
}

//! One create followed by its trace id across the api, the worker and the
//! chat-system, as their log lines show it.
//!
//! A binary of its own: it reads the log lines of code running on its test
//! thread through a thread-local subscriber, and `tracing` caches per call
//! site whether anyone listens. With other tests logging from other threads
//! at the same moment, a call site first reached there could be cached as
//! unheard; alone in its process, this test sees every line.

// The worker suite's helpers; this binary uses a few of them.
#[allow(dead_code)]
#[path = "worker/helpers.rs"]
mod helpers;

use lapin::options::{BasicGetOptions, BasicNackOptions};
use shared::amqp::headers;
use shared::config::LogFormat;
use testkit::logs::Captured;

use crate::helpers::TestStack;

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
        // `time LEVEL [spans: ]target: message`: the target is the first
        // module path that ends a `: `-separated part.
        LogFormat::Text => line
            .split(": ")
            .filter_map(|part| part.rsplit(' ').next())
            .find(|word| {
                word.contains("::")
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            })
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Creates a chat with a `traceparent` of `trace_id`, checks the job's AMQP
/// header, lets a worker store it and checks the chat-system's request
/// (the bulk write carries each record's trace context with it).
async fn follow_one_create(trace_id: &str) {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = stack.spawn_api().await;
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
    let header = headers::get(
        queued.delivery.properties.headers().as_ref(),
        headers::TRACEPARENT,
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
    helpers::eventually_chats(&stack, &token, 1).await;
    worker.stop().await;

    let stored_with_trace = stack.upstream.seen().iter().any(|request| {
        request.method == "POST"
            && request.path == "/records"
            && String::from_utf8_lossy(&request.body).contains(&format!("\"00-{trace_id}-"))
    });
    assert!(
        stored_with_trace,
        "the chat-system's write carries the trace"
    );
}

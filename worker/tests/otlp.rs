//! Spans exported over OTLP: the api, a worker and the chat-system run as
//! processes of their own with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a
//! small OTLP/HTTP receiver here; one create must arrive as one trace with
//! a span from each service, each the child of the one before.
//!
//! A binary of its own: it runs the built `api` and `chat-system` binaries
//! (`cargo test --workspace` builds them beside this one).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::{TestBroker, TestDatabase, TestRedis, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use warp::Filter;

#[tokio::test]
async fn one_create_is_one_trace_with_a_span_from_each_service_each_the_child_of_the_one_before() {
    let receiver = Receiver::start().await;
    let database = TestDatabase::new();
    let (broker, redis) = (TestBroker::new(), TestRedis::new());
    let write_token = format!("write-{}", uuid::Uuid::new_v4().simple());
    let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());

    let (_chat_system, chat_system) = spawn(
        Command::new(binary("chat-system"))
            .args(["--addr", "127.0.0.1:0"])
            .args(["--chat-system-write-token", &write_token])
            .args(["--chat-system-admin-token", &admin_token])
            .env("DATABASE_URL", database.url()),
        &receiver,
        "chat-system listening",
    )
    .await;
    let chat_system = format!("http://{chat_system}");
    let client = reqwest::Client::new();
    ready(&client, &chat_system).await;
    let application: serde_json::Value = client
        .post(format!("{chat_system}/applications"))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({ "name": "traced" }))
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .expect("an application")
        .json()
        .await
        .expect("its token");
    let token = application["token"].as_str().expect("a token").to_owned();
    let redis_url = testkit::redis_url();
    let amqp_url = testkit::amqp_url();
    let common = [
        ["--redis-url", redis_url.as_str()],
        ["--redis-prefix", &redis.prefix],
        ["--amqp-url", &amqp_url],
        ["--queue-prefix", &broker.prefix],
        ["--chat-system-url", &chat_system],
    ];
    let (_api, api) = spawn(
        Command::new(binary("api"))
            .args(["--addr", "127.0.0.1:0", "--redis-durability", "unsafe-none"])
            .args(common.iter().flatten()),
        &receiver,
        "api listening",
    )
    .await;
    let (_worker, _) = spawn(
        Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--chat-system-write-token", &write_token])
            .args(common.iter().flatten()),
        &receiver,
        "worker starting",
    )
    .await;

    ready(&client, &format!("http://{api}")).await;
    let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let client_span = "00f067aa0ba902b7";
    let answer = client
        .post(format!("http://{api}/applications/{token}/chats"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(answer.status(), 200);

    let spans = eventually(
        "a span of the create from each service",
        Duration::from_secs(30),
        || async {
            let spans = receiver.spans(&trace_id);
            let services: Vec<&str> = spans.iter().map(|span| span.service.as_str()).collect();
            ["api", "worker", "chat-system"]
                .iter()
                .all(|service| services.contains(service))
                .then_some(spans)
        },
    )
    .await;
    let find = |service: &str, name: &str| {
        spans
            .iter()
            .find(|span| span.service == service && span.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name:?} in {spans:#?}"))
    };
    let request = find("api", "request");
    let job = find("worker", "job");
    let record = find("chat-system", "record");
    assert_eq!(
        request.parent, client_span,
        "the api's span continues the client's"
    );
    assert_eq!(
        job.parent, request.id,
        "the worker's span is the api's child"
    );
    assert_eq!(
        record.parent, job.id,
        "the chat-system's span is the worker's child"
    );
}

/// The OTLP/HTTP receiver: takes `POST /v1/traces` in JSON and keeps what
/// it got.
struct Receiver {
    endpoint: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

#[derive(Debug)]
struct Span {
    service: String,
    name: String,
    id: String,
    parent: String,
}

impl Receiver {
    async fn start() -> Self {
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = bodies.clone();
        let route = warp::path!("v1" / "traces")
            .and(warp::post())
            .and(warp::body::json())
            .map(move |body: serde_json::Value| {
                kept.lock().expect("bodies").push(body);
                warp::reply::json(&serde_json::json!({}))
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            endpoint: format!("http://{address}"),
            bodies,
        }
    }

    /// Every span received of `trace_id`.
    fn spans(&self, trace_id: &str) -> Vec<Span> {
        let bodies = self.bodies.lock().expect("bodies");
        let mut spans = Vec::new();
        for resource in bodies.iter().flat_map(|body| list(&body["resourceSpans"])) {
            let attributes: BTreeMap<&str, &serde_json::Value> =
                list(&resource["resource"]["attributes"])
                    .iter()
                    .filter_map(|attribute| Some((attribute["key"].as_str()?, &attribute["value"])))
                    .collect();
            let service = attributes
                .get("service.name")
                .and_then(|value| value["stringValue"].as_str())
                .unwrap_or_default();
            for scope in list(&resource["scopeSpans"]) {
                for span in list(&scope["spans"]) {
                    if span["traceId"].as_str() != Some(trace_id) {
                        continue;
                    }
                    let text = |field: &str| span[field].as_str().unwrap_or_default().to_owned();
                    spans.push(Span {
                        service: service.to_owned(),
                        name: text("name"),
                        id: text("spanId"),
                        parent: text("parentSpanId"),
                    });
                }
            }
        }
        spans
    }
}

fn list(value: &serde_json::Value) -> &[serde_json::Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Starts `command` exporting its spans to `receiver`, logging JSON lines,
/// and waits for its log line `ready` (which carries the address it
/// listens on, if any). Its output is read to the end in the background.
///
/// It logs warnings and its start-up lines only, as a quiet production
/// process would: the spans of a create are below that level, and must be
/// exported all the same (`RUST_LOG` filters log lines, not the export).
async fn spawn(command: &mut Command, receiver: &Receiver, ready: &str) -> (Child, String) {
    let quiet = "warn,api::startup=info,worker::startup=info,chat_system::startup=info";
    let mut child = command
        .args(["--log", quiet, "--log-format", "json"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    let (found, address) = tokio::sync::oneshot::channel();
    let ready = ready.to_owned();
    tokio::spawn(async move {
        let mut found = Some(found);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&ready)
                && let Some(found) = found.take()
            {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                let address = value["address"].as_str().unwrap_or_default().to_owned();
                let _ = found.send(address);
            }
        }
    });
    let address = tokio::time::timeout(Duration::from_secs(30), address)
        .await
        .expect("the binary says it is ready")
        .expect("the binary runs");
    (child, address)
}

/// Waits until `url`'s `/readyz` answers 200.
async fn ready(client: &reqwest::Client, url: &str) {
    eventually(
        &format!("{url} to be ready"),
        Duration::from_secs(30),
        || async {
            let response = client.get(format!("{url}/readyz")).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await;
}

/// A binary of the workspace, built beside this test.
fn binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test binary");
    let directory = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = directory.join(name);
    assert!(
        path.exists(),
        "{} is not built: `cargo build --bin {name}` (cargo test --workspace builds it)",
        path.display()
    );
    path
}

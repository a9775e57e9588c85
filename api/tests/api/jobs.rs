//! The job on the queue is the record the client was answered for.

use shared::job::{Kind, Record};

use crate::helpers::spawn_app;

/// Texts that broke the old API, or could break a careless one.
const BODIES: &[&str] = &[
    "hello, world",
    "a,b,c,,",
    "slashes / and \\ backslashes",
    "\"quoted\" and 'single'",
    "héllo wörld — 你好 — 🎉",
    "line\nbreak\ttab",
    "%2F stays literal",
    "?query=&fragment#",
    "+plus+",
];

/// Percent-encodes every byte outside unreserved characters, as a client
/// building a path segment would.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_chat_job_carries_the_token_and_the_number_answered() {
    let app = spawn_app().await;
    let token = app.application(0).await;

    let number = app.create_chat(&token).await.number("chat number");

    let jobs = app.expect_jobs(1).await;
    assert_eq!(jobs[0].kind(), Kind::Chat);
    assert_eq!(jobs[0].token, token);
    assert_eq!(jobs[0].record, Record::Chat { number });
    assert_eq!(jobs[0].attempt, 0);
}

#[tokio::test]
async fn a_message_in_the_path_reaches_the_queue_byte_for_byte() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    let mut answered = Vec::new();
    for body in BODIES {
        let answer = app.create_message(&token, 1, &encode(body)).await;
        answered.push((answer.number("message number"), *body));
    }

    let jobs = app.expect_jobs(BODIES.len()).await;
    for (job, (number, body)) in jobs.iter().zip(&answered) {
        assert_eq!(job.token, token);
        let expected = Record::Message {
            chat: 1,
            number: *number,
            body: (*body).to_owned(),
        };
        assert_eq!(job.record, expected, "{body:?}");
    }
}

#[tokio::test]
async fn a_message_in_a_json_body_reaches_the_queue_byte_for_byte() {
    let app = spawn_app().await;
    let token = app.application(1).await;
    let long = "long text, ".repeat(2000);
    let mut bodies: Vec<&str> = BODIES.to_vec();
    bodies.push(&long);

    for body in &bodies {
        assert_eq!(
            app.create_message_json(&token, 1, body).await.status,
            200,
            "{body:?}"
        );
    }

    let jobs = app.expect_jobs(bodies.len()).await;
    let queued: Vec<&str> = jobs
        .iter()
        .map(|job| match &job.record {
            Record::Message { body, .. } => body.as_str(),
            other => panic!("a message job, not {other:?}"),
        })
        .collect();
    assert_eq!(queued, bodies);
}

#[tokio::test]
async fn every_job_has_its_own_id() {
    let app = spawn_app().await;
    let token = app.application(0).await;

    for _ in 0..3 {
        app.create_chat(&token).await.number("chat number");
    }

    let ids: std::collections::BTreeSet<_> =
        app.expect_jobs(3).await.iter().map(|job| job.id).collect();
    assert_eq!(ids.len(), 3);
}

#[tokio::test]
async fn an_idle_api_publishes_a_lone_create_at_once_as_a_message_of_its_own() {
    let app = spawn_app().await;
    let token = app.application(0).await;

    let number = app.create_chat(&token).await.number("chat number");

    let messages = app.broker.take_messages(&app.broker.jobs_queue()).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0].kind.as_deref(),
        Some("chat"),
        "a job of its own, not a batch"
    );
    assert_eq!(messages[0].jobs[0].record, Record::Chat { number });
}

#[tokio::test]
async fn concurrent_creates_share_messages_and_each_keeps_its_own_number() {
    let app = spawn_app().await;
    let token = app.application(1).await;

    let bodies: Vec<String> = (0..300).map(|i| format!("message {i}")).collect();
    let answers = futures::future::join_all(
        bodies
            .iter()
            .map(|body| app.create_message_json(&token, 1, body)),
    )
    .await;

    let mut answered: Vec<(i64, String)> = answers
        .iter()
        .zip(&bodies)
        .map(|(answer, body)| (answer.number("message number"), body.clone()))
        .collect();
    answered.sort();
    let messages = app.broker.take_messages(&app.broker.jobs_queue()).await;
    assert!(
        messages.len() < 300,
        "jobs gathered while a confirm was pending share a message: {} messages",
        messages.len()
    );
    assert!(
        messages
            .iter()
            .any(|message| message.kind.as_deref() == Some("batch"))
    );
    let mut queued: Vec<(i64, String)> = messages
        .iter()
        .flat_map(|message| &message.jobs)
        .map(|job| match &job.record {
            Record::Message { number, body, .. } => (*number, body.clone()),
            other => panic!("a message job, not {other:?}"),
        })
        .collect();
    queued.sort();
    assert_eq!(
        queued, answered,
        "every answered number queued once, with its body"
    );
}

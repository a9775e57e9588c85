//! The dead-letter console's HTTP API on the real broker: who may see and
//! act (no session, the read-only user, the admin; CSRF), filters, groups
//! and pages, and every action (replay one, selected, all matching;
//! discard selected, all matching) with its audit line; two consoles at
//! once move each letter once.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lapin::options::{BasicGetOptions, ConfirmSelectOptions};
use serde_json::{Value, json};
use shared::amqp::headers::{self, REASON};
use shared::amqp::publish::{self, Message};
use shared::amqp::topology::{ROUTING_KEY, Topology};
use shared::job::Job;
use testkit::{Answer, Running, eventually};

use crate::helpers::{TestStack, eventually_chats};

pub(crate) const ADMIN_PASSWORD: &str = "admin-password-0123456789";
pub(crate) const VIEWER_PASSWORD: &str = "viewer-password-0123456789";

/// A console of a test stack, on port 0, writing its audit log to a file
/// of its own.
pub(crate) struct TestConsole {
    pub(crate) url: String,
    pub(crate) audit: PathBuf,
    _running: Running,
}

impl Drop for TestConsole {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.audit);
    }
}

impl TestConsole {
    /// A console of `stack` with both users.
    pub(crate) async fn start(stack: &TestStack) -> Self {
        let flags = [
            "--admin-password",
            ADMIN_PASSWORD,
            "--viewer-password",
            VIEWER_PASSWORD,
        ];
        Self::start_with(stack.worker_config(&[]), &flags).await
    }

    /// A console of the worker settings `config`, with `flags`.
    pub(crate) async fn start_with(config: worker::Config, flags: &[&str]) -> Self {
        let audit = std::env::temp_dir().join(format!("{}.audit", testkit::unique("console")));
        let mut arguments = flags.to_vec();
        arguments.extend(["--audit-log", audit.to_str().expect("a UTF-8 path")]);
        let console = worker::console::Console::build(config, console_arguments(&arguments))
            .await
            .expect("building the console");
        let url = format!("http://{}", console.address());
        let running = Running::spawn("the console", |shutdown| {
            console.run_until_stopped(shutdown)
        });
        Self {
            url,
            audit,
            _running: running,
        }
    }

    /// The audit log's lines so far.
    pub(crate) fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .expect("reading the audit log")
            .lines()
            .map(|line| serde_json::from_str(line).expect("an audit line is JSON"))
            .collect()
    }
}

/// The console's settings from `flags` (an address of port 0 unless set).
fn console_arguments(flags: &[&str]) -> worker::ConsoleArgs {
    let mut arguments = vec!["worker", "console", "--console-addr", "127.0.0.1:0"];
    arguments.extend(flags);
    match worker::Cli::parse_from(arguments).command {
        Some(worker::Command::Console(arguments)) => arguments,
        other => panic!("not the console command: {other:?}"),
    }
}

/// Someone using the console over HTTP: a session cookie and its CSRF
/// token once logged in.
pub(crate) struct User {
    client: reqwest::Client,
    url: String,
    cookie: Option<String>,
    pub(crate) csrf: String,
}

impl User {
    pub(crate) fn anonymous(console: &TestConsole) -> Self {
        Self {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            url: console.url.clone(),
            cookie: None,
            csrf: String::new(),
        }
    }

    /// Posts the login form; the raw response.
    async fn post_login(&self, user: &str, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/login", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("user={user}&password={password}"))
            .send()
            .await
            .expect("the console answers")
    }

    pub(crate) async fn login(console: &TestConsole, user: &str, password: &str) -> Self {
        let mut this = Self::anonymous(console);
        let response = this.post_login(user, password).await;
        assert_eq!(response.status(), 303, "a login redirects to the console");
        let cookie = response
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(flag), "{flag} in {cookie}");
        }
        this.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        let session = this.get("/api/session").await;
        assert_eq!(session.status, 200, "{}", session.body);
        this.csrf = session.body["csrf"].as_str().unwrap().to_owned();
        this
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.url));
        match &self.cookie {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        testkit::http::send(self.request(reqwest::Method::GET, path)).await
    }

    /// Posts `body` with the session's CSRF token.
    pub(crate) async fn post(&self, path: &str, body: Value) -> Answer {
        self.post_with_csrf(path, body, &self.csrf.clone()).await
    }

    async fn post_with_csrf(&self, path: &str, body: Value, csrf: &str) -> Answer {
        testkit::http::send(
            self.request(reqwest::Method::POST, path)
                .header("x-csrf-token", csrf)
                .json(&body),
        )
        .await
    }

    /// The letters a listing with `query` answers.
    pub(crate) async fn letters(&self, query: &str) -> Answer {
        let answer = self.get(&format!("/api/letters?fresh=1&{query}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
    }
}

/// A dead letter as the worker leaves one.
pub(crate) struct Dead<'a> {
    pub(crate) job: Job,
    pub(crate) reason: &'a str,
    pub(crate) error: &'a str,
    pub(crate) at_ms: u64,
}

/// Puts `letters` in the stack's dead-letter queue, with the headers the
/// worker writes, all confirmed.
pub(crate) async fn dead_letter(stack: &TestStack, letters: &[Dead<'_>]) {
    let (_connection, channel) = stack.broker.channel().await;
    let topology = Topology::new(&stack.worker_config(&[]).broker);
    topology
        .declare(&channel, &[])
        .await
        .expect("declaring the topology");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for chunk in letters.chunks(1000) {
        let published = futures::future::join_all(chunk.iter().map(|letter| {
            let properties = headers::dead(
                publish::job_properties(&letter.job),
                letter.reason,
                3,
                letter.error,
                letter.at_ms,
            );
            publish::publish(
                &channel,
                Message {
                    exchange: topology.dead_exchange(),
                    routing_key: ROUTING_KEY.into(),
                    payload: letter.job.encode(),
                    properties,
                },
                Duration::from_secs(30),
            )
        }))
        .await;
        for result in published {
            result.expect("a confirmed dead letter");
        }
    }
    stack
        .assert_queue_len(&stack.broker.dead_queue(), letters.len() as u32, "seeded")
        .await;
}

fn ids(answer: &Answer) -> Vec<String> {
    answer.body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Five letters of two applications: chats and messages, two reasons,
/// three errors, an hour apart.
fn mixed(first: &str, second: &str) -> Vec<Dead<'static>> {
    let hour = 3_600_000;
    let base = 1_700_000_000_000;
    vec![
        Dead {
            job: Job::chat(first.to_owned(), 1),
            reason: "exhausted",
            error: "chat-system answered 503",
            at_ms: base,
        },
        Dead {
            job: Job::message(first.to_owned(), 1, 1, "one".into()),
            reason: "exhausted",
            error: "chat-system answered 503",
            at_ms: base + hour,
        },
        Dead {
            job: Job::message(first.to_owned(), 1, 2, "two".into()),
            reason: "exhausted",
            error: "timed out after 1000 ms",
            at_ms: base + 2 * hour,
        },
        Dead {
            job: Job::chat(second.to_owned(), 1),
            reason: "conflict",
            error: "chat 1 exists with another body",
            at_ms: base + 3 * hour,
        },
        Dead {
            job: Job::message(second.to_owned(), 1, 1, "three".into()),
            reason: "conflict",
            error: "Chat-System answered 503",
            at_ms: base + 4 * hour,
        },
    ]
}

#[tokio::test]
async fn the_console_refuses_to_start_without_a_credential() {
    let stack = TestStack::start().await;
    let refused = worker::console::Console::build(stack.worker_config(&[]), console_arguments(&[]))
        .await
        .err()
        .expect("no credential, no console");
    assert!(
        refused.to_string().contains("CONSOLE_ADMIN_PASSWORD"),
        "{refused}"
    );
    let short = worker::console::Console::build(
        stack.worker_config(&[]),
        console_arguments(&["--admin-password", "short"]),
    )
    .await;
    assert!(short.is_err(), "a password under 16 characters is refused");
}

#[tokio::test]
async fn only_a_session_sees_the_console_and_only_the_admin_acts() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_letter(&stack, &mixed(&token, "another-application-token")).await;
    let console = TestConsole::start(&stack).await;

    // No session: the page sends to the login, the API answers 401.
    let nobody = User::anonymous(&console);
    let page = nobody
        .request(reqwest::Method::GET, "/")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    for path in ["/api/session", "/api/overview", "/api/letters"] {
        assert_eq!(nobody.get(path).await.status, 401, "{path}");
    }
    assert_eq!(
        nobody
            .post("/api/replay", json!({"ids": ["x"]}))
            .await
            .status,
        401
    );
    let wrong = nobody.post_login("admin", "not-the-password-at-all").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert_eq!(
        nobody.post_login("viewer", ADMIN_PASSWORD).await.status(),
        401,
        "a password is its own user's only"
    );

    // The read-only user sees everything and may do nothing.
    let viewer = User::login(&console, "viewer", VIEWER_PASSWORD).await;
    assert_eq!(viewer.get("/api/session").await.body["role"], "viewer");
    let listed = viewer.letters("").await;
    assert_eq!(listed.body["total"], 5);
    let id = ids(&listed)[0].clone();
    for action in ["replay", "discard"] {
        let refused = viewer
            .post(&format!("/api/{action}"), json!({"ids": [id]}))
            .await;
        assert_eq!(refused.status, 403, "{action}: {}", refused.body);
    }

    // The admin acts, but only with the session's CSRF token.
    let admin = User::login(&console, "admin", ADMIN_PASSWORD).await;
    for csrf in ["", "0000", viewer.csrf.as_str()] {
        let refused = admin
            .post_with_csrf("/api/replay", json!({"ids": [id]}), csrf)
            .await;
        assert_eq!(refused.status, 403, "CSRF token {csrf:?}: {}", refused.body);
    }
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 5, "nothing moved without CSRF")
        .await;
    let nothing = admin.post("/api/replay", json!({})).await;
    assert_eq!(nothing.status, 400, "an empty selection: {}", nothing.body);
    let replayed = admin.post("/api/replay", json!({"ids": [id]})).await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.body["moved"], 1);

    // No page or answer holds the full token.
    let detail = admin
        .get(&format!("/api/letters/{}", ids(&listed)[1]))
        .await;
    assert_eq!(detail.status, 200);
    for text in [listed.body.to_string(), detail.body.to_string()] {
        assert!(!text.contains(&token), "the full token in {text}");
    }
    assert!(
        std::fs::read_to_string(&console.audit)
            .unwrap()
            .find(&token)
            .is_none(),
        "the full token in the audit log"
    );

    // Logging out ends the session.
    let out = admin.post("/logout", json!({})).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(admin.get("/api/session").await.status, 401);
    let actions: Vec<String> = console
        .audit_lines()
        .iter()
        .map(|line| {
            format!(
                "{} {}",
                line["user"].as_str().unwrap(),
                line["action"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "- login_failed",
            "- login_failed",
            "viewer login",
            "admin login",
            "admin replay",
            "admin logout"
        ]
    );
}

#[tokio::test]
async fn dead_letters_are_filtered_grouped_and_paged() {
    let stack = TestStack::start().await;
    let first = stack.application().await;
    let second = stack.application().await;
    dead_letter(&stack, &mixed(&first, &second)).await;
    let console = TestConsole::start(&stack).await;
    let viewer = User::login(&console, "viewer", VIEWER_PASSWORD).await;

    let all = viewer.letters("").await;
    assert_eq!(all.body["total"], 5);
    assert_eq!(all.body["letters"], 5);
    let newest = &all.body["rows"][0];
    assert_eq!(newest["reason"], "conflict", "newest first: {newest}");
    assert_eq!(newest["attempts"], 3);
    assert_eq!(
        all.body["by_reason"],
        json!([{"key": "exhausted", "count": 3}, {"key": "conflict", "count": 2}])
    );
    assert_eq!(
        all.body["by_error"][0],
        json!({"key": "chat-system answered 503", "count": 2})
    );

    let total = |answer: &Answer| answer.body["total"].as_u64().unwrap();
    assert_eq!(total(&viewer.letters("reason=conflict").await), 2);
    assert_eq!(total(&viewer.letters("kind=chat").await), 2);
    assert_eq!(
        total(&viewer.letters(&format!("application={first}")).await),
        3
    );
    let short = shared::telemetry::short_token(&second);
    let by_short = viewer
        .letters(&format!("application={}", urlencode(&short)))
        .await;
    assert_eq!(
        total(&by_short),
        2,
        "the listed short form finds its letters"
    );
    assert_eq!(
        total(&viewer.letters("error=ANSWERED%20503").await),
        3,
        "error text in any case"
    );
    let from = 1_700_000_000_000u64 + 3_600_000;
    let to = from + 2 * 3_600_000;
    assert_eq!(
        total(&viewer.letters(&format!("from_ms={from}&to_ms={to}")).await),
        2,
        "from inclusive, to exclusive"
    );
    assert_eq!(
        total(&viewer.letters("reason=exhausted&error=timed").await),
        1
    );

    let mut pages: Vec<Vec<String>> = Vec::new();
    for page in 1..=3 {
        pages.push(ids(&viewer
            .get(&format!("/api/letters?per_page=2&page={page}"))
            .await));
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let mut seen: Vec<String> = pages.concat();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "pages neither repeat nor skip");

    let id = &ids(&all)[0];
    let detail = viewer.get(&format!("/api/letters/{id}")).await;
    assert_eq!(detail.status, 200);
    assert_eq!(detail.body["payload"]["id"], id.as_str());
    assert_eq!(detail.body["payload"]["token"], short.as_str());
    assert_eq!(detail.body["headers"]["x-reason"], "conflict");
    assert_eq!(viewer.get("/api/letters/no-such-id").await.status, 404);
    assert_eq!(viewer.get("/api/letters?colour=red").await.status, 400);

    stack
        .assert_queue_len(&stack.broker.dead_queue(), 5, "reading moves nothing")
        .await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_replayed_letter_is_stored_and_selected_ones_leave_together() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_letter(&stack, &mixed(&token, "another-application-token")).await;
    let console = TestConsole::start(&stack).await;
    let admin = User::login(&console, "admin", ADMIN_PASSWORD).await;
    let chat = admin
        .letters(&format!("kind=chat&application={token}"))
        .await;
    let id = ids(&chat)[0].clone();

    let replayed = admin.post("/api/replay", json!({"ids": [id]})).await;
    assert_eq!(replayed.body, json!({"found": 5, "matched": 1, "moved": 1}));
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 4, "the others stay")
        .await;
    let jobs = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].id.to_string(), id);
    assert_eq!(jobs[0].attempt, 0, "attempts reset");
    stack.publish(&jobs).await;
    let worker = stack.spawn_worker(&[]).await;
    eventually_chats(&stack, &token, 1).await;
    worker.stop().await;
    assert!(
        !ids(&admin.letters("").await).contains(&id),
        "gone from the list"
    );
    let line = console.audit_lines().pop().unwrap();
    assert_eq!(
        (
            &line["user"],
            &line["action"],
            &line["selection"],
            &line["done"]
        ),
        (
            &json!("admin"),
            &json!("replay"),
            &json!("1 ids"),
            &json!(1)
        )
    );

    // Replay selected: two of the four left, by id.
    let left = ids(&admin.letters("").await);
    assert_eq!(left.len(), 4);
    let selected = json!({"ids": [left[0], left[2]]});
    let replayed = admin.post("/api/replay", selected).await;
    assert_eq!(replayed.body, json!({"found": 4, "matched": 2, "moved": 2}));
    let mut queued: Vec<String> = stack
        .broker
        .take_jobs(&stack.broker.jobs_queue())
        .await
        .iter()
        .map(|job| job.id.to_string())
        .collect();
    queued.sort();
    let mut wanted = vec![left[0].clone(), left[2].clone()];
    wanted.sort();
    assert_eq!(queued, wanted, "the selected ones, and only they");
    assert_eq!(
        ids(&admin.letters("").await),
        [left[1].clone(), left[3].clone()]
    );
}

#[tokio::test]
async fn every_matching_letter_is_replayed_or_discarded_and_nothing_else() {
    let stack = TestStack::start().await;
    let first = stack.application().await;
    let second = stack.application().await;
    dead_letter(&stack, &mixed(&first, &second)).await;
    let console = TestConsole::start(&stack).await;
    let admin = User::login(&console, "admin", ADMIN_PASSWORD).await;

    // Replay all matching: the three exhausted letters.
    let replayed = admin
        .post("/api/replay", json!({"filter": {"reason": "exhausted"}}))
        .await;
    assert_eq!(replayed.body, json!({"found": 5, "matched": 3, "moved": 3}));
    let jobs = stack.broker.take_jobs(&stack.broker.jobs_queue()).await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|job| job.token == first));

    // Discard selected: one of the two left; then all matching: the other.
    let left = ids(&admin.letters("").await);
    assert_eq!(left.len(), 2);
    let discarded = admin.post("/api/discard", json!({"ids": [left[0]]})).await;
    assert_eq!(discarded.body["moved"], 1, "{}", discarded.body);
    let discarded = admin
        .post("/api/discard", json!({"filter": {"application": second}}))
        .await;
    assert_eq!(discarded.body["moved"], 1, "{}", discarded.body);
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "all moved")
        .await;

    // Discarded letters are kept, with why they died and an expiration.
    let (_connection, channel) = stack.broker.channel().await;
    let mut kept = Vec::new();
    while let Some(message) = channel
        .basic_get(
            stack.broker.discarded_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        kept.push(message.delivery);
    }
    assert_eq!(kept.len(), 2);
    for letter in &kept {
        let headers = letter.properties.headers().as_ref();
        assert_eq!(headers::get(headers, REASON).as_deref(), Some("conflict"));
        assert!(headers::get(headers, headers::DISCARDED_AT_MS).is_some());
        assert_eq!(
            letter
                .properties
                .expiration()
                .as_ref()
                .map(|e| e.to_string()),
            Some((168u64 * 3_600_000).to_string())
        );
        assert_eq!(Job::decode(&letter.data).unwrap().token, second);
    }

    let lines = console.audit_lines();
    let acted: Vec<(String, String, u64)> = lines
        .iter()
        .filter(|line| line["action"] != "login")
        .map(|line| {
            (
                line["action"].as_str().unwrap().to_owned(),
                line["selection"].as_str().unwrap().to_owned(),
                line["done"].as_u64().unwrap(),
            )
        })
        .collect();
    let short = shared::telemetry::short_token(&second);
    assert_eq!(
        acted,
        [
            (
                "replay".to_owned(),
                r#"matching {"reason":"exhausted","kind":null,"application":null,"error":null,"from_ms":null,"to_ms":null}"#.to_owned(),
                3
            ),
            ("discard".to_owned(), "1 ids".to_owned(), 1),
            (
                "discard".to_owned(),
                format!(r#"matching {{"reason":null,"kind":null,"application":"{short}","error":null,"from_ms":null,"to_ms":null}}"#),
                1
            ),
        ]
    );
}

/// `count` dead chats 1..=count of `token`, exhausted.
fn chats(token: &str, count: i64) -> Vec<Dead<'static>> {
    (1..=count)
        .map(|chat| Dead {
            job: Job::chat(token.to_owned(), chat),
            reason: "exhausted",
            error: "chat-system answered 503",
            at_ms: 1_700_000_000_000 + chat as u64,
        })
        .collect()
}

/// Fails unless the dead-letter queue is empty and the jobs queue holds
/// chats 1..=count, each once.
async fn each_replayed_once(stack: &TestStack, count: usize) {
    stack
        .assert_queue_len(&stack.broker.dead_queue(), 0, "all replayed")
        .await;
    let mut chats: Vec<i64> = stack
        .broker
        .take_jobs(&stack.broker.jobs_queue())
        .await
        .iter()
        .map(Job::chat_number)
        .collect();
    assert_eq!(chats.len(), count, "no letter replayed twice");
    chats.sort();
    chats.dedup();
    assert_eq!(chats.len(), count);
}

#[tokio::test]
async fn two_consoles_replaying_everything_at_once_move_each_letter_once() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_letter(&stack, &chats(&token, 600)).await;
    let one = TestConsole::start(&stack).await;
    let two = TestConsole::start(&stack).await;
    let first = User::login(&one, "admin", ADMIN_PASSWORD).await;
    let second = User::login(&two, "admin", ADMIN_PASSWORD).await;
    let everything = json!({"filter": {}});

    let (a, b) = tokio::join!(
        first.post("/api/replay", everything.clone()),
        second.post("/api/replay", everything.clone())
    );
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.body, b.body);
    let moved = a.body["moved"].as_u64().unwrap() + b.body["moved"].as_u64().unwrap();
    // One may have found part of the queue held by the other: whatever
    // is left, a second pass takes.
    let again = first.post("/api/replay", everything).await;
    let moved = moved + again.body["moved"].as_u64().unwrap();
    assert_eq!(moved, 600, "{} {} {}", a.body, b.body, again.body);
    each_replayed_once(&stack, 600).await;
}

#[tokio::test]
async fn the_overview_shows_the_queues_and_the_workers_rates() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_letter(&stack, &mixed(&token, "another-application-token")).await;
    let (metrics_url, worker) = stack.spawn_worker_served(&[]).await;
    let metrics = format!("{metrics_url}/metrics");
    let console = TestConsole::start_with(
        stack.worker_config(&[]),
        &[
            "--viewer-password",
            VIEWER_PASSWORD,
            "--worker-metrics",
            &metrics,
        ],
    )
    .await;
    let viewer = User::login(&console, "viewer", VIEWER_PASSWORD).await;
    assert_eq!(
        viewer.post_login("admin", ADMIN_PASSWORD).await.status(),
        401,
        "no admin configured, no admin"
    );

    stack.publish(&[Job::chat(token.clone(), 7)]).await;
    let overview = eventually(
        "two samples of the worker",
        Duration::from_secs(20),
        || async {
            let overview = viewer.get("/api/overview").await;
            (!overview.body["series"].as_array().unwrap().is_empty()).then_some(overview)
        },
    )
    .await;
    assert_eq!(overview.body["broker"], "ok");
    assert_eq!(overview.body["workers_configured"], 1);
    assert_eq!(overview.body["workers_read"], 1);
    let depth = |role: &str| {
        overview.body["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|queue| queue["role"] == role)
            .unwrap_or_else(|| panic!("no {role} queue in {}", overview.body))
            .clone()
    };
    assert_eq!(depth("dead")["messages"], 5);
    assert_eq!(depth("jobs")["consumers"], 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_console_and_worker_replay_at_once_move_each_letter_once() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    dead_letter(&stack, &chats(&token, 600)).await;
    let console = TestConsole::start(&stack).await;
    let admin = User::login(&console, "admin", ADMIN_PASSWORD).await;
    let config = stack.worker_config(&[]);

    let mut output = Vec::new();
    let everything = worker::Selection::default();
    let (from_console, from_cli) = tokio::join!(
        admin.post("/api/replay", json!({"filter": {}})),
        worker::replay::replay(&config, &everything, false, &mut output)
    );
    assert_eq!(from_console.status, 200, "{}", from_console.body);
    let from_cli = from_cli.expect("worker replay");
    // Whatever one held while the other read, a second pass takes.
    let again = admin.post("/api/replay", json!({"filter": {}})).await;
    let moved = from_console.body["moved"].as_u64().unwrap()
        + from_cli.replayed as u64
        + again.body["moved"].as_u64().unwrap();
    assert_eq!(
        moved, 600,
        "{} {from_cli:?} {}",
        from_console.body, again.body
    );
    each_replayed_once(&stack, 600).await;
}

#[tokio::test]
async fn an_unreachable_broker_is_a_banner_and_503s_not_empty_lists() {
    let stack = TestStack::start().await;
    // Nothing listens on port 9 of the loopback.
    let config = stack.worker_config(&["--amqp-url", "amqp://guest:guest@127.0.0.1:9/%2f"]);
    let console = TestConsole::start_with(config, &["--admin-password", ADMIN_PASSWORD]).await;
    let admin = User::login(&console, "admin", ADMIN_PASSWORD).await;

    let overview = admin.get("/api/overview").await;
    assert_eq!(overview.status, 200);
    assert_eq!(overview.body["broker"], "unreachable", "{}", overview.body);
    assert!(overview.body["queues"].as_array().unwrap().is_empty());
    let letters = admin.get("/api/letters").await;
    assert_eq!(letters.status, 503, "not an empty list: {}", letters.body);
    let replay = admin.post("/api/replay", json!({"filter": {}})).await;
    assert_eq!(replay.status, 503, "{}", replay.body);
}

//! The console in a real browser: Debian's headless Chromium, driven
//! through chromedriver (WebDriver, with fantoccini). The admin logs in,
//! filters the dead letters, replays one, sees it leave the list and its
//! record stored; the read-only user finds no action button. A screenshot
//! of the console is saved (`CONSOLE_SCREENSHOT`, by default
//! `target/console.png` of the workspace). A read answered late does not
//! replace the list of a filter applied after it.
//!
//! Needs `chromium` and `chromedriver` on the PATH: `scripts/test`
//! installs them (Debian's `chromium` and `chromium-driver`). Without
//! them this test fails; it never passes without a browser.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use shared::job::Job;
use testkit::eventually;

use crate::console::{ADMIN_PASSWORD, Dead, TestConsole, VIEWER_PASSWORD, dead_letter};
use crate::helpers::{TestStack, eventually_chats};

/// chromedriver on a port of its own, stopped with the test.
struct Driver {
    url: String,
    _process: tokio::process::Child,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let process = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async {
                let answer = testkit::http::client().get(&status).send().await.ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await;
        Self {
            url,
            _process: process,
        }
    }

    /// A new headless Chromium session.
    async fn browser(&self) -> Client {
        let chromium = which("chromium");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

fn which(program: &str) -> String {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|directory| directory.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on the PATH (scripts/test installs it)"))
        .display()
        .to_string()
}

/// Clicks the element of id `id`.
async fn click(browser: &Client, id: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("no element #{id}: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("clicking #{id}: {error}"));
}

async fn log_in(browser: &Client, console: &TestConsole, user: &str, password: &str) {
    browser
        .goto(&format!("{}/", console.url))
        .await
        .expect("opening the console");
    browser
        .wait()
        .for_element(Locator::Id("login-user"))
        .await
        .expect("the login page, for a visitor without a session")
        .send_keys(user)
        .await
        .unwrap();
    browser
        .find(Locator::Id("login-password"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(browser, "login-submit").await;
    // The tabs are in the page before the script has read the session and
    // bound them: a click before `who` is filled in would be lost.
    eventually(
        "the console to read its session",
        Duration::from_secs(20),
        || async {
            let who = browser.find(Locator::Id("who")).await.ok()?;
            let text = who.text().await.ok()?;
            (!text.is_empty()).then_some(())
        },
    )
    .await;
    click(browser, "tab-letters").await;
}

/// The ids of the rows listed now, read in one script so that a list
/// re-rendered between finding a row and reading it cannot go stale.
async fn listed(browser: &Client) -> Vec<String> {
    let ids = browser
        .execute(
            "return [...document.querySelectorAll('tr.letter')].map((row) => row.dataset.id);",
            Vec::new(),
        )
        .await
        .expect("reading the listed rows");
    serde_json::from_value(ids).expect("a list of ids")
}

/// Waits until the list shows exactly `count` rows.
async fn rows(browser: &Client, count: usize) -> Vec<String> {
    eventually(
        &format!("{count} rows listed"),
        Duration::from_secs(20),
        || async {
            let ids = listed(browser).await;
            (ids.len() == count).then_some(ids)
        },
    )
    .await
}

async fn filter_by_error(browser: &Client, text: &str) {
    let field = browser.find(Locator::Id("filter-error")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
    click(browser, "filter-apply").await;
}

#[tokio::test]
async fn an_operator_filters_and_replays_in_a_browser_and_a_viewer_cannot_act() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let letters = vec![
        Dead {
            job: Job::chat(token.clone(), 1),
            reason: "exhausted",
            error: "timed out after 1000 ms",
            at_ms: shared::amqp::headers::now_ms() - 60_000,
        },
        Dead {
            job: Job::chat(token.clone(), 2),
            reason: "exhausted",
            error: "chat-system answered 503",
            at_ms: shared::amqp::headers::now_ms() - 30_000,
        },
        Dead {
            job: Job::chat(token.clone(), 3),
            reason: "exhausted",
            error: "chat-system answered 503",
            at_ms: shared::amqp::headers::now_ms(),
        },
    ];
    dead_letter(&stack, &letters).await;
    let console = TestConsole::start(&stack).await;
    let worker = stack.spawn_worker(&[]).await;
    let driver = Driver::start().await;

    let admin = driver.browser().await;
    log_in(&admin, &console, "admin", ADMIN_PASSWORD).await;
    rows(&admin, 3).await;
    filter_by_error(&admin, "timed out").await;
    let timed_out = rows(&admin, 1).await;
    admin
        .find(Locator::Css("tr.letter button.replay-one"))
        .await
        .expect("a replay button for the admin")
        .click()
        .await
        .unwrap();
    eventually("the replay's answer", Duration::from_secs(20), || async {
        let message = admin.find(Locator::Id("message")).await.ok()?;
        let text = message.text().await.ok()?;
        text.starts_with("Replayed 1 of 1").then_some(())
    })
    .await;
    filter_by_error(&admin, "").await;
    let left = rows(&admin, 2).await;
    assert!(!left.contains(&timed_out[0]), "the replayed letter is gone");
    eventually_chats(&stack, &token, 1).await;
    let stored = stack.get(&format!("/applications/{token}/chats/1")).await;
    assert_eq!(
        stored.status, 200,
        "the replayed chat is stored: {}",
        stored.body
    );

    let screenshot = admin.screenshot().await.expect("a screenshot");
    let path = std::env::var("CONSOLE_SCREENSHOT")
        .unwrap_or_else(|_| format!("{}/../target/console.png", env!("CARGO_MANIFEST_DIR")));
    if let Some(directory) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(directory).unwrap();
    }
    std::fs::write(&path, &screenshot).expect("saving the screenshot");
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("console screenshot: {path}");
    admin.close().await.unwrap();

    let viewer = driver.browser().await;
    log_in(&viewer, &console, "viewer", VIEWER_PASSWORD).await;
    rows(&viewer, 2).await;
    let who = viewer
        .find(Locator::Id("who"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(who.contains("read-only"), "{who}");
    let buttons = viewer
        .find_all(Locator::Css(".action, input.pick"))
        .await
        .unwrap();
    assert!(
        buttons.is_empty(),
        "{} action controls for the viewer",
        buttons.len()
    );
    viewer.close().await.unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn a_late_answer_for_an_older_filter_does_not_replace_the_list() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let letters: Vec<Dead> = [
        (1, "timed out after 1000 ms"),
        (2, "chat-system answered 503"),
        (3, "chat-system answered 503"),
    ]
    .into_iter()
    .map(|(chat, error)| Dead {
        job: Job::chat(token.clone(), chat),
        reason: "exhausted",
        error,
        at_ms: shared::amqp::headers::now_ms(),
    })
    .collect();
    dead_letter(&stack, &letters).await;
    let console = TestConsole::start(&stack).await;
    let driver = Driver::start().await;
    let admin = driver.browser().await;
    log_in(&admin, &console, "admin", ADMIN_PASSWORD).await;
    rows(&admin, 3).await;

    // From now on the page gets an unfiltered read's answer 1.5 s late,
    // and counts the late answers it got.
    admin
        .execute(
            "const fetchNow = window.fetch;
             window.lateAnswers = 0;
             window.fetch = async (...args) => {
               const response = await fetchNow(...args);
               const path = String(args[0]);
               if (path.startsWith('/api/letters?') && !path.includes('error=')) {
                 await new Promise((resolve) => setTimeout(resolve, 1500));
                 window.lateAnswers += 1;
               }
               return response;
             };",
            Vec::new(),
        )
        .await
        .expect("slowing the page's unfiltered reads");
    click(&admin, "refresh").await;
    filter_by_error(&admin, "timed out").await;
    let filtered = rows(&admin, 1).await;
    eventually(
        "the unfiltered read's late answer",
        Duration::from_secs(20),
        || async {
            let late = admin
                .execute("return window.lateAnswers;", Vec::new())
                .await
                .ok()?;
            (late.as_u64()? >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        listed(&admin).await,
        filtered,
        "the list still shows the filter applied last"
    );
    admin.close().await.unwrap();
}

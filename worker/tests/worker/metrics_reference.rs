//! `docs/METRICS.md` is the reference of what the binaries export: this
//! runs the api and a worker, sends them a chat and a message, reads both
//! `/metrics` and holds the reference, the binaries' metric tables, the
//! alert rules and the dashboard to what they really export.
//!
//! In this process the api and the worker share one recorder, so both
//! endpoints show both binaries' metrics; which binary a metric is from is
//! its prefix, and each binary's table (`api::telemetry::METRICS`,
//! `worker::telemetry::METRICS`) holds only its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use testkit::eventually;

use crate::helpers::TestStack;

#[tokio::test]
async fn the_reference_lists_exactly_what_the_binaries_export_and_what_rules_and_panels_name() {
    let stack = TestStack::start().await;
    let token = stack.application().await;
    let (api, _api) = stack.spawn_api().await;
    let (worker, _worker) = stack.spawn_worker_served(&[]).await;
    let worker_metrics = format!("{worker}/metrics");
    let client = reqwest::Client::new();
    for path in ["chats", "chats/1/messages/hello"] {
        let answer = client
            .post(format!("{api}/applications/{token}/{path}"))
            .send()
            .await
            .expect("the api answers");
        assert_eq!(answer.status(), 200, "{path}");
    }
    stack.wait_for_messages(&token, 1, 1).await;

    let mut exported = exported(&client, &format!("{api}/metrics")).await;
    exported.extend(exported_after_store(&client, &worker_metrics).await);
    let reference = reference();

    let documented: BTreeMap<&str, &str> = reference
        .values()
        .flatten()
        .map(|(name, kind)| (name.as_str(), kind.as_str()))
        .collect();
    let shown: BTreeMap<&str, &str> = exported
        .iter()
        .map(|(name, kind)| (name.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        shown, documented,
        "/metrics of the api and the worker (left) against docs/METRICS.md (right)"
    );
    for (binary, table) in [
        ("api", api::telemetry::METRICS),
        ("worker", worker::telemetry::METRICS),
    ] {
        let in_code: BTreeSet<&str> = table.iter().map(|metric| metric.name).collect();
        let in_reference: BTreeSet<&str> = reference[binary]
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            in_code, in_reference,
            "{binary}: its metric table against its section of docs/METRICS.md"
        );
        for name in in_code {
            assert!(name.starts_with(&format!("{binary}_")), "{binary}: {name}");
        }
    }

    let rules = repository_file("deploy/prometheus/alerts.yml");
    let rules: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let dashboard: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/grafana/chat-numbering.json"))
            .expect("the dashboard is JSON");
    let panels: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets").iter())
        .map(|target| target["expr"].as_str().expect("an expression").to_owned())
        .collect();
    assert!(panels.len() >= 10, "{} queries", panels.len());
    for (what, text) in [("alerts.yml", rules), ("the dashboard", panels.join("\n"))] {
        let named = named_metrics(&text, &documented);
        assert!(!named.is_empty(), "{what} names no metric");
        for name in named {
            assert!(
                shown.contains_key(name.as_str()),
                "{what} names {name}, which no binary exports"
            );
        }
    }
}

/// `name -> type` from the `# TYPE` lines of a `/metrics` page.
async fn exported(client: &reqwest::Client, url: &str) -> BTreeMap<String, String> {
    let page = client
        .get(url)
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .unwrap_or_else(|error| panic!("{url}: {error}"))
        .text()
        .await
        .expect("a /metrics page");
    page.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|line| {
            let (name, kind) = line.split_once(' ').expect("# TYPE name kind");
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

/// The worker's page once it shows the queue depths (read at each scrape)
/// and the record stored.
async fn exported_after_store(client: &reqwest::Client, url: &str) -> BTreeMap<String, String> {
    eventually(
        "the worker's /metrics with queue depths",
        Duration::from_secs(10),
        || async {
            let page = exported(client, url).await;
            page.contains_key("worker_queue_messages").then_some(page)
        },
    )
    .await
}

/// Each section (`## api`, `## worker`) of docs/METRICS.md: its table's
/// `(metric, type)` rows.
fn reference() -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = None;
    for line in repository_file("docs/METRICS.md").lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = Some(title.trim().to_owned());
            continue;
        }
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`').to_owned();
        let section = section.clone().expect("a metric row under a section");
        sections
            .entry(section)
            .or_default()
            .push((name, cells[1].to_owned()));
    }
    assert_eq!(
        sections.keys().map(String::as_str).collect::<Vec<_>>(),
        ["api", "worker"],
        "docs/METRICS.md: one section per binary"
    );
    sections
}

/// The metric names a PromQL text uses: words with a binary's prefix,
/// a histogram's `_bucket`, `_sum` and `_count` read as the histogram.
fn named_metrics(text: &str, documented: &BTreeMap<&str, &str>) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("api_") || word.starts_with("worker_"))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = word.strip_suffix(suffix)?;
                    (documented.get(base) == Some(&"histogram")).then_some(base)
                })
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

fn repository_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

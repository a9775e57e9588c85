//! The probes of deploy/k8s answer on the real binaries: every readiness
//! and liveness path the manifests give the api, the worker and the
//! chat-system is asked of a running one and answers 200. (Their ports are
//! checked against the listen variables in testkit/tests/deployment.rs.)

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::eventually;

use crate::helpers::TestStack;

#[tokio::test]
async fn every_probe_of_the_kubernetes_manifests_answers_on_the_running_binary() {
    let stack = TestStack::start().await;
    let (api, _api) = stack.spawn_api().await;
    let (worker_url, _worker) = stack.spawn_worker_served(&[]).await;
    let chat_system = stack.chat_system.url("");
    let bases = BTreeMap::from([
        ("api", api.as_str()),
        ("worker", worker_url.as_str()),
        ("chat-system", chat_system.trim_end_matches('/')),
    ]);
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|answer| answer.status().as_u16())
        }
    };
    let mut asked = 0;
    for container in testkit::manifests::containers() {
        let Some(base) = bases.get(container.name.as_str()) else {
            continue;
        };
        for probe in &container.probes {
            let path = probe.path.as_deref().unwrap_or_else(|| {
                panic!(
                    "{}: {} is not an HTTP probe",
                    container.workload, probe.kind
                )
            });
            let url = format!("{base}{path}");
            let what = format!(
                "{}'s {} ({url}) to answer 200",
                container.workload, probe.kind
            );
            eventually(&what, Duration::from_secs(10), || async {
                (get(url.clone()).await.ok()? == 200).then_some(())
            })
            .await;
            asked += 1;
        }
    }
    assert_eq!(
        asked, 6,
        "a readiness and a liveness probe for each of the three binaries"
    );
    // A path no binary serves is not taken for a probe that answers.
    for base in bases.values() {
        assert_eq!(
            get(format!("{base}/no-such-probe"))
                .await
                .expect("an answer"),
            404,
            "{base}"
        );
    }
}

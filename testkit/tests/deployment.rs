//! What the deployment files promise about the binaries, checked against
//! the binaries' own declarations: compose.yaml parses, names every
//! service, wires health checks and start order, and passes the same
//! variables scripts/run sets, each one a variable the receiving binary
//! really reads; the Kubernetes manifests of deploy/k8s set only variables
//! the binaries read, probe the ports they listen on, run as non-root on a
//! read-only root with resources, a disruption budget and time to drain,
//! and scale the workers on the queue they consume. (That the manifests
//! render and validate is scripts/check-k8s; that the probe paths answer is
//! worker/tests/worker/probes.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::{CommandFactory, Parser};
use serde::Deserialize;
use testkit::manifests::{self, Container, EnvValue};

#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    ports: Vec<String>,
    depends_on: BTreeMap<String, Dependency>,
    healthcheck: Option<Healthcheck>,
    deploy: Option<Deploy>,
    profiles: Vec<String>,
    volumes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Build {
    target: String,
}

#[derive(Debug, Deserialize)]
struct Dependency {
    condition: String,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    test: Test,
}

/// `["CMD", ...]`, or a string run by the container's shell.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Test {
    Exec(Vec<String>),
    Shell(String),
}

impl Test {
    fn is_empty(&self) -> bool {
        match self {
            Test::Exec(words) => words.is_empty(),
            Test::Shell(line) => line.trim().is_empty(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Deploy {
    replicas: String,
}

fn repository_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn compose() -> Compose {
    serde_saphyr::from_str(&repository_file("compose.yaml")).expect("compose.yaml parses")
}

/// The environment variables a binary reads, from its clap declaration.
fn variables<C: CommandFactory>() -> BTreeSet<String> {
    C::command()
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .collect()
}

fn binaries() -> BTreeMap<&'static str, BTreeSet<String>> {
    BTreeMap::from([
        ("chat-system", variables::<chat_system::Config>()),
        ("api", variables::<api::Config>()),
        ("worker", variables::<worker::Cli>()),
    ])
}

/// `NAME` of every `export NAME=...` and `NAME=... command` in scripts/run.
fn run_script_variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in repository_file("scripts/run").lines() {
        let line = line.trim().trim_start_matches("export ");
        for word in line.split_whitespace() {
            match word.split_once('=') {
                Some((name, _))
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') =>
                {
                    names.insert(name.to_owned());
                }
                _ => break,
            }
        }
    }
    names
}

#[test]
fn compose_names_every_service_of_the_stack() {
    let compose = compose();
    let services: Vec<&str> = compose
        .services
        .iter()
        .filter(|(_, service)| service.profiles.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        services,
        [
            "api",
            "chat-system",
            "postgres",
            "rabbitmq",
            "redis",
            "worker"
        ]
    );
}

#[test]
fn compose_passes_the_variables_scripts_run_sets() {
    let compose = compose();
    let binaries = binaries();
    let from_script = run_script_variables();
    assert!(
        from_script.contains("AMQP_URL") && from_script.contains("WORKERS"),
        "{from_script:?}"
    );
    for name in &from_script {
        let readers: Vec<&str> = binaries
            .iter()
            .filter(|(_, variables)| variables.contains(name))
            .map(|(binary, _)| *binary)
            .collect();
        for binary in &readers {
            assert!(
                compose.services[*binary].environment.contains_key(name),
                "scripts/run sets {name} for {binary}; compose.yaml does not"
            );
        }
        if readers.is_empty() && name == "WORKERS" {
            let replicas = &compose.services["worker"]
                .deploy
                .as_ref()
                .expect("worker replicas")
                .replicas;
            assert!(
                replicas.contains("${WORKERS"),
                "worker replicas follow WORKERS: {replicas}"
            );
        }
    }
}

#[test]
fn compose_sets_only_variables_the_binaries_read() {
    let compose = compose();
    for (binary, variables) in binaries() {
        for name in compose.services[binary].environment.keys() {
            assert!(
                variables.contains(name),
                "compose.yaml sets {name} for {binary}, which does not read it"
            );
        }
    }
}

#[test]
fn every_service_is_health_checked_and_started_in_order() {
    let compose = compose();
    for (name, service) in &compose.services {
        assert!(
            service
                .healthcheck
                .as_ref()
                .is_some_and(|check| !check.test.is_empty()),
            "{name} has no health check"
        );
        for (dependency, condition) in &service.depends_on {
            assert!(
                compose.services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
            assert_eq!(
                condition.condition, "service_healthy",
                "{name} -> {dependency}"
            );
        }
    }
    for binary in ["chat-system", "api", "worker"] {
        let service = &compose.services[binary];
        assert_eq!(
            service.build.as_ref().map(|build| build.target.as_str()),
            Some(binary)
        );
        assert!(
            service.image.is_none(),
            "{binary} is built from this repository"
        );
    }
    assert!(compose.services["api"].depends_on.contains_key("redis"));
    assert!(
        compose.services["worker"]
            .depends_on
            .contains_key("rabbitmq")
    );
    let redis = compose.services["redis"].command.join(" ");
    assert!(
        redis.contains("--appendonly yes"),
        "Redis keeps its counters in an AOF: {redis}"
    );
}

/// The `monitoring` profile: Prometheus loads deploy/prometheus (its
/// configuration and the alert rules) and scrapes the api and the workers
/// where compose.yaml has them listen; Grafana gets the dashboard.
#[test]
fn the_monitoring_profile_scrapes_the_api_and_the_workers_where_they_listen() {
    let compose = compose();
    for name in ["prometheus", "grafana"] {
        assert_eq!(compose.services[name].profiles, ["monitoring"], "{name}");
    }
    assert!(
        compose.services["prometheus"]
            .volumes
            .iter()
            .any(|volume| volume.starts_with("./deploy/prometheus:/etc/prometheus")),
        "{:?}",
        compose.services["prometheus"].volumes
    );
    assert!(
        compose.services["grafana"]
            .volumes
            .iter()
            .any(|volume| volume.starts_with("./deploy/grafana:")),
        "{:?}",
        compose.services["grafana"].volumes
    );
    let prometheus = repository_file("deploy/prometheus/prometheus.yml");
    assert!(prometheus.contains("- alerts.yml"), "the rules are loaded");
    let port = |service: &str, variable: &str| {
        let address = &compose.services[service].environment[variable];
        address.rsplit(':').next().expect("host:port").to_owned()
    };
    let api = format!("\"api:{}\"", port("api", "API_ADDR"));
    assert!(prometheus.contains(&api), "scrapes {api}");
    let worker = format!("port: {}", port("worker", "WORKER_METRICS_ADDR"));
    assert!(
        prometheus.contains("names: [\"worker\"]") && prometheus.contains(&worker),
        "scrapes every worker replica on {worker}"
    );
}

#[test]
fn compose_publishes_only_the_api_on_every_interface() {
    let compose = compose();
    for (name, service) in &compose.services {
        for port in &service.ports {
            let public_api = name == "api" && port == "3001:3001";
            assert!(
                public_api || port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond this host"
            );
        }
    }
    assert_eq!(compose.services["api"].ports, ["3001:3001"]);
}

#[test]
fn compose_names_no_password_of_its_own() {
    let text = repository_file("compose.yaml");
    for default in ["guest", "postgres:postgres@", "POSTGRES_PASSWORD: postgres"] {
        assert!(!text.contains(default), "compose.yaml holds {default:?}");
    }
    let compose = compose();
    for (name, service) in &compose.services {
        let values = service.environment.iter().chain(
            service
                .command
                .iter()
                .zip(service.command.iter().skip(1))
                .filter(|(flag, _)| flag.as_str() == "--requirepass"),
        );
        for (key, value) in values {
            let secret = key.contains("PASS") || key.contains("AUTH") || key == "--requirepass";
            let credentials_in_url = value.contains("://") && value.contains('@');
            if secret || credentials_in_url {
                assert!(
                    value.contains("${") && value.contains(":?"),
                    "{name}: {key} must come from .env, required: {value}"
                );
            }
        }
        for (key, value) in &service.environment {
            if key.ends_with("TOKEN") {
                panic!("{name}: {key}={value}: credentials go in as secret files");
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_each_binary_into_a_non_root_image() {
    let dockerfile = repository_file("Dockerfile");
    for binary in ["chat-system", "api", "worker"] {
        assert!(
            dockerfile.contains(&format!("FROM runtime AS {binary}\n")),
            "no {binary} target"
        );
        assert!(
            dockerfile.contains(&format!("ENTRYPOINT [\"{binary}\"]")),
            "no {binary} entry point"
        );
    }
    assert!(
        dockerfile.contains("USER app"),
        "the runtime image runs as a non-root user"
    );
}

/// The containers of deploy/k8s that run one of the three binaries.
fn binary_containers() -> Vec<Container> {
    let binaries = binaries();
    let containers: Vec<Container> = manifests::containers()
        .into_iter()
        .filter(|container| binaries.contains_key(container.name.as_str()))
        .collect();
    let names: BTreeSet<&str> = containers
        .iter()
        .map(|container| container.name.as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["api", "chat-system", "worker"]));
    containers
}

/// The variable each binary listens by, and its port.
fn listen_variable(binary: &str) -> &'static str {
    match binary {
        "api" => "API_ADDR",
        "worker" => "WORKER_METRICS_ADDR",
        "chat-system" => "CHAT_SYSTEM_ADDR",
        other => panic!("{other}"),
    }
}

#[test]
fn kubernetes_sets_only_variables_the_binaries_read_from_settings_and_secrets_that_exist() {
    let binaries = binaries();
    let settings = manifests::config_map("chat-numbering-settings");
    let secrets_script = repository_file("scripts/k8s-secrets");
    for container in binary_containers() {
        let variables = &binaries[container.name.as_str()];
        for (name, value) in &container.env {
            assert!(
                variables.contains(name),
                "{}: sets {name}, which {} does not read",
                container.workload,
                container.name
            );
            match value {
                EnvValue::Literal(_) => {}
                EnvValue::ConfigMap { name: map, key } => {
                    assert_eq!(
                        map, "chat-numbering-settings",
                        "{}: {name}",
                        container.workload
                    );
                    assert!(
                        settings.contains_key(key),
                        "{}: {name} from the missing setting {key}",
                        container.workload
                    );
                    assert_eq!(
                        key, name,
                        "{}: a setting goes in under its own name",
                        container.workload
                    );
                    assert!(
                        variables.contains(key),
                        "{}: setting {key}",
                        container.workload
                    );
                }
                EnvValue::Secret { name: secret, key } => {
                    assert!(
                        secrets_script.contains(&format!("secret {secret} "))
                            && secrets_script.contains(&format!("--from-literal={key}=")),
                        "{}: {name} from {secret}/{key}, which scripts/k8s-secrets does not make",
                        container.workload
                    );
                }
            }
        }
    }
    for key in settings.keys() {
        assert!(
            binaries.values().any(|variables| variables.contains(key)),
            "the setting {key} is read by no binary"
        );
    }
}

#[test]
fn kubernetes_probes_and_ports_are_where_the_binaries_listen() {
    for container in binary_containers() {
        let variable = listen_variable(&container.name);
        let Some(EnvValue::Literal(address)) = container.env.get(variable) else {
            panic!(
                "{}: {variable} is not set to an address",
                container.workload
            )
        };
        let port = manifests::port_of(address);
        assert_eq!(
            container.ports.values().copied().collect::<Vec<_>>(),
            [port],
            "{}: the one port declared is {variable}'s",
            container.workload
        );
        let probe = |kind: &str| {
            container
                .probes
                .iter()
                .find(|probe| probe.kind == kind)
                .unwrap_or_else(|| panic!("{}: no {kind}", container.workload))
        };
        for (kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let probe = probe(kind);
            assert_eq!(
                probe.path.as_deref(),
                Some(path),
                "{}: {kind}",
                container.workload
            );
            assert_eq!(
                probe.port,
                Some(port),
                "{}: {kind} on {variable}'s port",
                container.workload
            );
        }
    }
    // Every Service reaches a port its pods declare.
    let containers = manifests::containers();
    for (file, service) in manifests::documents() {
        if service["kind"] != "Service" {
            continue;
        }
        let selector = service["spec"]["selector"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap_or_default();
        for port in manifests::list(&service["spec"]["ports"]) {
            let target = port["targetPort"].as_str().unwrap_or_default();
            assert!(
                containers.iter().any(|container| {
                    container.workload.ends_with(&format!("/{selector}"))
                        && container.ports.contains_key(target)
                }),
                "{}: Service {} targets port {target} of {selector}, which declares none such",
                file.display(),
                service["metadata"]["name"]
            );
        }
    }
}

#[test]
fn every_deployment_runs_non_root_on_a_read_only_root_with_resources_a_budget_and_time_to_drain() {
    let api = api::Config::parse_from(["api"]);
    let worker = worker::Cli::parse_from(["worker"]).config;
    let seconds = |millis: u64| millis.div_ceil(1000);
    // What a SIGTERM waits for, at the defaults: the api, a publish's
    // confirm; a worker, a bulk store then its retry or dead-letter copies'
    // confirms; the chat-system, a write in hand (the worker's timeout).
    let drain = BTreeMap::from([
        ("api", seconds(api.broker.publish_timeout_ms)),
        (
            "worker",
            seconds(worker.chat_system.chat_system_timeout_ms)
                + seconds(worker.broker.publish_timeout_ms),
        ),
        (
            "chat-system",
            seconds(worker.chat_system.chat_system_timeout_ms),
        ),
    ]);
    let budgets: Vec<String> = manifests::documents()
        .into_iter()
        .filter(|(_, document)| document["kind"] == "PodDisruptionBudget")
        .filter_map(|(_, budget)| {
            budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for container in binary_containers() {
        let workload = &container.workload;
        assert!(workload.starts_with("Deployment/"), "{workload}");
        assert_eq!(
            container.pod["securityContext"]["runAsNonRoot"], true,
            "{workload}: runAsNonRoot"
        );
        assert_eq!(
            container.security["readOnlyRootFilesystem"], true,
            "{workload}: read-only root"
        );
        assert_eq!(
            container.security["allowPrivilegeEscalation"], false,
            "{workload}"
        );
        for (what, resource) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                container.resources[what][resource].is_string(),
                "{workload}: no {what}.{resource}"
            );
        }
        assert!(
            budgets.contains(&container.name),
            "{workload}: no PodDisruptionBudget"
        );
        let pre_stop: u64 =
            container.pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
                .as_array()
                .filter(|command| command.first().is_some_and(|word| word == "sleep"))
                .and_then(|command| command.get(1)?.as_str()?.parse().ok())
                .unwrap_or(0);
        let grace = container.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{workload}: no terminationGracePeriodSeconds"));
        let needed = pre_stop + drain[container.name.as_str()];
        assert!(
            grace > needed,
            "{workload}: {grace} s of grace for a {pre_stop} s preStop and a {} s drain",
            drain[container.name.as_str()]
        );
    }
}

#[test]
fn only_the_workers_and_the_chat_system_hold_the_write_credential() {
    for container in binary_containers() {
        let mounted = manifests::list(&container.pod["volumes"])
            .iter()
            .any(|volume| volume["secret"]["secretName"] == "chat-system-credentials");
        let sets_it = container
            .env
            .keys()
            .any(|name| name.starts_with("CHAT_SYSTEM_WRITE_TOKEN"));
        let holds = mounted || sets_it;
        assert_eq!(
            holds,
            container.name != "api",
            "{}: the write credential",
            container.workload
        );
    }
}

#[test]
fn the_workers_scale_on_the_queue_they_consume() {
    let settings = manifests::config_map("chat-numbering-settings");
    let broker =
        worker::Cli::parse_from(["worker", "--queue-prefix", &settings["QUEUE_PREFIX"]]).config;
    let jobs = shared::amqp::topology::Topology::new(&broker.broker).jobs_queue();
    let documents = manifests::documents();
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .map(|(_, document)| document)
            .find(|document| document["kind"] == kind && document["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
    };
    let scaled = find("ScaledObject", "worker");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "worker");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "rabbitmq");
    let metadata = &trigger["metadata"];
    assert_eq!(
        metadata["queueName"],
        jobs.as_str(),
        "the jobs queue of QUEUE_PREFIX"
    );
    assert_eq!(metadata["protocol"], "http", "unacknowledged batches count");
    assert_eq!(metadata["mode"], "QueueLength");
    let value: u64 = metadata["value"]
        .as_str()
        .and_then(|value| value.parse().ok())
        .expect("a whole value");
    assert!(
        value > u64::from(broker.prefetch),
        "{value} messages per worker: a worker holds up to WORKER_PREFETCH ({}) unacknowledged, so a lower value never settles",
        broker.prefetch
    );
    let authentication = trigger["authenticationRef"]["name"]
        .as_str()
        .expect("an authenticationRef");
    let parameters = &find("TriggerAuthentication", authentication)["spec"]["secretTargetRef"];
    assert_eq!(parameters[0]["parameter"], "host");
    let hpa = find("HorizontalPodAutoscaler", "worker");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "worker");
    let rules = find("ConfigMap", "prometheus-adapter-rules")["data"]["config.yaml"]
        .as_str()
        .expect("the adapter's rules");
    let metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
        .as_str()
        .expect("an external metric");
    assert!(
        rules.contains(&format!("as: {metric}")),
        "the adapter serves {metric}"
    );
    let series = "worker_queue_messages";
    assert!(
        rules.contains(&format!("'{series}{{queue=\"jobs\"}}'")),
        "the adapter reads the workers' own gauge"
    );
    assert!(
        worker::telemetry::METRICS
            .iter()
            .any(|exported| exported.name == series)
    );
}

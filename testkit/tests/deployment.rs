//! compose.yaml and the Dockerfile cannot be run on a machine without
//! Docker, so this checks what can be checked without it: compose.yaml
//! parses, names every service, wires health checks and start order, and
//! passes the same variables scripts/run sets, each one a variable the
//! receiving binary really reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::CommandFactory;
use serde::Deserialize;

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
    test: Vec<String>,
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

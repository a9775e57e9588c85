//! The Kubernetes manifests of `deploy/k8s`, as the tests read them: every
//! YAML document of every file there (the base, the overlays' resources and
//! the components), with the containers of its workloads flattened into
//! what a binary must agree with (variables, ports, probes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every document under `deploy/k8s`, with the file it came from.
pub fn documents() -> Vec<(PathBuf, Value)> {
    let root = repository_root().join("deploy/k8s");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|error| panic!("{} parses: {error}", file.display()));
        documents.extend(
            parsed
                .into_iter()
                .filter(|document| !document.is_null())
                .map(|document| (file.clone(), document)),
        );
    }
    documents
}

pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            files.push(path);
        }
    }
}

/// One container of a Deployment or StatefulSet.
#[derive(Debug)]
pub struct Container {
    /// `Deployment/api`, `StatefulSet/redis`.
    pub workload: String,
    pub name: String,
    pub image: String,
    /// Every `env` entry: its name and, when literal, its value.
    pub env: BTreeMap<String, EnvValue>,
    /// `containerPort` by port name.
    pub ports: BTreeMap<String, u16>,
    pub probes: Vec<Probe>,
    /// The container's own `securityContext`.
    pub security: Value,
    pub resources: Value,
    /// The pod's spec (security context, grace period, volumes).
    pub pod: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    ConfigMap { name: String, key: String },
    Secret { name: String, key: String },
}

#[derive(Debug)]
pub struct Probe {
    /// `readinessProbe`, `livenessProbe`, `startupProbe`.
    pub kind: String,
    /// The `httpGet` path, when it is an HTTP probe.
    pub path: Option<String>,
    /// The port, resolved through the container's port names.
    pub port: Option<u16>,
}

/// The containers of every Deployment and StatefulSet.
pub fn containers() -> Vec<Container> {
    let mut containers = Vec::new();
    for (file, document) in documents() {
        let kind = document["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let workload = format!("{kind}/{}", text(&document["metadata"]["name"]));
        let pod = &document["spec"]["template"]["spec"];
        for container in list(&pod["containers"]) {
            containers.push(parse_container(&file, &workload, container, pod));
        }
    }
    containers
}

fn parse_container(file: &Path, workload: &str, container: &Value, pod: &Value) -> Container {
    let name = text(&container["name"]);
    let ports: BTreeMap<String, u16> = list(&container["ports"])
        .iter()
        .map(|port| {
            let number = port["containerPort"]
                .as_u64()
                .and_then(|number| u16::try_from(number).ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {workload}: a containerPort that is no port: {port}",
                        file.display()
                    )
                });
            (text(&port["name"]), number)
        })
        .collect();
    let mut env = BTreeMap::new();
    for entry in list(&container["env"]) {
        let value = if let Some(literal) = entry.get("value") {
            EnvValue::Literal(
                literal
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| literal.to_string()),
            )
        } else if let Some(reference) = entry["valueFrom"].get("configMapKeyRef") {
            EnvValue::ConfigMap {
                name: text(&reference["name"]),
                key: text(&reference["key"]),
            }
        } else if let Some(reference) = entry["valueFrom"].get("secretKeyRef") {
            EnvValue::Secret {
                name: text(&reference["name"]),
                key: text(&reference["key"]),
            }
        } else {
            panic!(
                "{}: {workload}: an env entry of an unknown form: {entry}",
                file.display()
            )
        };
        env.insert(text(&entry["name"]), value);
    }
    let probes = ["readinessProbe", "livenessProbe", "startupProbe"]
        .into_iter()
        .filter_map(|kind| {
            let probe = container.get(kind)?;
            let handler = probe.get("httpGet").or_else(|| probe.get("tcpSocket"));
            let port = handler.map(|handler| match &handler["port"] {
                Value::String(named) => *ports
                    .get(named)
                    .unwrap_or_else(|| panic!("{}: {workload}: {kind} names port {named}, which the container does not declare", file.display())),
                number => number
                    .as_u64()
                    .and_then(|number| u16::try_from(number).ok())
                    .unwrap_or_else(|| panic!("{}: {workload}: {kind} port {number}", file.display())),
            });
            Some(Probe {
                kind: kind.to_owned(),
                path: probe["httpGet"]["path"].as_str().map(str::to_owned),
                port,
            })
        })
        .collect();
    Container {
        workload: workload.to_owned(),
        name,
        image: text(&container["image"]),
        env,
        ports,
        probes,
        security: container["securityContext"].clone(),
        resources: container["resources"].clone(),
        pod: pod.clone(),
    }
}

/// The `data` of the ConfigMap `name` (from the base, not the overlays' patches).
pub fn config_map(name: &str) -> BTreeMap<String, String> {
    documents()
        .into_iter()
        .map(|(_, document)| document)
        .find(|document| document["kind"] == "ConfigMap" && document["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name} in deploy/k8s"))["data"]
        .as_object()
        .expect("its data")
        .iter()
        .map(|(key, value)| (key.clone(), text(value)))
        .collect()
}

/// The port of a `host:port` address.
pub fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{address} is no host:port"))
}

pub fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

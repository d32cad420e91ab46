//! The shipped deployment files: the Kubernetes manifests under
//! deploy/kubernetes/ and docker/compose.yaml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_norway::Value;
use switchboard::config::Settings;
use switchboard::pool::PoolRuntime;

use crate::helpers::repo_root;

/// Environment variables and Secret keys a worker pod must never get.
fn is_channel_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["SLACK", "ADMIN_TOKEN", "IMAP", "SMTP", "MAIL", "PASSWORD"]
        .iter()
        .any(|word| name.contains(word))
}

/// One parsed YAML document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn manifest_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("deploy/kubernetes/ exists")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every document of every YAML file; panics naming the file that does not
/// parse.
fn manifests() -> Vec<Doc> {
    let mut docs = Vec::new();
    for path in yaml_files(&manifest_dir()) {
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file} does not parse: {e}"));
            if !value.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    value,
                });
            }
        }
    }
    docs
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes/"))
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn pod_spec(deployment: &Doc) -> &Value {
    &deployment.value["spec"]["template"]["spec"]
}

/// What is missing from one container: resources and probes.
fn container_problems(where_: &str, container: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let value = &container["resources"][bound][resource];
            if !(value.is_string() || value.is_number()) {
                problems.push(format!("{where_}: no resources.{bound}.{resource}"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        let p = &container[probe];
        if !["httpGet", "exec", "tcpSocket", "grpc"]
            .iter()
            .any(|handler| p[*handler].is_mapping())
        {
            problems.push(format!("{where_}: no {probe}"));
        }
    }
    problems
}

/// Every container of every Deployment lacking a limit, request or probe.
fn deployment_problems(docs: &[Doc]) -> Vec<String> {
    let mut problems = Vec::new();
    for d in docs.iter().filter(|d| d.kind() == "Deployment") {
        let spec = pod_spec(d);
        let containers: Vec<&Value> = seq(&spec["containers"])
            .iter()
            .chain(seq(&spec["initContainers"]))
            .collect();
        if containers.is_empty() {
            problems.push(format!(
                "{}: Deployment {} has no containers",
                d.file,
                d.name()
            ));
        }
        for c in containers {
            let name = c["name"].as_str().unwrap_or("?");
            let where_ = format!("{}: Deployment {} container {name}", d.file, d.name());
            problems.extend(container_problems(&where_, c));
        }
    }
    problems
}

#[test]
fn kubernetes_manifests_parse_and_every_deployment_has_limits_requests_and_probes() {
    let docs = manifests();
    assert!(
        docs.iter().filter(|d| d.kind() == "Deployment").count() >= 2,
        "expected gateway and worker Deployments"
    );
    for d in &docs {
        assert!(
            d.value["apiVersion"].is_string() && !d.kind().is_empty(),
            "{}: a document without apiVersion or kind",
            d.file
        );
    }
    let problems = deployment_problems(&docs);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn manifest_check_notices_a_missing_limit_or_probe() {
    let docs = manifests();
    let worker = find(&docs, "Deployment", "switchboard-worker");
    for (field, path) in [
        ("limits.memory", ["resources", "limits", "memory"]),
        ("requests.cpu", ["resources", "requests", "cpu"]),
    ] {
        let mut container = pod_spec(worker)["containers"][0].clone();
        let parent = &mut container[path[0]][path[1]];
        parent.as_mapping_mut().expect("a mapping").remove(path[2]);
        let problems = container_problems("worker", &container);
        assert!(
            problems.iter().any(|p| p.contains(field)),
            "{field}: {problems:?}"
        );
    }
    let mut container = pod_spec(worker)["containers"][0].clone();
    container
        .as_mapping_mut()
        .expect("a mapping")
        .remove("readinessProbe");
    let problems = container_problems("worker", &container);
    assert_eq!(problems, ["worker: no readinessProbe"]);
}

#[test]
fn kustomization_lists_every_manifest_file() {
    let docs = manifests();
    let kustomization = docs
        .iter()
        .find(|d| d.kind() == "Kustomization")
        .expect("kustomization.yaml");
    let listed: BTreeSet<&str> = seq(&kustomization.value["resources"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let files: BTreeSet<&str> = docs
        .iter()
        .map(|d| d.file.as_str())
        .filter(|f| *f != kustomization.file)
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn worker_pods_get_only_the_worker_redis_user_and_the_agent_key() {
    let docs = manifests();
    let worker = find(&docs, "Deployment", "switchboard-worker");
    let spec = pod_spec(worker);
    let mut secrets = BTreeSet::new();
    for c in seq(&spec["containers"])
        .iter()
        .chain(seq(&spec["initContainers"]))
    {
        for env in seq(&c["env"]) {
            let name = env["name"].as_str().unwrap_or("");
            assert!(!is_channel_secret(name), "worker env {name}");
            let secret = &env["valueFrom"]["secretKeyRef"];
            if let Some(key) = secret["key"].as_str() {
                assert!(!is_channel_secret(key), "worker env {name} from key {key}");
                secrets.insert(secret["name"].as_str().unwrap_or("").to_string());
            }
        }
        for from in seq(&c["envFrom"]) {
            if let Some(name) = from["secretRef"]["name"].as_str() {
                secrets.insert(name.to_string());
            }
        }
        let redis = seq(&c["env"])
            .iter()
            .find(|e| e["name"].as_str() == Some("REDIS_URL"))
            .expect("worker REDIS_URL");
        assert_eq!(
            redis["valueFrom"]["secretKeyRef"]["key"].as_str(),
            Some("WORKER_REDIS_URL"),
            "workers use the worker-only Redis user"
        );
    }
    for volume in seq(&spec["volumes"]) {
        if let Some(name) = volume["secret"]["secretName"].as_str() {
            secrets.insert(name.to_string());
        }
    }
    assert_eq!(secrets, BTreeSet::from(["switchboard-worker".to_string()]));
    // ...and that Secret holds nothing of the channels.
    let secret = find(&docs, "Secret", "switchboard-worker");
    for section in ["stringData", "data"] {
        if let Some(map) = secret.value[section].as_mapping() {
            for key in map.keys().filter_map(Value::as_str) {
                assert!(
                    !is_channel_secret(key),
                    "switchboard-worker Secret has {key}"
                );
            }
        }
    }
}

#[test]
fn gateway_service_selects_the_gateway_pods_and_not_the_workers() {
    let docs = manifests();
    let service = find(&docs, "Service", "switchboard-gateway");
    let selector = service.value["spec"]["selector"]
        .as_mapping()
        .expect("a selector");
    assert!(!selector.is_empty());
    let selects = |deployment: &Doc| {
        let labels = &deployment.value["spec"]["template"]["metadata"]["labels"];
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let gateway = find(&docs, "Deployment", "switchboard-gateway");
    let worker = find(&docs, "Deployment", "switchboard-worker");
    assert!(selects(gateway), "the Service misses the gateway pods");
    assert!(!selects(worker), "the Service selects worker pods");
    // Its first port leads to the gateway's listener (`gateway.listen`).
    let listen = config_settings(&docs).gateway.listen.port();
    let target = &seq(&service.value["spec"]["ports"])[0]["targetPort"];
    let port = seq(&pod_spec(gateway)["containers"][0]["ports"])
        .iter()
        .find(|p| p["name"] == *target || p["containerPort"] == *target)
        .unwrap_or_else(|| panic!("targetPort {target:?} is no gateway port"));
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(listen)));
}

/// The settings in the ConfigMap, validated as Switchboard loads them.
fn config_settings(docs: &[Doc]) -> Settings {
    let config = find(docs, "ConfigMap", "switchboard-config");
    let toml = config.value["data"]["switchboard.toml"]
        .as_str()
        .expect("switchboard.toml in the ConfigMap");
    Settings::from_toml_str(toml).expect("the ConfigMap's config is valid")
}

#[test]
fn kubernetes_config_runs_an_external_pool_that_workers_can_drain() {
    let docs = manifests();
    let settings = config_settings(&docs);
    assert_eq!(settings.pool.runtime, PoolRuntime::External);

    // A stopping worker pod gets to drain before Kubernetes kills it.
    let worker = find(&docs, "Deployment", "switchboard-worker");
    let spec = pod_spec(worker);
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("worker terminationGracePeriodSeconds");
    let drain = settings.pool.drain_timeout
        + settings.agent.interrupt_grace
        + settings.agent.terminate_timeout;
    assert!(grace > drain.as_secs(), "grace {grace}s <= drain {drain:?}");
    let container = &spec["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["exec"]["command"],
            serde_norway::from_str::<Value>(r#"["/usr/local/bin/switchboard", "worker-alive"]"#)
                .expect("yaml"),
            "worker {probe}"
        );
    }
    let data = seq(&container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/var/lib/switchboard/data"))
        .and_then(|m| m["name"].as_str())
        .expect("a work volume at /var/lib/switchboard/data");
    let volume = seq(&spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(data))
        .expect("the work volume");
    assert!(
        volume["emptyDir"].is_mapping(),
        "the work volume is an emptyDir"
    );
    assert!(
        container["securityContext"].is_mapping(),
        "worker securityContext"
    );

    // KEDA's target per worker is the slots one worker has.
    let scaler = find(&docs, "ScaledObject", "switchboard-worker");
    let trigger = &seq(&scaler.value["spec"]["triggers"])[0];
    assert_eq!(
        trigger["metadata"]["threshold"].as_str(),
        Some(settings.pool.slots_per_container.to_string().as_str())
    );
    let query = trigger["metadata"]["query"].as_str().expect("query");
    assert!(
        query.contains("switchboard_queue_ready_conversations"),
        "{query}"
    );
}

/// `docker-compose` (v1), else the `docker compose` plugin, when either runs.
fn compose_command() -> Result<Vec<&'static str>, String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("docker-compose", &["version"]) {
        Ok(vec!["docker-compose"])
    } else if works("docker", &["compose", "version"]) {
        Ok(vec!["docker", "compose"])
    } else {
        Err("neither `docker-compose` nor `docker compose` runs here".into())
    }
}

#[test]
fn docker_compose_file_passes_compose_config() {
    let command = match compose_command() {
        Ok(command) => command,
        Err(why) => {
            println!("docker_compose_file_passes_compose_config: not run: {why}");
            return;
        }
    };
    // compose.yaml reads switchboard.env beside it: check a copy in a temp
    // directory with the example env file, so the repository stays clean.
    let dir = tempfile::tempdir().expect("tempdir");
    let docker = repo_root().join("docker");
    for (from, to) in [
        ("compose.yaml", "compose.yaml"),
        ("users.acl", "users.acl"),
        ("switchboard.env.example", "switchboard.env"),
    ] {
        std::fs::copy(docker.join(from), dir.path().join(to)).expect("copy compose files");
    }
    let output = Command::new(command[0])
        .args(&command[1..])
        .args(["-f", "compose.yaml", "config"])
        .current_dir(dir.path())
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdin(Stdio::null())
        .output()
        .expect("run compose");
    assert!(
        output.status.success(),
        "{} config failed: {}\n{}",
        command.join(" "),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let rendered = String::from_utf8_lossy(&output.stdout);
    for service in ["redis", "gateway", "worker"] {
        assert!(rendered.contains(&format!("  {service}:")), "{rendered}");
    }
}

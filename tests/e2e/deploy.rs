//! The deployment artefacts against the code, so the manifests cannot drift from it:
//! - every overlay of `deploy/kubernetes` renders with `kubectl kustomize` and every
//!   rendered object validates (strictly: no unknown fields) against the Kubernetes API
//!   schemas `kubernetes-validate` ships, for the oldest and newest Kubernetes it knows of
//!   the two we name; the ServiceMonitor (a Prometheus Operator kind with no schema there)
//!   is checked against the Service it selects instead;
//! - the pod's own init script runs against the rendered ConfigMap, with test copies of
//!   the Secrets it mounts, and its `traceo-gateway check-config` passes; the pod's ports,
//!   probes and grace period agree with that config;
//! - `promtool check rules` and `promtool test rules` pass on `deploy/prometheus`, every
//!   alert has a test case that fires it and one that does not, and a `runbook` that names
//!   a heading of `docs/operations.md`; every dashboard query is valid PromQL;
//! - a gateway with the features the alerts and the dashboard watch (TLS, the log, Kafka
//!   upstreams with a standby, gossip, limits, HA pairs) takes traffic, including refused
//!   requests (401, 429), a deduplicated replica and a failover, and then exports every
//!   metric name those files use.
//!
//! The tools (kubectl, kubernetes-validate, promtool, tansu) come from
//! `scripts/install-test-deps.sh`; a missing one fails the test, naming that script.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize as _;
use serde_yaml::Value;
use traceo_e2e::{
    get, https_agent, remote_write_body, tansu_bin, try_post_with, wait_for, write_pki, Broker,
    Gateway, REMOTE_WRITE_V1_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// What installs the tools this test runs.
const INSTALL: &str = "scripts/install-test-deps.sh";

/// Kubernetes versions the manifests must validate against: the oldest we support (the
/// StatefulSet's `persistentVolumeClaimRetentionPolicy` is beta from 1.27) and the newest
/// schema set of the pinned kubernetes-validate.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

/// Kinds kubernetes-validate has no schema for (custom resources), each checked here by
/// [`check_service_monitor`] instead.
const CUSTOM_KINDS: [&str; 1] = ["ServiceMonitor"];

/// The pod IP the test's run of the init script gets (any address parses).
const POD_IP: &str = "10.1.2.3";

/// Seconds the grace period must leave, after the preStop hook and the drain delay, for
/// in-flight requests to finish and the sinks to flush (a request body may take up to
/// `listen.body_read_timeout`, but the log makes running out of grace safe: this is for a
/// clean exit in the common case).
const FLUSH_MARGIN_S: u64 = 30;

// ----- tools -------------------------------------------------------------------------------

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .to_path_buf()
}

/// `name` on `PATH`, if there.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// `$TRACEO_TOOLS`, else `~/.cache/traceo-tools`: where the install script caches tools.
fn tools_dir() -> Option<PathBuf> {
    std::env::var("TRACEO_TOOLS")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache/traceo-tools")))
        .ok()
}

/// A tool: `$<env>`, else `cached` (under the tools dir), else `name` on `PATH`. Panics
/// naming the install script when it is nowhere.
fn tool(name: &str, env: &str, cached: Option<&str>) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    if let Some(c) = cached.and_then(|c| Some(tools_dir()?.join(c))) {
        if c.is_file() {
            return c;
        }
    }
    on_path(name).unwrap_or_else(|| {
        panic!("{name} not found (${env}, PATH): run {INSTALL} first, it installs {name}")
    })
}

fn kubectl() -> PathBuf {
    tool("kubectl", "KUBECTL", None)
}

fn kubernetes_validate() -> PathBuf {
    tool(
        "kubernetes-validate",
        "KUBERNETES_VALIDATE",
        Some("k8s-venv/bin/kubernetes-validate"),
    )
}

fn promtool() -> PathBuf {
    tool("promtool", "PROMTOOL", None)
}

/// Runs `cmd`; its stdout when it succeeds, else a panic with everything it printed.
fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} (see {INSTALL})"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// ----- YAML helpers ------------------------------------------------------------------------

/// `v` at `path` (mapping keys), if there.
fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// The string at `path`, or a panic naming it.
fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {}", path.join(".")))
}

/// The sequence at `path`, empty when absent.
fn seq_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_sequence)
        .map_or(&[], |s| s.as_slice())
}

/// Every document of a multi-document YAML text.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    str_at(doc, &["kind"])
}

fn name(doc: &Value) -> &str {
    str_at(doc, &["metadata", "name"])
}

/// The one object of `kind` in `docs`.
fn the<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| kind(d) == k).collect();
    assert_eq!(found.len(), 1, "expected one {k}, found {}", found.len());
    found[0]
}

/// Whether every label of `selector` (a map) is in `labels`.
fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let (Some(sel), Some(labels)) = (
        selector.and_then(Value::as_mapping),
        labels.and_then(Value::as_mapping),
    ) else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A duration as the gateway's config writes it (`250ms`, `10s`, `5m`, `1h`), in seconds.
fn seconds(d: &str) -> f64 {
    let (n, unit) = d.split_at(d.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(d.len()));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("duration {d:?}"));
    n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => panic!("duration {d:?}"),
    }
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ----- Kubernetes ------------------------------------------------------------------------

/// The overlays: every folder under `deploy/kubernetes/overlays`.
fn overlays() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes/overlays");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    found
}

#[test]
fn every_overlay_renders_validates_and_its_config_passes_check_config() {
    let overlays = overlays();
    assert!(
        overlays.len() >= 2,
        "a multi-region example needs two overlays, found {overlays:?}"
    );
    let (kubectl, validate) = (kubectl(), kubernetes_validate());
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut namespaces = BTreeSet::new();
    for overlay in &overlays {
        let region_set = overlay.file_name().expect("name").to_string_lossy();
        let rendered = run(
            &format!("kubectl kustomize {}", overlay.display()),
            Command::new(&kubectl).arg("kustomize").arg(overlay),
        );
        let file = tmp.path().join(format!("{region_set}.yaml"));
        std::fs::write(&file, &rendered).expect("write rendered overlay");
        let docs = documents(&rendered);
        validate_schemas(&validate, &file, &docs);
        check_service_monitor(&docs);
        check_wiring(&docs);
        check_pod_config(overlay, &docs, &tmp.path().join(&*region_set));
        let ns = str_at(the(&docs, "Namespace"), &["metadata", "name"]).to_string();
        assert!(
            namespaces.insert(ns.clone()),
            "two overlays install into namespace {ns}"
        );
        println!("{region_set}: {} objects valid, config ok", docs.len());
    }
}

/// kubernetes-validate, strict, for each of [`KUBERNETES_VERSIONS`]: every object but the
/// custom kinds must be reported passed (a kind it has no schema for is only a warning to
/// it, so an unknown apiVersion would otherwise pass silently).
fn validate_schemas(validate: &Path, file: &Path, docs: &[Value]) {
    let mut cmd = Command::new(validate);
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.arg("-k").arg(v);
    }
    let out = run("kubernetes-validate", cmd.arg(file));
    let problems: Vec<&str> = out
        .lines()
        .filter(|l| {
            let custom_kind_unknown = l.starts_with("WARN")
                && CUSTOM_KINDS
                    .iter()
                    .any(|k| l.contains(&format!("schema for kind {k} ")));
            !l.starts_with("INFO") && !custom_kind_unknown
        })
        .collect();
    assert!(
        problems.is_empty(),
        "kubernetes-validate on {}:\n{}",
        file.display(),
        problems.join("\n")
    );
    for doc in docs.iter().filter(|d| !CUSTOM_KINDS.contains(&kind(d))) {
        let resource = format!("{}/{}", kind(doc).to_lowercase(), name(doc));
        for v in KUBERNETES_VERSIONS {
            let mm = v.rsplit_once('.').expect("x.y.z").0;
            assert!(
                out.lines().any(|l| l.starts_with("INFO")
                    && l.contains(&format!("resource {resource} against version {mm}"))),
                "kubernetes-validate did not pass {resource} for Kubernetes {mm}:\n{out}"
            );
        }
    }
}

/// The ServiceMonitor selects one Service of the overlay, and scrapes a port that Service
/// has, which targets the gateway's telemetry port.
fn check_service_monitor(docs: &[Value]) {
    let sm = the(docs, "ServiceMonitor");
    assert_eq!(str_at(sm, &["apiVersion"]), "monitoring.coreos.com/v1");
    let selector = at(sm, &["spec", "selector", "matchLabels"]);
    let services: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "Service" && selects(selector, at(d, &["metadata", "labels"])))
        .collect();
    assert_eq!(
        services.len(),
        1,
        "the ServiceMonitor must select exactly one Service"
    );
    let endpoints = seq_at(sm, &["spec", "endpoints"]);
    assert!(!endpoints.is_empty(), "the ServiceMonitor has no endpoints");
    for e in endpoints {
        let port = str_at(e, &["port"]);
        let sp = seq_at(services[0], &["spec", "ports"])
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(port))
            .unwrap_or_else(|| panic!("Service {} has no port {port}", name(services[0])));
        assert_eq!(str_at(sp, &["targetPort"]), "telemetry");
        assert_eq!(
            at(e, &["path"])
                .and_then(Value::as_str)
                .unwrap_or("/metrics"),
            "/metrics"
        );
    }
}

/// The objects refer to each other correctly: Services, the disruption budget and the
/// network policy select the gateway pods and name ports they have; the autoscaler scales
/// the StatefulSet; the StatefulSet's headless Service exists.
fn check_wiring(docs: &[Value]) {
    let sts = the(docs, "StatefulSet");
    let pod_labels = at(sts, &["spec", "template", "metadata", "labels"]);
    assert!(selects(
        at(sts, &["spec", "selector", "matchLabels"]),
        pod_labels
    ));
    let container = &seq_at(sts, &["spec", "template", "spec", "containers"])[0];
    let port_names: BTreeSet<&str> = seq_at(container, &["ports"])
        .iter()
        .map(|p| str_at(p, &["name"]))
        .collect();
    for svc in docs.iter().filter(|d| kind(d) == "Service") {
        assert!(
            selects(at(svc, &["spec", "selector"]), pod_labels),
            "Service {} does not select the gateway pods",
            name(svc)
        );
        for p in seq_at(svc, &["spec", "ports"]) {
            let target = str_at(p, &["targetPort"]);
            assert!(
                port_names.contains(target),
                "Service {} targets port {target}, which the pod lacks",
                name(svc)
            );
        }
    }
    let peers = str_at(sts, &["spec", "serviceName"]);
    let headless = docs
        .iter()
        .find(|d| kind(d) == "Service" && name(d) == peers)
        .unwrap_or_else(|| panic!("no Service {peers} (the StatefulSet's serviceName)"));
    assert_eq!(str_at(headless, &["spec", "clusterIP"]), "None");
    let pdb = the(docs, "PodDisruptionBudget");
    assert!(selects(
        at(pdb, &["spec", "selector", "matchLabels"]),
        pod_labels
    ));
    let np = the(docs, "NetworkPolicy");
    assert!(selects(
        at(np, &["spec", "podSelector", "matchLabels"]),
        pod_labels
    ));
    let hpa = the(docs, "HorizontalPodAutoscaler");
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "kind"]),
        "StatefulSet"
    );
    assert_eq!(str_at(hpa, &["spec", "scaleTargetRef", "name"]), name(sts));
    assert!(
        at(sts, &["spec", "replicas"]).is_none(),
        "the autoscaler owns the replica count: the StatefulSet must not set one"
    );
}

/// What a test copy of each Secret the pod mounts holds (file name, content), written with
/// the PKI under `pki`.
fn secret_files(secret: &str, overlay: &Path, pki: &Path) -> Vec<(String, Vec<u8>)> {
    let read = |f: &Path| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    match secret {
        "traceo-gateway-tenants" => vec![(
            "tenants.yaml".into(),
            read(&overlay.join("tenants.example.yaml")),
        )],
        "traceo-gateway-tls" => vec![
            ("tls.crt".into(), read(&pki.join("server.pem"))),
            ("tls.key".into(), read(&pki.join("server.key"))),
        ],
        "traceo-gateway-gossip" => vec![(
            "keys".into(),
            b"# test key\n4a1f0e5c9b7d2a6e8f3c1b0d9e7a5c3b1f2e4d6c8a0b9e7d5c3a1f0e2d4c6b8a\n".to_vec(),
        )],
        "traceo-gateway-kafka" => vec![
            ("ca.crt".into(), read(&pki.join("ca.pem"))),
            ("password".into(), b"test-password\n".to_vec()),
        ],
        other => panic!(
            "the StatefulSet mounts Secret {other}: say in tests/e2e/deploy.rs (secret_files) what a test copy of it holds"
        ),
    }
}

/// Replaces every path of `mounts` in `text` by the same path under `root`, in one pass
/// (a mount path may be a prefix of another's replacement).
fn rebase(text: &str, mounts: &[String], root: &Path) -> String {
    let mut out = text.to_string();
    let mut order: Vec<(usize, &String)> = mounts.iter().enumerate().collect();
    // Longest first, so `/a/b` is replaced before `/a` could match inside it.
    order.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    for (i, m) in &order {
        out = out.replace(m.as_str(), &format!("\u{0}{i}\u{0}"));
    }
    for (i, m) in &order {
        out = out.replace(&format!("\u{0}{i}\u{0}"), &format!("{}{m}", root.display()));
    }
    out
}

/// Lays out the pod's volumes under `root` as its init container sees them (the rendered
/// ConfigMap's files, test copies of the Secrets, the emptyDir), runs the init container's
/// own script there (paths moved under `root`, `traceo-gateway` the binary under test), and
/// checks the config it writes against the pod: it must pass check-config, listen on the
/// ports the pod declares and probes, keep its log on the pod's volume, and drain within
/// the grace period.
fn check_pod_config(overlay: &Path, docs: &[Value], root: &Path) {
    let sts = the(docs, "StatefulSet");
    let pod = at(sts, &["spec", "template", "spec"]).expect("pod spec");
    let init = seq_at(pod, &["initContainers"])
        .iter()
        .find(|c| str_at(c, &["name"]) == "render-config")
        .expect("an init container render-config");
    let main = &seq_at(pod, &["containers"])[0];
    let mut mounts: Vec<String> = seq_at(init, &["volumeMounts"])
        .iter()
        .chain(seq_at(main, &["volumeMounts"]))
        .map(|m| str_at(m, &["mountPath"]).to_string())
        .collect();
    mounts.sort();
    mounts.dedup();
    let pki = root.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    write_pki(&pki, "test");
    // Each volume the init container mounts, filled as the kubelet would.
    for m in seq_at(init, &["volumeMounts"]) {
        let volume = str_at(m, &["name"]);
        let dir = PathBuf::from(rebase(str_at(m, &["mountPath"]), &mounts, root));
        std::fs::create_dir_all(&dir).expect("mount dir");
        let v = seq_at(pod, &["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == volume)
            .unwrap_or_else(|| panic!("volume {volume} is mounted but not declared"));
        if let Some(cm) = at(v, &["configMap", "name"]).and_then(Value::as_str) {
            let cm = docs
                .iter()
                .find(|d| kind(d) == "ConfigMap" && name(d) == cm)
                .unwrap_or_else(|| panic!("ConfigMap {cm} is mounted but not rendered"));
            let data = at(cm, &["data"])
                .and_then(Value::as_mapping)
                .expect("ConfigMap data");
            for (k, text) in data {
                let (k, text) = (k.as_str().expect("key"), text.as_str().expect("text"));
                std::fs::write(dir.join(k), rebase(text, &mounts, root)).expect("write");
            }
        } else if let Some(secret) = at(v, &["secret", "secretName"]).and_then(Value::as_str) {
            for (f, content) in secret_files(secret, overlay, &pki) {
                std::fs::write(dir.join(f), content).expect("write secret file");
            }
        } else {
            assert!(
                v.get("emptyDir").is_some(),
                "volume {volume}: only configMap, secret and emptyDir are laid out here"
            );
        }
    }
    // The log's volume, which only the gateway container mounts.
    for m in seq_at(main, &["volumeMounts"]) {
        let dir = rebase(str_at(m, &["mountPath"]), &mounts, root);
        std::fs::create_dir_all(dir).expect("mount dir");
    }
    let command: Vec<&str> = seq_at(init, &["command"])
        .iter()
        .map(|c| c.as_str().expect("command word"))
        .collect();
    assert_eq!(
        &command[..2],
        ["/bin/sh", "-c"],
        "the init step is a shell script"
    );
    let script = rebase(command[2], &mounts, root);
    assert!(
        command[2].contains("__POD_IP__") && command[2].contains("POD_IP"),
        "the init script puts the pod IP in place of __POD_IP__"
    );
    let bin_dir = Path::new(GATEWAY).parent().expect("binary dir");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(&script).env("PATH", path);
    for e in seq_at(init, &["env"]) {
        let value = match at(e, &["valueFrom", "fieldRef", "fieldPath"]).and_then(Value::as_str) {
            Some("status.podIP") => POD_IP.to_string(),
            Some(other) => panic!("init env from {other}: give the test a value for it"),
            None => str_at(e, &["value"]).to_string(),
        };
        cmd.env(str_at(e, &["name"]), value);
    }
    let out = run(
        &format!("the init script of {} (check-config)", overlay.display()),
        &mut cmd,
    );
    assert!(out.contains(": ok ("), "check-config said: {out}");

    // The config the pod runs with, as the main container is told to read it.
    let args: Vec<&str> = seq_at(main, &["args"])
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    assert_eq!(&args[..2], ["run", "--config"]);
    let config_path = rebase(args[2], &mounts, root);
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&config_path).expect("the rendered config"))
            .expect("config YAML");
    let container_port = |n: &str| {
        seq_at(main, &["ports"])
            .iter()
            .find(|p| str_at(p, &["name"]) == n)
            .and_then(|p| p.get("containerPort")?.as_u64())
            .unwrap_or_else(|| panic!("container port {n}"))
    };
    for (port, field) in [
        ("http", &["listen", "http"][..]),
        ("telemetry", &["listen", "telemetry"]),
        ("otlp-grpc", &["otlp", "grpc_listen"]),
        ("otlp-http", &["otlp", "http_listen"]),
        ("gossip", &["cluster", "gossip_listen"]),
    ] {
        assert_eq!(
            port_of(str_at(&config, field)),
            container_port(port),
            "{} and the container port {port}",
            field.join(".")
        );
    }
    assert!(str_at(&config, &["cluster", "gossip_advertise"]).starts_with(POD_IP));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(
            str_at(main, &[probe, "httpGet", "port"]),
            "telemetry",
            "{probe} must use the plain telemetry listener (the data ones speak TLS)"
        );
    }
    let wal_mount = seq_at(main, &["volumeMounts"])
        .iter()
        .find(|m| str_at(m, &["name"]) == "wal")
        .map(|m| rebase(str_at(m, &["mountPath"]), &mounts, root))
        .expect("the gateway container mounts the log's volume");
    assert!(
        str_at(&config, &["durability", "dir"]).starts_with(&wal_mount),
        "durability.dir must be on the pod's volume {wal_mount}"
    );
    let drain = seconds(str_at(&config, &["shutdown", "drain_delay"]));
    let pre_stop: Vec<&str> = seq_at(main, &["lifecycle", "preStop", "exec", "command"])
        .iter()
        .map(|c| c.as_str().expect("word"))
        .collect();
    assert_eq!(pre_stop.first(), Some(&"/bin/sleep"), "preStop sleeps");
    let pre_stop: f64 = pre_stop[1].parse().expect("preStop seconds");
    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .and_then(Value::as_u64)
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace as f64 >= pre_stop + drain + FLUSH_MARGIN_S as f64,
        "terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + drain_delay {drain} s + {FLUSH_MARGIN_S} s to flush"
    );
}

// ----- alerts and dashboard ----------------------------------------------------------------

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every rule of alerts.yaml.
fn alert_rules() -> Vec<Value> {
    let alerts = read_yaml(&prometheus_dir().join("alerts.yaml"));
    seq_at(&alerts, &["groups"])
        .iter()
        .flat_map(|g| seq_at(g, &["rules"]).iter().cloned())
        .collect()
}

/// The anchors GitHub gives the headings of a Markdown text.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_has_a_firing_and_a_quiet_test() {
    let promtool = promtool();
    let dir = prometheus_dir();
    run(
        "promtool check rules",
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yaml"])
            .current_dir(&dir),
    );
    run(
        "promtool test rules",
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yaml"])
            .current_dir(&dir),
    );
    let operations = std::fs::read_to_string(repo().join("docs/operations.md")).expect("ops");
    let anchors = heading_anchors(&operations);
    let rules = alert_rules();
    let alerts: Vec<&str> = rules
        .iter()
        .filter_map(|r| r.get("alert")?.as_str())
        .collect();
    assert!(alerts.len() >= 10, "alerts: {alerts:?}");
    for r in rules.iter().filter(|r| r.get("alert").is_some()) {
        let alert = str_at(r, &["alert"]);
        let runbook = str_at(r, &["annotations", "runbook"]);
        let anchor = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| {
                panic!("{alert}: runbook {runbook:?} must point into docs/operations.md")
            });
        assert!(
            anchors.contains(anchor),
            "{alert}: docs/operations.md has no heading for #{anchor}"
        );
    }
    // (alert, fires) for every alert_rule_test case.
    let tests = read_yaml(&dir.join("alerts_test.yaml"));
    let mut cases: BTreeMap<String, BTreeSet<bool>> = BTreeMap::new();
    for t in seq_at(&tests, &["tests"]) {
        for c in seq_at(t, &["alert_rule_test"]) {
            let fires = !seq_at(c, &["exp_alerts"]).is_empty();
            cases
                .entry(str_at(c, &["alertname"]).to_string())
                .or_default()
                .insert(fires);
        }
    }
    for alert in &alerts {
        let have = cases.get(*alert).cloned().unwrap_or_default();
        assert!(
            have.contains(&true),
            "{alert}: alerts_test.yaml has no case that fires it"
        );
        assert!(
            have.contains(&false),
            "{alert}: alerts_test.yaml has no case where it stays quiet"
        );
    }
    for tested in cases.keys() {
        assert!(
            alerts.contains(&tested.as_str()),
            "alerts_test.yaml tests {tested}, which alerts.yaml lacks"
        );
    }
}

#[test]
fn the_documented_prometheus_rule_wrapper_carries_the_alert_rules() {
    // docs/kubernetes.md wraps alerts.yaml in a PrometheusRule with a shell one-liner: run it
    // (without the final `kubectl apply`) and compare.
    let doc = std::fs::read_to_string(repo().join("docs/kubernetes.md")).expect("doc");
    let line = doc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("{ printf 'apiVersion: monitoring.coreos.com/v1"))
        .expect("the PrometheusRule one-liner in docs/kubernetes.md");
    let script = line
        .strip_suffix("| kubectl apply -f -")
        .expect("the one-liner pipes into kubectl apply");
    let out = run(
        "the PrometheusRule one-liner",
        Command::new("sh").arg("-c").arg(script).current_dir(repo()),
    );
    let rule: Value = serde_yaml::from_str(&out).expect("PrometheusRule YAML");
    assert_eq!(str_at(&rule, &["kind"]), "PrometheusRule");
    assert_eq!(
        rule.get("spec"),
        Some(&read_yaml(&prometheus_dir().join("alerts.yaml"))),
        "the PrometheusRule's spec must be alerts.yaml"
    );
}

/// The dashboard.
fn dashboard() -> serde_json::Value {
    let path = repo().join("deploy/grafana/traceo-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (where, PromQL) of every panel query of the dashboard.
fn dashboard_queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().map_or(&[][..], |t| t.as_slice());
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr").to_string();
            out.push((format!("panel {} {}", p["title"], t["refId"]), expr));
        }
    }
    out
}

/// The metric part of every template variable query: `label_values(M, label)` gives M,
/// `label_values(label)` nothing.
fn template_queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("query");
        match q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            Some(args) => {
                if let Some((metric, _label)) = args.rsplit_once(',') {
                    out.push(metric.to_string());
                }
            }
            None => out.push(q.to_string()),
        }
    }
    out
}

/// A query with Grafana's variables replaced by values Prometheus can parse.
fn with_variables_filled(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$namespace", ".*")
        .replace("$tenant", ".*")
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "panel ids repeat"
        );
    }
    let mut rules = Vec::new();
    for (i, (_, expr)) in dashboard_queries(&d).into_iter().enumerate() {
        assert!(
            !with_variables_filled(&expr).contains('$'),
            "a variable this test does not know in {expr}"
        );
        rules.push(serde_json::json!({
            "record": format!("dashboard:query_{i}"),
            "expr": with_variables_filled(&expr),
        }));
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(file.path(), serde_yaml::to_string(&doc).expect("yaml")).expect("write");
    run(
        "promtool check rules on the dashboard's queries",
        Command::new(promtool())
            .args(["check", "rules"])
            .arg(file.path()),
    );
}

// ----- metric names ------------------------------------------------------------------------

/// PromQL words that are not metric names: aggregations (before their `by`/`without`), binary
/// and set operators, modifiers and the special floats.
const NOT_METRICS: [&str; 26] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
];

/// Clauses whose parenthesised list holds label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The index after the `close` that ends what opens at `i` (quoted strings inside skipped).
fn skip_past(b: &[char], mut i: usize, close: char) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            '"' | '\'' | '`' => i = skip_quoted(b, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index after the string literal that starts at `i`.
fn skip_quoted(b: &[char], mut i: usize) -> usize {
    let quote = b[i];
    i += 1;
    while i < b.len() && b[i] != quote {
        i += if b[i] == '\\' && quote != '`' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names a PromQL expression reads: identifiers that are not functions (followed
/// by `(`), keywords, label names (inside `{}` or a `by (...)`-like list), strings, numbers,
/// durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '"' | '\'' | '`' => i = skip_quoted(&b, i),
            '{' => i = skip_past(&b, i, '}'),
            '[' => i = skip_past(&b, i, ']'),
            '#' => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(b.len(), |p| i + p)
            }
            '$' => {
                i += 1;
                if b.get(i) == Some(&'{') {
                    i = skip_past(&b, i, '}');
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < b.len() && (ident(b[i]) || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let call = b.get(j) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = skip_past(&b, j, ')');
                    }
                } else if !call
                    && !NOT_METRICS.contains(&word.as_str())
                    && !matches!(word.to_lowercase().as_str(), "inf" | "nan")
                {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn metric_names_are_read_from_promql_as_expected() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{code=~"5..", x="}"}[5m])))
           / ignoring (limit) (b > 0) or c unless c offset 10m < on (ns) group_left () count by (ns) (d)
           + max(e{tenant=~"$tenant"}[$__rate_interval]) - time() < 14 * 86400 and 1e3 > inf"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b", "c", "d", "e"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

/// (where, name) of every metric the alerts, the dashboard and the autoscaler's adapter rule
/// read.
fn used_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |what: String, expr: &str| {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what} reads no metric: {expr}");
        for n in names {
            used.entry(n).or_default().insert(what.clone());
        }
    };
    for r in alert_rules() {
        let what = format!("alert {}", str_at(&r, &["alert"]));
        add(what, str_at(&r, &["expr"]));
    }
    let d = dashboard();
    for (what, expr) in dashboard_queries(&d) {
        add(format!("dashboard {what}"), &expr);
    }
    for q in template_queries(&d) {
        add("dashboard variable".to_string(), &q);
    }
    let adapter = read_yaml(&repo().join("deploy/kubernetes/prometheus-adapter.yaml"));
    for r in seq_at(&adapter, &["rules", "custom"]) {
        add(
            "prometheus-adapter rule".to_string(),
            str_at(r, &["seriesQuery"]),
        );
    }
    used
}

/// The metric names on a `/metrics` page.
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The gateway of the metrics test: TLS on the data listener, a plain telemetry listener,
/// the log, one region with a primary and a standby Kafka cluster probed every 200 ms,
/// gossip (alone), tenant limits from an overrides file and HA-pair deduplication.
const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}", telemetry: "127.0.0.1:{telemetry_port}" }
otlp: { grpc_listen: null, http_listen: null }
tls: { cert_file: "{dir}/server.pem", key_file: "{dir}/server.key" }
auth: { mode: required }
durability: { mode: wal, dir: "{dir}/wal" }
limits:
  tenant: { max_active_series: 1000 }
  overrides_file: "{dir}/overrides.yaml"
ha_dedup: { tenants: [team-a] }
cluster:
  node_id: gw-deploy
  gossip_listen: "127.0.0.1:GOSSIP"
  gossip_keys_file: "{dir}/gossip.keys"
  gossip_interval: 100ms
  probe_interval: 200ms
  probe_timeout: 200ms
  fail_after: 2
  hold_down: 60s
regions:
  - id: local
    sinks:
      kafka:
        topic: "metrics.{region}"
        linger: 1ms
        upstreams:
          - { name: kafka-primary, brokers: "PRIMARY" }
          - { name: kafka-standby, brokers: "STANDBY" }
tenants:
  - { id: team-a, region: local, passwords: ["s3cret"] }
  - { id: team-limited, region: local, passwords: ["s3cret"] }
"#;

/// `Basic base64(user:password)`.
fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let used = used_metrics();
    for must in [
        "traceo_requests_total",
        "traceo_request_duration_seconds_bucket",
        "replication_lag_seconds",
    ] {
        assert!(used.contains_key(must), "{must} not found among {used:?}");
    }
    let tansu = tansu_bin();
    assert!(
        Command::new(&tansu).arg("--version").output().is_ok(),
        "tansu ({tansu}) does not run: run {INSTALL} first, it installs tansu"
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let primary = Broker::start(dir, "kafka-primary");
    let standby = Broker::start(dir, "kafka-standby");
    for b in [&primary, &standby] {
        b.create_topic("metrics.local", 1);
        b.create_topic("traceo-health", 1);
    }
    write_pki(dir, "team-a");
    std::fs::write(
        dir.join("gossip.keys"),
        "4a1f0e5c9b7d2a6e8f3c1b0d9e7a5c3b1f2e4d6c8a0b9e7d5c3a1f0e2d4c6b8a\n",
    )
    .expect("keys");
    std::fs::write(
        dir.join("overrides.yaml"),
        "overrides:\n  team-limited: { ingestion_rate: 1, ingestion_burst: 5 }\n",
    )
    .expect("overrides");
    let config = CONFIG
        .replace("GOSSIP", &traceo_e2e::free_port().to_string())
        .replace("PRIMARY", &primary.addr())
        .replace("STANDBY", &standby.addr());
    let gw = Gateway::start(GATEWAY, dir, &config);
    let agent = https_agent(dir);
    let url = format!("https://localhost:{}/api/v1/write", gw.port);
    let post = |auth: &str, series: &[&[(&str, &str)]]| -> u16 {
        let body = remote_write_body(series, traceo_e2e::now_ms());
        let headers = [&REMOTE_WRITE_V1_HEADERS[..], &[("authorization", auth)]].concat();
        try_post_with(&agent, &url, &body, &headers)
            .expect("the gateway answers")
            .status
    };
    let team_a = basic("team-a", "s3cret");
    // An HA pair: once the node's start-up grace is over (it learns the fleet's elections
    // from gossip first, and accepts both meanwhile), the first replica is elected and the
    // other's requests are answered 202.
    let replica = |r: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("__name__", "deploy_probe"),
            ("cluster", "prom-a"),
            ("__replica__", r),
        ]
    };
    wait_for("the HA election", Duration::from_secs(20), || {
        assert_eq!(post(&team_a, &[&replica("r1")]), 204);
        (post(&team_a, &[&replica("r2")]) == 202).then_some(())
    });
    // Refused: bad credentials, then a tenant over its rate (1 sample/s, a burst of 5: one request of 5).
    assert_eq!(post(&basic("team-a", "wrong"), &[&replica("r1")]), 401);
    let limited = basic("team-limited", "s3cret");
    let five: Vec<Vec<(&str, &str)>> = ["0", "1", "2", "3", "4"]
        .iter()
        .map(|i| vec![("__name__", "deploy_limited"), ("i", *i)])
        .collect();
    let five: Vec<&[(&str, &str)]> = five.iter().map(|s| s.as_slice()).collect();
    let statuses: Vec<u16> = (0..10).map(|_| post(&limited, &five)).collect();
    assert!(
        statuses.contains(&429),
        "no 429 for team-limited: {statuses:?}"
    );
    // A failover: the primary stops answering, the region moves to the standby.
    let page = || get(&gw.telemetry_url("/metrics")).map_or(String::new(), |(_, b)| b);
    wait_for(
        "a delivery through the primary",
        Duration::from_secs(30),
        || {
            exported(&page())
                .contains("traceo_kafka_delivery_seconds_bucket")
                .then_some(())
        },
    );
    primary.proc.signal("STOP");
    wait_for("the failover", Duration::from_secs(30), || {
        exported(&page())
            .contains("traceo_failover_events_total")
            .then_some(())
    });
    primary.proc.signal("CONT");
    assert_eq!(post(&team_a, &[&replica("r1")]), 204);

    // Gauges are set once a second: give them a few seconds to show up, then name what is
    // still missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let names = exported(&page());
        let missing = used
            .iter()
            .filter(|(n, _)| !names.contains(*n))
            .map(|(n, w)| {
                format!(
                    "{n} (used by {})",
                    w.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        missing.is_empty(),
        "metrics used by deploy/ but not exported by the gateway:\n  {}\nexported: {:?}",
        missing.join("\n  "),
        exported(&page())
    );
    println!("{} metric names used by deploy/, all exported", used.len());
}

//! OTLP metrics ingestion end to end: the official OpenTelemetry Python SDK (`otlp_export.py`,
//! run with `$TRACEO_PYTHON`, the virtualenv `.ci/run` builds) exports a counter, an up-down
//! counter, a gauge, an explicit-bucket and an exponential histogram once, over OTLP/gRPC and
//! OTLP/HTTP (plain and gzip; on the OTLP port and on the main port), to a real gateway whose
//! region has a Parquet sink and a Kafka sink (`tansu`). Every point must arrive in both, once,
//! with its exact value, the tenant of `X-Scope-OrgID` and the region, named and labelled as
//! Prometheus translates OTLP (`underscore_escaping_with_suffixes`): unit and `_total`
//! suffixes, `job`/`instance` from `service.namespace`/`service.name`/`service.instance.id`,
//! the other resource attributes on `target_info` only. See the OpenTelemetry specification,
//! "Prometheus and OpenMetrics Compatibility" (OTLP metric points to Prometheus), and
//! Prometheus' OTLP receiver documentation.
//!
//! Each test collects every mismatch of every export before failing, so one run names all of
//! them (expected against found series).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use traceo_e2e::{
    free_port, now_ms, python_bin, read_rows, tail_json, wait_for_listener, Broker, Gateway, Row,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");
const EXPORT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/otlp_export.py");
const TOPIC: &str = "metrics.local";
const REGION: &str = "local";

/// One region with both sinks; tenants from `X-Scope-OrgID`; OTLP on its own two ports, the
/// other `otlp` fields at their defaults.
const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
auth: { mode: off, default_region: local }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 300ms }
      kafka: { brokers: "BROKER", linger: 2ms }
otlp:
  grpc_listen: "127.0.0.1:GRPC_PORT"
  http_listen: "127.0.0.1:HTTP_PORT"
"#;

/// Resource attributes the translation must turn into `job`/`instance` or `target_info`
/// labels, never into labels of the data series.
const RESOURCE_LABELS: &[&str] = &[
    "service_name",
    "service_namespace",
    "service_instance_id",
    "deployment_environment",
    "telemetry_sdk_language",
    "telemetry_sdk_name",
    "telemetry_sdk_version",
];

/// A broker with the region's topic and a gateway writing to it and to Parquet.
struct Stack {
    broker: Broker,
    gw: Gateway,
    grpc_port: u16,
    http_port: u16,
}

fn start(dir: &Path) -> Stack {
    let broker = Broker::start(dir, "tansu");
    broker.create_topic(TOPIC, 2);
    let grpc_port = free_port();
    let http_port = free_port();
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &CONFIG
            .replace("BROKER", &broker.addr())
            .replace("GRPC_PORT", &grpc_port.to_string())
            .replace("HTTP_PORT", &http_port.to_string()),
    );
    wait_for_listener("OTLP/gRPC", grpc_port, Duration::from_secs(10));
    wait_for_listener("OTLP/HTTP", http_port, Duration::from_secs(10));
    Stack {
        broker,
        gw,
        grpc_port,
        http_port,
    }
}

/// One run of the export script.
struct Export<'a> {
    tenant: &'a str,
    transport: &'a str,
    endpoint: String,
    gzip: bool,
}

/// Runs `otlp_export.py`; `Err` with its output unless it exited 0 and printed `"ok": true`.
fn run_export(e: &Export) -> Result<Value, String> {
    let mut cmd = Command::new(python_bin());
    cmd.arg(EXPORT_SCRIPT)
        .arg("--transport")
        .arg(e.transport)
        .arg("--endpoint")
        .arg(&e.endpoint)
        .arg("--tenant")
        .arg(e.tenant);
    if e.gzip {
        cmd.arg("--gzip");
    }
    let out = cmd.output().unwrap_or_else(|err| {
        panic!(
            "cannot run {} (set TRACEO_PYTHON to a Python with the OpenTelemetry SDK, or run .ci/run \
             to build the virtualenv): {err}",
            python_bin()
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Option<Value> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    match summary {
        Some(s) if out.status.success() && s["ok"] == true => Ok(s),
        _ => Err(format!(
            "{} export ({}{}) to {} failed: {}\n  stdout: {}\n  stderr: {}",
            e.tenant,
            e.transport,
            if e.gzip { ", gzip" } else { "" },
            e.endpoint,
            out.status,
            stdout.trim(),
            stderr.trim().replace('\n', "\n          ")
        )),
    }
}

/// A sample as found downstream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Float(f64),
    /// A native histogram; `sum` is `None` when the reader found none (a mismatch).
    Histogram {
        count: f64,
        sum: Option<f64>,
    },
    /// Neither a float nor a complete histogram (a malformed row).
    Neither,
}

impl Point {
    fn matches(self, want: Point) -> bool {
        match (want, self) {
            (Point::Float(w), Point::Float(g)) => w == g,
            (Point::Histogram { count: wc, sum: ws }, Point::Histogram { count: gc, sum: gs }) => {
                wc == gc && gs == ws
            }
            _ => false,
        }
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Float(v) => write!(f, "{v:?}"),
            Point::Histogram {
                count,
                sum: Some(s),
            } => {
                write!(f, "histogram(count={count:?}, sum={s:?})")
            }
            Point::Histogram { count, sum: None } => write!(f, "histogram(count={count:?})"),
            Point::Neither => write!(f, "<no value>"),
        }
    }
}

/// One series point of one tenant, from Parquet or Kafka.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    /// Labels without `__name__`.
    labels: BTreeMap<String, String>,
    point: Point,
    timestamp_ms: i64,
    /// Where it was found (file, or partition and offset).
    at: String,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} @{} ({})",
            series(&self.name, &self.labels),
            self.point,
            self.timestamp_ms,
            self.at
        )
    }
}

fn series(name: &str, labels: &BTreeMap<String, String>) -> String {
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", l.join(", "))
}

/// Labels compared exactly: scope labels (`otel_scope_*`) are the translation's option, not
/// part of this contract, so they are left out of the comparison.
fn compared(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with("otel_scope_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every data series the script's one export must become for `tenant`, with its full label
/// set (translated attributes, `job`, `instance`, the gateway's `tenant` and `region`).
fn expected_series(tenant: &str) -> Vec<(&'static str, BTreeMap<String, String>, Point)> {
    let base = [
        ("job", "shop/checkout"),
        ("instance", "pod-1"),
        ("tenant", tenant),
        ("region", REGION),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut l = labels(&base);
        l.extend(labels(extra));
        l
    };
    vec![
        (
            "shop_orders_total",
            with(&[("method", "card")]),
            Point::Float(7.0),
        ),
        ("queue_depth", with(&[]), Point::Float(7.0)),
        ("cpu_temperature_celsius", with(&[]), Point::Float(41.5)),
        (
            "http_server_duration_milliseconds_bucket",
            with(&[("le", "10")]),
            Point::Float(1.0),
        ),
        (
            "http_server_duration_milliseconds_bucket",
            with(&[("le", "100")]),
            Point::Float(3.0),
        ),
        (
            "http_server_duration_milliseconds_bucket",
            with(&[("le", "1000")]),
            Point::Float(4.0),
        ),
        (
            "http_server_duration_milliseconds_bucket",
            with(&[("le", "+Inf")]),
            Point::Float(5.0),
        ),
        (
            "http_server_duration_milliseconds_sum",
            with(&[]),
            Point::Float(5605.0),
        ),
        (
            "http_server_duration_milliseconds_count",
            with(&[]),
            Point::Float(5.0),
        ),
        (
            "payload_size_bytes",
            with(&[]),
            Point::Histogram {
                count: 4.0,
                sum: Some(1031.0),
            },
        ),
    ]
}

/// Checks the points of one tenant from one source against the export; returns every
/// mismatch, each naming the expected and the found series.
fn check_tenant(source: &str, tenant: &str, seen: &[Seen], window: (i64, i64)) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |s: String| problems.push(format!("{source}, tenant {tenant}: {s}"));
    let want = expected_series(tenant);

    for (name, want_labels, want_point) in &want {
        let found: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.name == *name && compared(&s.labels) == *want_labels)
            .collect();
        match found.as_slice() {
            [one] if one.point.matches(*want_point) => {}
            [one] => p(format!(
                "{} should be {want_point}, found {}",
                series(name, want_labels),
                one.point
            )),
            _ => {
                let same_name: Vec<String> = seen
                    .iter()
                    .filter(|s| s.name == *name)
                    .map(|s| format!("\n      {s}"))
                    .collect();
                p(format!(
                    "expected exactly one point of {} = {want_point}, found {}; points named {name}:{}",
                    series(name, want_labels),
                    found.len(),
                    if same_name.is_empty() {
                        " none".to_string()
                    } else {
                        same_name.concat()
                    }
                ))
            }
        }
    }

    // target_info: the resource, once, with the attributes not used for job/instance.
    let info: Vec<&Seen> = seen.iter().filter(|s| s.name == "target_info").collect();
    match info.as_slice() {
        [one] => {
            for (k, v) in [
                ("job", "shop/checkout"),
                ("instance", "pod-1"),
                ("deployment_environment", "prod"),
                ("tenant", tenant),
                ("region", REGION),
            ] {
                if one.labels.get(k).map(String::as_str) != Some(v) {
                    p(format!("target_info should have {k}={v:?}: {one}"));
                }
            }
            for k in ["service_name", "service_namespace", "service_instance_id"] {
                if one.labels.contains_key(k) {
                    p(format!(
                        "target_info should not repeat {k} (it is job/instance): {one}"
                    ));
                }
            }
            if !one.point.matches(Point::Float(1.0)) {
                p(format!("target_info should be 1: {one}"));
            }
        }
        _ => p(format!(
            "expected exactly one target_info point, found {}:{}",
            info.len(),
            info.iter()
                .map(|s| format!("\n      {s}"))
                .collect::<String>()
        )),
    }

    let names: BTreeSet<&str> = want
        .iter()
        .map(|(n, _, _)| *n)
        .chain(["target_info"])
        .collect();
    for s in seen {
        if !names.contains(s.name.as_str()) {
            p(format!("unexpected series {s}"));
        }
        if s.name != "target_info" {
            let leaked: Vec<&str> = RESOURCE_LABELS
                .iter()
                .copied()
                .filter(|k| s.labels.contains_key(*k))
                .collect();
            if !leaked.is_empty() {
                p(format!(
                    "resource attributes {leaked:?} belong on target_info, not on {s}"
                ));
            }
        }
        if !(window.0..=window.1).contains(&s.timestamp_ms) {
            p(format!(
                "timestamp outside [{}, {}] (ms since the epoch): {s}",
                window.0, window.1
            ));
        }
    }
    problems
}

fn from_row(r: &Row) -> Seen {
    Seen {
        name: r.metric.clone(),
        labels: r.labels.clone(),
        point: match (r.value, r.histogram_count, r.histogram_sum) {
            (Some(v), None, None) => Point::Float(v),
            (None, Some(count), Some(sum)) => Point::Histogram {
                count,
                sum: Some(sum),
            },
            _ => Point::Neither,
        },
        timestamp_ms: r.timestamp_ms,
        at: r.file.clone(),
    }
}

fn from_line(l: &Value) -> Seen {
    let mut labels: BTreeMap<String, String> = l["labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let name = labels.remove("__name__").unwrap_or_default();
    let point = match (l["value"].as_f64(), l["histogram_count"].as_f64()) {
        (Some(v), None) => Point::Float(v),
        (None, Some(count)) => Point::Histogram {
            count,
            sum: l["histogram_sum"].as_f64(),
        },
        _ => Point::Neither,
    };
    Seen {
        name,
        labels,
        point,
        timestamp_ms: l["timestamp_ms"].as_i64().unwrap_or_default(),
        at: format!("partition {} offset {}", l["partition"], l["offset"]),
    }
}

/// Runs every export against `stack`, then checks every point of every tenant in Parquet and
/// in Kafka; panics with the full list of mismatches.
fn export_and_check(dir: &Path, stack: &Stack, exports: &[Export]) {
    let started_ms = now_ms();
    let mut problems = Vec::new();
    let mut exported = Vec::new();
    for e in exports {
        match run_export(e) {
            Ok(summary) => {
                eprintln!("exported: {summary}");
                exported.push(e.tenant);
            }
            Err(why) => problems.push(why),
        }
    }

    // The gateway acknowledges an export only once its rows are committed, so they should be
    // there already; the wait only bounds a slower implementation.
    let data = dir.join("data");
    let want_names: BTreeSet<&str> = expected_series("t")
        .iter()
        .map(|(n, _, _)| *n)
        .chain(["target_info"])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = read_rows(&data);
        let complete = exported.iter().all(|t| {
            let names: BTreeSet<&str> = rows
                .iter()
                .filter(|r| r.tenant == *t)
                .map(|r| r.metric.as_str())
                .collect();
            names.is_superset(&want_names)
        });
        if complete || Instant::now() >= deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines = tail_json(GATEWAY, &stack.broker.addr(), TOPIC, 3);
    let window = (started_ms - 120_000, now_ms() + 120_000);

    let tenants: BTreeSet<&str> = exports.iter().map(|e| e.tenant).collect();
    for r in &rows {
        if !tenants.contains(r.tenant.as_str()) {
            problems.push(format!(
                "Parquet: row of tenant {:?}, which no export named: {}",
                r.tenant,
                from_row(r)
            ));
        }
        let dir_prefix = format!("region={REGION}/tenant={}/", r.tenant);
        if r.region != REGION || !r.file.starts_with(&dir_prefix) {
            problems.push(format!(
                "Parquet: row should be in region {REGION} under {dir_prefix}: region column {:?}, {}",
                r.region,
                from_row(r)
            ));
        }
    }
    for l in &lines {
        let tenant = l["tenant"].as_str().unwrap_or_default();
        if !tenants.contains(tenant) || l["region"] != REGION {
            problems.push(format!(
                "Kafka: message headers tenant={:?} region={:?} (expected one of {tenants:?}, {REGION:?}): {l}",
                l["tenant"], l["region"]
            ));
        }
    }
    for t in &exported {
        let parquet: Vec<Seen> = rows
            .iter()
            .filter(|r| r.tenant == *t)
            .map(from_row)
            .collect();
        problems.extend(check_tenant("Parquet", t, &parquet, window));
        let kafka: Vec<Seen> = lines
            .iter()
            .filter(|l| l["tenant"] == *t)
            .map(from_line)
            .collect();
        problems.extend(check_tenant("Kafka", t, &kafka, window));
    }

    if !problems.is_empty() {
        let dump = |what: &str, seen: Vec<Seen>| {
            let mut s: Vec<String> = seen.iter().map(|s| format!("\n  {s}")).collect();
            s.sort();
            format!("\n{what} ({} points):{}", s.len(), s.concat())
        };
        panic!(
            "{} problem(s):\n- {}\n{}{}",
            problems.len(),
            problems.join("\n- "),
            dump("Parquet", rows.iter().map(from_row).collect()),
            dump("Kafka", lines.iter().map(from_line).collect()),
        );
    }
}

#[test]
fn python_sdk_over_grpc_lands_in_parquet_and_kafka() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let stack = start(dir);
    let endpoint = format!("http://127.0.0.1:{}", stack.grpc_port);
    export_and_check(
        dir,
        &stack,
        &[
            Export {
                tenant: "shop-grpc",
                transport: "grpc",
                endpoint: endpoint.clone(),
                gzip: false,
            },
            Export {
                tenant: "shop-grpc-gzip",
                transport: "grpc",
                endpoint,
                gzip: true,
            },
        ],
    );
}

#[test]
fn python_sdk_over_http_lands_in_parquet_and_kafka() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let stack = start(dir);
    let endpoint = format!("http://127.0.0.1:{}/v1/metrics", stack.http_port);
    export_and_check(
        dir,
        &stack,
        &[
            Export {
                tenant: "shop-http",
                transport: "http",
                endpoint: endpoint.clone(),
                gzip: false,
            },
            Export {
                tenant: "shop-http-gzip",
                transport: "http",
                endpoint,
                gzip: true,
            },
            // The main listener serves /v1/metrics too.
            Export {
                tenant: "shop-http-main",
                transport: "http",
                endpoint: stack.gw.url("/v1/metrics"),
                gzip: false,
            },
        ],
    );
}

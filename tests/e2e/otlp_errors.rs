//! OTLP variants and refusals on the wire: JSON and gzip bodies are accepted; every malformed,
//! oversized or refused export gets the status its transport's clients act on correctly (HTTP
//! 400/401/405/413/415 with a `google.rpc.Status` body in the request's encoding, 503 with
//! `Retry-After`; gRPC `INVALID_ARGUMENT`, `UNAUTHENTICATED`, `RESOURCE_EXHAUSTED`,
//! `UNIMPLEMENTED`, `UNAVAILABLE` with `RetryInfo`), checked with grpcio as the gRPC client.
//! Points the Prometheus model cannot hold come back as `partial_success`, and the rest lands.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use prost::Message;
use protocols::otlp::proto::{self as pb, metric, number_data_point};
use serde_json::Value;
use traceo_e2e::{free_port, http, python_bin, read_rows, wait_for, Gateway};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");
const GRPC_CALL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/e2e/otlp_grpc_call.py"
);

/// Credentials required, `X-Scope-OrgID` trusted (as behind an auth proxy); small limits so
/// the oversized cases stay small.
const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: "127.0.0.1:GRPC_PORT", http_listen: null }
limits: { max_body_bytes: 65536, max_decompressed_bytes: 1048576 }
auth: { mode: required, trust_org_id_header: true }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 200ms }
tenants:
  - id: acme
    region: local
    passwords: ["pw"]
shutdown: { drain_delay: 5s }
"#;

const NOW_NS: u64 = 1_700_000_000_000_000_000;

fn gauge(name: &str, value: f64) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        data: Some(metric::Data::Gauge(pb::Gauge {
            data_points: vec![pb::NumberDataPoint {
                time_unix_nano: NOW_NS,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }],
        })),
        ..Default::default()
    }
}

fn request(metrics: Vec<pb::Metric>) -> Vec<u8> {
    pb::ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(pb::Resource {
                attributes: vec![pb::KeyValue {
                    key: "service.name".into(),
                    value: Some(pb::AnyValue {
                        value: Some(pb::any_value::Value::StringValue("errors-e2e".into())),
                    }),
                }],
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// 16 MiB of zeros: about 16 KiB of gzip, 16 times the decompressed limit.
fn gzip_bomb() -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..16 {
        z.write_all(&zeros).unwrap();
    }
    z.finish().unwrap()
}

struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `google.rpc.Status` of a protobuf error answer.
    fn status_message(&self) -> String {
        assert_eq!(self.content_type, "application/x-protobuf");
        pb::Status::decode(self.body.as_slice())
            .expect("error body is a google.rpc.Status")
            .message
    }
    fn json(&self) -> Value {
        assert_eq!(self.content_type, "application/json");
        serde_json::from_slice(&self.body).expect("answer is JSON")
    }
}

fn post(gw: &Gateway, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut req = http().post(&gw.url("/v1/metrics"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).expect("gateway answers");
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let retry_after = header("retry-after");
    Answer {
        status: resp.status().as_u16(),
        content_type,
        retry_after,
        body: resp.body_mut().read_to_vec().unwrap_or_default(),
    }
}

const TENANT: (&str, &str) = ("x-scope-orgid", "acme");
const PROTO: (&str, &str) = ("content-type", "application/x-protobuf");
const JSON: (&str, &str) = ("content-type", "application/json");

fn start(dir: &Path) -> (Gateway, u16) {
    let grpc_port = free_port();
    let config = CONFIG.replace("GRPC_PORT", &grpc_port.to_string());
    (Gateway::start(GATEWAY, dir, &config), grpc_port)
}

#[test]
fn otlp_http_variants_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, _) = start(tmp.path());

    // JSON, as the OTLP JSON mapping writes it: 64-bit integers as strings.
    let json_body = r#"{"resourceMetrics":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"json-e2e"}}]},
      "scopeMetrics":[{"metrics":[{"name":"json.gauge","unit":"s","gauge":{"dataPoints":[
        {"timeUnixNano":"1700000000000000000","asDouble":2.5}]}}]}]}]}"#;
    let a = post(&gw, json_body.as_bytes(), &[JSON, TENANT]);
    assert_eq!((a.status, a.text().as_str()), (200, "{}"), "JSON export");

    // gzip-compressed protobuf.
    let a = post(
        &gw,
        &gzip(&request(vec![gauge("gzip.gauge", 7.0)])),
        &[PROTO, ("content-encoding", "gzip"), TENANT],
    );
    assert_eq!(a.status, 200, "gzip export: {}", a.text());
    assert_eq!(a.content_type, "application/x-protobuf");
    assert!(
        a.body.is_empty(),
        "full success is an empty response message"
    );

    // Delta sums cannot be stored as Prometheus series: refused point by point in a
    // partial_success (a 200 the client does not retry); the gauge beside them lands.
    let delta = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
        {"name":"delta.requests","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[
          {"timeUnixNano":"1700000000000000000","asInt":"3"},{"timeUnixNano":"1700000000000000000","asInt":"4"}]}},
        {"name":"partial.gauge","gauge":{"dataPoints":[{"timeUnixNano":"1700000000000000000","asDouble":1}]}}]}]}]}"#;
    let a = post(&gw, delta.as_bytes(), &[JSON, TENANT]);
    assert_eq!(a.status, 200, "{}", a.text());
    let partial = &a.json()["partialSuccess"];
    assert_eq!(partial["rejectedDataPoints"], "2", "{partial}");
    let msg = partial["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("\"delta.requests\" has delta temporality") && msg.contains("cumulative"),
        "{msg}"
    );

    // Malformed bodies: 400 with the decoder's message, in the request's encoding.
    let a = post(&gw, b"\x0a\xff\xff\xff", &[PROTO, TENANT]);
    assert_eq!(a.status, 400);
    assert!(
        a.status_message().starts_with("invalid protobuf"),
        "{}",
        a.status_message()
    );
    let a = post(
        &gw,
        br#"{"resourceMetrics":[{"scopeMetrics":"x"}]}"#,
        &[JSON, TENANT],
    );
    assert_eq!(a.status, 400);
    let status = a.json();
    assert_eq!(status["code"], 3, "INVALID_ARGUMENT: {status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON: invalid type: string \"x\""),
        "{status}"
    );
    let a = post(&gw, b"{\"resourceMetrics\":[", &[JSON, TENANT]);
    assert_eq!(a.status, 400, "truncated JSON");
    let a = post(
        &gw,
        b"not gzip",
        &[PROTO, ("content-encoding", "gzip"), TENANT],
    );
    assert_eq!(a.status, 400);
    assert!(
        a.status_message().starts_with("invalid gzip body"),
        "{}",
        a.status_message()
    );

    // Media types.
    let a = post(&gw, b"{}", &[("content-type", "text/plain"), TENANT]);
    assert_eq!(a.status, 415);
    assert!(a.json()["message"]
        .as_str()
        .unwrap()
        .contains("application/x-protobuf"));
    let a = post(&gw, b"{}", &[JSON, ("content-encoding", "br"), TENANT]);
    assert_eq!(a.status, 415);
    assert!(a.json()["message"]
        .as_str()
        .unwrap()
        .contains("Content-Encoding \"br\""));

    // Size limits: the body, and what it inflates to.
    let a = post(&gw, &vec![b' '; 70_000], &[JSON, TENANT]);
    assert_eq!(a.status, 413);
    assert!(a.json()["message"].as_str().unwrap().contains("65536"));
    let bomb = gzip_bomb();
    assert!(bomb.len() < 65536, "the bomb fits under the body limit");
    let a = post(&gw, &bomb, &[PROTO, ("content-encoding", "gzip"), TENANT]);
    assert_eq!(a.status, 413);
    assert_eq!(
        a.status_message(),
        "body inflates past the limit of 1048576 bytes"
    );

    // Identity and method.
    let a = post(&gw, &request(vec![gauge("anon", 1.0)]), &[PROTO]);
    assert_eq!(a.status, 401);
    assert!(
        a.status_message().contains("no credentials"),
        "{}",
        a.status_message()
    );
    let a = post(
        &gw,
        &request(vec![gauge("who", 1.0)]),
        &[PROTO, ("x-scope-orgid", "globex")],
    );
    assert_eq!(a.status, 401, "{}", a.status_message());
    let mut resp = http().get(&gw.url("/v1/metrics")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let _ = resp.body_mut().read_to_string();

    // What was accepted landed; nothing refused did.
    let rows = wait_for("accepted OTLP rows", Duration::from_secs(20), || {
        let rows = read_rows(&tmp.path().join("data"));
        let names = ["json_gauge_seconds", "gzip_gauge", "partial_gauge"];
        names
            .iter()
            .all(|n| rows.iter().any(|r| r.metric == *n))
            .then_some(rows)
    });
    for r in &rows {
        assert!(
            !["delta_requests_total", "anon", "who"].contains(&r.metric.as_str()),
            "refused data landed: {r:?}"
        );
    }
    let json_row = rows
        .iter()
        .find(|r| r.metric == "json_gauge_seconds")
        .unwrap();
    assert_eq!(json_row.value, Some(2.5));
    assert_eq!(
        json_row.labels.get("job").map(String::as_str),
        Some("json-e2e")
    );

    // Draining: retryable for OTLP clients (503 + Retry-After), never a 500.
    gw.proc.signal("TERM");
    let a = wait_for("drain to refuse exports", Duration::from_secs(4), || {
        let a = post(&gw, &request(vec![gauge("late", 1.0)]), &[PROTO, TENANT]);
        (a.status != 200).then_some(a)
    });
    assert_eq!(a.status, 503);
    assert_eq!(a.retry_after.as_deref(), Some("1"));
    assert_eq!(a.status_message(), "shutting down");
}

/// One raw gRPC call through grpcio; the JSON line `otlp_grpc_call.py` prints.
fn grpc_call(dir: &Path, port: u16, body: &[u8], extra: &[&str]) -> Value {
    let file = dir.join("grpc-body.bin");
    std::fs::write(&file, body).unwrap();
    let out = Command::new(python_bin())
        .arg(GRPC_CALL)
        .arg("--target")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--body-file")
        .arg(&file)
        .args(extra)
        .output()
        .expect("run otlp_grpc_call.py");
    assert!(
        out.status.success(),
        "otlp_grpc_call.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn otlp_grpc_status_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (gw, port) = start(tmp.path());
    let dir = tmp.path();
    let tenant = ["--header", "x-scope-orgid=acme"];

    let ok = grpc_call(dir, port, &request(vec![gauge("grpc.ok", 1.0)]), &tenant);
    assert_eq!(ok["code"], "OK", "{ok}");
    assert_eq!(ok["response_len"], 0, "full success is an empty response");
    let gz = grpc_call(
        dir,
        port,
        &request(vec![gauge("grpc.gzip", 1.0)]),
        &["--gzip", tenant[0], tenant[1]],
    );
    assert_eq!(gz["code"], "OK", "{gz}");

    let bad = grpc_call(dir, port, b"\x0a\xff\xff\xff", &tenant);
    assert_eq!(bad["code"], "INVALID_ARGUMENT", "{bad}");
    assert!(
        bad["details"]
            .as_str()
            .unwrap()
            .starts_with("invalid protobuf"),
        "{bad}"
    );
    assert_eq!(bad["retry_delay_s"], Value::Null);

    // 16 MiB of zeros, gzip-compressed by grpcio: refused once inflating passes 1 MiB.
    let zeros = vec![0u8; 16 << 20];
    let bomb = grpc_call(dir, port, &zeros, &["--gzip", tenant[0], tenant[1]]);
    assert_eq!(bomb["code"], "RESOURCE_EXHAUSTED", "{bomb}");
    assert_eq!(
        bomb["details"],
        "body inflates past the limit of 1048576 bytes"
    );
    assert_eq!(
        bomb["retry_delay_s"],
        Value::Null,
        "not retryable: no RetryInfo"
    );

    let anon = grpc_call(dir, port, &request(vec![gauge("anon", 1.0)]), &[]);
    assert_eq!(anon["code"], "UNAUTHENTICATED", "{anon}");
    let method = grpc_call(
        dir,
        port,
        &request(vec![]),
        &[
            "--method",
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        ],
    );
    assert_eq!(method["code"], "UNIMPLEMENTED", "{method}");
    assert!(method["details"]
        .as_str()
        .unwrap()
        .contains("MetricsService/Export"));

    let rows = wait_for("gRPC rows", Duration::from_secs(20), || {
        let rows = read_rows(&dir.join("data"));
        ["grpc_ok", "grpc_gzip"]
            .iter()
            .all(|n| rows.iter().any(|r| r.metric == *n))
            .then_some(rows)
    });
    assert!(rows.iter().all(|r| r.metric != "anon"));

    // Draining: UNAVAILABLE with RetryInfo, which OTLP clients retry.
    gw.proc.signal("TERM");
    let late = wait_for("drain to refuse exports", Duration::from_secs(4), || {
        let v = grpc_call(dir, port, &request(vec![gauge("late", 1.0)]), &tenant);
        (v["code"] != "OK").then_some(v)
    });
    assert_eq!(late["code"], "UNAVAILABLE", "{late}");
    assert_eq!(late["retry_delay_s"], 1);
}

/// `otlp.tenant_attribute`: each resource's `tenant.id` is its tenant, checked like an
/// `X-Scope-OrgID`; one request can carry several tenants, each stored under its own.
#[test]
fn tenant_from_a_resource_attribute() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null, tenant_attribute: tenant.id }
auth: { mode: required, trust_org_id_header: true }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 200ms }
tenants:
  - { id: acme, region: local, passwords: ["pw"] }
  - { id: globex, region: local, passwords: ["pw2"] }
"#;
    let gw = Gateway::start(GATEWAY, tmp.path(), config);
    let resource = |tenant: Option<&str>, metric: &str| {
        let tenant = tenant.map_or(String::new(), |t| {
            format!(r#",{{"key":"tenant.id","value":{{"stringValue":"{t}"}}}}"#)
        });
        format!(
            r#"{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"svc"}}}}{tenant}]}},
              "scopeMetrics":[{{"metrics":[{{"name":"{metric}","gauge":{{"dataPoints":[
              {{"timeUnixNano":"1700000000000000000","asDouble":1}}]}}}}]}}]}}"#
        )
    };
    let body = |resources: &[String]| format!(r#"{{"resourceMetrics":[{}]}}"#, resources.join(","));

    // Two tenants in one request, plus a resource without the attribute that falls back to
    // the request's own tenant (the header).
    let two = body(&[
        resource(Some("acme"), "for.acme"),
        resource(Some("globex"), "for.globex"),
        resource(None, "for.header"),
    ]);
    let a = post(&gw, two.as_bytes(), &[JSON, ("x-scope-orgid", "acme")]);
    assert_eq!(a.status, 400, "header and attribute disagree: {}", a.text());
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("X-Scope-OrgID names tenant \"acme\" but a resource's \"tenant.id\" attribute names \"globex\""),
        "{}",
        a.text()
    );
    let no_header = body(&[
        resource(Some("acme"), "for.acme"),
        resource(Some("globex"), "for.globex"),
    ]);
    let a = post(&gw, no_header.as_bytes(), &[JSON]);
    assert_eq!((a.status, a.text().as_str()), (200, "{}"));

    // The attribute passes the same checks as the header: an unknown tenant is refused whole.
    let unknown = body(&[resource(Some("acme"), "x"), resource(Some("initech"), "y")]);
    let a = post(&gw, unknown.as_bytes(), &[JSON]);
    assert_eq!(a.status, 401, "{}", a.text());
    // Credentials for one tenant cannot write another's resources.
    let a = post(
        &gw,
        body(&[resource(Some("globex"), "z")]).as_bytes(),
        &[JSON, ("authorization", "Basic YWNtZTpwdw==")],
    );
    assert_eq!(a.status, 401, "{}", a.text());

    let rows = wait_for("rows of both tenants", Duration::from_secs(20), || {
        let rows = read_rows(&tmp.path().join("data"));
        (rows.iter().any(|r| r.metric == "for_acme")
            && rows.iter().any(|r| r.metric == "for_globex"))
        .then_some(rows)
    });
    for r in &rows {
        let tenant = r.labels.get("tenant").map(String::as_str);
        match r.metric.as_str() {
            "for_acme" => assert_eq!(tenant, Some("acme"), "{r:?}"),
            "for_globex" => assert_eq!(tenant, Some("globex"), "{r:?}"),
            "target_info" => {}
            other => panic!("refused data landed: {other} {r:?}"),
        }
    }
}

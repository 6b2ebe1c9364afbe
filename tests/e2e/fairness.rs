//! Hostile and unlucky clients against a real gateway process:
//!
//! - one tenant floods a region whose only sink's upstream is down (a remote-write URL where
//!   nothing listens), so everything stays in the write-ahead log: that tenant is refused
//!   with 503 + `Retry-After` naming it and the region once it holds its share
//!   (`durability.max_bytes_per_tenant`), while another tenant, sending small requests all
//!   along, keeps getting 2xx and the node stays ready;
//! - an OTLP point with the attribute `http.method` under `otlp.translation: no_translation`
//!   is stored and delivered with that label name (the log's records accept the UTF-8 names
//!   that mode promises), never acknowledged and then lost;
//! - a residency rule that would drop `__name__` (by regex) is refused at config load.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use protocols::otlp::proto as otlp;
use traceo_e2e::{
    free_port, get, http, now_ms, post_with, read_rows, remote_write_body, try_post_with, wait_for,
    Gateway, REMOTE_WRITE_V1_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// Share of one tenant in the region's log: a few dozen flood requests.
const SHARE: u64 = 256 * 1024;

/// How long the flood may take to reach the share (it takes well under a second; the bound
/// only keeps a broken gateway from hanging the suite).
const FLOOD_DEADLINE: Duration = Duration::from_secs(60);

fn fairness_config(dead_port: u16) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
auth: {{ mode: off, default_region: eu }}
durability:
  dir: "{{dir}}/wal"
  segment_bytes: 16384
  max_bytes_per_region: 4194304
  max_bytes: 4194304
  max_bytes_per_tenant: {SHARE}
regions:
  - id: eu
    sinks:
      remote_write:
        - {{ name: down, url: "http://127.0.0.1:{dead_port}/api/v1/write", min_backoff: 100ms, max_backoff: 1s }}
"#
    )
}

/// A request of `n` series with a long label each: a few KiB once tagged and stored.
fn flood_body(n: usize, ts: i64) -> Vec<u8> {
    let pad = "x".repeat(100);
    let labels: Vec<Vec<(String, String)>> = (0..n)
        .map(|i| {
            vec![
                ("__name__".to_string(), "flood".to_string()),
                ("i".to_string(), i.to_string()),
                ("pad".to_string(), pad.clone()),
            ]
        })
        .collect();
    let refs: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .collect();
    let series: Vec<&[(&str, &str)]> = refs.iter().map(Vec::as_slice).collect();
    remote_write_body(&series, ts)
}

#[test]
fn a_flooding_tenant_gets_503_naming_it_while_another_keeps_getting_2xx() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens here: the sink's upstream is down, so every record stays in the log.
    let dead = free_port();
    let gw = Gateway::start(GATEWAY, dir.path(), &fairness_config(dead));
    let url = gw.url("/api/v1/write");

    let flooded = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (url, flooded) = (url.clone(), flooded.clone());
        std::thread::spawn(move || {
            let agent = http();
            let headers = [&REMOTE_WRITE_V1_HEADERS[..], &[("x-scope-orgid", "a")]].concat();
            let started = Instant::now();
            let mut accepted = 0u32;
            loop {
                assert!(
                    started.elapsed() < FLOOD_DEADLINE,
                    "tenant a was never refused after {accepted} requests"
                );
                let body = flood_body(20, now_ms());
                let a = try_post_with(&agent, &url, &body, &headers).expect("gateway answers");
                match a.status {
                    204 => accepted += 1,
                    503 => {
                        flooded.store(true, Ordering::Release);
                        let retry_after = a.header("retry-after").map(str::to_string);
                        return (accepted, a.body, retry_after);
                    }
                    other => panic!("tenant a: unexpected {other}: {}", a.body),
                }
            }
        })
    };

    // Tenant b: small requests all along, before and after a is refused.
    let headers_b = [&REMOTE_WRITE_V1_HEADERS[..], &[("x-scope-orgid", "b")]].concat();
    let mut b_ok = 0u32;
    let mut b_after = 0u32;
    let started = Instant::now();
    while b_after < 20 {
        assert!(started.elapsed() < FLOOD_DEADLINE, "the flood never ended");
        let after = flooded.load(Ordering::Acquire);
        let body = remote_write_body(&[&[("__name__", "small"), ("job", "b")]], now_ms());
        let a = post_with(&url, &body, &headers_b);
        assert_eq!(a.status, 204, "tenant b must keep writing: {}", a.body);
        b_ok += 1;
        if after {
            b_after += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (accepted, body, retry_after) = flooder.join().expect("flooder");
    println!("tenant a: {accepted} requests accepted before its 503; tenant b: {b_ok} accepted");
    assert!(accepted > 0, "a got some in before its share was used up");
    assert!(body.contains("tenant a"), "names the tenant: {body}");
    assert!(body.contains("region eu"), "names the region: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Still refused: its share does not shrink while its sink is down.
    let headers_a = [&REMOTE_WRITE_V1_HEADERS[..], &[("x-scope-orgid", "a")]].concat();
    let a = post_with(&url, &flood_body(20, now_ms()), &headers_a);
    assert_eq!(a.status, 503, "{}", a.body);

    // One tenant's full share is not the node's problem: it stays in the load balancer.
    let (status, ready) = get(&gw.url("/-/ready")).expect("ready answers");
    assert_eq!(status, 200, "{ready}");

    let page = get(&gw.url("/metrics")).expect("metrics").1;
    let gauge = |tenant: &str| {
        traceo_e2e::metric_in(
            &page,
            &format!("traceo_wal_tenant_bytes{{region=\"eu\",tenant=\"{tenant}\"}}"),
        )
        .unwrap_or_else(|| panic!("no gauge for tenant {tenant}:\n{page}"))
    };
    let (a_bytes, b_bytes) = (gauge("a"), gauge("b"));
    println!("log bytes: tenant a {a_bytes}, tenant b {b_bytes}, share {SHARE}");
    assert!(
        a_bytes <= SHARE as f64 && a_bytes > SHARE as f64 / 2.0,
        "{a_bytes}"
    );
    assert!(b_bytes > 0.0 && b_bytes < a_bytes, "{b_bytes}");
    assert!(
        traceo_e2e::metric_in(&page, "traceo_rejections_total{protocol=\"remote_write_v1\",tenant=\"a\",reason=\"wal_tenant_full\"}")
            .is_some_and(|n| n >= 2.0),
        "refusals are counted by reason"
    );
}

fn otlp_config() -> &'static str {
    r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null, translation: no_translation }
auth: { mode: off, default_region: eu }
durability: { dir: "{dir}/wal" }
regions:
  - id: eu
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 300ms }
"#
}

fn gauge_request(attr: &str, ts_ms: i64) -> Vec<u8> {
    otlp::ExportMetricsServiceRequest {
        resource_metrics: vec![otlp::ResourceMetrics {
            scope_metrics: vec![otlp::ScopeMetrics {
                metrics: vec![otlp::Metric {
                    name: "http.server.active_requests".to_string(),
                    data: Some(otlp::metric::Data::Gauge(otlp::Gauge {
                        data_points: vec![otlp::NumberDataPoint {
                            attributes: vec![otlp::KeyValue {
                                key: attr.to_string(),
                                value: Some(otlp::AnyValue {
                                    value: Some(otlp::any_value::Value::StringValue(
                                        "GET".to_string(),
                                    )),
                                }),
                            }],
                            time_unix_nano: ts_ms as u64 * 1_000_000,
                            value: Some(otlp::number_data_point::Value::AsDouble(3.0)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn an_otlp_dotted_attribute_under_no_translation_is_stored_and_delivered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gw = Gateway::start(GATEWAY, dir.path(), otlp_config());
    let ts = now_ms();
    let a = post_with(
        &gw.url("/v1/metrics"),
        &gauge_request("http.method", ts),
        &[
            ("content-type", "application/x-protobuf"),
            ("x-scope-orgid", "acme"),
        ],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let data = dir.path().join("data");
    let rows = wait_for("the point in Parquet", Duration::from_secs(30), || {
        let rows = read_rows(&data);
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.metric, "http.server.active_requests");
    assert_eq!(
        row.labels.get("http.method").map(String::as_str),
        Some("GET")
    );
    assert_eq!(row.timestamp_ms, ts);
    assert_eq!(row.value, Some(3.0));
    assert_eq!(
        gw.metric("traceo_wal_corrupt_records_total").unwrap_or(0.0),
        0.0,
        "nothing acknowledged was unreadable"
    );
}

#[test]
fn a_rule_that_would_drop_the_metric_name_is_refused_at_config_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "regions: [{ id: eu, jurisdiction: EU }]\n\
         tenants: [{ id: acme, home: eu }]\n\
         rules: [{ match: { name: { regex: \"__.*\" } }, action: drop_label }]\n",
    )
    .expect("write policy");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "auth: {{ mode: off }}\n\
             residency: {{ policy: \"{}\" }}\n\
             regions: [{{ id: eu, sinks: {{ parquet: {{ path: \"{}/data\" }} }} }}]\n",
            policy.display(),
            dir.path().display()
        ),
    )
    .expect("write config");
    let out = Command::new(GATEWAY)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("run check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("rules[0].match.name: a series cannot lose or hide its metric name"),
        "{text}"
    );
}

//! A real Prometheus (Debian's `prometheus` package) scrapes itself and remote-writes to a real
//! gateway with basic auth; the series it sent must appear in the gateway's Parquet files with
//! their labels, the tenant and plausible timestamps.

use std::time::Duration;

use traceo_e2e::{get, now_ms, prometheus_scraping_itself, read_rows, wait_for, Gateway};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

#[test]
fn prometheus_remote_write_lands_in_parquet_with_tenant_and_labels() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let gw = Gateway::start(
        GATEWAY,
        dir,
        r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 1s }
tenants:
  - id: team-a
    region: local
    passwords: ["s3cret"]
"#,
    );

    let started_ms = now_ms();
    let (mut prom, prom_port) = prometheus_scraping_itself(
        dir,
        "1s",
        &format!(
            r#"  - url: "http://127.0.0.1:{gw_port}/api/v1/write"
    basic_auth:
      username: team-a
      password: s3cret
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"#,
            gw_port = gw.port
        ),
    );

    let data = dir.join("data");
    let rows = wait_for(
        "prometheus_build_info and up in Parquet",
        Duration::from_secs(120),
        || {
            prom.assert_running();
            let rows = read_rows(&data);
            let has = |m: &str| rows.iter().any(|r| r.metric == m);
            (has("prometheus_build_info") && has("up")).then_some(rows)
        },
    );

    let up = rows.iter().find(|r| r.metric == "up").expect("an up row");
    assert_eq!(
        up.value,
        Some(1.0),
        "Prometheus scraping itself is up: {up:?}"
    );
    assert_eq!(up.labels.get("job").map(String::as_str), Some("prometheus"));
    assert_eq!(
        up.labels.get("instance"),
        Some(&format!("127.0.0.1:{prom_port}"))
    );
    assert!(
        up.file.starts_with("region=local/tenant=team-a/date="),
        "hive layout: {}",
        up.file
    );

    let build = rows
        .iter()
        .find(|r| r.metric == "prometheus_build_info")
        .expect("a build_info row");
    for label in ["version", "revision", "goversion"] {
        assert!(build.labels.contains_key(label), "{label} in {build:?}");
    }

    let finished_ms = now_ms();
    for r in &rows {
        assert_eq!(r.tenant, "team-a", "tenant column of {r:?}");
        assert_eq!(r.region, "local", "region column of {r:?}");
        assert_eq!(r.labels.get("tenant").map(String::as_str), Some("team-a"));
        assert_eq!(r.labels.get("region").map(String::as_str), Some("local"));
        assert!(
            r.timestamp_ms >= started_ms - 60_000 && r.timestamp_ms <= finished_ms + 5_000,
            "timestamp {} outside [{started_ms}-60s, {finished_ms}+5s]: {r:?}",
            r.timestamp_ms
        );
    }

    // Prometheus was answered 204 and the gateway counted it.
    let (status, metrics) = get(&gw.url("/metrics")).expect("metrics endpoint");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("traceo_requests_total")
                && l.contains("tenant=\"team-a\"")
                && l.contains("code=\"204\"")),
        "no 204s counted for team-a in:\n{metrics}"
    );
    assert!(
        !prom.log().contains("non-recoverable error"),
        "Prometheus saw non-recoverable errors:\n{}",
        prom.log()
    );
}

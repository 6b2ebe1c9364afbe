//! TLS on the listeners against a real client: Debian's Prometheus remote-writes to the
//! gateway over HTTPS with a client certificate (mTLS, `client_auth: required`), and the
//! gateway takes the tenant from the certificate's common name. A second remote-write queue
//! of the same Prometheus, without a certificate, is refused at the handshake. Certificates
//! are made by the test (`rcgen`). The listener's certificate is rotated under load from
//! `traceo-loadgen` over TLS: no request fails and new connections get the new certificate.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use traceo_e2e::{
    free_port, get, metric_in, pem_certificate, prometheus_bin, read_rows, served_certificate,
    wait_for, write_pki as pki, Gateway, Proc,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

#[test]
fn prometheus_writes_over_mtls_and_the_certificate_names_the_tenant() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    pki(dir, "team-a");
    let gw = Gateway::start(
        GATEWAY,
        dir,
        r#"
listen: { http: "127.0.0.1:{port}", telemetry: "127.0.0.1:{telemetry_port}" }
otlp: { grpc_listen: null, http_listen: null }
tls:
  cert_file: "{dir}/server.pem"
  key_file: "{dir}/server.key"
  client_ca_file: "{dir}/ca.pem"
  client_auth: required
  tenant_from: cn
auth: { mode: required }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 1s }
tenants:
  - { id: team-a, region: local }
"#,
    );
    // The data port speaks TLS only; the telemetry port is plain and serves no writes.
    assert!(
        get(&gw.url("/-/ready")).is_none(),
        "plain HTTP on the TLS port"
    );
    let (status, _) = get(&gw.telemetry_url("/api/v1/write")).expect("telemetry answers");
    assert_eq!(status, 404, "the telemetry port serves no writes");

    let prom_port = free_port();
    let prom_cfg = dir.join("prometheus.yml");
    let d = dir.display();
    std::fs::write(
        &prom_cfg,
        format!(
            r#"
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{prom_port}"]
remote_write:
  - url: "https://localhost:{gw_port}/api/v1/write"
    name: with-cert
    tls_config:
      ca_file: {d}/ca.pem
      cert_file: {d}/client.pem
      key_file: {d}/client.key
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
  - url: "https://localhost:{gw_port}/api/v1/write"
    name: without-cert
    tls_config:
      ca_file: {d}/ca.pem
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
"#,
            gw_port = gw.port
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let mut prom = Proc::spawn("prometheus", cmd, dir.join("prometheus.log"));

    let data = dir.join("data");
    let rows = wait_for("up in Parquet", Duration::from_secs(120), || {
        prom.assert_running();
        let rows = read_rows(&data);
        rows.iter().any(|r| r.metric == "up").then_some(rows)
    });
    for r in &rows {
        assert_eq!(
            r.tenant, "team-a",
            "the certificate names the tenant: {r:?}"
        );
    }
    // The queue without a certificate never got through the handshake.
    let refused = wait_for(
        "handshakes without a certificate refused",
        Duration::from_secs(60),
        || {
            let (_, page) = get(&gw.telemetry_url("/metrics"))?;
            metric_in(&page, "traceo_tls_handshake_failures_total").filter(|n| *n > 0.0)
        },
    );
    let (_, page) = get(&gw.telemetry_url("/metrics")).expect("metrics");
    let accepted = metric_in(
        &page,
        r#"traceo_requests_total{protocol="remote_write_v1",tenant="team-a",code="204"}"#,
    )
    .unwrap_or(0.0);
    println!("{accepted} requests accepted for team-a over mTLS, {refused} handshakes refused");
    assert!(accepted > 0.0, "no 204 for team-a in:\n{page}");
    assert!(
        metric_in(&page, "traceo_tls_certificate_expiry_timestamp_seconds")
            .is_some_and(|t| t > 0.0),
        "certificate expiry gauge"
    );
}

const EXPORT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/otlp_export.py");

/// Runs the OTel SDK export script over TLS; panics with its output unless it succeeded.
fn export(transport: &str, endpoint: &str, tenant: &str, dir: &Path, client_cert: bool) {
    let mut cmd = Command::new(traceo_e2e::python_bin());
    cmd.arg(EXPORT_SCRIPT)
        .args([
            "--transport",
            transport,
            "--endpoint",
            endpoint,
            "--tenant",
            tenant,
        ])
        .arg("--ca")
        .arg(dir.join("ca.pem"));
    if client_cert {
        cmd.arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client.key"));
    }
    // requests lets these variables replace the CA the exporter was given (a session's
    // `verify` loses to the environment, requests issue #3829): the test names its CA itself.
    cmd.env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    let out = cmd.output().expect("run the OTel export script");
    assert!(
        out.status.success(),
        "{transport} export to {endpoint} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_otel_sdk_exports_over_tls_by_grpc_and_http_with_and_without_a_client_certificate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    pki(dir, "team-a");
    let (grpc, http) = (free_port(), free_port());
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}", telemetry: "127.0.0.1:{telemetry_port}" }
otlp: { grpc_listen: "127.0.0.1:GRPC", http_listen: "127.0.0.1:HTTP" }
tls:
  cert_file: "{dir}/server.pem"
  key_file: "{dir}/server.key"
  client_ca_file: "{dir}/ca.pem"
  client_auth: optional
  tenant_from: cn
auth: { mode: off, default_region: local }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 1s }
"#
        .replace("GRPC", &grpc.to_string())
        .replace("HTTP", &http.to_string()),
    );
    traceo_e2e::wait_for_listener("OTLP/gRPC", grpc, Duration::from_secs(30));
    traceo_e2e::wait_for_listener("OTLP/HTTP", http, Duration::from_secs(30));
    // CA only: the tenant comes from the header.
    export(
        "grpc",
        &format!("https://localhost:{grpc}"),
        "grpc-ca",
        dir,
        false,
    );
    export(
        "http",
        &format!("https://localhost:{http}/v1/metrics"),
        "http-ca",
        dir,
        false,
    );
    // With the client certificate: its tenant, which the header must agree with.
    export(
        "grpc",
        &format!("https://localhost:{grpc}"),
        "team-a",
        dir,
        true,
    );
    export(
        "http",
        &format!("https://localhost:{http}/v1/metrics"),
        "team-a",
        dir,
        true,
    );

    let data = dir.join("data");
    let tenants = wait_for("every export in Parquet", Duration::from_secs(60), || {
        let rows = read_rows(&data);
        let tenants: std::collections::BTreeSet<String> = rows
            .iter()
            .filter(|r| r.metric == "shop_orders_total" && r.value == Some(7.0))
            .map(|r| r.tenant.clone())
            .collect();
        (tenants.len() == 3).then_some(tenants)
    });
    assert_eq!(
        tenants.into_iter().collect::<Vec<_>>(),
        ["grpc-ca", "http-ca", "team-a"]
    );
    let (_, page) = get(&gw.telemetry_url("/metrics")).expect("metrics");
    let team_a = metric_in(
        &page,
        r#"traceo_requests_total{protocol="otlp_grpc",tenant="team-a""#,
    )
    .unwrap_or(0.0)
        + metric_in(
            &page,
            r#"traceo_requests_total{protocol="otlp_http",tenant="team-a""#,
        )
        .unwrap_or(0.0);
    assert_eq!(team_a, 2.0, "two mTLS exports counted for team-a:\n{page}");
}

/// Runs `traceo-loadgen` over TLS against `url` and returns its JSON report.
fn loadgen_tls(dir: &Path, url: &str, rate: &str, secs: &str, connections: &str) -> Command {
    let mut cmd = Command::new(traceo_e2e::loadgen_bin(GATEWAY));
    cmd.args(["--url", url, "--tenant", "team-a"])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .args([
            "--series",
            "2000",
            "--series-per-request",
            "50",
            "--labels",
            "6",
        ])
        .args([
            "--connections",
            connections,
            "--rate",
            rate,
            "--duration",
            secs,
        ])
        .args(["--timeout", "10", "--json"]);
    cmd
}

/// The `codes` of a loadgen JSON report, as `code -> count`.
fn codes_of(out: &std::process::Output) -> serde_json::Map<String, serde_json::Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "loadgen report: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["codes"].as_object().cloned().unwrap_or_default()
}

#[test]
fn certificate_rotation_under_load_fails_no_request_and_new_connections_get_the_new_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    pki(dir, "team-a");
    let gw = Gateway::start(
        GATEWAY,
        dir,
        r#"
listen: { http: "127.0.0.1:{port}", telemetry: "127.0.0.1:{telemetry_port}" }
otlp: { grpc_listen: null, http_listen: null }
tls:
  cert_file: "{dir}/server.pem"
  key_file: "{dir}/server.key"
auth: { mode: off, default_region: local }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 1s }
"#,
    );
    let url = format!("https://localhost:{}/api/v1/write", gw.port);
    // With listen.telemetry set, the public port keeps telemetry to itself.
    let agent = traceo_e2e::https_agent(dir);
    for path in ["/metrics", "/api/v1/status", "/-/ready"] {
        let r = agent
            .get(format!("https://localhost:{}{path}", gw.port))
            .call()
            .expect("the TLS port answers");
        assert_eq!(r.status().as_u16(), 404, "{path} on the public port");
    }
    let old = pem_certificate(&dir.join("server.pem"));
    let new = pem_certificate(&dir.join("server-renewed.pem"));
    assert_eq!(served_certificate(gw.port, dir), old);

    // A long open-loop run on connections opened before the rotation.
    let long = loadgen_tls(dir, &url, "20000", "14", "4")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start loadgen");
    std::thread::sleep(Duration::from_secs(3));
    // cert-manager's way: each file replaced by an atomic rename, key and certificate apart.
    std::fs::rename(dir.join("server-renewed.key"), dir.join("server.key")).expect("key");
    std::fs::rename(dir.join("server-renewed.pem"), dir.join("server.pem")).expect("cert");
    let reloaded = std::time::Instant::now();
    // Meanwhile, short runs keep opening new connections through the rotation.
    let mut short_runs = 0;
    let mut served_new_after = None;
    while reloaded.elapsed() < Duration::from_secs(8) {
        let out = loadgen_tls(dir, &url, "5000", "1", "2")
            .output()
            .expect("run loadgen");
        let codes = codes_of(&out);
        assert!(
            codes.keys().all(|c| c == "204") && codes.contains_key("204"),
            "a request failed during the rotation (or none was sent): {codes:?}"
        );
        short_runs += 1;
        if served_new_after.is_none() && served_certificate(gw.port, dir) == new {
            served_new_after = Some(reloaded.elapsed());
        }
    }
    let out = long.wait_with_output().expect("loadgen");
    let codes = codes_of(&out);
    println!(
        "long run over the rotation: {codes:?}; {short_runs} short runs on new connections, all 2xx; new certificate served {served_new_after:?} after the rename"
    );
    assert!(
        codes.keys().all(|c| c == "204") && codes.get("204").is_some(),
        "the long run saw failures: {codes:?}"
    );
    assert!(
        served_new_after.is_some(),
        "the renewed certificate was never served"
    );
    assert_eq!(served_certificate(gw.port, dir), new);
    let (_, page) = get(&gw.telemetry_url("/metrics")).expect("metrics");
    assert!(
        metric_in(&page, r#"traceo_tls_reloads_total{result="success"}"#).is_some_and(|n| n >= 1.0),
        "reload counted:\n{page}"
    );
}

//! TLS on the listeners against a real client: Debian's Prometheus remote-writes to the
//! gateway over HTTPS with a client certificate (mTLS, `client_auth: required`), and the
//! gateway takes the tenant from the certificate's common name. A second remote-write queue
//! of the same Prometheus, without a certificate, is refused at the handshake. Certificates
//! are made by the test (`rcgen`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use traceo_e2e::{free_port, get, metric_in, prometheus_bin, read_rows, wait_for, Gateway, Proc};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate with
/// common name `cn`, as PEM files under `dir`.
fn pki(dir: &Path, cn: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "traceo test CA");
    let ca = ca.self_signed(&ca_key).expect("CA");
    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    server.use_authority_key_identifier_extension = true;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
    client.distinguished_name.push(DnType::CommonName, cn);
    client.use_authority_key_identifier_extension = true;
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client cert");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write PEM");
    }
}

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

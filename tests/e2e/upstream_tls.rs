//! TLS toward upstreams, against real processes: Debian's Prometheus serving HTTPS only
//! (`--web.config.file` with `tls_server_config`, client certificate required) as the
//! remote-write backend of two regions.
//!
//! - EU's sink trusts the test CA, shows a client certificate and verifies the name
//!   `prom.traceo.test` (the only name on Prometheus' certificate, resolvable nowhere) while
//!   connecting to 127.0.0.1 (`tls.server_name`): its data is queried back;
//! - US's sink has no client certificate: Prometheus refuses its handshakes, the sink retries
//!   (counted), and none of its data lands while EU's keeps arriving;
//! - the EU client certificate is replaced by a new one while the gateway runs: the sink picks
//!   it up (counted) and data sent afterwards still lands;
//! - the Kafka sink produces over mTLS to a real `tansu` broker behind a TLS terminator
//!   (Debian's `stunnel4`, client certificates required): EU's sink, with a certificate,
//!   delivers (read back over TLS with `tail --property`); US's, without one, delivers nothing
//!   and its probe reports the upstream down.
//!
//! Certificates are made by the test (`rcgen`, [`traceo_e2e::write_pki`]).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use traceo_e2e::{
    free_port, get, now_ms, post_remote_write, remote_write_body, tail_json_with, wait_for,
    write_pki, Broker, Gateway, Proc, PrometheusBackend,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

fn config(prom_url: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
durability: {{ dir: "{{dir}}/wal" }}
regions:
  - id: eu
    sinks:
      remote_write:
        - name: prom
          url: "{prom_url}"
          min_backoff: 100ms
          max_backoff: 1s
          tls:
            ca_file: "{{dir}}/ca.pem"
            cert_file: "{{dir}}/client.pem"
            key_file: "{{dir}}/client.key"
            server_name: prom.traceo.test
  - id: us
    sinks:
      remote_write:
        - name: no-cert
          url: "{prom_url}"
          min_backoff: 100ms
          max_backoff: 1s
          tls: {{ ca_file: "{{dir}}/ca.pem", server_name: prom.traceo.test }}
tenants:
  - {{ id: team-eu, region: eu, passwords: ["s3cret"] }}
  - {{ id: team-us, region: us, passwords: ["s3cret"] }}
"#
    )
}

fn send(gw: &Gateway, tenant: &str, metric: &str) {
    let body = remote_write_body(&[&[("__name__", metric), ("job", "tls")]], now_ms());
    let auth = format!("Basic {}", base64_of(&format!("{tenant}:s3cret")));
    let (status, text) =
        post_remote_write(&gw.url("/api/v1/write"), &body, &[("authorization", &auth)]);
    assert_eq!(status, 204, "{tenant}: {text}");
}

/// Standard base64, enough for a basic-auth header.
fn base64_of(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &c| (n << 8) | c as u32) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn the_remote_write_sink_delivers_over_mtls_and_a_sink_without_a_certificate_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    write_pki(dir, "traceo-gateway");
    let prom = PrometheusBackend::start_tls(dir, "prometheus", dir);
    let gw = Gateway::start(GATEWAY, dir, &config(&prom.write_url()));

    send(&gw, "team-eu", "over_mtls");
    send(&gw, "team-us", "without_cert");
    let found = wait_for(
        "the EU series in Prometheus",
        Duration::from_secs(60),
        || {
            let r = prom.query("over_mtls");
            (!r.is_empty()).then_some(r)
        },
    );
    assert_eq!(found[0]["metric"]["tenant"], "team-eu", "{found:?}");
    assert_eq!(found[0]["metric"]["region"], "eu", "{found:?}");

    let retries = wait_for(
        "the sink without a certificate to be refused",
        Duration::from_secs(60),
        || {
            gw.metric(r#"traceo_remote_write_retries_total{sink="remote_write/us/no-cert"}"#)
                .filter(|n| *n >= 2.0)
        },
    );
    assert!(
        prom.query("without_cert").is_empty(),
        "a sink without a client certificate got through"
    );

    // Rotation, as cert-manager does it: a renewed pair (new key, same CA) replaces the
    // files, each by an atomic rename.
    for (from, to) in [
        ("client-renewed.pem", "client.pem"),
        ("client-renewed.key", "client.key"),
    ] {
        std::fs::rename(dir.join(from), dir.join(to)).expect("rename");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Reloads happen when a request is sent; keep sending.
        send(&gw, "team-eu", "after_rotation");
        let page = get(&gw.url("/metrics")).map(|(_, p)| p).unwrap_or_default();
        let reloads: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("traceo_remote_write_client_reloads_total"))
            .collect();
        if reloads
            .iter()
            .any(|l| l.contains("remote_write/eu/prom") && l.contains("result=\"success\""))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not reload its rotated files within 30 s: {reloads:?}\n{}",
            gw.proc.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for("data after the rotation", Duration::from_secs(60), || {
        (!prom.query("after_rotation").is_empty()).then_some(())
    });
    println!("delivered over mTLS; {retries} refused attempts without a certificate; reload after rotation ok");
}

/// `stunnel` (Debian's `stunnel4`): `$STUNNEL_BIN`, else `stunnel4` or `stunnel` from `PATH`.
fn stunnel_bin() -> String {
    if let Ok(b) = std::env::var("STUNNEL_BIN") {
        return b;
    }
    for b in ["stunnel4", "stunnel"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return b.to_string();
        }
    }
    panic!("stunnel is not installed (Debian: apt-get install stunnel4; .ci/run does)")
}

/// A TLS terminator on 127.0.0.1:`port` in front of `backend`, with the server certificate of
/// `pki` and client certificates required (signed by its CA).
fn stunnel(dir: &Path, port: u16, backend: u16) -> Proc {
    let conf = dir.join("stunnel.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\ncert = {d}/server.pem\nkey = {d}/server.key\nCAfile = {d}/ca.pem\nverifyChain = yes\nrequireCert = yes\n"
        ),
    )
    .expect("stunnel config");
    let mut cmd = Command::new(stunnel_bin());
    cmd.arg(&conf);
    let mut p = Proc::spawn("stunnel", cmd, dir.join("stunnel.log"));
    wait_for("stunnel to listen", Duration::from_secs(30), || {
        p.assert_running();
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    p
}

fn kafka_config(tls_port: u16) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
durability: {{ dir: "{{dir}}/wal" }}
regions:
  - id: eu
    sinks:
      kafka:
        brokers: "localhost:{tls_port}"
        topic: "metrics.{{region}}"
        tls:
          ca_file: "{{dir}}/ca.pem"
          cert_file: "{{dir}}/client.pem"
          key_file: "{{dir}}/client.key"
  - id: us
    sinks:
      kafka:
        brokers: "localhost:{tls_port}"
        topic: "metrics.{{region}}"
        tls: {{ ca_file: "{{dir}}/ca.pem" }}
tenants:
  - {{ id: team-eu, region: eu, passwords: ["s3cret"] }}
  - {{ id: team-us, region: us, passwords: ["s3cret"] }}
"#
    )
}

#[test]
fn the_kafka_sink_delivers_over_mtls_and_a_sink_without_a_certificate_delivers_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    write_pki(dir, "traceo-gateway");
    // tansu 0.6 takes --cert/--key but never wraps its connections in TLS (its broker keeps
    // the acceptor unused), so a TLS terminator stands in front of the real broker, and the
    // broker advertises the terminator's address (with the certificate's host name).
    let tls_port = free_port();
    let broker = Broker::start_advertising(dir, "tansu", Some(&format!("localhost:{tls_port}")));
    for t in ["metrics.eu", "metrics.us", "traceo-health"] {
        broker.create_topic(t, 1);
    }
    let _tls = stunnel(dir, tls_port, broker.port);
    let gw = Gateway::start(GATEWAY, dir, &kafka_config(tls_port));

    send(&gw, "team-eu", "kafka_over_mtls");
    send(&gw, "team-us", "kafka_without_cert");
    let d = dir.display().to_string();
    let props = [
        ("security.protocol", "SSL".to_string()),
        ("ssl.ca.location", format!("{d}/ca.pem")),
        ("ssl.certificate.location", format!("{d}/client.pem")),
        ("ssl.key.location", format!("{d}/client.key")),
    ];
    let eu = wait_for(
        "the EU sample in Kafka over TLS",
        Duration::from_secs(60),
        || {
            let rows = tail_json_with(
                GATEWAY,
                &format!("localhost:{tls_port}"),
                "metrics.eu",
                3,
                &props,
            );
            rows.iter()
                .any(|r| r["labels"]["__name__"] == "kafka_over_mtls")
                .then_some(rows)
        },
    );
    assert!(eu.iter().all(|r| r["tenant"] == "team-eu"), "{eu:?}");
    // The US sink shows no certificate: every handshake is refused, its probe says why.
    let why = wait_for("the US upstream seen down", Duration::from_secs(60), || {
        let (_, body) = get(&gw.url("/api/v1/status"))?;
        let s: serde_json::Value = serde_json::from_str(&body).ok()?;
        let u = s["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["id"] == "kafka-us")?
            .clone();
        (u["local"] == "down").then(|| u["last_error"].to_string())
    });
    let us = tail_json_with(
        GATEWAY,
        &format!("localhost:{tls_port}"),
        "metrics.us",
        3,
        &props,
    );
    assert!(
        us.is_empty(),
        "data from a sink without a certificate: {us:?}"
    );
    println!(
        "{} EU samples over mTLS; the US sink without a certificate is down: {why}",
        eu.len()
    );
}

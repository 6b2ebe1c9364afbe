//! The Kafka sink against a real Kafka-protocol broker (`tansu`), read back with an rdkafka
//! consumer (`traceo-gateway tail --json`):
//! - a real Prometheus remote-writes through the gateway; every sample the gateway
//!   acknowledged is in the topic with its labels, value, tenant and region;
//! - the broker stops answering under load: the gateway answers only retryable statuses for
//!   what it could not deliver, recovers by itself, and every acknowledged sample is there.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use traceo_e2e::{
    free_port, get, metric_in, now_ms, post_remote_write, remote_write_body, tail_json, wait_for,
    Broker, Gateway, Proc,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

fn label<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["labels"][name].as_str()
}

#[test]
fn prometheus_samples_acknowledged_by_the_gateway_are_all_in_kafka() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start(dir, "tansu");
    broker.create_topic("metrics.local", 3);
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
regions:
  - id: local
    sinks:
      kafka: { brokers: "BROKER", linger: 2ms }
tenants:
  - { id: team-a, region: local, passwords: ["s3cret"] }
# Three workers, three producers, whatever the machine's cores: the split path is tested.
pipeline: { shards: 3 }
"#
        .replace("BROKER", &broker.addr()),
    );

    let prom_port = free_port();
    let prom_cfg = dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            r#"
global: {{ scrape_interval: 1s }}
scrape_configs:
  - job_name: prometheus
    static_configs: [{{ targets: ["127.0.0.1:{prom_port}"] }}]
remote_write:
  - url: "http://127.0.0.1:{gw}/api/v1/write"
    basic_auth: {{ username: team-a, password: s3cret }}
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
"#,
            gw = gw.port
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(std::env::var("PROMETHEUS_BIN").unwrap_or("prometheus".into()));
    cmd.arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let mut prom = Proc::spawn("prometheus", cmd, dir.join("prometheus.log"));

    let acked_prefix = r#"traceo_samples_total{protocol="remote_write_v1",tenant="team-a"}"#;
    wait_for("a few remote-write rounds", Duration::from_secs(60), || {
        prom.assert_running();
        let (_, page) = get(&gw.url("/metrics"))?;
        (metric_in(&page, acked_prefix)? >= 500.0).then_some(())
    });
    prom.terminate(Duration::from_secs(30));
    // Prometheus is gone: the acknowledged count is final.
    let (_, page) = get(&gw.url("/metrics")).expect("metrics");
    let acked = metric_in(&page, acked_prefix).expect("acked samples counted") as usize;

    let lines = tail_json(GATEWAY, &broker.addr(), "metrics.local", 3);
    assert!(
        lines.len() >= acked,
        "{acked} samples acknowledged, {} in Kafka",
        lines.len()
    );
    for l in &lines {
        assert_eq!(l["tenant"], "team-a", "{l}");
        assert_eq!(l["region"], "local", "{l}");
        assert_eq!(label(l, "tenant"), Some("team-a"), "{l}");
        assert_eq!(label(l, "region"), Some("local"), "{l}");
    }
    let up: Vec<&Value> = lines
        .iter()
        .filter(|l| label(l, "__name__") == Some("up"))
        .collect();
    assert!(!up.is_empty(), "no `up` sample in Kafka");
    for l in &up {
        assert_eq!(label(l, "job"), Some("prometheus"));
        assert_eq!(
            label(l, "instance").map(|i| i.to_string()),
            Some(format!("127.0.0.1:{prom_port}"))
        );
        assert_eq!(l["value"], 1.0);
        let ts = l["timestamp_ms"].as_i64().expect("timestamp");
        assert!((now_ms() - 600_000..=now_ms()).contains(&ts), "{l}");
    }
    let build = lines
        .iter()
        .find(|l| label(l, "__name__") == Some("prometheus_build_info"))
        .expect("prometheus_build_info in Kafka");
    assert!(
        label(build, "version").is_some_and(|v| !v.is_empty()),
        "{build}"
    );
    // Series keep their partition: one series, one partition.
    let mut seen = std::collections::HashMap::new();
    for l in &lines {
        let key = l["labels"].to_string();
        let p = l["partition"].as_i64().expect("partition");
        assert_eq!(
            *seen.entry(key).or_insert(p),
            p,
            "series split over partitions: {l}"
        );
    }
}

#[test]
fn broker_outage_gets_retryable_answers_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start(dir, "tansu");
    broker.create_topic("metrics.local", 2);
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off, default_region: local }
# Acknowledged only once the broker has it: an outage is answered at once (the default
# `wal` mode absorbs it instead; see e2e_wal).
durability: { mode: upstream }
regions:
  - id: local
    sinks:
      kafka: { brokers: "BROKER", linger: 2ms, delivery_timeout: 2s }
"#
        .replace("BROKER", &broker.addr()),
    );

    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut refused: Vec<(u64, u16, String)> = Vec::new();
    let mut seq = 0u64;
    let mut send = |phase: &str| -> u16 {
        seq += 1;
        let s = seq.to_string();
        let body = remote_write_body(
            &[&[("__name__", "outage_probe"), ("phase", phase), ("seq", &s)]],
            now_ms(),
        );
        let (status, text) = post_remote_write(
            &gw.url("/api/v1/write"),
            &body,
            &[("x-scope-orgid", "probe")],
        );
        if status == 204 {
            acked.insert(seq);
        } else {
            refused.push((seq, status, text));
        }
        status
    };

    for _ in 0..20 {
        assert_eq!(send("before"), 204);
    }
    broker.proc.signal("STOP");
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        send("during");
    }
    broker.proc.signal("CONT");
    let recovered = Instant::now();
    while send("after") != 204 {
        assert!(
            recovered.elapsed() < Duration::from_secs(60),
            "the gateway did not recover by itself after the broker came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..20 {
        send("after");
    }

    assert!(
        refused.iter().any(|(_, status, _)| *status == 503),
        "the outage was never noticed: {refused:?}"
    );
    for (seq, status, text) in &refused {
        assert!(
            *status == 503 || *status == 429,
            "request {seq}: non-retryable {status} during an outage: {text}"
        );
    }

    let found: BTreeSet<u64> = tail_json(GATEWAY, &broker.addr(), "metrics.local", 3)
        .iter()
        .filter_map(|l| label(l, "seq").and_then(|s| s.parse().ok()))
        .collect();
    let missing: Vec<&u64> = acked.difference(&found).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in Kafka: {missing:?} ({} acknowledged, {} refused)",
        acked.len(),
        refused.len()
    );
}

#[test]
fn remote_write_v2_messages_carry_the_same_samples() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start(dir, "tansu");
    broker.create_topic("metrics.local.acme", 2);
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off, default_region: local }
regions:
  - id: local
    sinks:
      kafka: { brokers: "BROKER", format: remote_write_v2, topic: "metrics.{region}.{tenant}", compression: zstd }
"#
        .replace("BROKER", &broker.addr()),
    );
    let ts = now_ms();
    for i in 0..5 {
        let i = i.to_string();
        let body = remote_write_body(
            &[
                &[("__name__", "v2_probe"), ("seq", &i), ("zone", "a")],
                &[("__name__", "v2_probe"), ("seq", &i), ("zone", "b")],
            ],
            ts,
        );
        let (status, text) = post_remote_write(
            &gw.url("/api/v1/write"),
            &body,
            &[("x-scope-orgid", "acme")],
        );
        assert_eq!(status, 204, "{text}");
    }
    let lines = tail_json(GATEWAY, &broker.addr(), "metrics.local.acme", 3);
    let mut found: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["tenant"], "acme", "{l}");
            assert_eq!(label(l, "tenant"), Some("acme"), "{l}");
            assert_eq!(label(l, "region"), Some("local"), "{l}");
            assert_eq!(l["timestamp_ms"].as_i64(), Some(ts), "{l}");
            assert_eq!(l["value"], 1.0, "{l}");
            (
                label(l, "seq").unwrap_or_default().to_string(),
                label(l, "zone").unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    let want: Vec<(String, String)> = (0..5)
        .flat_map(|i| {
            [
                (i.to_string(), "a".to_string()),
                (i.to_string(), "b".to_string()),
            ]
        })
        .collect();
    assert_eq!(found, want);
}

//! The remote-write sink against a real Prometheus (Debian package) started with
//! `--web.enable-remote-write-receiver` as the region's backend, queried back through its
//! HTTP API:
//! - remote-write 1.0 and 2.0 sent to the gateway for two tenants arrive with their labels,
//!   the tenant and region tags and their values;
//! - a backend that answers 500 for a while (a fault-injecting proxy in front of the real
//!   Prometheus) loses nothing the gateway acknowledged once it recovers;
//! - a batch the backend refuses with a 400 is counted and not retried forever: later data
//!   still arrives.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use protocols::remote_write::v2::reference as v2;
use traceo_e2e::{
    now_ms, post_remote_write, post_with, remote_write_body, wait_for, Gateway, PrometheusBackend,
    REMOTE_WRITE_V2_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

fn config(url: &str) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
auth: {{ mode: off, default_region: eu }}
durability: {{ dir: "{{dir}}/wal" }}
regions:
  - id: eu
    sinks:
      remote_write:
        - {{ name: prom, url: "{url}", min_backoff: 100ms, max_backoff: 1s }}
"#
    )
}

/// A remote-write 2.0 request: one float series with metadata.
fn v2_body(metric: &str, job: &str, value: f64, ts: i64) -> Vec<u8> {
    let req = v2::Request {
        symbols: ["", "__name__", metric, "job", job, "requests"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 2, 3, 4],
            samples: vec![v2::Sample {
                value,
                timestamp: ts,
            }],
            metadata: Some(v2::Metadata {
                r#type: 2,
                help_ref: 5,
                unit_ref: 0,
            }),
            ..Default::default()
        }],
    };
    protocols::snappy::compress(&req.encode_to_vec())
}

fn post_v2(gw: &Gateway, body: &[u8], tenant: &str) -> (u16, String) {
    let headers = [&REMOTE_WRITE_V2_HEADERS[..], &[("x-scope-orgid", tenant)]].concat();
    let a = post_with(&gw.url("/api/v1/write"), body, &headers);
    (a.status, a.body)
}

/// The single value of `promql` once Prometheus has it, with its labels.
fn value_of(prom: &PrometheusBackend, promql: &str) -> serde_json::Value {
    wait_for(
        &format!("{promql} in Prometheus"),
        Duration::from_secs(60),
        || prom.query(promql).into_iter().next(),
    )
}

#[test]
fn v1_and_v2_for_two_tenants_are_queried_back_from_prometheus_with_tags() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let prom = PrometheusBackend::start(dir, "prometheus");
    let gw = Gateway::start(GATEWAY, dir, &config(&prom.write_url()));
    let ts = now_ms();

    let v1 = remote_write_body(&[&[("__name__", "orders_total"), ("job", "shop")]], ts);
    let (status, text) = post_remote_write(
        &gw.url("/api/v1/write"),
        &v1,
        &[("x-scope-orgid", "team-a")],
    );
    assert_eq!(status, 204, "{text}");
    let (status, text) = post_v2(&gw, &v2_body("queue_depth", "worker", 42.5, ts), "team-b");
    assert_eq!(status, 204, "{text}");

    let a = value_of(&prom, "orders_total");
    assert_eq!(a["metric"]["tenant"], "team-a", "{a}");
    assert_eq!(a["metric"]["region"], "eu", "{a}");
    assert_eq!(a["metric"]["job"], "shop", "{a}");
    assert_eq!(a["value"][1], "1", "{a}");
    let b = value_of(&prom, "queue_depth");
    assert_eq!(b["metric"]["tenant"], "team-b", "{b}");
    assert_eq!(b["metric"]["region"], "eu", "{b}");
    assert_eq!(b["metric"]["job"], "worker", "{b}");
    assert_eq!(b["value"][1], "42.5", "{b}");
    // Per-tenant selection works as users will query it.
    assert_eq!(prom.query(r#"{tenant="team-a"}"#).len(), 1);
    assert_eq!(prom.query(r#"{tenant="team-b"}"#).len(), 1);
}

/// A proxy in front of the real backend that answers 500 while `failing` is set (and
/// counts those answers), and forwards requests otherwise.
fn fault_proxy(backend: String, failing: Arc<AtomicBool>, refused: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (backend, failing, refused) = (backend.clone(), failing.clone(), refused.clone());
            std::thread::spawn(move || {
                let _ = serve(conn, &backend, &failing, &refused);
            });
        }
    });
    port
}

/// One keep-alive connection of the proxy: minimal HTTP/1.1 with Content-Length bodies.
fn serve(
    conn: TcpStream,
    backend: &str,
    failing: &AtomicBool,
    refused: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        // Only writes are refused and counted: anything else reaching this port by mistake
        // must not pass for one of the gateway's attempts.
        let is_write = line.starts_with("POST ");
        let (status, text) = if is_write && failing.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            (500, "injected failure".to_string())
        } else {
            let mut req = traceo_e2e::http().post(backend);
            for (k, v) in &headers {
                let k = k.to_ascii_lowercase();
                if k.starts_with("content-") || k.starts_with("x-") {
                    req = req.header(k.as_str(), v.as_str());
                }
            }
            match req.send(&body[..]) {
                Ok(mut r) => (
                    r.status().as_u16(),
                    r.body_mut().read_to_string().unwrap_or_default(),
                ),
                Err(e) => (502, e.to_string()),
            }
        };
        write!(
            out,
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{text}",
            text.len()
        )?;
        out.flush()?;
    }
}

#[test]
fn a_backend_failing_with_500_loses_nothing_and_a_400_is_not_retried_forever() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let prom = PrometheusBackend::start(dir, "prometheus");
    let failing = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicU64::new(0));
    let port = fault_proxy(prom.write_url(), failing.clone(), refused.clone());
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &config(&format!("http://127.0.0.1:{port}/api/v1/write")),
    );

    // While the backend fails, the gateway acknowledges into its log.
    let ts = now_ms();
    let n = 20;
    for i in 0..n {
        let body = remote_write_body(
            &[&[("__name__", "during_outage"), ("seq", &i.to_string())]],
            ts + i,
        );
        let (status, text) = post_remote_write(
            &gw.url("/api/v1/write"),
            &body,
            &[("x-scope-orgid", "acme")],
        );
        assert_eq!(status, 204, "{text}");
    }
    wait_for(
        "the backend to refuse a few retries",
        Duration::from_secs(30),
        || (refused.load(Ordering::SeqCst) >= 3).then_some(()),
    );
    assert!(
        prom.query("during_outage").is_empty(),
        "nothing got through while the backend failed"
    );
    failing.store(false, Ordering::SeqCst);
    let all = wait_for(
        "every acknowledged series in Prometheus",
        Duration::from_secs(60),
        || {
            let found = prom.query("count(during_outage)");
            let count = found.first()?["value"][1].as_str()?.parse::<i64>().ok()?;
            (count == n).then_some(count)
        },
    );
    println!(
        "{all} series delivered after {} injected 500s",
        refused.load(Ordering::SeqCst)
    );
    assert!(
        gw.metric("traceo_remote_write_retries_total")
            .unwrap_or(0.0)
            >= 3.0
    );

    // A sample from 2001 is out of bounds for Prometheus' head: a 400, never accepted.
    let old = remote_write_body(&[&[("__name__", "too_old")]], 1_000_000_000_000);
    let (status, _) =
        post_remote_write(&gw.url("/api/v1/write"), &old, &[("x-scope-orgid", "acme")]);
    assert_eq!(status, 204, "the gateway keeps it; the backend decides");
    wait_for("the 400 to be counted", Duration::from_secs(30), || {
        (gw.metric("traceo_remote_write_rejected_series_total")
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    });
    // Delivery moved on: what comes after the refused batch arrives.
    let after = remote_write_body(&[&[("__name__", "after_refusal")]], now_ms());
    let (status, _) = post_remote_write(
        &gw.url("/api/v1/write"),
        &after,
        &[("x-scope-orgid", "acme")],
    );
    assert_eq!(status, 204);
    value_of(&prom, "after_refusal");
    let log = gw.proc.log();
    assert!(
        log.contains("refused a batch for good; not retried"),
        "the refusal is logged"
    );
}

#[test]
fn a_remote_write_v2_sink_is_understood_by_a_v2_receiver() {
    // Debian's Prometheus (2.x) has no 2.0 receiver; the gateway's own 2.0 endpoint is one.
    let tmp = tempfile::tempdir().expect("temp dir");
    let (edge_dir, store_dir) = (tmp.path().join("edge"), tmp.path().join("store"));
    std::fs::create_dir_all(&edge_dir).expect("dir");
    std::fs::create_dir_all(&store_dir).expect("dir");
    let store = Gateway::start(
        GATEWAY,
        &store_dir,
        r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off, default_region: central }
regions:
  - id: central
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 200ms }
"#,
    );
    let edge = Gateway::start(
        GATEWAY,
        &edge_dir,
        &format!(
            r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
auth: {{ mode: off, default_region: eu }}
regions:
  - id: eu
    sinks:
      remote_write:
        - {{ name: store, url: "{}", format: remote_write_v2 }}
"#,
            store.url("/api/v1/write")
        ),
    );
    let ts = now_ms();
    let body = remote_write_body(
        &[
            &[("__name__", "jobs_total"), ("queue", "a")],
            &[("__name__", "jobs_total"), ("queue", "b")],
        ],
        ts,
    );
    let (status, text) = post_remote_write(
        &edge.url("/api/v1/write"),
        &body,
        &[("x-scope-orgid", "team-c")],
    );
    assert_eq!(status, 204, "{text}");
    let rows = wait_for("the forwarded rows", Duration::from_secs(30), || {
        let rows = traceo_e2e::read_rows(&store_dir.join("data"));
        (rows.len() >= 2).then_some(rows)
    });
    for r in &rows {
        assert_eq!(r.metric, "jobs_total");
        assert_eq!(r.tenant, "team-c", "the tenant header carried the tenant");
        assert_eq!(r.timestamp_ms, ts);
        assert_eq!(r.value, Some(1.0));
        // The edge's tags arrive as labels; the store keeps them as exported_*.
        assert_eq!(
            r.labels.get("exported_region").map(String::as_str),
            Some("eu")
        );
        assert_eq!(
            r.labels.get("exported_tenant").map(String::as_str),
            Some("team-c")
        );
    }
    let mut queues: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.labels.get("queue"))
        .map(String::as_str)
        .collect();
    queues.sort_unstable();
    assert_eq!(queues, ["a", "b"]);
}

//! Hostile and unlucky clients against the real binary: decode bombs (small bodies that
//! decode into millions of elements), slow and idle connections, and HTTP/2 streams that never
//! finish. Each must be refused or cut by the configured bounds, while the gateway's peak
//! resident memory (`VmHWM`) stays under a bound derived from those same bounds, and a normal
//! client sending at the same time is served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocols::DecodeLimits;
use traceo_e2e::{
    get, metric_in, now_ms, post_with, remote_write_body, wait_for, Gateway,
    REMOTE_WRITE_V1_HEADERS, REMOTE_WRITE_V2_HEADERS,
};

const BIN: &str = env!("CARGO_BIN_EXE_traceo-gateway");
const MIB: u64 = 1 << 20;
/// What the process may take beyond the bounds the test derives: the runtime, the allocator's
/// own overhead and fragmentation, code and thread stacks of a debug build.
const SLACK: u64 = 64 * MIB;

// ---------------------------------------------------------------------------------------
// Protobuf by hand: the bombs are shapes no well-behaved encoder produces.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    varint(out, (u64::from(number) << 3) | 2);
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// `n` copies of an empty length-delimited field `number`: 2 bytes each on the wire, one
/// decoded element each.
fn empties(number: u32, n: usize) -> Vec<u8> {
    let key = ((number << 3) | 2) as u8;
    [key, 0].repeat(n)
}

/// A remote-write 1.0 `WriteRequest` of one series named `bomb` carrying `inner` (already
/// encoded `TimeSeries` fields).
fn rw1(inner: &[u8]) -> Vec<u8> {
    let mut label = Vec::new();
    field(&mut label, 1, b"__name__");
    field(&mut label, 2, b"bomb");
    let mut series = Vec::new();
    field(&mut series, 1, &label);
    series.extend_from_slice(inner);
    let mut req = Vec::new();
    field(&mut req, 1, &series);
    protocols::snappy::compress(&req)
}

/// A remote-write 2.0 `Request` of one series named `bomb` carrying `inner`.
fn rw2(inner: &[u8]) -> Vec<u8> {
    let mut req = Vec::new();
    for s in ["", "__name__", "bomb"] {
        field(&mut req, 4, s.as_bytes());
    }
    let mut series = Vec::new();
    field(&mut series, 1, &[1, 2]);
    series.extend_from_slice(inner);
    field(&mut req, 5, &series);
    protocols::snappy::compress(&req)
}

/// An OTLP `ExportMetricsServiceRequest` with one metric whose data field `data_field` (5
/// gauge, 10 exponential histogram) holds `points` (encoded data point fields).
fn otlp(data_field: u32, points: &[u8]) -> Vec<u8> {
    let mut metric = Vec::new();
    field(&mut metric, 1, b"bomb");
    field(&mut metric, data_field, points);
    let mut scope = Vec::new();
    field(&mut scope, 2, &metric);
    let mut rm = Vec::new();
    field(&mut rm, 2, &scope);
    let mut req = Vec::new();
    field(&mut req, 1, &rm);
    req
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// One bomb: what it is, the URL, the headers, the body, and the limit its refusal names.
type Bomb<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Vec<u8>, &'a str);

/// The limits the bomb test configures, as the decoder sees them.
fn bomb_limits() -> DecodeLimits {
    DecodeLimits {
        max_compressed_bytes: 8 << 20,
        max_decompressed_bytes: 32 << 20,
        max_series: 10_000,
        max_labels_per_series: 32,
        max_samples: 100_000,
        max_histograms: 10_000,
        max_histogram_buckets: 100_000,
        max_exemplars: 10_000,
        max_attributes: 50_000,
        ..DecodeLimits::new_default()
    }
}

fn bomb_config(l: &DecodeLimits) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
auth: {{ mode: off, default_region: local }}
limits:
  max_body_bytes: {}
  max_decompressed_bytes: {}
  max_series_per_request: {}
  max_labels_per_series: {}
  max_samples_per_request: {}
  max_histograms_per_request: {}
  max_histogram_buckets_per_request: {}
  max_exemplars_per_request: {}
  max_attributes_per_request: {}
otlp: {{ grpc_listen: null, http_listen: null }}
durability: {{ dir: "{{dir}}/wal" }}
regions:
  - id: local
    sinks: {{ null: {{}} }}
"#,
        l.max_compressed_bytes,
        l.max_decompressed_bytes,
        l.max_series,
        l.max_labels_per_series,
        l.max_samples,
        l.max_histograms,
        l.max_histogram_buckets,
        l.max_exemplars,
        l.max_attributes,
    )
}

/// Requests the gateway refused for `reason`, over every protocol and tenant.
fn rejections(gw: &Gateway, reason: &str) -> f64 {
    let page = get(&gw.url("/metrics")).map(|(_, p)| p).unwrap_or_default();
    let needle = format!("reason=\"{reason}\"");
    page.lines()
        .filter(|l| l.starts_with("traceo_rejections_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Records in the region's log now.
fn wal_records(gw: &Gateway) -> f64 {
    gw.metric("traceo_wal_records").unwrap_or(0.0)
}

#[test]
fn decode_bombs_are_refused_413_within_a_memory_bound_derived_from_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = bomb_limits();
    let mut gw = Gateway::start(BIN, dir.path(), &bomb_config(&limits));
    let write = gw.url("/api/v1/write");
    let otlp_url = gw.url("/v1/metrics");
    // A normal request first, so the baseline includes warmed-up buffers and threads.
    let ok = post_with(
        &write,
        &remote_write_body(&[&[("__name__", "up")]], now_ms()),
        &REMOTE_WRITE_V1_HEADERS,
    );
    assert_eq!(ok.status, 204, "{}", ok.body);
    // Delivered and its cursor persisted (every 200 ms), so a restart has nothing of it to
    // replay either.
    wait_for(
        "the warm-up record delivered",
        Duration::from_secs(20),
        || (gw.metric("traceo_delivery_records_total").unwrap_or(0.0) >= 1.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let records = wal_records(&gw);
    let base = gw.proc.peak_rss_bytes();
    // Each bomb passes one element limit; the decode stops there, so it holds the body, the
    // decompressed buffer and at most what the element limits let through (each column a
    // doubling Vec: 4 slots per element at worst). `worst_case_decoded_bytes` is the proven
    // bound for any body (labels included, bounded by the decompressed size) and is printed
    // beside it; the test holds the tighter one, which the unbounded decode of any of these
    // bombs would pass many times over.
    let elements = 4
        * (limits.max_samples * std::mem::size_of::<protocols::Sample>()
            + limits.max_histograms * std::mem::size_of::<protocols::Histogram>()
            + limits.max_histogram_buckets * 8
            + limits.max_exemplars * 32
            + limits.max_attributes * 128
            + limits.max_series * 64) as u64;
    let bound = base
        + limits.max_compressed_bytes as u64
        + limits.max_decompressed_bytes as u64
        + elements
        + SLACK;
    println!(
        "baseline VmHWM {} MiB; bound {} MiB = baseline + body {} MiB + decompressed {} MiB + elements the limits let through {} MiB + slack {} MiB (the any-body worst case of the limits is {} MiB)",
        base / MIB,
        bound / MIB,
        limits.max_compressed_bytes as u64 / MIB,
        limits.max_decompressed_bytes as u64 / MIB,
        elements / MIB,
        SLACK / MIB,
        limits.worst_case_decoded_bytes() as u64 / MIB,
    );
    // Each bomb: what it is, where it goes, its headers, its body, and the limit it must name.
    let mut bucket_bomb = Vec::new();
    {
        // One histogram with 3 M zero bucket deltas (packed, one byte each).
        let mut h = Vec::new();
        field(&mut h, 12, &vec![0u8; 3_000_000]);
        field(&mut bucket_bomb, 4, &h);
    }
    let mut attribute_points = Vec::new();
    {
        // 10k number points with 100 empty attributes each: 1 M attributes.
        let mut point = Vec::new();
        point.extend_from_slice(&empties(7, 100));
        for _ in 0..10_000 {
            field(&mut attribute_points, 1, &point);
        }
    }
    let gauge_points = {
        let mut g = Vec::new();
        g.extend_from_slice(&empties(1, 2_000_000));
        g
    };
    let json = {
        let mut j = String::from(
            r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"bomb","gauge":{"dataPoints":["#,
        );
        j.push_str(&"{},".repeat(1_000_000));
        j.push_str(r#"{}]}}]}]}]}"#);
        j.into_bytes()
    };
    let otlp_pb = [("content-type", "application/x-protobuf")];
    let otlp_gz = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
    ];
    let otlp_json = [("content-type", "application/json")];
    let bombs: Vec<Bomb<'_>> = vec![
        (
            "rw1 2M empty histograms",
            &write,
            &REMOTE_WRITE_V1_HEADERS,
            rw1(&empties(4, 2_000_000)),
            "max_histograms_per_request",
        ),
        (
            "rw1 8M empty samples",
            &write,
            &REMOTE_WRITE_V1_HEADERS,
            rw1(&empties(2, 8_000_000)),
            "max_samples_per_request",
        ),
        (
            "rw1 2M empty exemplars",
            &write,
            &REMOTE_WRITE_V1_HEADERS,
            rw1(&empties(3, 2_000_000)),
            "max_exemplars_per_request",
        ),
        (
            "rw1 3M histogram buckets",
            &write,
            &REMOTE_WRITE_V1_HEADERS,
            rw1(&bucket_bomb),
            "max_histogram_buckets_per_request",
        ),
        (
            "rw2 2M empty histograms",
            &write,
            &REMOTE_WRITE_V2_HEADERS,
            rw2(&empties(3, 2_000_000)),
            "max_histograms_per_request",
        ),
        (
            "rw2 8M empty samples",
            &write,
            &REMOTE_WRITE_V2_HEADERS,
            rw2(&empties(2, 8_000_000)),
            "max_samples_per_request",
        ),
        (
            "rw2 2M empty exemplars",
            &write,
            &REMOTE_WRITE_V2_HEADERS,
            rw2(&empties(4, 2_000_000)),
            "max_exemplars_per_request",
        ),
        (
            "otlp 2M empty gauge points",
            &otlp_url,
            &otlp_pb,
            otlp(5, &gauge_points),
            "max_samples_per_request",
        ),
        (
            "otlp 2M empty exponential histogram points",
            &otlp_url,
            &otlp_pb,
            otlp(10, &gauge_points),
            "max_histograms_per_request",
        ),
        (
            "otlp 1M empty attributes",
            &otlp_url,
            &otlp_pb,
            otlp(5, &attribute_points),
            "max_attributes_per_request",
        ),
        (
            "otlp gzip 2M empty gauge points",
            &otlp_url,
            &otlp_gz,
            gzip(&otlp(5, &gauge_points)),
            "max_samples_per_request",
        ),
        (
            "otlp json 1M empty gauge points",
            &otlp_url,
            &otlp_json,
            json,
            "max_",
        ),
    ];
    for (what, url, headers, body, limit) in bombs {
        assert!(
            body.len() <= limits.max_compressed_bytes,
            "{what}: the bomb itself ({} bytes) must pass the body limit",
            body.len()
        );
        let a = post_with(url, &body, headers);
        let peak = gw.proc.peak_rss_bytes();
        println!(
            "{what}: {} byte body -> {} {:?}; VmHWM {} MiB",
            body.len(),
            a.status,
            a.body.trim(),
            peak / MIB
        );
        assert_eq!(a.status, 413, "{what}: {}", a.body);
        assert!(
            a.body.contains(limit),
            "{what} must name {limit}: {}",
            a.body
        );
        assert!(
            peak <= bound,
            "{what}: peak RSS {} MiB is over the bound of {} MiB",
            peak / MIB,
            bound / MIB
        );
        assert_eq!(
            wal_records(&gw),
            records,
            "{what}: something reached the log"
        );
    }
    // Nothing was acknowledged, so a restart (even a crash) has nothing to replay.
    gw.kill9_and_restart(BIN, "restart.log");
    let replayed = gw
        .metric("traceo_wal_replayed_records_total")
        .unwrap_or(0.0);
    println!("after kill -9 and restart: {replayed} records replayed");
    assert_eq!(replayed, 0.0, "the restarted gateway replayed records");
}

// ---------------------------------------------------------------------------------------
// Slow, idle and unfinished clients.

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How much later than its deadline a cut may come: the timers' own granularity plus a
/// loaded 2-core machine scheduling a few hundred threads.
const CUT_SLACK: Duration = Duration::from_secs(4);
const INFLIGHT: u64 = 48 * MIB;
const MAX_BODY: u64 = 4 * MIB;
const H2_STREAMS: u32 = 50;

fn slow_config() -> String {
    format!(
        r#"
listen:
  http: "127.0.0.1:{{port}}"
  max_connections: 2000
  header_read_timeout: {}ms
  body_read_timeout: {}ms
  idle_timeout: {}ms
  http2_max_concurrent_streams: {H2_STREAMS}
  max_inflight_bytes: {INFLIGHT}
auth: {{ mode: off, default_region: local }}
limits: {{ max_body_bytes: {MAX_BODY} }}
otlp: {{ grpc_listen: null, http_listen: null }}
durability: {{ dir: "{{dir}}/wal" }}
regions:
  - id: local
    sinks: {{ null: {{}} }}
"#,
        HEADER_TIMEOUT.as_millis(),
        BODY_TIMEOUT.as_millis(),
        IDLE_TIMEOUT.as_millis(),
    )
}

/// How a raw connection ended: the time from its start to the server closing it, and the
/// first bytes the server sent (a status line, if it answered).
struct Cut {
    after: Duration,
    answer: String,
}

/// Runs `drip` on a fresh connection: it writes what it wants, one piece per call, until the
/// server closes the connection; returns when and how it was cut, or panics after `limit`.
fn until_cut(port: u16, limit: Duration, mut drip: impl FnMut(u32) -> Option<Vec<u8>>) -> Cut {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for round in 0.. {
        if let Some(piece) = drip(round) {
            if s.write_all(&piece).is_err() {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        assert!(
            started.elapsed() < limit,
            "connection still open after {limit:?}"
        );
    }
    Cut {
        after: started.elapsed(),
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

/// Runs `n` clients of one kind on threads; returns their cuts.
fn clients(
    n: usize,
    port: u16,
    limit: Duration,
    drip: impl Fn(u32) -> Option<Vec<u8>> + Send + Sync + Clone + 'static,
) -> std::thread::JoinHandle<Vec<Cut>> {
    std::thread::spawn(move || {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let drip = drip.clone();
                std::thread::spawn(move || until_cut(port, limit, drip))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

/// An HTTP/2 request body that sends `first` bytes and then never finishes.
struct Stalled {
    first: Option<bytes::Bytes>,
}

impl hyper::body::Body for Stalled {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// Opens one h2c connection with `streams` remote-write requests that each declare the
/// largest body and send 256 KiB of it; returns the status of every stream (0 for a stream the
/// server reset or refused) once all have ended.
async fn unfinished_h2_streams(port: u16, streams: usize) -> Vec<u16> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("http://127.0.0.1:{port}/api/v1/write"))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .header("content-length", MAX_BODY.to_string())
                .body(Stalled {
                    first: Some(bytes::Bytes::from(vec![0u8; 256 * 1024])),
                })
                .expect("request");
            if sender.ready().await.is_err() {
                return 0;
            }
            match sender.send_request(req).await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or(0));
    }
    out
}

fn http1_request(body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut r = format!(
        "POST /api/v1/write HTTP/1.1\r\nhost: gw\r\ncontent-type: application/x-protobuf\r\ncontent-encoding: snappy\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn slow_idle_and_unfinished_clients_are_cut_while_a_normal_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(BIN, dir.path(), &slow_config());
    let port = gw.port;
    let write = gw.url("/api/v1/write");
    let ok = post_with(
        &write,
        &remote_write_body(&[&[("__name__", "up")]], now_ms()),
        &REMOTE_WRITE_V1_HEADERS,
    );
    assert_eq!(ok.status, 204, "{}", ok.body);
    let base = gw.proc.peak_rss_bytes();

    // A normal client, posting all along; every answer must be a 204.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let normal = {
        let (stop, sent, failed, write) =
            (stop.clone(), sent.clone(), failed.clone(), write.clone());
        std::thread::spawn(move || {
            let agent = traceo_e2e::http();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body =
                    remote_write_body(&[&[("__name__", "normal"), ("job", "e2e")]], now_ms());
                let r = traceo_e2e::try_post_with(&agent, &write, &body, &REMOTE_WRITE_V1_HEADERS);
                sent.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(a) if a.status == 204 => {}
                    Ok(a) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        statuses.push(format!("{} {}", a.status, a.body.trim()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        statuses.push(e.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            statuses
        })
    };

    let header_limit = HEADER_TIMEOUT + CUT_SLACK;
    let slow_headers = clients(100, port, header_limit + CUT_SLACK, |round| {
        Some(if round == 0 {
            b"POST /api/v1/write HTTP/1.1\r\nhost: gw\r\n".to_vec()
        } else {
            format!("x-slow-{round}: 1\r\n").into_bytes()
        })
    });
    let silent = clients(100, port, header_limit + CUT_SLACK, |_| None);
    let slow_bodies = clients(100, port, BODY_TIMEOUT + CUT_SLACK * 2, |round| {
        Some(if round == 0 {
            b"POST /api/v1/write HTTP/1.1\r\nhost: gw\r\ncontent-type: application/x-protobuf\r\ncontent-encoding: snappy\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()
        } else {
            // Chunked, so the body is charged to the budget as it arrives, not up front.
            let mut chunk = b"64\r\n".to_vec();
            chunk.extend_from_slice(&[0u8; 100]);
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
    });
    let good = remote_write_body(&[&[("__name__", "idle_client")]], now_ms());
    let idle = clients(100, port, IDLE_TIMEOUT + CUT_SLACK * 2, move |round| {
        (round == 0).then(|| http1_request(&good, true))
    });
    let h2 = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let a = tokio::spawn(unfinished_h2_streams(port, 200));
                let b = tokio::spawn(unfinished_h2_streams(port, 200));
                let mut all = a.await.expect("h2 client");
                all.extend(b.await.expect("h2 client"));
                all
            })
    });

    let report = |what: &str, cuts: &[Cut], deadline: Duration| {
        let slowest = cuts.iter().map(|c| c.after).max().unwrap_or_default();
        println!(
            "{what}: {} connections, all cut; slowest after {:.1} s (deadline {:.1} s)",
            cuts.len(),
            slowest.as_secs_f64(),
            deadline.as_secs_f64()
        );
        assert!(
            slowest <= deadline + CUT_SLACK,
            "{what}: a connection lasted {slowest:?}"
        );
    };
    let cuts = slow_headers.join().expect("slow headers");
    report("slow headers", &cuts, HEADER_TIMEOUT);
    let cuts = silent.join().expect("silent");
    report("connected, never sent", &cuts, HEADER_TIMEOUT);
    let cuts = slow_bodies.join().expect("slow bodies");
    report("slow bodies", &cuts, BODY_TIMEOUT);
    // The 408 is sent, then the connection closed while the client is still sending: TCP
    // then resets it, and a client may lose the 408 to the reset before reading it. What it
    // read, if anything, is the 408; the gateway counts every one it sent.
    let seen = cuts
        .iter()
        .filter(|c| c.answer.starts_with("HTTP/1.1 408"))
        .count();
    assert!(
        cuts.iter()
            .all(|c| c.answer.is_empty() || c.answer.starts_with("HTTP/1.1 408")),
        "a slow body got another answer: {:?}",
        cuts.iter()
            .map(|c| &c.answer)
            .find(|a| !a.is_empty() && !a.starts_with("HTTP/1.1 408"))
    );
    let sent_408 = rejections(&gw, "body_timeout");
    println!(
        "slow bodies: {seen} of {} read their 408 before the reset; the gateway has answered {sent_408} requests 408 so far (slow bodies and unfinished h2 streams)",
        cuts.len()
    );
    assert!(
        sent_408 >= cuts.len() as f64,
        "every slow body is answered 408"
    );
    let cuts = idle.join().expect("idle");
    report("idle keep-alive", &cuts, IDLE_TIMEOUT);
    assert!(cuts.iter().all(|c| c.answer.starts_with("HTTP/1.1 204")));
    let statuses = h2.join().expect("h2 clients");
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    println!(
        "h2 unfinished streams: {} total; 408 {}, 503 {}, refused or reset {}",
        statuses.len(),
        count(408),
        count(503),
        count(0)
    );
    assert!(
        statuses.iter().all(|s| matches!(s, 0 | 408 | 503)),
        "an unfinished stream got {statuses:?}"
    );
    assert!(
        count(408) > 0,
        "the body deadline must end unfinished streams"
    );

    stop.store(true, Ordering::Relaxed);
    let bad = normal.join().expect("normal client");
    let peak = gw.proc.peak_rss_bytes();
    let connections = 400 + 2;
    let bound = base + INFLIGHT + connections * 256 * 1024 + 2 * 2 * MIB + SLACK;
    println!(
        "normal client: {} requests, {} not 204; VmHWM {} MiB (baseline {} MiB, bound {} MiB = baseline + in-flight budget {} MiB + {} connections x 256 KiB + 2 h2 windows x 2 MiB + slack {} MiB)",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        peak / MIB,
        base / MIB,
        bound / MIB,
        INFLIGHT / MIB,
        connections,
        SLACK / MIB
    );
    assert!(bad.is_empty(), "the normal client was refused: {bad:?}");
    assert!(
        sent.load(Ordering::Relaxed) > 20,
        "the normal client barely ran"
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB over {} MiB",
        peak / MIB,
        bound / MIB
    );
    let page = get(&gw.url("/metrics")).unwrap().1;
    assert!(
        metric_in(&page, "traceo_connections_closed_total").unwrap_or(0.0) >= 100.0,
        "idle closes are counted"
    );
}

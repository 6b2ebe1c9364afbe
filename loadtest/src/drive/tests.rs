//! The runner against an in-process server on a loopback port: answers by tenant, optional
//! delay, gRPC status in trailers or trailers-only.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;

use http::StatusCode;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper_util::server::conn::auto;

use super::*;
use crate::acks;
use crate::gen::{Generator, PayloadSpec};
use crate::wire;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    /// Highest number of requests in flight at once.
    max_concurrent: AtomicU64,
    concurrent: AtomicU64,
}

/// A server that answers by tenant: `*-1` is refused (429 with `Retry-After: 7`, or gRPC
/// UNAVAILABLE in trailers), `*-2` gets a trailers-only gRPC UNAVAILABLE with
/// `Retry-After: soon` (unparsable), others succeed after `delay`.
async fn server(delay: Duration) -> (std::net::SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = Arc::clone(&s);
                    async move { Ok::<_, Infallible>(answer(req, &s, delay).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn answer(
    req: Request<Incoming>,
    s: &Seen,
    delay: Duration,
) -> Response<BoxBody<Bytes, Infallible>> {
    s.requests.fetch_add(1, Relaxed);
    let now = s.concurrent.fetch_add(1, Relaxed) + 1;
    s.max_concurrent.fetch_max(now, Relaxed);
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/grpc");
    let tenant = req
        .headers()
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let _ = req.into_body().collect().await;
    tokio::time::sleep(delay).await;
    s.concurrent.fetch_sub(1, Relaxed);
    let empty = || Full::new(Bytes::new()).boxed();
    if !grpc {
        if tenant.ends_with("-1") {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", "7")
                .body(empty())
                .unwrap();
        }
        return Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .unwrap();
    }
    if tenant.ends_with("-2") {
        return Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("retry-after", "soon")
            .body(empty())
            .unwrap();
    }
    let code = if tenant.ends_with("-1") { "14" } else { "0" };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(code));
    let message = protocols::otlp::proto::ExportMetricsServiceResponse::default().encode_to_vec();
    let body = Full::new(Bytes::from(wire::grpc_frame(&message, false)))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

fn rings(protocol: Protocol, connections: usize, bodies: usize) -> Vec<Vec<Body>> {
    (0..connections)
        .map(|c| {
            let mut g = Generator::new(PayloadSpec {
                series: 40,
                series_per_request: 10,
                labels_per_series: 6,
                seed: c as u64,
            });
            (0..bodies)
                .map(|i| {
                    let seq = (c + i * connections) as i64;
                    wire::encode(protocol, false, &g.next_payload(1_000_000 + seq))
                })
                .collect()
        })
        .collect()
}

fn plan(addr: std::net::SocketAddr, protocol: Protocol, tenants: usize) -> Plan {
    let path = if protocol.is_grpc() {
        wire::GRPC_EXPORT_PATH
    } else {
        "/api/v1/write"
    };
    Plan {
        target: Target {
            tls: None,
            protocol,
            uri: format!("http://{addr}{path}").parse().unwrap(),
            http2: false,
            headers: wire::headers(protocol, false),
        },
        connections: 2,
        max_in_flight: 1,
        pace: Pace::Closed,
        duration: Duration::from_secs(5),
        requests: Some(20),
        timeout: Duration::from_secs(5),
        tenants: (0..tenants)
            .map(|i| HeaderValue::from_str(&format!("t-{i}")).unwrap())
            .collect(),
        acks: None,
    }
}

async fn go(plan: Plan, rings: Vec<Vec<Body>>) -> Outcome {
    run(
        Arc::new(plan),
        rings,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn closed_loop_sends_the_requested_count_and_counts_codes_per_tenant() {
    let (addr, seen) = server(Duration::ZERO).await;
    let out = go(
        plan(addr, Protocol::RemoteWriteV1, 2),
        rings(Protocol::RemoteWriteV1, 2, 4),
    )
    .await;
    let s = &out.stats;
    assert_eq!(s.requests, 20);
    assert_eq!(seen.requests.load(Relaxed), 20);
    // seq c + n*2: connection 0 sends even seqs (tenant t-0), connection 1 odd ones (t-1).
    assert_eq!(s.codes[&Code::Http(204)], 10);
    assert_eq!(s.codes[&Code::Http(429)], 10);
    assert_eq!(s.samples_acked, 100);
    assert_eq!(s.latency_us.len(), 20);
}

#[tokio::test]
async fn retry_after_is_counted_on_answers_that_carry_it() {
    let (addr, _) = server(Duration::ZERO).await;
    let out = go(
        plan(addr, Protocol::RemoteWriteV1, 2),
        rings(Protocol::RemoteWriteV1, 2, 4),
    )
    .await;
    // The 10 answers of t-1 are 429 with `Retry-After: 7`; the 204s carry none.
    assert_eq!(out.stats.retry_after_answers, 10);
    assert_eq!(out.stats.retry_after_max_s, Some(7));
}

#[tokio::test]
async fn grpc_status_is_read_from_trailers_and_from_trailers_only_answers() {
    let (addr, _) = server(Duration::ZERO).await;
    let mut p = plan(addr, Protocol::OtlpGrpc, 3);
    p.requests = Some(30);
    p.connections = 3;
    let out = go(p, rings(Protocol::OtlpGrpc, 3, 2)).await;
    let s = &out.stats;
    assert_eq!(s.requests, 30);
    assert_eq!(s.codes[&Code::Grpc(0)], 10, "{:?}", s.codes);
    assert_eq!(s.codes[&Code::Grpc(14)], 20, "{:?}", s.codes);
    assert_eq!(s.acked, 10);
    // t-2's trailers-only answers carry an unparsable `Retry-After`: counted, no delay.
    assert_eq!(s.retry_after_answers, 10);
    assert_eq!(s.retry_after_max_s, None);
}

#[tokio::test]
async fn http2_carries_several_requests_per_connection() {
    let (addr, seen) = server(Duration::from_millis(50)).await;
    let mut p = plan(addr, Protocol::RemoteWriteV2, 1);
    p.target.http2 = true;
    p.connections = 1;
    p.max_in_flight = 4;
    p.requests = Some(16);
    let out = go(p, rings(Protocol::RemoteWriteV2, 1, 4)).await;
    assert_eq!(out.stats.codes[&Code::Http(204)], 16);
    assert_eq!(seen.max_concurrent.load(Relaxed), 4);
}

#[tokio::test]
async fn open_loop_keeps_its_timetable_and_counts_late_requests() {
    // 20 requests/s over 2 connections for 0.5 s: 10 requests, one every 100 ms per
    // connection, staggered by 50 ms. A fast server: none late.
    let (addr, _) = server(Duration::ZERO).await;
    let mut p = plan(addr, Protocol::RemoteWriteV1, 1);
    p.requests = None;
    p.duration = Duration::from_millis(500);
    p.pace = Pace::Open {
        requests_per_s: 20.0,
    };
    let out = go(p.clone(), rings(Protocol::RemoteWriteV1, 2, 4)).await;
    let s = &out.stats;
    assert_eq!(s.requests + s.unsent, 10);
    // The last one is due 50 ms before the end; only a starved runtime misses it.
    assert!(s.requests >= 9, "requests {}", s.requests);
    assert_eq!(s.late, 0);
    assert!(
        out.elapsed >= Duration::from_millis(400),
        "{:?}",
        out.elapsed
    );

    // 40 requests/s: one every 50 ms per connection, 20 in all.
    p.pace = Pace::Open {
        requests_per_s: 40.0,
    };
    // A server that takes 120 ms per request, one in flight per connection: most requests
    // wait for a slot, and their latency counts from when they were due.
    let (addr, _) = server(Duration::from_millis(120)).await;
    p.target.uri = format!("http://{addr}/api/v1/write").parse().unwrap();
    let out = go(p, rings(Protocol::RemoteWriteV1, 2, 4)).await;
    let s = &out.stats;
    assert!(s.late >= 5, "late {}", s.late);
    assert_eq!(
        s.requests + s.unsent,
        20,
        "requests {} unsent {}",
        s.requests,
        s.unsent
    );
    assert!(s.unsent > 0);
    assert!(s.latency_ms(1.0) > 200.0, "max {}", s.latency_ms(1.0));
}

#[tokio::test]
async fn acks_are_recorded_once_per_acknowledged_request_with_its_timestamp() {
    let (addr, _) = server(Duration::ZERO).await;
    let dir = std::env::temp_dir().join(format!("loadgen-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acks.txt");
    let _ = std::fs::remove_file(&path);
    let mut p = plan(addr, Protocol::OtlpHttp, 2);
    p.requests = Some(12);
    p.acks = Some(Arc::new(AckWriter::open(&path, "test=1").unwrap()));
    // Rings longer than needed; with acks no body is reused anyway.
    let out = go(p.clone(), rings(Protocol::OtlpHttp, 2, 6)).await;
    p.acks.as_ref().unwrap().flush().unwrap();
    assert_eq!(out.stats.acked, 6);
    let mut got = acks::read(&path).unwrap();
    got.sort_by_key(|a| a.seq);
    let seqs: Vec<u64> = got.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![0, 2, 4, 6, 8, 10]);
    assert!(got.iter().all(|a| a.tenant == "t-0"));
    assert!(got
        .iter()
        .all(|a| a.timestamp_ms == 1_000_000 + a.seq as i64));
    // 10 series in one resource: 10 samples and one target_info.
    assert!(got.iter().all(|a| a.samples == 11));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn with_acks_a_ring_is_never_reused() {
    let (addr, seen) = server(Duration::ZERO).await;
    let dir = std::env::temp_dir().join(format!("loadgen-reuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = plan(addr, Protocol::RemoteWriteV1, 1);
    p.requests = Some(100);
    p.acks = Some(Arc::new(AckWriter::open(&dir.join("a"), "").unwrap()));
    let out = go(p, rings(Protocol::RemoteWriteV1, 2, 3)).await;
    assert_eq!(out.stats.requests, 6);
    assert_eq!(seen.requests.load(Relaxed), 6);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_gateway_that_is_down_counts_connect_errors_and_the_run_ends() {
    // Bind and drop: the port is free and nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = plan(addr, Protocol::RemoteWriteV1, 1);
    p.requests = None;
    p.duration = Duration::from_millis(350);
    let out = go(p, rings(Protocol::RemoteWriteV1, 2, 1)).await;
    let s = &out.stats;
    let connect = s.codes.get(&Code::Connect).copied().unwrap_or(0);
    assert!(connect >= 2, "{:?}", s.codes);
    // The backoff keeps it from spinning: about 4 tries per connection in 350 ms.
    assert!(connect <= 2 * 6, "{:?}", s.codes);
    assert_eq!(s.acked, 0);
    assert!(s.latency_us.is_empty());
}

//! `traceo-loadgen`: sends realistic remote-write 1.0 traffic from a fixed seed and reports
//! achieved samples/s, latency percentiles and answers by status code.
//!
//! Closed loop: each connection sends its next request as soon as the previous one is
//! answered. Bodies are generated up front (a ring per connection) so the generator's own CPU
//! does not limit the rate it measures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadtest::gen::{Generator, PayloadSpec};

#[derive(Parser, Debug)]
#[command(
    name = "traceo-loadgen",
    version,
    about = "Remote-write load generator"
)]
struct Args {
    /// Remote-write endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/v1/write")]
    url: String,
    /// Tenant, sent as X-Scope-OrgID.
    #[arg(long, default_value = "loadgen")]
    tenant: String,
    /// Distinct series in the pool.
    #[arg(long, default_value_t = 20_000)]
    series: usize,
    /// Series (one sample each) per request.
    #[arg(long, default_value_t = 2000)]
    series_per_request: usize,
    /// Labels per series, __name__ included.
    #[arg(long, default_value_t = 10)]
    labels: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run time in seconds (ignored when --requests is set).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Distinct bodies generated per connection, then reused in a ring.
    #[arg(long, default_value_t = 16)]
    bodies: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    codes: BTreeMap<String, u64>,
    samples_ok: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.series_per_request == 0 {
        bail!("--connections and --series-per-request must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let uri: http::Uri = args.url.parse().context("--url")?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.connections)
        .build_http();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis() as i64;
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        args.requests.unwrap_or(u64::MAX),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let mut gen = Generator::new(PayloadSpec {
            series: args.series,
            series_per_request: args.series_per_request,
            labels_per_series: args.labels,
            seed: args.seed.wrapping_add(c as u64),
        });
        let bodies: Vec<Bytes> = (0..args.bodies.max(1))
            .map(|i| Bytes::from(gen.next_body(now_ms + i as i64)))
            .collect();
        let client = client.clone();
        let uri = uri.clone();
        let tenant = args.tenant.clone();
        let budget = budget.clone();
        let per_request = args.series_per_request as u64;
        let use_deadline = args.requests.is_none();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut i = 0usize;
            loop {
                if use_deadline && Instant::now() >= deadline {
                    break;
                }
                if budget
                    .fetch_update(
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                        |b| b.checked_sub(1),
                    )
                    .is_err()
                {
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let req = http::Request::post(uri.clone())
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "snappy")
                    .header("x-prometheus-remote-write-version", "0.1.0")
                    .header("x-scope-orgid", tenant.as_str())
                    .body(Full::new(body))
                    .expect("static request is valid");
                let t0 = Instant::now();
                let code = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        if status.is_success() {
                            stats.samples_ok += per_request;
                        }
                        status.as_u16().to_string()
                    }
                    Err(_) => "connection_error".to_string(),
                };
                stats.latencies.push(t0.elapsed());
                *stats.codes.entry(code).or_default() += 1;
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        let s = t.await.context("connection task")?;
        all.latencies.extend(s.latencies);
        all.samples_ok += s.samples_ok;
        for (k, v) in s.codes {
            *all.codes.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies.is_empty() {
            return 0.0;
        }
        let idx = ((all.latencies.len() as f64 - 1.0) * p).round() as usize;
        all.latencies[idx].as_secs_f64() * 1000.0
    };
    let report = serde_json::json!({
        "url": args.url,
        "connections": args.connections,
        "series_per_request": args.series_per_request,
        "labels_per_series": args.labels,
        "elapsed_s": elapsed,
        "requests": all.latencies.len(),
        "codes": all.codes,
        "samples_acknowledged": all.samples_ok,
        "samples_per_s": all.samples_ok as f64 / elapsed,
        "latency_ms": { "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "p999": pct(0.999) },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} requests in {:.2}s, {:.0} samples/s acknowledged; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2}; codes {:?}",
            all.latencies.len(),
            elapsed,
            all.samples_ok as f64 / elapsed,
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(0.999),
            all.codes
        );
    }
    Ok(())
}

//! `traceo-loadgen`: sends realistic remote-write 1.0/2.0 or OTLP (HTTP, gRPC) traffic from a
//! fixed seed and reports achieved samples/s, latency percentiles (HDR histogram) and answers
//! by status code, as a line or as JSON (`--json`).
//!
//! Closed loop (default): each connection keeps `--max-in-flight` requests outstanding.
//! Open loop (`--rate`): requests on a fixed timetable, latency measured from the scheduled
//! send time (see `loadtest::drive`). Bodies are generated before the clock starts (a ring
//! per connection) so the generator's own CPU does not limit the rate it measures; with
//! `--record-acks` every request gets its own body (see `loadtest::acks` for the file).
//!
//! Per tenant (`--tenant-rate TENANT=SAMPLES_PER_S`, repeated): each tenant is an open loop of
//! its own, with its own `--connections` and its own series, all at once, so a test of
//! per-tenant rate limits can hold one tenant over its limit and another under it in the
//! same run and read each one's answers apart (`per_tenant` in the JSON report). Answers that
//! carry `Retry-After` are counted, with the longest delay asked for, per tenant and in all.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use http::HeaderValue;
use loadtest::acks::AckWriter;
use loadtest::drive::{self, Outcome, Pace, Plan, Progress, Target};
use loadtest::gen::{Generator, HistogramKind, PayloadSpec, Shape, DEFAULT_HISTOGRAM_FRACTION};
use loadtest::report::Stats;
use loadtest::wire::{self, Body, Protocol};
use tokio_util::sync::CancellationToken;

/// Memory the distinct bodies of a `--record-acks` run may take, all generated up front;
/// a quarter of the 24 GiB the project's machines have, leaving room for a local gateway.
const RECORD_BODIES_MAX_BYTES: u64 = 6 << 30;

/// `--tenant`'s default; `--tenant-rate` names its tenants itself and refuses any other.
const DEFAULT_TENANT: &str = "loadgen";

#[derive(Parser, Debug)]
#[command(
    name = "traceo-loadgen",
    version,
    about = "Remote-write 1.0/2.0 and OTLP load generator",
    after_help = "Examples:\n  traceo-loadgen --duration 10 --json\n  \
        traceo-loadgen --protocol otlp-grpc --tenants 4 --histograms native --rate 200000\n  \
        traceo-loadgen --requests 1000 --record-acks acks.txt\n  \
        traceo-loadgen --tenant-rate team-a=20000 --tenant-rate team-b=5000 --duration 30 --json"
)]
struct Args {
    /// Protocol: rw1 (remote-write 1.0), rw2 (remote-write 2.0), otlp-http, otlp-grpc.
    #[arg(long, default_value = "rw1")]
    protocol: Protocol,
    /// Endpoint. Default: http://127.0.0.1:8080/api/v1/write (rw1, rw2),
    /// http://127.0.0.1:4318/v1/metrics (otlp-http), http://127.0.0.1:4317 (otlp-grpc; the
    /// Export method's path is appended when the URL has none).
    #[arg(long)]
    url: Option<String>,
    /// Tenant, sent as X-Scope-OrgID; with --tenants, the prefix of the tenant ids.
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Spread requests over this many tenants, TENANT-0 .. TENANT-(N-1), round robin.
    #[arg(long)]
    tenants: Option<usize>,
    /// Distinct series in the pool, over all connections (each connection sends its own
    /// share, never the same series as another); with --tenant-rate, per tenant.
    #[arg(long, default_value_t = 20_000)]
    series: usize,
    /// Series (one point each) per request.
    #[arg(long, default_value_t = 2000)]
    series_per_request: usize,
    /// Labels per series, __name__ included (2..=16).
    #[arg(long, default_value_t = 10)]
    labels: usize,
    /// Pad or cut every label value (except __name__; instance is never cut) to this many
    /// bytes.
    #[arg(long)]
    value_len: Option<usize>,
    /// Fraction of the pool (0..=1) replaced by new series after each pass over it.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Histograms in the pool: none, classic (le buckets; OTLP explicit bounds) or native
    /// (OTLP exponential).
    #[arg(long, default_value = "none")]
    histograms: HistogramKind,
    /// Fraction of the pool's series (0..=1) that are histograms.
    #[arg(long, default_value_t = DEFAULT_HISTOGRAM_FRACTION)]
    histogram_fraction: f64,
    /// Concurrent connections; with --tenant-rate, per tenant.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Outstanding requests per connection; more than 1 needs HTTP/2 (--http2 or otlp-grpc).
    #[arg(long, default_value_t = 1)]
    max_in_flight: usize,
    /// HTTP/2 (h2c with prior knowledge, or ALPN `h2` over TLS) for rw1, rw2 and otlp-http
    /// (otlp-grpc always is).
    #[arg(long)]
    http2: bool,
    /// With an https:// URL: the CA bundle (PEM) the gateway's certificate must chain to.
    /// Default: the system bundle ($SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With an https:// URL: a client certificate chain (PEM) for mTLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Open loop: target samples per second over all connections, on a fixed timetable.
    /// Without it the run is closed loop at maximum speed.
    #[arg(long, value_name = "SAMPLES_PER_S")]
    rate: Option<f64>,
    /// Open loop per tenant, repeated for each: TENANT (sent as X-Scope-OrgID) gets this
    /// many samples per second on --connections connections of its own, from a --series pool
    /// of its own (never a series another tenant sends), all tenants at once for --duration.
    /// The report adds `per_tenant`. Excludes --rate, --tenants, --tenant, --requests and
    /// --record-acks.
    #[arg(long, value_name = "TENANT=SAMPLES_PER_S")]
    tenant_rate: Vec<String>,
    /// Run time in seconds (closed loop ignores it when --requests is set).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests in total, split evenly over connections.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds to wait for a complete answer before counting a request as a timeout.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Distinct bodies generated per connection, then reused in a ring.
    #[arg(long, default_value_t = 16)]
    bodies: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compress OTLP bodies with gzip (Content-Encoding, or grpc-encoding for gRPC).
    #[arg(long)]
    gzip: bool,
    /// Append one line per acknowledged request to FILE: `seq tenant timestamp_ms samples`.
    /// Every request then has its own body; needs --requests or --rate.
    #[arg(long, value_name = "FILE")]
    record_acks: Option<PathBuf>,
    /// Send nothing: decode this run's bodies in a loop on the calling thread for --duration
    /// and report the speed of the decompression alone (snappy, or gzip for OTLP with
    /// --gzip) and of the gateway's full decoder, in samples/s. `loadtest/bench.sh` pins it to
    /// the gateway's core to get the "share of snappy speed" yardstick.
    #[arg(long)]
    decode_only: bool,
    /// Send nothing: be the upstream of a forwarding benchmark instead, a remote-write
    /// endpoint on ADDR (HTTP/1.1 and h2c) that reads every body and answers 204, until
    /// SIGINT/SIGTERM; then print what it received as JSON.
    #[arg(long, value_name = "ADDR")]
    serve_204: Option<std::net::SocketAddr>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// One `--tenant-rate` entry, parsed: a tenant usable as `X-Scope-OrgID` and a positive,
/// finite rate, so the run never checks either again.
#[derive(Debug, Clone, PartialEq)]
struct TenantRate {
    /// The tenant id as given, for the report.
    name: String,
    /// The same id as the header value every request of this tenant carries.
    header: HeaderValue,
    /// Target samples per second of this tenant alone.
    samples_per_s: f64,
}

impl FromStr for TenantRate {
    type Err = String;

    /// `TENANT=SAMPLES_PER_S`, split at the last `=` (a rate never holds one); the error
    /// names the flag and the value as given.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, rate)) = s.rsplit_once('=') else {
            return Err(format!("--tenant-rate {s:?} must be TENANT=SAMPLES_PER_S"));
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!(
                "--tenant-rate {s:?}: tenant {name:?} must be non-empty, without spaces"
            ));
        }
        let Ok(header) = HeaderValue::from_str(name) else {
            return Err(format!(
                "--tenant-rate {s:?}: tenant {name:?} is not a valid X-Scope-OrgID value"
            ));
        };
        let Some(samples_per_s) = rate
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r > 0.0)
        else {
            return Err(format!(
                "--tenant-rate {s:?}: rate {rate:?} must be a positive number of samples/s"
            ));
        };
        Ok(Self {
            name: name.to_string(),
            header,
            samples_per_s,
        })
    }
}

/// Every `--tenant-rate` entry parsed; each bad one, and each tenant named again, adds its
/// mistake to `errors`.
fn tenant_rates(raw: &[String], errors: &mut Vec<String>) -> Vec<TenantRate> {
    let mut rates: Vec<TenantRate> = Vec::with_capacity(raw.len());
    for entry in raw {
        match entry.parse::<TenantRate>() {
            Ok(r) if rates.iter().any(|o| o.name == r.name) => errors.push(format!(
                "--tenant-rate: tenant {:?} is named more than once",
                r.name
            )),
            Ok(r) => rates.push(r),
            Err(e) => errors.push(e),
        }
    }
    rates
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    rt.block_on(run(args))
}

/// Everything the arguments decide, checked together so every mistake is named at once.
/// Gives back the `--tenant-rate` entries (none without the flag): they are parsed here, not
/// by clap, so that their mistakes are named with the others.
fn check(args: &Args) -> anyhow::Result<Vec<TenantRate>> {
    let mut errors = Vec::new();
    let rates = tenant_rates(&args.tenant_rate, &mut errors);
    if !args.tenant_rate.is_empty() {
        let conflicting: Vec<&str> = [
            (args.rate.is_some(), "--rate"),
            (args.tenants.is_some(), "--tenants"),
            (args.tenant != DEFAULT_TENANT, "--tenant"),
            (args.requests.is_some(), "--requests"),
            (args.record_acks.is_some(), "--record-acks"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !conflicting.is_empty() {
            errors.push(format!(
                "--tenant-rate cannot be combined with {}: each entry names its tenant and its \
                 rate, and all run for --duration",
                conflicting.join(", ")
            ));
        }
    }
    if args.connections == 0 {
        errors.push("--connections must be at least 1".to_string());
    }
    if args.series_per_request == 0 {
        errors.push("--series-per-request must be at least 1".to_string());
    }
    if args.max_in_flight == 0 {
        errors.push("--max-in-flight must be at least 1".to_string());
    }
    if args.max_in_flight > 1 && !args.http2 && !args.protocol.is_grpc() {
        errors.push(
            "--max-in-flight above 1 needs --http2: HTTP/1.1 carries one request at a time"
                .to_string(),
        );
    }
    if args.tenants == Some(0) {
        errors.push("--tenants must be at least 1".to_string());
    }
    if args.gzip && !args.protocol.is_otlp() {
        errors.push("--gzip applies to otlp-http and otlp-grpc only".to_string());
    }
    if !(0.0..=1.0).contains(&args.churn) {
        errors.push(format!("--churn {} is not within 0..=1", args.churn));
    }
    if !(0.0..=1.0).contains(&args.histogram_fraction) {
        errors.push(format!(
            "--histogram-fraction {} is not within 0..=1",
            args.histogram_fraction
        ));
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            errors.push(format!("--rate {r} must be a positive number of samples/s"));
        }
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        errors.push(format!("--duration {} must be positive", args.duration));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        errors.push(format!("--timeout {} must be positive", args.timeout));
    }
    if args.requests == Some(0) {
        errors.push("--requests must be at least 1".to_string());
    }
    if args.record_acks.is_some()
        && args.requests.is_none()
        && args.rate.is_none()
        && args.tenant_rate.is_empty()
    {
        errors.push(
            "--record-acks needs --requests or --rate: every request gets its own body, \
             generated before the run"
                .to_string(),
        );
    }
    if args.connections > 0 {
        let per_connection = args.series.div_ceil(args.connections);
        if per_connection < args.series_per_request {
            errors.push(format!(
                "--series {} over {} connections leaves {per_connection} per connection, fewer \
                 than --series-per-request {}: requests would repeat series",
                args.series, args.connections, args.series_per_request
            ));
        }
    }
    if errors.is_empty() {
        Ok(rates)
    } else {
        bail!("{}", errors.join("\n"))
    }
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| args.protocol.default_url().to_string());
    let mut uri: http::Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
    ensure!(
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
        "--url {url:?}: must be http:// or https://host[:port]/path"
    );
    let tls = if uri.scheme_str() == Some("https") {
        Some(Arc::new(tls_config(args)?))
    } else {
        ensure!(
            args.ca.is_none() && args.cert.is_none(),
            "--ca/--cert need an https:// --url"
        );
        None
    };
    if args.protocol.is_grpc() && matches!(uri.path(), "" | "/") {
        uri = format!("{}{}", url.trim_end_matches('/'), wire::GRPC_EXPORT_PATH)
            .parse()
            .context("gRPC URL")?;
    }
    Ok(Target {
        protocol: args.protocol,
        uri,
        tls,
        http2: args.http2,
        headers: wire::headers(args.protocol, args.gzip),
    })
}

/// The client TLS of an https:// run: the CA bundle (or the system's) and the client pair.
fn tls_config(args: &Args) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = match &args.ca {
        Some(p) => p.clone(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt")),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).with_context(|| format!("--ca {}", ca.display()))? {
        roots
            .add(c.with_context(|| format!("--ca {}", ca.display()))?)
            .with_context(|| format!("--ca {}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots);
    Ok(match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .with_context(|| format!("--cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("--cert/--key")?
        }
        _ => builder.with_no_client_auth(),
    })
}

fn tenants(args: &Args) -> anyhow::Result<Vec<HeaderValue>> {
    let ids: Vec<String> = match args.tenants {
        None => vec![args.tenant.clone()],
        Some(n) => (0..n).map(|i| format!("{}-{i}", args.tenant)).collect(),
    };
    ids.into_iter()
        .map(|t| {
            ensure!(
                !t.is_empty() && !t.contains(char::is_whitespace),
                "tenant {t:?} must be non-empty, without spaces"
            );
            HeaderValue::from_str(&t).with_context(|| format!("tenant {t:?}"))
        })
        .collect()
}

/// Which generator a ring of bodies comes from: connection `connection` of the plan of
/// tenant `tenant`, of `tenants` plans (the `--tenant-rate` entries; one otherwise). Each
/// (tenant, connection) pair is a generator stream of its own with a seed of its own, so no
/// two of them ever send the same series.
#[derive(Debug, Clone, Copy)]
struct Source {
    tenant: usize,
    tenants: usize,
    connection: usize,
}

impl Source {
    /// Connection `c` of a run with a single plan.
    fn single(c: usize) -> Self {
        Self {
            tenant: 0,
            tenants: 1,
            connection: c,
        }
    }
}

/// `source`'s own generator.
fn generator(args: &Args, source: Source) -> Generator {
    let connections = args.connections;
    let c = source.connection;
    // With a single plan this is `c` of `connections`: the streams and seeds runs had
    // before per-tenant plans existed.
    let stream = source.tenant * connections + c;
    let spec = PayloadSpec {
        series: args.series.div_ceil(connections),
        series_per_request: args.series_per_request,
        labels_per_series: args.labels,
        seed: args.seed.wrapping_add(stream as u64),
    };
    let shape = Shape {
        churn: args.churn,
        histograms: args.histograms,
        histogram_fraction: args.histogram_fraction,
        value_len: args.value_len,
        stream,
        streams: source.tenants * connections,
    };
    Generator::with_shape(spec, shape)
}

/// `count` bodies from `source`'s own generator. Body `i` of connection `c` is request
/// `seq = c + i * connections` of its plan and carries timestamp `base_ms + seq`.
fn ring(args: &Args, source: Source, count: usize, base_ms: i64) -> Vec<Body> {
    let (c, connections) = (source.connection, args.connections);
    let mut gen = generator(args, source);
    (0..count)
        .map(|i| {
            let seq = (c + i * connections) as i64;
            wire::encode(args.protocol, args.gzip, &gen.next_payload(base_ms + seq))
        })
        .collect()
}

/// One ring per `(source, count)`, in that order, generated in parallel.
fn rings(args: &Args, sources: &[(Source, usize)], base_ms: i64) -> Vec<Vec<Body>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|&(source, n)| s.spawn(move || ring(args, source, n, base_ms)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("generator thread does not panic"))
            .collect()
    })
}

/// Mean samples and mean bytes per body over `rings`.
fn body_means(rings: &[Vec<Body>]) -> (f64, f64) {
    let n = rings.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let bodies = || rings.iter().flatten();
    (
        bodies().map(|b| b.samples).sum::<u64>() as f64 / n,
        bodies().map(|b| b.bytes.len()).sum::<usize>() as f64 / n,
    )
}

/// `--serve-204`: the endpoint until SIGINT or SIGTERM, then its counts.
async fn serve_204(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let server = tokio::spawn(loadtest::sink::serve_204(addr, stop.clone()));
    eprintln!("traceo-loadgen: answering 204 on {addr}");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    stop.cancel();
    let received = server.await.context("server task")??;
    println!(
        "{}",
        serde_json::json!({
            "requests": received.requests.load(Relaxed),
            "bytes": received.bytes.load(Relaxed),
        })
    );
    Ok(())
}

/// `--decode-only`: the same bodies, decoded in a loop instead of sent.
fn decode_only(args: &Args) -> anyhow::Result<()> {
    use protocols::DecodeLimits;
    let limits = DecodeLimits::default();
    let base_ms = 1_700_000_000_000;
    let bodies = ring(args, Source::single(0), args.bodies.max(1), base_ms);
    let samples_per_body =
        bodies.iter().map(|b| b.samples).sum::<u64>() as f64 / bodies.len() as f64;
    let duration = Duration::from_secs_f64(args.duration);
    // Runs `f` over the ring until `duration` has passed; samples per second.
    let time = |f: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            for b in &bodies {
                f(&b.bytes)?;
                n += 1;
            }
        }
        Ok(n as f64 * samples_per_body / start.elapsed().as_secs_f64())
    };
    let grpc = args.protocol.is_grpc();
    fn otlp_message(grpc: bool, b: &[u8]) -> &[u8] {
        if grpc {
            &b[5..]
        } else {
            b
        }
    }
    let mut buf = Vec::new();
    let (decompress_name, decompress) = match args.protocol {
        Protocol::RemoteWriteV1 | Protocol::RemoteWriteV2 => (
            "snappy",
            Some(time(&mut |b| {
                protocols::snappy::decompress_into(b, &limits, &mut buf)?;
                Ok(())
            })?),
        ),
        _ if args.gzip => (
            "gzip",
            Some(time(&mut |b| {
                protocols::otlp::gunzip(otlp_message(grpc, b), &limits)?;
                Ok(())
            })?),
        ),
        _ => ("none", None),
    };
    let full = match args.protocol {
        Protocol::RemoteWriteV1 => Some(time(&mut |b| {
            protocols::remote_write::v1::decode(b, &limits)?;
            Ok(())
        })?),
        Protocol::RemoteWriteV2 => Some(time(&mut |b| {
            protocols::remote_write::v2::decode(b, &limits)?;
            Ok(())
        })?),
        Protocol::OtlpHttp | Protocol::OtlpGrpc => {
            let options = protocols::otlp::TranslateOptions::default();
            Some(time(&mut |b| {
                let m = otlp_message(grpc, b);
                let plain;
                let m = if args.gzip {
                    plain = protocols::otlp::gunzip(m, &limits)?;
                    &plain[..]
                } else {
                    m
                };
                let req = protocols::otlp::decode(m, protocols::otlp::Encoding::Protobuf, &limits)?;
                protocols::otlp::translate(&req, &options, &limits)?;
                Ok(())
            })?)
        }
    };
    let report = serde_json::json!({
        "protocol": args.protocol.name(),
        "samples_per_request": samples_per_body,
        "body_bytes": bodies.iter().map(|b| b.bytes.len()).sum::<usize>() / bodies.len(),
        "decompression": decompress_name,
        "decompress_only_samples_per_s": decompress,
        "full_decode_samples_per_s": full,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{report:#}");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tenant_rates = check(&args)?;
    if args.decode_only {
        return decode_only(&args);
    }
    if let Some(addr) = args.serve_204 {
        return serve_204(addr).await;
    }
    let target = target(&args)?;
    let base_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("clock before 1970")?
            .as_millis(),
    )
    .context("clock")?;
    if tenant_rates.is_empty() {
        run_single(&args, target, base_ms).await
    } else {
        run_per_tenant(&args, target, &tenant_rates, base_ms).await
    }
}

/// One plan for the whole run: closed loop, or open loop at `--rate`, over `--tenants`.
async fn run_single(args: &Args, target: Target, base_ms: i64) -> anyhow::Result<()> {
    let tenants = tenants(args)?;
    let mut plan = Plan {
        target,
        connections: args.connections,
        max_in_flight: args.max_in_flight,
        pace: Pace::Closed,
        duration: Duration::from_secs_f64(args.duration),
        requests: args.requests,
        timeout: Duration::from_secs_f64(args.timeout),
        tenants,
        acks: None,
    };
    let terminal = std::io::stderr().is_terminal();

    // One body first to learn the samples per request (for the rate) and the body size (for
    // the memory a distinct body per request takes).
    let probe = ring(args, Source::single(0), 1, base_ms);
    let probe = &probe[0];
    ensure!(probe.samples > 0, "the generator made an empty request");
    if let Some(rate) = args.rate {
        plan.pace = Pace::Open {
            requests_per_s: rate / probe.samples as f64,
        };
    }
    let counts: Vec<usize> = if args.record_acks.is_some() {
        let counts: Vec<usize> = (0..args.connections)
            .map(|c| plan.requests_of(c).unwrap_or(0) as usize)
            .collect();
        let total: u64 = counts.iter().map(|&n| n as u64).sum();
        let bytes = total.saturating_mul(probe.bytes.len() as u64);
        ensure!(
            bytes <= RECORD_BODIES_MAX_BYTES,
            "--record-acks: {total} distinct bodies of about {} bytes need {} MiB, more than \
             the {} MiB allowed; send fewer requests or smaller ones",
            probe.bytes.len(),
            bytes >> 20,
            RECORD_BODIES_MAX_BYTES >> 20
        );
        counts.into_iter().map(|n| n.max(1)).collect()
    } else {
        vec![args.bodies.max(1); args.connections]
    };
    let total_bodies: usize = counts.iter().sum();
    if terminal && total_bodies > 256 {
        eprintln!("traceo-loadgen: generating {total_bodies} bodies ...");
    }
    let sources: Vec<(Source, usize)> = counts
        .iter()
        .enumerate()
        .map(|(c, &n)| (Source::single(c), n))
        .collect();
    let rings = rings(args, &sources, base_ms);
    let (mean_samples, mean_bytes) = body_means(&rings);
    if let Some(rate) = args.rate {
        plan.pace = Pace::Open {
            requests_per_s: rate / mean_samples,
        };
    }
    if let Some(path) = &args.record_acks {
        let header = format!(
            "protocol={} url={} start_ms={base_ms} seed={} connections={}",
            args.protocol, plan.target.uri, args.seed, args.connections
        );
        let w = AckWriter::open(path, &header)
            .with_context(|| format!("--record-acks {}", path.display()))?;
        plan.acks = Some(Arc::new(w));
    }

    let plan = Arc::new(plan);
    let progress = Arc::new(Progress::default());
    let cancel = cancel_on_ctrl_c();
    let ticker = tokio::spawn(tick(
        plan.acks.clone(),
        Arc::clone(&progress),
        terminal,
        args.duration,
    ));
    let outcome = drive::run(Arc::clone(&plan), rings, progress, cancel).await?;
    ticker.abort();
    if terminal {
        eprint!("\r{:79}\r", "");
    }
    if let Some(w) = &plan.acks {
        w.flush().context("--record-acks")?;
    }

    let stats = &outcome.stats;
    let (mode, target_rps) = match plan.pace {
        Pace::Closed => ("closed", None),
        Pace::Open { requests_per_s } => ("open", Some(requests_per_s)),
    };
    let setup = Setup {
        url: plan.target.uri.to_string(),
        mode,
        target_samples_per_s: args.rate,
        target_requests_per_s: target_rps,
        connections: args.connections,
        tenants: plan.tenants.len(),
        bodies_per_connection: counts.iter().max().copied(),
        samples_per_request: mean_samples,
        body_bytes_mean: mean_bytes,
    };
    if args.json {
        let mut report = setup.json(args);
        extend(&mut report, stats.json(outcome.elapsed));
        println!("{report}");
    } else {
        println!("{}", setup.line(args));
        println!("{}", stats.summary(outcome.elapsed));
    }
    Ok(())
}

/// `--tenant-rate`: one open-loop plan per tenant, each with its own connections and series,
/// all run at once; reported merged and per tenant.
async fn run_per_tenant(
    args: &Args,
    target: Target,
    rates: &[TenantRate],
    base_ms: i64,
) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let per_ring = args.bodies.max(1);
    let sources: Vec<(Source, usize)> = (0..rates.len())
        .flat_map(|tenant| {
            (0..args.connections).map(move |connection| {
                let source = Source {
                    tenant,
                    tenants: rates.len(),
                    connection,
                };
                (source, per_ring)
            })
        })
        .collect();
    let total_bodies = sources.len() * per_ring;
    if terminal && total_bodies > 256 {
        eprintln!("traceo-loadgen: generating {total_bodies} bodies ...");
    }
    let all_rings = rings(args, &sources, base_ms);
    let (mean_samples, mean_bytes) = body_means(&all_rings);
    let mut all_rings = all_rings.into_iter();
    let mut runs = Vec::with_capacity(rates.len());
    let mut tenant_rings = Vec::with_capacity(rates.len());
    for r in rates {
        let rings: Vec<Vec<Body>> = all_rings.by_ref().take(args.connections).collect();
        let (samples, _) = body_means(&rings);
        ensure!(samples > 0.0, "the generator made an empty request");
        let requests_per_s = r.samples_per_s / samples;
        let plan = Plan {
            target: target.clone(),
            connections: args.connections,
            max_in_flight: args.max_in_flight,
            pace: Pace::Open { requests_per_s },
            duration: Duration::from_secs_f64(args.duration),
            requests: None,
            timeout: Duration::from_secs_f64(args.timeout),
            tenants: vec![r.header.clone()],
            acks: None,
        };
        runs.push((Arc::new(plan), samples, requests_per_s));
        tenant_rings.push(rings);
    }

    // One progress line over all tenants.
    let progress = Arc::new(Progress::default());
    let cancel = cancel_on_ctrl_c();
    let ticker = tokio::spawn(tick(None, Arc::clone(&progress), terminal, args.duration));
    let mut tasks = tokio::task::JoinSet::new();
    for (t, ((plan, _, _), rings)) in runs.iter().zip(tenant_rings).enumerate() {
        let run = drive::run(
            Arc::clone(plan),
            rings,
            Arc::clone(&progress),
            cancel.clone(),
        );
        tasks.spawn(async move { (t, run.await) });
    }
    let mut outcomes: Vec<(usize, Outcome)> = Vec::with_capacity(rates.len());
    while let Some(joined) = tasks.join_next().await {
        let (t, outcome) = joined.context("a --tenant-rate run")?;
        let outcome = outcome.with_context(|| format!("--tenant-rate {}", rates[t].name))?;
        outcomes.push((t, outcome));
    }
    outcomes.sort_by_key(|(t, _)| *t);
    ticker.abort();
    if terminal {
        eprint!("\r{:79}\r", "");
    }

    let mut total = Stats::default();
    // The tenants' clocks start within a handshake of each other: the longest is the run's.
    let mut elapsed = Duration::ZERO;
    for (_, o) in &outcomes {
        total.merge(&o.stats);
        elapsed = elapsed.max(o.elapsed);
    }
    let setup = Setup {
        url: target.uri.to_string(),
        mode: "open",
        target_samples_per_s: Some(rates.iter().map(|r| r.samples_per_s).sum()),
        target_requests_per_s: Some(runs.iter().map(|(_, _, rps)| rps).sum()),
        connections: args.connections * rates.len(),
        tenants: rates.len(),
        bodies_per_connection: Some(per_ring),
        samples_per_request: mean_samples,
        body_bytes_mean: mean_bytes,
    };
    if args.json {
        let mut report = setup.json(args);
        extend(&mut report, total.json(elapsed));
        let per_tenant: serde_json::Map<String, serde_json::Value> = outcomes
            .iter()
            .map(|(t, o)| {
                let (plan, samples, rps) = &runs[*t];
                let mut entry = serde_json::json!({
                    "target_samples_per_s": rates[*t].samples_per_s,
                    "target_requests_per_s": rps,
                    "connections": plan.connections,
                    "samples_per_request": samples,
                });
                extend(&mut entry, o.stats.json(o.elapsed));
                (rates[*t].name.clone(), entry)
            })
            .collect();
        if let Some(obj) = report.as_object_mut() {
            obj.insert("per_tenant".to_string(), per_tenant.into());
        }
        println!("{report}");
    } else {
        println!("{}", setup.line(args));
        println!("{}", total.summary(elapsed));
        for (t, o) in &outcomes {
            println!(
                "  {}: target {:.0} samples/s; {}",
                rates[*t].name,
                rates[*t].samples_per_s,
                o.stats.summary(o.elapsed)
            );
        }
    }
    Ok(())
}

/// A token that fires on the first Ctrl-C (the runs drain what is in flight and report); a
/// second one quits at once.
fn cancel_on_ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ntraceo-loadgen: stopping; a second Ctrl-C quits at once");
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        }
    });
    cancel
}

/// How a run was set up, beyond the arguments themselves: the head of the report.
struct Setup {
    url: String,
    mode: &'static str,
    target_samples_per_s: Option<f64>,
    target_requests_per_s: Option<f64>,
    /// Over all plans.
    connections: usize,
    tenants: usize,
    bodies_per_connection: Option<usize>,
    samples_per_request: f64,
    body_bytes_mean: f64,
}

impl Setup {
    /// The settings of the JSON report; the measurements are added after.
    fn json(&self, args: &Args) -> serde_json::Value {
        serde_json::json!({
            "protocol": args.protocol.name(),
            "url": self.url,
            "mode": self.mode,
            "target_samples_per_s": self.target_samples_per_s,
            "target_requests_per_s": self.target_requests_per_s,
            "connections": self.connections,
            "max_in_flight": args.max_in_flight,
            "http2": args.http2 || args.protocol.is_grpc(),
            "tenants": self.tenants,
            "series": args.series,
            "series_per_request": args.series_per_request,
            "labels_per_series": args.labels,
            "value_len": args.value_len,
            "churn": args.churn,
            "histograms": format!("{:?}", args.histograms).to_lowercase(),
            "histogram_fraction": args.histogram_fraction,
            "gzip": args.gzip,
            "seed": args.seed,
            "bodies_per_connection": self.bodies_per_connection,
            "samples_per_request": self.samples_per_request,
            "body_bytes_mean": self.body_bytes_mean,
        })
    }

    /// The first line of the human report.
    fn line(&self, args: &Args) -> String {
        format!(
            "{} {} loop, {} connections x {} in flight, {} tenants, \
             {:.0} samples and {:.0} bytes per request{}",
            args.protocol,
            self.mode,
            self.connections,
            args.max_in_flight,
            self.tenants,
            self.samples_per_request,
            self.body_bytes_mean,
            self.target_samples_per_s
                .map(|r| format!(", target {r:.0} samples/s"))
                .unwrap_or_default()
        )
    }
}

/// Adds the fields of `more` (an object) to `report` (an object).
fn extend(report: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(obj), serde_json::Value::Object(m)) = (report.as_object_mut(), more) {
        obj.extend(m);
    }
}

/// Once a second: flush the acks file; on a terminal, a progress line on stderr.
async fn tick(
    acks: Option<Arc<AckWriter>>,
    progress: Arc<Progress>,
    terminal: bool,
    duration: f64,
) {
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut last_samples = 0;
    loop {
        every.tick().await;
        if let Some(w) = &acks {
            if let Err(e) = w.flush() {
                eprintln!("traceo-loadgen: writing acks: {e}");
            }
        }
        if !terminal {
            continue;
        }
        let samples = progress.samples_acked.load(Relaxed);
        let sent = progress.sent.load(Relaxed);
        let done = progress.done.load(Relaxed);
        let line = format!(
            "{:>6.1}s/{:.0}s  {} requests  {:.0} samples/s  {} failed  {} late  {} in flight",
            started.elapsed().as_secs_f64(),
            duration,
            done,
            samples.saturating_sub(last_samples) as f64,
            progress.failed.load(Relaxed),
            progress.late.load(Relaxed),
            sent.saturating_sub(done),
        );
        last_samples = samples;
        eprint!("\r{line:79}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("traceo-loadgen").chain(extra.iter().copied()))
            .expect("arguments parse")
    }

    fn check_err(extra: &[&str]) -> String {
        check(&args(extra)).unwrap_err().to_string()
    }

    #[test]
    fn tenant_rate_parses_tenant_and_rate() {
        let r: TenantRate = "team-a=20000".parse().unwrap();
        assert_eq!(r.name, "team-a");
        assert_eq!(r.header, "team-a");
        assert_eq!(r.samples_per_s, 20_000.0);
        let r: TenantRate = "team-b=2.5e3".parse().unwrap();
        assert_eq!((r.name.as_str(), r.samples_per_s), ("team-b", 2500.0));
    }

    #[test]
    fn tenant_rate_splits_at_the_last_equals_sign() {
        let r: TenantRate = "a=b=5".parse().unwrap();
        assert_eq!((r.name.as_str(), r.samples_per_s), ("a=b", 5.0));
    }

    #[test]
    fn tenant_rate_refuses_each_bad_form_naming_the_flag() {
        for (bad, why) in [
            ("team-a", "must be TENANT=SAMPLES_PER_S"),
            ("=100", "must be non-empty, without spaces"),
            ("team a=100", "must be non-empty, without spaces"),
            ("team\ta=100", "must be non-empty, without spaces"),
            ("team\u{1}=100", "is not a valid X-Scope-OrgID value"),
            ("team-a=", "must be a positive number of samples/s"),
            ("team-a=fast", "must be a positive number of samples/s"),
            ("team-a=0", "must be a positive number of samples/s"),
            ("team-a=-5", "must be a positive number of samples/s"),
            ("team-a=inf", "must be a positive number of samples/s"),
            ("team-a=NaN", "must be a positive number of samples/s"),
        ] {
            let err = bad.parse::<TenantRate>().unwrap_err();
            assert!(err.starts_with("--tenant-rate "), "{bad:?}: {err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn check_gives_back_the_tenant_rates_in_order() {
        let rates = check(&args(&[
            "--tenant-rate",
            "team-a=20000",
            "--tenant-rate",
            "team-b=5000",
        ]))
        .unwrap();
        let got: Vec<(&str, f64)> = rates
            .iter()
            .map(|r| (r.name.as_str(), r.samples_per_s))
            .collect();
        assert_eq!(got, vec![("team-a", 20_000.0), ("team-b", 5000.0)]);
        assert!(check(&args(&[])).unwrap().is_empty());
    }

    #[test]
    fn a_tenant_named_twice_is_refused() {
        let err = check_err(&["--tenant-rate", "a=1", "--tenant-rate", "a=2"]);
        assert!(
            err.contains("tenant \"a\" is named more than once"),
            "{err}"
        );
    }

    #[test]
    fn tenant_rate_conflicts_are_named_together() {
        let err = check_err(&[
            "--tenant-rate",
            "a=1",
            "--rate",
            "100",
            "--tenants",
            "2",
            "--tenant",
            "x",
            "--requests",
            "10",
            "--record-acks",
            "acks.txt",
        ]);
        assert!(
            err.contains(
                "--tenant-rate cannot be combined with --rate, --tenants, --tenant, --requests, \
                 --record-acks"
            ),
            "{err}"
        );
        assert!(!err.contains("--record-acks needs"), "{err}");
    }

    #[test]
    fn each_conflicting_flag_alone_is_refused() {
        for extra in [
            &["--rate", "100"][..],
            &["--tenants", "2"],
            &["--tenant", "x"],
            &["--requests", "10"],
            &["--record-acks", "acks.txt"],
        ] {
            let mut a = vec!["--tenant-rate", "a=1"];
            a.extend_from_slice(extra);
            let err = check_err(&a);
            assert!(
                err.contains(&format!(
                    "--tenant-rate cannot be combined with {}:",
                    extra[0]
                )),
                "{extra:?}: {err}"
            );
        }
    }

    #[test]
    fn bad_tenant_rates_are_named_with_the_other_mistakes() {
        let err = check_err(&[
            "--tenant-rate",
            "a=0",
            "--tenant-rate",
            "b",
            "--connections",
            "0",
        ]);
        for named in [
            "--tenant-rate \"a=0\"",
            "--tenant-rate \"b\"",
            "--connections must be at least 1",
        ] {
            assert!(err.contains(named), "{named:?} not in:\n{err}");
        }
    }

    #[test]
    fn tenant_pools_never_share_a_series() {
        let a = args(&["--series", "400", "--series-per-request", "100"]);
        let mut all = std::collections::HashSet::new();
        let mut pools = 0;
        for tenant in 0..3 {
            for connection in 0..a.connections {
                let source = Source {
                    tenant,
                    tenants: 3,
                    connection,
                };
                for s in generator(&a, source).pool() {
                    let labels: Vec<(String, String)> = s
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect();
                    all.insert(labels);
                    pools += 1;
                }
            }
        }
        assert_eq!(pools, 3 * 400);
        assert_eq!(all.len(), pools);
    }

    #[test]
    fn a_single_plan_keeps_its_streams_and_seeds() {
        let a = args(&[]);
        let g = generator(&a, Source::single(3));
        assert_eq!(g.spec().seed, a.seed + 3);
        assert_eq!((g.shape().stream, g.shape().streams), (3, a.connections));
    }
}

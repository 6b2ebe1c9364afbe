//! Sending: one task per connection, each with its own ring of pre-generated bodies, paced
//! closed-loop (next request as soon as an in-flight slot frees) or open-loop (a fixed
//! timetable that does not wait for answers).
//!
//! Open loop avoids coordinated omission the way wrk2 does: request `n` of a connection is
//! due at `start + offset + n * interval` whatever happened before, and its latency is
//! measured from that due time, so a stalled server is charged for every request it delayed,
//! not only the one it stalled on. At most `max_in_flight` requests are outstanding per
//! connection (HTTP/1.1 carries one at a time); a request due while the connection is full
//! or reconnecting is counted `late` and sent as soon as a slot frees. At the end of the run,
//! requests due but never sent are counted `unsent`.
//!
//! Connections are explicit (hyper's `client::conn`), HTTP/1.1 or h2c with prior knowledge
//! (gRPC always); a connection that fails is reopened after [`RECONNECT_BACKOFF`], so a run
//! survives a gateway restart and counts what failed meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::acks::{Ack, AckWriter};
use crate::report::{Code, RetryAfter, Stats};
use crate::wire::{Body, Protocol};

/// Wait before reopening a connection that failed: long enough not to spin on a gateway that
/// is down, short enough to resume within a fraction of a second after it is back.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The protocol (headers, answer parsing).
    pub protocol: Protocol,
    /// The full request URI (`http://` or `https://host:port/path`).
    pub uri: Uri,
    /// TLS for an `https://` URI (ALPN is set here per connection).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// h2c with prior knowledge instead of HTTP/1.1 (always on for gRPC).
    pub http2: bool,
    /// Headers of every request, the tenant header aside.
    pub headers: HeaderMap,
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each connection keeps `max_in_flight` requests outstanding.
    Closed,
    /// Requests on a fixed timetable, this many per second over all connections.
    Open {
        /// Requests per second, all connections together.
        requests_per_s: f64,
    },
}

/// A run's settings.
#[derive(Clone)]
pub struct Plan {
    /// Where to send.
    pub target: Target,
    /// TCP connections.
    pub connections: usize,
    /// Outstanding requests per connection (1 for HTTP/1.1).
    pub max_in_flight: usize,
    /// Pacing.
    pub pace: Pace,
    /// Run time; closed loop ignores it when `requests` is set.
    pub duration: Duration,
    /// Total requests (split evenly over connections).
    pub requests: Option<u64>,
    /// A request without a complete answer in this time counts as `timeout`.
    pub timeout: Duration,
    /// Tenant ids, sent as `X-Scope-OrgID`; request `seq` goes to `tenants[seq % len]`.
    pub tenants: Vec<HeaderValue>,
    /// Where acknowledged requests are recorded.
    pub acks: Option<Arc<AckWriter>>,
}

impl Plan {
    /// The time between two requests of one connection in open loop.
    fn interval(&self) -> Option<Duration> {
        match self.pace {
            Pace::Closed => None,
            Pace::Open { requests_per_s } => Some(Duration::from_secs_f64(
                self.connections as f64 / requests_per_s,
            )),
        }
    }

    /// When connection `c`'s first request is due, after the start: the connections'
    /// timetables are staggered evenly over one interval.
    fn offset(&self, c: usize) -> Duration {
        self.interval().map_or(Duration::ZERO, |i| {
            i.mul_f64(c as f64 / self.connections as f64)
        })
    }

    /// How long sending lasts in open loop: `duration`, or the time `requests` take at the
    /// rate.
    fn open_duration(&self, requests_per_s: f64) -> Duration {
        match self.requests {
            Some(r) => Duration::from_secs_f64(r as f64 / requests_per_s),
            None => self.duration,
        }
    }

    /// The most requests connection `c` sends, when that is known before the run (always
    /// in open loop; with `requests` in closed loop): bodies needed for a ring of distinct
    /// bodies.
    pub fn requests_of(&self, c: usize) -> Option<u64> {
        let split = |total: u64| {
            let n = self.connections as u64;
            total / n + u64::from((c as u64) < total % n)
        };
        match self.pace {
            Pace::Closed => self.requests.map(split),
            Pace::Open { requests_per_s } => {
                if let Some(r) = self.requests {
                    return Some(split(r));
                }
                let interval = self.interval().expect("open loop has an interval");
                let span = self.open_duration(requests_per_s);
                let offset = self.offset(c);
                if span <= offset {
                    return Some(0);
                }
                Some(((span - offset).as_secs_f64() / interval.as_secs_f64()).ceil() as u64)
            }
        }
    }
}

/// Live counters for a progress line, updated by every connection.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests ended.
    pub done: AtomicU64,
    /// Requests acknowledged.
    pub acked: AtomicU64,
    /// Samples acknowledged.
    pub samples_acked: AtomicU64,
    /// Requests that ended otherwise.
    pub failed: AtomicU64,
    /// Requests that could not go on time (open loop).
    pub late: AtomicU64,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Every connection's counters merged.
    pub stats: Stats,
    /// From the common start to the last answer.
    pub elapsed: Duration,
}

/// Runs `plan` with one ring of bodies per connection (`rings.len() == plan.connections`);
/// stops early, draining what is in flight, when `cancel` fires.
pub async fn run(
    plan: Arc<Plan>,
    rings: Vec<Vec<Body>>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        rings.len() == plan.connections && rings.iter().all(|r| !r.is_empty()),
        "one non-empty ring of bodies per connection"
    );
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let connected = Arc::new(tokio::sync::Barrier::new(plan.connections + 1));
    let mut tasks = JoinSet::new();
    for (c, ring) in rings.into_iter().enumerate() {
        tasks.spawn(connection(
            c,
            Arc::clone(&plan),
            ring,
            Arc::clone(&progress),
            cancel.clone(),
            Arc::clone(&connected),
            start_rx.clone(),
        ));
    }
    // Every connection has tried its handshake: the clock starts for all at once.
    connected.wait().await;
    let start = Instant::now();
    start_tx.send_replace(Some(start));
    let mut stats = Stats::default();
    while let Some(s) = tasks.join_next().await {
        stats.merge(&s?);
    }
    Ok(Outcome {
        stats,
        elapsed: start.elapsed(),
    })
}

/// An open connection.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

type Answer = Pin<Box<dyn Future<Output = hyper::Result<Response<Incoming>>> + Send>>;

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Self::H1(s) => s.ready().await,
            Self::H2(s) => s.ready().await,
        }
    }

    fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        match self {
            Self::H1(s) => Box::pin(s.send_request(req)),
            Self::H2(s) => Box::pin(s.send_request(req)),
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<Sender> {
    let host = target.uri.host().unwrap_or("127.0.0.1");
    let default_port = if target.tls.is_some() { 443 } else { 80 };
    let port = target.uri.port_u16().unwrap_or(default_port);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let h2 = target.http2 || target.protocol.is_grpc();
    match &target.tls {
        None => handshake(TokioIo::new(stream), h2).await,
        Some(tls) => {
            let mut config = (**tls).clone();
            config.alpn_protocols = vec![if h2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            let name =
                rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, stream)
                .await?;
            handshake(TokioIo::new(tls), h2).await
        }
    }
}

async fn handshake<T>(io: TokioIo<T>, h2: bool) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// What one request's task reports back to its connection.
struct Done {
    seq: u64,
    tenant: usize,
    timestamp_ms: i64,
    samples: u64,
    bytes: u64,
    code: Code,
    latency: Duration,
    rejected_points: u64,
    /// The answer's `Retry-After` header, when it had one.
    retry_after: Option<RetryAfter>,
}

/// One connection's state while it sends.
struct Conn {
    c: usize,
    plan: Arc<Plan>,
    ring: Vec<Body>,
    progress: Arc<Progress>,
    /// The request target of HTTP/1.1 requests (`/path?query`).
    origin: Uri,
    sender: Option<Sender>,
    /// No connection attempt before this instant.
    next_connect: Instant,
    inflight: JoinSet<Done>,
    stats: Stats,
    /// Requests sent (or failed to send) so far.
    n: u64,
}

/// One connection: sends its share of the requests, returns its counters.
async fn connection(
    c: usize,
    plan: Arc<Plan>,
    ring: Vec<Body>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    connected: Arc<tokio::sync::Barrier>,
    mut start_rx: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Stats {
    let handshake = timeout(plan.timeout, connect(&plan.target)).await;
    let sender = handshake.ok().and_then(Result::ok);
    connected.wait().await;
    let start = match start_rx.wait_for(Option::is_some).await {
        Ok(s) => (*s).expect("waited for Some"),
        Err(_) => Instant::now(),
    };
    let interval = plan.interval();
    let first_due = start + plan.offset(c);
    let mut limit = plan.requests_of(c);
    if plan.acks.is_some() {
        // Recorded requests are told apart by their bodies' timestamps: never reuse a body.
        limit = Some(limit.map_or(ring.len() as u64, |l| l.min(ring.len() as u64)));
    }
    let deadline = match plan.pace {
        Pace::Closed if plan.requests.is_some() => None,
        Pace::Closed => Some(start + plan.duration),
        Pace::Open { requests_per_s } => Some(start + plan.open_duration(requests_per_s)),
    };
    let slots = plan.max_in_flight.max(1);
    let mut k = Conn {
        c,
        origin: origin_form(&plan.target.uri),
        plan,
        ring,
        progress,
        sender,
        next_connect: Instant::now(),
        inflight: JoinSet::new(),
        stats: Stats::default(),
        n: 0,
    };
    let mut late_marked = false;
    loop {
        let now = Instant::now();
        let due = interval.map(|i| first_due + i.mul_f64(k.n as f64));
        let sending = !cancel.is_cancelled()
            && limit.is_none_or(|l| k.n < l)
            && deadline.is_none_or(|d| now < d && due.is_none_or(|due| due < d));
        if !sending {
            match k.inflight.join_next().await {
                Some(Ok(done)) => k.finish(done),
                Some(Err(_)) => {}
                None => break,
            }
            continue;
        }
        let reconnecting = k.sender.as_ref().is_none_or(Sender::is_closed) && now < k.next_connect;
        let blocked = k.inflight.len() >= slots || reconnecting;
        // When the next request may go: its due time (open loop), or now (closed loop);
        // never before the reconnect backoff ends.
        let go_at = match (due, reconnecting) {
            (Some(d), true) => Some(d.max(k.next_connect)),
            (Some(d), false) => Some(d),
            (None, true) => Some(k.next_connect),
            (None, false) => None,
        };
        let wait_go = async move {
            // A timer for an instant already past still waits for the timer wheel's next
            // millisecond tick; skip it so a closed loop is not paced by the wheel.
            if let Some(t) = go_at.filter(|t| *t > Instant::now()) {
                sleep_until(t).await;
            }
        };
        let wait_due = async move {
            match due {
                Some(d) => sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(done) = k.inflight.join_next(), if !k.inflight.is_empty() => {
                if let Ok(done) = done {
                    k.finish(done);
                }
            }
            () = cancel.cancelled() => {}
            () = wait_go, if k.inflight.len() < slots => {
                if std::mem::take(&mut late_marked) {
                    k.stats.late += 1;
                    k.progress.late.fetch_add(1, Relaxed);
                }
                k.send(due).await;
            }
            () = wait_due, if blocked && !late_marked && due.is_some() => {
                late_marked = true;
            }
        }
    }
    // Requests due before the end that never went (the connection was full until then).
    if let (Some(interval), Some(deadline)) = (interval, deadline) {
        let end = Instant::now().min(deadline);
        if end > first_due {
            let due_by_end =
                ((end - first_due).as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
            let due_by_end = limit.map_or(due_by_end, |l| due_by_end.min(l));
            k.stats.unsent += due_by_end.saturating_sub(k.n);
        }
    }
    k.stats
}

impl Conn {
    /// Sends request `n` (opening a connection first if needed); its answer is read by a
    /// task of its own. `due` is its scheduled time in open loop: latency counts from it.
    async fn send(&mut self, due: Option<Instant>) {
        let plan = Arc::clone(&self.plan);
        let seq = self.c as u64 + self.n * plan.connections as u64;
        let body = &self.ring[(self.n % self.ring.len() as u64) as usize];
        self.n += 1;
        let scheduled = due.unwrap_or_else(Instant::now);
        let tenant = (seq % plan.tenants.len() as u64) as usize;
        let done = Done {
            seq,
            tenant,
            timestamp_ms: body.timestamp_ms,
            samples: body.samples,
            bytes: body.bytes.len() as u64,
            code: Code::Connect,
            latency: Duration::ZERO,
            rejected_points: 0,
            retry_after: None,
        };
        let open = match self.sender.take().filter(|s| !s.is_closed()) {
            Some(s) => Some(s),
            None => timeout(plan.timeout, connect(&plan.target))
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(mut sender) = open else {
            self.next_connect = Instant::now() + RECONNECT_BACKOFF;
            self.finish(done);
            return;
        };
        if !matches!(timeout(plan.timeout, sender.ready()).await, Ok(Ok(()))) {
            // The connection died between requests; this one was never sent.
            self.next_connect = Instant::now() + RECONNECT_BACKOFF;
            self.finish(Done {
                code: Code::Io,
                ..done
            });
            return;
        }
        let target = &plan.target;
        let mut req = Request::post(self.origin.clone())
            .body(Full::new(body.bytes.clone()))
            .expect("method and URI are valid");
        *req.headers_mut() = target.headers.clone();
        req.headers_mut()
            .insert("x-scope-orgid", plan.tenants[tenant].clone());
        match sender {
            // HTTP/2 takes scheme and authority from the URI (its pseudo-headers).
            Sender::H2(_) => *req.uri_mut() = target.uri.clone(),
            Sender::H1(_) => {
                if let Some(v) = target
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
        }
        let answer = sender.send(req);
        self.sender = Some(sender);
        self.progress.sent.fetch_add(1, Relaxed);
        let protocol = target.protocol;
        let limit = plan.timeout;
        self.inflight.spawn(async move {
            let a = timeout(limit, read_answer(answer, protocol))
                .await
                .unwrap_or(Read::failed(Code::Timeout));
            Done {
                code: a.code,
                latency: scheduled.elapsed(),
                rejected_points: a.rejected_points,
                retry_after: a.retry_after,
                ..done
            }
        });
    }

    /// Counts a finished request; records it when acknowledged; drops a connection that
    /// failed.
    fn finish(&mut self, d: Done) {
        let (plan, progress) = (&self.plan, &self.progress);
        self.stats.record(d.code, d.latency, d.samples, d.bytes);
        self.stats.rejected_points += d.rejected_points;
        if let Some(r) = d.retry_after {
            self.stats.record_retry_after(r);
        }
        progress.done.fetch_add(1, Relaxed);
        if d.code.is_ack() {
            progress.acked.fetch_add(1, Relaxed);
            progress.samples_acked.fetch_add(d.samples, Relaxed);
            if let Some(w) = &plan.acks {
                let ack = Ack {
                    seq: d.seq,
                    tenant: plan.tenants[d.tenant].to_str().unwrap_or("?").to_string(),
                    timestamp_ms: d.timestamp_ms,
                    samples: d.samples,
                };
                if let Err(e) = w.record(&ack) {
                    eprintln!("traceo-loadgen: writing acks: {e}");
                }
            }
        } else {
            progress.failed.fetch_add(1, Relaxed);
        }
        // An HTTP/1.1 connection whose answer never came cannot carry another request.
        let broken = match d.code {
            Code::Io => true,
            Code::Timeout => matches!(self.sender, Some(Sender::H1(_))),
            _ => false,
        };
        if broken {
            self.sender = None;
        }
    }
}

/// `/path?query` of a URI, for HTTP/1.1's request line.
fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

/// What reading one answer found.
struct Read {
    code: Code,
    /// Data points OTLP's `partial_success` says were refused.
    rejected_points: u64,
    /// The `Retry-After` header of a complete answer.
    retry_after: Option<RetryAfter>,
}

impl Read {
    /// A request that got no complete answer.
    fn failed(code: Code) -> Self {
        Self {
            code,
            rejected_points: 0,
            retry_after: None,
        }
    }
}

/// Reads an answer to its end: its code, the data points OTLP's `partial_success` says were
/// refused, and its `Retry-After` header (any status). For gRPC only that HTTP header counts:
/// a `RetryInfo` in `grpc-status-details-bin` is not decoded, so a gateway that says when to
/// retry only there shows no `Retry-After` answers.
async fn read_answer(answer: Answer, protocol: Protocol) -> Read {
    let Ok(resp) = answer.await else {
        return Read::failed(Code::Io);
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|v| RetryAfter::parse(v.as_bytes()));
    // A trailers-only gRPC answer carries its status in the headers.
    let header_status = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = resp.into_body().collect().await else {
        return Read::failed(Code::Io);
    };
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    let body = collected.to_bytes();
    let read = |code, rejected_points| Read {
        code,
        rejected_points,
        retry_after,
    };
    if !protocol.is_grpc() {
        let code = Code::Http(status.as_u16());
        let rejected = if protocol.is_otlp() && status.is_success() {
            rejected_points(&body)
        } else {
            0
        };
        return read(code, rejected);
    }
    if status != http::StatusCode::OK {
        return read(Code::Http(status.as_u16()), 0);
    }
    let Some(grpc) = trailer_status.or(header_status) else {
        return read(Code::GrpcMissing, 0);
    };
    let code = grpc
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(Code::GrpcMissing, Code::Grpc);
    let rejected = if code == Code::Grpc(0) && body.len() >= 5 && body[0] == 0 {
        rejected_points(&body[5..])
    } else {
        0
    };
    read(code, rejected)
}

fn rejected_points(message: &[u8]) -> u64 {
    protocols::otlp::proto::ExportMetricsServiceResponse::decode(message)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_data_points).unwrap_or(0))
}

#[cfg(test)]
mod tests;

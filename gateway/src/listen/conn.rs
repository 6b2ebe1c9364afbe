//! Accepting connections and keeping each within its bounds: a connection cap per listener,
//! a deadline for a request head, an idle deadline, and HTTP/2 stream and keep-alive limits
//! (`listen:` in the config). Request bodies get their deadline and their share of the
//! in-flight budget where they are read (`AppState::read_body`).
//!
//! The connection cap is a semaphore taken before `accept` (as mini-redis' `limit_connections`
//! does): at the cap the listener stops accepting and new clients wait in the kernel's
//! backlog, instead of being accepted into a process that cannot serve them. Permits come
//! back when a connection ends, so slow and idle connections cut by the deadlines make room.
//! At shutdown the same semaphore says when every connection has ended.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::http::{dispatch, dispatch_telemetry, AppState};
use crate::config::ListenSettings;

/// How long in-flight requests get to finish once the listener stops accepting.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (EMFILE and friends), so the loop backs off instead of
/// spinning while descriptors are short.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a connection's requests tell its idle watch: how many are in progress and when the
/// last one began or ended.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds since `started` of the last request start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in progress for its idle deadline:
    /// `first` until its first request began (a connection that never sends one is a slow
    /// or idle client), `idle` after that.
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let deadline = if self.requests.load(Ordering::Relaxed) == 0 {
                first
            } else {
                idle
            };
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet_until = self.started + last + deadline;
            let now = Instant::now();
            if now >= quiet_until {
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                // Busy: the request's own body deadline bounds it; look again later.
                tokio::time::sleep(deadline).await;
            } else {
                tokio::time::sleep(quiet_until - now).await;
            }
        }
    }
}

/// Marks one request in progress until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The HTTP/1 and HTTP/2 connection settings of every listener.
fn builder(s: &ListenSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .keep_alive_interval(s.http2_keepalive_interval)
        .keep_alive_timeout(s.http2_keepalive_timeout);
    b
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every endpoint, over TLS when `tls:` is set.
    Data,
    /// Probes, `/metrics` and `/api/v1/status` only, always plain (`listen.telemetry`).
    Telemetry,
}

/// Per-listener handles of the connection metrics.
#[derive(Clone)]
struct ConnMetrics {
    open: metrics::Gauge,
    closed_idle: metrics::Counter,
    handshake_failures: metrics::Counter,
}

/// The tenant a TLS client certificate names (`tls.tenant_from`), carried to the handlers as
/// a request extension.
#[derive(Clone)]
pub(crate) struct CertTenant(Arc<str>);

impl CertTenant {
    /// The certificate tenant of a request, if its connection's certificate named one.
    pub(crate) fn of(extensions: &http::Extensions) -> Option<&str> {
        extensions.get::<CertTenant>().map(|c| &*c.0)
    }
}

/// The listeners' TLS: the configuration being served (a reload swaps it whole; a connection
/// keeps the one it was accepted with) and the settings it was loaded from.
pub struct ListenerTls {
    /// The server configuration in force.
    pub config: arc_swap::ArcSwap<rustls::ServerConfig>,
    /// Its files and client-certificate policy.
    pub settings: crate::tls::TlsSettings,
}

/// Accepts connections until `stop` fires, then lets in-flight requests finish.
///
/// The listener's layers, outermost first, are composed here and nowhere else:
/// 1. **limit**: a connection permit, taken before `accept` (`listen.max_connections`);
/// 2. **accept** the TCP connection;
/// 3. **transport**: the byte stream the HTTP layer reads ([`transport`]), and TLS when
///    `tls:` is set (handshake within `header_read_timeout`; the client certificate's tenant
///    rides on every request of the connection as [`CertTenant`]);
/// 4. **http**: HTTP/1.1 or h2c with the head deadline and the HTTP/2 stream and keep-alive
///    limits ([`builder`]);
/// 5. **idle watch**: requests in flight and the idle deadline ([`Activity`]), and the
///    graceful close at shutdown;
/// 6. **router** ([`dispatch`]), then the protocol handler, whose first step is ingest's
///    admission (draining, credentials, tenant) and whose metrics are ingest's
///    `RequestMetrics`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    role: Role,
    stop: CancellationToken,
) {
    let settings = state.config.listen;
    let builder = Arc::new(builder(&settings));
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let conn_metrics = ConnMetrics {
        open: metrics::gauge!("traceo_connections_open", "listener" => local.clone()),
        closed_idle: metrics::counter!("traceo_connections_closed_total",
            "listener" => local.clone(), "reason" => "idle"),
        handshake_failures: metrics::counter!("traceo_tls_handshake_failures_total",
            "listener" => local.clone()),
    };
    metrics::gauge!("traceo_connections_limit", "listener" => local)
        .set(settings.max_connections as f64);
    // Connections end by themselves too; their tasks watch this to close gracefully.
    let closing = CancellationToken::new();
    loop {
        // 1. limit
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
        };
        // 2. accept
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let conn = Connection {
            state: state.clone(),
            builder: builder.clone(),
            settings,
            closing: closing.clone(),
            metrics: conn_metrics.clone(),
            role,
        };
        let tls = state.tls.clone().filter(|_| role == Role::Data);
        tokio::spawn(async move {
            // 3. transport
            let stream = transport(stream);
            match tls {
                None => conn.serve(stream, peer, None).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.load_full());
                    // The handshake has the same deadline as a request head.
                    let deadline = conn.settings.header_read_timeout;
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let cert = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| crate::tls::tenant_of(c, &tls.settings))
                                .map(|t| CertTenant(t.into()));
                            conn.serve(s, peer, cert).await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            conn.metrics.handshake_failures.increment(1);
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake did not finish within header_read_timeout");
                            conn.metrics.handshake_failures.increment(1);
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a permit until it ends: all of them back means all ended.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(GRACEFUL_TIMEOUT, permits.acquire_many(all))
        .await
        .is_err()
    {
        warn!("in-flight requests did not finish within {GRACEFUL_TIMEOUT:?}");
    }
}

/// The byte stream of an accepted connection, as the HTTP layer reads it.
fn transport(stream: TcpStream) -> TcpStream {
    let _ = stream.set_nodelay(true);
    stream
}

/// What serving one connection needs (layers 3 to 6 of [`serve`]).
struct Connection {
    state: Arc<AppState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    settings: ListenSettings,
    closing: CancellationToken,
    metrics: ConnMetrics,
    role: Role,
}

impl Connection {
    /// Serves the connection until it ends, is idle past its deadline, or the listener
    /// closes (then gracefully: requests in flight finish).
    async fn serve<S>(self, stream: S, peer: std::net::SocketAddr, cert: Option<CertTenant>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let role = self.role;
        let svc = {
            let (state, activity) = (self.state.clone(), activity.clone());
            service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(c) = &cert {
                    req.extensions_mut().insert(c.clone());
                }
                let state = state.clone();
                let in_flight = activity.begin();
                async move {
                    let response = match role {
                        Role::Data => dispatch(req, &state).await,
                        Role::Telemetry => dispatch_telemetry(req, &state).await,
                    };
                    drop(in_flight);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        self.metrics.open.increment(1.0);
        let conn = self.builder.serve_connection(TokioIo::new(stream), svc);
        let mut conn = std::pin::pin!(conn);
        let mut shutting_down = false;
        let (first, idle) = (
            self.settings.header_read_timeout,
            self.settings.idle_timeout,
        );
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.closing.cancelled(), if !shutting_down => {
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                _ = activity.idle(first, idle), if !shutting_down => {
                    debug!(%peer, "closing an idle connection");
                    self.metrics.closed_idle.increment(1);
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
        self.metrics.open.decrement(1.0);
    }
}

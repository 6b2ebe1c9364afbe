//! `listen:`: the listener addresses and the bounds every listener enforces on what clients
//! control: connections, time and bytes in flight. The defaults are safe for an edge that
//! faces clients nobody here controls; a well-behaved Prometheus or OTel SDK never hits them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

/// `listen:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// HTTP listener (remote-write, health, metrics). Default `0.0.0.0:8080`.
    #[serde(default = "default_http")]
    pub http: String,
    /// A separate plain-HTTP listener serving only `/metrics`, `/api/v1/status`, `/-/healthy`
    /// and `/-/ready`, outside TLS for in-cluster scrapers and probes (the data listeners
    /// still serve them too). Default: none.
    #[serde(default)]
    pub telemetry: Option<String>,
    /// Open connections per listener at most; past it the listener stops accepting until one
    /// closes (new clients wait in the kernel's backlog). Default 4096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request head (HTTP/1) must arrive whole within this after the first byte or the
    /// connection is closed: the slow-header (slowloris) bound. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// A request body must arrive whole within this, or the request is answered 408 and the
    /// connection closed. Default `60s` (16 MiB at 280 KiB/s).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike; HTTP/2 gets a GOAWAY first). Default `120s`, above Prometheus' and
    /// Go's 90 s idle-connection timeout so clients close first.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// HTTP/2 streams one connection may have open at once. Default 100 (gRPC's common
    /// default); each open stream may buffer up to `limits.max_body_bytes`, all of it charged
    /// to `max_inflight_bytes`.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Interval of HTTP/2 keep-alive PINGs on an otherwise quiet connection. Default `30s`.
    #[serde(default = "default_h2_keepalive_interval")]
    pub http2_keepalive_interval: HumanDuration,
    /// A PING not answered within this closes the connection. Default `20s`.
    #[serde(default = "default_h2_keepalive_timeout")]
    pub http2_keepalive_timeout: HumanDuration,
    /// Request bytes being read, decompressed and decoded, over all connections and
    /// listeners together; a request that would take more is answered 503 with
    /// `Retry-After`. Default 512 MiB.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
}

/// Far above what one process can serve (each connection is a descriptor and a task), and
/// low enough that a permit count always fits the semaphore's `u32` acquire at shutdown.
const MAX_CONNECTIONS: usize = 1_000_000;

fn default_http() -> String {
    "0.0.0.0:8080".to_string()
}
const fn default_max_connections() -> usize {
    4096
}
const fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
const fn default_body_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
const fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
const fn default_h2_streams() -> u32 {
    100
}
const fn default_h2_keepalive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
const fn default_h2_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}
const fn default_max_inflight_bytes() -> u64 {
    512 << 20
}

impl Default for ListenFile {
    fn default() -> Self {
        Self {
            http: default_http(),
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            idle_timeout: default_idle_timeout(),
            http2_max_concurrent_streams: default_h2_streams(),
            http2_keepalive_interval: default_h2_keepalive_interval(),
            http2_keepalive_timeout: default_h2_keepalive_timeout(),
            max_inflight_bytes: default_max_inflight_bytes(),
            telemetry: None,
        }
    }
}

/// `listen:` validated: what every listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct ListenSettings {
    /// Open connections per listener.
    pub max_connections: usize,
    /// HTTP/1 request head deadline.
    pub header_read_timeout: Duration,
    /// Request body deadline.
    pub body_read_timeout: Duration,
    /// Idle connection deadline.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 PING interval.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2 PING answer deadline.
    pub http2_keepalive_timeout: Duration,
    /// Request bytes in flight over all connections.
    pub max_inflight_bytes: u64,
    /// The telemetry-only listener, if any.
    pub telemetry: Option<SocketAddr>,
}

impl ListenFile {
    /// Checks the bounds (the address is parsed by the caller, which needs it first) and
    /// collects every problem.
    pub(super) fn validate(
        &self,
        max_body_bytes: usize,
        problems: &mut Vec<String>,
    ) -> ListenSettings {
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            problems.push(format!(
                "listen.max_connections: {} is not between 1 and {MAX_CONNECTIONS}",
                self.max_connections
            ));
        }
        for (field, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            if d.0.is_zero() {
                problems.push(format!("listen.{field}: must be greater than 0"));
            }
        }
        if self.http2_max_concurrent_streams == 0 {
            problems
                .push("listen.http2_max_concurrent_streams: must be greater than 0".to_string());
        }
        // One request must fit, or every large request would be refused as if the gateway
        // were busy.
        if self.max_inflight_bytes < max_body_bytes as u64 {
            problems.push(format!(
                "listen.max_inflight_bytes: {} is below limits.max_body_bytes ({max_body_bytes}); one request must fit",
                self.max_inflight_bytes
            ));
        }
        ListenSettings {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout.0,
            body_read_timeout: self.body_read_timeout.0,
            idle_timeout: self.idle_timeout.0,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_keepalive_interval: self.http2_keepalive_interval.0,
            http2_keepalive_timeout: self.http2_keepalive_timeout.0,
            max_inflight_bytes: self.max_inflight_bytes,
            telemetry: self.telemetry.as_ref().and_then(|t| {
                t.parse::<SocketAddr>()
                    .map_err(|e| {
                        problems.push(format!("listen.telemetry: {t:?} is not an address: {e}"))
                    })
                    .ok()
            }),
        }
    }

    /// The HTTP listener's address.
    pub(super) fn http_addr(&self, problems: &mut Vec<String>) -> Option<SocketAddr> {
        self.http
            .parse::<SocketAddr>()
            .map_err(|e| {
                problems.push(format!(
                    "listen.http: {:?} is not an address: {e}",
                    self.http
                ))
            })
            .ok()
    }
}

//! The HTTP listener's router: HTTP/1.1 and h2c (prior knowledge) on each port, the routes,
//! the state handlers share, and reading a request body within its limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use super::budget::{MemoryBudget, Reservation};
use super::{otlp, remote_write, ApiError, ResponseBody};
use crate::config::Config;
use crate::ingest::Ingest;

/// What request handlers share.
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// The one path every protocol's decoded request takes (it also says whether the node
    /// is draining).
    pub ingest: Arc<Ingest>,
    /// Upstream health, gossip and routes (`/api/v1/status`).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Renders `/metrics`; `None` when no recorder is installed (library tests).
    pub metrics: Option<PrometheusHandle>,
    /// Request bytes in flight over every connection (`listen.max_inflight_bytes`).
    pub budget: Arc<MemoryBudget>,
    /// TLS on every listener, when configured.
    pub tls: Option<Arc<super::conn::ListenerTls>>,
}

impl AppState {
    /// Reads a request body under `limits.max_body_bytes` (plus `framing` bytes of the
    /// protocol's own framing) and `listen.body_read_timeout`, charging it to `reservation`.
    pub(super) async fn read_body(
        &self,
        body: Incoming,
        headers: &HeaderMap,
        framing: usize,
        reservation: &mut Reservation,
    ) -> Result<Bytes, ApiError> {
        read_body(
            body,
            headers,
            self.config.limits.max_compressed_bytes + framing,
            self.config.listen.body_read_timeout,
            reservation,
        )
        .await
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response is valid")
}

/// Paths of the telemetry listener.
fn is_telemetry_path(path: &str) -> bool {
    matches!(
        path,
        "/-/healthy" | "/-/ready" | "/metrics" | "/api/v1/status"
    )
}

/// gRPC requests (by content type) go to the OTLP gRPC service, everything else to [`route`].
/// With `listen.telemetry` set, the probes, `/metrics` and `/api/v1/status` are served there
/// only: the public port answers them 404, so tenants, upstreams and routes stay off it.
pub(super) async fn dispatch(req: Request<Incoming>, state: &AppState) -> Response<ResponseBody> {
    if otlp::is_grpc(&req) {
        otlp::grpc_export(req, state).await.map(Either::Right)
    } else if state.config.listen.telemetry.is_some() && is_telemetry_path(req.uri().path()) {
        ApiError::NotFound.into_response().map(Either::Left)
    } else {
        route(req, state).await.map(Either::Left)
    }
}

/// The telemetry listener (`listen.telemetry`): the probes, `/metrics` and
/// `/api/v1/status`, and nothing else.
pub(super) async fn dispatch_telemetry(
    req: Request<Incoming>,
    state: &AppState,
) -> Response<ResponseBody> {
    let response = if is_telemetry_path(req.uri().path()) {
        route(req, state).await
    } else {
        ApiError::NotFound.into_response()
    };
    response.map(Either::Left)
}

async fn route(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/api/v1/write") => remote_write::handle(req, state).await,
        (_, "/api/v1/write") => ApiError::MethodNotAllowed("POST").into_response(),
        (&Method::POST, "/v1/metrics") => otlp::http_export(req, state).await,
        (_, "/v1/metrics") => ApiError::MethodNotAllowed("POST").into_response(),
        (&Method::GET | &Method::HEAD, "/-/healthy") => text(StatusCode::OK, "OK\n"),
        (&Method::GET, "/api/v1/status") => status(req.uri().query(), state),
        (&Method::GET | &Method::HEAD, "/-/ready") => {
            if state.ingest.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n")
            } else if let Some(why) = state.ingest.pipeline().unready_reason() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let body = state
                .metrics
                .as_ref()
                .map(|h| h.render())
                .unwrap_or_default();
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Full::new(Bytes::from(body)))
                .expect("static response is valid")
        }
        (_, "/-/healthy" | "/-/ready" | "/metrics" | "/api/v1/status") => {
            ApiError::MethodNotAllowed("GET").into_response()
        }
        _ => ApiError::NotFound.into_response(),
    }
}

/// `GET /api/v1/status`: members, upstream health (this node's and each peer's), routes and
/// the last failovers; JSON, or text with `?format=text`.
fn status(query: Option<&str>, state: &AppState) -> Response<Full<Bytes>> {
    let view = state.cluster.view();
    let limits = state.ingest.limits().view();
    let as_text = query.is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
    let (body, content_type) = if as_text {
        let mut text = crate::cluster::status::render_text(&view);
        crate::limits::render_text(&limits, &mut text);
        if let Some(ha) = state.ingest.ha() {
            crate::ha::render_text(&ha.view(), &mut text);
        }
        (text, "text/plain; charset=utf-8")
    } else {
        let mut json = serde_json::to_value(&*view).unwrap_or_default();
        if let Some(obj) = json.as_object_mut() {
            obj.insert(
                "limits".into(),
                serde_json::to_value(&limits).unwrap_or_default(),
            );
            if let Some(ha) = state.ingest.ha() {
                obj.insert(
                    "ha".into(),
                    serde_json::to_value(ha.view()).unwrap_or_default(),
                );
            }
        }
        (
            serde_json::to_string_pretty(&json).unwrap_or_default(),
            "application/json",
        )
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response is valid")
}

/// Reads a request body of at most `limit` bytes within `timeout`, charging what arrives to
/// `reservation` as it arrives: a declared `Content-Length` over the limit is refused before
/// reading. A declared length is not charged up front: a client that declares a large body
/// and sends little of it would hold budget it never uses (and starve others of it); what it
/// did send is charged, and its deadline ends the rest.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    reservation: &mut Reservation,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let read = async {
        // The usual body is one frame: kept as it came, without a copy.
        let mut first: Option<Bytes> = None;
        let mut rest: Option<bytes::BytesMut> = None;
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            len += data.len();
            if len > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            reservation
                .grow_to(len as u64)
                .map_err(ApiError::OverBudget)?;
            match (&mut first, &mut rest) {
                (None, None) => first = Some(data),
                (Some(f), None) => {
                    // Room for the declared body, but never more than twice what arrived
                    // (and was charged): a declaration alone reserves no memory.
                    let mut buf = bytes::BytesMut::with_capacity(
                        declared.map_or(2 * len, |n| n as usize).clamp(len, 2 * len),
                    );
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&data);
                    first = None;
                    rest = Some(buf);
                }
                (_, Some(buf)) => buf.extend_from_slice(&data),
            }
        }
        Ok(match (first, rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout))?
}

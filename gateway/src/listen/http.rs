//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on each port, routes, and the
//! remote-write handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use protocols::remote_write::{CONTENT_TYPE_PROTOBUF, PROTO_V1, PROTO_V2};
use protocols::Batch;
use residency_rules::{CompiledPolicy, DenyScope, SeriesDecision, TenantId, TenantView};
use tracing::debug;

use super::budget::{MemoryBudget, Reservation};
use super::{otlp, ApiError, ResponseBody};
use crate::config::Config;
use crate::pipeline::{Pipeline, Plan};
use crate::tenant;

/// What request handlers share.
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Routes batches to sinks.
    pub pipeline: Pipeline,
    /// Upstream health, gossip and routes (`/api/v1/status`).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Renders `/metrics`; `None` when no recorder is installed (library tests).
    pub metrics: Option<PrometheusHandle>,
    /// Set on SIGTERM: readiness fails so load balancers drain this node.
    pub draining: AtomicBool,
    /// The residency policy in force; reloads swap it whole.
    pub policy: arc_swap::ArcSwap<CompiledPolicy>,
    /// Status for a tenant the policy does not know (401 or 403).
    pub unknown_tenant_status: StatusCode,
    /// Request bytes in flight over every connection (`listen.max_inflight_bytes`).
    pub budget: Arc<MemoryBudget>,
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

    /// `tenant`'s view of `policy`, or the configured 401/403 for a tenant it does not know.
    pub(super) fn tenant_view<'p>(
        &self,
        policy: &'p CompiledPolicy,
        tenant: &TenantId,
    ) -> Result<TenantView<'p>, ApiError> {
        policy.tenant(tenant).map_err(|e| ApiError::UnknownTenant {
            status: self.unknown_tenant_status,
            message: e.to_string(),
        })
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response is valid")
}

/// gRPC requests (by content type) go to the OTLP gRPC service, everything else to [`route`].
pub(super) async fn dispatch(req: Request<Incoming>, state: &AppState) -> Response<ResponseBody> {
    if otlp::is_grpc(&req) {
        otlp::grpc_export(req, state).await.map(Either::Right)
    } else {
        route(req, state).await.map(Either::Left)
    }
}

async fn route(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::POST, "/api/v1/write") => remote_write(req, state).await,
        (_, "/api/v1/write") => ApiError::MethodNotAllowed("POST").into_response(),
        (&Method::POST, "/v1/metrics") => otlp::http_export(req, state).await,
        (_, "/v1/metrics") => ApiError::MethodNotAllowed("POST").into_response(),
        (&Method::GET | &Method::HEAD, "/-/healthy") => text(StatusCode::OK, "OK\n"),
        (&Method::GET, "/api/v1/status") => status(req.uri().query(), state),
        (&Method::GET | &Method::HEAD, "/-/ready") => {
            if state.draining.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n")
            } else if let Some(why) = state.pipeline.unready_reason() {
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
    let as_text = query.is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
    let (body, content_type) = if as_text {
        (
            crate::cluster::status::render_text(&view),
            "text/plain; charset=utf-8",
        )
    } else {
        (
            serde_json::to_string_pretty(&*view).unwrap_or_default(),
            "application/json",
        )
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response is valid")
}

/// The remote-write message a request carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RwVersion {
    V1,
    V2,
}

impl RwVersion {
    fn protocol(self) -> &'static str {
        match self {
            RwVersion::V1 => "remote_write_v1",
            RwVersion::V2 => "remote_write_v2",
        }
    }
}

/// What a request stored, for the `X-Prometheus-Remote-Write-*-Written` headers: exactly what
/// was made durable, so series the policy dropped are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Written {
    pub(super) samples: u64,
    pub(super) histograms: u64,
    pub(super) exemplars: u64,
}

impl Written {
    fn of(batch: &Batch) -> Written {
        Written {
            samples: batch.sample_count() as u64,
            histograms: batch.histogram_count() as u64,
            exemplars: batch.exemplar_count() as u64,
        }
    }

    fn minus(self, other: Written) -> Written {
        Written {
            samples: self.samples.saturating_sub(other.samples),
            histograms: self.histograms.saturating_sub(other.histograms),
            exemplars: self.exemplars.saturating_sub(other.exemplars),
        }
    }
}

/// `POST /api/v1/write`: remote-write 1.0 and 2.0. Answers 204 once the data is durable (see
/// `durability.mode`), with the counts of what was written; never a 2xx for a partial write.
async fn remote_write(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let started = Instant::now();
    // The request's `tenant` label, set once it authenticated (see `remote_write_inner`).
    let mut label: Option<String> = None;
    // Known before anything can fail but the Content-Type itself (then counted as 1.0).
    let version = check_content_type(req.headers()).unwrap_or(RwVersion::V1);
    let protocol = version.protocol();
    let result = remote_write_inner(req, state, &mut label).await;
    let tenant_label = label.unwrap_or_else(|| crate::telemetry::tenant_label(None));
    let response = match result {
        Ok(w) => Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("x-prometheus-remote-write-samples-written", w.samples)
            .header("x-prometheus-remote-write-histograms-written", w.histograms)
            .header("x-prometheus-remote-write-exemplars-written", w.exemplars)
            .body(Full::new(Bytes::new()))
            .expect("static response is valid"),
        Err(e) => {
            metrics::counter!("traceo_rejections_total",
                "protocol" => protocol, "tenant" => tenant_label.clone(), "reason" => e.reason())
            .increment(1);
            debug!(tenant = %tenant_label, status = %e.status(), error = %e, "remote-write rejected");
            e.into_response()
        }
    };
    let code = response.status().as_u16().to_string();
    metrics::counter!("traceo_requests_total",
        "protocol" => protocol, "tenant" => tenant_label.clone(), "code" => code)
    .increment(1);
    metrics::histogram!("traceo_request_duration_seconds",
        "protocol" => protocol, "tenant" => tenant_label)
    .record(started.elapsed().as_secs_f64());
    response
}

async fn remote_write_inner(
    req: Request<Incoming>,
    state: &AppState,
    label_out: &mut Option<String>,
) -> Result<Written, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Draining);
    }
    let headers = req.headers();
    let version = check_content_type(headers)?;
    check_content_encoding(headers)?;
    let tenant = tenant::identify(headers, &state.config).map_err(ApiError::Unauthorized)?;
    // One policy for the whole request, even if a reload swaps it meanwhile.
    let policy = state.policy.load_full();
    let view = state.tenant_view(&policy, &tenant)?;
    // Only a tenant that passed authentication and the policy names itself in self-metrics:
    // ids a client makes up must not become series on `/metrics`. Computed once per request.
    let tenant_label = crate::telemetry::tenant_label(Some(&tenant));
    *label_out = Some(tenant_label.clone());

    let limits = state.config.limits;
    let mut reservation = state.budget.reservation();
    let (parts, body) = req.into_parts();
    let body = state
        .read_body(body, &parts.headers, 0, &mut reservation)
        .await?;
    let labels = [
        ("protocol", version.protocol().to_string()),
        ("tenant", tenant_label),
    ];
    metrics::counter!("traceo_received_bytes_total", &labels).increment(body.len() as u64);

    // The decompressed buffer is charged before the decoder allocates it (a bad or
    // oversized header is left to the decoder, which refuses it without allocating), and
    // the decoded columns once they exist (bounded per request by the element limits).
    if let Ok(n) = protocols::snappy::decompressed_len(&body, &limits) {
        reservation.grow(n as u64).map_err(ApiError::OverBudget)?;
    }
    let batch = match version {
        RwVersion::V1 => protocols::remote_write::v1::decode(&body, &limits),
        RwVersion::V2 => protocols::remote_write::v2::decode(&body, &limits),
    }
    .map_err(ApiError::Decode)?;
    drop(body);
    reservation
        .grow(batch.heap_bytes() as u64)
        .map_err(ApiError::OverBudget)?;
    let (plan, dropped) = plan(&view, &tenant, &batch)?;
    let written = Written::of(&batch).minus(dropped);
    if !plan.is_empty() {
        state
            .pipeline
            .submit(&view, &tenant, batch, plan)
            .await
            .map_err(ApiError::Unavailable)?;
    }
    metrics::counter!("traceo_samples_total", &labels).increment(written.samples);
    metrics::counter!("traceo_histograms_total", &labels).increment(written.histograms);
    metrics::counter!("traceo_exemplars_total", &labels).increment(written.exemplars);
    Ok(written)
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

/// Counts of what the policy dropped (`deny_series`), for the written counts.
fn counts_of(series: &protocols::SeriesRef<'_>) -> Written {
    Written {
        samples: series.samples().len() as u64,
        histograms: series.histograms().len() as u64,
        exemplars: series.exemplars().len() as u64,
    }
}

/// Residency decisions for every series of `batch`: where each may go and what to edit, and
/// the counts of what it dropped. A tenant without label rules skips the per-series loop. A
/// `deny_request` match refuses the whole request before anything reaches a sink;
/// `deny_series` drops the series (counted).
pub(super) fn plan(
    view: &TenantView<'_>,
    tenant: &TenantId,
    batch: &Batch,
) -> Result<(Plan, Written), ApiError> {
    if !view.has_rules() {
        return Ok((Plan::all(view.default_regions()), Written::default()));
    }
    let mut plan = Plan::default();
    let mut dropped = Written::default();
    for (i, series) in batch.series().enumerate() {
        match view.decide(series.labels().iter()) {
            SeriesDecision::Allow { regions, edits } => {
                plan.add(i as u32, regions, &edits, view, &series)
            }
            SeriesDecision::Deny(d) => {
                let rule = d.rule.as_deref().unwrap_or("classes").to_string();
                let scope = match d.scope {
                    DenyScope::Request => "request",
                    DenyScope::Series => "series",
                };
                metrics::counter!("traceo_residency_denied_total",
                    "tenant" => crate::telemetry::tenant_label(Some(tenant)), "scope" => scope, "rule" => rule)
                .increment(1);
                if d.scope == DenyScope::Request {
                    return Err(ApiError::PolicyDenied(d.reason.to_string()));
                }
                let c = counts_of(&series);
                dropped.samples += c.samples;
                dropped.histograms += c.histograms;
                dropped.exemplars += c.exemplars;
            }
        }
    }
    Ok((plan, dropped))
}

/// Remote-write needs `application/x-protobuf`; its `proto=` parameter names the message:
/// `prometheus.WriteRequest` (1.0, also when absent, as 1.0 senders omit it) or
/// `io.prometheus.write.v2.Request` (2.0). Any other message is a 415, which a 2.0 sender
/// takes as the cue to fall back to 1.0. A missing header is accepted as 1.0.
fn check_content_type(headers: &HeaderMap) -> Result<RwVersion, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(RwVersion::V1);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType("Content-Type is not visible ASCII".into()))?;
    let mut parts = s.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {s:?}: remote-write needs {CONTENT_TYPE_PROTOBUF}"
        )));
    }
    let mut version = RwVersion::V1;
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            let v = v.trim().trim_matches('"');
            if k.trim().eq_ignore_ascii_case("proto") {
                version = match v {
                    PROTO_V1 => RwVersion::V1,
                    PROTO_V2 => RwVersion::V2,
                    _ => {
                        return Err(ApiError::UnsupportedMediaType(format!(
                        "unsupported proto {v:?}: this endpoint decodes {PROTO_V1} and {PROTO_V2}"
                    )))
                    }
                };
            }
        }
    }
    Ok(version)
}

/// Remote-write bodies are snappy block-compressed; a missing header is taken as snappy (the
/// body then either decodes or is a 400).
fn check_content_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(()),
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("snappy") => Ok(()),
        Some(v) => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {:?}: remote-write bodies are snappy",
            v.unwrap_or("<not ASCII>")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: header::HeaderName, v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn content_type_variants() {
        assert!(check_content_type(&HeaderMap::new()).is_ok());
        assert!(check_content_type(&with(header::CONTENT_TYPE, "application/x-protobuf")).is_ok());
        assert!(check_content_type(&with(
            header::CONTENT_TYPE,
            "application/x-protobuf;proto=prometheus.WriteRequest"
        ))
        .is_ok());
        assert!(check_content_type(&with(header::CONTENT_TYPE, "application/json")).is_err());
        let v2 = check_content_type(&with(
            header::CONTENT_TYPE,
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        ));
        assert_eq!(v2.unwrap(), RwVersion::V2);
        let other = check_content_type(&with(
            header::CONTENT_TYPE,
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        ))
        .unwrap_err();
        assert_eq!(other.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn content_encoding_variants() {
        assert!(check_content_encoding(&HeaderMap::new()).is_ok());
        assert!(check_content_encoding(&with(header::CONTENT_ENCODING, "snappy")).is_ok());
        let e = check_content_encoding(&with(header::CONTENT_ENCODING, "gzip")).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}

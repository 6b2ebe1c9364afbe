//! OTLP metrics export over HTTP (`POST /v1/metrics`, protobuf or JSON, optionally gzip) and
//! gRPC (`MetricsService/Export`).
//!
//! Both transports read and decode the same way and hand the translated tenant groups to
//! [`crate::ingest`], which answers once every sink made the data durable. They differ only
//! in how an outcome is spelled. OTLP clients retry HTTP 429/502/503/504 and gRPC `UNAVAILABLE` (or
//! `RESOURCE_EXHAUSTED` with `RetryInfo`) and nothing else, so every condition that retrying
//! can fix (backpressure, a sink down, shutdown) is a 503 / `UNAVAILABLE` with a retry delay;
//! bad input is 400 / `INVALID_ARGUMENT`, which clients drop. A `partial_success` (a 200 the
//! client does not retry) is used only for points the translation refused as unrepresentable.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prost::Message;
use protocols::otlp::proto::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse, Status};
use protocols::otlp::{self, Encoding};
use residency_rules::TenantId;
use tracing::debug;

use super::budget::Reservation;
use super::conn::CertTenant;
use super::grpc::{self, Code, GrpcBody};
use super::http::AppState;
use super::ApiError;
use crate::ingest::{Group, Protocol, RequestMetrics};

/// The gRPC method of an OTLP metrics export.
pub const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Seconds an OTLP client should wait before retrying.
const RETRY_AFTER_SECS: u32 = 1;

/// True for a gRPC request (by its content type), which goes to [`grpc_export`] whatever its
/// path, so that a wrong method gets a gRPC `UNIMPLEMENTED` rather than an HTTP 404.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// An export the gateway kept (all of it, or all but the refused points).
struct Accepted {
    rejected: u64,
    message: String,
}

impl Accepted {
    fn response(&self) -> ExportMetricsServiceResponse {
        ExportMetricsServiceResponse {
            partial_success: (self.rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: self.rejected as i64,
                error_message: self.message.clone(),
            }),
        }
    }
}

/// The tenant of the whole request, or `None` when each resource names its own (then each
/// resource group is authenticated with its own tenant after decoding).
fn admit(
    parts: &http::request::Parts,
    state: &AppState,
    metrics: &mut RequestMetrics,
) -> Result<Option<TenantId>, ApiError> {
    let per_resource = state.config.otlp.translate.tenant_attribute.is_some();
    let cert = CertTenant::of(&parts.extensions);
    Ok(state
        .ingest
        .admit(&parts.headers, cert, per_resource, metrics)?)
}

/// Decodes and translates one export and hands its tenant groups to ingest; answers once
/// every sink made them durable.
async fn export(
    parts: &http::request::Parts,
    fixed_tenant: Option<TenantId>,
    message: &[u8],
    encoding: Encoding,
    state: &AppState,
    metrics: &mut RequestMetrics,
    reservation: &mut Reservation,
) -> Result<Accepted, ApiError> {
    let limits = state.config.limits;
    let request = otlp::decode(message, encoding, &limits).map_err(ApiError::Decode)?;
    let translation = otlp::translate(&request, &state.config.otlp.translate, &limits)
        .map_err(ApiError::Decode)?;
    drop(request);
    // The decoded batches take their share of the in-flight budget until submitted (the
    // decoded message tree, bounded by the pre-scan, is gone by now).
    let decoded: usize = translation
        .batches
        .iter()
        .map(|g| g.batch.heap_bytes())
        .sum();
    reservation
        .grow(decoded as u64)
        .map_err(ApiError::OverBudget)?;
    let refused = Accepted {
        rejected: translation.rejected_points,
        message: translation.error_message(),
    };
    let groups = translation
        .batches
        .into_iter()
        .map(|g| Group {
            tenant_attribute: g.tenant,
            batch: g.batch,
            points: Some(g.points),
        })
        .collect();
    let cert = CertTenant::of(&parts.extensions);
    let ingested = state
        .ingest
        .ingest(metrics, &parts.headers, cert, fixed_tenant, groups)
        .await?;
    let mut refused = refused;
    if let Some(limited) = ingested.series_limited {
        // Persistent, so a partial success (a 200 clients do not retry), never an error
        // that would have the kept points sent again.
        metrics.rejected("series_limit", StatusCode::OK, &limited);
        refused.rejected += limited.points;
        refused.message = if refused.message.is_empty() {
            limited.to_string()
        } else {
            format!("{}; {limited}", refused.message)
        };
    }
    if refused.rejected > 0 {
        let tenant = metrics.tenant_label().to_string();
        metrics::counter!("traceo_otlp_rejected_points_total", "tenant" => tenant)
            .increment(refused.rejected);
    }
    Ok(refused)
}

/// Inflates a gzip body, charging what it inflates to to the request's reservation as it
/// grows, so a bomb is refused at the per-request limit or at the global budget, whichever
/// comes first, before the memory is taken.
fn inflate(
    body: &[u8],
    limits: &protocols::DecodeLimits,
    reservation: &mut Reservation,
) -> Result<Bytes, ApiError> {
    let mut over = None;
    let out = otlp::gunzip_reserving(body, limits, |n| match reservation.grow(n as u64) {
        Ok(()) => true,
        Err(e) => {
            over = Some(e);
            false
        }
    });
    match (out, over) {
        (Ok(v), _) => Ok(Bytes::from(v)),
        (Err(_), Some(e)) => Err(ApiError::OverBudget(e)),
        (Err(e), None) => Err(ApiError::Decode(e)),
    }
}

/// The gRPC code for an error, and the retry delay when the client should retry. A rate
/// limit is `RESOURCE_EXHAUSTED` with `RetryInfo` (OTLP clients retry it only with one), or
/// `UNAVAILABLE` where the tenant's limits ask for 503.
fn grpc_code(e: &ApiError) -> (Code, Option<u32>) {
    let retry = e.retry_after_secs().or(Some(RETRY_AFTER_SECS));
    match e.status() {
        StatusCode::UNAUTHORIZED => (Code::Unauthenticated, None),
        StatusCode::FORBIDDEN => (Code::PermissionDenied, None),
        StatusCode::PAYLOAD_TOO_LARGE => (Code::ResourceExhausted, None),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => (Code::Unimplemented, None),
        StatusCode::TOO_MANY_REQUESTS => (Code::ResourceExhausted, retry),
        StatusCode::SERVICE_UNAVAILABLE => (Code::Unavailable, retry),
        _ => (Code::InvalidArgument, None),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

fn http_encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: OTLP/HTTP bodies are application/x-protobuf or application/json"
                .into(),
        ));
    };
    let s = v.to_str().unwrap_or("<not ASCII>");
    let media = s.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case(otlp::CONTENT_TYPE_PROTOBUF) {
        Ok(Encoding::Protobuf)
    } else if media.eq_ignore_ascii_case(otlp::CONTENT_TYPE_JSON) {
        Ok(Encoding::Json)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {s:?}: OTLP/HTTP bodies are application/x-protobuf or \
             application/json"
        )))
    }
}

fn http_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("identity") => Ok(false),
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("gzip") => Ok(true),
        Some(v) => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {:?}: OTLP bodies are gzip or uncompressed",
            v.unwrap_or("<not ASCII>")
        ))),
    }
}

fn content_type(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Protobuf => otlp::CONTENT_TYPE_PROTOBUF,
        Encoding::Json => otlp::CONTENT_TYPE_JSON,
    }
}

fn http_body(encoding: Encoding, accepted: &Accepted) -> Bytes {
    match encoding {
        Encoding::Protobuf => Bytes::from(accepted.response().encode_to_vec()),
        Encoding::Json if accepted.rejected == 0 => Bytes::from_static(b"{}"),
        Encoding::Json => Bytes::from(
            serde_json::json!({
                "partialSuccess": {
                    // 64-bit integers are strings in the OTLP JSON mapping.
                    "rejectedDataPoints": accepted.rejected.to_string(),
                    "errorMessage": accepted.message,
                }
            })
            .to_string(),
        ),
    }
}

/// A `google.rpc.Status` in the request's encoding (JSON when the encoding is unknown).
fn status_body(encoding: Encoding, status: &Status, retry_after: Option<u32>) -> Bytes {
    match encoding {
        Encoding::Protobuf => Bytes::from(status.encode_to_vec()),
        Encoding::Json => {
            let details: Vec<serde_json::Value> = retry_after
                .map(|s| {
                    serde_json::json!({
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format!("{s}s"),
                    })
                })
                .into_iter()
                .collect();
            let mut v = serde_json::json!({ "code": status.code, "message": status.message });
            if !details.is_empty() {
                v["details"] = serde_json::Value::Array(details);
            }
            Bytes::from(v.to_string())
        }
    }
}

/// `POST /v1/metrics`.
pub async fn http_export(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let mut metrics = RequestMetrics::start(Protocol::OtlpHttp);
    let encoding = http_encoding(req.headers());
    let reply_encoding = *encoding.as_ref().unwrap_or(&Encoding::Json);
    let result = async {
        let encoding = encoding?;
        let gzip = http_gzip(req.headers())?;
        let (parts, body) = req.into_parts();
        let fixed = admit(&parts, state, &mut metrics)?;
        let limits = state.config.limits;
        let mut reservation = state.budget.reservation();
        let body = state
            .read_body(body, &parts.headers, 0, &mut reservation)
            .await?;
        metrics.received(body.len());
        let message = if gzip {
            inflate(&body, &limits, &mut reservation)?
        } else {
            body
        };
        export(
            &parts,
            fixed,
            &message,
            encoding,
            state,
            &mut metrics,
            &mut reservation,
        )
        .await
    }
    .await;
    let response = match result {
        Ok(accepted) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type(reply_encoding))
            .body(Full::new(http_body(reply_encoding, &accepted)))
            .expect("static headers are valid"),
        Err(e) => {
            metrics.rejected(e.reason(), e.status(), &e);
            let (code, retry) = grpc_code(&e);
            let status = grpc::status(code, &e.to_string(), retry);
            let body = status_body(reply_encoding, &status, retry);
            let mut r = e.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type(reply_encoding)),
            );
            *r.body_mut() = Full::new(body);
            r
        }
    };
    metrics.finish(response.status().as_u16().to_string());
    response
}

// ---------------------------------------------------------------------------------------
// gRPC

/// Why a gRPC export failed: an outcome shared with HTTP, or a gRPC framing problem.
enum GrpcFailure {
    Api(ApiError),
    Frame(grpc::FrameError),
}

impl From<ApiError> for GrpcFailure {
    fn from(e: ApiError) -> Self {
        GrpcFailure::Api(e)
    }
}

/// `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`.
pub async fn grpc_export(req: Request<Incoming>, state: &AppState) -> Response<GrpcBody> {
    let mut metrics = RequestMetrics::start(Protocol::OtlpGrpc);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(content_type, "application/grpc" | "application/grpc+proto") {
        // Per the gRPC spec an unsupported content type is an HTTP error, not a gRPC status.
        let mut r = Response::new(GrpcBody::default());
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        metrics.finish("415".into());
        return r;
    }
    let result: Result<Accepted, GrpcFailure> = async {
        if req.uri().path() != GRPC_EXPORT_PATH {
            return Err(GrpcFailure::Frame(grpc::FrameError {
                code: Code::Unimplemented,
                message: format!(
                    "unknown method {}: this server implements {GRPC_EXPORT_PATH}",
                    req.uri().path()
                ),
            }));
        }
        let (parts, body) = req.into_parts();
        let fixed = admit(&parts, state, &mut metrics)?;
        let limits = state.config.limits;
        let mut reservation = state.budget.reservation();
        // Five bytes of gRPC message framing come on top of the message.
        let body = state
            .read_body(body, &parts.headers, 5, &mut reservation)
            .await?;
        metrics.received(body.len());
        let (compressed, message) = grpc::unframe(&body).map_err(GrpcFailure::Frame)?;
        let message = if compressed {
            let encoding = parts
                .headers
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("identity");
            match encoding {
                "gzip" => inflate(&message, &limits, &mut reservation)?,
                "identity" => {
                    return Err(GrpcFailure::Frame(grpc::FrameError {
                        code: Code::Internal,
                        message: "message is flagged compressed but grpc-encoding is identity"
                            .into(),
                    }))
                }
                other => {
                    return Err(GrpcFailure::Frame(grpc::FrameError {
                        code: Code::Unimplemented,
                        message: format!("grpc-encoding {other:?} is not supported; use gzip"),
                    }))
                }
            }
        } else {
            message
        };
        Ok(export(
            &parts,
            fixed,
            &message,
            Encoding::Protobuf,
            state,
            &mut metrics,
            &mut reservation,
        )
        .await?)
    }
    .await;
    let (response, code) = match result {
        Ok(accepted) => (grpc::ok(&accepted.response()), Code::Ok),
        Err(GrpcFailure::Api(e)) => {
            metrics.rejected(e.reason(), e.status(), &e);
            let (code, retry) = grpc_code(&e);
            (
                grpc::error(&grpc::status(code, &e.to_string(), retry)),
                code,
            )
        }
        Err(GrpcFailure::Frame(f)) => {
            debug!(protocol = metrics.protocol().label(), error = %f.message, "gRPC framing refused");
            (grpc::error(&grpc::status(f.code, &f.message, None)), f.code)
        }
    };
    metrics.finish(format!("grpc_{}", code as i32));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SubmitError;
    use crate::tenant::AuthError;

    #[test]
    fn each_failure_maps_to_the_answer_that_makes_otlp_clients_retry_or_not() {
        let overloaded = ApiError::Unavailable(SubmitError::Overloaded { sink: "k".into() });
        assert_eq!(grpc_code(&overloaded), (Code::Unavailable, Some(1)));
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(grpc_code(&ApiError::Draining), (Code::Unavailable, Some(1)));
        let bad = ApiError::Decode(protocols::DecodeError::Json("x".into()));
        assert_eq!(grpc_code(&bad), (Code::InvalidArgument, None));
        let big = ApiError::Decode(protocols::DecodeError::InflatedTooLarge { limit: 1 });
        assert_eq!(grpc_code(&big), (Code::ResourceExhausted, None));
        let who = ApiError::Unauthorized(AuthError::Missing);
        assert_eq!(grpc_code(&who), (Code::Unauthenticated, None));
        let denied = ApiError::PolicyDenied("no".into());
        assert_eq!(grpc_code(&denied), (Code::PermissionDenied, None));
        // A rate limit: RESOURCE_EXHAUSTED with the bucket's delay in RetryInfo (OTLP clients
        // retry it only with one), or UNAVAILABLE where the tenant asked for 503.
        let limited = |status| {
            ApiError::Limited(crate::limits::LimitError::RateLimited {
                tenant: "a".into(),
                kind: crate::limits::RateKind::Ingestion,
                global: 10.0,
                share: 10.0,
                members: 1,
                retry_after: std::time::Duration::from_secs(3),
                status,
            })
        };
        use crate::limits::RateLimitedStatus::{TooManyRequests, Unavailable};
        assert_eq!(
            grpc_code(&limited(TooManyRequests)),
            (Code::ResourceExhausted, Some(3))
        );
        assert_eq!(
            grpc_code(&limited(Unavailable)),
            (Code::Unavailable, Some(3))
        );
    }

    #[test]
    fn json_answers_follow_the_otlp_json_mapping() {
        let partial = Accepted {
            rejected: 3,
            message: "delta".into(),
        };
        assert_eq!(
            http_body(Encoding::Json, &partial),
            r#"{"partialSuccess":{"errorMessage":"delta","rejectedDataPoints":"3"}}"#
        );
        let full = Accepted {
            rejected: 0,
            message: String::new(),
        };
        assert_eq!(http_body(Encoding::Json, &full), "{}");
        assert!(http_body(Encoding::Protobuf, &full).is_empty());
        let s = grpc::status(Code::Unavailable, "busy", Some(1));
        assert_eq!(
            status_body(Encoding::Json, &s, Some(1)),
            r#"{"code":14,"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1s"}],"message":"busy"}"#
        );
    }

    #[test]
    fn content_types_and_encodings() {
        let mut h = HeaderMap::new();
        assert!(http_encoding(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(http_encoding(&h).unwrap(), Encoding::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        assert_eq!(http_encoding(&h).unwrap(), Encoding::Protobuf);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            http_encoding(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(http_gzip(&h).unwrap());
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            http_gzip(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}

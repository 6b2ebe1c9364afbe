//! The remote-write handler (`POST /api/v1/write`, 1.0 and 2.0): checks the content type and
//! encoding, reads and decodes the body within its limits, hands the batch to ingest, and
//! answers with the counts of what was written.

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use protocols::remote_write::{CONTENT_TYPE_PROTOBUF, PROTO_V1, PROTO_V2};

use super::conn::CertTenant;
use super::http::AppState;
use super::ApiError;
use crate::ingest::{Group, Ingested, Protocol, RequestMetrics, Written};

/// The remote-write message a request carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RwVersion {
    V1,
    V2,
}

impl RwVersion {
    fn protocol(self) -> Protocol {
        match self {
            RwVersion::V1 => Protocol::RemoteWriteV1,
            RwVersion::V2 => Protocol::RemoteWriteV2,
        }
    }
}

/// `POST /api/v1/write`: remote-write 1.0 and 2.0. Answers 204 once the data is durable (see
/// `durability.mode`), with the counts of what was written; never a 2xx for a partial write.
pub(super) async fn handle(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    // Known before anything can fail but the Content-Type itself (then counted as 1.0).
    let version = check_content_type(req.headers()).unwrap_or(RwVersion::V1);
    let mut metrics = RequestMetrics::start(version.protocol());
    let response = match decode_and_ingest(req, state, &mut metrics).await {
        // All of it from a non-elected HA replica: 202, a 2xx so the sender does not retry
        // what the elected replica already sent. The written counts are the request's own:
        // a remote-write 2.0 sender takes a 2xx saying less than it sent as a failure, and
        // the pair's copy of this data is stored.
        Ok(Ingested {
            written: w,
            series_limited: None,
            deduplicated,
        }) if deduplicated != Written::default() && w == Written::default() => written(
            Response::builder().status(StatusCode::ACCEPTED),
            deduplicated,
        )
        .body(Full::new(Bytes::new()))
        .expect("static response is valid"),
        Ok(Ingested {
            written: w,
            series_limited: None,
            ..
        }) => written(Response::builder().status(StatusCode::NO_CONTENT), w)
            .body(Full::new(Bytes::new()))
            .expect("static response is valid"),
        // Series over the tenant's limit were refused, the rest written: a 400 that says
        // what was written, never a 2xx for a partial write.
        Ok(Ingested {
            written: w,
            series_limited: Some(limited),
            ..
        }) => {
            let e = ApiError::SeriesLimited(limited);
            metrics.rejected(e.reason(), e.status(), &e);
            let mut r = e.into_response();
            let headers = written(Response::builder(), w);
            if let Some(h) = headers.headers_ref() {
                r.headers_mut().extend(h.clone());
            }
            r
        }
        Err(e) => {
            metrics.rejected(e.reason(), e.status(), &e);
            e.into_response()
        }
    };
    metrics.finish(response.status().as_u16().to_string());
    response
}

/// The `X-Prometheus-Remote-Write-*-Written` headers: what was made durable.
fn written(b: http::response::Builder, w: Written) -> http::response::Builder {
    b.header("x-prometheus-remote-write-samples-written", w.samples)
        .header("x-prometheus-remote-write-histograms-written", w.histograms)
        .header("x-prometheus-remote-write-exemplars-written", w.exemplars)
}

async fn decode_and_ingest(
    req: Request<Incoming>,
    state: &AppState,
    metrics: &mut RequestMetrics,
) -> Result<Ingested, ApiError> {
    let headers = req.headers();
    // A draining node says so first, whatever else is wrong with the request (load
    // balancers and senders retry a 503 elsewhere).
    if state.ingest.is_draining() {
        return Err(ApiError::Draining);
    }
    let version = check_content_type(headers)?;
    check_content_encoding(headers)?;
    let cert = CertTenant::of(req.extensions());
    let tenant = state.ingest.admit(headers, cert, false, metrics)?;

    let limits = state.config.limits;
    let mut reservation = state.budget.reservation();
    let (parts, body) = req.into_parts();
    let body = state
        .read_body(body, &parts.headers, 0, &mut reservation)
        .await?;
    metrics.received(body.len());

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
    let group = Group {
        tenant_attribute: None,
        batch,
        points: None,
    };
    Ok(state
        .ingest
        .ingest(
            metrics,
            &parts.headers,
            CertTenant::of(&parts.extensions),
            tenant,
            vec![group],
        )
        .await?)
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

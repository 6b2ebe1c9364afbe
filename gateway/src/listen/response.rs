//! The one place internal errors become HTTP answers, per the remote-write 1.0 spec: 2xx only
//! for data made durable, 4xx for requests that must not be retried, 5xx for retryable ones
//! (remote-write senders retry every 5xx; Prometheus does not retry a 429 unless configured to,
//! so backpressure is a 503 with `Retry-After`).

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use protocols::DecodeError;

use crate::ingest::IngestError;
use crate::pipeline::SubmitError;
use crate::tenant::AuthError;
use crate::wal::writer::AppendError;
use crate::wal::WalError;

/// Seconds a client should wait after a 503; short, since most causes are momentary.
const RETRY_AFTER_SECS: u32 = 1;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Wrong `Content-Type` or `Content-Encoding`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(AuthError),
    /// A tenant the residency policy does not know: 401 or 403 by config.
    #[error("{message}")]
    UnknownTenant {
        /// 401 or 403.
        status: StatusCode,
        /// What to tell the client.
        message: String,
    },
    /// Two sources name different tenants for the same data (OTLP: header and resource
    /// attribute).
    #[error("{0}")]
    TenantConflict(String),
    /// A residency rule refused the request.
    #[error("refused by residency policy: {0}")]
    PolicyDenied(String),
    /// The body is over the size limit.
    #[error("request body is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("reading request body: {0}")]
    BodyRead(String),
    /// The body did not arrive within `listen.body_read_timeout`.
    #[error("the request body did not arrive within {0:?} (listen.body_read_timeout)")]
    BodyTimeout(std::time::Duration),
    /// Reading or decoding it would pass the budget of request bytes in flight.
    #[error("{0}")]
    OverBudget(crate::listen::budget::OverBudget),
    /// The body could not be decoded.
    #[error("{0}")]
    Decode(DecodeError),
    /// The data could not be made durable now; retry.
    #[error("{0}")]
    Unavailable(SubmitError),
    /// HA labels that cannot be tracked: 400 naming the limit.
    #[error("{0}")]
    Ha(crate::ha::HaError),
    /// Over a tenant rate limit: 429 (or 503 by the tenant's `rate_limited_status`) with
    /// `Retry-After` from the bucket.
    #[error("{0}")]
    Limited(crate::limits::LimitError),
    /// New series over the tenant's active-series limit were refused, the rest written: a
    /// 400 (persistent; senders must not retry it), never a 2xx for a partial write.
    #[error("{0}")]
    SeriesLimited(crate::limits::SeriesLimited),
    /// The gateway is shutting down.
    #[error("shutting down")]
    Draining,
    /// No such path.
    #[error("not found")]
    NotFound,
    /// Path exists, method does not.
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Unauthorized(a) => ApiError::Unauthorized(a),
            IngestError::UnknownTenant { status, message } => {
                ApiError::UnknownTenant { status, message }
            }
            IngestError::TenantConflict(m) => ApiError::TenantConflict(m),
            IngestError::PolicyDenied(m) => ApiError::PolicyDenied(m),
            IngestError::Unavailable(s) => ApiError::Unavailable(s),
            IngestError::Limited(l) => ApiError::Limited(l),
            IngestError::Ha(h) => ApiError::Ha(h),
            IngestError::Draining => ApiError::Draining,
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized(
                AuthError::InvalidTenant(_)
                | AuthError::Malformed(_)
                | AuthError::MultipleTenants(_),
            ) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::UnknownTenant { status, .. } => *status,
            ApiError::PolicyDenied(_) => StatusCode::FORBIDDEN,
            ApiError::TenantConflict(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::OverBudget(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Decode(e) if e.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Decode(_) => StatusCode::BAD_REQUEST,
            // `durability.mode: upstream`: the upstream refused the data for good, so a retry
            // would be refused again (and would block the sender's queue); say so with a 400.
            ApiError::Unavailable(SubmitError::Sink { error, .. }) if error.is_permanent() => {
                StatusCode::BAD_REQUEST
            }
            // What a sink could not read back is refused, never acknowledged: not retryable.
            ApiError::Unavailable(SubmitError::Unstorable { error, .. })
                if error.is_too_large() =>
            {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unavailable(SubmitError::Unstorable { .. }) => StatusCode::BAD_REQUEST,
            ApiError::Limited(l) if l.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::SeriesLimited(_) | ApiError::Ha(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) | ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A short, low-cardinality reason for the rejections metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::UnknownTenant { .. } => "unknown_tenant",
            ApiError::PolicyDenied(_) => "policy_denied",
            ApiError::TenantConflict(_) => "tenant_conflict",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyRead(_) => "body_read",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::OverBudget(_) => "memory_budget",
            ApiError::Decode(e) => e.reason(),
            ApiError::Unavailable(SubmitError::Overloaded { .. }) => "overloaded",
            ApiError::Unavailable(SubmitError::Unstorable { .. }) => "unstorable_series",
            ApiError::Unavailable(SubmitError::Wal { error, .. }) => match error {
                AppendError::Busy => "overloaded",
                AppendError::Wal(WalError::Full { .. }) => "wal_full",
                AppendError::Wal(WalError::OwnerFull { .. }) => "wal_tenant_full",
                _ => "wal_unavailable",
            },
            ApiError::Unavailable(SubmitError::Sink { error, .. }) if error.is_permanent() => {
                "upstream_refused"
            }
            ApiError::Unavailable(_) => "sink_unavailable",
            ApiError::Limited(l) => l.reason(),
            ApiError::SeriesLimited(_) => "series_limit",
            ApiError::Ha(
                crate::ha::HaError::LabelTooLong { .. }
                | crate::ha::HaError::LabelUnprintable { .. },
            ) => "ha_bad_label",
            ApiError::Ha(_) => "ha_too_many_clusters",
            ApiError::Draining => "draining",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// True for refusals answered before the request body was read (whole or at all). An
    /// HTTP/1.1 connection cannot carry another request after an unread body, so the answer
    /// says `Connection: close` rather than letting the client's next request fail on a
    /// connection that silently closed (HTTP/2 drops the header; its streams are independent).
    pub fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            ApiError::UnsupportedMediaType(_)
                | ApiError::Unauthorized(_)
                | ApiError::UnknownTenant { .. }
                | ApiError::BodyTooLarge { .. }
                | ApiError::BodyRead(_)
                | ApiError::BodyTimeout(_)
                | ApiError::OverBudget(_)
                | ApiError::Draining
                | ApiError::NotFound
                | ApiError::MethodNotAllowed(_)
        )
    }

    /// Seconds the client should wait before retrying, for every retryable answer (each
    /// 503, and a 429): a rate limit's from its bucket, others a short constant.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            ApiError::Limited(l) => Some(l.retry_after_secs()),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The response: status, a plain-text message, and the headers the status calls for.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if self.leaves_body_unread() {
            b = b.header(header::CONNECTION, "close");
        }
        match &self {
            ApiError::Unauthorized(_) if status == StatusCode::UNAUTHORIZED => {
                b = b.header(header::WWW_AUTHENTICATE, "Basic realm=\"traceo\"");
            }
            // Every 503 and 429 is retryable and says when; other refusals say nothing.
            _ if self.retry_after_secs().is_some() => {
                b = b.header(header::RETRY_AFTER, self.retry_after_secs().unwrap_or(1));
            }
            ApiError::MethodNotAllowed(allow) => b = b.header(header::ALLOW, *allow),
            _ => {}
        }
        b.body(Full::new(Bytes::from(format!("{self}\n"))))
            .expect("static headers are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_errors_are_413_and_content_errors_400() {
        let too_big = ApiError::Decode(DecodeError::DecompressedTooLarge {
            claimed: 1 << 32,
            limit: 10,
        });
        assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let bad = ApiError::Decode(DecodeError::MissingMetricName { series: 0 });
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn backpressure_is_retryable_with_retry_after() {
        let r = ApiError::Unavailable(SubmitError::Overloaded { sink: "s".into() }).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn a_full_tenant_share_is_retryable_and_names_tenant_and_region() {
        let e = ApiError::Unavailable(SubmitError::Wal {
            region: residency_rules::RegionId::parse("eu").unwrap(),
            error: AppendError::Wal(WalError::OwnerFull {
                dir: "wal/eu".into(),
                owner: "acme".into(),
                bytes: 10,
                limit: 10,
            }),
        });
        assert_eq!(e.reason(), "wal_tenant_full");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn an_unstorable_series_is_a_client_error_without_retry_after() {
        use crate::share::record::{LabelProblem, Unstorable};
        let region = residency_rules::RegionId::parse("eu").unwrap();
        let e = ApiError::Unavailable(SubmitError::Unstorable {
            region: region.clone(),
            error: Unstorable::Labels {
                series: "series 0 {job=\"a\"}".into(),
                problem: LabelProblem::NoMetricName,
            },
        });
        assert_eq!(e.reason(), "unstorable_series");
        assert!(e.to_string().contains("series 0"), "{e}");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
        let big = ApiError::Unavailable(SubmitError::Unstorable {
            region,
            error: Unstorable::RecordTooLarge { bytes: 2, limit: 1 },
        });
        assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn refusals_before_reading_the_body_close_the_connection() {
        let r = ApiError::UnsupportedMediaType("x".into()).into_response();
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let r = ApiError::Decode(DecodeError::EmptyBody).into_response();
        assert!(!r.headers().contains_key(header::CONNECTION));
    }

    #[test]
    fn an_exhausted_memory_budget_is_retryable_and_a_slow_body_is_408() {
        let r = ApiError::OverBudget(crate::listen::budget::OverBudget {
            used: 10,
            wanted: 5,
            limit: 12,
        })
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let r = ApiError::BodyTimeout(std::time::Duration::from_secs(1)).into_response();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn a_permanent_upstream_refusal_in_upstream_mode_is_a_400_without_retry() {
        let e = ApiError::Unavailable(SubmitError::Sink {
            sink: "remote_write/eu".into(),
            error: crate::sinks::SinkError::from_http_status(400, "out of order sample"),
        });
        assert_eq!(e.reason(), "upstream_refused");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
        let e = ApiError::Unavailable(SubmitError::Sink {
            sink: "remote_write/eu".into(),
            error: crate::sinks::SinkError::from_http_status(503, "busy"),
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_rate_limit_is_429_with_the_bucket_delay_or_503_when_the_tenant_asks() {
        use crate::limits::{LimitError, RateKind, RateLimitedStatus};
        let limited = |status| {
            ApiError::Limited(LimitError::RateLimited {
                tenant: "a".into(),
                kind: RateKind::Ingestion,
                global: 100.0,
                share: 50.0,
                members: 2,
                retry_after: std::time::Duration::from_millis(2500),
                status,
            })
        };
        let e = limited(RateLimitedStatus::TooManyRequests);
        assert_eq!(e.reason(), "rate_limited");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let r = limited(RateLimitedStatus::Unavailable).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let e = ApiError::SeriesLimited(crate::limits::SeriesLimited {
            tenant: "a".into(),
            limit: 1000,
            series: 200,
            samples: 200,
            points: 200,
        });
        assert_eq!(e.reason(), "series_limit");
        assert!(e.to_string().contains("limit of 1000 active series"), "{e}");
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn missing_credentials_ask_for_basic_auth() {
        let r = ApiError::Unauthorized(AuthError::Missing).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}

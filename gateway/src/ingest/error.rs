//! Why ingest refused a request: the outcomes every protocol shares once its body decoded.
//! Protocol handlers map these to their own answers (see `listen::response`).

use http::StatusCode;

use crate::pipeline::SubmitError;
use crate::tenant::AuthError;

/// A refusal by ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
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
    /// The data could not be made durable now, or a sink could not store it.
    #[error("{0}")]
    Unavailable(SubmitError),
    /// A tenant limit refused the request (a rate; transient).
    #[error("{0}")]
    Limited(crate::limits::LimitError),
    /// The request's HA labels cannot be tracked (too long, too many clusters).
    #[error("{0}")]
    Ha(crate::ha::HaError),
    /// The gateway is shutting down.
    #[error("shutting down")]
    Draining,
}

//! OTLP metrics (<https://opentelemetry.io/docs/specs/otlp/>): the request body in protobuf or
//! JSON, optionally gzip-compressed, and its translation into the Prometheus data model.
//!
//! Unlike remote-write, OTLP's layout (resources, scopes, metrics, data points, attribute
//! values of several types) does not match the model, so the body is first decoded into the
//! message types of [`proto`] and then [`translate`]d into a [`crate::Batch`] through a
//! [`crate::BatchBuilder`]. Both steps enforce [`DecodeLimits`]: the body and its gzip
//! expansion are capped before decoding, and the translation caps series and labels.

mod json;
pub mod proto;
mod translate;

use std::io::Read;

use prost::Message;

use crate::{DecodeError, DecodeLimits};

pub use translate::{translate, Naming, TenantBatch, TranslateOptions, Translation};

/// `Content-Type` of OTLP/HTTP binary protobuf bodies.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// `Content-Type` of OTLP/HTTP JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The encoding of an OTLP body (and of the answer to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf.
    Protobuf,
    /// The OTLP JSON mapping of protobuf.
    Json,
}

/// Inflates a gzip body, refusing to produce more than `limits.max_decompressed_bytes`: the
/// output is read in bounded steps, so a small body that expands without end (a "gzip bomb")
/// costs at most the limit in memory before it is refused.
pub fn gunzip(body: &[u8], limits: &DecodeLimits) -> Result<Vec<u8>, DecodeError> {
    if body.len() > limits.max_compressed_bytes {
        return Err(DecodeError::CompressedTooLarge {
            size: body.len(),
            limit: limits.max_compressed_bytes,
        });
    }
    let limit = limits.max_decompressed_bytes;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::InflatedTooLarge { limit });
    }
    Ok(out)
}

/// Decodes an uncompressed `ExportMetricsServiceRequest` body.
pub fn decode(
    body: &[u8],
    encoding: Encoding,
    limits: &DecodeLimits,
) -> Result<proto::ExportMetricsServiceRequest, DecodeError> {
    if body.len() > limits.max_decompressed_bytes {
        return Err(DecodeError::InflatedTooLarge {
            limit: limits.max_decompressed_bytes,
        });
    }
    match encoding {
        Encoding::Protobuf => proto::ExportMetricsServiceRequest::decode(body)
            .map_err(|e| DecodeError::Protobuf(e.to_string())),
        Encoding::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(DecodeError::EmptyBody);
            }
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests;

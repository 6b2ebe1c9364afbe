//! OTLP metrics (<https://opentelemetry.io/docs/specs/otlp/>): the request body in protobuf or
//! JSON, optionally gzip-compressed, and its translation into the Prometheus data model.
//!
//! Unlike remote-write, OTLP's layout (resources, scopes, metrics, data points, attribute
//! values of several types) does not match the model, so the body is first decoded into the
//! message types of [`proto`] and then [`translate`]d into a [`crate::Batch`] through a
//! [`crate::BatchBuilder`]. Both steps enforce [`DecodeLimits`]: the body and its gzip
//! expansion are capped before decoding, its elements are counted by a pre-scan of the wire
//! bytes before `prost` or `serde` allocate anything (`scan`), and the translation caps
//! series, labels, samples, histograms and exemplars as it builds.

mod json;
pub mod proto;
mod scan;
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

/// The first step by which [`gunzip_reserving`] grows its output: small enough that a
/// busy gateway refuses a request after reserving little, large enough that a typical
/// body (tens of KiB compressed) inflates in a few steps.
const GUNZIP_MIN_STEP: usize = 64 << 10;
/// The largest step: steps grow with the output (a quarter of it) so a 64 MiB body takes
/// about 80 reallocations rather than a thousand, and one reservation stays bounded.
pub(crate) const GUNZIP_MAX_STEP: usize = 1 << 20;

/// Inflates a gzip body, refusing to produce more than `limits.max_decompressed_bytes`: the
/// output is read in bounded steps, so a small body that expands without end (a "gzip bomb")
/// costs at most the limit in memory before it is refused.
pub fn gunzip(body: &[u8], limits: &DecodeLimits) -> Result<Vec<u8>, DecodeError> {
    gunzip_reserving(body, limits, |_| true)
}

/// Like [`gunzip`], but asks `reserve(n)` before the output may grow by `n` more bytes
/// (steps of 64 KiB up to 1 MiB, never past the limit); when it answers false, inflating
/// stops with [`DecodeError::BudgetExhausted`], which is not the client's fault (503, not
/// 413). The output's capacity is exactly what was reserved. Whatever was reserved stays
/// reserved, on success and on error: the caller releases it when the body is dropped.
pub fn gunzip_reserving(
    body: &[u8],
    limits: &DecodeLimits,
    mut reserve: impl FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    if body.len() > limits.max_compressed_bytes {
        return Err(DecodeError::CompressedTooLarge {
            size: body.len(),
            limit: limits.max_compressed_bytes,
        });
    }
    let limit = limits.max_decompressed_bytes;
    // One byte past the limit is read to tell "exactly at the limit" from "over it".
    let cap = limit.saturating_add(1);
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut out: Vec<u8> = Vec::new();
    let mut reserved = 0usize;
    loop {
        let step = (out.len() / 4)
            .clamp(GUNZIP_MIN_STEP, GUNZIP_MAX_STEP)
            .min(cap - out.len());
        if !reserve(step) {
            return Err(DecodeError::BudgetExhausted { reserved });
        }
        reserved += step;
        out.reserve_exact(step);
        // `take` keeps `read_to_end` inside the reserved capacity: it never grows the Vec
        // itself once the step is read.
        let read = (&mut decoder)
            .take(step as u64)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Gzip(e.to_string()))?;
        if out.len() > limit {
            return Err(DecodeError::InflatedTooLarge { limit });
        }
        if read < step {
            return Ok(out);
        }
    }
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
    // Counted before decoding: the decoded tree is many times the size of small elements on
    // the wire (see `scan`).
    match encoding {
        Encoding::Protobuf => {
            scan::scan_protobuf(body, limits)?;
            proto::ExportMetricsServiceRequest::decode(body)
                .map_err(|e| DecodeError::Protobuf(e.to_string()))
        }
        Encoding::Json => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Err(DecodeError::EmptyBody);
            }
            scan::scan_json(body, limits)?;
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests;

//! Wire formats of Traceo Gateway.
//!
//! This crate owns every byte format the gateway speaks and the internal model they decode
//! into ([`Batch`]). It does no I/O and knows nothing about tenants, regions or sinks: callers
//! hand it bytes plus explicit [`DecodeLimits`] and get a [`Batch`] or a typed [`DecodeError`]
//! that says what was wrong and where.
//!
//! Decoders are pure functions `&[u8] -> Result<_, DecodeError>` so the same entry point
//! serves the server, the tests, the fuzz targets and the benches.
//!
//! The hot path does not allocate per label: a decoded [`Batch`] keeps the decompressed
//! buffer and refers to label names and values by byte range, validated as UTF-8 once.
//! `prost` types live in [`remote_write::v1::reference`] for cold paths and as the reference
//! in round-trip tests.
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod builder;
mod error;
pub mod gossip;
mod hash;
mod limits;
mod model;
pub mod otlp;
pub mod remote_write;
pub mod snappy;
mod text;
pub mod wire;

pub use builder::BatchBuilder;
pub use error::{DecodeError, Element};
pub use hash::label_set_hash;
pub use limits::DecodeLimits;
pub use model::{
    Batch, BucketSpan, ExemplarRef, Histogram, HistogramCount, LabelsRef, MetadataRef, MetricType,
    ResetHint, Sample, SeriesRef,
};

/// The label that carries a series' metric name (Prometheus data model).
pub const METRIC_NAME_LABEL: &str = "__name__";

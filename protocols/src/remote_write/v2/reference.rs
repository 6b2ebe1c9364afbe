//! `prost` types for `io.prometheus.write.v2.Request` (field numbers as published in the
//! remote-write 2.0 specification). Cold paths and tests only. Histograms share the 1.0
//! message's field numbers, so the 1.0 type is reused.
#![allow(missing_docs)]

pub use crate::remote_write::v1::reference::Histogram;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub histograms: Vec<Histogram>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<Metadata>,
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// Why a reference decode could not resolve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The symbols table does not start with the empty string.
    #[error("symbols table must start with the empty string")]
    FirstSymbolNotEmpty,
    /// A reference points past the symbols table.
    #[error("series {series}: symbol reference {reference} is out of range (table has {len})")]
    OutOfRange {
        /// Series index.
        series: usize,
        /// The reference.
        reference: u32,
        /// Table length.
        len: usize,
    },
    /// Odd number of label references.
    #[error("series {series}: labels_refs has an odd length")]
    OddRefs {
        /// Series index.
        series: usize,
    },
}

impl Request {
    /// The labels of series `i` as strings.
    pub fn labels(&self, i: usize) -> Result<Vec<(&str, &str)>, ResolveError> {
        if self.symbols.first().is_some_and(|s| !s.is_empty()) {
            return Err(ResolveError::FirstSymbolNotEmpty);
        }
        let ts = &self.timeseries[i];
        if !ts.labels_refs.len().is_multiple_of(2) {
            return Err(ResolveError::OddRefs { series: i });
        }
        let sym = |r: u32| {
            self.symbols
                .get(r as usize)
                .map(String::as_str)
                .ok_or(ResolveError::OutOfRange {
                    series: i,
                    reference: r,
                    len: self.symbols.len(),
                })
        };
        ts.labels_refs
            .chunks_exact(2)
            .map(|p| Ok((sym(p[0])?, sym(p[1])?)))
            .collect()
    }
}

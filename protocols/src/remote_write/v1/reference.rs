//! `prost` types for `prometheus.WriteRequest` (Prometheus `prompb/remote.proto` and
//! `types.proto`, field numbers as published). Cold paths and tests only: the hot path uses the
//! zero-copy decoder. Written by hand with `prost` derives so the build needs no `protoc`.
#![allow(missing_docs)]

use crate::model::{Batch, HistogramCount};

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
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
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(oneof = "histogram::Count", tags = "1, 2")]
    pub count: Option<histogram::Count>,
    #[prost(double, tag = "3")]
    pub sum: f64,
    #[prost(sint32, tag = "4")]
    pub schema: i32,
    #[prost(double, tag = "5")]
    pub zero_threshold: f64,
    #[prost(oneof = "histogram::ZeroCount", tags = "6, 7")]
    pub zero_count: Option<histogram::ZeroCount>,
    #[prost(message, repeated, tag = "8")]
    pub negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub negative_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "10")]
    pub negative_counts: Vec<f64>,
    #[prost(message, repeated, tag = "11")]
    pub positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub positive_deltas: Vec<i64>,
    #[prost(double, repeated, tag = "13")]
    pub positive_counts: Vec<f64>,
    #[prost(int32, tag = "14")]
    pub reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
    #[prost(double, repeated, tag = "16")]
    pub custom_values: Vec<f64>,
}

pub mod histogram {
    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum Count {
        #[prost(uint64, tag = "1")]
        CountInt(u64),
        #[prost(double, tag = "2")]
        CountFloat(f64),
    }

    #[derive(Clone, Copy, PartialEq, prost::Oneof)]
    pub enum ZeroCount {
        #[prost(uint64, tag = "6")]
        ZeroCountInt(u64),
        #[prost(double, tag = "7")]
        ZeroCountFloat(f64),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

fn label_vec(labels: crate::LabelsRef<'_>) -> Vec<Label> {
    labels
        .iter()
        .map(|(n, v)| Label {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

fn spans(s: &[crate::BucketSpan]) -> Vec<BucketSpan> {
    s.iter()
        .map(|s| BucketSpan {
            offset: s.offset,
            length: s.length,
        })
        .collect()
}

impl From<&crate::Histogram> for Histogram {
    fn from(h: &crate::Histogram) -> Self {
        Histogram {
            count: Some(match h.count {
                HistogramCount::Int(v) => histogram::Count::CountInt(v),
                HistogramCount::Float(v) => histogram::Count::CountFloat(v),
            }),
            sum: h.sum,
            schema: h.schema,
            zero_threshold: h.zero_threshold,
            zero_count: Some(match h.zero_count {
                HistogramCount::Int(v) => histogram::ZeroCount::ZeroCountInt(v),
                HistogramCount::Float(v) => histogram::ZeroCount::ZeroCountFloat(v),
            }),
            negative_spans: spans(&h.negative_spans),
            negative_deltas: h.negative_deltas.clone(),
            negative_counts: h.negative_counts.clone(),
            positive_spans: spans(&h.positive_spans),
            positive_deltas: h.positive_deltas.clone(),
            positive_counts: h.positive_counts.clone(),
            reset_hint: h.reset_hint.to_wire() as i32,
            timestamp: h.timestamp_ms,
            custom_values: h.custom_values.clone(),
        }
    }
}

impl From<&Batch> for WriteRequest {
    /// An owned copy of a decoded batch, for tests and cold paths.
    fn from(batch: &Batch) -> Self {
        WriteRequest {
            timeseries: batch
                .series()
                .map(|s| TimeSeries {
                    labels: label_vec(s.labels()),
                    samples: s
                        .samples()
                        .iter()
                        .map(|x| Sample {
                            value: x.value,
                            timestamp: x.timestamp_ms,
                        })
                        .collect(),
                    exemplars: s
                        .exemplars()
                        .map(|e| Exemplar {
                            labels: label_vec(e.labels()),
                            value: e.value(),
                            timestamp: e.timestamp_ms(),
                        })
                        .collect(),
                    histograms: s.histograms().iter().map(Histogram::from).collect(),
                })
                .collect(),
            metadata: batch
                .metadata()
                .map(|m| MetricMetadata {
                    r#type: m.metric_type().to_wire() as i32,
                    metric_family_name: m.family().to_string(),
                    help: m.help().to_string(),
                    unit: m.unit().to_string(),
                })
                .collect(),
        }
    }
}

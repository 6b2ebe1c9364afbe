//! Request bodies and headers per protocol, out of a [`Payload`].
//!
//! - Remote-write 1.0 (<https://prometheus.io/docs/specs/prw/remote_write_spec/>):
//!   `prometheus.WriteRequest`, snappy block format, `X-Prometheus-Remote-Write-Version: 0.1.0`.
//! - Remote-write 2.0 (<https://prometheus.io/docs/specs/prw/remote_write_spec_2_0/>):
//!   `io.prometheus.write.v2.Request` with its symbols table (starting with `""`), metadata
//!   type per series, `Content-Type: application/x-protobuf;proto=io.prometheus.write.v2.Request`,
//!   `X-Prometheus-Remote-Write-Version: 2.0.0`, snappy.
//! - OTLP/HTTP (<https://opentelemetry.io/docs/specs/otlp/#otlphttp>): a binary protobuf
//!   `ExportMetricsServiceRequest` on `POST /v1/metrics`, optionally gzip.
//! - OTLP/gRPC (<https://opentelemetry.io/docs/specs/otlp/#otlpgrpc>): the same message as
//!   the one length-prefixed message of a unary `MetricsService/Export` call (gRPC over
//!   HTTP/2: 1-byte compressed flag, 4-byte big-endian length, message), optionally gzip
//!   with `grpc-encoding: gzip`.
//!
//! Bodies are built with the `prost` reference types of `protocols`, never with the gateway's
//! own encoders, so a load test also checks the gateway's decoders against an independent
//! encoder. A classic histogram becomes `_bucket{le}`/`_sum`/`_count` series in remote-write
//! and an explicit-bounds point in OTLP; a native histogram a histogram sample in
//! remote-write and an exponential point in OTLP. OTLP groups the points by resource
//! ([`crate::gen::Resource`]) and by metric; data point attributes are the series' labels
//! without `__name__`, with `job` sent as `scrape.job` and `instance` as `server.address`
//! (the gateway derives its own `job` and `instance` from the resource's `service.name` and
//! `service.instance.id`).
//!
//! Pure: no I/O.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, TE, USER_AGENT};
use prost::Message;
use protocols::otlp::proto as otlp;
use protocols::remote_write::v1::reference as v1;
use protocols::remote_write::v2::reference as v2;

use crate::gen::{
    ClassicHistogram, NativeHistogram, Payload, Series, Value, CLASSIC_BOUNDS, NATIVE_SCHEMA,
    NATIVE_ZERO_THRESHOLD,
};

/// The path of the gRPC method OTLP metrics are exported with.
pub const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The OTLP/HTTP metrics path.
pub const OTLP_HTTP_PATH: &str = "/v1/metrics";

/// How far before a point's time its cumulative series started (OTLP `start_time_unix_nano`).
const START_OFFSET_MS: i64 = 600_000;

/// A wire protocol the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Prometheus remote-write 1.0.
    RemoteWriteV1,
    /// Prometheus remote-write 2.0.
    RemoteWriteV2,
    /// OTLP/HTTP, binary protobuf.
    OtlpHttp,
    /// OTLP/gRPC.
    OtlpGrpc,
}

impl Protocol {
    /// Every protocol, in the order of the CLI's help.
    pub const ALL: [Protocol; 4] = [
        Self::RemoteWriteV1,
        Self::RemoteWriteV2,
        Self::OtlpHttp,
        Self::OtlpGrpc,
    ];

    /// The CLI name: `rw1`, `rw2`, `otlp-http`, `otlp-grpc`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RemoteWriteV1 => "rw1",
            Self::RemoteWriteV2 => "rw2",
            Self::OtlpHttp => "otlp-http",
            Self::OtlpGrpc => "otlp-grpc",
        }
    }

    /// Where a gateway with the default ports listens for it.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::RemoteWriteV1 | Self::RemoteWriteV2 => "http://127.0.0.1:8080/api/v1/write",
            Self::OtlpHttp => "http://127.0.0.1:4318/v1/metrics",
            Self::OtlpGrpc => "http://127.0.0.1:4317",
        }
    }

    /// Whether it is gRPC (HTTP/2 only, status in trailers).
    pub fn is_grpc(self) -> bool {
        self == Self::OtlpGrpc
    }

    /// Whether it is OTLP (the gateway adds a `target_info` series per resource, answers
    /// may carry `partial_success`).
    pub fn is_otlp(self) -> bool {
        matches!(self, Self::OtlpHttp | Self::OtlpGrpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown protocol {s:?}: use rw1, rw2, otlp-http or otlp-grpc"))
    }
}

/// A body ready to send, with what a report and an ack record need to know about it.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes to POST (compressed and framed as the protocol wants).
    pub bytes: Bytes,
    /// Timestamp of every sample in it, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Samples the gateway stores for it: [`expected_samples`].
    pub samples: u64,
}

/// Samples (floats and native histograms, in the Prometheus model) a gateway stores for
/// `payload` sent with `protocol`: [`Payload::samples`], plus for OTLP one `target_info`
/// sample per resource, all at the payload's timestamp.
pub fn expected_samples(protocol: Protocol, payload: &Payload) -> u64 {
    let info = if protocol.is_otlp() {
        payload.resources() as u64
    } else {
        0
    };
    payload.samples() + info
}

/// Encodes `payload` for `protocol`; `gzip` applies to OTLP only.
pub fn encode(protocol: Protocol, gzip: bool, payload: &Payload) -> Body {
    let bytes = match protocol {
        Protocol::RemoteWriteV1 => {
            protocols::snappy::compress(&rw1_request(payload).encode_to_vec())
        }
        Protocol::RemoteWriteV2 => {
            protocols::snappy::compress(&rw2_request(payload).encode_to_vec())
        }
        Protocol::OtlpHttp => {
            let m = otlp_request(payload).encode_to_vec();
            if gzip {
                gzip_bytes(&m)
            } else {
                m
            }
        }
        Protocol::OtlpGrpc => {
            let m = otlp_request(payload).encode_to_vec();
            if gzip {
                grpc_frame(&gzip_bytes(&m), true)
            } else {
                grpc_frame(&m, false)
            }
        }
    };
    Body {
        bytes: Bytes::from(bytes),
        timestamp_ms: payload.timestamp_ms,
        samples: expected_samples(protocol, payload),
    }
}

/// The headers every request of `protocol` carries (the tenant header aside).
pub fn headers(protocol: Protocol, gzip: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("traceo-loadgen/", env!("CARGO_PKG_VERSION"))),
    );
    match protocol {
        Protocol::RemoteWriteV1 => {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
            h.insert(
                "x-prometheus-remote-write-version",
                HeaderValue::from_static("0.1.0"),
            );
        }
        Protocol::RemoteWriteV2 => {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                ),
            );
            h.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
            h.insert(
                "x-prometheus-remote-write-version",
                HeaderValue::from_static("2.0.0"),
            );
        }
        Protocol::OtlpHttp => {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            if gzip {
                h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        Protocol::OtlpGrpc => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert(TE, HeaderValue::from_static("trailers"));
            if gzip {
                h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
            }
        }
    }
    h
}

/// gRPC's length-prefixed message: compressed flag, 4-byte big-endian length, message.
pub fn grpc_frame(message: &[u8], compressed: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(u8::from(compressed));
    let len = u32::try_from(message.len()).expect("a generated message is far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail")
}

/// One remote-write series with its one sample, before the protocol's framing.
struct WireSeries<'a> {
    labels: Vec<v1::Label>,
    sample: WireSample<'a>,
    /// Remote-write 2.0 `Metadata.MetricType`.
    metric_type: i32,
}

enum WireSample<'a> {
    Float(f64),
    Native(&'a NativeHistogram),
}

/// `io.prometheus.write.v2.Metadata.MetricType` values.
const TYPE_COUNTER: i32 = 1;
const TYPE_GAUGE: i32 = 2;
const TYPE_HISTOGRAM: i32 = 3;

/// The remote-write series of a payload: classic histograms expanded into their series.
fn wire_series(payload: &Payload) -> Vec<WireSeries<'_>> {
    let mut out = Vec::with_capacity(payload.points.len());
    for p in &payload.points {
        match &p.value {
            Value::Float(v) => out.push(WireSeries {
                labels: p.series.labels.clone(),
                sample: WireSample::Float(*v),
                metric_type: if p.series.name().ends_with("_total") {
                    TYPE_COUNTER
                } else {
                    TYPE_GAUGE
                },
            }),
            Value::Native(h) => out.push(WireSeries {
                labels: p.series.labels.clone(),
                sample: WireSample::Native(h),
                metric_type: TYPE_HISTOGRAM,
            }),
            Value::Classic(h) => classic_series(&p.series, h, &mut out),
        }
    }
    out
}

/// `_bucket{le=...}` per bound (cumulative) and `+Inf`, then `_sum` and `_count`.
fn classic_series<'a>(series: &Series, h: &ClassicHistogram, out: &mut Vec<WireSeries<'a>>) {
    let family = series.name();
    let mut cumulative = 0u64;
    for (i, c) in h.counts.iter().enumerate() {
        cumulative += c;
        let le = CLASSIC_BOUNDS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), f64::to_string);
        out.push(WireSeries {
            labels: renamed(series, &format!("{family}_bucket"), Some(("le", le))),
            sample: WireSample::Float(cumulative as f64),
            metric_type: TYPE_HISTOGRAM,
        });
    }
    for (suffix, v) in [("_sum", h.sum), ("_count", h.count() as f64)] {
        out.push(WireSeries {
            labels: renamed(series, &format!("{family}{suffix}"), None),
            sample: WireSample::Float(v),
            metric_type: TYPE_HISTOGRAM,
        });
    }
}

/// The series' labels with `__name__` set to `name` and `extra` added, sorted by name.
fn renamed(series: &Series, name: &str, extra: Option<(&str, String)>) -> Vec<v1::Label> {
    let mut labels: Vec<v1::Label> = series
        .labels
        .iter()
        .map(|l| v1::Label {
            name: l.name.clone(),
            value: if l.name == protocols::METRIC_NAME_LABEL {
                name.to_string()
            } else {
                l.value.clone()
            },
        })
        .collect();
    if let Some((n, v)) = extra {
        labels.retain(|l| l.name != n);
        labels.push(v1::Label {
            name: n.to_string(),
            value: v,
        });
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

fn native_histogram(h: &NativeHistogram, timestamp_ms: i64) -> v1::Histogram {
    let mut prev = 0i64;
    let positive_deltas = h
        .counts
        .iter()
        .map(|&c| {
            let d = c as i64 - prev;
            prev = c as i64;
            d
        })
        .collect();
    v1::Histogram {
        count: Some(v1::histogram::Count::CountInt(h.count())),
        sum: h.sum,
        schema: NATIVE_SCHEMA,
        zero_threshold: NATIVE_ZERO_THRESHOLD,
        zero_count: Some(v1::histogram::ZeroCount::ZeroCountInt(h.zero_count)),
        positive_spans: vec![v1::BucketSpan {
            offset: h.offset,
            length: h.counts.len() as u32,
        }],
        positive_deltas,
        timestamp: timestamp_ms,
        ..Default::default()
    }
}

/// The payload as a remote-write 1.0 message (no metadata, as Prometheus sends it by
/// default: metadata travels in separate requests).
pub fn rw1_request(payload: &Payload) -> v1::WriteRequest {
    let ts = payload.timestamp_ms;
    let timeseries = wire_series(payload)
        .into_iter()
        .map(|s| match s.sample {
            WireSample::Float(value) => v1::TimeSeries {
                labels: s.labels,
                samples: vec![v1::Sample {
                    value,
                    timestamp: ts,
                }],
                ..Default::default()
            },
            WireSample::Native(h) => v1::TimeSeries {
                labels: s.labels,
                histograms: vec![native_histogram(h, ts)],
                ..Default::default()
            },
        })
        .collect();
    v1::WriteRequest {
        timeseries,
        metadata: Vec::new(),
    }
}

/// Interns strings into a remote-write 2.0 symbols table.
struct Symbols {
    table: Vec<String>,
    index: HashMap<String, u32>,
}

impl Symbols {
    fn new() -> Self {
        let mut s = Self {
            table: Vec::new(),
            index: HashMap::new(),
        };
        // The spec: the table's first entry is the empty string.
        s.intern("");
        s
    }

    fn intern(&mut self, v: &str) -> u32 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = u32::try_from(self.table.len()).expect("a generated request has few symbols");
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// The payload as a remote-write 2.0 message, with each series' metric type.
pub fn rw2_request(payload: &Payload) -> v2::Request {
    let ts = payload.timestamp_ms;
    let mut symbols = Symbols::new();
    let timeseries = wire_series(payload)
        .into_iter()
        .map(|s| {
            let labels_refs = s
                .labels
                .iter()
                .flat_map(|l| [symbols.intern(&l.name), symbols.intern(&l.value)])
                .collect();
            let (samples, histograms) = match s.sample {
                WireSample::Float(value) => (
                    vec![v2::Sample {
                        value,
                        timestamp: ts,
                    }],
                    Vec::new(),
                ),
                WireSample::Native(h) => (Vec::new(), vec![native_histogram(h, ts)]),
            };
            v2::TimeSeries {
                labels_refs,
                samples,
                histograms,
                exemplars: Vec::new(),
                metadata: Some(v2::Metadata {
                    r#type: s.metric_type,
                    help_ref: 0,
                    unit_ref: 0,
                }),
                created_timestamp: 0,
            }
        })
        .collect();
    v2::Request {
        symbols: symbols.table,
        timeseries,
    }
}

fn string_kv(key: &str, value: &str) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(value.to_string())),
        }),
    }
}

/// OTLP attributes of a series: its labels without `__name__`; `job` and `instance` renamed
/// so they do not collide with the ones the resource defines.
fn attributes(series: &Series) -> Vec<otlp::KeyValue> {
    series
        .labels
        .iter()
        .filter(|l| l.name != protocols::METRIC_NAME_LABEL)
        .map(|l| {
            let key = match l.name.as_str() {
                "job" => "scrape.job",
                "instance" => "server.address",
                other => other,
            };
            string_kv(key, &l.value)
        })
        .collect()
}

/// Which OTLP metric a point goes into.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum MetricKind {
    Gauge,
    Counter,
    Histogram,
    Exponential,
}

/// The payload as an OTLP export request: a `ResourceMetrics` per resource (in order of
/// first appearance), one scope, a `Metric` per name and kind. Counters (`_total`) are
/// monotonic cumulative sums; the rest of the floats are gauges.
pub fn otlp_request(payload: &Payload) -> otlp::ExportMetricsServiceRequest {
    let ts = u64::try_from(payload.timestamp_ms).unwrap_or(0);
    let time_unix_nano = ts.saturating_mul(1_000_000);
    let start_time_unix_nano = ts
        .saturating_sub(START_OFFSET_MS as u64)
        .saturating_mul(1_000_000);
    let mut resources: Vec<(u64, otlp::ResourceMetrics)> = Vec::new();
    let mut metric_index: HashMap<(u64, &str, MetricKind), usize> = HashMap::new();
    for p in &payload.points {
        let res = &p.series.resource;
        let ri = match resources.iter().position(|(id, _)| *id == res.id) {
            Some(i) => i,
            None => {
                resources.push((
                    res.id,
                    otlp::ResourceMetrics {
                        resource: Some(otlp::Resource {
                            attributes: res
                                .attributes
                                .iter()
                                .map(|(k, v)| string_kv(k, v))
                                .collect(),
                        }),
                        scope_metrics: vec![otlp::ScopeMetrics {
                            scope: Some(otlp::InstrumentationScope {
                                name: "traceo-loadgen".to_string(),
                                version: env!("CARGO_PKG_VERSION").to_string(),
                                attributes: Vec::new(),
                            }),
                            metrics: Vec::new(),
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    },
                ));
                resources.len() - 1
            }
        };
        let name = p.series.name();
        let kind = match p.value {
            Value::Float(_) if name.ends_with("_total") => MetricKind::Counter,
            Value::Float(_) => MetricKind::Gauge,
            Value::Classic(_) => MetricKind::Histogram,
            Value::Native(_) => MetricKind::Exponential,
        };
        let metrics = &mut resources[ri].1.scope_metrics[0].metrics;
        let mi = *metric_index.entry((res.id, name, kind)).or_insert_with(|| {
            let cumulative = otlp::AggregationTemporality::Cumulative as i32;
            let data = match kind {
                MetricKind::Gauge => otlp::metric::Data::Gauge(otlp::Gauge::default()),
                MetricKind::Counter => otlp::metric::Data::Sum(otlp::Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                MetricKind::Histogram => otlp::metric::Data::Histogram(otlp::Histogram {
                    data_points: Vec::new(),
                    aggregation_temporality: cumulative,
                }),
                MetricKind::Exponential => {
                    otlp::metric::Data::ExponentialHistogram(otlp::ExponentialHistogram {
                        data_points: Vec::new(),
                        aggregation_temporality: cumulative,
                    })
                }
            };
            metrics.push(otlp::Metric {
                name: name.to_string(),
                description: String::new(),
                unit: String::new(),
                data: Some(data),
            });
            metrics.len() - 1
        });
        let attributes = attributes(&p.series);
        match (&mut metrics[mi].data, &p.value) {
            (Some(otlp::metric::Data::Gauge(g)), Value::Float(v)) => {
                g.data_points.push(otlp::NumberDataPoint {
                    attributes,
                    time_unix_nano,
                    value: Some(otlp::number_data_point::Value::AsDouble(*v)),
                    ..Default::default()
                });
            }
            (Some(otlp::metric::Data::Sum(s)), Value::Float(v)) => {
                s.data_points.push(otlp::NumberDataPoint {
                    attributes,
                    start_time_unix_nano,
                    time_unix_nano,
                    value: Some(otlp::number_data_point::Value::AsDouble(*v)),
                    ..Default::default()
                });
            }
            (Some(otlp::metric::Data::Histogram(m)), Value::Classic(h)) => {
                m.data_points.push(otlp::HistogramDataPoint {
                    attributes,
                    start_time_unix_nano,
                    time_unix_nano,
                    count: h.count(),
                    sum: Some(h.sum),
                    bucket_counts: h.counts.to_vec(),
                    explicit_bounds: CLASSIC_BOUNDS.to_vec(),
                    ..Default::default()
                });
            }
            (Some(otlp::metric::Data::ExponentialHistogram(m)), Value::Native(h)) => {
                m.data_points.push(otlp::ExponentialHistogramDataPoint {
                    attributes,
                    start_time_unix_nano,
                    time_unix_nano,
                    count: h.count(),
                    sum: Some(h.sum),
                    scale: NATIVE_SCHEMA,
                    zero_count: h.zero_count,
                    // OTLP bucket i is (base^i, base^(i+1)]; Prometheus bucket i is
                    // (base^(i-1), base^i]: one index apart.
                    positive: Some(otlp::Buckets {
                        offset: h.offset - 1,
                        bucket_counts: h.counts.clone(),
                    }),
                    zero_threshold: NATIVE_ZERO_THRESHOLD,
                    ..Default::default()
                });
            }
            _ => unreachable!("the metric was created for this kind of point"),
        }
    }
    otlp::ExportMetricsServiceRequest {
        resource_metrics: resources.into_iter().map(|(_, r)| r).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Generator, HistogramKind, PayloadSpec, Shape, CLASSIC_SAMPLES};
    use protocols::otlp::{Encoding, TranslateOptions};
    use protocols::{Batch, DecodeLimits};

    fn payload(histograms: HistogramKind) -> Payload {
        let spec = PayloadSpec {
            series: 1000,
            series_per_request: 500,
            ..PayloadSpec::default()
        };
        let shape = Shape {
            histograms,
            histogram_fraction: 0.2,
            ..Shape::default()
        };
        Generator::with_shape(spec, shape).next_payload(1_700_000_000_123)
    }

    fn samples(batch: &Batch) -> u64 {
        batch
            .series()
            .map(|s| (s.samples().len() + s.histograms().len()) as u64)
            .sum()
    }

    /// The label sets of a batch, each sorted, the whole sorted.
    fn label_sets(batch: &Batch) -> Vec<Vec<(String, String)>> {
        let mut v: Vec<Vec<(String, String)>> = batch
            .series()
            .map(|s| {
                s.labels()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .collect();
        v.sort();
        v
    }

    fn translated(body: &Body, protocol: Protocol) -> Batch {
        let message = match protocol {
            Protocol::OtlpHttp => body.bytes.to_vec(),
            Protocol::OtlpGrpc => {
                let len = u32::from_be_bytes(body.bytes[1..5].try_into().unwrap()) as usize;
                assert_eq!(body.bytes[0], 0, "uncompressed flag");
                assert_eq!(body.bytes.len(), 5 + len);
                body.bytes[5..].to_vec()
            }
            _ => unreachable!(),
        };
        let limits = DecodeLimits::default();
        let req = protocols::otlp::decode(&message, Encoding::Protobuf, &limits).unwrap();
        let t = protocols::otlp::translate(&req, &TranslateOptions::default(), &limits).unwrap();
        assert_eq!(t.rejected_points, 0, "{}", t.error_message());
        assert_eq!(t.batches.len(), 1);
        t.batches.into_iter().next().unwrap().batch
    }

    #[test]
    fn rw1_body_decodes_with_every_sample_at_the_timestamp() {
        for kind in [
            HistogramKind::None,
            HistogramKind::Classic,
            HistogramKind::Native,
        ] {
            let p = payload(kind);
            let body = encode(Protocol::RemoteWriteV1, false, &p);
            let batch =
                protocols::remote_write::v1::decode(&body.bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(samples(&batch), body.samples, "{kind:?}");
            assert_eq!(body.samples, p.samples());
            assert!(batch.series().all(|s| s
                .samples()
                .iter()
                .all(|x| x.timestamp_ms == p.timestamp_ms)
                && s.histograms()
                    .iter()
                    .all(|h| h.timestamp_ms == p.timestamp_ms)));
        }
    }

    #[test]
    fn classic_histograms_expand_into_bucket_sum_and_count_series() {
        let p = payload(HistogramKind::Classic);
        let classic = p
            .points
            .iter()
            .filter(|x| matches!(x.value, Value::Classic(_)))
            .count() as u64;
        assert!(classic > 50);
        assert_eq!(
            p.samples(),
            p.points.len() as u64 - classic + classic * CLASSIC_SAMPLES
        );
        let req = rw1_request(&p);
        let le = |t: &v1::TimeSeries| {
            t.labels
                .iter()
                .find(|l| l.name == "le")
                .map(|l| l.value.clone())
        };
        let first = req.timeseries.iter().position(|t| le(t).is_some()).unwrap();
        let family = &req.timeseries[first..first + CLASSIC_SAMPLES as usize];
        let les: Vec<String> = family.iter().filter_map(le).collect();
        assert_eq!(
            les,
            [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "+Inf"
            ]
        );
        let values: Vec<f64> = family.iter().map(|t| t.samples[0].value).collect();
        assert!(values[..12].windows(2).all(|w| w[0] <= w[1]), "cumulative");
        let name = |t: &v1::TimeSeries| {
            t.labels
                .iter()
                .find(|l| l.name == "__name__")
                .map(|l| l.value.clone())
                .unwrap()
        };
        assert!(name(&family[0]).ends_with("_bucket"));
        assert!(name(&family[12]).ends_with("_sum"));
        assert!(name(&family[13]).ends_with("_count"));
        assert_eq!(values[11], values[13], "+Inf bucket is the count");
        let inf = req
            .timeseries
            .iter()
            .filter(|t| le(t).as_deref() == Some("+Inf"))
            .count();
        assert_eq!(inf as u64, classic);
        assert!(req
            .timeseries
            .iter()
            .all(|t| t.labels.windows(2).all(|w| w[0].name < w[1].name)));
    }

    #[test]
    fn rw2_body_resolves_to_the_same_series_as_rw1() {
        for kind in [
            HistogramKind::None,
            HistogramKind::Classic,
            HistogramKind::Native,
        ] {
            let p = payload(kind);
            let body = encode(Protocol::RemoteWriteV2, false, &p);
            let raw = protocols::snappy::decompress(&body.bytes, &DecodeLimits::default()).unwrap();
            let req = v2::Request::decode(raw.as_ref()).unwrap();
            assert_eq!(req.symbols[0], "");
            let v1 = rw1_request(&p);
            assert_eq!(req.timeseries.len(), v1.timeseries.len());
            for (i, (a, b)) in req.timeseries.iter().zip(&v1.timeseries).enumerate() {
                let labels: Vec<(&str, &str)> = req.labels(i).unwrap();
                let want: Vec<(&str, &str)> = b
                    .labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str()))
                    .collect();
                assert_eq!(labels, want);
                assert_eq!(a.samples.len(), b.samples.len());
                assert_eq!(a.histograms, b.histograms);
                assert!(a.metadata.is_some_and(|m| m.r#type != 0));
            }
            // Symbols are interned: each string once.
            let mut sorted = req.symbols.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), req.symbols.len());
        }
    }

    #[test]
    fn otlp_bodies_translate_to_the_expected_samples_over_http_and_grpc() {
        for kind in [
            HistogramKind::None,
            HistogramKind::Classic,
            HistogramKind::Native,
        ] {
            let p = payload(kind);
            for protocol in [Protocol::OtlpHttp, Protocol::OtlpGrpc] {
                let body = encode(protocol, false, &p);
                let batch = translated(&body, protocol);
                assert_eq!(samples(&batch), body.samples, "{protocol} {kind:?}");
                assert_eq!(body.samples, p.samples() + p.resources() as u64);
                // 500 series over 100-series resources: 5 resources, 5 target_info.
                assert_eq!(p.resources(), 5);
                assert!(batch.series().all(|s| {
                    s.samples().iter().all(|x| x.timestamp_ms == p.timestamp_ms)
                        && s.histograms()
                            .iter()
                            .all(|h| h.timestamp_ms == p.timestamp_ms)
                }));
            }
        }
    }

    #[test]
    fn otlp_series_are_rw_series_with_resource_job_and_instance() {
        let p = payload(HistogramKind::Classic);
        let rw = protocols::remote_write::v1::decode(
            &encode(Protocol::RemoteWriteV1, false, &p).bytes,
            &DecodeLimits::default(),
        )
        .unwrap();
        let otlp = translated(&encode(Protocol::OtlpHttp, false, &p), Protocol::OtlpHttp);
        // Same number of distinct series, target_info aside.
        let otlp_sets: Vec<_> = label_sets(&otlp)
            .into_iter()
            .filter(|l| !l.contains(&("__name__".into(), "target_info".into())))
            .collect();
        assert_eq!(otlp_sets.len(), label_sets(&rw).len());
        let mut dedup = otlp_sets.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), otlp_sets.len(), "OTLP series stay distinct");
        assert!(otlp_sets.iter().all(|l| l.iter().any(|(n, _)| n == "job")
            && l.iter().any(|(n, _)| n == "instance")
            && l.iter().any(|(n, _)| n == "server_address")));
    }

    #[test]
    fn native_histograms_survive_otlp_translation_unchanged() {
        let p = payload(HistogramKind::Native);
        let otlp = translated(&encode(Protocol::OtlpHttp, false, &p), Protocol::OtlpHttp);
        let rw = protocols::remote_write::v1::decode(
            &encode(Protocol::RemoteWriteV1, false, &p).bytes,
            &DecodeLimits::default(),
        )
        .unwrap();
        let hist = |b: &Batch| {
            let mut v: Vec<v1::Histogram> = b
                .series()
                .flat_map(|s| {
                    s.histograms()
                        .iter()
                        .map(v1::Histogram::from)
                        .collect::<Vec<_>>()
                })
                .collect();
            v.sort_by(|a, b| a.sum.total_cmp(&b.sum));
            v
        };
        let (a, b) = (hist(&otlp), hist(&rw));
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn gzip_bodies_inflate_to_the_plain_message() {
        let p = payload(HistogramKind::None);
        let plain = encode(Protocol::OtlpHttp, false, &p);
        let gz = encode(Protocol::OtlpHttp, true, &p);
        assert!(gz.bytes.len() < plain.bytes.len());
        let inflated = protocols::otlp::gunzip(&gz.bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(inflated, plain.bytes.to_vec());
        let grpc = encode(Protocol::OtlpGrpc, true, &p);
        assert_eq!(grpc.bytes[0], 1);
        let inflated = protocols::otlp::gunzip(&grpc.bytes[5..], &DecodeLimits::default()).unwrap();
        assert_eq!(inflated, plain.bytes.to_vec());
        assert_eq!(headers(Protocol::OtlpGrpc, true)["grpc-encoding"], "gzip");
        assert_eq!(headers(Protocol::OtlpHttp, true)[CONTENT_ENCODING], "gzip");
    }

    #[test]
    fn headers_name_each_protocol() {
        let h = headers(Protocol::RemoteWriteV2, false);
        assert_eq!(
            h[CONTENT_TYPE],
            "application/x-protobuf;proto=io.prometheus.write.v2.Request"
        );
        assert_eq!(h["x-prometheus-remote-write-version"], "2.0.0");
        assert_eq!(h[CONTENT_ENCODING], "snappy");
        let h = headers(Protocol::RemoteWriteV1, false);
        assert_eq!(h["x-prometheus-remote-write-version"], "0.1.0");
        let h = headers(Protocol::OtlpGrpc, false);
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[TE], "trailers");
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>(), Ok(p));
        }
    }
}

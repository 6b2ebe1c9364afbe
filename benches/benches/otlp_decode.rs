//! OTLP metrics decode and translation, in the shape of the remote-write decode bench so the
//! two compare per sample.
//!
//! Payload (seed 42): one resource (`service.name`, `service.namespace`, `service.instance.id`
//! and six other attributes, as an SDK on Kubernetes sends), one scope, 200 metrics (gauges,
//! monotonic and non-monotonic cumulative sums) of 10 data points each, every point with 7
//! attributes named after the HTTP semantic conventions (dotted keys, two of them integers).
//! Translated, each point is one series of 10 labels (7 attributes, `job`, `instance`,
//! `__name__`), the remote-write bench's 2000 series x 10 labels x 1 sample, plus one
//! `target_info`. A second payload has explicit-bucket histograms (10 bounds) in the same shape:
//! 2000 points that translate into 13 series each.
//!
//! Throughput is in OTLP data points; `BENCHMARKS.md` converts to samples.

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use protocols::otlp::proto::{
    any_value, metric, number_data_point, AggregationTemporality, AnyValue,
    ExportMetricsServiceRequest, Gauge, Histogram, HistogramDataPoint, InstrumentationScope,
    KeyValue, Metric, NumberDataPoint, Resource, ResourceMetrics, ScopeMetrics, Sum,
};
use protocols::otlp::{self, Encoding, TranslateOptions};
use protocols::DecodeLimits;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 42;
const METRICS: usize = 200;
const POINTS_PER_METRIC: usize = 10;
/// 2023-11-14T22:13:20Z, in nanoseconds.
const TIME_NANOS: u64 = 1_700_000_000_000_000_000;

/// OpenTelemetry semantic-convention style metrics: name, unit, kind.
const BASES: &[(&str, &str, Kind)] = &[
    (
        "http.server.active_requests",
        "{request}",
        Kind::UpDownCounter,
    ),
    ("http.server.request.count", "{request}", Kind::Counter),
    ("http.server.request.body.size", "By", Kind::Counter),
    ("http.server.response.body.size", "By", Kind::Counter),
    (
        "http.client.open_connections",
        "{connection}",
        Kind::UpDownCounter,
    ),
    (
        "db.client.connections.usage",
        "{connection}",
        Kind::UpDownCounter,
    ),
    ("process.cpu.time", "s", Kind::Counter),
    ("process.memory.usage", "By", Kind::Gauge),
    ("process.cpu.utilization", "1", Kind::Gauge),
    ("jvm.gc.duration.total", "ms", Kind::Counter),
    ("jvm.thread.count", "{thread}", Kind::UpDownCounter),
    ("messaging.publish.messages", "{message}", Kind::Counter),
    ("rpc.server.requests", "{request}", Kind::Counter),
    ("cache.hits", "{hit}", Kind::Counter),
    ("cache.size", "By", Kind::Gauge),
    ("queue.depth", "{item}", Kind::Gauge),
    ("system.network.io", "By", Kind::Counter),
    ("system.disk.operations", "{operation}", Kind::Counter),
    ("runtime.uptime", "s", Kind::Gauge),
    ("app.orders.processed", "{order}", Kind::Counter),
];
const COMPONENTS: &[&str] = &[
    "checkout",
    "payments",
    "frontend",
    "catalog",
    "search",
    "auth",
    "inventory",
    "shipping",
    "billing",
    "gateway",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];
const STATUS: &[i64] = &[200, 201, 204, 304, 400, 404, 409, 500, 503];
const ROUTES: &[&str] = &[
    "/api/v1/orders/{order_id}",
    "/api/v1/orders",
    "/api/v1/customers/{customer_id}/addresses",
    "/api/v1/products/{sku}",
    "/api/v1/cart/{cart_id}/items",
    "/healthz",
    "/api/v2/search",
    "/api/v1/payments/{payment_id}/capture",
    "/api/v1/shipments/{shipment_id}/tracking",
    "/metrics",
];

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
    UpDownCounter,
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

fn hash(rng: &mut SmallRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn point_attributes(rng: &mut SmallRng, j: usize) -> Vec<KeyValue> {
    vec![
        string(
            "http.request.method",
            METHODS[rng.random_range(0..METHODS.len())],
        ),
        int(
            "http.response.status_code",
            STATUS[rng.random_range(0..STATUS.len())],
        ),
        // The point index picks the route, so the 10 points of a metric are 10 series.
        string("http.route", ROUTES[j % ROUTES.len()]),
        string(
            "server.address",
            format!(
                "ip-10-0-{}-{}.eu-west-1.compute.internal",
                rng.random_range(0..64),
                rng.random_range(1..255)
            ),
        ),
        int("server.port", [8080, 8443, 9090][rng.random_range(0..3)]),
        string("url.scheme", ["https", "http"][rng.random_range(0..2)]),
        string(
            "network.protocol.version",
            ["1.1", "2"][rng.random_range(0..2)],
        ),
    ]
}

fn resource(rng: &mut SmallRng) -> Resource {
    let pod = format!("checkout-{}-{}", hash(rng, 10), hash(rng, 5));
    Resource {
        attributes: vec![
            string("service.name", "checkout"),
            string("service.namespace", "shop"),
            string("service.instance.id", pod.clone()),
            string("k8s.cluster.name", "prod-eu-west-1"),
            string("k8s.namespace.name", "production"),
            string("k8s.pod.name", pod),
            string("host.name", "ip-10-0-17-201.eu-west-1.compute.internal"),
            string("telemetry.sdk.language", "go"),
            string("telemetry.sdk.version", "1.32.0"),
        ],
    }
}

/// The request; `histograms` makes every metric an explicit-bucket histogram.
fn request(histograms: bool) -> ExportMetricsServiceRequest {
    let mut rng = SmallRng::seed_from_u64(SEED);
    let cumulative = AggregationTemporality::Cumulative as i32;
    let resource = resource(&mut rng);
    let metrics = (0..METRICS)
        .map(|i| {
            let (base, unit, kind) = BASES[i % BASES.len()];
            let name = format!("{}.{base}", COMPONENTS[i / BASES.len() % COMPONENTS.len()]);
            let data = if histograms {
                let bounds = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
                let data_points = (0..POINTS_PER_METRIC)
                    .map(|j| {
                        let bucket_counts: Vec<u64> = (0..=bounds.len())
                            .map(|_| rng.random_range(0..1000))
                            .collect();
                        HistogramDataPoint {
                            attributes: point_attributes(&mut rng, j),
                            start_time_unix_nano: TIME_NANOS - 3_600_000_000_000,
                            time_unix_nano: TIME_NANOS,
                            count: bucket_counts.iter().sum(),
                            sum: Some(rng.random::<f64>() * 1000.0),
                            bucket_counts,
                            explicit_bounds: bounds.clone(),
                            ..Default::default()
                        }
                    })
                    .collect();
                metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: cumulative,
                })
            } else {
                let data_points = (0..POINTS_PER_METRIC)
                    .map(|j| NumberDataPoint {
                        attributes: point_attributes(&mut rng, j),
                        start_time_unix_nano: TIME_NANOS - 3_600_000_000_000,
                        time_unix_nano: TIME_NANOS,
                        value: Some(if rng.random_bool(0.5) {
                            number_data_point::Value::AsInt(rng.random_range(0..1_000_000))
                        } else {
                            number_data_point::Value::AsDouble(rng.random::<f64>() * 1000.0)
                        }),
                        ..Default::default()
                    })
                    .collect();
                match kind {
                    Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
                    Kind::Counter | Kind::UpDownCounter => metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: cumulative,
                        is_monotonic: matches!(kind, Kind::Counter),
                    }),
                }
            };
            Metric {
                name,
                description: format!("{base} as the semantic conventions define it"),
                unit: unit.to_string(),
                data: Some(data),
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
                        .to_string(),
                    version: "0.57.0".to_string(),
                    attributes: Vec::new(),
                }),
                metrics,
                schema_url: "https://opentelemetry.io/schemas/1.26.0".to_string(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The OTLP JSON mapping of `r` (64-bit integers as strings, enums as numbers), written by
/// hand for the fields this payload uses; the bench checks it decodes to `r`.
fn to_json(r: &ExportMetricsServiceRequest) -> String {
    fn s(out: &mut String, v: &str) {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).expect("String"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn attrs(out: &mut String, kvs: &[KeyValue]) {
        out.push('[');
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"key\":");
            s(out, &kv.key);
            out.push_str(",\"value\":{");
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(v)) => {
                    out.push_str("\"stringValue\":");
                    s(out, v);
                }
                Some(any_value::Value::IntValue(v)) => {
                    write!(out, "\"intValue\":\"{v}\"").expect("String")
                }
                _ => unreachable!("the payload has string and int attributes only"),
            }
            out.push_str("}}");
        }
        out.push(']');
    }
    fn point_head(out: &mut String, a: &[KeyValue], start: u64, time: u64) {
        out.push_str("{\"attributes\":");
        attrs(out, a);
        write!(
            out,
            ",\"startTimeUnixNano\":\"{start}\",\"timeUnixNano\":\"{time}\""
        )
        .expect("String");
    }
    fn numbers(out: &mut String, points: &[NumberDataPoint]) {
        out.push_str("\"dataPoints\":[");
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            point_head(out, &p.attributes, p.start_time_unix_nano, p.time_unix_nano);
            match p.value {
                Some(number_data_point::Value::AsInt(v)) => {
                    write!(out, ",\"asInt\":\"{v}\"").expect("String")
                }
                // `{:?}` keeps every digit, so the JSON decodes to the same f64.
                Some(number_data_point::Value::AsDouble(v)) => {
                    write!(out, ",\"asDouble\":{v:?}").expect("String")
                }
                None => {}
            }
            out.push('}');
        }
        out.push(']');
    }
    let mut out = String::with_capacity(1 << 20);
    out.push_str("{\"resourceMetrics\":[");
    for (i, rm) in r.resource_metrics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"resource\":{\"attributes\":");
        attrs(
            &mut out,
            &rm.resource.as_ref().expect("resource").attributes,
        );
        out.push_str("},\"scopeMetrics\":[");
        for (k, sm) in rm.scope_metrics.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let scope = sm.scope.as_ref().expect("scope");
            out.push_str("{\"scope\":{\"name\":");
            s(&mut out, &scope.name);
            out.push_str(",\"version\":");
            s(&mut out, &scope.version);
            out.push_str("},\"schemaUrl\":");
            s(&mut out, &sm.schema_url);
            out.push_str(",\"metrics\":[");
            for (n, m) in sm.metrics.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str("{\"name\":");
                s(&mut out, &m.name);
                out.push_str(",\"description\":");
                s(&mut out, &m.description);
                out.push_str(",\"unit\":");
                s(&mut out, &m.unit);
                match m.data.as_ref().expect("data") {
                    metric::Data::Gauge(g) => {
                        out.push_str(",\"gauge\":{");
                        numbers(&mut out, &g.data_points);
                    }
                    metric::Data::Sum(sum) => {
                        write!(
                            out,
                            ",\"sum\":{{\"aggregationTemporality\":{},\"isMonotonic\":{},",
                            sum.aggregation_temporality, sum.is_monotonic
                        )
                        .expect("String");
                        numbers(&mut out, &sum.data_points);
                    }
                    metric::Data::Histogram(h) => {
                        write!(
                            out,
                            ",\"histogram\":{{\"aggregationTemporality\":{},\"dataPoints\":[",
                            h.aggregation_temporality
                        )
                        .expect("String");
                        for (j, p) in h.data_points.iter().enumerate() {
                            if j > 0 {
                                out.push(',');
                            }
                            point_head(
                                &mut out,
                                &p.attributes,
                                p.start_time_unix_nano,
                                p.time_unix_nano,
                            );
                            write!(out, ",\"count\":\"{}\"", p.count).expect("String");
                            if let Some(sum) = p.sum {
                                write!(out, ",\"sum\":{sum:?}").expect("String");
                            }
                            out.push_str(",\"bucketCounts\":[");
                            for (b, c) in p.bucket_counts.iter().enumerate() {
                                let comma = if b > 0 { "," } else { "" };
                                write!(out, "{comma}\"{c}\"").expect("String");
                            }
                            out.push_str("],\"explicitBounds\":[");
                            for (b, x) in p.explicit_bounds.iter().enumerate() {
                                let comma = if b > 0 { "," } else { "" };
                                write!(out, "{comma}{x:?}").expect("String");
                            }
                            out.push_str("]}");
                        }
                        out.push(']');
                    }
                    _ => unreachable!("the payload has gauges, sums and histograms only"),
                }
                out.push_str("}}");
            }
            out.push_str("]}");
        }
        out.push_str("]}");
    }
    out.push_str("]}");
    out
}

/// gzip at the default level, as the OTLP exporters of the Go and Java SDKs send.
fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// Series and samples of a translation, for the payload line.
fn translated(request: &ExportMetricsServiceRequest, limits: &DecodeLimits) -> (u64, usize, usize) {
    let t = otlp::translate(request, &TranslateOptions::default(), limits).expect("translates");
    assert_eq!(t.rejected_points, 0, "{}", t.error_message());
    let series = t.batches.iter().map(|b| b.batch.series_count()).sum();
    let samples = t.batches.iter().map(|b| b.batch.sample_count()).sum();
    (t.points(), series, samples)
}

/// Every translated series' labels, to compare two encodings of one payload.
fn series_labels(
    request: &ExportMetricsServiceRequest,
    limits: &DecodeLimits,
) -> Vec<Vec<(String, String)>> {
    let t = otlp::translate(request, &TranslateOptions::default(), limits).expect("translates");
    t.batches
        .iter()
        .flat_map(|b| b.batch.series())
        .map(|s| {
            s.labels()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let options = TranslateOptions::default();
    let request = request(false);
    let protobuf = request.encode_to_vec();
    let json = to_json(&request);
    let gzipped = gzip(&protobuf);
    // The JSON payload must carry the same series. Not compared with `==`: serde_json's
    // default float parser is off by one ulp on some doubles (see BENCHMARKS.md).
    let from_json = otlp::decode(json.as_bytes(), Encoding::Json, &limits).expect("JSON decodes");
    assert_eq!(
        series_labels(&from_json, &limits),
        series_labels(&request, &limits)
    );
    let (points, series, samples) = translated(&request, &limits);
    eprintln!(
        "payload: {points} points -> {series} series, {samples} samples; {} bytes protobuf, \
         {} bytes gzip, {} bytes JSON",
        protobuf.len(),
        gzipped.len(),
        json.len()
    );

    let mut group = c.benchmark_group("otlp");
    group.throughput(Throughput::Elements(points));

    let mut scratch = Vec::new();
    group.bench_function("gunzip_only", |b| {
        b.iter(|| {
            scratch.clear();
            let mut d = flate2::read::GzDecoder::new(black_box(&gzipped[..]));
            std::io::Read::read_to_end(&mut d, &mut scratch).expect("gzip");
            black_box(scratch.len())
        })
    });

    group.bench_function("protobuf_decode_only", |b| {
        b.iter(|| {
            let r = otlp::decode(black_box(&protobuf), Encoding::Protobuf, &limits).unwrap();
            black_box(r.resource_metrics.len())
        })
    });

    group.bench_function("translate_only", |b| {
        b.iter(|| {
            let t = otlp::translate(black_box(&request), &options, &limits).unwrap();
            black_box(t.points())
        })
    });

    group.bench_function("protobuf_decode_translate", |b| {
        b.iter(|| {
            let r = otlp::decode(black_box(&protobuf), Encoding::Protobuf, &limits).unwrap();
            let t = otlp::translate(&r, &options, &limits).unwrap();
            black_box(t.points())
        })
    });

    group.bench_function("json_decode_translate", |b| {
        b.iter(|| {
            let r = otlp::decode(black_box(json.as_bytes()), Encoding::Json, &limits).unwrap();
            let t = otlp::translate(&r, &options, &limits).unwrap();
            black_box(t.points())
        })
    });

    group.bench_function("gzip_protobuf_decode_translate", |b| {
        b.iter(|| {
            let raw = otlp::gunzip(black_box(&gzipped), &limits).unwrap();
            let r = otlp::decode(&raw, Encoding::Protobuf, &limits).unwrap();
            let t = otlp::translate(&r, &options, &limits).unwrap();
            black_box(t.points())
        })
    });

    let histograms = self::request(true);
    let hist_protobuf = histograms.encode_to_vec();
    let (points, series, samples) = translated(&histograms, &limits);
    eprintln!(
        "histogram payload: {points} points -> {series} series, {samples} samples; {} bytes \
         protobuf",
        hist_protobuf.len()
    );
    group.throughput(Throughput::Elements(points));
    group.bench_function("histograms_protobuf_decode_translate", |b| {
        b.iter(|| {
            let r = otlp::decode(black_box(&hist_protobuf), Encoding::Protobuf, &limits).unwrap();
            let t = otlp::translate(&r, &options, &limits).unwrap();
            black_box(t.points())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

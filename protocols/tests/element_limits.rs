//! Per-request element limits (samples, native histograms, buckets, exemplars, OTLP
//! attributes) in every format: a body exactly at a limit decodes, one element more is refused
//! with `TooManyElements` naming the limit; and bodies built to cost the most memory per wire
//! byte decode to batches that stay within `DecodeLimits::worst_case_decoded_bytes`.

use std::io::Write;

use bytes::Bytes;
use prost::Message;
use protocols::otlp::proto::{self, metric, number_data_point, AnyValue, KeyValue};
use protocols::otlp::{self, Encoding, TranslateOptions};
use protocols::remote_write::v1::reference as pb1;
use protocols::remote_write::v2::reference as pb2;
use protocols::remote_write::{v1, v2};
use protocols::{snappy, DecodeError, DecodeLimits, Element};

const SMALL: DecodeLimits = DecodeLimits {
    max_samples: 8,
    max_histograms: 4,
    max_histogram_buckets: 12,
    max_exemplars: 3,
    max_attributes: 10,
    ..DecodeLimits::new_default()
};

fn refused(element: Element, limit: usize) -> DecodeError {
    DecodeError::TooManyElements { element, limit }
}

fn name_label() -> Vec<pb1::Label> {
    vec![pb1::Label {
        name: "__name__".into(),
        value: "up".into(),
    }]
}

/// A remote-write 1.0 body with one series per entry of `series`.
fn v1_body(series: Vec<pb1::TimeSeries>) -> Vec<u8> {
    snappy::compress(
        &pb1::WriteRequest {
            timeseries: series,
            metadata: vec![],
        }
        .encode_to_vec(),
    )
}

fn v1_series(samples: usize, histograms: Vec<pb1::Histogram>, exemplars: usize) -> pb1::TimeSeries {
    pb1::TimeSeries {
        labels: name_label(),
        samples: (0..samples)
            .map(|i| pb1::Sample {
                value: 1.0,
                timestamp: i as i64,
            })
            .collect(),
        exemplars: (0..exemplars)
            .map(|_| pb1::Exemplar {
                labels: vec![],
                value: 1.0,
                timestamp: 1,
            })
            .collect(),
        histograms,
    }
}

fn buckets_histogram(spans: usize, deltas: usize, custom: usize) -> pb1::Histogram {
    pb1::Histogram {
        positive_spans: (0..spans)
            .map(|_| pb1::BucketSpan {
                offset: 0,
                length: 1,
            })
            .collect(),
        positive_deltas: vec![1; deltas],
        custom_values: vec![1.0; custom],
        ..pb1::Histogram::default()
    }
}

#[test]
fn remote_write_1_samples_at_the_limit_decode_and_one_more_is_refused() {
    // Counted over the request, not per series.
    let at = v1_body(vec![v1_series(5, vec![], 0), v1_series(3, vec![], 0)]);
    assert_eq!(v1::decode(&at, &SMALL).unwrap().sample_count(), 8);
    let over = v1_body(vec![v1_series(5, vec![], 0), v1_series(4, vec![], 0)]);
    assert_eq!(
        v1::decode(&over, &SMALL).unwrap_err(),
        refused(Element::Samples, 8)
    );
}

#[test]
fn remote_write_1_histograms_at_the_limit_decode_and_one_more_is_refused() {
    let empty = |n| vec![pb1::Histogram::default(); n];
    let at = v1_body(vec![v1_series(0, empty(2), 0), v1_series(0, empty(2), 0)]);
    assert_eq!(v1::decode(&at, &SMALL).unwrap().histogram_count(), 4);
    let over = v1_body(vec![v1_series(0, empty(5), 0)]);
    assert_eq!(
        v1::decode(&over, &SMALL).unwrap_err(),
        refused(Element::Histograms, 4)
    );
}

#[test]
fn remote_write_1_buckets_count_spans_deltas_and_custom_values() {
    // 2 spans + 6 deltas + 4 custom values = 12.
    let at = v1_body(vec![v1_series(0, vec![buckets_histogram(2, 6, 4)], 0)]);
    assert!(v1::decode(&at, &SMALL).is_ok());
    for over in [
        buckets_histogram(3, 6, 4),
        buckets_histogram(2, 7, 4),
        buckets_histogram(2, 6, 5),
    ] {
        let body = v1_body(vec![v1_series(0, vec![over], 0)]);
        assert_eq!(
            v1::decode(&body, &SMALL).unwrap_err(),
            refused(Element::HistogramBuckets, 12)
        );
    }
    // Across histograms of different series too.
    let split = v1_body(vec![
        v1_series(0, vec![buckets_histogram(1, 5, 0)], 0),
        v1_series(0, vec![buckets_histogram(1, 6, 0)], 0),
    ]);
    assert_eq!(
        v1::decode(&split, &SMALL).unwrap_err(),
        refused(Element::HistogramBuckets, 12)
    );
}

#[test]
fn remote_write_1_exemplars_at_the_limit_decode_and_one_more_is_refused() {
    let at = v1_body(vec![v1_series(1, vec![], 3)]);
    assert_eq!(v1::decode(&at, &SMALL).unwrap().exemplar_count(), 3);
    let over = v1_body(vec![v1_series(1, vec![], 2), v1_series(1, vec![], 2)]);
    assert_eq!(
        v1::decode(&over, &SMALL).unwrap_err(),
        refused(Element::Exemplars, 3)
    );
}

fn v2_series(samples: usize, histograms: Vec<pb1::Histogram>, exemplars: usize) -> pb2::TimeSeries {
    pb2::TimeSeries {
        labels_refs: vec![1, 2],
        samples: (0..samples)
            .map(|i| pb2::Sample {
                value: 1.0,
                timestamp: i as i64,
            })
            .collect(),
        histograms,
        exemplars: (0..exemplars)
            .map(|_| pb2::Exemplar {
                labels_refs: vec![],
                value: 1.0,
                timestamp: 1,
            })
            .collect(),
        metadata: None,
        created_timestamp: 0,
    }
}

fn v2_decode(series: Vec<pb2::TimeSeries>) -> Result<protocols::Batch, DecodeError> {
    let req = pb2::Request {
        symbols: vec!["".into(), "__name__".into(), "up".into()],
        timeseries: series,
    };
    v2::decode(&snappy::compress(&req.encode_to_vec()), &SMALL)
}

#[test]
fn remote_write_2_counts_every_element_kind_over_the_request() {
    let empty = |n| vec![pb1::Histogram::default(); n];
    let at = v2_decode(vec![
        v2_series(4, empty(2), 1),
        v2_series(4, vec![buckets_histogram(2, 6, 4)], 2),
    ])
    .unwrap();
    assert_eq!(
        (at.sample_count(), at.histogram_count(), at.exemplar_count()),
        (8, 3, 3)
    );
    let cases = [
        (v2_series(9, vec![], 0), refused(Element::Samples, 8)),
        (v2_series(0, empty(5), 0), refused(Element::Histograms, 4)),
        (
            v2_series(0, vec![buckets_histogram(2, 6, 5)], 0),
            refused(Element::HistogramBuckets, 12),
        ),
        (v2_series(1, vec![], 4), refused(Element::Exemplars, 3)),
    ];
    for (series, want) in cases {
        assert_eq!(v2_decode(vec![series]).unwrap_err(), want);
    }
}

#[test]
fn remote_write_2_refuses_label_references_past_the_label_limit_while_reading_them() {
    let limits = DecodeLimits {
        max_labels_per_series: 2,
        ..SMALL
    };
    let mut series = v2_series(1, vec![], 0);
    series.labels_refs = vec![1, 2, 1, 2, 1, 2, 1, 2];
    let req = pb2::Request {
        symbols: vec!["".into(), "__name__".into(), "up".into()],
        timeseries: vec![series],
    };
    assert_eq!(
        v2::decode_message(Bytes::from(req.encode_to_vec()), &limits).unwrap_err(),
        DecodeError::TooManyLabels {
            series: 0,
            limit: 2
        }
    );
}

fn attr(key: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(proto::any_value::Value::StringValue("v".into())),
        }),
    }
}

fn number_point(attrs: usize, exemplars: usize) -> proto::NumberDataPoint {
    proto::NumberDataPoint {
        attributes: (0..attrs).map(|i| attr(&format!("a{i}"))).collect(),
        time_unix_nano: 1_000_000,
        exemplars: (0..exemplars)
            .map(|_| proto::Exemplar {
                value: Some(proto::exemplar::Value::AsDouble(1.0)),
                time_unix_nano: 1_000_000,
                ..proto::Exemplar::default()
            })
            .collect(),
        value: Some(number_data_point::Value::AsDouble(1.0)),
        ..proto::NumberDataPoint::default()
    }
}

fn otlp_request(data: Vec<metric::Data>) -> proto::ExportMetricsServiceRequest {
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(proto::Resource {
                attributes: vec![attr("service.name")],
            }),
            scope_metrics: vec![proto::ScopeMetrics {
                metrics: data
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| proto::Metric {
                        name: format!("m{i}"),
                        data: Some(d),
                        ..proto::Metric::default()
                    })
                    .collect(),
                ..proto::ScopeMetrics::default()
            }],
            ..proto::ResourceMetrics::default()
        }],
    }
}

fn sum(points: Vec<proto::NumberDataPoint>) -> metric::Data {
    metric::Data::Sum(proto::Sum {
        data_points: points,
        aggregation_temporality: proto::AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    })
}

fn exponential(points: usize, buckets: usize) -> metric::Data {
    metric::Data::ExponentialHistogram(proto::ExponentialHistogram {
        data_points: (0..points)
            .map(|_| proto::ExponentialHistogramDataPoint {
                time_unix_nano: 1_000_000,
                positive: Some(proto::Buckets {
                    offset: 0,
                    bucket_counts: vec![1; buckets],
                }),
                ..proto::ExponentialHistogramDataPoint::default()
            })
            .collect(),
        aggregation_temporality: proto::AggregationTemporality::Cumulative as i32,
    })
}

fn explicit(bounds: usize) -> metric::Data {
    metric::Data::Histogram(proto::Histogram {
        data_points: vec![proto::HistogramDataPoint {
            time_unix_nano: 1_000_000,
            count: 1,
            bucket_counts: vec![0; bounds + 1],
            explicit_bounds: (0..bounds).map(|b| b as f64).collect(),
            ..proto::HistogramDataPoint::default()
        }],
        aggregation_temporality: proto::AggregationTemporality::Cumulative as i32,
    })
}

fn summary(quantiles: usize) -> metric::Data {
    metric::Data::Summary(proto::Summary {
        data_points: vec![proto::SummaryDataPoint {
            time_unix_nano: 1_000_000,
            quantile_values: (0..quantiles)
                .map(|q| proto::ValueAtQuantile {
                    quantile: q as f64 / 10.0,
                    value: 1.0,
                })
                .collect(),
            ..proto::SummaryDataPoint::default()
        }],
    })
}

fn otlp_decode(
    req: &proto::ExportMetricsServiceRequest,
    limits: &DecodeLimits,
) -> Result<proto::ExportMetricsServiceRequest, DecodeError> {
    otlp::decode(&req.encode_to_vec(), Encoding::Protobuf, limits)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    enc.finish().unwrap()
}

/// Each case at its limit and one over, as protobuf and as gzip-then-protobuf.
fn otlp_cases() -> Vec<(proto::ExportMetricsServiceRequest, Option<DecodeError>)> {
    let points = |n| (0..n).map(|_| number_point(0, 0)).collect::<Vec<_>>();
    vec![
        (otlp_request(vec![sum(points(5)), sum(points(3))]), None),
        (
            otlp_request(vec![sum(points(5)), sum(points(4))]),
            Some(refused(Element::Samples, 8)),
        ),
        (otlp_request(vec![exponential(4, 0)]), None),
        (
            otlp_request(vec![exponential(5, 0)]),
            Some(refused(Element::Histograms, 4)),
        ),
        // Exponential bucket counts, explicit counts and bounds, quantiles: 4 + (2 + 3) + 3.
        (
            otlp_request(vec![exponential(1, 4), explicit(2), summary(3)]),
            None,
        ),
        (
            otlp_request(vec![exponential(1, 5), explicit(2), summary(3)]),
            Some(refused(Element::HistogramBuckets, 12)),
        ),
        (
            otlp_request(vec![exponential(1, 4), explicit(2), summary(4)]),
            Some(refused(Element::HistogramBuckets, 12)),
        ),
        (
            otlp_request(vec![sum(vec![number_point(0, 2), number_point(0, 1)])]),
            None,
        ),
        (
            otlp_request(vec![sum(vec![number_point(0, 2), number_point(0, 2)])]),
            Some(refused(Element::Exemplars, 3)),
        ),
        // The resource's attribute and the points': 1 + 4 + 5.
        (
            otlp_request(vec![sum(vec![number_point(4, 0), number_point(5, 0)])]),
            None,
        ),
        (
            otlp_request(vec![sum(vec![number_point(5, 0), number_point(5, 0)])]),
            Some(refused(Element::Attributes, 10)),
        ),
    ]
}

#[test]
fn otlp_protobuf_and_gzip_element_limits_are_refused_before_decoding() {
    for (i, (req, want)) in otlp_cases().into_iter().enumerate() {
        let plain = otlp_decode(&req, &SMALL);
        let raw = otlp::gunzip(&gzip(&req.encode_to_vec()), &SMALL).unwrap();
        let gzipped = otlp::decode(&raw, Encoding::Protobuf, &SMALL);
        match want {
            None => {
                assert_eq!(plain.as_ref().ok(), Some(&req), "case {i}");
                assert_eq!(gzipped.ok(), Some(req.clone()), "case {i}");
                // Histogram and summary points become more samples than points.
                let roomy = DecodeLimits {
                    max_samples: 100,
                    ..SMALL
                };
                otlp::translate(&plain.unwrap(), &TranslateOptions::default(), &roomy)
                    .unwrap_or_else(|e| panic!("case {i} translates: {e}"));
            }
            Some(e) => {
                assert_eq!(plain.unwrap_err(), e, "case {i}");
                assert_eq!(gzipped.unwrap_err(), e, "case {i}");
            }
        }
    }
}

#[test]
fn otlp_nested_array_and_map_values_count_as_attributes() {
    let nested = |n: usize| KeyValue {
        key: "k".into(),
        value: Some(AnyValue {
            value: Some(proto::any_value::Value::ArrayValue(proto::ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(proto::any_value::Value::KvlistValue(proto::KeyValueList {
                            values: (0..n).map(|i| attr(&format!("n{i}"))).collect(),
                        })),
                    };
                    1
                ],
            })),
        }),
    };
    let req = |n| {
        let mut point = number_point(0, 0);
        point.attributes = vec![nested(n)];
        otlp_request(vec![sum(vec![point])])
    };
    // Resource attribute, the point's, the array element and n map entries.
    assert!(otlp_decode(&req(7), &SMALL).is_ok());
    assert_eq!(
        otlp_decode(&req(8), &SMALL).unwrap_err(),
        refused(Element::Attributes, 10)
    );
}

#[test]
fn otlp_resources_scopes_and_metrics_are_bounded_by_the_series_limit() {
    let limits = DecodeLimits {
        max_series: 3,
        ..SMALL
    };
    let metrics = |n| otlp_request((0..n).map(|_| sum(vec![])).collect());
    assert!(otlp_decode(&metrics(3), &limits).is_ok());
    assert_eq!(
        otlp_decode(&metrics(4), &limits).unwrap_err(),
        DecodeError::TooManySeries { limit: 3 }
    );
    let mut resources = metrics(0);
    resources.resource_metrics = vec![proto::ResourceMetrics::default(); 4];
    assert_eq!(
        otlp_decode(&resources, &limits).unwrap_err(),
        DecodeError::TooManySeries { limit: 3 }
    );
}

#[test]
fn otlp_translation_counts_the_samples_a_histogram_point_becomes() {
    // One explicit histogram point with 5 bounds: 6 bucket series, _sum absent, _count.
    let limits = DecodeLimits {
        max_samples: 6,
        ..SMALL
    };
    let req = otlp_decode(&otlp_request(vec![explicit(5)]), &limits).unwrap();
    assert_eq!(
        otlp::translate(&req, &TranslateOptions::default(), &limits).unwrap_err(),
        refused(Element::Samples, 6)
    );
    let limits = DecodeLimits {
        max_samples: 7,
        ..limits
    };
    let t = otlp::translate(&req, &TranslateOptions::default(), &limits).unwrap();
    assert_eq!(t.batches[0].batch.sample_count(), 7);
}

#[test]
fn otlp_translation_limits_hold_over_all_tenant_batches_together() {
    let tenant = |t: &str, points: usize| proto::ResourceMetrics {
        resource: Some(proto::Resource {
            attributes: vec![KeyValue {
                key: "tenant".into(),
                value: Some(AnyValue {
                    value: Some(proto::any_value::Value::StringValue(t.into())),
                }),
            }],
        }),
        scope_metrics: vec![proto::ScopeMetrics {
            metrics: vec![proto::Metric {
                name: "m".into(),
                data: Some(sum((0..points).map(|_| number_point(0, 0)).collect())),
                ..proto::Metric::default()
            }],
            ..proto::ScopeMetrics::default()
        }],
        ..proto::ResourceMetrics::default()
    };
    let options = TranslateOptions {
        tenant_attribute: Some("tenant".into()),
        ..TranslateOptions::default()
    };
    let limits = DecodeLimits {
        max_samples: 8,
        ..DecodeLimits::new_default()
    };
    let req = |n| proto::ExportMetricsServiceRequest {
        resource_metrics: vec![tenant("a", 4), tenant("b", 3), tenant("c", n)],
    };
    let at = otlp::translate(&req(1), &options, &limits).unwrap();
    assert_eq!(at.batches.len(), 3);
    assert_eq!(
        otlp::translate(&req(2), &options, &limits).unwrap_err(),
        refused(Element::Samples, 8)
    );
}

/// OTLP JSON for `n` sums, each with the given points (attributes per point, exemplars per
/// point).
fn json_body(metrics: &[&[(usize, usize)]]) -> String {
    let point = |(attrs, exemplars): (usize, usize)| {
        let attrs: Vec<String> = (0..attrs)
            .map(|i| format!(r#"{{"key":"a{i}","value":{{"stringValue":"v"}}}}"#))
            .collect();
        let exemplars = vec![r#"{"asDouble":1,"timeUnixNano":"1000000"}"#; exemplars];
        format!(
            r#"{{"timeUnixNano":"1000000","asDouble":1,"attributes":[{}],"exemplars":[{}]}}"#,
            attrs.join(","),
            exemplars.join(",")
        )
    };
    let metrics: Vec<String> = metrics
        .iter()
        .enumerate()
        .map(|(i, points)| {
            let points: Vec<String> = points.iter().map(|p| point(*p)).collect();
            format!(
                r#"{{"name":"m{i}","sum":{{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{}]}}}}"#,
                points.join(",")
            )
        })
        .collect();
    format!(
        r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{}]}}]}}]}}"#,
        metrics.join(",")
    )
}

#[test]
fn otlp_json_element_limits_are_refused_before_decoding() {
    let decode = |body: String| otlp::decode(body.as_bytes(), Encoding::Json, &SMALL);
    let ok = decode(json_body(&[&[(0, 0); 5], &[(0, 0); 3]])).unwrap();
    assert_eq!(ok.resource_metrics[0].scope_metrics[0].metrics.len(), 2);
    assert_eq!(
        decode(json_body(&[&[(0, 0); 5], &[(0, 0); 4]])).unwrap_err(),
        refused(Element::Samples, 8)
    );
    assert!(decode(json_body(&[&[(0, 2), (0, 1)]])).is_ok());
    assert_eq!(
        decode(json_body(&[&[(0, 2), (0, 2)]])).unwrap_err(),
        refused(Element::Exemplars, 3)
    );
    assert!(decode(json_body(&[&[(5, 0), (5, 0)]])).is_ok());
    assert_eq!(
        decode(json_body(&[&[(5, 0), (6, 0)]])).unwrap_err(),
        refused(Element::Attributes, 10)
    );
    let exp = |n: usize, buckets: usize| {
        let counts = vec!["\"1\""; buckets].join(",");
        let points =
            vec![
                format!(r#"{{"timeUnixNano":"1000000","positive":{{"bucketCounts":[{counts}]}}}}"#);
                n
            ];
        format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"h","exponentialHistogram":{{"aggregationTemporality":2,"dataPoints":[{}]}}}}]}}]}}]}}"#,
            points.join(",")
        )
    };
    assert!(decode(exp(4, 3)).is_ok());
    assert_eq!(
        decode(exp(5, 0)).unwrap_err(),
        refused(Element::Histograms, 4)
    );
    assert_eq!(
        decode(exp(4, 4)).unwrap_err(),
        refused(Element::HistogramBuckets, 12)
    );
}

#[test]
fn otlp_json_counts_escaped_keys_as_the_keys_they_spell() {
    let body = format!(r#"{{"resource\u004detrics":[{}]}}"#, ["{}"; 4].join(","));
    let limits = DecodeLimits {
        max_series: 3,
        ..SMALL
    };
    assert_eq!(
        otlp::decode(body.as_bytes(), Encoding::Json, &limits).unwrap_err(),
        DecodeError::TooManySeries { limit: 3 }
    );
}

#[test]
fn otlp_json_values_past_the_budget_are_refused_wherever_they_are() {
    let limits = DecodeLimits {
        max_series: 1,
        max_samples: 1,
        max_histograms: 1,
        max_exemplars: 1,
        max_attributes: 1,
        max_histogram_buckets: 1,
        ..DecodeLimits::new_default()
    };
    // Unknown keys hold no element, but serde still reads (and may buffer) every value;
    // brackets inside strings are not values.
    let body = |n: usize| {
        format!(
            r#"{{"resourceMetrics":[],"x":"[[[[{{{{","unknown":[{}]}}"#,
            vec!["0"; n].join(",")
        )
    };
    // 16 * 4 + 4 + 3 = 71 values: the object, two arrays, the string, n zeros.
    assert!(otlp::decode(body(67).as_bytes(), Encoding::Json, &limits).is_ok());
    assert_eq!(
        otlp::decode(body(68).as_bytes(), Encoding::Json, &limits).unwrap_err(),
        refused(Element::JsonValues, 71)
    );
}

#[test]
fn refusals_name_the_gateway_setting_and_answer_413() {
    let e = refused(Element::Histograms, 10000);
    assert_eq!(
        e.to_string(),
        "request has more than 10000 native histograms (limit max_histograms_per_request)"
    );
    assert!(e.is_too_large());
    for (element, reason, setting) in [
        (
            Element::Samples,
            "too_many_samples",
            "max_samples_per_request",
        ),
        (
            Element::Histograms,
            "too_many_histograms",
            "max_histograms_per_request",
        ),
        (
            Element::HistogramBuckets,
            "too_many_buckets",
            "max_histogram_buckets_per_request",
        ),
        (
            Element::Exemplars,
            "too_many_exemplars",
            "max_exemplars_per_request",
        ),
        (
            Element::Attributes,
            "too_many_attributes",
            "max_attributes_per_request",
        ),
    ] {
        let e = refused(element, 1);
        assert_eq!(e.reason(), reason);
        assert!(e.to_string().contains(setting), "{e}");
    }
    let busy = DecodeError::BudgetExhausted { reserved: 0 };
    assert!(!busy.is_too_large());
    assert_eq!(busy.reason(), "memory_budget");
}

#[test]
fn gunzip_reserving_asks_before_each_step_and_stops_when_refused() {
    let data = vec![7u8; 300 << 10];
    let body = gzip(&data);
    let mut asked = Vec::new();
    let out = otlp::gunzip_reserving(&body, &DecodeLimits::default(), |n| {
        asked.push(n);
        true
    })
    .unwrap();
    assert_eq!(out, data);
    assert!(asked.iter().all(|n| *n <= 1 << 20), "{asked:?}");
    assert!(
        out.capacity() <= asked.iter().sum::<usize>(),
        "capacity {} over the {asked:?} reserved",
        out.capacity()
    );

    let mut budget = 128 << 10;
    let err = otlp::gunzip_reserving(&body, &DecodeLimits::default(), |n| {
        let ok = n <= budget;
        if ok {
            budget -= n;
        }
        ok
    })
    .unwrap_err();
    assert_eq!(
        err,
        DecodeError::BudgetExhausted {
            reserved: 128 << 10
        }
    );
    assert!(!err.is_too_large());
}

#[test]
fn gunzip_inflates_exactly_to_the_limit_and_refuses_one_byte_more() {
    let limits = DecodeLimits {
        max_decompressed_bytes: 100_000,
        ..DecodeLimits::default()
    };
    assert_eq!(
        otlp::gunzip(&gzip(&vec![1u8; 100_000]), &limits)
            .unwrap()
            .len(),
        100_000
    );
    assert_eq!(
        otlp::gunzip(&gzip(&vec![1u8; 100_001]), &limits).unwrap_err(),
        DecodeError::InflatedTooLarge { limit: 100_000 }
    );
}

/// Limits small enough that adversarial bodies at every limit fit the decompressed limit.
const TIGHT: DecodeLimits = DecodeLimits {
    max_compressed_bytes: 1 << 20,
    max_decompressed_bytes: 1 << 20,
    max_series: 1000,
    max_labels_per_series: 16,
    max_label_name_bytes: 64,
    max_label_value_bytes: 256,
    max_samples: 20_000,
    max_histograms: 5_000,
    max_histogram_buckets: 20_000,
    max_exemplars: 5_000,
    max_attributes: 10_000,
};

fn within_worst_case(what: &str, batch: &protocols::Batch) {
    let worst = TIGHT.worst_case_decoded_bytes();
    assert!(
        batch.heap_bytes() <= worst,
        "{what}: {} bytes held, over the worst case of {worst}",
        batch.heap_bytes()
    );
}

#[test]
fn adversarial_bodies_at_the_limits_stay_within_the_worst_case() {
    // Empty histograms (2 bytes each), empty samples, empty exemplars, all at their limits,
    // and the most buckets one-byte deltas can carry.
    let series = vec![
        v1_series(TIGHT.max_samples, vec![], TIGHT.max_exemplars),
        v1_series(
            0,
            vec![pb1::Histogram::default(); TIGHT.max_histograms - 1],
            0,
        ),
        v1_series(
            0,
            vec![buckets_histogram(0, TIGHT.max_histogram_buckets, 0)],
            0,
        ),
    ];
    let body = v1_body(series.clone());
    let batch = v1::decode(&body, &TIGHT).unwrap();
    assert_eq!(batch.histogram_count(), TIGHT.max_histograms);
    within_worst_case("remote-write 1.0", &batch);

    let req = pb2::Request {
        symbols: vec!["".into(), "__name__".into(), "up".into()],
        timeseries: vec![
            v2_series(TIGHT.max_samples, vec![], TIGHT.max_exemplars),
            v2_series(0, vec![pb1::Histogram::default(); TIGHT.max_histograms], 0),
        ],
    };
    let batch = v2::decode(&snappy::compress(&req.encode_to_vec()), &TIGHT).unwrap();
    within_worst_case("remote-write 2.0", &batch);

    // OTLP: tiny points with the most attributes a series may take, exemplars and empty
    // exponential histograms, within the series limit so that all of it translates.
    let req = otlp_request(vec![
        // 14 attributes, `job` and `__name__`: the 16 labels a series may have.
        sum((0..400).map(|_| number_point(14, 0)).collect()),
        sum((0..300).map(|_| number_point(0, 1)).collect()),
        exponential(299, 0),
    ]);
    let decoded = otlp_decode(&req, &TIGHT).unwrap();
    let t = otlp::translate(&decoded, &TranslateOptions::default(), &TIGHT).unwrap();
    assert_eq!(t.batches[0].batch.series_count(), 999);
    within_worst_case("OTLP", &t.batches[0].batch);
}

#[test]
fn worst_case_grows_with_the_limits_and_saturates_when_unbounded() {
    let small = TIGHT.worst_case_decoded_bytes();
    let default = DecodeLimits::default().worst_case_decoded_bytes();
    for (what, l) in [("small", TIGHT), ("default", DecodeLimits::default())] {
        eprintln!(
            "{what} limits: worst case {} bytes (remote-write {}, OTLP {})",
            l.worst_case_decoded_bytes(),
            l.worst_case_remote_write_bytes(),
            l.worst_case_otlp_bytes()
        );
        assert_eq!(
            l.worst_case_decoded_bytes(),
            l.worst_case_remote_write_bytes()
                .max(l.worst_case_otlp_bytes())
        );
    }
    assert!(small < default, "{small} vs {default}");
    let unbounded = DecodeLimits {
        max_compressed_bytes: usize::MAX,
        max_decompressed_bytes: usize::MAX,
        max_series: usize::MAX,
        max_labels_per_series: usize::MAX,
        max_label_name_bytes: usize::MAX,
        max_label_value_bytes: usize::MAX,
        max_samples: usize::MAX,
        max_histograms: usize::MAX,
        max_histogram_buckets: usize::MAX,
        max_exemplars: usize::MAX,
        max_attributes: usize::MAX,
    };
    assert_eq!(unbounded.worst_case_decoded_bytes(), usize::MAX);
}

#[test]
fn heap_bytes_counts_columns_and_histogram_buckets() {
    let empty = v1::decode_message(Bytes::new(), &SMALL).unwrap();
    let one = v1::decode(
        &v1_body(vec![v1_series(1, vec![buckets_histogram(1, 3, 0)], 0)]),
        &SMALL,
    )
    .unwrap();
    assert_eq!(empty.heap_bytes(), 0);
    // At least the buffer, one sample, one histogram and its four buckets.
    let floor = std::mem::size_of::<protocols::Sample>()
        + std::mem::size_of::<protocols::Histogram>()
        + 4 * 8;
    assert!(one.heap_bytes() > floor, "{}", one.heap_bytes());
}

#[test]
fn otlp_protobuf_scan_walks_past_unknown_groups_as_the_decoder_does() {
    let points = (0..9).map(|_| number_point(0, 0)).collect();
    let req = otlp_request(vec![sum(points)]);
    // Field 15 as an (empty) group, which prost skips as an unknown field.
    let mut body = vec![0x7b, 0x7c];
    body.extend(req.encode_to_vec());
    assert_eq!(
        otlp::decode(&body, Encoding::Protobuf, &SMALL).unwrap_err(),
        refused(Element::Samples, 8)
    );
    let roomy = DecodeLimits {
        max_samples: 9,
        ..SMALL
    };
    assert_eq!(
        otlp::decode(&body, Encoding::Protobuf, &roomy).unwrap(),
        req
    );
}

#[test]
fn otlp_protobuf_framing_the_scan_cannot_walk_is_refused_as_invalid() {
    let mut body = otlp_request(vec![sum(vec![number_point(0, 0)])]).encode_to_vec();
    body.truncate(body.len() - 1);
    assert!(matches!(
        otlp::decode(&body, Encoding::Protobuf, &SMALL).unwrap_err(),
        DecodeError::Protobuf(_)
    ));
}

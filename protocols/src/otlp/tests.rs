use std::io::Write;

use prost::Message;

use super::proto::*;
use super::*;
use crate::Batch;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

const T: u64 = 1_700_000_000_123_456_789;
const T_MS: i64 = 1_700_000_000_123;

fn number(v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: T,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn metric(name: &str, unit: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: format!("{name} help"),
        data: Some(data),
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "checkout"),
                    kv("service.namespace", "shop"),
                    kv("service.instance.id", "pod-1"),
                    kv("deployment.environment", "prod"),
                ],
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "lib".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn all_kinds() -> ExportMetricsServiceRequest {
    let cumulative = AggregationTemporality::Cumulative as i32;
    request(vec![
        metric(
            "shop.orders",
            "{order}",
            metric::Data::Sum(Sum {
                data_points: vec![number(7.0, vec![kv("method", "card")])],
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
        metric(
            "queue.depth",
            "{item}",
            metric::Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsInt(7)),
                    ..number(0.0, vec![])
                }],
                aggregation_temporality: cumulative,
                is_monotonic: false,
            }),
        ),
        metric(
            "cpu.temperature",
            "Cel",
            metric::Data::Gauge(Gauge {
                data_points: vec![number(41.5, vec![])],
            }),
        ),
        metric(
            "http.server.duration",
            "ms",
            metric::Data::Histogram(proto::Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: T,
                    count: 5,
                    sum: Some(5605.0),
                    bucket_counts: vec![1, 2, 1, 1],
                    explicit_bounds: vec![10.0, 100.0, 1000.0],
                    exemplars: vec![Exemplar {
                        time_unix_nano: T,
                        trace_id: vec![0xab; 16],
                        span_id: vec![0xcd; 8],
                        value: Some(exemplar::Value::AsDouble(50.0)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "payload.size",
            "By",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: T,
                    count: 4,
                    sum: Some(1031.0),
                    scale: 20,
                    positive: Some(Buckets {
                        offset: 0,
                        bucket_counts: vec![1],
                    }),
                    zero_count: 0,
                    ..Default::default()
                }],
                aggregation_temporality: cumulative,
            }),
        ),
        metric(
            "rpc.latency",
            "s",
            metric::Data::Summary(proto::Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: T,
                    count: 10,
                    sum: 2.5,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.99,
                        value: 0.7,
                    }],
                    ..Default::default()
                }],
            }),
        ),
    ])
}

/// Every series as `name{labels} value`, sorted.
fn render(batch: &Batch) -> Vec<String> {
    let mut out: Vec<String> = batch
        .series()
        .map(|s| {
            let labels: Vec<String> = s
                .labels()
                .iter()
                .filter(|(n, _)| *n != "__name__")
                .map(|(n, v)| format!("{n}={v:?}"))
                .collect();
            let value = match (s.samples().first(), s.histograms().first()) {
                (Some(x), _) => format!("{}", x.value),
                (None, Some(h)) => format!("histogram count={} sum={}", h.count.as_f64(), h.sum),
                _ => "none".into(),
            };
            format!("{}{{{}}} {value}", s.metric_name(), labels.join(","))
        })
        .collect();
    out.sort();
    out
}

fn translate_default(req: &ExportMetricsServiceRequest) -> Translation {
    translate(req, &TranslateOptions::default(), &DecodeLimits::default()).unwrap()
}

#[test]
fn every_kind_translates_per_prometheus_conventions() {
    let t = translate_default(&all_kinds());
    assert_eq!(t.rejected_points, 0, "{:?}", t.messages);
    assert_eq!(t.batches.len(), 1);
    assert_eq!(t.points(), 6);
    let batch = &t.batches[0].batch;
    let jl = r#"instance="pod-1",job="shop/checkout""#;
    let expected: Vec<String> = vec![
        format!("cpu_temperature_celsius{{{jl}}} 41.5"),
        format!("http_server_duration_milliseconds_bucket{{{jl},le=\"+Inf\"}} 5"),
        format!("http_server_duration_milliseconds_bucket{{{jl},le=\"10\"}} 1"),
        format!("http_server_duration_milliseconds_bucket{{{jl},le=\"100\"}} 3"),
        format!("http_server_duration_milliseconds_bucket{{{jl},le=\"1000\"}} 4"),
        format!("http_server_duration_milliseconds_count{{{jl}}} 5"),
        format!("http_server_duration_milliseconds_sum{{{jl}}} 5605"),
        format!("payload_size_bytes{{{jl}}} histogram count=4 sum=1031"),
        format!("queue_depth{{{jl}}} 7"),
        format!("rpc_latency_seconds_count{{{jl}}} 10"),
        format!("rpc_latency_seconds_sum{{{jl}}} 2.5"),
        format!("rpc_latency_seconds{{{jl},quantile=\"0.99\"}} 0.7"),
        format!("shop_orders_total{{{jl},method=\"card\"}} 7"),
        r#"target_info{deployment_environment="prod",instance="pod-1",job="shop/checkout"} 1"#
            .to_string(),
    ];
    let mut expected = expected;
    expected.sort();
    assert_eq!(render(batch), expected);
    for s in batch.series() {
        for x in s.samples() {
            assert_eq!(x.timestamp_ms, T_MS);
        }
    }
    // The exemplar sits on the bucket that holds its value (le="100").
    let with_exemplar: Vec<_> = batch
        .series()
        .filter(|s| s.exemplars().len() > 0)
        .map(|s| s.labels().get("le").unwrap_or(""))
        .collect();
    assert_eq!(with_exemplar, vec!["100"]);
    let e = batch
        .series()
        .flat_map(|s| s.exemplars().collect::<Vec<_>>())
        .next()
        .unwrap();
    assert_eq!(e.labels().get("trace_id"), Some("ab".repeat(16).as_str()));
    assert_eq!(e.labels().get("span_id"), Some("cd".repeat(8).as_str()));
    // Scale 20 is merged down to schema 8; OTLP bucket 0 lands in Prometheus bucket 1.
    let h = batch
        .series()
        .find(|s| s.metric_name() == "payload_size_bytes")
        .unwrap()
        .histograms()[0]
        .clone();
    assert_eq!(h.schema, 8);
    assert_eq!(h.positive_spans[0].offset, 1);
    assert_eq!(h.positive_deltas, vec![1]);
    let families: Vec<_> = batch
        .metadata()
        .map(|m| (m.family(), m.metric_type()))
        .collect();
    assert!(families.contains(&("shop_orders_total", crate::MetricType::Counter)));
    assert!(families.contains(&(
        "http_server_duration_milliseconds",
        crate::MetricType::Histogram
    )));
}

#[test]
fn protobuf_round_trip_decodes_and_json_matches_protobuf() {
    let req = all_kinds();
    let bytes = req.encode_to_vec();
    let decoded = decode(&bytes, Encoding::Protobuf, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded, req);

    let json = r#"{"resourceMetrics":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"checkout"}},
        {"key":"service.instance.id","value":{"stringValue":"pod-1"}},
        {"key":"host.cores","value":{"intValue":"8"}}]},
      "scopeMetrics":[{"scope":{"name":"lib"},"metrics":[
        {"name":"shop.orders","unit":"{order}","sum":{"aggregationTemporality":2,"isMonotonic":true,
          "dataPoints":[{"timeUnixNano":"1700000000123456789","asInt":"7",
            "attributes":[{"key":"method","value":{"stringValue":"card"}}],
            "exemplars":[{"timeUnixNano":"1700000000123456789","asDouble":1.5,
              "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}},
        {"name":"temp","gauge":{"dataPoints":[{"timeUnixNano":1700000000123456789,"asDouble":"NaN"}]}},
        {"name":"lat","histogram":{"aggregationTemporality":2,"dataPoints":[{"timeUnixNano":"1700000000123456789",
          "count":"3","sum":6,"bucketCounts":["1","2"],"explicitBounds":[1.5],"unknownField":{"x":1}}]}}
      ]}]}]}"#;
    let from_json = decode(json.as_bytes(), Encoding::Json, &DecodeLimits::default()).unwrap();
    let sm = &from_json.resource_metrics[0].scope_metrics[0];
    match &sm.metrics[0].data {
        Some(metric::Data::Sum(s)) => {
            assert!(s.is_monotonic);
            assert_eq!(
                s.data_points[0].value,
                Some(number_data_point::Value::AsInt(7))
            );
            assert_eq!(s.data_points[0].time_unix_nano, T);
            assert_eq!(
                s.data_points[0].exemplars[0].span_id,
                vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
            );
        }
        other => panic!("expected a sum, got {other:?}"),
    }
    // The original snake_case field names are accepted too.
    let snake = r#"{"resource_metrics":[{"scope_metrics":[{"metrics":[{"name":"g","gauge":{"data_points":[{"time_unix_nano":"1","as_double":2.5}]}}]}]}]}"#;
    let snake = decode(snake.as_bytes(), Encoding::Json, &DecodeLimits::default()).unwrap();
    match &snake.resource_metrics[0].scope_metrics[0].metrics[0].data {
        Some(metric::Data::Gauge(g)) => {
            assert_eq!(
                g.data_points[0].value,
                Some(number_data_point::Value::AsDouble(2.5))
            )
        }
        other => panic!("expected a gauge, got {other:?}"),
    }
    // Re-encoding the JSON-decoded request as protobuf gives the same translation.
    let via_proto = decode(
        &from_json.encode_to_vec(),
        Encoding::Protobuf,
        &DecodeLimits::default(),
    )
    .unwrap();
    let a = translate_default(&from_json);
    let b = translate_default(&via_proto);
    assert_eq!(render(&a.batches[0].batch), render(&b.batches[0].batch));
    let rendered = render(&a.batches[0].batch);
    assert!(
        rendered.contains(
            &r#"shop_orders_total{instance="pod-1",job="checkout",method="card"} 7"#.to_string()
        ),
        "{rendered:#?}"
    );
    assert!(
        rendered.contains(&r#"lat_bucket{instance="pod-1",job="checkout",le="1.5"} 1"#.to_string()),
        "{rendered:#?}"
    );
    assert!(
        rendered.contains(
            &r#"target_info{host_cores="8",instance="pod-1",job="checkout"} 1"#.to_string()
        ),
        "{rendered:#?}"
    );
}

#[test]
fn malformed_bodies_name_what_is_wrong() {
    let limits = DecodeLimits::default();
    let e = decode(b"\x0a\xff\xff", Encoding::Protobuf, &limits).unwrap_err();
    assert!(matches!(e, DecodeError::Protobuf(_)), "{e}");
    let e = decode(br#"{"resourceMetrics": 3}"#, Encoding::Json, &limits).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid JSON: invalid type: integer `3`"),
        "{e}"
    );
    let e = decode(br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","gauge":{"dataPoints":[{"timeUnixNano":"soon"}]}}]}]}]}"#, Encoding::Json, &limits).unwrap_err();
    assert!(
        e.to_string().contains("\"soon\" is not a valid uint64"),
        "{e}"
    );
    assert_eq!(
        decode(b"  ", Encoding::Json, &limits).unwrap_err(),
        DecodeError::EmptyBody
    );
    let e = decode(br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","sum":{"dataPoints":[{"asInt":"1.5"}]}}]}]}]}"#, Encoding::Json, &limits).unwrap_err();
    assert!(
        e.to_string().contains("\"1.5\" is not a valid int64"),
        "{e}"
    );
    let e = gunzip(b"not gzip", &limits).unwrap_err();
    assert!(matches!(e, DecodeError::Gzip(_)), "{e}");
}

#[test]
fn gzip_bodies_inflate_within_the_limit_and_bombs_are_refused() {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&all_kinds().encode_to_vec()).unwrap();
    let body = z.finish().unwrap();
    let plain = gunzip(&body, &DecodeLimits::default()).unwrap();
    assert_eq!(
        decode(&plain, Encoding::Protobuf, &DecodeLimits::default()).unwrap(),
        all_kinds()
    );

    // 64 MiB of zeros compress to about 64 KiB: refused once the output passes the limit.
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        z.write_all(&zeros).unwrap();
    }
    let bomb = z.finish().unwrap();
    assert!(bomb.len() < 1 << 17, "{}", bomb.len());
    let limits = DecodeLimits {
        max_decompressed_bytes: 4 << 20,
        ..DecodeLimits::default()
    };
    let e = gunzip(&bomb, &limits).unwrap_err();
    assert_eq!(e, DecodeError::InflatedTooLarge { limit: 4 << 20 });
    assert!(e.is_too_large());
}

#[test]
fn unrepresentable_points_are_refused_and_counted() {
    let delta = AggregationTemporality::Delta as i32;
    let req = request(vec![
        metric(
            "deltas",
            "",
            metric::Data::Sum(Sum {
                data_points: vec![number(1.0, vec![]), number(2.0, vec![])],
                aggregation_temporality: delta,
                is_monotonic: true,
            }),
        ),
        metric(
            "bad.buckets",
            "",
            metric::Data::Histogram(proto::Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: T,
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "no.value",
            "",
            metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: T,
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "good",
            "",
            metric::Data::Gauge(Gauge {
                data_points: vec![number(1.0, vec![])],
            }),
        ),
    ]);
    let t = translate_default(&req);
    assert_eq!(t.rejected_points, 4);
    assert_eq!(t.points(), 1);
    let msg = t.error_message();
    assert!(
        msg.contains("metric \"deltas\" has delta temporality"),
        "{msg}"
    );
    assert!(
        msg.contains("3 bucket counts for 1 explicit bounds"),
        "{msg}"
    );
    assert!(msg.contains("data point without a value"), "{msg}");
}

#[test]
fn no_recorded_value_is_a_stale_marker() {
    let req = request(vec![metric(
        "g",
        "",
        metric::Data::Gauge(Gauge {
            data_points: vec![NumberDataPoint {
                flags: 1,
                ..number(3.0, vec![])
            }],
        }),
    )]);
    let t = translate_default(&req);
    let batch = &t.batches[0].batch;
    let s = batch.series().find(|s| s.metric_name() == "g").unwrap();
    assert_eq!(s.samples()[0].value.to_bits(), 0x7ff0_0000_0000_0002);
}

#[test]
fn tenant_attribute_groups_resources_and_promotion_copies_attributes() {
    let mut req = all_kinds();
    let mut other = req.resource_metrics[0].clone();
    other.resource = Some(Resource {
        attributes: vec![kv("service.name", "billing"), kv("tenant.id", "acme")],
    });
    req.resource_metrics.push(other);
    let options = TranslateOptions {
        tenant_attribute: Some("tenant.id".into()),
        promote_resource_attributes: vec!["deployment.environment".into()],
        ..TranslateOptions::default()
    };
    let t = translate(&req, &options, &DecodeLimits::default()).unwrap();
    let tenants: Vec<_> = t.batches.iter().map(|b| b.tenant.as_deref()).collect();
    assert_eq!(tenants, vec![None, Some("acme")]);
    let first = render(&t.batches[0].batch);
    assert!(first.contains(&r#"cpu_temperature_celsius{deployment_environment="prod",instance="pod-1",job="shop/checkout"} 41.5"#.to_string()), "{first:#?}");
    let acme = render(&t.batches[1].batch);
    assert!(
        acme.contains(&r#"cpu_temperature_celsius{job="billing"} 41.5"#.to_string()),
        "{acme:#?}"
    );
    assert!(
        acme.contains(&r#"target_info{job="billing",tenant_id="acme"} 1"#.to_string()),
        "{acme:#?}"
    );
}

#[test]
fn colliding_attribute_names_join_values_in_key_order() {
    let req = request(vec![metric(
        "g",
        "",
        metric::Data::Gauge(Gauge {
            data_points: vec![number(1.0, vec![kv("a.b", "2"), kv("a_b", "1")])],
        }),
    )]);
    let t = translate_default(&req);
    let rendered = render(&t.batches[0].batch);
    assert!(rendered[0].contains(r#"a_b="2;1""#), "{rendered:?}");
}

#[test]
fn series_limits_apply_to_translated_output() {
    let limits = DecodeLimits {
        max_series: 3,
        ..DecodeLimits::default()
    };
    let e = translate(&all_kinds(), &TranslateOptions::default(), &limits).unwrap_err();
    assert_eq!(e, DecodeError::TooManySeries { limit: 3 });
}

/// Cases the fuzz target found (fuzz/README.md), kept as regressions.
#[test]
fn fuzz_findings_stay_fixed() {
    let limits = DecodeLimits::default();
    let json = |s: &str| decode(s.as_bytes(), Encoding::Json, &limits).unwrap();

    // Exemplar attribute keys are sanitised like label names, so the stored series
    // re-encodes and decodes as remote-write.
    let req = json(
        r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"c","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"timeUnixNano":"1000000","asDouble":1,"exemplars":[{"asDouble":1,"filteredAttributes":[{"key":"http.method","value":{"stringValue":"GET"}},{"key":"","value":{"stringValue":"x"}}]}]}]}}]}]}]}"#,
    );
    let t = translate_default(&req);
    let batch = &t.batches[0].batch;
    let e = batch.series().next().unwrap().exemplars().next().unwrap();
    assert_eq!(
        e.labels().iter().collect::<Vec<_>>(),
        vec![("http_method", "GET")]
    );
    let again = crate::remote_write::v1::decode(
        &crate::remote_write::v1::encode_compressed(batch),
        &limits,
    )
    .unwrap();
    assert_eq!(again.exemplar_count(), 1);

    // A scale past OTLP's 20 is refused instead of overflowing the bucket merge.
    let req = json(
        r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"h","exponentialHistogram":{"aggregationTemporality":2,"dataPoints":[{"timeUnixNano":"1000000","scale":72,"positive":{"bucketCounts":["1"]}}]}}]}]}]}"#,
    );
    let t = translate_default(&req);
    assert_eq!(t.rejected_points, 1);
    assert!(
        t.error_message().contains("scale 72 is above 20"),
        "{}",
        t.error_message()
    );

    // A resource attribute named `__name__` cannot rename (or duplicate) target_info's name;
    // a metric name with no usable character refuses its points, not the request.
    let req = json(
        r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}},{"key":"__name__","value":{"stringValue":"x"}}]},"scopeMetrics":[{"metrics":[{"name":"...","gauge":{"dataPoints":[{"timeUnixNano":"1000000","asDouble":1}]}},{"name":"ok","gauge":{"dataPoints":[{"timeUnixNano":"1000000","asDouble":1}]}}]}]}]}"#,
    );
    let t = translate_default(&req);
    assert_eq!((t.points(), t.rejected_points), (1, 1));
    let names: Vec<_> = t.batches[0]
        .batch
        .series()
        .map(|s| s.metric_name())
        .collect();
    assert_eq!(names, vec!["ok", "target_info"]);

    // max_series bounds the request, not each tenant group.
    let mut req = all_kinds();
    let mut other = req.resource_metrics[0].clone();
    other.resource = Some(Resource {
        attributes: vec![kv("tenant.id", "b")],
    });
    req.resource_metrics.push(other);
    let options = TranslateOptions {
        tenant_attribute: Some("tenant.id".into()),
        ..TranslateOptions::default()
    };
    let small = DecodeLimits {
        max_series: 20,
        ..limits
    };
    assert_eq!(
        translate(&req, &options, &small).unwrap_err(),
        DecodeError::TooManySeries { limit: 20 }
    );

    // Attribute lists longer than a series' label limit are refused before merging them.
    let many: Vec<KeyValue> = (0..200).map(|i| kv(&format!("k{i}"), "v")).collect();
    let req = request(vec![metric(
        "g",
        "",
        metric::Data::Gauge(Gauge {
            data_points: vec![number(1.0, many)],
        }),
    )]);
    assert_eq!(
        translate(&req, &TranslateOptions::default(), &limits).unwrap_err(),
        DecodeError::TooManyAttributes {
            count: 200,
            limit: 128
        }
    );

    // 2^63 is not an int64, and doubles decode exactly.
    let e = decode(
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","sum":{"dataPoints":[{"asInt":9223372036854775808.0}]}}]}]}]}"#,
        Encoding::Json,
        &limits,
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not a valid int64"), "{e}");
    let req = json(
        r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[{"timeUnixNano":"1","asDouble":0.30000000000000004}]}}]}]}]}"#,
    );
    match &req.resource_metrics[0].scope_metrics[0].metrics[0].data {
        Some(metric::Data::Gauge(g)) => assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.1 + 0.2))
        ),
        other => panic!("{other:?}"),
    }
}

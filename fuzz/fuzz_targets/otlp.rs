//! OTLP metrics bodies, as `/v1/metrics` and `MetricsService/Export` receive them. The first
//! byte picks the encoding (0: protobuf, 1: JSON, 2: gzip-compressed protobuf), the rest is
//! the body. Small limits so the fuzzer also reaches every limit check.
//!
//! Whatever decodes is translated three ways (default options; a tenant attribute with
//! promoted resource attributes and scope metadata, with both namings), and every translation
//! that succeeds must keep what the pipeline relies on: each series has a `__name__`, labels
//! sorted, unique, non-empty and within the limits, Prometheus label names under the default
//! naming, no more accepted plus refused points than the request carries, and a batch that
//! the Kafka sink's remote-write 1.0 encoder frames into a message its decoder reads back.
//!
//! The element pre-scan must count at least what the decoder builds: every request that
//! decodes holds no more data points, histograms, buckets, exemplars and attributes than the
//! limits allow, and every translated batch no more samples, histograms and exemplars, and no
//! more heap than `DecodeLimits::worst_case_decoded_bytes`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::otlp::{self, proto, Encoding, Naming, TranslateOptions, Translation};
use protocols::{DecodeLimits, METRIC_NAME_LABEL};

const LIMITS: DecodeLimits = DecodeLimits {
    max_compressed_bytes: 1 << 16,
    max_decompressed_bytes: 1 << 18,
    max_series: 64,
    max_labels_per_series: 16,
    max_label_name_bytes: 64,
    max_label_value_bytes: 256,
    max_samples: 256,
    max_histograms: 32,
    max_histogram_buckets: 512,
    max_exemplars: 32,
    max_attributes: 256,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let decoded = match selector % 3 {
        0 => otlp::decode(body, Encoding::Protobuf, &LIMITS),
        1 => otlp::decode(body, Encoding::Json, &LIMITS),
        _ => otlp::gunzip(body, &LIMITS)
            .and_then(|raw| otlp::decode(&raw, Encoding::Protobuf, &LIMITS)),
    };
    let Ok(request) = decoded else {
        return;
    };
    check_counts(&request);
    let points = data_points(&request);
    let tenant = |naming| TranslateOptions {
        naming,
        promote_resource_attributes: vec![
            "service.namespace".to_string(),
            "deployment.environment".to_string(),
            "tenant.id".to_string(),
        ],
        promote_scope_metadata: true,
        tenant_attribute: Some("tenant.id".to_string()),
    };
    for options in [
        TranslateOptions::default(),
        tenant(Naming::UnderscoreEscapingWithSuffixes),
        tenant(Naming::NoTranslation),
    ] {
        if let Ok(translation) = otlp::translate(&request, &options, &LIMITS) {
            check(&translation, points, &options);
        }
    }
});

/// What the pre-scan bounds, counted on the decoded tree.
fn check_counts(request: &proto::ExportMetricsServiceRequest) {
    use proto::metric::Data;
    fn attributes(kvs: &[proto::KeyValue]) -> usize {
        kvs.iter()
            .map(|kv| 1 + kv.value.as_ref().map_or(0, value_elements))
            .sum()
    }
    fn value_elements(v: &proto::AnyValue) -> usize {
        match &v.value {
            Some(proto::any_value::Value::ArrayValue(a)) => {
                a.values.iter().map(|x| 1 + value_elements(x)).sum()
            }
            Some(proto::any_value::Value::KvlistValue(l)) => attributes(&l.values),
            _ => 0,
        }
    }
    let (mut samples, mut histograms, mut buckets, mut exemplars, mut attrs) = (0, 0, 0, 0, 0);
    let mut exemplar_attrs = |e: &[proto::Exemplar]| {
        exemplars += e.len();
        e.iter()
            .map(|x| attributes(&x.filtered_attributes))
            .sum::<usize>()
    };
    assert!(request.resource_metrics.len() <= LIMITS.max_series);
    for rm in &request.resource_metrics {
        attrs += rm
            .resource
            .as_ref()
            .map_or(0, |r| attributes(&r.attributes));
        assert!(rm.scope_metrics.len() <= LIMITS.max_series);
        for sm in &rm.scope_metrics {
            attrs += sm.scope.as_ref().map_or(0, |s| attributes(&s.attributes));
            assert!(sm.metrics.len() <= LIMITS.max_series);
            for m in &sm.metrics {
                match &m.data {
                    Some(Data::Gauge(proto::Gauge { data_points }))
                    | Some(Data::Sum(proto::Sum { data_points, .. })) => {
                        for p in data_points {
                            samples += 1;
                            attrs += attributes(&p.attributes) + exemplar_attrs(&p.exemplars);
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            samples += 1;
                            buckets += p.bucket_counts.len() + p.explicit_bounds.len();
                            attrs += attributes(&p.attributes) + exemplar_attrs(&p.exemplars);
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            histograms += 1;
                            buckets += p.positive.as_ref().map_or(0, |b| b.bucket_counts.len())
                                + p.negative.as_ref().map_or(0, |b| b.bucket_counts.len());
                            attrs += attributes(&p.attributes) + exemplar_attrs(&p.exemplars);
                        }
                    }
                    Some(Data::Summary(s)) => {
                        for p in &s.data_points {
                            samples += 1;
                            buckets += p.quantile_values.len();
                            attrs += attributes(&p.attributes);
                        }
                    }
                    None => {}
                }
            }
        }
    }
    assert!(samples <= LIMITS.max_samples, "{samples} points decoded");
    assert!(
        histograms <= LIMITS.max_histograms,
        "{histograms} histograms"
    );
    assert!(buckets <= LIMITS.max_histogram_buckets, "{buckets} buckets");
    assert!(exemplars <= LIMITS.max_exemplars, "{exemplars} exemplars");
    assert!(attrs <= LIMITS.max_attributes, "{attrs} attributes");
}

/// Data points in the request, however translation treats them.
fn data_points(request: &proto::ExportMetricsServiceRequest) -> u64 {
    use proto::metric::Data;
    let mut n = 0;
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                n += match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                } as u64;
            }
        }
    }
    n
}

fn check(t: &Translation, points: u64, options: &TranslateOptions) {
    assert!(
        t.points() + t.rejected_points <= points,
        "{} accepted + {} refused points out of {points}",
        t.points(),
        t.rejected_points
    );
    assert!(t.rejected_points == 0 || !t.messages.is_empty());
    if options.tenant_attribute.is_none() {
        assert!(t.batches.len() <= 1 && t.batches.iter().all(|b| b.tenant.is_none()));
    }
    for (i, b) in t.batches.iter().enumerate() {
        assert!(
            t.batches[..i].iter().all(|o| o.tenant != b.tenant),
            "tenant {:?} has two batches",
            b.tenant
        );
        let batch = &b.batch;
        assert!(batch.series_count() <= LIMITS.max_series);
        assert!(batch.sample_count() <= LIMITS.max_samples);
        assert!(batch.histogram_count() <= LIMITS.max_histograms);
        assert!(batch.exemplar_count() <= LIMITS.max_exemplars);
        assert!(batch.heap_bytes() <= LIMITS.worst_case_decoded_bytes());
        // Every accepted point became at least one series.
        assert!(batch.series_count() as u64 >= b.points);
        for s in batch.series() {
            assert!(!s.samples().is_empty() || !s.histograms().is_empty());
            let labels = s.labels();
            assert!(labels.len() <= LIMITS.max_labels_per_series);
            let name = labels.get(METRIC_NAME_LABEL);
            assert!(name.is_some_and(|n| !n.is_empty()), "no __name__");
            let mut previous: Option<&str> = None;
            for (n, v) in labels.iter() {
                assert!(
                    previous.is_none_or(|p| p < n),
                    "labels not sorted and unique: {previous:?} then {n:?}"
                );
                previous = Some(n);
                assert!(!n.is_empty() && !v.is_empty(), "empty label {n:?}={v:?}");
                assert!(n.len() <= LIMITS.max_label_name_bytes);
                assert!(v.len() <= LIMITS.max_label_value_bytes);
                if options.naming == Naming::UnderscoreEscapingWithSuffixes {
                    assert!(prometheus_name(n, false), "label name {n:?}");
                }
            }
            if options.naming == Naming::UnderscoreEscapingWithSuffixes {
                let name = name.unwrap_or_default();
                assert!(prometheus_name(name, true), "metric name {name:?}");
            }
        }
        if options.naming == Naming::UnderscoreEscapingWithSuffixes {
            // What the Kafka sink writes, a remote-write 1.0 consumer must read back.
            let body = protocols::remote_write::v1::encode_compressed(batch);
            let back = protocols::remote_write::v1::decode(&body, &DecodeLimits::new_default())
                .unwrap_or_else(|e| {
                    panic!("a translated batch re-encodes to a valid request: {e}")
                });
            assert_eq!(back.series_count(), batch.series_count());
            assert_eq!(back.sample_count(), batch.sample_count());
            assert_eq!(back.histogram_count(), batch.histogram_count());
        }
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, with `:` too for metric names (Prometheus' data model).
fn prometheus_name(s: &str, metric: bool) -> bool {
    let ok = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || (metric && c == b':');
    s.bytes().next().is_some_and(|c| !c.is_ascii_digit()) && s.bytes().all(ok)
}

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

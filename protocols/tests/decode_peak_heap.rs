//! The heap a decode really takes at its peak, measured by a counting allocator, against
//! `DecodeLimits::worst_case_decoded_bytes`: for the bodies that cost the most per wire byte
//! (the 2-byte empty native histogram of the attack that motivated the element limits, empty
//! OTLP points in protobuf and JSON) at the default limits, where they are refused early, and
//! at small limits, where they decode.
//!
//! Counted per thread, so the tests of this binary may run in parallel.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use prost::Message;
use protocols::otlp::{self, proto, Encoding, TranslateOptions};
use protocols::remote_write::v1::{self, reference as pb1};
use protocols::{snappy, DecodeError, DecodeLimits, Element};

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded to `System` with the same arguments; the bookkeeping
// touches only `const`-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrink(n: usize) {
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes `f` held above what was held when it started, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (PEAK.with(Cell::get) - base, out)
}

fn empty_histograms_body(n: usize) -> Vec<u8> {
    let req = pb1::WriteRequest {
        timeseries: vec![pb1::TimeSeries {
            labels: vec![pb1::Label {
                name: "__name__".into(),
                value: "h".into(),
            }],
            histograms: vec![pb1::Histogram::default(); n],
            ..pb1::TimeSeries::default()
        }],
        metadata: vec![],
    };
    snappy::compress(&req.encode_to_vec())
}

/// The attack: 2M empty native histograms, a few hundred KB compressed, used to take
/// ~680 MiB. Now refused at the histogram limit, holding at most what the limits allow.
#[test]
fn two_million_empty_histograms_are_refused_within_the_default_worst_case() {
    let limits = DecodeLimits::default();
    let body = empty_histograms_body(2_000_000);
    let (peak, result) = peak_of(|| v1::decode(&body, &limits).map(|b| b.histogram_count()));
    assert_eq!(
        result.unwrap_err(),
        DecodeError::TooManyElements {
            element: Element::Histograms,
            limit: limits.max_histograms
        }
    );
    let worst = limits.worst_case_decoded_bytes();
    eprintln!("2M empty histograms, default limits: peak {peak} bytes, worst case {worst}");
    assert!(peak <= worst, "peak {peak} over the worst case {worst}");
    // The decompressed body (4 MB) and 100k histograms, not 2M of them.
    let histograms = limits.max_histograms * std::mem::size_of::<protocols::Histogram>();
    assert!(
        peak <= 4_100_000 + 2 * histograms,
        "peak {peak} for a body refused at {} histograms",
        limits.max_histograms
    );
}

fn empty_points(n: usize) -> Vec<u8> {
    let req = proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            scope_metrics: vec![proto::ScopeMetrics {
                metrics: vec![proto::Metric {
                    name: "g".into(),
                    data: Some(proto::metric::Data::Gauge(proto::Gauge {
                        data_points: vec![proto::NumberDataPoint::default(); n],
                    })),
                    ..proto::Metric::default()
                }],
                ..proto::ScopeMetrics::default()
            }],
            ..proto::ResourceMetrics::default()
        }],
    };
    req.encode_to_vec()
}

/// 2 bytes of protobuf and `{}` of JSON per data point: refused by the pre-scan before the
/// decoder has built anything.
#[test]
fn otlp_bodies_of_empty_points_are_refused_before_decoding() {
    let limits = DecodeLimits::default();
    let n = limits.max_samples + 1;
    let protobuf = empty_points(n);
    let json = format!(
        r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"g","gauge":{{"dataPoints":[{}]}}}}]}}]}}]}}"#,
        vec!["{}"; n].join(",")
    );
    for (body, encoding) in [
        (protobuf.as_slice(), Encoding::Protobuf),
        (json.as_bytes(), Encoding::Json),
    ] {
        let (peak, result) = peak_of(|| otlp::decode(body, encoding, &limits).map(|_| ()));
        assert_eq!(
            result.unwrap_err(),
            DecodeError::TooManyElements {
                element: Element::Samples,
                limit: limits.max_samples
            }
        );
        eprintln!("{encoding:?} body of {n} empty points: peak {peak} bytes");
        assert!(
            peak < 64 << 10,
            "{encoding:?}: the pre-scan held {peak} bytes"
        );
    }
}

/// Small limits, every body at them: decoding and translating stays within the worst case.
#[test]
fn decodes_at_small_limits_peak_within_the_worst_case() {
    let limits = DecodeLimits {
        max_compressed_bytes: 1 << 20,
        max_decompressed_bytes: 1 << 20,
        max_series: 2000,
        max_labels_per_series: 16,
        max_label_name_bytes: 64,
        max_label_value_bytes: 256,
        max_samples: 50_000,
        max_histograms: 20_000,
        max_histogram_buckets: 50_000,
        max_exemplars: 10_000,
        max_attributes: 20_000,
    };
    let worst = limits.worst_case_decoded_bytes();

    let body = empty_histograms_body(limits.max_histograms);
    let (peak, batch) = peak_of(|| v1::decode(&body, &limits).map(|b| b.heap_bytes()));
    let held = batch.unwrap();
    eprintln!("1.0 at small limits: held {held}, peak {peak}, worst case {worst}");
    assert!(
        held <= peak && peak <= worst,
        "1.0: held {held}, peak {peak}, worst {worst}"
    );

    let body = empty_points(limits.max_samples);
    let json = format!(
        r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"g","gauge":{{"dataPoints":[{}]}}}}]}}]}}]}}"#,
        vec!["{}"; limits.max_samples].join(",")
    );
    for (body, encoding) in [
        (body.as_slice(), Encoding::Protobuf),
        (json.as_bytes(), Encoding::Json),
    ] {
        let (peak, translated) = peak_of(|| {
            let req = otlp::decode(body, encoding, &limits)?;
            // Points without a time are refused one by one: nothing is built, but the tree
            // was decoded in full.
            otlp::translate(&req, &TranslateOptions::default(), &limits).map(|t| t.rejected_points)
        });
        assert_eq!(translated.unwrap(), limits.max_samples as u64);
        eprintln!("{encoding:?} at small limits: peak {peak}, worst case {worst}");
        assert!(peak <= worst, "{encoding:?}: peak {peak}, worst {worst}");
    }
}

//! Uncompressed remote-write 2.0 `Request` messages (the snappy layer is the same as 1.0's
//! and fuzzed there). Small limits so the fuzzer reaches every limit check; whatever decodes
//! holds no more elements than they allow and no more heap than their worst case. Whatever decodes
//! must encode as 1.0 and as 2.0 again and decode back to the same series, labels, samples,
//! histograms and exemplars.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocols::remote_write::{v1, v2};
use protocols::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
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
    let Ok(batch) = v2::decode_message(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    assert!(batch.sample_count() <= limits.max_samples);
    assert!(batch.histogram_count() <= limits.max_histograms);
    assert!(batch.exemplar_count() <= limits.max_exemplars);
    let buckets: usize = batch
        .series()
        .flat_map(|s| s.histograms().iter())
        .map(|h| {
            h.positive_spans.len()
                + h.negative_spans.len()
                + h.positive_deltas.len()
                + h.negative_deltas.len()
                + h.positive_counts.len()
                + h.negative_counts.len()
                + h.custom_values.len()
        })
        .sum();
    assert!(buckets <= limits.max_histogram_buckets);
    assert!(batch.heap_bytes() <= limits.worst_case_remote_write_bytes());
    let labels = |b: &protocols::Batch| -> Vec<Vec<(String, String)>> {
        b.series()
            .map(|s| {
                s.labels()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    };
    let want = labels(&batch);
    let as_v1 = v1::decode(&v1::encode_compressed(&batch), &DecodeLimits::new_default())
        .expect("a decoded 2.0 batch encodes to a valid 1.0 request");
    assert_eq!(labels(&as_v1), want);
    assert_eq!(as_v1.sample_count(), batch.sample_count());
    assert_eq!(as_v1.histogram_count(), batch.histogram_count());
    assert_eq!(as_v1.exemplar_count(), batch.exemplar_count());

    let mut w = v2::V2Writer::new();
    for s in batch.series() {
        w.add_series(&batch, &s, s.labels().iter());
    }
    let mut out = Vec::new();
    w.finish(&mut out);
    let again = v2::decode_message(Bytes::from(out), &DecodeLimits::new_default())
        .expect("a decoded 2.0 batch encodes to a valid 2.0 request");
    // The writer splits a series holding both floats and histograms in two.
    assert_eq!(again.sample_count(), batch.sample_count());
    assert_eq!(again.histogram_count(), batch.histogram_count());
    for l in labels(&again) {
        assert!(want.contains(&l), "a series' labels changed: {l:?}");
    }
});

//! Snappy-compressed remote-write 1.0 bodies, as a client sends them. Small limits so the
//! fuzzer also reaches every limit check, not only the parser; whatever decodes holds no
//! more elements than the limits and no more heap than their worst case.
#![no_main]

use libfuzzer_sys::fuzz_target;
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
    if let Ok(batch) = protocols::remote_write::v1::decode(data, &limits) {
        assert!(batch.sample_count() <= limits.max_samples);
        assert!(batch.histogram_count() <= limits.max_histograms);
        assert!(batch.exemplar_count() <= limits.max_exemplars);
        assert!(batch.heap_bytes() <= limits.worst_case_remote_write_bytes());
        // Whatever decodes must re-encode and decode to the same series count.
        let again = protocols::remote_write::v1::encode_compressed(&batch);
        let back = protocols::remote_write::v1::decode(&again, &DecodeLimits::new_default())
            .expect("a decoded batch re-encodes to a valid request");
        assert_eq!(back.series_count(), batch.series_count());
    }
});

//! Uncompressed `WriteRequest` protobuf: skips snappy so every input exercises the parser.
//!
//! For every request that decodes, checks what the sinks rely on: labels sorted and unique
//! with a `__name__`; the identity hash over the client's bytes equals the hash of the label
//! set (so a series keeps its partition however it was encoded); and splicing the gateway's
//! tags into the client's bytes yields exactly the series with the merged labels.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocols::remote_write::v1::{self, ExtraLabels};
use protocols::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::new_default();
    let Ok(batch) = v1::decode_message(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    let tags = [("region", "r"), ("tenant", "t")];
    let extra = ExtraLabels::new(tags);
    let mut scratch = Vec::new();
    for s in batch.series() {
        let labels: Vec<(&str, &str)> = s.labels().iter().collect();
        assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "{labels:?}");
        assert!(labels.iter().any(|(n, _)| *n == "__name__"));
        assert_eq!(
            s.labels_hash(&mut scratch),
            protocols::label_set_hash(labels.iter().copied(), &mut Vec::new())
        );

        let mut out = Vec::new();
        let collides = labels.iter().any(|(n, _)| *n == "region" || *n == "tenant");
        let spliced = extra.put_spliced(&s, &mut out);
        assert_eq!(spliced, s.spliceable_bytes().is_some() && !collides);
        if !spliced {
            assert!(out.is_empty());
            continue;
        }
        let again = v1::decode_message(Bytes::from(out), &limits).expect("spliced bytes decode");
        let t = again.series().next().expect("one series");
        let mut merged: Vec<(&str, &str)> = labels.iter().copied().chain(tags).collect();
        merged.sort();
        assert_eq!(t.labels().iter().collect::<Vec<_>>(), merged);
        let bits = |v: &[protocols::Sample]| -> Vec<(u64, i64)> {
            v.iter()
                .map(|x| (x.value.to_bits(), x.timestamp_ms))
                .collect()
        };
        assert_eq!(bits(t.samples()), bits(s.samples()));
        // Debug, not ==: a NaN sum is equal to itself only in print.
        assert_eq!(
            format!("{:?}", t.histograms()),
            format!("{:?}", s.histograms())
        );
        assert_eq!(t.exemplars().len(), s.exemplars().len());
    }
});

//! Round-trip properties of the remote-write 1.0 codec, with `prost` as the reference
//! implementation of the wire format.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use protocols::remote_write::v1::{self, reference as pb};
use protocols::{snappy, DecodeLimits};

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}"
}

fn label_value() -> impl Strategy<Value = String> {
    // Non-empty (empty values are dropped by design), any Unicode.
    "\\PC{1,16}"
}

/// A label set as a valid sender produces it: `__name__` present, names unique, sorted.
fn labels() -> impl Strategy<Value = Vec<pb::Label>> {
    (
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
        prop::collection::btree_map(label_name(), label_value(), 0..8),
    )
        .prop_map(|(metric, mut rest)| {
            rest.insert("__name__".to_string(), metric);
            // BTreeMap iterates in byte order of the keys, which is the spec's sort order.
            rest.into_iter()
                .map(|(name, value)| pb::Label { name, value })
                .collect()
        })
}

fn exemplar_labels() -> impl Strategy<Value = Vec<pb::Label>> {
    prop::collection::btree_map(label_name(), label_value(), 0..3).prop_map(|m| {
        m.into_iter()
            .map(|(name, value)| pb::Label { name, value })
            .collect()
    })
}

fn sample() -> impl Strategy<Value = pb::Sample> {
    (any::<f64>(), any::<i64>()).prop_map(|(value, timestamp)| pb::Sample { value, timestamp })
}

fn span() -> impl Strategy<Value = pb::BucketSpan> {
    (any::<i32>(), any::<u32>()).prop_map(|(offset, length)| pb::BucketSpan { offset, length })
}

fn histogram() -> impl Strategy<Value = pb::Histogram> {
    (
        prop_oneof![
            any::<u64>().prop_map(pb::histogram::Count::CountInt),
            any::<f64>().prop_map(pb::histogram::Count::CountFloat)
        ],
        prop_oneof![
            any::<u64>().prop_map(pb::histogram::ZeroCount::ZeroCountInt),
            any::<f64>().prop_map(pb::histogram::ZeroCount::ZeroCountFloat)
        ],
        (
            any::<f64>(),
            -53i32..=8,
            any::<f64>(),
            0i32..=3,
            any::<i64>(),
        ),
        (
            prop::collection::vec(span(), 0..3),
            prop::collection::vec(any::<i64>(), 0..5),
            prop::collection::vec(any::<f64>(), 0..5),
        ),
        (
            prop::collection::vec(span(), 0..3),
            prop::collection::vec(any::<i64>(), 0..5),
            prop::collection::vec(any::<f64>(), 0..5),
            prop::collection::vec(any::<f64>(), 0..4),
        ),
    )
        .prop_map(
            |(count, zero, (sum, schema, zt, reset, ts), neg, pos)| pb::Histogram {
                count: Some(count),
                sum,
                schema,
                zero_threshold: zt,
                zero_count: Some(zero),
                negative_spans: neg.0,
                negative_deltas: neg.1,
                negative_counts: neg.2,
                positive_spans: pos.0,
                positive_deltas: pos.1,
                positive_counts: pos.2,
                reset_hint: reset,
                timestamp: ts,
                custom_values: pos.3,
            },
        )
}

fn series() -> impl Strategy<Value = pb::TimeSeries> {
    (
        labels(),
        prop::collection::vec(sample(), 0..4),
        prop::collection::vec(
            (exemplar_labels(), any::<f64>(), any::<i64>()).prop_map(
                |(labels, value, timestamp)| pb::Exemplar {
                    labels,
                    value,
                    timestamp,
                },
            ),
            0..2,
        ),
        prop::collection::vec(histogram(), 0..2),
    )
        .prop_map(|(labels, samples, exemplars, histograms)| pb::TimeSeries {
            labels,
            samples,
            exemplars,
            histograms,
        })
}

fn metadata() -> impl Strategy<Value = pb::MetricMetadata> {
    (0i32..=7, "[a-z_]{1,10}", "\\PC{0,20}", "[a-z]{0,5}").prop_map(|(t, f, h, u)| {
        pb::MetricMetadata {
            r#type: t,
            metric_family_name: f,
            help: h,
            unit: u,
        }
    })
}

fn write_request() -> impl Strategy<Value = pb::WriteRequest> {
    (
        prop::collection::vec(series(), 0..6),
        prop::collection::vec(metadata(), 0..3),
    )
        .prop_map(|(timeseries, metadata)| pb::WriteRequest {
            timeseries,
            metadata,
        })
}

/// Bitwise float comparison, so NaN (including Prometheus' stale marker) compares equal to
/// itself and a round trip has to keep the exact bits.
fn same(a: &pb::WriteRequest, b: &pb::WriteRequest) -> bool {
    a.encode_to_vec() == b.encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_matches_prost_reference(req in write_request()) {
        let body = snappy::compress(&req.encode_to_vec());
        let batch = v1::decode(&body, &DecodeLimits::default()).expect("valid request decodes");
        prop_assert_eq!(batch.series_count(), req.timeseries.len());
        let back = pb::WriteRequest::from(&batch);
        prop_assert!(same(&back, &req), "decoded {:?}\nsent {:?}", back, req);
    }

    #[test]
    fn encode_then_decode_is_identity(req in write_request()) {
        let batch = v1::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default()).unwrap();
        for splice in [true, false] {
            let mut out = Vec::new();
            if splice { v1::encode(&batch, &mut out) } else { v1::reencode(&batch, &mut out) }
            let again = pb::WriteRequest::decode(out.as_slice()).expect("prost decodes our encoding");
            prop_assert!(same(&again, &req), "splice={} got {:?}", splice, again);
        }
    }

    #[test]
    fn compressed_round_trip(req in write_request()) {
        let batch = v1::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default()).unwrap();
        let body = v1::encode_compressed(&batch);
        let again = v1::decode(&body, &DecodeLimits::default()).unwrap();
        prop_assert!(same(&pb::WriteRequest::from(&again), &req));
    }

    /// Whatever the bytes, decoding returns (never panics, never loops).
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = v1::decode_message(Bytes::from(data.clone()), &DecodeLimits::default());
        let _ = v1::decode(&data, &DecodeLimits::default());
    }

    /// Mutating one byte of a valid message yields Ok or a typed error, never a panic.
    #[test]
    fn corrupted_valid_messages_never_panic(req in write_request(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut data = req.encode_to_vec();
        if !data.is_empty() {
            let i = pos.index(data.len());
            data[i] = byte;
        }
        let _ = v1::decode_message(Bytes::from(data), &DecodeLimits::default());
    }
}

#[test]
fn unsorted_sender_is_sorted_and_reencoded_canonically() {
    let req = pb::WriteRequest {
        timeseries: vec![pb::TimeSeries {
            labels: vec![
                pb::Label {
                    name: "job".into(),
                    value: "a".into(),
                },
                pb::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
            ],
            samples: vec![pb::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    let batch =
        v1::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default()).unwrap();
    let mut out = Vec::new();
    v1::encode(&batch, &mut out);
    let again = pb::WriteRequest::decode(out.as_slice()).unwrap();
    let names: Vec<_> = again.timeseries[0]
        .labels
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, ["__name__", "job"]);
}

/// A series as any sender may encode it: labels sometimes unsorted, sometimes with a value too
/// long for the one-byte-length canonical form.
fn any_sender_series() -> impl Strategy<Value = pb::TimeSeries> {
    (series(), any::<bool>(), any::<bool>()).prop_map(|(mut s, reverse, long)| {
        if long {
            s.labels.push(pb::Label {
                name: "zz_long".into(),
                value: "v".repeat(200),
            });
        }
        if reverse {
            s.labels.reverse();
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Splicing the gateway's labels into a client's bytes gives exactly what re-encoding the
    /// merged label set gives, and is refused only where it must be.
    #[test]
    fn spliced_series_equal_reencoded_ones(
        ts in prop::collection::vec(any_sender_series(), 1..4),
        extra_names in prop::sample::subsequence(vec!["a_first", "job", "region", "tenant", "zzz_last"], 0..5),
    ) {
        let req = pb::WriteRequest { timeseries: ts, metadata: vec![] };
        let batch = v1::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default()).unwrap();
        let extra: Vec<(&str, &str)> = extra_names.iter().map(|n| (*n, "gw")).collect();
        let splicer = v1::ExtraLabels::new(extra.iter().copied());
        for s in batch.series() {
            let collides = s.labels().iter().any(|(n, _)| extra_names.contains(&n));
            let mut spliced = Vec::new();
            let ok = splicer.put_spliced(&s, &mut spliced);
            prop_assert_eq!(ok, s.spliceable_bytes().is_some() && !collides);
            if !ok {
                prop_assert!(spliced.is_empty(), "a refused splice writes nothing");
                continue;
            }
            let mut merged: Vec<(&str, &str)> = s.labels().iter().chain(extra.iter().copied()).collect();
            merged.sort();
            let mut reencoded = Vec::new();
            v1::encode_series_with_labels(&s, merged.iter().copied(), &mut reencoded);
            // Both are `WriteRequest`s of one series; compare them as prost normalises them
            // (the client's bytes may omit default fields our encoder writes).
            let spliced = pb::WriteRequest::decode(spliced.as_slice()).expect("valid protobuf");
            let reencoded = pb::WriteRequest::decode(reencoded.as_slice()).unwrap();
            prop_assert!(same(&spliced, &reencoded), "{:?}\n{:?}", spliced, reencoded);
        }
    }

    /// The identity hash does not depend on how the sender encoded the labels.
    #[test]
    fn labels_hash_is_the_label_set_hash(s in any_sender_series()) {
        let req = pb::WriteRequest { timeseries: vec![s.clone()], metadata: vec![] };
        let batch = v1::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default()).unwrap();
        let series = batch.series().next().unwrap();
        let mut sorted: Vec<(&str, &str)> = s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        sorted.sort();
        let mut scratch = Vec::new();
        prop_assert_eq!(
            series.labels_hash(&mut scratch),
            protocols::label_set_hash(sorted.iter().copied(), &mut Vec::new())
        );
    }
}

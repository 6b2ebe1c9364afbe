//! Remote-write 2.0 encoding: a batch decoded from any 1.0 request, encoded as 2.0 and decoded
//! again with the reference `prost` types and with the gateway's own decoder, resolves to the
//! same series, samples, histograms,
//! exemplars and metadata; the symbols table starts with "" and holds each string once.

use std::collections::HashSet;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use protocols::remote_write::v1::reference as v1;
use protocols::remote_write::v2::{reference as v2, V2Writer};
use protocols::DecodeLimits;

fn labels() -> impl Strategy<Value = Vec<v1::Label>> {
    prop::collection::btree_map("[a-z][a-z_]{0,6}", "[a-zA-Z0-9 ./é-]{1,12}", 0..5).prop_map(|m| {
        let mut v = vec![v1::Label {
            name: "__name__".into(),
            value: "m_total".into(),
        }];
        v.extend(m.into_iter().map(|(name, value)| v1::Label { name, value }));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    })
}

fn histogram() -> impl Strategy<Value = v1::Histogram> {
    (
        0u64..1000,
        -3i32..4,
        prop::collection::vec(-5i64..5, 1..4),
        1i64..1_000_000,
    )
        .prop_map(|(count, schema, deltas, ts)| v1::Histogram {
            count: Some(v1::histogram::Count::CountInt(count)),
            sum: count as f64 * 1.5,
            schema,
            zero_threshold: 1e-128,
            zero_count: Some(v1::histogram::ZeroCount::ZeroCountInt(1)),
            positive_spans: vec![v1::BucketSpan {
                offset: 0,
                length: deltas.len() as u32,
            }],
            positive_deltas: deltas,
            timestamp: ts,
            ..Default::default()
        })
}

fn series() -> impl Strategy<Value = v1::TimeSeries> {
    (
        labels(),
        prop::collection::vec((any::<f64>(), 0i64..1 << 40), 0..3),
        prop::collection::vec(histogram(), 0..2),
        prop::collection::vec((0.0f64..10.0, 1i64..1 << 40, "[a-f0-9]{1,8}"), 0..2),
    )
        .prop_filter("a series carries samples", |(_, s, h, _)| {
            !s.is_empty() || !h.is_empty()
        })
        .prop_map(|(labels, samples, histograms, exemplars)| v1::TimeSeries {
            labels,
            samples: samples
                .into_iter()
                .map(|(value, timestamp)| v1::Sample { value, timestamp })
                .collect(),
            histograms,
            exemplars: exemplars
                .into_iter()
                .map(|(value, timestamp, trace)| v1::Exemplar {
                    labels: vec![v1::Label {
                        name: "trace_id".into(),
                        value: trace,
                    }],
                    value,
                    timestamp,
                })
                .collect(),
        })
}

/// Equal values, NaNs by bit pattern (stale markers). -0.0 equals 0.0: proto3 omits a
/// zero double, so the 1.0 reference encoder already turned -0.0 into 0.0 on the wire.
fn same_f64(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        a.to_bits() == b.to_bits()
    } else {
        a == b
    }
}

proptest! {
    #[test]
    fn v2_encoding_resolves_to_the_same_data(
        ts in prop::collection::vec(series(), 1..6),
        with_metadata in any::<bool>(),
    ) {
        let req = v1::WriteRequest {
            timeseries: ts,
            metadata: if with_metadata {
                vec![v1::MetricMetadata {
                    r#type: 1,
                    metric_family_name: "m".into(),
                    help: "help text".into(),
                    unit: "seconds".into(),
                }]
            } else {
                vec![]
            },
        };
        let batch = protocols::remote_write::v1::decode_message(
            Bytes::from(req.encode_to_vec()),
            &DecodeLimits::default(),
        )
        .unwrap();
        let mut w = V2Writer::new();
        for s in batch.series() {
            w.add_series(&batch, &s, s.labels().iter());
        }
        let mut out = Vec::new();
        w.finish(&mut out);
        let got = v2::Request::decode(&out[..]).unwrap();

        // Round trip through the gateway's own 2.0 decoder: the same series, in order.
        let ours = protocols::remote_write::v2::decode_message(
            Bytes::from(out.clone()),
            &DecodeLimits::default(),
        )
        .unwrap();
        prop_assert_eq!(ours.series_count(), got.timeseries.len());
        for (i, s) in ours.series().enumerate() {
            let labels: Vec<(&str, &str)> = s.labels().iter().collect();
            prop_assert_eq!(labels, got.labels(i).unwrap());
            prop_assert_eq!(s.samples().len(), got.timeseries[i].samples.len());
            prop_assert_eq!(s.histograms().len(), got.timeseries[i].histograms.len());
            prop_assert_eq!(s.exemplars().len(), got.timeseries[i].exemplars.len());
        }
        prop_assert_eq!(ours.metadata_count(), got.timeseries.iter().filter(|t| t.metadata.is_some()).count());

        prop_assert_eq!(got.symbols[0].as_str(), "");
        let unique: HashSet<&String> = got.symbols.iter().collect();
        prop_assert_eq!(unique.len(), got.symbols.len());

        // Each 1.0 series is one 2.0 series, or two when it has both kinds of samples.
        let mut i = 0;
        for s in &req.timeseries {
            let want: Vec<(&str, &str)> =
                s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
            let parts = if !s.samples.is_empty() && !s.histograms.is_empty() { 2 } else { 1 };
            for part in 0..parts {
                prop_assert_eq!(got.labels(i).unwrap(), want.clone());
                let t = &got.timeseries[i];
                let floats = part == 0 && !s.samples.is_empty();
                if floats {
                    prop_assert_eq!(t.samples.len(), s.samples.len());
                    for (a, b) in t.samples.iter().zip(&s.samples) {
                        prop_assert!(same_f64(a.value, b.value) && a.timestamp == b.timestamp);
                    }
                    prop_assert!(t.histograms.is_empty());
                } else {
                    prop_assert_eq!(&t.histograms, &s.histograms);
                    prop_assert!(t.samples.is_empty());
                }
                if part == 0 {
                    prop_assert_eq!(t.exemplars.len(), s.exemplars.len());
                    for (a, b) in t.exemplars.iter().zip(&s.exemplars) {
                        prop_assert_eq!(a.labels_refs.len(), 2);
                        prop_assert_eq!(&got.symbols[a.labels_refs[1] as usize], &b.labels[0].value);
                        prop_assert!(same_f64(a.value, b.value) && a.timestamp == b.timestamp);
                    }
                } else {
                    prop_assert!(t.exemplars.is_empty());
                }
                match &t.metadata {
                    Some(m) => {
                        prop_assert!(with_metadata);
                        prop_assert_eq!(m.r#type, 1);
                        prop_assert_eq!(got.symbols[m.help_ref as usize].as_str(), "help text");
                        prop_assert_eq!(got.symbols[m.unit_ref as usize].as_str(), "seconds");
                    }
                    None => prop_assert!(!with_metadata),
                }
                i += 1;
            }
        }
        prop_assert_eq!(i, got.timeseries.len());
    }
}

#[test]
fn out_of_range_references_are_named() {
    let req = v2::Request {
        symbols: vec![String::new(), "__name__".into()],
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![1, 7],
            ..Default::default()
        }],
    };
    assert_eq!(
        req.labels(0).unwrap_err().to_string(),
        "series 0: symbol reference 7 is out of range (table has 2)"
    );
}

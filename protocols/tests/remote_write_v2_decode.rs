//! Remote-write 2.0 decoding, against the reference `prost` types:
//! - any request the reference resolves (symbols table starting with "", references in range,
//!   pairs, valid names, a `__name__`) decodes to the same labels, samples, histograms,
//!   exemplars and metadata; anything else is an error that names what is wrong, never a panic;
//! - symbol-table edge cases: symbols after the series on the wire, an empty table, a first
//!   symbol that is not empty, references out of range and over 32 bits, odd pairs, packed and
//!   unpacked references, empty values, unsorted and duplicate names.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use protocols::remote_write::v2::{self, reference as pb};
use protocols::{DecodeError, DecodeLimits};

fn decode(req: &pb::Request) -> Result<protocols::Batch, DecodeError> {
    v2::decode_message(Bytes::from(req.encode_to_vec()), &DecodeLimits::default())
}

/// How a generated request is damaged, if at all (most are not).
#[derive(Debug, Clone, Copy)]
enum Damage {
    None,
    FirstSymbolNotEmpty,
    OutOfRange,
    OddRefs,
    NoMetricName,
    InvalidName,
    DuplicateName,
    ExemplarOutOfRange,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        1 => Just(Damage::FirstSymbolNotEmpty),
        1 => Just(Damage::OutOfRange),
        1 => Just(Damage::OddRefs),
        1 => Just(Damage::NoMetricName),
        1 => Just(Damage::InvalidName),
        1 => Just(Damage::DuplicateName),
        1 => Just(Damage::ExemplarOutOfRange),
    ]
}

/// A symbols table ("", "__name__", names, values, "9bad") and series referring into it:
/// each series has `__name__` and some of the names, each with some value (empty values
/// included), in random order; then one kind of damage to one series, or none.
fn request() -> impl Strategy<Value = pb::Request> {
    let names = prop::collection::btree_set("[a-z_][a-z0-9_]{0,6}", 0..5);
    let values = prop::collection::vec("[a-zA-Z0-9 ./é-]{0,10}", 1..6);
    (names, values)
        .prop_flat_map(|(names, values)| {
            let names: Vec<String> = names.into_iter().filter(|n| n != "__name__").collect();
            let mut symbols = vec![String::new(), "__name__".to_string()];
            symbols.extend(names.iter().cloned());
            let first_value = symbols.len() as u32;
            symbols.extend(values.iter().cloned());
            symbols.push("9bad".to_string());
            let (n_names, n_values) = (names.len() as u32, values.len() as u32);
            let value = move || first_value..first_value + n_values;
            let one = (
                value(),
                prop::collection::vec((2..2 + n_names.max(1), value()), 0..=n_names as usize),
                prop::collection::vec((any::<f64>(), any::<i64>()), 0..3),
                prop::collection::vec((value(), any::<f64>()), 0..2),
                prop::option::of((
                    0i32..8,
                    prop::option::of(value()),
                    prop::option::of(value()),
                )),
                any::<i64>(),
            );
            (
                Just(symbols),
                Just(n_names),
                prop::collection::vec(one, 1..5),
                damage(),
                any::<prop::sample::Index>(),
            )
        })
        .prop_map(|(mut symbols, n_names, series, damage, which)| {
            let invalid = symbols.len() as u32 - 1;
            let mut timeseries: Vec<pb::TimeSeries> = series
                .into_iter()
                .map(
                    |(name_value, pairs, samples, exemplars, metadata, created)| {
                        let mut refs = vec![1, name_value];
                        let mut used = std::collections::HashSet::new();
                        for (n, v) in pairs {
                            if n_names > 0 && used.insert(n) {
                                refs.extend([n, v]);
                            }
                        }
                        // Random order: the decoder sorts.
                        refs.reverse();
                        let mut pairs: Vec<[u32; 2]> =
                            refs.chunks(2).map(|p| [p[1], p[0]]).collect();
                        let half = pairs.len() / 2;
                        pairs.rotate_left(half);
                        pb::TimeSeries {
                            labels_refs: pairs.concat(),
                            samples: samples
                                .into_iter()
                                .map(|(value, timestamp)| pb::Sample { value, timestamp })
                                .collect(),
                            histograms: vec![],
                            exemplars: exemplars
                                .into_iter()
                                .map(|(v, value)| pb::Exemplar {
                                    // Exemplar label `trace_id`? Use the first name slot: `__name__`.
                                    labels_refs: vec![1, v],
                                    value,
                                    timestamp: 1,
                                })
                                .collect(),
                            metadata: metadata.map(|(t, help, unit)| pb::Metadata {
                                r#type: t,
                                help_ref: help.unwrap_or(0),
                                unit_ref: unit.unwrap_or(0),
                            }),
                            created_timestamp: created,
                        }
                    },
                )
                .collect();
            let i = which.index(timeseries.len());
            let too_far = symbols.len() as u32 + 3;
            let t = &mut timeseries[i];
            match damage {
                Damage::None => {}
                Damage::FirstSymbolNotEmpty => symbols[0] = "x".to_string(),
                Damage::OutOfRange => t.labels_refs.extend([1, too_far]),
                Damage::OddRefs => t.labels_refs.push(1),
                Damage::NoMetricName => {
                    let refs: Vec<u32> = t
                        .labels_refs
                        .chunks(2)
                        .filter(|p| p[0] != 1)
                        .flatten()
                        .copied()
                        .collect();
                    t.labels_refs = refs;
                }
                Damage::InvalidName => t.labels_refs.extend([invalid, 2 + n_names]),
                Damage::DuplicateName => {
                    let first = [t.labels_refs[0], t.labels_refs[1]];
                    t.labels_refs.extend(first);
                }
                Damage::ExemplarOutOfRange => t.exemplars.push(pb::Exemplar {
                    labels_refs: vec![1, too_far],
                    value: 1.0,
                    timestamp: 1,
                }),
            }
            pb::Request {
                symbols,
                timeseries,
            }
        })
}

/// What the reference says series `i` must decode to: its non-empty labels sorted, or None
/// when the series is invalid.
fn expected_labels(req: &pb::Request, i: usize) -> Option<Vec<(String, String)>> {
    let mut labels: Vec<(String, String)> = req
        .labels(i)
        .ok()?
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    labels.sort();
    let valid_name = |n: &str| {
        let mut c = n.bytes();
        c.next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && c.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    // Names are checked before empty values are dropped.
    if !req.labels(i).ok()?.iter().all(|(n, _)| valid_name(n)) {
        return None;
    }
    if labels.windows(2).any(|w| w[0].0 == w[1].0) || !labels.iter().any(|l| l.0 == "__name__") {
        return None;
    }
    let ts = &req.timeseries[i];
    for ex in &ts.exemplars {
        if ex.labels_refs.len() % 2 == 1
            || ex
                .labels_refs
                .iter()
                .any(|&r| r as usize >= req.symbols.len())
        {
            return None;
        }
        let mut names: Vec<&str> = Vec::new();
        for p in ex.labels_refs.chunks(2) {
            let name = req.symbols[p[0] as usize].as_str();
            if !valid_name(name) {
                return None;
            }
            if !req.symbols[p[1] as usize].is_empty() {
                names.push(name);
            }
        }
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
    }
    if let Some(m) = &ts.metadata {
        if m.help_ref as usize >= req.symbols.len() || m.unit_ref as usize >= req.symbols.len() {
            return None;
        }
    }
    Some(labels)
}

fn same_f64(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || a == b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn decodes_what_the_reference_resolves_and_refuses_the_rest(req in request()) {
        let first_ok = req.symbols.first().is_none_or(|s| s.is_empty());
        let expected: Option<Vec<Vec<(String, String)>>> = if first_ok {
            (0..req.timeseries.len()).map(|i| expected_labels(&req, i)).collect()
        } else {
            None
        };
        match (decode(&req), expected) {
            (Ok(batch), Some(expected)) => {
                prop_assert_eq!(batch.series_count(), expected.len());
                let mut metadata = 0;
                for (i, (s, want)) in batch.series().zip(&expected).enumerate() {
                    let got: Vec<(String, String)> =
                        s.labels().iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
                    prop_assert_eq!(&got, want);
                    let ts = &req.timeseries[i];
                    prop_assert_eq!(s.samples().len(), ts.samples.len());
                    for (a, b) in s.samples().iter().zip(&ts.samples) {
                        prop_assert!(same_f64(a.value, b.value) && a.timestamp_ms == b.timestamp);
                    }
                    prop_assert_eq!(s.exemplars().len(), ts.exemplars.len());
                    for (a, b) in s.exemplars().zip(&ts.exemplars) {
                        prop_assert!(same_f64(a.value(), b.value));
                        let n = b.labels_refs.chunks(2)
                            .filter(|p| !req.symbols[p[1] as usize].is_empty())
                            .count();
                        prop_assert!(a.labels().len() <= n);
                    }
                    if let Some(m) = &ts.metadata {
                        // Metadata that says something: a type, a help or a unit text.
                        if m.r#type != 0
                            || !req.symbols[m.help_ref as usize].is_empty()
                            || !req.symbols[m.unit_ref as usize].is_empty()
                        {
                            metadata += 1;
                        }
                    }
                }
                prop_assert_eq!(batch.metadata_count(), metadata);
            }
            (Err(_), None) => {}
            (Ok(_), None) => prop_assert!(false, "accepted an invalid request"),
            (Err(e), Some(_)) => prop_assert!(false, "refused a valid request: {e}"),
        }
    }
}

fn one_series(symbols: &[&str], refs: Vec<u32>) -> pb::Request {
    pb::Request {
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        timeseries: vec![pb::TimeSeries {
            labels_refs: refs,
            samples: vec![pb::Sample {
                value: 1.0,
                timestamp: 5,
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn symbol_table_edge_cases_are_named() {
    let err = |req: &pb::Request| decode(req).unwrap_err().to_string();
    assert_eq!(
        err(&one_series(&["", "__name__", "up"], vec![1, 7])),
        "series 0: labels_refs reference 7 is out of range (the symbols table has 3 entries)"
    );
    assert_eq!(
        err(&one_series(&["x", "__name__", "up"], vec![1, 2])),
        "symbols table must start with the empty string"
    );
    assert_eq!(
        err(&one_series(&["", "__name__", "up"], vec![1, 2, 1])),
        "series 0: labels_refs has an odd number of references"
    );
    assert_eq!(
        err(&one_series(&[], vec![0, 0])),
        "series 0: labels_refs reference 0 is out of range (the symbols table has 0 entries)"
    );
    assert_eq!(
        err(&one_series(
            &["", "__name__", "up", "a"],
            vec![1, 2, 3, 2, 3, 2]
        )),
        "series 0: duplicate label name \"a\""
    );
    assert_eq!(
        err(&one_series(&["", "job", "up"], vec![1, 2])),
        "series 0 has no __name__ label"
    );
    let mut meta = one_series(&["", "__name__", "up"], vec![1, 2]);
    meta.timeseries[0].metadata = Some(pb::Metadata {
        r#type: 1,
        help_ref: 9,
        unit_ref: 0,
    });
    assert_eq!(
        err(&meta),
        "series 0: help_ref reference 9 is out of range (the symbols table has 3 entries)"
    );
    // An empty request (no symbols, no series) is valid.
    assert_eq!(decode(&pb::Request::default()).unwrap().series_count(), 0);
}

#[test]
fn symbols_after_series_unpacked_refs_and_empty_values_decode() {
    // Hand-written wire bytes: the series (field 5) first, its labels_refs unpacked (one
    // varint per field), then the symbols (field 4).
    let mut series = Vec::new();
    for r in [1u8, 2, 3, 0, 4, 5] {
        series.extend_from_slice(&[0x08, r]); // field 1, varint
    }
    series.extend_from_slice(&[0x12, 0x09, 0x09]); // sample: value 1.0
    series.extend_from_slice(&1.0f64.to_le_bytes());
    let mut msg = vec![0x2a, series.len() as u8];
    msg.extend_from_slice(&series);
    for s in ["", "__name__", "up", "empty", "zone", "b"] {
        msg.push(0x22);
        msg.push(s.len() as u8);
        msg.extend_from_slice(s.as_bytes());
    }
    let batch = v2::decode_message(Bytes::from(msg), &DecodeLimits::default()).unwrap();
    let s = batch.series().next().unwrap();
    let labels: Vec<(&str, &str)> = s.labels().iter().collect();
    // "empty" has the empty value and is dropped; the rest are sorted.
    assert_eq!(labels, [("__name__", "up"), ("zone", "b")]);
    assert_eq!(s.samples()[0].value, 1.0);
}

#[test]
fn a_reference_over_32_bits_is_refused() {
    let mut series = vec![0x08];
    series.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x1f]); // 2^35 - 1
    let mut msg = vec![0x22, 0x00, 0x2a, series.len() as u8];
    msg.extend_from_slice(&series);
    assert!(v2::decode_message(Bytes::from(msg), &DecodeLimits::default()).is_err());
}

#[test]
fn limits_apply_as_in_1_0() {
    let limits = DecodeLimits {
        max_labels_per_series: 1,
        ..DecodeLimits::default()
    };
    let req = one_series(&["", "__name__", "up", "a"], vec![1, 2, 3, 2]);
    let e = v2::decode_message(Bytes::from(req.encode_to_vec()), &limits).unwrap_err();
    assert_eq!(e.to_string(), "series 0 has more than 1 labels");
    let limits = DecodeLimits {
        max_series: 0,
        ..DecodeLimits::default()
    };
    let e = v2::decode_message(Bytes::from(req.encode_to_vec()), &limits).unwrap_err();
    assert_eq!(e.to_string(), "request has more than 0 series");
}

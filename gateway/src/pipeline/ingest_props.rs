//! The promise of [`super::record::RULES`], as a property: whatever ingest accepts (any
//! protocol, any residency edit, any configured limits) and the pipeline's check lets through
//! encodes to a record that its sinks decode back unchanged. Inputs go at and past the
//! record's limits, with odd names (dots, UTF-8, names of the gateway's tags, empty), so a
//! check that lets through what the decoder refuses, or a decoder that changes what it reads,
//! fails here.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use protocols::otlp::proto as otlp;
use protocols::remote_write::v1::reference as pb;
use protocols::remote_write::v1::ExtraLabels;
use protocols::{Batch, DecodeLimits};
use residency_rules::{RegionId, SeriesDecision, TenantId};

use super::record::{self, RULES};
use super::{gateway_tags, Plan, TaggedBatch};

/// How the request arrived.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    RemoteWriteV1,
    RemoteWriteV2,
    OtlpUnderscore,
    OtlpNoTranslation,
}

#[derive(Debug, Clone)]
struct Series {
    labels: Vec<(String, String)>,
    samples: Vec<(f64, i64)>,
    exemplars: Vec<(Vec<(String, String)>, f64)>,
}

#[derive(Debug, Clone)]
struct Case {
    protocol: Protocol,
    limits: DecodeLimits,
    series: Vec<Series>,
    metadata: Vec<(String, String)>,
    /// `(label name, action)` rules of the residency policy.
    rules: Vec<(String, &'static str)>,
    region_tags: Vec<(String, String)>,
    hashes: bool,
}

/// Lengths just under, at and just over a limit.
fn around(limit: usize) -> impl Strategy<Value = usize> {
    (limit - 2)..=(limit + 2)
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z_][a-zA-Z0-9_]{0,10}",
        3 => "[a-z]{1,5}\\.[a-z]{1,5}",
        2 => "\\PC{1,6}",
        1 => prop::sample::select(vec![
            "__name__", "tenant", "region", "exported_tenant", "zone", "", "_", "0x",
        ])
        .prop_map(str::to_string),
        2 => around(RULES.max_label_name_bytes).prop_map(|n| "n".repeat(n)),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[ -~]{0,12}",
        2 => "\\PC{0,6}",
        3 => around(RULES.max_label_value_bytes).prop_map(|n| "v".repeat(n)),
    ]
}

fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![
        12 => prop::collection::vec((name(), value()), 0..6),
        // At the record's label count, less or more than the gateway's two tags.
        1 => around(RULES.max_labels_per_series - 2).prop_map(|n| {
            (0..n).map(|i| (format!("l{i}"), "x".to_string())).collect()
        }),
    ]
}

fn series() -> impl Strategy<Value = Series> {
    (
        prop_oneof![8 => "[a-z_]{1,10}", 1 => "[a-z]{1,4}\\.[a-z]{1,4}", 1 => Just(String::new())],
        labels(),
        prop::collection::vec((any::<f64>(), any::<i64>()), 1..3),
        prop::collection::vec(
            (prop::collection::vec((name(), value()), 0..3), any::<f64>()),
            0..2,
        ),
    )
        .prop_map(|(metric, mut labels, samples, exemplars)| {
            labels.push(("__name__".to_string(), metric));
            Series {
                labels,
                samples,
                exemplars,
            }
        })
}

fn limits() -> impl Strategy<Value = DecodeLimits> {
    (
        prop::sample::select(vec![4usize, 128, 5000]),
        // The limits past the record's twice as often: that is where a check can slip.
        prop::sample::select(vec![
            16usize,
            1024,
            RULES.max_label_name_bytes + 8,
            usize::MAX,
        ]),
        prop::sample::select(vec![
            16usize,
            16 * 1024,
            RULES.max_label_value_bytes + 8,
            usize::MAX,
        ]),
    )
        .prop_map(|(labels, names, values)| DecodeLimits {
            max_labels_per_series: labels,
            max_label_name_bytes: names,
            max_label_value_bytes: values,
            ..DecodeLimits::new_default()
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![
            Protocol::RemoteWriteV1,
            Protocol::RemoteWriteV2,
            Protocol::OtlpUnderscore,
            Protocol::OtlpNoTranslation,
        ]),
        limits(),
        prop::collection::vec(series(), 1..4),
        prop::collection::vec(("[a-z_]{1,8}", "\\PC{0,8}"), 0..2),
        prop::collection::vec(
            (
                name(),
                prop::sample::select(vec!["drop_label", "hash_label", "deny_series"]),
            ),
            0..3,
        ),
        prop::collection::vec(("[a-z]{1,6}", "[a-z0-9]{1,6}"), 0..2),
        any::<bool>(),
    )
        .prop_map(
            |(protocol, limits, series, metadata, rules, region_tags, hashes)| Case {
                protocol,
                limits,
                series,
                metadata,
                rules,
                region_tags,
                hashes,
            },
        )
}

fn v1_request(case: &Case) -> pb::WriteRequest {
    let label = |(n, v): &(String, String)| pb::Label {
        name: n.clone(),
        value: v.clone(),
    };
    pb::WriteRequest {
        timeseries: case
            .series
            .iter()
            .map(|s| pb::TimeSeries {
                labels: s.labels.iter().map(label).collect(),
                samples: s
                    .samples
                    .iter()
                    .map(|&(value, timestamp)| pb::Sample { value, timestamp })
                    .collect(),
                exemplars: s
                    .exemplars
                    .iter()
                    .map(|(l, value)| pb::Exemplar {
                        labels: l.iter().map(label).collect(),
                        value: *value,
                        timestamp: 1,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: case
            .metadata
            .iter()
            .map(|(family, help)| pb::MetricMetadata {
                r#type: 1,
                metric_family_name: family.clone(),
                help: help.clone(),
                unit: String::new(),
            })
            .collect(),
    }
}

fn otlp_request(case: &Case) -> otlp::ExportMetricsServiceRequest {
    let kv = |(k, v): &(String, String)| otlp::KeyValue {
        key: k.clone(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(v.clone())),
        }),
    };
    let metrics = case
        .series
        .iter()
        .map(|s| {
            let metric = s
                .labels
                .iter()
                .rev()
                .find(|(k, _)| k == "__name__")
                .map_or(String::new(), |(_, v)| v.clone());
            otlp::Metric {
                name: metric,
                data: Some(otlp::metric::Data::Gauge(otlp::Gauge {
                    data_points: s
                        .samples
                        .iter()
                        .map(|&(v, t)| otlp::NumberDataPoint {
                            attributes: s
                                .labels
                                .iter()
                                .filter(|(k, _)| k != "__name__")
                                .map(kv)
                                .collect(),
                            time_unix_nano: (t as u64) % (1 << 62),
                            exemplars: s
                                .exemplars
                                .iter()
                                .map(|(l, ev)| otlp::Exemplar {
                                    filtered_attributes: l.iter().map(kv).collect(),
                                    time_unix_nano: 1_000_000,
                                    value: Some(otlp::exemplar::Value::AsDouble(*ev)),
                                    ..Default::default()
                                })
                                .collect(),
                            value: Some(otlp::number_data_point::Value::AsDouble(v)),
                            ..Default::default()
                        })
                        .collect(),
                })),
                ..Default::default()
            }
        })
        .collect();
    otlp::ExportMetricsServiceRequest {
        resource_metrics: vec![otlp::ResourceMetrics {
            scope_metrics: vec![otlp::ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What the gateway's ingest makes of the case: the batches it would submit, or `None` when
/// decoding refused it (a 4xx before the pipeline).
fn ingest(case: &Case) -> Option<Vec<Batch>> {
    let limits = &case.limits;
    match case.protocol {
        Protocol::RemoteWriteV1 => {
            let msg = Bytes::from(v1_request(case).encode_to_vec());
            protocols::remote_write::v1::decode_message(msg, limits)
                .ok()
                .map(|b| vec![b])
        }
        Protocol::RemoteWriteV2 => {
            // The same series as a 2.0 message, written by the 2.0 encoder.
            let v1 = protocols::remote_write::v1::decode_message(
                Bytes::from(v1_request(case).encode_to_vec()),
                &DecodeLimits {
                    max_labels_per_series: usize::MAX,
                    max_label_name_bytes: usize::MAX,
                    max_label_value_bytes: usize::MAX,
                    ..DecodeLimits::new_default()
                },
            )
            .ok()?;
            let mut w = protocols::remote_write::v2::V2Writer::new();
            for s in v1.series() {
                w.add_series(&v1, &s, s.labels().iter());
            }
            let mut msg = Vec::new();
            w.finish(&mut msg);
            protocols::remote_write::v2::decode_message(Bytes::from(msg), limits)
                .ok()
                .map(|b| vec![b])
        }
        Protocol::OtlpUnderscore | Protocol::OtlpNoTranslation => {
            let options = protocols::otlp::TranslateOptions {
                naming: match case.protocol {
                    Protocol::OtlpNoTranslation => protocols::otlp::Naming::NoTranslation,
                    _ => protocols::otlp::Naming::UnderscoreEscapingWithSuffixes,
                },
                ..Default::default()
            };
            let t = protocols::otlp::translate(&otlp_request(case), &options, limits).ok()?;
            Some(t.batches.into_iter().map(|b| b.batch).collect())
        }
    }
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn policy(case: &Case) -> Option<residency_rules::CompiledPolicy> {
    let tags: Vec<String> = case
        .region_tags
        .iter()
        .map(|(k, v)| format!("{}: {}", json(k), json(v)))
        .collect();
    let rules: Vec<String> = case
        .rules
        .iter()
        .map(|(name, action)| format!("{{ match: {{ name: {} }}, action: {action} }}", json(name)))
        .collect();
    let yaml = format!(
        "regions: [{{ id: eu, jurisdiction: EU, tags: {{ {} }} }}]\n\
         tenants: [{{ id: acme, home: eu }}]\n\
         hash_key: 0123456789abcdef0123456789abcdef\n\
         rules: [{}]\n",
        tags.join(", "),
        rules.join(", ")
    );
    // A policy that does not compile (a rule on `__name__`) is refused at load: no ingest.
    residency_rules::load(&yaml).ok()
}

/// The share `submit` would build for region `eu`, as `ingest::plan` decides it.
fn share(case: &Case, batch: Batch, policy: &residency_rules::CompiledPolicy) -> TaggedBatch {
    let tenant = TenantId::parse("acme").expect("valid");
    let region = RegionId::parse("eu").expect("valid");
    let view = policy.tenant(&tenant).expect("listed");
    let mut plan = Plan::default();
    if view.has_rules() {
        for (i, s) in batch.series().enumerate() {
            if let SeriesDecision::Allow { regions, edits } = view.decide(s.labels().iter()) {
                plan.add(i as u32, regions, &edits, &view, &s);
            }
        }
    } else {
        plan = Plan::all(view.default_regions());
    }
    let selection = match plan.all {
        Some(_) => None,
        None => {
            let mut all: Vec<u32> = plan.groups.into_iter().flat_map(|(_, l)| l).collect();
            all.sort_unstable();
            Some(all)
        }
    };
    let tags = gateway_tags("tenant", "region", &tenant, &region, policy);
    let mut share = TaggedBatch {
        tenant,
        region,
        batch: Arc::new(batch),
        selection,
        edits: Arc::new(plan.edits),
        extra: ExtraLabels::new(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        tags: tags.into(),
        hashes: Vec::new(),
        raw: None,
    };
    if case.hashes {
        share.compute_hashes();
    }
    share
}

type Exemplars = Vec<(Vec<(String, String)>, u64, i64)>;

/// Everything a sink reads of a share: per series its stored labels, samples (bit for bit),
/// histograms and exemplars; then the metadata, tenant, region and hashes.
#[allow(clippy::type_complexity)]
fn stored(
    share: &TaggedBatch,
) -> (
    Vec<(Vec<(String, String)>, Vec<(u64, i64)>, String, Exemplars)>,
    Vec<String>,
    String,
    String,
    Vec<u64>,
) {
    let series = share
        .series()
        .map(|(s, labels)| {
            (
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                s.samples()
                    .iter()
                    .map(|x| (x.value.to_bits(), x.timestamp_ms))
                    .collect(),
                format!("{:?}", s.histograms()),
                s.exemplars()
                    .map(|e| {
                        (
                            e.labels()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                            e.value().to_bits(),
                            e.timestamp_ms(),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let metadata = share
        .batch
        .metadata()
        .map(|m| {
            format!(
                "{:?} {} {} {}",
                m.metric_type(),
                m.family(),
                m.help(),
                m.unit()
            )
        })
        .collect();
    (
        series,
        metadata,
        share.tenant.to_string(),
        share.region.to_string(),
        share.hashes.clone(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn whatever_ingest_accepts_reads_back_unchanged(case in case()) {
        let Some(policy) = policy(&case) else { return Ok(()) };
        let Some(batches) = ingest(&case) else { return Ok(()) };
        let region = RegionId::parse("eu").expect("valid");
        for batch in batches {
            let share = share(&case, batch, &policy);
            if share.is_empty() {
                continue;
            }
            // Refused with a 400 naming the series: nothing acknowledged, nothing lost.
            let Ok(payload) = record::encode_checked(&share, 7, usize::MAX) else { continue };
            let back = record::decode(payload.clone(), &region);
            prop_assert!(back.is_ok(), "acknowledged but unreadable: {:?}", back.err());
            let back = back.expect("checked");
            let mut want = stored(&share);
            if want.4.is_empty() {
                // Hashes are computed on read when the record had none.
                want.4 = back.share.hashes.clone();
            }
            prop_assert_eq!(&stored(&back.share), &want);
            if case.hashes {
                let raw = record::read_raw(payload, &region);
                prop_assert!(raw.is_ok(), "raw read failed: {:?}", raw.err());
                prop_assert_eq!(raw.expect("checked").share.len(), share.len());
            }
        }
    }
}

#[test]
fn the_property_sees_refusals_and_acceptances_of_every_protocol() {
    // The generator is not vacuous: fixed cases of each protocol are accepted, and a label at
    // the record's limit plus one is refused.
    let ok = Series {
        labels: vec![
            ("__name__".into(), "up".into()),
            ("http.method".into(), "GET".into()),
        ],
        samples: vec![(1.0, 1)],
        exemplars: vec![],
    };
    let mut long = ok.clone();
    long.labels
        .push(("k".into(), "v".repeat(RULES.max_label_value_bytes + 1)));
    for protocol in [
        Protocol::RemoteWriteV1,
        Protocol::RemoteWriteV2,
        Protocol::OtlpUnderscore,
        Protocol::OtlpNoTranslation,
    ] {
        let mut case = Case {
            protocol,
            limits: DecodeLimits {
                max_label_value_bytes: usize::MAX,
                ..DecodeLimits::new_default()
            },
            series: vec![ok.clone()],
            metadata: vec![],
            rules: vec![],
            region_tags: vec![],
            hashes: false,
        };
        let policy = policy(&case).expect("compiles");
        let accepted = ingest(&case).map(|b| {
            b.into_iter()
                .map(|b| record::encode_checked(&share(&case, b, &policy), 1, usize::MAX).is_ok())
                .collect::<Vec<_>>()
        });
        match protocol {
            // `http.method` is not a remote-write label name: the decoder refuses it.
            Protocol::RemoteWriteV1 | Protocol::RemoteWriteV2 => assert_eq!(accepted, None),
            _ => assert_eq!(accepted, Some(vec![true]), "{protocol:?}"),
        }
        case.series = vec![long.clone()];
        if let Some(batches) = ingest(&case) {
            for b in batches {
                let r = record::encode_checked(&share(&case, b, &policy), 1, usize::MAX);
                assert!(
                    matches!(r, Err(record::Unstorable::Labels { .. })),
                    "{protocol:?}: {r:?}"
                );
            }
        }
    }
}

#[test]
fn an_edit_cannot_leave_an_unreadable_record_behind() {
    // Hash a label whose value then is fine; drop one so a series keeps its name; the tags
    // rename a client `tenant` label.
    let case = Case {
        protocol: Protocol::RemoteWriteV1,
        limits: DecodeLimits::new_default(),
        series: vec![Series {
            labels: vec![
                ("__name__".into(), "up".into()),
                ("tenant".into(), "spoof".into()),
                ("email".into(), "a@b".into()),
            ],
            samples: vec![(1.0, 1)],
            exemplars: vec![],
        }],
        metadata: vec![],
        rules: vec![("email".into(), "hash_label")],
        region_tags: vec![("zone".into(), "z1".into())],
        hashes: true,
    };
    let policy = policy(&case).expect("compiles");
    let batch = ingest(&case).expect("decodes").remove(0);
    let share = share(&case, batch, &policy);
    let payload = record::encode_checked(&share, 1, usize::MAX).expect("storable");
    let back = record::decode(payload, &RegionId::parse("eu").expect("valid")).expect("reads");
    assert_eq!(stored(&back.share), stored(&share));
    let labels: HashMap<String, String> = stored(&back.share).0[0].0.iter().cloned().collect();
    assert_eq!(labels["exported_tenant"], "spoof");
    assert_eq!(labels["tenant"], "acme");
    assert_ne!(labels["email"], "a@b");
}

//! Shares for unit tests of the modules that read them.

use std::collections::HashMap as Map;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use protocols::remote_write::v1::reference as pb;
use protocols::remote_write::v1::ExtraLabels;
use protocols::DecodeLimits;

use protocols::Batch;

use super::TaggedBatch;

/// A tagged share of `n` series `s0..s{n-1}`, one sample each, with its hashes.
pub(crate) fn share(n: usize) -> TaggedBatch {
    let req = pb::WriteRequest {
        timeseries: (0..n)
            .map(|i| pb::TimeSeries {
                labels: vec![
                    pb::Label {
                        name: "__name__".into(),
                        value: format!("s{i}"),
                    },
                    pb::Label {
                        name: "job".into(),
                        value: "x".repeat(40),
                    },
                ],
                samples: vec![pb::Sample {
                    value: i as f64,
                    timestamp: 1,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![pb::MetricMetadata {
            r#type: 1,
            metric_family_name: "s0".into(),
            help: "help".into(),
            unit: String::new(),
        }],
    };
    let batch = protocols::remote_write::v1::decode_message(
        Bytes::from(req.encode_to_vec()),
        &DecodeLimits::default(),
    )
    .unwrap();
    let tags = [("tenant", "acme"), ("region", "eu")];
    let mut share = TaggedBatch {
        tenant: residency_rules::TenantId::parse("acme").unwrap(),
        region: residency_rules::RegionId::parse("eu").unwrap(),
        batch: Arc::new(batch),
        selection: None,
        edits: Arc::new(Map::new()),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into(),
        extra: ExtraLabels::new(tags),
        hashes: Vec::new(),
        raw: None,
    };
    share.compute_hashes();
    share
}

/// A batch of one series with `labels` (in the order given) and one sample.
pub(crate) fn batch(labels: &[(&str, &str)]) -> Batch {
    let req = pb::WriteRequest {
        timeseries: vec![pb::TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| pb::Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: vec![pb::Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    protocols::remote_write::v1::decode_message(
        Bytes::from(req.encode_to_vec()),
        &DecodeLimits::default(),
    )
    .unwrap()
}

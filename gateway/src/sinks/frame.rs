//! Framing a request's series into Kafka-sized remote-write messages, one stream per
//! partition. Shared by the Kafka sink and the `null` sink, so that measuring with `null`
//! costs the gateway exactly what producing to Kafka costs it, minus the Kafka client.

use std::collections::HashMap;

use protocols::remote_write::v1::{encode_metadata, encode_series_with_labels};
use protocols::remote_write::v2::V2Writer;

use crate::config::KafkaFormat;
use crate::pipeline::TaggedBatch;

/// One partition's message under construction.
enum Framer {
    V1(Vec<u8>),
    V2(V2Writer),
}

impl Framer {
    fn new(format: KafkaFormat) -> Self {
        match format {
            KafkaFormat::RemoteWriteV1 => Framer::V1(Vec::new()),
            KafkaFormat::RemoteWriteV2 => Framer::V2(V2Writer::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Framer::V1(b) => b.len(),
            Framer::V2(w) => w.approx_len(),
        }
    }

    /// The finished message; the framer starts the next one.
    fn take(&mut self) -> Vec<u8> {
        match self {
            Framer::V1(b) => std::mem::take(b),
            Framer::V2(w) => {
                let mut out = Vec::with_capacity(w.approx_len());
                w.finish(&mut out);
                out
            }
        }
    }
}

/// Frames `batch` into messages of about `message_bytes` per partition (a stable hash of each
/// series' stored labels picks it) and hands each finished message to `emit`, which returns
/// false to stop (the request failed). Returns false when `emit` did.
pub(crate) fn frame_batch(
    batch: &TaggedBatch,
    partitions: u32,
    format: KafkaFormat,
    message_bytes: usize,
    mut emit: impl FnMut(i32, &[u8]) -> bool,
) -> bool {
    let partitions = partitions.max(1);
    let mut open: HashMap<i32, Framer> = HashMap::new();
    let mut metadata_done = false;
    for (series, labels) in batch.series() {
        let p = (label_hash(&labels) % u64::from(partitions)) as i32;
        let framer = open.entry(p).or_insert_with(|| Framer::new(format));
        let labels = labels.iter().map(|(k, v)| (k.as_ref(), *v));
        match framer {
            Framer::V1(buf) => {
                if !metadata_done {
                    // 1.0 metadata rides in the first message of the request.
                    encode_metadata(&batch.batch, buf);
                    metadata_done = true;
                }
                encode_series_with_labels(&series, labels, buf);
            }
            // 2.0 carries metadata per series.
            Framer::V2(w) => w.add_series(&batch.batch, &series, labels),
        }
        if framer.len() >= message_bytes {
            let full = framer.take();
            if !emit(p, &full) {
                return false;
            }
        }
    }
    let mut rest: Vec<(i32, Vec<u8>)> = open
        .into_iter()
        .filter(|(_, f)| f.len() > 0)
        .map(|(p, mut f)| (p, f.take()))
        .collect();
    rest.sort_by_key(|(p, _)| *p);
    rest.into_iter().all(|(p, buf)| emit(p, &buf))
}

/// A stable 64-bit FNV-1a hash of a series' stored labels: the same series always maps to the
/// same partition, across requests, restarts and gateway nodes.
fn label_hash(labels: &[(std::borrow::Cow<'_, str>, &str)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for (k, v) in labels {
        eat(k.as_bytes());
        eat(v.as_bytes());
    }
    h
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::collections::HashMap as Map;
    use std::sync::Arc;

    use bytes::Bytes;
    use prost::Message;
    use protocols::remote_write::v1::reference as pb;
    use protocols::DecodeLimits;

    /// A tagged share of `n` series `s0..s{n-1}`, one sample each.
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
            ..Default::default()
        };
        let batch = protocols::remote_write::v1::decode_message(
            Bytes::from(req.encode_to_vec()),
            &DecodeLimits::default(),
        )
        .unwrap();
        TaggedBatch {
            tenant: residency_rules::TenantId::parse("acme").unwrap(),
            region: residency_rules::RegionId::parse("eu").unwrap(),
            batch: Arc::new(batch),
            selection: None,
            edits: Arc::new(Map::new()),
            tags: vec![("tenant".to_string(), "acme".to_string())].into(),
        }
    }

    #[test]
    fn every_series_lands_once_in_a_stable_partition_within_the_size() {
        let first = share(500);
        let mut seen: Map<String, i32> = Map::new();
        let mut messages = 0;
        for format in [KafkaFormat::RemoteWriteV1, KafkaFormat::RemoteWriteV2] {
            seen.clear();
            assert!(frame_batch(&first, 4, format, 4096, |p, payload| {
                messages += 1;
                assert!(
                    payload.len() < 4096 + 200,
                    "a message ends once past the size"
                );
                let names: Vec<String> = match format {
                    KafkaFormat::RemoteWriteV1 => pb::WriteRequest::decode(payload)
                        .unwrap()
                        .timeseries
                        .iter()
                        .map(|t| t.labels[0].value.clone())
                        .collect(),
                    KafkaFormat::RemoteWriteV2 => {
                        let r = protocols::remote_write::v2::reference::Request::decode(payload)
                            .unwrap();
                        (0..r.timeseries.len())
                            .map(|i| r.labels(i).unwrap()[0].1.to_string())
                            .collect()
                    }
                };
                for n in names {
                    assert!(seen.insert(n, p).is_none(), "a series framed twice");
                }
                true
            }));
            assert_eq!(seen.len(), 500);
        }
        assert!(
            messages > 8,
            "500 series of ~60 bytes need several 4 KiB messages"
        );
        // The same series goes to the same partition next time.
        let again = share(500);
        frame_batch(&again, 4, KafkaFormat::RemoteWriteV2, 4096, |p, payload| {
            let r = protocols::remote_write::v2::reference::Request::decode(payload).unwrap();
            for i in 0..r.timeseries.len() {
                let name = r.labels(i).unwrap()[0].1.to_string();
                assert_eq!(seen[&name], p);
            }
            true
        });
        // A refused message stops the framing.
        let mut calls = 0;
        assert!(!frame_batch(
            &first,
            1,
            KafkaFormat::RemoteWriteV1,
            1024,
            |_, _| {
                calls += 1;
                false
            }
        ));
        assert_eq!(calls, 1);
    }

    #[test]
    fn label_hash_is_stable_and_separates_names_from_values() {
        let a = [(Cow::Borrowed("a"), "bc")];
        let b = [(Cow::Borrowed("ab"), "c")];
        assert_ne!(label_hash(&a), label_hash(&b));
        // Pinned: changing the hash moves every series to another partition.
        assert_eq!(label_hash(&a), label_hash(&[(Cow::Borrowed("a"), "bc")]));
        assert_eq!(label_hash(&[]), 0xcbf2_9ce4_8422_2325);
    }
}

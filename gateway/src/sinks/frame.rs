//! Framing a request's series into Kafka-sized remote-write messages, one stream per
//! partition. Shared by the Kafka sink and the `null` sink, so that measuring with `null`
//! costs the gateway exactly what producing to Kafka costs it, minus the Kafka client.

use protocols::remote_write::v2::V2Writer;

use serde::Deserialize;

use super::SinkRequest;

/// The message format a sink frames into (`format:` of the Kafka, null and remote-write
/// sinks).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// `prometheus.WriteRequest`.
    #[default]
    RemoteWriteV1,
    /// `io.prometheus.write.v2.Request`.
    RemoteWriteV2,
}

/// One partition's message under construction; its buffer is kept for the next one.
enum Framer {
    V1(Vec<u8>),
    V2 { writer: V2Writer, out: Vec<u8> },
}

/// A framer keeps a buffer this large across messages; a larger one (a rare huge message)
/// is given back, so a worker's idle memory stays at about partitions x this.
const RETAINED_BUFFER_BYTES: usize = 1 << 20;

impl Framer {
    fn new(format: KafkaFormat) -> Self {
        match format {
            KafkaFormat::RemoteWriteV1 => Framer::V1(Vec::new()),
            KafkaFormat::RemoteWriteV2 => Framer::V2 {
                writer: V2Writer::new(),
                out: Vec::new(),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Framer::V1(b) => b.len(),
            Framer::V2 { writer, .. } => writer.approx_len(),
        }
    }

    /// Hands the finished message to `emit` and starts the next one in the same buffer.
    fn emit(&mut self, partition: i32, emit: &mut impl FnMut(i32, &[u8]) -> bool) -> bool {
        let buf = match self {
            Framer::V1(b) => b,
            Framer::V2 { writer, out } => {
                out.clear();
                writer.finish(out);
                out
            }
        };
        let ok = emit(partition, buf);
        buf.clear();
        if buf.capacity() > RETAINED_BUFFER_BYTES {
            *buf = Vec::new();
        }
        ok
    }
}

/// A sink worker's framing state: one open message per partition, reused across requests.
pub(crate) struct Framing {
    format: KafkaFormat,
    message_bytes: usize,
    open: Vec<Framer>,
    scratch: Vec<u8>,
}

impl Framing {
    pub(crate) fn new(format: KafkaFormat, message_bytes: usize) -> Self {
        Self {
            format,
            message_bytes,
            open: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Frames the series of `req` into messages of about `message_bytes` per partition (the
    /// series' identity hash picks it) and hands each finished message to `emit`, which
    /// returns false to stop (the request failed). Returns false when `emit` did. Messages
    /// never span requests: each request's are emitted before this returns.
    pub(crate) fn frame(
        &mut self,
        req: &SinkRequest,
        partitions: u32,
        mut emit: impl FnMut(i32, &[u8]) -> bool,
    ) -> bool {
        let share = &req.batch;
        let partitions = partitions.max(1);
        if self.open.len() != partitions as usize {
            let format = self.format;
            self.open
                .resize_with(partitions as usize, || Framer::new(format));
        }
        let mut metadata_due = req.with_metadata && self.format == KafkaFormat::RemoteWriteV1;
        let count = req.positions.as_ref().map_or(share.len(), Vec::len);
        for n in 0..count {
            let pos = req.positions.as_ref().map_or(n, |p| p[n] as usize);
            let hash = match share.hashes.get(pos) {
                Some(h) => *h,
                None => share.hash_at(pos, &mut self.scratch),
            };
            let p = (hash % u64::from(partitions)) as i32;
            let framer = &mut self.open[p as usize];
            match framer {
                Framer::V1(buf) => {
                    if metadata_due {
                        // 1.0 metadata rides in the first message of the request.
                        share.put_v1_metadata(buf);
                        metadata_due = false;
                    }
                    share.put_v1_at(pos, buf);
                }
                // 2.0 carries metadata per series.
                Framer::V2 { writer, .. } => share.put_v2_at(pos, writer),
            }
            if framer.len() >= self.message_bytes && !framer.emit(p, &mut emit) {
                self.reset();
                return false;
            }
        }
        if metadata_due && share.has_metadata() {
            // A part without series still carries the request's metadata.
            if let Framer::V1(buf) = &mut self.open[0] {
                share.put_v1_metadata(buf);
            }
        }
        for p in 0..self.open.len() {
            if self.open[p].len() > 0 && !self.open[p].emit(p as i32, &mut emit) {
                self.reset();
                return false;
            }
        }
        true
    }

    /// Drops what a failed request left half framed.
    fn reset(&mut self) {
        let format = self.format;
        for f in &mut self.open {
            match f {
                Framer::V1(b) => b.clear(),
                Framer::V2 { .. } => *f = Framer::new(format),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;
    use std::sync::Arc;

    use prost::Message;
    use protocols::remote_write::v1::reference as pb;
    use tokio::sync::oneshot;

    use crate::share::testing::share;
    use crate::share::TaggedBatch;
    use crate::sinks::Ack;

    /// A request for all of `share` (or the given positions), carrying the metadata.
    pub(crate) fn request(share: Arc<TaggedBatch>, positions: Option<Vec<u32>>) -> SinkRequest {
        let (tx, _rx) = oneshot::channel();
        SinkRequest {
            batch: share,
            positions,
            with_metadata: true,
            ack: Arc::new(Ack::new(tx, 1)),
        }
    }

    /// Every series of a framed v1/v2 message: (metric name, labels).
    fn decode(format: KafkaFormat, payload: &[u8]) -> Vec<(String, Vec<(String, String)>)> {
        match format {
            KafkaFormat::RemoteWriteV1 => pb::WriteRequest::decode(payload)
                .unwrap()
                .timeseries
                .into_iter()
                .map(|t| {
                    let labels: Vec<(String, String)> =
                        t.labels.into_iter().map(|l| (l.name, l.value)).collect();
                    (labels[0].1.clone(), labels)
                })
                .collect(),
            KafkaFormat::RemoteWriteV2 => {
                let r = protocols::remote_write::v2::reference::Request::decode(payload).unwrap();
                (0..r.timeseries.len())
                    .map(|i| {
                        let labels: Vec<(String, String)> = r
                            .labels(i)
                            .unwrap()
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        (labels[0].1.clone(), labels)
                    })
                    .collect()
            }
        }
    }

    #[test]
    fn every_series_lands_once_in_a_stable_partition_within_the_size() {
        let first = Arc::new(share(500));
        let mut seen: Map<String, i32> = Map::new();
        let mut messages = 0;
        for format in [KafkaFormat::RemoteWriteV1, KafkaFormat::RemoteWriteV2] {
            seen.clear();
            let mut framing = Framing::new(format, 4096);
            // Twice through the same framing: buffers are reused, output is the same.
            for round in 0..2 {
                let req = request(first.clone(), None);
                assert!(framing.frame(&req, 4, |p, payload| {
                    messages += 1;
                    assert!(
                        payload.len() < 4096 + 200,
                        "a message ends once past the size"
                    );
                    for (name, labels) in decode(format, payload) {
                        let tags: Vec<&str> = labels
                            .iter()
                            .filter(|(k, _)| k == "tenant" || k == "region")
                            .map(|(_, v)| v.as_str())
                            .collect();
                        assert_eq!(tags, ["eu", "acme"], "tags spliced in sorted order");
                        let mut sorted = labels.clone();
                        sorted.sort();
                        assert_eq!(labels, sorted);
                        match seen.insert(name, p) {
                            Some(before) => {
                                assert_eq!(round, 1, "a series framed twice in one request");
                                assert_eq!(before, p, "a series moved partition");
                            }
                            None => assert_eq!(round, 0),
                        }
                    }
                    true
                }));
            }
            assert_eq!(seen.len(), 500);
        }
        assert!(
            messages > 16,
            "500 series of ~80 bytes need several 4 KiB messages"
        );
        // A refused message stops the framing.
        let mut calls = 0;
        let mut framing = Framing::new(KafkaFormat::RemoteWriteV1, 1024);
        assert!(!framing.frame(&request(first.clone(), None), 1, |_, _| {
            calls += 1;
            false
        }));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_part_frames_only_its_positions_and_metadata_rides_once() {
        let s = Arc::new(share(10));
        let mut framing = Framing::new(KafkaFormat::RemoteWriteV1, 1 << 20);
        let mut names = Vec::new();
        let mut metadata = 0;
        let mut req = request(s.clone(), Some(vec![1, 3]));
        req.with_metadata = false;
        assert!(framing.frame(&req, 2, |_, payload| {
            let r = pb::WriteRequest::decode(payload).unwrap();
            metadata += r.metadata.len();
            names.extend(r.timeseries.into_iter().map(|t| t.labels[0].value.clone()));
            true
        }));
        names.sort();
        assert_eq!(names, ["s1", "s3"]);
        assert_eq!(metadata, 0);
        // A part with no series but the metadata still sends it.
        assert!(framing.frame(&request(s, Some(vec![])), 2, |p, payload| {
            assert_eq!(p, 0);
            metadata += pb::WriteRequest::decode(payload).unwrap().metadata.len();
            true
        }));
        assert_eq!(metadata, 1);
    }
}

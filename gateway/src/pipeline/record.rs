//! The write-ahead log record of one region's share of a request: what the pipeline makes
//! durable before it answers 2xx, and what the region's sinks read back.
//!
//! The share is stored as sinks would store it: a remote-write 1.0 `WriteRequest` whose series
//! already carry the gateway's tags and the residency edits, so reading it back needs no
//! policy and a policy reload cannot change data already acknowledged. Each series' identity
//! hash (over its labels before the tags, see [`super::series_hash`]) rides beside it, so a
//! replayed series lands in the same Kafka partition as it would have live.
//!
//! Layout (all integers little-endian; also in `docs/formats.md`):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, 1 |
//! | 8 | when the gateway accepted it, ms since the epoch (for `replication_lag_seconds`) |
//! | 2 + n | tenant id: length, then its bytes |
//! | 2 + n | region id: length, then its bytes (checked against the log's region on read) |
//! | 4 + 8 x k | identity hashes: count `k` (0 or the number of series), then each |
//! | rest | the `WriteRequest` |

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use protocols::remote_write::v1::{decode_message, ExtraLabels};
use protocols::{DecodeError, DecodeLimits};
use residency_rules::{RegionId, TenantId};

use super::{ResolvedEdit, TaggedBatch};

const VERSION: u8 = 1;

/// Records are written by this gateway and checked by their CRC; the limits only guard the
/// decoder's allocations against a bug, not against clients (whose own limits were applied on
/// the way in, before tags made labels longer and more numerous).
const RECORD_LIMITS: DecodeLimits = DecodeLimits {
    max_compressed_bytes: usize::MAX,
    max_decompressed_bytes: crate::wal::MAX_RECORD_BYTES,
    max_series: usize::MAX,
    max_labels_per_series: 4096,
    max_label_name_bytes: 64 * 1024,
    max_label_value_bytes: 1 << 20,
    // A record holds what a client's request held, already within the client limits; the
    // record's own size bounds the rest.
    max_samples: usize::MAX,
    max_histograms: usize::MAX,
    max_histogram_buckets: usize::MAX,
    max_exemplars: usize::MAX,
    max_attributes: usize::MAX,
};

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Shorter than its own header says.
    #[error("record is truncated in its {0}")]
    Truncated(&'static str),
    /// Written by a newer gateway.
    #[error("record version {0} is not known (this gateway writes version {VERSION})")]
    Version(u8),
    /// The record names another region than the log it was read from (a log directory
    /// moved or copied between regions): it is never delivered here.
    #[error("record of region {found} found in the log of region {log}; not delivered here")]
    ForeignRegion {
        /// The region the record was written for.
        found: String,
        /// The region of the log it was read from.
        log: RegionId,
    },
    /// The tenant id does not parse.
    #[error("record tenant id is invalid: {0}")]
    Tenant(String),
    /// The hash count is neither 0 nor the series count.
    #[error("record has {hashes} identity hashes for {series} series")]
    Hashes {
        /// Hashes stored.
        hashes: usize,
        /// Series stored.
        series: usize,
    },
    /// A field key the gateway never writes into a record.
    #[error("record payload has an unexpected field key {0:#x}")]
    Field(u64),
    /// The `WriteRequest` does not decode.
    #[error("record payload: {0}")]
    Payload(#[from] DecodeError),
}

/// Encodes `share` as a record accepted at `accepted_ms`.
pub fn encode(share: &TaggedBatch, accepted_ms: u64) -> Vec<u8> {
    let tenant = share.tenant.as_str().as_bytes();
    let mut out = Vec::with_capacity(
        17 + tenant.len()
            + share.region.as_str().len()
            + 8 * share.hashes.len()
            + share.batch.series_count() * 64,
    );
    out.push(VERSION);
    out.extend_from_slice(&accepted_ms.to_le_bytes());
    out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    out.extend_from_slice(tenant);
    let region = share.region.as_str().as_bytes();
    out.extend_from_slice(&(region.len() as u16).to_le_bytes());
    out.extend_from_slice(region);
    let hashes = if share.hashes.len() == share.len() {
        &share.hashes[..]
    } else {
        &[]
    };
    out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in hashes {
        out.extend_from_slice(&h.to_le_bytes());
    }
    share.put_v1_metadata(&mut out);
    for pos in 0..share.len() {
        share.put_v1_at(pos, &mut out);
    }
    out
}

/// A record's `WriteRequest` as byte ranges of its fields (tag and length included), for
/// sinks that forward remote-write 1.0 as stored: framing is then copying, with no second
/// decode of what the connection already decoded and checked.
#[derive(Debug)]
pub struct RawSeries {
    /// The `WriteRequest` bytes.
    pub body: Bytes,
    /// Each `timeseries` field, in series order.
    pub series: Vec<std::ops::Range<usize>>,
    /// Each `metadata` field.
    pub metadata: Vec<std::ops::Range<usize>>,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Splits a `WriteRequest` into its top-level fields (only `timeseries` = 1 and `metadata` =
/// 3, length-delimited, are written into records).
fn split_fields(body: Bytes) -> Result<RawSeries, RecordError> {
    let mut raw = RawSeries {
        body,
        series: Vec::new(),
        metadata: Vec::new(),
    };
    let buf = &raw.body[..];
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = varint(buf, &mut pos).ok_or(RecordError::Truncated("field key"))?;
        let len = varint(buf, &mut pos).ok_or(RecordError::Truncated("field length"))?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| pos.checked_add(l))
            .filter(|&e| e <= buf.len())
            .ok_or(RecordError::Truncated("field"))?;
        match key {
            0x0a => raw.series.push(start..end),
            0x1a => raw.metadata.push(start..end),
            other => return Err(RecordError::Field(other)),
        }
        pos = end;
    }
    Ok(raw)
}

/// A record read back.
#[derive(Debug)]
pub struct Record {
    /// When the gateway accepted (and acknowledged) it, ms since the epoch.
    pub accepted_ms: u64,
    /// The share, tagged already: its `tags` are empty, its labels final.
    pub share: TaggedBatch,
}

static EMPTY: LazyLock<Arc<protocols::Batch>> =
    LazyLock::new(|| Arc::new(protocols::Batch::default()));

static NO_EDITS: LazyLock<Arc<HashMap<u32, Box<[ResolvedEdit]>>>> =
    LazyLock::new(|| Arc::new(HashMap::new()));

/// A share as read back: its labels are final, so it has no edits and no tags to add.
fn read_back(
    tenant: TenantId,
    region: &RegionId,
    batch: Arc<protocols::Batch>,
    hashes: Vec<u64>,
    raw: Option<RawSeries>,
) -> TaggedBatch {
    TaggedBatch {
        tenant,
        region: region.clone(),
        batch,
        selection: None,
        edits: NO_EDITS.clone(),
        tags: Arc::from(Vec::new()),
        extra: ExtraLabels::new(std::iter::empty::<(&str, &str)>()),
        hashes,
        raw,
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
    if buf.len() < n {
        return Err(RecordError::Truncated(what));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// Reads a record of `region`'s log, decoded.
pub fn decode(payload: Vec<u8>, region: &RegionId) -> Result<Record, RecordError> {
    read(payload, region, false)
}

/// Reads a record of `region`'s log for a sink that forwards remote-write 1.0: the share is
/// raw ([`RawSeries`]) when the record carries identity hashes, decoded otherwise.
pub fn read_raw(payload: Vec<u8>, region: &RegionId) -> Result<Record, RecordError> {
    read(payload, region, true)
}

fn read(payload: Vec<u8>, region: &RegionId, raw: bool) -> Result<Record, RecordError> {
    let payload = Bytes::from(payload);
    let mut buf = &payload[..];
    let version = take(&mut buf, 1, "version")?[0];
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(take(&mut buf, 8, "timestamp")?);
    let accepted_ms = u64::from_le_bytes(word);
    let len = take(&mut buf, 2, "tenant")?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let tenant = std::str::from_utf8(take(&mut buf, len, "tenant")?)
        .map_err(|e| RecordError::Tenant(e.to_string()))?;
    let tenant = TenantId::parse(tenant).map_err(|e| RecordError::Tenant(e.to_string()))?;
    let len = take(&mut buf, 2, "region")?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    let found = take(&mut buf, len, "region")?;
    // Residency: a record is delivered only by the sinks of the region it was written for.
    if found != region.as_str().as_bytes() {
        return Err(RecordError::ForeignRegion {
            found: String::from_utf8_lossy(found).into_owned(),
            log: region.clone(),
        });
    }
    let count = take(&mut buf, 4, "hash count")?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let hash_bytes = take(
        &mut buf,
        count
            .checked_mul(8)
            .ok_or(RecordError::Truncated("hashes"))?,
        "hashes",
    )?;
    let hashes: Vec<u64> = hash_bytes
        .chunks_exact(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    let body = payload.slice(payload.len() - buf.len()..);
    if raw && !hashes.is_empty() {
        let raw = split_fields(body)?;
        if hashes.len() != raw.series.len() {
            return Err(RecordError::Hashes {
                hashes: hashes.len(),
                series: raw.series.len(),
            });
        }
        let share = read_back(tenant, region, EMPTY.clone(), hashes, Some(raw));
        return Ok(Record { accepted_ms, share });
    }
    let batch = decode_message(body, &RECORD_LIMITS)?;
    if !hashes.is_empty() && hashes.len() != batch.series_count() {
        return Err(RecordError::Hashes {
            hashes: hashes.len(),
            series: batch.series_count(),
        });
    }
    let mut share = read_back(tenant, region, Arc::new(batch), hashes, None);
    if share.hashes.is_empty() && share.batch.series_count() > 0 {
        // Written when no sink of the region partitioned; one does now.
        share.compute_hashes();
    }
    Ok(Record { accepted_ms, share })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::frame::tests::share;

    #[test]
    fn a_share_reads_back_with_its_tags_hashes_and_metadata() {
        let original = share(50);
        let payload = encode(&original, 1_700_000_000_123);
        let region = RegionId::parse("eu").unwrap();
        let back = decode(payload.clone(), &region).unwrap();
        assert_eq!(back.accepted_ms, 1_700_000_000_123);
        assert_eq!(back.share.tenant, original.tenant);
        assert_eq!(back.share.hashes, original.hashes);
        assert_eq!(back.share.batch.metadata_count(), 1);
        let owned = |share: &TaggedBatch| -> Vec<Vec<(String, String)>> {
            share
                .series()
                .map(|(_, l)| {
                    l.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .collect()
        };
        let (before, after) = (owned(&original), owned(&back.share));
        assert_eq!(before, after, "stored labels, tags included, survive");
        assert!(after[0].contains(&("tenant".into(), "acme".into())));
        let samples: Vec<f64> = back
            .share
            .batch
            .series()
            .map(|s| s.samples()[0].value)
            .collect();
        assert_eq!(samples, (0..50).map(f64::from).collect::<Vec<_>>());
        // Written again from what was read, the record is the same bytes: no tag is added
        // twice, so a replayed record is stored exactly like a live one.
        assert_eq!(encode(&back.share, 1_700_000_000_123), payload);
    }

    #[test]
    fn a_raw_share_frames_the_same_bytes_as_a_decoded_one() {
        let original = share(40);
        let payload = encode(&original, 7);
        let region = RegionId::parse("eu").unwrap();
        let decoded = decode(payload.clone(), &region).unwrap().share;
        let raw = read_raw(payload.clone(), &region).unwrap().share;
        assert!(raw.raw.is_some() && decoded.raw.is_none());
        assert_eq!(raw.len(), 40);
        assert_eq!(raw.hashes, decoded.hashes);
        assert!(raw.has_metadata());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        decoded.put_v1_metadata(&mut a);
        raw.put_v1_metadata(&mut b);
        for pos in 0..40 {
            decoded.put_v1_at(pos, &mut a);
            raw.put_v1_at(pos, &mut b);
        }
        assert_eq!(a, b);
        assert_eq!(
            encode(&raw, 7),
            payload,
            "a raw share re-encodes to its record"
        );
        // Without hashes (no partitioning sink when written) it is decoded after all.
        let mut unhashed = share(3);
        unhashed.hashes.clear();
        let r = read_raw(encode(&unhashed, 7), &region).unwrap().share;
        assert!(r.raw.is_none());
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_record_is_never_read_as_another_regions() {
        let payload = encode(&share(5), 1);
        for other in ["us", "e", "eu2", "EU", "eu-west"] {
            let region = RegionId::parse(other).unwrap();
            assert!(matches!(
                decode(payload.clone(), &region),
                Err(RecordError::ForeignRegion { .. })
            ));
            assert!(matches!(
                read_raw(payload.clone(), &region),
                Err(RecordError::ForeignRegion { .. })
            ));
        }
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let payload = encode(&share(3), 1);
        let region = RegionId::parse("eu").unwrap();
        for cut in 0..payload.len() {
            // Every prefix either fails or (cut at a field boundary) decodes fewer series.
            if let Ok(r) = decode(payload[..cut].to_vec(), &region) {
                assert!(r.share.batch.series_count() < 3);
            }
        }
        for cut in 0..payload.len() {
            if let Ok(r) = read_raw(payload[..cut].to_vec(), &region) {
                assert!(r.share.len() < 3);
            }
        }
        let mut bad = payload.clone();
        bad[0] = 9;
        assert!(matches!(decode(bad, &region), Err(RecordError::Version(9))));
    }
}

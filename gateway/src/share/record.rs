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
use protocols::remote_write::v1::{decode_message_with_names, ExtraLabels, LabelNames};
use protocols::{DecodeError, DecodeLimits, SeriesRef, METRIC_NAME_LABEL};
use residency_rules::{RegionId, TenantId};

use super::{output_labels, MergeSorted, ResolvedEdit, TaggedBatch};

/// The largest payload one record may hold: the write-ahead log refuses (and on reading
/// takes for corruption) anything longer.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// The first bytes of a payload that name its owner: the record header (13 bytes) and the
/// longest tenant id (150 bytes), so that opening a log reads a little of each record rather
/// than all of it (see [`tenant_of`]).
pub const OWNER_PEEK_BYTES: usize = 256;

const VERSION: u8 = 1;

/// Bytes in front of the tenant id: version and acceptance time.
const TENANT_AT: usize = 1 + 8;

/// What a record may hold: the one set of rules both for the pipeline, which refuses (400)
/// what breaks them before it appends, and for the decoder a sink reads the record with. So
/// nothing acknowledged is unreadable to its own sinks; [`encode_checked`] and [`decode`]
/// both use these, and a property test holds them to it.
///
/// Label names: any non-empty UTF-8 ([`LabelNames::Utf8`]). Clients' names are checked on
/// the way in by their protocol (remote-write: `[a-zA-Z_][a-zA-Z0-9_]*`; OTLP
/// `underscore_escaping_with_suffixes` produces only such names); only OTLP `no_translation`
/// stores other names, as `docs/otlp.md` promises and Prometheus 3 accepts. Refusing them in
/// the record instead would break that promise for every OTLP sender using dotted names.
///
/// The sizes are fixed rather than derived from `limits:` because the decoder runs where no
/// config is at hand (feeders, `tail`); config load refuses `limits:` that would let a
/// client's series past them (see [`RECORD_TAG_ROOM`]). They are far above any sane client
/// limit: 4096 labels (Prometheus caps nothing, Mimir defaults to 30), 64 KiB names, 1 MiB
/// values, and the log's own record bound for the message.
pub const RULES: DecodeLimits = DecodeLimits {
    max_compressed_bytes: usize::MAX,
    max_decompressed_bytes: MAX_RECORD_BYTES,
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

/// The label names records accept (see [`RULES`]).
pub const NAMES: LabelNames = LabelNames::Utf8;

/// Room config validation keeps between a client's limits and [`RULES`] for what the
/// gateway adds: labels for its tags (tenant, region, a few policy tags) and bytes for
/// `exported_` prefixes on client labels named like a tag. Beyond it the pipeline still
/// refuses the series rather than storing what cannot be read back.
pub const RECORD_TAG_ROOM: usize = 64;

/// Why a share could not be stored: each names the series (by index in the request and its
/// labels) and the limit, because the message goes back to the client in a 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unstorable {
    /// A series' labels as stored (after residency edits, with the gateway's tags) break
    /// [`RULES`].
    #[error("{series}: {problem}")]
    Labels {
        /// Which series.
        series: String,
        /// What is wrong.
        problem: LabelProblem,
    },
    /// An exemplar's labels break [`RULES`].
    #[error("{series}: exemplar {exemplar}: {problem}")]
    Exemplar {
        /// Which series.
        series: String,
        /// Index of the exemplar in the series.
        exemplar: usize,
        /// What is wrong.
        problem: LabelProblem,
    },
    /// One series encodes larger than the log or a sink of the region can take in one
    /// record or message.
    #[error("{series}: encoded as {bytes} bytes, over the limit of {limit} bytes of {what}")]
    SeriesTooLarge {
        /// Which series.
        series: String,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// Whose limit it is.
        what: String,
    },
    /// The share as a whole is larger than one record of the log may be.
    #[error("the request encodes to a record of {bytes} bytes, over the write-ahead log's limit of {limit} bytes; send fewer series per request")]
    RecordTooLarge {
        /// The record's size.
        bytes: usize,
        /// [`MAX_RECORD_BYTES`].
        limit: usize,
    },
}

impl Unstorable {
    /// Whether it is about size (413) rather than content (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Unstorable::RecordTooLarge { .. })
    }
}

/// What is wrong with one label set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelProblem {
    /// A name longer than [`RULES`] allows.
    #[error("label name {name:?} is {len} bytes, over the limit of {limit} bytes")]
    NameTooLong {
        /// The name (cut short).
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A value longer than [`RULES`] allows.
    #[error("value of label {name:?} is {len} bytes, over the limit of {limit} bytes")]
    ValueTooLong {
        /// The label's name (cut short).
        name: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More labels than [`RULES`] allow, the gateway's tags included.
    #[error("{count} labels with the gateway's tags, over the limit of {limit}")]
    TooMany {
        /// Labels as stored.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An empty label name.
    #[error("a label has an empty name")]
    EmptyName,
    /// Two labels of one name.
    #[error("label name {name:?} appears twice")]
    Duplicate {
        /// The name (cut short).
        name: String,
    },
    /// No `__name__` left (a residency edit removed it).
    #[error("no __name__ label as stored (a residency edit removed it)")]
    NoMetricName,
}

/// Longest name or value quoted back in an error.
const QUOTE_CHARS: usize = 64;
/// Labels of a series quoted back in an error.
const QUOTE_LABELS: usize = 4;

fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// `series 3 {__name__="up", job="api", ...}`: the series' index in the request and its first
/// labels, cut short.
fn describe<'a>(index: u32, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = format!("series {index} {{");
    for (i, (k, v)) in labels.enumerate() {
        if i == QUOTE_LABELS {
            out.push_str(", ...");
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!("{}={:?}", quote(k), quote(v)));
    }
    out.push('}');
    out
}

/// Checks one label set, sorted by name, against [`RULES`] as the decoder applies them (an
/// empty value is an absent label). `metric_name`: whether `__name__` is required.
fn check_labels<'a>(
    labels: impl Iterator<Item = (&'a str, &'a str)>,
    metric_name: bool,
) -> Result<(), LabelProblem> {
    let mut count = 0usize;
    let mut prev: Option<&str> = None;
    let mut named = false;
    for (name, value) in labels {
        if value.is_empty() {
            continue;
        }
        count += 1;
        if name.is_empty() {
            return Err(LabelProblem::EmptyName);
        }
        if name.len() > RULES.max_label_name_bytes {
            return Err(LabelProblem::NameTooLong {
                name: quote(name),
                len: name.len(),
                limit: RULES.max_label_name_bytes,
            });
        }
        if value.len() > RULES.max_label_value_bytes {
            return Err(LabelProblem::ValueTooLong {
                name: quote(name),
                len: value.len(),
                limit: RULES.max_label_value_bytes,
            });
        }
        if prev == Some(name) {
            return Err(LabelProblem::Duplicate { name: quote(name) });
        }
        named |= name == METRIC_NAME_LABEL;
        prev = Some(name);
    }
    if count > RULES.max_labels_per_series {
        return Err(LabelProblem::TooMany {
            count,
            limit: RULES.max_labels_per_series,
        });
    }
    if metric_name && !named {
        return Err(LabelProblem::NoMetricName);
    }
    Ok(())
}

/// Checks the series at batch index `index` of a live share as it will be stored.
fn check_series(share: &TaggedBatch, index: u32, series: &SeriesRef<'_>) -> Result<(), Unstorable> {
    let edits = share.edits_of(index);
    let result = if edits.is_empty() {
        // The common case streams the client's labels merged with the tags, as the encoder
        // does; a client label named like a tag is renamed, which only the long way knows.
        let clash = std::cell::Cell::new(false);
        let merged = MergeSorted {
            client: series.labels().iter().peekable(),
            tags: share.tags.iter().peekable(),
            clash: &clash,
        };
        let r = check_labels(merged, true);
        if clash.get() {
            None
        } else {
            Some(r)
        }
    } else {
        None
    };
    let result = match result {
        Some(r) => r,
        None => {
            let labels = output_labels(series, edits, &share.tags);
            check_labels(labels.iter().map(|(k, v)| (k.as_ref(), *v)), true)
        }
    };
    let stored = || {
        let labels = output_labels(series, edits, &share.tags);
        describe(index, labels.iter().map(|(k, v)| (k.as_ref(), *v)))
    };
    if let Err(problem) = result {
        return Err(Unstorable::Labels {
            series: stored(),
            problem,
        });
    }
    for (i, ex) in series.exemplars().enumerate() {
        if let Err(problem) = check_labels(ex.labels().iter(), false) {
            return Err(Unstorable::Exemplar {
                series: stored(),
                exemplar: i,
                problem,
            });
        }
    }
    Ok(())
}

/// The tenant a record belongs to, from its header: how the log accounts each tenant's share
/// of it (`durability.max_bytes_per_tenant`) without knowing the record format. Sees only
/// the first [`OWNER_PEEK_BYTES`] of a payload, which hold the longest tenant id.
pub fn tenant_of(payload: &[u8]) -> Option<&[u8]> {
    let len = payload.get(TENANT_AT..TENANT_AT + 2)?;
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    payload.get(TENANT_AT + 2..TENANT_AT + 2 + len)
}

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

/// Encodes a live `share` as a record accepted at `accepted_ms`, refusing what [`RULES`]
/// would not read back and any series larger than `max_series_bytes` (the smallest message
/// a sink of the region takes, and the log's record bound).
pub fn encode_checked(
    share: &TaggedBatch,
    accepted_ms: u64,
    max_series_bytes: usize,
) -> Result<Vec<u8>, Unstorable> {
    let mut out = header(share, accepted_ms);
    share.put_v1_metadata(&mut out);
    put_series_checked(share, max_series_bytes, &mut out)?;
    if out.len() > MAX_RECORD_BYTES {
        return Err(Unstorable::RecordTooLarge {
            bytes: out.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(out)
}

/// Checks a live `share` as [`encode_checked`] does, for the modes that hand it to the sinks
/// without a log (the sinks then encode it the same way).
pub fn check(share: &TaggedBatch, max_series_bytes: usize) -> Result<(), Unstorable> {
    let mut scratch = Vec::new();
    put_series_checked(share, max_series_bytes, &mut scratch)
}

fn put_series_checked(
    share: &TaggedBatch,
    max_series_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), Unstorable> {
    let max_series_bytes = max_series_bytes.min(MAX_RECORD_BYTES);
    for pos in 0..share.len() {
        let index = share.series_index(pos);
        let Some(series) = share.batch.series_at(index as usize) else {
            continue;
        };
        check_series(share, index, &series)?;
        let mark = out.len();
        share.put_v1_series(index, &series, out);
        let bytes = out.len() - mark;
        if bytes > max_series_bytes {
            let labels = output_labels(&series, share.edits_of(index), &share.tags);
            return Err(Unstorable::SeriesTooLarge {
                series: describe(index, labels.iter().map(|(k, v)| (k.as_ref(), *v))),
                bytes,
                limit: max_series_bytes,
                what: if max_series_bytes == MAX_RECORD_BYTES {
                    "one write-ahead log record".to_string()
                } else {
                    format!("one message of a sink of region {}", share.region)
                },
            });
        }
    }
    Ok(())
}

fn header(share: &TaggedBatch, accepted_ms: u64) -> Vec<u8> {
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
    out
}

/// Encodes `share` as a record accepted at `accepted_ms`, unchecked: for shares read back
/// from a record (already checked when first written) and tests.
pub fn encode(share: &TaggedBatch, accepted_ms: u64) -> Vec<u8> {
    let mut out = header(share, accepted_ms);
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

/// Splits a `WriteRequest` into its top-level fields (only `timeseries` = 1 and `metadata` =
/// 3, length-delimited, are written into records).
fn split_fields(body: Bytes) -> Result<RawSeries, RecordError> {
    let mut raw = RawSeries {
        body,
        series: Vec::new(),
        metadata: Vec::new(),
    };
    for field in protocols::wire::fields(&raw.body) {
        let field = field.map_err(|_| RecordError::Truncated("field"))?;
        match (field.number, field.wire_type) {
            (1, protocols::wire::LEN) => raw.series.push(field.span),
            (3, protocols::wire::LEN) => raw.metadata.push(field.span),
            (n, t) => return Err(RecordError::Field((u64::from(n) << 3) | u64::from(t))),
        }
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
    let batch = decode_message_with_names(body, &RULES, NAMES)?;
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
    use crate::share::testing::share;

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

    /// A live share of one series with `labels` (and the usual tags), as the pipeline builds
    /// it, and with `edits`.
    fn live(labels: &[(&str, &str)], edits: Vec<ResolvedEdit>) -> TaggedBatch {
        let mut builder = protocols::BatchBuilder::new(DecodeLimits {
            max_label_name_bytes: usize::MAX,
            max_label_value_bytes: usize::MAX,
            ..DecodeLimits::new_default()
        });
        for (k, v) in labels {
            builder.label(k, v).unwrap();
        }
        builder.sample(1.0, 1).unwrap();
        builder.finish_series().unwrap();
        let mut share = share(1);
        share.batch = Arc::new(builder.build());
        share.hashes.clear();
        if !edits.is_empty() {
            share.edits = Arc::new(HashMap::from([(0, edits.into_boxed_slice())]));
        }
        share
    }

    #[test]
    fn a_label_past_the_record_limit_is_refused_naming_series_and_label() {
        let long = "v".repeat(RULES.max_label_value_bytes + 1);
        let share = live(&[("__name__", "up"), ("big", &long)], vec![]);
        let err = encode_checked(&share, 1, usize::MAX).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("series 0 {__name__=\"up\", big=\"vvv"),
            "{msg}"
        );
        assert!(
            msg.contains("value of label \"big\" is 1048577 bytes, over the limit of 1048576"),
            "{msg}"
        );
        // At the limit it is stored and read back.
        let at = "v".repeat(RULES.max_label_value_bytes);
        let share = live(&[("__name__", "up"), ("big", &at)], vec![]);
        let payload = encode_checked(&share, 1, usize::MAX).unwrap();
        let back = decode(payload, &RegionId::parse("eu").unwrap()).unwrap();
        assert_eq!(
            back.share.batch.series_at(0).unwrap().labels().get("big"),
            Some(&at[..])
        );
    }

    #[test]
    fn a_series_an_edit_left_without_metric_name_is_refused() {
        let drop_name = ResolvedEdit {
            index: 0,
            replacement: None,
        };
        let share = live(&[("__name__", "up"), ("job", "a")], vec![drop_name]);
        let err = encode_checked(&share, 1, usize::MAX).unwrap_err();
        assert_eq!(
            err,
            Unstorable::Labels {
                series: "series 0 {job=\"a\", region=\"eu\", tenant=\"acme\"}".into(),
                problem: LabelProblem::NoMetricName,
            }
        );
        assert!(
            check(&share, usize::MAX).is_err(),
            "the same rule without a log"
        );
    }

    #[test]
    fn utf8_label_names_are_stored_and_read_back() {
        let share = live(
            &[("__name__", "http.server.duration"), ("http.method", "GET")],
            vec![],
        );
        let payload = encode_checked(&share, 1, usize::MAX).unwrap();
        let back = decode(payload, &RegionId::parse("eu").unwrap()).unwrap();
        let s = back.share.batch.series_at(0).unwrap();
        assert_eq!(s.labels().get("http.method"), Some("GET"));
        assert_eq!(s.metric_name(), "http.server.duration");
    }

    #[test]
    fn a_series_larger_than_a_sink_message_is_refused_with_the_limit() {
        let share = live(&[("__name__", "up"), ("pad", &"x".repeat(2000))], vec![]);
        let err = encode_checked(&share, 1, 1000).unwrap_err();
        let Unstorable::SeriesTooLarge { bytes, limit, .. } = &err else {
            panic!("expected SeriesTooLarge, got {err}");
        };
        assert_eq!(*limit, 1000);
        assert!(*bytes > 2000);
        assert!(err.to_string().contains("a sink of region eu"), "{err}");
        assert!(encode_checked(&share, 1, 4000).is_ok());
    }

    #[test]
    fn the_tenant_is_read_from_the_record_header() {
        let payload = encode(&share(2), 1);
        assert_eq!(tenant_of(&payload), Some(&b"acme"[..]));
        assert_eq!(
            tenant_of(&payload[..OWNER_PEEK_BYTES.min(payload.len())]),
            Some(&b"acme"[..])
        );
        assert_eq!(tenant_of(&payload[..11]), None, "cut inside the header");
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

//! Zero-copy decoder for `prometheus.WriteRequest`.

use bytes::Bytes;

use crate::error::Element;
use crate::limits::{too_many, Allowance};
use crate::model::{
    Batch, BucketSpan, ExemplarEntry, Histogram, HistogramCount, Label, MetadataEntry, MetricType,
    ResetHint, Sample, SeriesEntry, Span,
};
use crate::text::{cmp_names, StrRange};
use crate::wire::{zigzag32, zigzag64, Reader, FIXED64, LEN, VARINT};
use crate::{snappy, DecodeError, DecodeLimits, METRIC_NAME_LABEL};

/// Decodes a snappy-compressed remote-write 1.0 body.
pub fn decode(body: &[u8], limits: &DecodeLimits) -> Result<Batch, DecodeError> {
    let buf = snappy::decompress(body, limits)?;
    let capacity = buf.capacity();
    let mut batch = decode_message(Bytes::from(buf), limits)?;
    batch.buf_capacity = capacity;
    Ok(batch)
}

/// Decodes an uncompressed `WriteRequest` message.
pub fn decode_message(buf: Bytes, limits: &DecodeLimits) -> Result<Batch, DecodeError> {
    let mut batch = Batch::default();
    decode_message_into(buf, limits, &mut batch)?;
    Ok(batch)
}

/// Which label names a decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LabelNames {
    /// The remote-write 1.0 spec's `[a-zA-Z_][a-zA-Z0-9_]*`: what a client must send.
    #[default]
    Legacy,
    /// Any non-empty UTF-8 name (Prometheus 3's UTF-8 names): for messages the gateway wrote
    /// itself from data it accepted under a mode that keeps names as sent (OTLP
    /// `no_translation`), so reading them back refuses nothing that was acknowledged.
    Utf8,
}

impl LabelNames {
    #[inline]
    fn accepts(self, name: &[u8]) -> bool {
        match self {
            LabelNames::Legacy => valid_label_name(name),
            LabelNames::Utf8 => !name.is_empty() && std::str::from_utf8(name).is_ok(),
        }
    }
}

/// Decodes an uncompressed `WriteRequest` whose label names follow `names` (see
/// [`LabelNames`]); otherwise as [`decode_message`].
pub fn decode_message_with_names(
    buf: Bytes,
    limits: &DecodeLimits,
    names: LabelNames,
) -> Result<Batch, DecodeError> {
    let mut batch = Batch::default();
    decode_into(buf, limits, names, &mut batch)?;
    Ok(batch)
}

/// Decodes an uncompressed `WriteRequest` into `batch`, reusing its column capacity. On error
/// the batch holds a partial decode and must be cleared before use.
pub fn decode_message_into(
    buf: Bytes,
    limits: &DecodeLimits,
    batch: &mut Batch,
) -> Result<(), DecodeError> {
    decode_into(buf, limits, LabelNames::Legacy, batch)
}

fn decode_into(
    buf: Bytes,
    limits: &DecodeLimits,
    names: LabelNames,
    batch: &mut Batch,
) -> Result<(), DecodeError> {
    batch.clear();
    if buf.len() > limits.max_decompressed_bytes {
        return Err(DecodeError::DecompressedTooLarge {
            claimed: buf.len() as u64,
            limit: limits.max_decompressed_bytes,
        });
    }
    batch.buf = buf;
    // Borrow the buffer separately from the columns so the decoder can push into them.
    let buf = batch.buf.clone();
    let mut buckets = Allowance::new(Element::HistogramBuckets, limits.max_histogram_buckets);
    let mut r = Reader::new(&buf, 0, buf.len());
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delimited("timeseries")?;
                if batch.series.len() >= limits.max_series {
                    return Err(DecodeError::TooManySeries {
                        limit: limits.max_series,
                    });
                }
                decode_series(&buf, s, e, limits, names, &mut buckets, batch)?;
            }
            (3, LEN) => {
                let (s, e) = r.len_delimited("metadata")?;
                if batch.metadata.len() >= limits.max_series {
                    return Err(DecodeError::TooManySeries {
                        limit: limits.max_series,
                    });
                }
                let idx = batch.metadata.len();
                let m = decode_metadata(&buf, s, e, idx)?;
                batch.metadata.push(m);
            }
            (1 | 3, _) => return Err(wire_type("WriteRequest", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok(())
}

pub(crate) fn wire_type(message: &'static str, field: u32, wire_type: u8) -> DecodeError {
    DecodeError::WireType {
        message,
        field,
        wire_type,
    }
}

/// Whether `name` is a label name of the Prometheus data model: `[a-zA-Z_][a-zA-Z0-9_]*`.
///
/// Checked eight bytes at a time (SWAR): a byte-at-a-time table lookup was the single
/// hottest loop of the decoder in the profile (BENCHMARKS.md).
#[inline]
pub(crate) fn valid_label_name(name: &[u8]) -> bool {
    match name.first() {
        Some(c) if !c.is_ascii_digit() => {
            let mut chunks = name.chunks_exact(8);
            for chunk in &mut chunks {
                if !all_name_chars(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))) {
                    return false;
                }
            }
            // The tail, without copying it into a padded buffer (a memcpy call and a stalled
            // load that cost more than the check): a name of 8 bytes or more checks its last
            // 8 again; a shorter one is read with overlapping loads.
            name.len().is_multiple_of(8)
                || all_name_chars(if name.len() > 8 {
                    u64::from_le_bytes(name[name.len() - 8..].try_into().unwrap_or([0; 8]))
                } else {
                    word_of_short(name)
                })
        }
        _ => false,
    }
}

/// The bytes of a 1..=7 byte slice as one little-endian word, each position holding one of
/// the slice's bytes (some twice): for checks that hold for every byte alike.
#[inline(always)]
fn word_of_short(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(lo) | u64::from(hi) << 32
    } else {
        // n in 1..=3: positions 0, n/2 and n-1 cover every byte; the rest repeat byte 0.
        let (a, m, z) = (u64::from(b[0]), u64::from(b[n / 2]), u64::from(b[n - 1]));
        ((a * ONES) & 0xffff_ffff_ff00_0000) | a | (m << 8) | (z << 16)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` (all bytes < 0x80) set where `m < byte < n`; exact per
/// byte for `m <= 127` and `n <= 128`, since no byte's arithmetic can borrow or carry into
/// its neighbour.
#[inline(always)]
const fn bytes_between(x: u64, m: u64, n: u64) -> u64 {
    let low7 = x & (ONES * 127);
    ((ONES * (127 + n) - low7) & !x & (low7 + ONES * (127 - m))) & HIGH
}

/// Whether all eight bytes of `x` are in `[0-9A-Za-z_]`.
#[inline(always)]
const fn all_name_chars(x: u64) -> bool {
    if x & HIGH != 0 {
        return false;
    }
    let digits = bytes_between(x, b'0' as u64 - 1, b'9' as u64 + 1);
    // Setting bit 5 folds exactly 'A'..'Z' onto 'a'..'z' among the bytes below 0x80.
    let letters = bytes_between(x | (ONES * 0x20), b'a' as u64 - 1, b'z' as u64 + 1);
    let underscore = bytes_between(x, b'_' as u64 - 1, b'_' as u64 + 1);
    digits | letters | underscore == HIGH
}

fn decode_series(
    buf: &[u8],
    start: usize,
    end: usize,
    limits: &DecodeLimits,
    names: LabelNames,
    buckets: &mut Allowance,
    batch: &mut Batch,
) -> Result<(), DecodeError> {
    let idx = batch.series.len();
    let labels_start = batch.labels.len();
    let samples_start = batch.samples.len();
    let hist_start = batch.histograms.len();
    let ex_start = batch.exemplars.len();
    let mut dropped_empty = false;
    // Whether the label fields come first, each in the canonical form (see
    // [`canonical_label`]): then their byte positions follow from the labels themselves and an
    // encoder may splice labels in between them (`SeriesEntry::spliceable`).
    let mut canonical = true;
    let mut seen_other_field = false;
    let fast_end = leading_canonical_labels(buf, start, end, limits, names, &mut batch.labels);
    let mut r = Reader::new(buf, fast_end, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        if field != 1 {
            seen_other_field = true;
        }
        match (field, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delimited("label")?;
                if batch.labels.len() - labels_start >= limits.max_labels_per_series {
                    return Err(DecodeError::TooManyLabels {
                        series: idx,
                        limit: limits.max_labels_per_series,
                    });
                }
                canonical &= !seen_other_field;
                match decode_label(buf, s, e, idx, limits, names, &mut canonical)? {
                    Some(label) => batch.labels.push(label),
                    None => dropped_empty = true,
                }
            }
            (2, LEN) => {
                let (s, e) = r.len_delimited("sample")?;
                if batch.samples.len() >= limits.max_samples {
                    return Err(too_many(Element::Samples, limits.max_samples));
                }
                batch.samples.push(decode_sample(buf, s, e)?);
            }
            (3, LEN) => {
                let (s, e) = r.len_delimited("exemplar")?;
                if batch.exemplars.len() >= limits.max_exemplars {
                    return Err(too_many(Element::Exemplars, limits.max_exemplars));
                }
                let ex =
                    decode_exemplar(buf, s, e, idx, limits, names, &mut batch.exemplar_labels)?;
                batch.exemplars.push(ex);
            }
            (4, LEN) => {
                let (s, e) = r.len_delimited("histogram")?;
                if batch.histograms.len() >= limits.max_histograms {
                    return Err(too_many(Element::Histograms, limits.max_histograms));
                }
                batch.histograms.push(decode_histogram(buf, s, e, buckets)?);
            }
            (1..=4, _) => return Err(wire_type("TimeSeries", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    let sorted = sort_and_check(buf, &mut batch.labels[labels_start..], idx)?;
    let labels = &batch.labels[labels_start..];
    let has_name = labels
        .iter()
        .any(|l| &buf[l.name.start as usize..l.name.end as usize] == METRIC_NAME_LABEL.as_bytes());
    if !has_name {
        return Err(DecodeError::MissingMetricName { series: idx });
    }
    batch.series.push(SeriesEntry {
        labels: Span::at(labels_start, batch.labels.len()),
        samples: Span::at(samples_start, batch.samples.len()),
        histograms: Span::at(hist_start, batch.histograms.len()),
        exemplars: Span::at(ex_start, batch.exemplars.len()),
        raw: Span::at(start, end),
        spliceable: sorted && !dropped_empty && canonical,
    });
    Ok(())
}

/// The common case of a series' labels, decoded in one tight pass: label fields that lead
/// the series, each canonical (see [`canonical_label`]), with a non-empty value and a valid
/// name within the limits. Pushes them and returns where the generic field loop must go on;
/// it stops at the first label that is anything else, so every error (and every unusual but
/// valid encoding) is still found and reported by the generic path, which re-reads that label.
#[inline]
fn leading_canonical_labels(
    buf: &[u8],
    start: usize,
    end: usize,
    limits: &DecodeLimits,
    names: LabelNames,
    labels: &mut Vec<Label>,
) -> usize {
    let first = labels.len();
    let max_names = limits.max_label_name_bytes.min(127);
    let max_values = limits.max_label_value_bytes.min(127);
    let mut pos = start;
    while labels.len() - first < limits.max_labels_per_series {
        // 0a <len> | 0a <n> name 12 <v> value
        let Some(&[key, len, name_key, n]) = buf.get(pos..pos + 4).and_then(|b| b.first_chunk())
        else {
            break;
        };
        let (len, n) = (len as usize, n as usize);
        if key != 0x0a || len >= 0x80 || name_key != 0x0a || n == 0 || n > max_names {
            break;
        }
        let field_end = pos + 2 + len;
        let name_start = pos + 4;
        let value_key = name_start + n;
        if field_end > end || value_key + 2 > field_end || buf[value_key] != 0x12 {
            break;
        }
        let v = buf[value_key + 1] as usize;
        if v == 0 || v > max_values || value_key + 2 + v != field_end {
            break;
        }
        if !names.accepts(&buf[name_start..value_key]) {
            break;
        }
        let (Some(name), Some(value)) = (
            StrRange::validate(buf, name_start, value_key),
            StrRange::validate(buf, value_key + 2, field_end),
        ) else {
            break;
        };
        labels.push(Label { name, value });
        pos = field_end;
    }
    pos
}

/// Sorts labels by name if the sender did not, then rejects duplicates. Returns whether the
/// labels were already sorted.
pub(crate) fn sort_and_check(
    buf: &[u8],
    labels: &mut [Label],
    series: usize,
) -> Result<bool, DecodeError> {
    let name = |l: &Label| &buf[l.name.start as usize..l.name.end as usize];
    let mut sorted = true;
    for w in labels.windows(2) {
        match cmp_names(name(&w[0]), name(&w[1])) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                return Err(DecodeError::DuplicateLabelName {
                    series,
                    name: String::from_utf8_lossy(name(&w[0])).into_owned(),
                })
            }
            std::cmp::Ordering::Greater => sorted = false,
        }
    }
    if !sorted {
        labels.sort_unstable_by(|a, b| name(a).cmp(name(b)));
        for w in labels.windows(2) {
            if name(&w[0]) == name(&w[1]) {
                return Err(DecodeError::DuplicateLabelName {
                    series,
                    name: String::from_utf8_lossy(name(&w[0])).into_owned(),
                });
            }
        }
    }
    Ok(sorted)
}

/// `(start, end)` of a field's bytes in the buffer.
type ByteRange = (usize, usize);

/// The encoding every mainstream sender produces for a label with name and value under 128
/// bytes: `0a <n> name 12 <m> value`. Recognising it directly skips the generic field loop,
/// which was most of the decode time in the profile. `None` means "use the generic path",
/// never "invalid".
#[inline(always)]
fn canonical_label(buf: &[u8], start: usize, end: usize) -> Option<(ByteRange, ByteRange)> {
    let b = buf.get(start..end)?;
    if b.len() < 4 || b[0] != 0x0a || b[1] >= 0x80 {
        return None;
    }
    let name_end = 2 + b[1] as usize;
    if b.len() < name_end + 2 || b[name_end] != 0x12 || b[name_end + 1] >= 0x80 {
        return None;
    }
    let value_end = name_end + 2 + b[name_end + 1] as usize;
    if value_end != b.len() {
        return None;
    }
    Some((
        (start + 2, start + name_end),
        (start + name_end + 2, start + value_end),
    ))
}

/// The generic `Label` field loop: any field order, unknown fields skipped, last value wins.
fn label_fields(
    buf: &[u8],
    start: usize,
    end: usize,
) -> Result<(ByteRange, ByteRange), DecodeError> {
    let mut name = (start, start);
    let mut value = (start, start);
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => name = r.len_delimited("label name")?,
            (2, LEN) => value = r.len_delimited("label value")?,
            (1 | 2, _) => return Err(wire_type("Label", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok((name, value))
}

/// Decodes one `Label`; `None` for an empty value (same as absent in the data model). Clears
/// `canonical` when the label is not in the canonical encoding.
#[inline]
fn decode_label(
    buf: &[u8],
    start: usize,
    end: usize,
    series: usize,
    limits: &DecodeLimits,
    names: LabelNames,
    canonical: &mut bool,
) -> Result<Option<Label>, DecodeError> {
    let (name, value) = match canonical_label(buf, start, end) {
        Some(ranges) => ranges,
        None => {
            *canonical = false;
            label_fields(buf, start, end)?
        }
    };
    let name_bytes = &buf[name.0..name.1];
    if name_bytes.len() > limits.max_label_name_bytes {
        return Err(DecodeError::LabelNameTooLong {
            series,
            len: name_bytes.len(),
            limit: limits.max_label_name_bytes,
        });
    }
    if !names.accepts(name_bytes) {
        if std::str::from_utf8(name_bytes).is_err() {
            return Err(DecodeError::InvalidUtf8 {
                series,
                what: "label name",
            });
        }
        return Err(DecodeError::InvalidLabelName {
            series,
            name: String::from_utf8_lossy(name_bytes).into_owned(),
        });
    }
    let value_len = value.1 - value.0;
    if value_len > limits.max_label_value_bytes {
        return Err(DecodeError::LabelValueTooLong {
            series,
            name: String::from_utf8_lossy(name_bytes).into_owned(),
            len: value_len,
            limit: limits.max_label_value_bytes,
        });
    }
    // `let else`, not `ok_or`: an eagerly built error was dropped per label (profiled).
    let Some(value) = StrRange::validate(buf, value.0, value.1) else {
        return Err(DecodeError::InvalidUtf8 {
            series,
            what: "label value",
        });
    };
    if value_len == 0 {
        return Ok(None);
    }
    // The name passed its charset check, so it is valid UTF-8.
    let name = match StrRange::validate(buf, name.0, name.1) {
        Some(name) => name,
        None => {
            return Err(DecodeError::InvalidUtf8 {
                series,
                what: "label name",
            })
        }
    };
    Ok(Some(Label { name, value }))
}

#[inline]
pub(crate) fn decode_sample(buf: &[u8], start: usize, end: usize) -> Result<Sample, DecodeError> {
    let mut s = Sample {
        value: 0.0,
        timestamp_ms: 0,
    };
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, FIXED64) => s.value = r.f64()?,
            (2, VARINT) => s.timestamp_ms = r.varint()? as i64,
            (1 | 2, _) => return Err(wire_type("Sample", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok(s)
}

fn decode_exemplar(
    buf: &[u8],
    start: usize,
    end: usize,
    series: usize,
    limits: &DecodeLimits,
    names: LabelNames,
    labels: &mut Vec<Label>,
) -> Result<ExemplarEntry, DecodeError> {
    let labels_start = labels.len();
    let mut ex = ExemplarEntry {
        labels: Span::default(),
        value: 0.0,
        timestamp_ms: 0,
    };
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delimited("exemplar label")?;
                if labels.len() - labels_start >= limits.max_labels_per_series {
                    return Err(DecodeError::TooManyLabels {
                        series,
                        limit: limits.max_labels_per_series,
                    });
                }
                if let Some(l) = decode_label(buf, s, e, series, limits, names, &mut true)? {
                    labels.push(l);
                }
            }
            (2, FIXED64) => ex.value = r.f64()?,
            (3, VARINT) => ex.timestamp_ms = r.varint()? as i64,
            (1..=3, _) => return Err(wire_type("Exemplar", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    sort_and_check(buf, &mut labels[labels_start..], series)?;
    ex.labels = Span::at(labels_start, labels.len());
    Ok(ex)
}

fn decode_span(buf: &[u8], start: usize, end: usize) -> Result<BucketSpan, DecodeError> {
    let mut span = BucketSpan::default();
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, VARINT) => span.offset = zigzag32(r.varint()?),
            (2, VARINT) => span.length = r.varint()? as u32,
            (1 | 2, _) => return Err(wire_type("BucketSpan", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok(span)
}

/// Reads a repeated sint64, packed (LEN) or not (VARINT); protobuf parsers must accept both.
/// Each value is a bucket taken from `buckets` before it is stored.
fn read_sint64s(
    r: &mut Reader<'_>,
    buf: &[u8],
    wt: u8,
    buckets: &mut Allowance,
    out: &mut Vec<i64>,
) -> Result<(), DecodeError> {
    if wt == VARINT {
        let v = zigzag64(r.varint()?);
        buckets.take(1)?;
        out.push(v);
        return Ok(());
    }
    let (s, e) = r.len_delimited("packed sint64")?;
    let mut p = Reader::new(buf, s, e);
    while !p.is_empty() {
        let v = zigzag64(p.varint()?);
        buckets.take(1)?;
        out.push(v);
    }
    Ok(())
}

/// Reads a repeated double, packed (LEN) or not (FIXED64), taking each from `buckets`.
fn read_doubles(
    r: &mut Reader<'_>,
    buf: &[u8],
    wt: u8,
    buckets: &mut Allowance,
    out: &mut Vec<f64>,
) -> Result<(), DecodeError> {
    if wt == FIXED64 {
        let v = r.f64()?;
        buckets.take(1)?;
        out.push(v);
        return Ok(());
    }
    let (s, e) = r.len_delimited("packed double")?;
    if (e - s) % 8 != 0 {
        return Err(DecodeError::Malformed {
            what: "packed double length is not a multiple of 8",
            offset: s,
        });
    }
    buckets.take((e - s) / 8)?;
    out.extend(
        buf[s..e]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks_exact yields 8 bytes"))),
    );
    Ok(())
}

/// Decodes one native histogram, taking every span, delta, count and custom bound from
/// `buckets` (the request's allowance) before storing it.
pub(crate) fn decode_histogram(
    buf: &[u8],
    start: usize,
    end: usize,
    buckets: &mut Allowance,
) -> Result<Histogram, DecodeError> {
    let mut h = Histogram::default();
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, VARINT) => h.count = HistogramCount::Int(r.varint()?),
            (2, FIXED64) => h.count = HistogramCount::Float(r.f64()?),
            (3, FIXED64) => h.sum = r.f64()?,
            (4, VARINT) => h.schema = zigzag32(r.varint()?),
            (5, FIXED64) => h.zero_threshold = r.f64()?,
            (6, VARINT) => h.zero_count = HistogramCount::Int(r.varint()?),
            (7, FIXED64) => h.zero_count = HistogramCount::Float(r.f64()?),
            (8, LEN) => {
                let (s, e) = r.len_delimited("negative span")?;
                let span = decode_span(buf, s, e)?;
                buckets.take(1)?;
                h.negative_spans.push(span);
            }
            (9, VARINT | LEN) => read_sint64s(&mut r, buf, wt, buckets, &mut h.negative_deltas)?,
            (10, FIXED64 | LEN) => read_doubles(&mut r, buf, wt, buckets, &mut h.negative_counts)?,
            (11, LEN) => {
                let (s, e) = r.len_delimited("positive span")?;
                let span = decode_span(buf, s, e)?;
                buckets.take(1)?;
                h.positive_spans.push(span);
            }
            (12, VARINT | LEN) => read_sint64s(&mut r, buf, wt, buckets, &mut h.positive_deltas)?,
            (13, FIXED64 | LEN) => read_doubles(&mut r, buf, wt, buckets, &mut h.positive_counts)?,
            (14, VARINT) => h.reset_hint = ResetHint::from_wire(r.varint()?),
            (15, VARINT) => h.timestamp_ms = r.varint()? as i64,
            (16, FIXED64 | LEN) => read_doubles(&mut r, buf, wt, buckets, &mut h.custom_values)?,
            (1..=16, _) => return Err(wire_type("Histogram", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok(h)
}

fn decode_metadata(
    buf: &[u8],
    start: usize,
    end: usize,
    idx: usize,
) -> Result<MetadataEntry, DecodeError> {
    let mut m = MetadataEntry {
        metric_type: MetricType::Unknown,
        family: StrRange::default(),
        help: StrRange::default(),
        unit: StrRange::default(),
    };
    let text = |(s, e): (usize, usize), what| match StrRange::validate(buf, s, e) {
        Some(r) => Ok(r),
        None => Err(DecodeError::InvalidUtf8 { series: idx, what }),
    };
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, VARINT) => m.metric_type = MetricType::from_wire(r.varint()?),
            (2, LEN) => {
                m.family = text(r.len_delimited("metric family name")?, "metric family name")?
            }
            (4, LEN) => m.help = text(r.len_delimited("help")?, "help")?,
            (5, LEN) => m.unit = text(r.len_delimited("unit")?, "unit")?,
            (1 | 2 | 4 | 5, _) => return Err(wire_type("MetricMetadata", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_bytes, put_message};

    fn label(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        put_message(out, 1, |o| {
            put_bytes(o, 1, name);
            put_bytes(o, 2, value);
        });
    }

    fn request(series: &[&[(&[u8], &[u8])]]) -> Vec<u8> {
        let mut out = Vec::new();
        for labels in series {
            put_message(&mut out, 1, |o| {
                for (n, v) in labels.iter() {
                    label(o, n, v);
                }
            });
        }
        out
    }

    fn decode_plain(msg: Vec<u8>) -> Result<Batch, DecodeError> {
        decode_message(Bytes::from(msg), &DecodeLimits::default())
    }

    #[test]
    fn utf8_names_are_read_only_when_asked_for() {
        let msg = request(&[&[(b"__name__", b"up"), ("http.méthod".as_bytes(), b"GET")]]);
        assert!(matches!(
            decode_plain(msg.clone()),
            Err(DecodeError::InvalidLabelName { series: 0, .. })
        ));
        let limits = DecodeLimits::default();
        let b = decode_message_with_names(Bytes::from(msg), &limits, LabelNames::Utf8).unwrap();
        let s = b.series().next().unwrap();
        assert_eq!(s.labels().get("http.méthod"), Some("GET"));
        for bad in [&b""[..], &b"\xff"[..]] {
            let msg = request(&[&[(b"__name__", b"up"), (bad, b"x")]]);
            assert!(
                decode_message_with_names(Bytes::from(msg), &limits, LabelNames::Utf8).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_duplicate_label_names() {
        let msg = request(&[&[(b"__name__", b"up"), (b"job", b"a"), (b"job", b"b")]]);
        let err = decode_plain(msg).unwrap_err();
        assert_eq!(
            err,
            DecodeError::DuplicateLabelName {
                series: 0,
                name: "job".into()
            }
        );
    }

    #[test]
    fn rejects_duplicates_hidden_by_unsorted_order() {
        let msg = request(&[&[(b"job", b"a"), (b"__name__", b"up"), (b"job", b"b")]]);
        assert!(matches!(
            decode_plain(msg),
            Err(DecodeError::DuplicateLabelName { .. })
        ));
    }

    #[test]
    fn rejects_invalid_utf8_value() {
        let msg = request(&[&[(b"__name__", b"up"), (b"job", b"\xff\xfe")]]);
        assert_eq!(
            decode_plain(msg).unwrap_err(),
            DecodeError::InvalidUtf8 {
                series: 0,
                what: "label value"
            }
        );
    }

    #[test]
    fn rejects_label_name_outside_data_model() {
        for bad in [&b"1abc"[..], b"a-b", b"", b"caf\xc3\xa9"] {
            let msg = request(&[&[(b"__name__", b"up"), (bad, b"x")]]);
            assert!(
                matches!(decode_plain(msg), Err(DecodeError::InvalidLabelName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_series_without_metric_name() {
        let msg = request(&[&[(b"job", b"a")]]);
        assert_eq!(
            decode_plain(msg).unwrap_err(),
            DecodeError::MissingMetricName { series: 0 }
        );
    }

    #[test]
    fn sorts_unsorted_labels_and_marks_them_not_spliceable() {
        let msg = request(&[&[(b"job", b"a"), (b"__name__", b"up")]]);
        let batch = decode_plain(msg).unwrap();
        let s = batch.series().next().unwrap();
        let labels: Vec<_> = s.labels().iter().collect();
        assert_eq!(labels, vec![("__name__", "up"), ("job", "a")]);
        assert!(s.spliceable_bytes().is_none());
    }

    #[test]
    fn drops_empty_label_values() {
        let msg = request(&[&[(b"__name__", b"up"), (b"job", b"")]]);
        let batch = decode_plain(msg).unwrap();
        let s = batch.series().next().unwrap();
        assert_eq!(s.labels().len(), 1);
        assert!(s.spliceable_bytes().is_none());
    }

    #[test]
    fn enforces_series_and_label_limits() {
        let limits = DecodeLimits {
            max_series: 1,
            max_labels_per_series: 2,
            max_label_value_bytes: 3,
            max_label_name_bytes: 8,
            ..DecodeLimits::default()
        };
        let two = request(&[&[(b"__name__", b"a")], &[(b"__name__", b"b")]]);
        assert_eq!(
            decode_message(Bytes::from(two), &limits).unwrap_err(),
            DecodeError::TooManySeries { limit: 1 }
        );
        let three = request(&[&[(b"__name__", b"a"), (b"b", b"1"), (b"c", b"2")]]);
        assert_eq!(
            decode_message(Bytes::from(three), &limits).unwrap_err(),
            DecodeError::TooManyLabels {
                series: 0,
                limit: 2
            }
        );
        let long_value = request(&[&[(b"__name__", b"abcd")]]);
        assert!(matches!(
            decode_message(Bytes::from(long_value), &limits).unwrap_err(),
            DecodeError::LabelValueTooLong {
                len: 4,
                limit: 3,
                ..
            }
        ));
        let long_name = request(&[&[(b"__name__", b"a"), (b"abcdefghi", b"1")]]);
        assert!(matches!(
            decode_message(Bytes::from(long_name), &limits).unwrap_err(),
            DecodeError::LabelNameTooLong {
                len: 9,
                limit: 8,
                ..
            }
        ));
    }

    #[test]
    fn rejects_truncated_message() {
        let mut msg = request(&[&[(b"__name__", b"up")]]);
        msg.truncate(msg.len() - 2);
        assert!(matches!(
            decode_plain(msg),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn rejects_wrong_wire_type_for_known_field() {
        // field 1 (timeseries) as a varint.
        let msg = vec![0x08, 0x01];
        assert_eq!(
            decode_plain(msg).unwrap_err(),
            DecodeError::WireType {
                message: "WriteRequest",
                field: 1,
                wire_type: 0
            }
        );
    }

    #[test]
    fn skips_unknown_fields() {
        let mut msg = request(&[&[(b"__name__", b"up")]]);
        // field 15, varint 7: unknown to WriteRequest.
        msg.extend_from_slice(&[0x78, 0x07]);
        assert_eq!(decode_plain(msg).unwrap().series_count(), 1);
    }

    /// The canonical fast path and the generic field loop must agree on every encoding a
    /// sender may legally use: reversed fields, two-byte lengths, a missing value.
    #[test]
    fn non_canonical_label_encodings_decode_like_canonical_ones() {
        let long_value = vec![b'v'; 200];
        let mut msg = Vec::new();
        put_message(&mut msg, 1, |o| {
            // value before name
            put_message(o, 1, |l| {
                put_bytes(l, 2, b"up");
                put_bytes(l, 1, b"__name__");
            });
            // two-byte value length
            put_message(o, 1, |l| {
                put_bytes(l, 1, b"job");
                put_bytes(l, 2, &long_value);
            });
            // name only: an empty value, dropped like an absent one
            put_message(o, 1, |l| put_bytes(l, 1, b"zone"));
        });
        let batch = decode_plain(msg).unwrap();
        let series = batch.series().next().unwrap();
        let labels: Vec<(&str, &str)> = series.labels().iter().collect();
        assert_eq!(
            labels,
            vec![
                ("__name__", "up"),
                ("job", std::str::from_utf8(&long_value).unwrap())
            ]
        );
        assert!(series.spliceable_bytes().is_none());
    }

    #[test]
    fn label_name_check_matches_the_charset_for_every_byte_everywhere() {
        let reference = |n: &[u8]| {
            n.first()
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        };
        assert!(!valid_label_name(b""));
        for len in 1..=17 {
            for pos in 0..len {
                for byte in 0..=255u8 {
                    let mut name = vec![b'x'; len];
                    name[pos] = byte;
                    assert_eq!(valid_label_name(&name), reference(&name), "{name:?}");
                }
            }
        }
    }

    /// Splicing computes label positions from the labels alone, so it needs them first and
    /// canonical; anything else is re-encoded.
    #[test]
    fn only_leading_canonical_labels_are_spliceable() {
        let canonical = request(&[&[(b"__name__", b"up"), (b"job", b"a")]]);
        let batch = decode_plain(canonical).unwrap();
        assert!(batch.series().next().unwrap().spliceable_bytes().is_some());

        let mut late_label = Vec::new();
        put_message(&mut late_label, 1, |o| {
            label(o, b"__name__", b"up");
            put_message(o, 2, |s| put_bytes(s, 9, b""));
            label(o, b"job", b"a");
        });
        let batch = decode_plain(late_label).unwrap();
        assert!(batch.series().next().unwrap().spliceable_bytes().is_none());
    }
}

//! Zero-copy decoder for `io.prometheus.write.v2.Request`.
//!
//! Every string of a 2.0 request lives once in its symbols table; labels, exemplar labels,
//! help and unit are references into it. The decoder validates each symbol as UTF-8 once and
//! then hands out the symbol's byte range wherever it is referenced, so a label costs no
//! allocation and no copy, as in 1.0. A reference past the table is a 400 that names the
//! series and the reference.
//!
//! Spec points enforced (remote-write 2.0, "Symbols", "Labels", "Metadata"): the table starts
//! with the empty string; `labels_refs` holds (name, value) pairs; names match
//! `[a-zA-Z_][a-zA-Z0-9_]*` and are unique; every series has `__name__`. As in 1.0, unsorted
//! labels are sorted rather than refused and a label with an empty value is dropped.
//! Metadata (type, help, unit) becomes the batch's metadata for the series' metric family.
//! A created timestamp is accepted and not kept: the internal model has no field for it yet.

use bytes::Bytes;

use crate::error::Element;
use crate::limits::{too_many, Allowance};
use crate::model::{Batch, ExemplarEntry, Label, MetadataEntry, MetricType, SeriesEntry, Span};
use crate::remote_write::v1::decode::{
    decode_histogram, decode_sample, sort_and_check, valid_label_name, wire_type,
};
use crate::text::StrRange;
use crate::wire::{Reader, FIXED64, LEN, VARINT};
use crate::{snappy, DecodeError, DecodeLimits, METRIC_NAME_LABEL};

/// Decodes a snappy-compressed remote-write 2.0 body.
pub fn decode(body: &[u8], limits: &DecodeLimits) -> Result<Batch, DecodeError> {
    let buf = snappy::decompress(body, limits)?;
    let capacity = buf.capacity();
    let mut batch = decode_message(Bytes::from(buf), limits)?;
    batch.buf_capacity = capacity;
    Ok(batch)
}

/// How many symbols and series a request holds, from a walk over its top-level fields, so
/// both indexes are allocated once at their exact size: a symbol can be 2 bytes on the wire
/// and is 8 in the table, and doubling would make that 16.
fn count_fields(buf: &[u8]) -> Result<(usize, usize), DecodeError> {
    let (mut symbols, mut series) = (0usize, 0usize);
    let mut r = Reader::new(buf, 0, buf.len());
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (4, LEN) => symbols += 1,
            (5, LEN) => series += 1,
            _ => {}
        }
        r.skip(wt)?;
    }
    Ok((symbols, series))
}

/// Decodes an uncompressed `io.prometheus.write.v2.Request`.
pub fn decode_message(buf: Bytes, limits: &DecodeLimits) -> Result<Batch, DecodeError> {
    if buf.len() > limits.max_decompressed_bytes {
        return Err(DecodeError::DecompressedTooLarge {
            claimed: buf.len() as u64,
            limit: limits.max_decompressed_bytes,
        });
    }
    let mut batch = Batch {
        buf: buf.clone(),
        ..Batch::default()
    };
    // First pass: the symbols table (it may follow the series on the wire) and where each
    // series is. Both are bounded by the message size, itself bounded above.
    let (symbol_count, series_count) = count_fields(&buf)?;
    if series_count > limits.max_series {
        return Err(DecodeError::TooManySeries {
            limit: limits.max_series,
        });
    }
    let mut symbols: Vec<StrRange> = Vec::with_capacity(symbol_count);
    let mut series: Vec<(usize, usize)> = Vec::with_capacity(series_count);
    let mut r = Reader::new(&buf, 0, buf.len());
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (4, LEN) => {
                let (s, e) = r.len_delimited("symbol")?;
                let Some(sym) = StrRange::validate(&buf, s, e) else {
                    return Err(DecodeError::InvalidUtf8 {
                        series: 0,
                        what: "symbol",
                    });
                };
                if symbols.is_empty() && e > s {
                    return Err(DecodeError::FirstSymbolNotEmpty);
                }
                symbols.push(sym);
            }
            (5, LEN) => {
                if series.len() >= limits.max_series {
                    return Err(DecodeError::TooManySeries {
                        limit: limits.max_series,
                    });
                }
                series.push(r.len_delimited("timeseries")?);
            }
            (4 | 5, _) => return Err(wire_type("Request", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    let cx = Symbols {
        buf: &buf,
        table: &symbols,
        limits,
    };
    // Reference lists are gathered into one reused buffer: no allocation per series or label.
    let mut refs = Vec::new();
    let mut buckets = Allowance::new(Element::HistogramBuckets, limits.max_histogram_buckets);
    for (idx, (s, e)) in series.into_iter().enumerate() {
        decode_series(&cx, s, e, idx, &mut batch, &mut refs, &mut buckets)?;
    }
    Ok(batch)
}

/// The request's symbols, for resolving references.
struct Symbols<'a> {
    buf: &'a [u8],
    table: &'a [StrRange],
    limits: &'a DecodeLimits,
}

impl Symbols<'_> {
    fn get(
        &self,
        reference: u32,
        series: usize,
        what: &'static str,
    ) -> Result<StrRange, DecodeError> {
        self.table
            .get(reference as usize)
            .copied()
            .ok_or(DecodeError::SymbolOutOfRange {
                series,
                what,
                reference,
                len: self.table.len(),
            })
    }

    fn bytes(&self, r: StrRange) -> &[u8] {
        &self.buf[r.start as usize..r.end as usize]
    }

    /// Resolves `(name, value)` reference pairs into `out`, checking each name and the limits;
    /// a pair with an empty value is dropped.
    fn labels(
        &self,
        refs: &[u32],
        series: usize,
        what: &'static str,
        out: &mut Vec<Label>,
    ) -> Result<(), DecodeError> {
        if !refs.len().is_multiple_of(2) {
            return Err(DecodeError::OddLabelRefs { series, what });
        }
        if refs.len() / 2 > self.limits.max_labels_per_series {
            return Err(DecodeError::TooManyLabels {
                series,
                limit: self.limits.max_labels_per_series,
            });
        }
        for pair in refs.chunks_exact(2) {
            let name = self.get(pair[0], series, what)?;
            let value = self.get(pair[1], series, what)?;
            let name_bytes = self.bytes(name);
            if name_bytes.len() > self.limits.max_label_name_bytes {
                return Err(DecodeError::LabelNameTooLong {
                    series,
                    len: name_bytes.len(),
                    limit: self.limits.max_label_name_bytes,
                });
            }
            if !valid_label_name(name_bytes) {
                return Err(DecodeError::InvalidLabelName {
                    series,
                    name: String::from_utf8_lossy(name_bytes).into_owned(),
                });
            }
            let value_len = (value.end - value.start) as usize;
            if value_len > self.limits.max_label_value_bytes {
                return Err(DecodeError::LabelValueTooLong {
                    series,
                    name: String::from_utf8_lossy(name_bytes).into_owned(),
                    len: value_len,
                    limit: self.limits.max_label_value_bytes,
                });
            }
            if value_len > 0 {
                out.push(Label { name, value });
            }
        }
        Ok(())
    }
}

/// Reads a packed or unpacked `repeated uint32` field occurrence into `out`, which may hold
/// at most `max` references past `mark`: one pair per allowed label, and one more so that an
/// odd count is still reported as such. Refused past that, before the buffer grows with
/// references that could never be used.
fn read_refs(
    r: &mut Reader<'_>,
    wt: u8,
    (mark, max): (usize, usize),
    cx: (&DecodeLimits, usize),
    out: &mut Vec<u32>,
) -> Result<(), DecodeError> {
    let as_ref = |v: u64| {
        u32::try_from(v).map_err(|_| DecodeError::Malformed {
            what: "symbol reference over 32 bits",
            offset: 0,
        })
    };
    let full = |out: &Vec<u32>| out.len() - mark >= max;
    let refused = || DecodeError::TooManyLabels {
        series: cx.1,
        limit: cx.0.max_labels_per_series,
    };
    if wt == VARINT {
        let v = as_ref(r.varint()?)?;
        if full(out) {
            return Err(refused());
        }
        out.push(v);
        return Ok(());
    }
    let (s, e) = r.len_delimited("packed references")?;
    let mut p = Reader::new(r.buf(), s, e);
    while !p.is_empty() {
        let v = as_ref(p.varint()?)?;
        if full(out) {
            return Err(refused());
        }
        out.push(v);
    }
    Ok(())
}

/// The most references one label list may hold (see [`read_refs`]).
fn max_refs(limits: &DecodeLimits) -> usize {
    limits
        .max_labels_per_series
        .saturating_mul(2)
        .saturating_add(1)
}

fn decode_series(
    cx: &Symbols<'_>,
    start: usize,
    end: usize,
    idx: usize,
    batch: &mut Batch,
    refs: &mut Vec<u32>,
    buckets: &mut Allowance,
) -> Result<(), DecodeError> {
    let buf = cx.buf;
    let limits = cx.limits;
    let labels_start = batch.labels.len();
    let samples_start = batch.samples.len();
    let hist_start = batch.histograms.len();
    let ex_start = batch.exemplars.len();
    refs.clear();
    let mut metadata: Option<(MetricType, StrRange, StrRange)> = None;
    let mut r = Reader::new(buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, VARINT | LEN) => read_refs(&mut r, wt, (0, max_refs(limits)), (limits, idx), refs)?,
            (2, LEN) => {
                let (s, e) = r.len_delimited("sample")?;
                if batch.samples.len() >= limits.max_samples {
                    return Err(too_many(Element::Samples, limits.max_samples));
                }
                batch.samples.push(decode_sample(buf, s, e)?);
            }
            (3, LEN) => {
                let (s, e) = r.len_delimited("histogram")?;
                if batch.histograms.len() >= limits.max_histograms {
                    return Err(too_many(Element::Histograms, limits.max_histograms));
                }
                batch.histograms.push(decode_histogram(buf, s, e, buckets)?);
            }
            (4, LEN) => {
                let (s, e) = r.len_delimited("exemplar")?;
                if batch.exemplars.len() >= limits.max_exemplars {
                    return Err(too_many(Element::Exemplars, limits.max_exemplars));
                }
                // Exemplar references go after the series' own in the same buffer.
                let mark = refs.len();
                let ex = decode_exemplar(cx, s, e, idx, &mut batch.exemplar_labels, refs)?;
                refs.truncate(mark);
                batch.exemplars.push(ex);
            }
            (5, LEN) => {
                let (s, e) = r.len_delimited("metadata")?;
                metadata = Some(decode_metadata(cx, s, e, idx)?);
            }
            (6, VARINT) => {
                // Created timestamp: accepted, not kept (see the module docs).
                r.varint()?;
            }
            (1..=6, _) => return Err(wire_type("TimeSeries", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    cx.labels(refs, idx, "labels_refs", &mut batch.labels)?;
    sort_and_check(buf, &mut batch.labels[labels_start..], idx)?;
    let name = batch.labels[labels_start..]
        .iter()
        .find(|l| cx.bytes(l.name) == METRIC_NAME_LABEL.as_bytes())
        .map(|l| l.value)
        .ok_or(DecodeError::MissingMetricName { series: idx })?;
    if let Some((metric_type, help, unit)) = metadata {
        // Only what says something: an all-default metadata message is no metadata.
        if metric_type != MetricType::Unknown || help.end > help.start || unit.end > unit.start {
            batch.metadata.push(MetadataEntry {
                metric_type,
                family: name,
                help,
                unit,
            });
        }
    }
    batch.series.push(SeriesEntry {
        labels: Span::at(labels_start, batch.labels.len()),
        samples: Span::at(samples_start, batch.samples.len()),
        histograms: Span::at(hist_start, batch.histograms.len()),
        exemplars: Span::at(ex_start, batch.exemplars.len()),
        raw: Span::at(start, end),
        // A 2.0 series is not a 1.0 `TimeSeries`: never copied as one.
        spliceable: false,
    });
    Ok(())
}

fn decode_exemplar(
    cx: &Symbols<'_>,
    start: usize,
    end: usize,
    series: usize,
    labels: &mut Vec<Label>,
    refs: &mut Vec<u32>,
) -> Result<ExemplarEntry, DecodeError> {
    let labels_start = labels.len();
    let mark = refs.len();
    let mut ex = ExemplarEntry {
        labels: Span::default(),
        value: 0.0,
        timestamp_ms: 0,
    };
    let mut r = Reader::new(cx.buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        match (field, wt) {
            (1, VARINT | LEN) => read_refs(
                &mut r,
                wt,
                (mark, max_refs(cx.limits)),
                (cx.limits, series),
                refs,
            )?,
            (2, FIXED64) => ex.value = r.f64()?,
            (3, VARINT) => ex.timestamp_ms = r.varint()? as i64,
            (1..=3, _) => return Err(wire_type("Exemplar", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    cx.labels(&refs[mark..], series, "exemplar labels_refs", labels)?;
    sort_and_check(cx.buf, &mut labels[labels_start..], series)?;
    ex.labels = Span::at(labels_start, labels.len());
    Ok(ex)
}

fn decode_metadata(
    cx: &Symbols<'_>,
    start: usize,
    end: usize,
    series: usize,
) -> Result<(MetricType, StrRange, StrRange), DecodeError> {
    let (mut metric_type, mut help, mut unit) = (
        MetricType::Unknown,
        StrRange::default(),
        StrRange::default(),
    );
    let mut r = Reader::new(cx.buf, start, end);
    while !r.is_empty() {
        let (field, wt) = r.key()?;
        let reference = |r: &mut Reader<'_>| {
            u32::try_from(r.varint()?).map_err(|_| DecodeError::Malformed {
                what: "symbol reference over 32 bits",
                offset: 0,
            })
        };
        match (field, wt) {
            (1, VARINT) => metric_type = MetricType::from_wire(r.varint()?),
            (3, VARINT) => help = cx.get(reference(&mut r)?, series, "help_ref")?,
            (4, VARINT) => unit = cx.get(reference(&mut r)?, series, "unit_ref")?,
            (1 | 3 | 4, _) => return Err(wire_type("Metadata", field, wt)),
            _ => r.skip(wt)?,
        }
    }
    Ok((metric_type, help, unit))
}

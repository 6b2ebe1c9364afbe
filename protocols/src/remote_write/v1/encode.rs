//! Encoder for `prometheus.WriteRequest` out of the internal model.

use crate::model::{Batch, BucketSpan, Histogram, HistogramCount, SeriesRef};
use crate::text::cmp_names;
use crate::wire::{
    put_bytes, put_f64, put_key, put_message, put_uvarint_field, put_varint, varint_len,
    zigzag_encode64, LEN, VARINT,
};

/// Appends `batch` as an uncompressed `WriteRequest` to `out`, copying each series' original
/// bytes where they are canonical (see [`SeriesRef::spliceable_bytes`]) and re-encoding the
/// rest.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    encode_inner(batch, out, true);
}

/// Like [`encode`] but re-encodes every series from the model; used to check the splice path
/// against the model and where labels change.
pub fn reencode(batch: &Batch, out: &mut Vec<u8>) {
    encode_inner(batch, out, false);
}

/// Encodes `batch` and compresses it as one snappy block, ready to send.
pub fn encode_compressed(batch: &Batch) -> Vec<u8> {
    let mut raw = Vec::new();
    encode(batch, &mut raw);
    crate::snappy::compress(&raw)
}

fn encode_inner(batch: &Batch, out: &mut Vec<u8>, splice: bool) {
    for s in batch.series() {
        match s.spliceable_bytes() {
            Some(raw) if splice => put_bytes(out, 1, raw),
            _ => put_message(out, 1, |o| encode_series(&s, o)),
        }
    }
    encode_metadata(batch, out);
}

fn encode_series(s: &SeriesRef<'_>, o: &mut Vec<u8>) {
    encode_series_body(s, s.labels().iter(), o);
}

/// Appends one `TimeSeries` (field 1 of `WriteRequest`) for `s`, with `labels` (sorted by
/// name) in place of the series' own: how sinks write a series after the gateway added its
/// tags or a residency rule edited it.
pub fn encode_series_with_labels<'a>(
    s: &SeriesRef<'_>,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    out: &mut Vec<u8>,
) {
    put_message(out, 1, |o| encode_series_body(s, labels, o));
}

/// Labels appended to every series of a batch (the gateway's tenant and region tags),
/// encoded once as `Label` fields so that [`ExtraLabels::put_spliced`] can copy a canonical
/// series with them inserted at their sorted positions instead of re-encoding it.
#[derive(Debug, Clone, Default)]
pub struct ExtraLabels {
    /// `(name, encoded Label field)`, sorted by name.
    fields: Vec<(String, Vec<u8>)>,
    /// Total encoded length of all fields.
    len: usize,
}

impl ExtraLabels {
    /// Encodes `labels` (any order; names must be distinct).
    pub fn new<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut fields: Vec<(String, Vec<u8>)> = labels
            .into_iter()
            .map(|(name, value)| {
                let mut field = Vec::new();
                put_label(&mut field, 1, name, value);
                (name.to_string(), field)
            })
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let len = fields.iter().map(|(_, f)| f.len()).sum();
        Self { fields, len }
    }

    /// Appends `s` as a `TimeSeries` field (1 of `WriteRequest`) with these labels merged into
    /// its own, copying the client's bytes around them. Returns false and writes nothing when
    /// the series is not canonical (see [`SeriesRef::spliceable_bytes`]) or has a label of one
    /// of these names: the caller re-encodes it then.
    pub fn put_spliced(&self, s: &SeriesRef<'_>, out: &mut Vec<u8>) -> bool {
        let Some((buf, labels)) = s.canonical_labels() else {
            return false;
        };
        let raw = s.raw_span();
        let mark = out.len();
        put_key(out, 1, LEN);
        put_varint(out, (raw.range().len() + self.len) as u64);
        let name = |i: usize| &buf[labels[i].name.start as usize..labels[i].name.end as usize];
        // A canonical label field is `0a <len> 0a <n> name 12 <v> value` with n, v < 128, so
        // it starts 3 bytes plus its length varint before the name.
        let field_start = |i: usize| {
            let l = &labels[i];
            let inner = 4 + (l.name.end - l.name.start) + (l.value.end - l.value.start);
            l.name.start as usize - 3 - varint_len(u64::from(inner))
        };
        let mut pos = raw.start as usize;
        let mut next = 0;
        for (extra, field) in &self.fields {
            while next < labels.len() {
                match cmp_names(name(next), extra.as_bytes()) {
                    std::cmp::Ordering::Less => next += 1,
                    std::cmp::Ordering::Equal => {
                        out.truncate(mark);
                        return false;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            let cut = if next < labels.len() {
                field_start(next)
            } else {
                labels.last().map_or(pos, |l| l.value.end as usize)
            };
            out.extend_from_slice(&buf[pos..cut]);
            out.extend_from_slice(field);
            pos = cut;
        }
        out.extend_from_slice(&buf[pos..raw.end as usize]);
        true
    }
}

/// Appends every metadata entry of `batch` (field 3 of `WriteRequest`).
pub fn encode_metadata(batch: &Batch, out: &mut Vec<u8>) {
    for m in batch.metadata() {
        put_message(out, 3, |o| {
            put_uvarint_field(o, 1, m.metric_type().to_wire());
            put_bytes(o, 2, m.family().as_bytes());
            put_bytes(o, 4, m.help().as_bytes());
            put_bytes(o, 5, m.unit().as_bytes());
        });
    }
}

fn encode_series_body<'a>(
    s: &SeriesRef<'_>,
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    o: &mut Vec<u8>,
) {
    for (name, value) in labels {
        put_label(o, 1, name, value);
    }
    for sample in s.samples() {
        put_message(o, 2, |o| {
            put_f64(o, 1, sample.value);
            put_uvarint_field(o, 2, sample.timestamp_ms as u64);
        });
    }
    for ex in s.exemplars() {
        put_message(o, 3, |o| {
            for (name, value) in ex.labels().iter() {
                put_label(o, 1, name, value);
            }
            put_f64(o, 2, ex.value());
            put_uvarint_field(o, 3, ex.timestamp_ms() as u64);
        });
    }
    for h in s.histograms() {
        put_message(o, 4, |o| encode_histogram(h, o));
    }
}

fn put_label(o: &mut Vec<u8>, field: u32, name: &str, value: &str) {
    put_message(o, field, |o| {
        put_bytes(o, 1, name.as_bytes());
        put_bytes(o, 2, value.as_bytes());
    });
}

fn put_count(o: &mut Vec<u8>, int_field: u32, c: HistogramCount) {
    match c {
        HistogramCount::Int(v) => put_uvarint_field(o, int_field, v),
        HistogramCount::Float(v) => put_f64(o, int_field + 1, v),
    }
}

fn put_spans(o: &mut Vec<u8>, field: u32, spans: &[BucketSpan]) {
    for span in spans {
        put_message(o, field, |o| {
            put_uvarint_field(o, 1, zigzag_encode64(i64::from(span.offset)));
            put_uvarint_field(o, 2, u64::from(span.length));
        });
    }
}

fn put_packed_sint64(o: &mut Vec<u8>, field: u32, values: &[i64]) {
    if values.is_empty() {
        return;
    }
    put_message(o, field, |o| {
        for &v in values {
            put_varint(o, zigzag_encode64(v));
        }
    });
}

fn put_packed_f64(o: &mut Vec<u8>, field: u32, values: &[f64]) {
    if values.is_empty() {
        return;
    }
    put_key(o, field, LEN);
    put_varint(o, (values.len() * 8) as u64);
    for v in values {
        o.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

/// Appends one histogram as a `prometheus.Histogram` message body (no outer tag), the form the
/// Parquet sink stores for full fidelity.
pub fn encode_histogram(h: &Histogram, o: &mut Vec<u8>) {
    put_count(o, 1, h.count);
    put_f64(o, 3, h.sum);
    put_key(o, 4, VARINT);
    put_varint(o, zigzag_encode64(i64::from(h.schema)));
    put_f64(o, 5, h.zero_threshold);
    put_count(o, 6, h.zero_count);
    put_spans(o, 8, &h.negative_spans);
    put_packed_sint64(o, 9, &h.negative_deltas);
    put_packed_f64(o, 10, &h.negative_counts);
    put_spans(o, 11, &h.positive_spans);
    put_packed_sint64(o, 12, &h.positive_deltas);
    put_packed_f64(o, 13, &h.positive_counts);
    put_uvarint_field(o, 14, h.reset_hint.to_wire());
    put_uvarint_field(o, 15, h.timestamp_ms as u64);
    put_packed_f64(o, 16, &h.custom_values);
}

//! Encoder for `io.prometheus.write.v2.Request` out of the internal model.

use std::collections::HashMap;

use crate::model::{Batch, MetricType, SeriesRef};
use crate::remote_write::v1::encode_histogram;
use crate::wire::{
    put_bytes, put_f64, put_key, put_message, put_uvarint_field, put_varint, varint_len, LEN,
};

/// Builds one `Request`: add series, then [`V2Writer::finish`]. Symbols are interned per
/// writer, so each message carries exactly the strings its series use.
#[derive(Debug)]
pub struct V2Writer {
    symbols: Vec<String>,
    index: HashMap<String, u32>,
    symbol_bytes: usize,
    series: Vec<u8>,
    refs: Vec<u32>,
}

impl Default for V2Writer {
    fn default() -> Self {
        Self::new()
    }
}

/// Metric families whose metadata a series of name `metric` may carry: the name itself, or
/// the name without the suffix a classic histogram, summary or counter sample adds.
fn family_candidates(metric: &str) -> impl Iterator<Item = &str> {
    std::iter::once(metric).chain(
        ["_bucket", "_count", "_sum", "_total", "_created"]
            .into_iter()
            .filter_map(move |s| metric.strip_suffix(s)),
    )
}

impl V2Writer {
    /// An empty request; the symbols table starts with `""`, as the spec requires.
    pub fn new() -> Self {
        let mut w = Self {
            symbols: Vec::new(),
            index: HashMap::new(),
            symbol_bytes: 0,
            series: Vec::new(),
            refs: Vec::new(),
        };
        w.intern("");
        w
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.symbols.len() as u32;
        self.symbols.push(s.to_string());
        self.index.insert(s.to_string(), i);
        self.symbol_bytes += s.len() + 2;
        i
    }

    /// Bytes the request will take, approximately (for splitting into messages).
    pub fn approx_len(&self) -> usize {
        self.series.len() + self.symbol_bytes
    }

    /// Whether no series was added.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Adds `s` with `labels` (sorted by name) in place of its own, and the metadata of its
    /// family from `batch` if the batch has any. A series with both float and histogram
    /// samples becomes two `TimeSeries`, as the spec requires.
    pub fn add_series<'a>(
        &mut self,
        batch: &Batch,
        s: &SeriesRef<'_>,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let mut refs = std::mem::take(&mut self.refs);
        refs.clear();
        for (n, v) in labels {
            refs.push(self.intern(n));
            refs.push(self.intern(v));
        }
        let metric = s.metric_name();
        let meta = batch
            .metadata()
            .find(|m| family_candidates(metric).any(|f| f == m.family()))
            .map(|m| {
                let help = self.intern(m.help());
                let unit = self.intern(m.unit());
                (m.metric_type(), help, unit)
            });
        let mut exemplar_refs: Vec<Vec<u32>> = Vec::new();
        for ex in s.exemplars() {
            let r: Vec<u32> = ex
                .labels()
                .iter()
                .flat_map(|(n, v)| [n, v])
                .collect::<Vec<_>>()
                .into_iter()
                .map(|x| self.intern(x))
                .collect();
            exemplar_refs.push(r);
        }
        let has_floats = !s.samples().is_empty();
        let has_histograms = !s.histograms().is_empty();
        let parts: &[bool] = match (has_floats, has_histograms) {
            (true, true) => &[true, false],
            (false, true) => &[false],
            _ => &[true],
        };
        for (i, &floats) in parts.iter().enumerate() {
            put_message(&mut self.series, 5, |o| {
                put_key(o, 1, LEN);
                let len: usize = refs.iter().map(|&r| varint_len(u64::from(r))).sum();
                put_varint(o, len as u64);
                for &r in &refs {
                    put_varint(o, u64::from(r));
                }
                if floats {
                    for sample in s.samples() {
                        put_message(o, 2, |o| {
                            put_f64(o, 1, sample.value);
                            put_uvarint_field(o, 2, sample.timestamp_ms as u64);
                        });
                    }
                } else {
                    for h in s.histograms() {
                        put_message(o, 3, |o| encode_histogram(h, o));
                    }
                }
                // Exemplars and metadata ride with the first part only.
                if i == 0 {
                    for (ex, r) in s.exemplars().zip(&exemplar_refs) {
                        put_message(o, 4, |o| {
                            if !r.is_empty() {
                                put_key(o, 1, LEN);
                                let len: usize = r.iter().map(|&x| varint_len(u64::from(x))).sum();
                                put_varint(o, len as u64);
                                for &x in r {
                                    put_varint(o, u64::from(x));
                                }
                            }
                            put_f64(o, 2, ex.value());
                            put_uvarint_field(o, 3, ex.timestamp_ms() as u64);
                        });
                    }
                }
                if let Some((t, help, unit)) = meta {
                    put_message(o, 5, |o| {
                        if t != MetricType::Unknown {
                            put_uvarint_field(o, 1, t.to_wire());
                        }
                        put_uvarint_field(o, 3, u64::from(help));
                        put_uvarint_field(o, 4, u64::from(unit));
                    });
                }
            });
        }
        self.refs = refs;
    }

    /// Appends the finished `Request` to `out` and resets the writer for the next one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for s in &self.symbols {
            put_bytes(out, 4, s.as_bytes());
        }
        out.extend_from_slice(&self.series);
        *self = Self::new();
    }
}

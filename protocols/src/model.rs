//! The internal model every protocol decodes into and every sink reads from.
//!
//! A [`Batch`] is one request's data in columns: series (each a sorted label set), float
//! samples, native histograms, exemplars and metadata. Label names and values are byte ranges
//! into the decompressed request (`bytes::Bytes`), so decoding allocates per request, not per
//! label; views ([`SeriesRef`], [`LabelsRef`]) hand out `&str` without copying.
//!
//! Tags the gateway adds (tenant, region) are not stored here: they travel beside the batch and
//! are appended by encoders, so the client's buffer is never mutated.

use bytes::Bytes;

use crate::text::{str_at, StrRange};

/// A half-open index range into one of a batch's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn at(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One label: name and value as validated byte ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label {
    pub(crate) name: StrRange,
    pub(crate) value: StrRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SeriesEntry {
    pub(crate) labels: Span,
    pub(crate) samples: Span,
    pub(crate) histograms: Span,
    pub(crate) exemplars: Span,
    /// The series' own `TimeSeries` bytes in the buffer.
    pub(crate) raw: Span,
    /// True when `raw` is canonical: labels arrived sorted and none were dropped, so an encoder
    /// may copy `raw` instead of re-encoding the series.
    pub(crate) spliceable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ExemplarEntry {
    pub(crate) labels: Span,
    pub(crate) value: f64,
    pub(crate) timestamp_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MetadataEntry {
    pub(crate) metric_type: MetricType,
    pub(crate) family: StrRange,
    pub(crate) help: StrRange,
    pub(crate) unit: StrRange,
}

/// A float sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value; stale markers are a specific NaN and are kept bit for bit.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A native histogram count: integer histograms count events, float histograms carry
/// (possibly fractional) results of aggregation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HistogramCount {
    /// Integer count.
    Int(u64),
    /// Float count.
    Float(f64),
}

impl HistogramCount {
    /// The count as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            HistogramCount::Int(v) => v as f64,
            HistogramCount::Float(v) => v,
        }
    }
}

impl Default for HistogramCount {
    fn default() -> Self {
        HistogramCount::Int(0)
    }
}

/// A span of consecutive populated buckets of a native histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketSpan {
    /// Gap to the previous span (or the starting bucket index for the first span).
    pub offset: i32,
    /// Number of consecutive buckets.
    pub length: u32,
}

/// Whether a histogram is known to be a counter reset, per Prometheus' `ResetHint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetHint {
    /// Unknown; the consumer decides.
    #[default]
    Unknown,
    /// Definitely a reset.
    Yes,
    /// Definitely not a reset.
    No,
    /// A gauge histogram: resets do not apply.
    Gauge,
}

impl ResetHint {
    pub(crate) fn from_wire(v: u64) -> Self {
        match v {
            1 => ResetHint::Yes,
            2 => ResetHint::No,
            3 => ResetHint::Gauge,
            _ => ResetHint::Unknown,
        }
    }
    pub(crate) fn to_wire(self) -> u64 {
        match self {
            ResetHint::Unknown => 0,
            ResetHint::Yes => 1,
            ResetHint::No => 2,
            ResetHint::Gauge => 3,
        }
    }
}

/// A native (sparse) histogram sample, as in Prometheus' `prompb.Histogram`. Integer
/// histograms use `*_deltas` (delta-encoded bucket counts); float histograms use `*_counts`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    /// Total observations.
    pub count: HistogramCount,
    /// Sum of observations.
    pub sum: f64,
    /// Resolution: bucket boundaries are powers of 2^(2^-schema); -53 means custom buckets.
    pub schema: i32,
    /// Width of the zero bucket.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: HistogramCount,
    /// Spans of negative buckets.
    pub negative_spans: Vec<BucketSpan>,
    /// Delta-encoded negative bucket counts (integer histograms).
    pub negative_deltas: Vec<i64>,
    /// Negative bucket counts (float histograms).
    pub negative_counts: Vec<f64>,
    /// Spans of positive buckets.
    pub positive_spans: Vec<BucketSpan>,
    /// Delta-encoded positive bucket counts (integer histograms).
    pub positive_deltas: Vec<i64>,
    /// Positive bucket counts (float histograms).
    pub positive_counts: Vec<f64>,
    /// Counter-reset hint.
    pub reset_hint: ResetHint,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Upper bounds of custom buckets (schema -53).
    pub custom_values: Vec<f64>,
}

/// Prometheus metric types, as in `prompb.MetricMetadata.MetricType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricType {
    /// Unknown or untyped.
    #[default]
    Unknown,
    /// Counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Classic histogram.
    Histogram,
    /// Gauge histogram.
    GaugeHistogram,
    /// Summary.
    Summary,
    /// Info.
    Info,
    /// State set.
    StateSet,
}

impl MetricType {
    pub(crate) fn from_wire(v: u64) -> Self {
        match v {
            1 => MetricType::Counter,
            2 => MetricType::Gauge,
            3 => MetricType::Histogram,
            4 => MetricType::GaugeHistogram,
            5 => MetricType::Summary,
            6 => MetricType::Info,
            7 => MetricType::StateSet,
            _ => MetricType::Unknown,
        }
    }
    pub(crate) fn to_wire(self) -> u64 {
        match self {
            MetricType::Unknown => 0,
            MetricType::Counter => 1,
            MetricType::Gauge => 2,
            MetricType::Histogram => 3,
            MetricType::GaugeHistogram => 4,
            MetricType::Summary => 5,
            MetricType::Info => 6,
            MetricType::StateSet => 7,
        }
    }
}

/// One decoded request. Cheap to share (`Arc<Batch>`): it owns its buffer and columns and is
/// immutable once decoded.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub(crate) buf: Bytes,
    /// Bytes of the allocation behind `buf` when the decoder knows it (a `Bytes` does not
    /// say); 0 when it is `buf.len()`.
    pub(crate) buf_capacity: usize,
    pub(crate) series: Vec<SeriesEntry>,
    pub(crate) labels: Vec<Label>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) histograms: Vec<Histogram>,
    pub(crate) exemplars: Vec<ExemplarEntry>,
    pub(crate) exemplar_labels: Vec<Label>,
    pub(crate) metadata: Vec<MetadataEntry>,
}

impl Batch {
    /// Empties the batch, keeping column capacity for reuse.
    pub fn clear(&mut self) {
        self.buf = Bytes::new();
        self.buf_capacity = 0;
        self.series.clear();
        self.labels.clear();
        self.samples.clear();
        self.histograms.clear();
        self.exemplars.clear();
        self.exemplar_labels.clear();
        self.metadata.clear();
    }

    /// What this batch keeps allocated, in bytes: its buffer and the capacity of every
    /// column, histogram buckets included. An estimate from capacities (allocator overhead
    /// aside), so that a memory budget charged with it covers what the batch really holds; a
    /// buffer shared with other batches is counted by each. Walks the histograms, so it costs
    /// one step per native histogram.
    pub fn heap_bytes(&self) -> usize {
        fn held<T>(v: &Vec<T>) -> usize {
            v.capacity().saturating_mul(std::mem::size_of::<T>())
        }
        let buckets = self.histograms.iter().fold(0usize, |sum, h| {
            sum.saturating_add(
                held(&h.negative_spans)
                    + held(&h.negative_deltas)
                    + held(&h.negative_counts)
                    + held(&h.positive_spans)
                    + held(&h.positive_deltas)
                    + held(&h.positive_counts)
                    + held(&h.custom_values),
            )
        });
        [
            self.buf.len().max(self.buf_capacity),
            held(&self.series),
            held(&self.labels),
            held(&self.samples),
            held(&self.histograms),
            held(&self.exemplars),
            held(&self.exemplar_labels),
            held(&self.metadata),
            buckets,
        ]
        .iter()
        .fold(0usize, |a, b| a.saturating_add(*b))
    }

    /// Number of series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Number of float samples over all series.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Number of native histogram samples over all series.
    pub fn histogram_count(&self) -> usize {
        self.histograms.len()
    }

    /// Number of exemplars over all series.
    pub fn exemplar_count(&self) -> usize {
        self.exemplars.len()
    }

    /// Number of metadata entries.
    pub fn metadata_count(&self) -> usize {
        self.metadata.len()
    }

    /// True when the batch carries no series and no metadata.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.metadata.is_empty()
    }

    /// The series, in request order.
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesRef<'_>> + '_ {
        self.series
            .iter()
            .map(move |entry| SeriesRef { batch: self, entry })
    }

    /// The series at `index` in request order.
    pub fn series_at(&self, index: usize) -> Option<SeriesRef<'_>> {
        self.series
            .get(index)
            .map(|entry| SeriesRef { batch: self, entry })
    }

    /// The metadata entries, in request order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = MetadataRef<'_>> + '_ {
        self.metadata.iter().map(move |m| MetadataRef {
            buf: &self.buf,
            entry: m,
        })
    }
}

/// A borrowed view of one series of a [`Batch`].
#[derive(Clone, Copy)]
pub struct SeriesRef<'a> {
    batch: &'a Batch,
    entry: &'a SeriesEntry,
}

impl<'a> SeriesRef<'a> {
    /// The label set, sorted by name, without duplicates or empty values.
    pub fn labels(&self) -> LabelsRef<'a> {
        LabelsRef {
            buf: &self.batch.buf,
            labels: &self.batch.labels[self.entry.labels.range()],
        }
    }

    /// The value of `__name__` (present in every decoded series).
    pub fn metric_name(&self) -> &'a str {
        self.labels().get(crate::METRIC_NAME_LABEL).unwrap_or("")
    }

    /// Float samples.
    pub fn samples(&self) -> &'a [Sample] {
        &self.batch.samples[self.entry.samples.range()]
    }

    /// Native histogram samples.
    pub fn histograms(&self) -> &'a [Histogram] {
        &self.batch.histograms[self.entry.histograms.range()]
    }

    /// Exemplars.
    pub fn exemplars(&self) -> impl ExactSizeIterator<Item = ExemplarRef<'a>> + 'a {
        let batch = self.batch;
        batch.exemplars[self.entry.exemplars.range()]
            .iter()
            .map(move |e| ExemplarRef { batch, entry: e })
    }

    /// The series' `TimeSeries` bytes as the client sent them, when they are canonical (labels
    /// first, sorted, each in the canonical encoding, nothing dropped) and so may be copied
    /// into an outgoing message unchanged.
    pub fn spliceable_bytes(&self) -> Option<&'a [u8]> {
        self.entry
            .spliceable
            .then(|| &self.batch.buf[self.entry.raw.range()])
    }

    /// The series' identity hash (see [`crate::label_set_hash`]): over the client's own label
    /// bytes when they are canonical, otherwise over the labels encoded into `scratch`.
    pub fn labels_hash(&self, scratch: &mut Vec<u8>) -> u64 {
        match self.canonical_labels() {
            Some((buf, labels)) => {
                let end = labels.last().map_or(self.entry.raw.start, |l| l.value.end);
                crate::hash::hash_bytes(&buf[self.entry.raw.start as usize..end as usize])
            }
            None => crate::hash::label_set_hash(self.labels().iter(), scratch),
        }
    }

    /// For a spliceable series: the buffer, its label entries and its raw span; the labels'
    /// fields are then the leading bytes of the span, in canonical form.
    pub(crate) fn canonical_labels(&self) -> Option<(&'a [u8], &'a [Label])> {
        self.entry.spliceable.then(|| {
            (
                &self.batch.buf[..],
                &self.batch.labels[self.entry.labels.range()],
            )
        })
    }

    /// The series' raw `TimeSeries` span in the buffer.
    pub(crate) fn raw_span(&self) -> Span {
        self.entry.raw
    }
}

/// A borrowed, sorted label set.
#[derive(Clone, Copy)]
pub struct LabelsRef<'a> {
    buf: &'a [u8],
    labels: &'a [Label],
}

impl<'a> LabelsRef<'a> {
    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        let buf = self.buf;
        self.labels
            .iter()
            .map(move |l| (str_at(buf, l.name), str_at(buf, l.value)))
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let buf = self.buf;
        self.labels
            .binary_search_by(|l| str_at(buf, l.name).cmp(name))
            .ok()
            .map(|i| str_at(buf, self.labels[i].value))
    }
}

/// A borrowed exemplar.
#[derive(Clone, Copy)]
pub struct ExemplarRef<'a> {
    batch: &'a Batch,
    entry: &'a ExemplarEntry,
}

impl<'a> ExemplarRef<'a> {
    /// The exemplar's own labels (e.g. `trace_id`).
    pub fn labels(&self) -> LabelsRef<'a> {
        LabelsRef {
            buf: &self.batch.buf,
            labels: &self.batch.exemplar_labels[self.entry.labels.range()],
        }
    }
    /// The exemplar value.
    pub fn value(&self) -> f64 {
        self.entry.value
    }
    /// Milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.entry.timestamp_ms
    }
}

/// A borrowed metadata entry.
#[derive(Clone, Copy)]
pub struct MetadataRef<'a> {
    buf: &'a [u8],
    entry: &'a MetadataEntry,
}

impl<'a> MetadataRef<'a> {
    /// The metric type.
    pub fn metric_type(&self) -> MetricType {
        self.entry.metric_type
    }
    /// The metric family name.
    pub fn family(&self) -> &'a str {
        str_at(self.buf, self.entry.family)
    }
    /// Help text.
    pub fn help(&self) -> &'a str {
        str_at(self.buf, self.entry.help)
    }
    /// Unit.
    pub fn unit(&self) -> &'a str {
        str_at(self.buf, self.entry.unit)
    }
}

//! Explicit bounds for every decode call, and what they imply in memory.
//!
//! The byte limits alone do not bound a decode's memory: an empty native histogram is 2 bytes
//! on the wire (`22 00`) and a few hundred bytes decoded, so a 64 MiB body of them would be
//! about 11 GiB. The element limits (samples, histograms, buckets, exemplars, OTLP attributes)
//! are checked before each element is stored, so a decode allocates in proportion to the
//! limits, never to the body; [`DecodeLimits::worst_case_decoded_bytes`] says how much.

use std::mem::size_of;

use crate::error::Element;
use crate::model::{ExemplarEntry, Label, MetadataEntry, SeriesEntry};
use crate::otlp::proto;
use crate::{DecodeError, Histogram, Sample};

/// 1M float samples: 16 MiB of samples (32 MiB once a column has doubled). Prometheus sends
/// `max_samples_per_send` = 2000 per request by default and vmagent at most a few tens of
/// thousands, so this is 500x what Prometheus sends and still a small share of a node.
const DEFAULT_MAX_SAMPLES: usize = 1_000_000;
/// 100k native histograms: about 24 MiB of histogram headers before their buckets. Prometheus
/// sends at most `max_samples_per_send` (2000) histograms per request, so 50x headroom, as for
/// series.
const DEFAULT_MAX_HISTOGRAMS: usize = 100_000;
/// 2M buckets (spans, counts, custom bounds): 8 bytes each, at most 64 MiB counting Vec
/// doubling and small-Vec rounding. 20 buckets per histogram for the full 100k histograms,
/// where Prometheus' default bucket limit per histogram is 160 but typical ones hold 10-40.
const DEFAULT_MAX_HISTOGRAM_BUCKETS: usize = 2_000_000;
/// 100k exemplars: one per series at the series limit; Prometheus sends exemplars only with
/// `send_exemplars`, at most `max_samples_per_send` per request.
const DEFAULT_MAX_EXEMPLARS: usize = 100_000;
/// 500k OTLP attributes: each is a few hundred bytes in the decoded `prost` tree; an SDK sends
/// 5-20 per data point and the OpenTelemetry Collector batches 8192 points by default, so
/// about 3x a large collector batch.
const DEFAULT_MAX_ATTRIBUTES: usize = 500_000;

/// What the allocator adds to every allocation (glibc: 8-16 bytes of header, 32-byte minimum
/// chunks): counted once per element, since each element is at most one allocation.
const ALLOC_OVERHEAD: usize = 16;
/// Smallest chunk an allocation takes (glibc x86-64); a 1-byte string costs this much.
const MIN_CHUNK: usize = 32;
/// A Vec grown by pushes holds at most `max(4, 2 * len)` elements (std's amortised growth
/// doubles, with a first allocation of 4): at most 4 slots per element held.
const VEC_SLOTS_PER_ELEMENT: usize = 4;
/// The fewest wire bytes one decoded label costs: a remote-write 2.0 (name, value) pair of
/// one-byte symbol references. Every other format spends more.
const MIN_LABEL_WIRE_BYTES: usize = 2;
/// The fewest wire bytes one remote-write 2.0 symbol costs (`22 00`).
const MIN_SYMBOL_WIRE_BYTES: usize = 2;
/// Heap one `serde` value takes while `#[serde(flatten)]` buffers the fields of an OTLP JSON
/// metric, data point or value (`Content` pairs of 64 bytes, in doubling Vecs) before the
/// typed fields are read from the buffer.
const JSON_BUFFERED_VALUE_BYTES: usize = 64 * VEC_SLOTS_PER_ELEMENT + ALLOC_OVERHEAD;
/// JSON values the pre-scan allows per data point (and per series, histogram and exemplar): a
/// point as SDKs write it has about ten fields besides its attributes, with room to spare.
const JSON_VALUES_PER_POINT: usize = 16;
/// Per attribute: the entry, its key, the value object and the scalar.
const JSON_VALUES_PER_ATTRIBUTE: usize = 4;
/// Per bucket: a count or bound is one value, a summary quantile three (the object and its
/// two numbers).
const JSON_VALUES_PER_BUCKET: usize = 3;

/// Bounds a decoder enforces before and while it allocates. Every decode entry takes one, so
/// no caller can forget them; the defaults suit a public ingestion edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest compressed body accepted.
    pub max_compressed_bytes: usize,
    /// Largest decompressed message accepted; checked against the snappy header first.
    pub max_decompressed_bytes: usize,
    /// Most series (or metadata entries) in one request. For OTLP also the most resources,
    /// scopes and metrics, each of which becomes at least one series in any real request.
    pub max_series: usize,
    /// Most labels on one series.
    pub max_labels_per_series: usize,
    /// Longest label name in bytes.
    pub max_label_name_bytes: usize,
    /// Longest label value in bytes.
    pub max_label_value_bytes: usize,
    /// Most float samples in one request, over all series (OTLP: number and histogram data
    /// points before translation, the samples they become after it).
    pub max_samples: usize,
    /// Most native histogram samples in one request (OTLP: exponential histogram points).
    pub max_histograms: usize,
    /// Most histogram buckets in one request: the sum of bucket spans, bucket deltas or
    /// counts and custom bounds of every native histogram (OTLP: explicit bucket counts and
    /// bounds, exponential bucket counts and summary quantiles).
    pub max_histogram_buckets: usize,
    /// Most exemplars in one request.
    pub max_exemplars: usize,
    /// OTLP only: most attributes in one request, counting every key-value entry (resource,
    /// scope, data point, exemplar) and every element nested in array and map values.
    pub max_attributes: usize,
}

impl DecodeLimits {
    /// Defaults: 16 MiB compressed and 64 MiB decompressed (Prometheus sends at most a few
    /// MiB per request; vmagent's own cap is 32 MiB), 100k series (Prometheus'
    /// `max_samples_per_send` is 2000 by default, so 50x headroom), 128 labels per series,
    /// 1 KiB names and 16 KiB values (Mimir's defaults are tighter, but an edge should not
    /// refuse what its backends accept; backends apply their own). The element limits are
    /// explained at their constants: each leaves wide headroom over what Prometheus and the
    /// OpenTelemetry SDKs send while bounding what a hostile body can make the decoder hold.
    pub const fn new_default() -> Self {
        Self {
            max_compressed_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_series: 100_000,
            max_labels_per_series: 128,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 16 * 1024,
            max_samples: DEFAULT_MAX_SAMPLES,
            max_histograms: DEFAULT_MAX_HISTOGRAMS,
            max_histogram_buckets: DEFAULT_MAX_HISTOGRAM_BUCKETS,
            max_exemplars: DEFAULT_MAX_EXEMPLARS,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
        }
    }

    /// A conservative upper bound of the heap one decode under these limits may hold at its
    /// peak: remote-write 1.0 or 2.0 (decompressed buffer and columns), or OTLP (inflated
    /// body, the `prost` or JSON tree, the translated batches and translation scratch),
    /// whichever is largest. It counts Vec doubling (4 slots per element held, see
    /// `VEC_SLOTS_PER_ELEMENT`) and allocator overhead, not the compressed body the caller
    /// already holds. Saturates instead of overflowing for unbounded limits.
    ///
    /// The gateway's hostile-client tests derive their RSS bound from it; its in-flight budget
    /// charges the decoded [`crate::Batch::heap_bytes`], which never exceeds it.
    pub fn worst_case_decoded_bytes(&self) -> usize {
        self.worst_case_remote_write_bytes()
            .max(self.worst_case_otlp_bytes())
    }

    /// [`DecodeLimits::worst_case_decoded_bytes`] for remote-write 1.0 and 2.0 only (2.0 adds
    /// its symbols table and series index to 1.0's buffer and columns): far below the OTLP
    /// bound, for a caller that knows which protocol it decodes.
    pub fn worst_case_remote_write_bytes(&self) -> usize {
        let d = self.max_decompressed_bytes;
        let symbols = mul(
            d / MIN_SYMBOL_WIRE_BYTES + 1,
            size_of::<crate::text::StrRange>(),
        );
        let series_index = column(self.max_series, size_of::<(usize, usize)>());
        let labels = d / MIN_LABEL_WIRE_BYTES + 1;
        // 2.0's reused list of one series' and one exemplar's label references.
        let refs = column(
            mul(self.max_labels_per_series, 4).saturating_add(2),
            size_of::<u32>(),
        );
        add(&[d, self.batch_bytes(1, labels), symbols, series_index, refs])
    }

    /// The columns of decoded batches holding together at most `series_factor` times the
    /// series limit and at most `max_labels` labels (series and exemplar labels: bounded by
    /// the bytes they are read from or built into, as well as by the per-series limit).
    fn batch_bytes(&self, series_factor: usize, max_labels: usize) -> usize {
        let series = mul(self.max_series, series_factor).saturating_add(1);
        let by_count = mul(
            series.saturating_add(self.max_exemplars),
            self.max_labels_per_series,
        );
        let labels = by_count.min(max_labels);
        add(&[
            column(series, size_of::<SeriesEntry>()),
            column(series, size_of::<MetadataEntry>()),
            // Series labels and exemplar labels: two columns holding `labels` together.
            column(labels, size_of::<Label>()),
            column(0, size_of::<Label>()),
            column(self.max_samples, size_of::<Sample>()),
            column(self.max_histograms, size_of::<Histogram>()),
            // Each histogram's buckets are Vecs of their own.
            slots(self.max_histogram_buckets, size_of::<u64>()),
            column(self.max_exemplars, size_of::<ExemplarEntry>()),
        ])
    }

    /// [`DecodeLimits::worst_case_decoded_bytes`] for OTLP only: the inflated body, the
    /// decoded tree (protobuf, or JSON with the values `serde` buffers for flattened fields),
    /// the translated batches with their string buffers, and translation scratch.
    pub fn worst_case_otlp_bytes(&self) -> usize {
        let d = self.max_decompressed_bytes;
        let body = d.saturating_add(crate::otlp::GUNZIP_MAX_STEP);
        let tree = self.otlp_tree_bytes();
        // One builder buffer per tenant group, together bounded by the decompressed limit
        // plus one label each; doubled while growing.
        let label = self
            .max_label_name_bytes
            .saturating_add(self.max_label_value_bytes);
        let strings = mul(d.saturating_add(label), 2);
        // Translation builds a point's labels (joined values of colliding attribute names
        // included) from the tree's strings: at most the body again, twice while joining;
        // plus one point's exemplars sorted by bucket, bucket counts merged across scales
        // and label lists.
        let scratch = add(&[
            mul(d, 2),
            column(self.max_exemplars, 3 * size_of::<usize>()),
            column(self.max_histogram_buckets, size_of::<u64>()),
            column(
                mul(self.max_labels_per_series, 4),
                4 * size_of::<std::borrow::Cow<'static, str>>(),
            ),
        ]);
        let json_buffer = mul(
            self.json_value_budget().min(d / 2 + 1),
            JSON_BUFFERED_VALUE_BYTES,
        );
        add(&[
            body,
            tree,
            json_buffer,
            // A built label holds at least one byte of its buffer (its value is not empty).
            self.batch_bytes(2, d.saturating_add(label).saturating_add(1)),
            strings,
            scratch,
        ])
    }

    /// The `prost` (or serde) tree of an OTLP request whose element counts passed the
    /// pre-scan: each counted element at most one struct in a doubling Vec, every string and
    /// byte field a copy of wire bytes (at most the body) in its own allocation.
    fn otlp_tree_bytes(&self) -> usize {
        let containers = size_of::<proto::ResourceMetrics>()
            + size_of::<proto::ScopeMetrics>()
            + size_of::<proto::Metric>();
        let point = size_of::<proto::NumberDataPoint>()
            .max(size_of::<proto::HistogramDataPoint>())
            .max(size_of::<proto::SummaryDataPoint>());
        let attribute = size_of::<proto::KeyValue>().max(size_of::<proto::AnyValue>());
        let bucket = size_of::<proto::ValueAtQuantile>().max(size_of::<u64>());
        // Strings: a key and a value per attribute, three per metric and scope, one per
        // resource, trace and span ids per exemplar.
        let strings = add(&[
            mul(self.max_attributes, 2),
            mul(self.max_series, 7),
            mul(self.max_exemplars, 2),
        ]);
        add(&[
            slots(self.max_series, containers),
            slots(self.max_samples, point),
            slots(
                self.max_histograms,
                size_of::<proto::ExponentialHistogramDataPoint>(),
            ),
            slots(self.max_histogram_buckets, bucket),
            slots(self.max_exemplars, size_of::<proto::Exemplar>()),
            slots(self.max_attributes, attribute),
            self.max_decompressed_bytes,
            mul(strings, MIN_CHUNK),
        ])
    }

    /// How many JSON values (objects, arrays, strings, numbers, literals) the OTLP JSON
    /// pre-scan lets through: what requests at every element limit need when written the way
    /// SDKs write them (see `JSON_VALUES_PER_POINT`). It bounds the values `serde` may
    /// buffer for flattened fields, so a body of `{}`, `[]` or `0,` cannot cost more.
    pub(crate) fn json_value_budget(&self) -> usize {
        add(&[
            mul(
                add(&[
                    self.max_series,
                    self.max_samples,
                    self.max_histograms,
                    self.max_exemplars,
                ]),
                JSON_VALUES_PER_POINT,
            ),
            mul(self.max_attributes, JSON_VALUES_PER_ATTRIBUTE),
            mul(self.max_histogram_buckets, JSON_VALUES_PER_BUCKET),
        ])
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::new_default()
    }
}

/// The refusal for one element more than `limit`. Cold: built only on the way out.
#[cold]
#[inline(never)]
pub(crate) fn too_many(element: Element, limit: usize) -> DecodeError {
    DecodeError::TooManyElements { element, limit }
}

/// What is left of one request's allowance of one kind of element. Decoders take from it
/// before they store an element, so the check is one compare per element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allowance {
    left: usize,
    limit: usize,
    element: Element,
}

impl Allowance {
    pub(crate) fn new(element: Element, limit: usize) -> Self {
        Self {
            left: limit,
            limit,
            element,
        }
    }

    /// Takes `n` elements, or refuses when fewer are left.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > self.left {
            return Err(too_many(self.element, self.limit));
        }
        self.left -= n;
        Ok(())
    }
}

/// Heap of one column: a Vec of `n` elements of `size` bytes grown by doubling (at most
/// twice what it holds, and at least 4 slots).
fn column(n: usize, size: usize) -> usize {
    add(&[mul(mul(n, size), 2), mul(size, 4), ALLOC_OVERHEAD])
}

/// Heap of `n` elements of `size` bytes held in many small doubling Vecs (per histogram,
/// per data point), each possibly its own allocation.
fn slots(n: usize, size: usize) -> usize {
    mul(
        n,
        size.saturating_mul(VEC_SLOTS_PER_ELEMENT)
            .saturating_add(ALLOC_OVERHEAD),
    )
}

fn mul(a: usize, b: usize) -> usize {
    a.saturating_mul(b)
}

fn add(terms: &[usize]) -> usize {
    terms.iter().fold(0usize, |a, b| a.saturating_add(*b))
}

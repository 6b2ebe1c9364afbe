//! Typed decode errors. Each variant says what failed and with which size, index or field,
//! because the message goes back to the client verbatim in a 4xx body.

/// Why a request body could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The request body is empty; remote-write always carries at least a snappy header.
    #[error("request body is empty")]
    EmptyBody,
    /// The compressed body is larger than the configured limit.
    #[error("compressed body is {size} bytes, over the limit of {limit} bytes")]
    CompressedTooLarge {
        /// Body size in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// The snappy header claims a decompressed size over the limit; refused before allocating.
    #[error("snappy header claims {claimed} decompressed bytes, over the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// Size the header claims.
        claimed: u64,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// The body is not valid snappy block format.
    #[error("invalid snappy block: {0}")]
    Snappy(String),
    /// The protobuf message ends inside a field.
    #[error("truncated protobuf: {what} at byte {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Byte offset in the decompressed message.
        offset: usize,
    },
    /// A field arrived with a wire type its schema does not allow.
    #[error("invalid protobuf: field {field} of {message} has wire type {wire_type}")]
    WireType {
        /// Message being decoded.
        message: &'static str,
        /// Field number.
        field: u32,
        /// Wire type seen.
        wire_type: u8,
    },
    /// A malformed protobuf construct (bad varint, field number 0, group wire types).
    #[error("invalid protobuf: {what} at byte {offset}")]
    Malformed {
        /// What is wrong.
        what: &'static str,
        /// Byte offset in the decompressed message.
        offset: usize,
    },
    /// More series than allowed in one request.
    #[error("request has more than {limit} series")]
    TooManySeries {
        /// Configured limit.
        limit: usize,
    },
    /// More labels on one series than allowed.
    #[error("series {series} has more than {limit} labels")]
    TooManyLabels {
        /// Index of the series in the request.
        series: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A label name longer than allowed.
    #[error("series {series}: label name of {len} bytes is over the limit of {limit}")]
    LabelNameTooLong {
        /// Index of the series in the request.
        series: usize,
        /// Length in bytes.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A label value longer than allowed.
    #[error("series {series}: value of label {name:?} is {len} bytes, over the limit of {limit}")]
    LabelValueTooLong {
        /// Index of the series in the request.
        series: usize,
        /// The label's name.
        name: String,
        /// Length in bytes.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A string field that is not valid UTF-8.
    #[error("series {series}: {what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Index of the series in the request (or metadata entry).
        series: usize,
        /// Which string.
        what: &'static str,
    },
    /// A label name outside the Prometheus data model (`[a-zA-Z_][a-zA-Z0-9_]*`).
    #[error("series {series}: invalid label name {name:?}")]
    InvalidLabelName {
        /// Index of the series in the request.
        series: usize,
        /// The offending name (lossy UTF-8).
        name: String,
    },
    /// Two labels of one series share a name.
    #[error("series {series}: duplicate label name {name:?}")]
    DuplicateLabelName {
        /// Index of the series in the request.
        series: usize,
        /// The repeated name.
        name: String,
    },
    /// An OTLP attribute list longer than a series may have labels.
    #[error("an OTLP resource, scope, data point or exemplar has {count} attributes, over the limit of {limit}")]
    TooManyAttributes {
        /// Attributes sent.
        count: usize,
        /// Configured limit (`max_labels_per_series`).
        limit: usize,
    },
    /// A gzip body that is not valid gzip.
    #[error("invalid gzip body: {0}")]
    Gzip(String),
    /// A compressed body that expands past the decompressed-size limit.
    #[error("body inflates past the limit of {limit} bytes")]
    InflatedTooLarge {
        /// Configured limit in bytes.
        limit: usize,
    },
    /// A protobuf message that does not decode (OTLP; remote-write uses its own decoder).
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
    /// A JSON body that does not parse as the message it should be.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Remote-write 2.0: the symbols table does not start with the empty string.
    #[error("symbols table must start with the empty string")]
    FirstSymbolNotEmpty,
    /// Remote-write 2.0: a reference points past the symbols table.
    #[error("series {series}: {what} reference {reference} is out of range (the symbols table has {len} entries)")]
    SymbolOutOfRange {
        /// Series index.
        series: usize,
        /// Which reference (label, exemplar label, help, unit).
        what: &'static str,
        /// The reference.
        reference: u32,
        /// Entries in the table.
        len: usize,
    },
    /// Remote-write 2.0: label references must come in (name, value) pairs.
    #[error("series {series}: {what} has an odd number of references")]
    OddLabelRefs {
        /// Series index.
        series: usize,
        /// `labels_refs` of the series or of an exemplar.
        what: &'static str,
    },
    /// A series without a `__name__` label.
    #[error("series {series} has no __name__ label")]
    MissingMetricName {
        /// Index of the series in the request.
        series: usize,
    },
    /// More elements of one kind (samples, histograms, buckets, exemplars, attributes) than
    /// one request may carry. Refused while decoding, before the element is stored, so what a
    /// request costs in memory follows the limits and not its body: an empty native histogram
    /// is 2 bytes on the wire and a few hundred decoded.
    #[error(
        "request has more than {limit} {} (limit {})",
        .element.what(),
        .element.limit_name()
    )]
    TooManyElements {
        /// Which kind of element.
        element: Element,
        /// Configured limit.
        limit: usize,
    },
    /// The caller's memory budget could not cover the decode (the gateway's bytes in flight
    /// across all connections); the request is fine and may be retried later.
    #[error("the decode memory budget is exhausted after {reserved} bytes; retry later")]
    BudgetExhausted {
        /// Bytes the decode had reserved when the next reservation was refused.
        reserved: usize,
    },
}

/// The kinds of element a request may carry a bounded number of (see [`crate::DecodeLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Element {
    /// Float samples (`max_samples`).
    Samples,
    /// Native histogram samples (`max_histograms`).
    Histograms,
    /// Native histogram bucket spans, bucket deltas or counts and custom bounds; OTLP
    /// explicit and exponential bucket counts and bounds and summary quantiles
    /// (`max_histogram_buckets`).
    HistogramBuckets,
    /// Exemplars (`max_exemplars`).
    Exemplars,
    /// OTLP attributes: key-value entries and nested array and map elements
    /// (`max_attributes`).
    Attributes,
    /// OTLP JSON values (objects, arrays, strings, numbers, literals), bounded by a budget
    /// derived from the element limits (see `DecodeLimits::worst_case_decoded_bytes`).
    JsonValues,
}

impl Element {
    /// What is counted, in words, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Element::Samples => "float samples",
            Element::Histograms => "native histograms",
            Element::HistogramBuckets => "histogram buckets",
            Element::Exemplars => "exemplars",
            Element::Attributes => "attributes",
            Element::JsonValues => "JSON values",
        }
    }

    /// The gateway configuration setting that sets the limit (`limits.<name>`), so a client
    /// or an operator reading the refusal knows what to change.
    pub fn limit_name(self) -> &'static str {
        match self {
            Element::Samples => "max_samples_per_request",
            Element::Histograms => "max_histograms_per_request",
            Element::HistogramBuckets => "max_histogram_buckets_per_request",
            Element::Exemplars => "max_exemplars_per_request",
            Element::Attributes => "max_attributes_per_request",
            Element::JsonValues => {
                "derived from max_samples_per_request and the other per-request element limits"
            }
        }
    }

    /// A short, stable name for metrics (see [`DecodeError::reason`]).
    pub fn reason(self) -> &'static str {
        match self {
            Element::Samples => "too_many_samples",
            Element::Histograms => "too_many_histograms",
            Element::HistogramBuckets => "too_many_buckets",
            Element::Exemplars => "too_many_exemplars",
            Element::Attributes => "too_many_attributes",
            Element::JsonValues => "too_many_json_values",
        }
    }
}

impl DecodeError {
    /// True when the error is about size (HTTP 413) rather than content (HTTP 400).
    /// [`DecodeError::BudgetExhausted`] is not: the request itself is within every limit, the
    /// gateway is busy (503 with `Retry-After`).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::CompressedTooLarge { .. }
                | DecodeError::DecompressedTooLarge { .. }
                | DecodeError::InflatedTooLarge { .. }
                | DecodeError::TooManyElements { .. }
        )
    }

    /// A short, stable, low-cardinality name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EmptyBody => "empty_body",
            DecodeError::CompressedTooLarge { .. } => "body_too_large",
            DecodeError::DecompressedTooLarge { .. } => "decompressed_too_large",
            DecodeError::Snappy(_) => "invalid_snappy",
            DecodeError::Truncated { .. }
            | DecodeError::WireType { .. }
            | DecodeError::Malformed { .. } => "invalid_protobuf",
            DecodeError::TooManySeries { .. } => "too_many_series",
            DecodeError::TooManyLabels { .. } => "too_many_labels",
            DecodeError::LabelNameTooLong { .. } => "label_name_too_long",
            DecodeError::LabelValueTooLong { .. } => "label_value_too_long",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::InvalidLabelName { .. } => "invalid_label_name",
            DecodeError::DuplicateLabelName { .. } => "duplicate_label_name",
            DecodeError::MissingMetricName { .. } => "missing_metric_name",
            DecodeError::FirstSymbolNotEmpty
            | DecodeError::SymbolOutOfRange { .. }
            | DecodeError::OddLabelRefs { .. } => "invalid_symbols",
            DecodeError::TooManyAttributes { .. } => "too_many_labels",
            DecodeError::Gzip(_) => "invalid_gzip",
            DecodeError::InflatedTooLarge { .. } => "decompressed_too_large",
            DecodeError::Protobuf(_) => "invalid_protobuf",
            DecodeError::Json(_) => "invalid_json",
            DecodeError::TooManyElements { element, .. } => element.reason(),
            DecodeError::BudgetExhausted { .. } => "memory_budget",
        }
    }
}

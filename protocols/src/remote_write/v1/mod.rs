//! Remote-write 1.0: `prometheus.WriteRequest`, snappy block compressed.
//!
//! Spec points this module enforces (remote-write 1.0, "Protocol" and "Labels"): every series
//! has a `__name__` label; label names are unique within a series and match
//! `[a-zA-Z_][a-zA-Z0-9_]*`; label values are UTF-8. Labels MUST arrive sorted; a sender that
//! does not sort is accepted and sorted here rather than refused, since sorting is cheap and
//! the data is still well defined. A label with an empty value is the same as an absent label
//! in the Prometheus data model, so it is dropped.

pub(crate) mod decode;
mod encode;
pub mod reference;

pub use decode::{
    decode, decode_message, decode_message_into, decode_message_with_names, LabelNames,
};
pub use encode::{
    encode, encode_compressed, encode_histogram, encode_metadata, encode_series_with_labels,
    reencode, ExtraLabels,
};

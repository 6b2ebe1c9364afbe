//! Remote-write 2.0 (`io.prometheus.write.v2.Request`): every string interned in a symbols
//! table that starts with the empty string, labels as pairs of references into it, metadata
//! per series. Encoding here (for sinks); decoding of client requests comes with the 2.0
//! listener.

mod encode;
pub mod reference;

pub use encode::V2Writer;

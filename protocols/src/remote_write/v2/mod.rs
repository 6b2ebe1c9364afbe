//! Remote-write 2.0 (`io.prometheus.write.v2.Request`): every string interned in a symbols
//! table that starts with the empty string, labels as pairs of references into it, metadata
//! per series. Decoding of client requests (zero-copy, see [`decode`]) and encoding for
//! sinks.

mod decode;
mod encode;
pub mod reference;

pub use decode::{decode, decode_message};
pub use encode::V2Writer;

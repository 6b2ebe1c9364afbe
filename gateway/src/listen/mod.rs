//! Listeners: the HTTP server (HTTP/1.1 and h2c on one port) and the mapping of every internal
//! outcome to a protocol answer.
//!
//! Owns request parsing up to the decoder and the answer codes. May call `tenant`, `protocols`
//! and `pipeline`; never touches storage.

mod http;
mod response;

pub use self::http::{serve, AppState};
pub use response::ApiError;

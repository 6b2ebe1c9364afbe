//! Listeners: the HTTP server (HTTP/1.1 and h2c on every port: remote-write, OTLP/HTTP and
//! OTLP/gRPC) and the mapping of every internal outcome to a protocol answer.
//!
//! Owns connections, request parsing up to the decoder and the answer codes; everything
//! between a decoded request and the pipeline is [`crate::ingest`]. May call `ingest`,
//! `protocols`, `cluster` (status page), `config`, and the error types of `pipeline`,
//! `tenant` and `wal` (to map them to answers); never touches storage.

pub mod budget;
mod conn;
mod grpc;
mod http;
mod otlp;
mod remote_write;
mod response;

pub use self::http::AppState;
pub use conn::{serve, ListenerTls, Role};
pub use grpc::GrpcBody;
pub use response::ApiError;

/// Every response body: plain HTTP answers, or a gRPC answer with trailers.
pub type ResponseBody = http_body_util::Either<http_body_util::Full<bytes::Bytes>, GrpcBody>;

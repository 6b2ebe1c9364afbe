//! Prometheus remote-write (<https://prometheus.io/docs/specs/remote_write_spec/>).

pub mod v1;
pub mod v2;

/// `Content-Type` of remote-write 1.0 bodies.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// The `proto` parameter naming the remote-write 1.0 message.
pub const PROTO_V1: &str = "prometheus.WriteRequest";
/// The `proto` parameter naming the remote-write 2.0 message.
pub const PROTO_V2: &str = "io.prometheus.write.v2.Request";

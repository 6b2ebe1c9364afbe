//! The load generator's library: a deterministic generator of realistic metrics traffic,
//! shared by `traceo-loadgen`, the criterion benches and the end-to-end tests so they all
//! measure the same payload shape.
//!
//! - [`gen`]: series pools and payloads from a seed (pure);
//! - [`wire`]: payloads as remote-write 1.0/2.0 and OTLP/HTTP/gRPC bodies and headers (pure);
//! - [`drive`]: connections, closed- and open-loop pacing, answers (network I/O only);
//! - [`report`]: latency histogram and counters, text and JSON;
//! - [`acks`]: the `--record-acks` file format (written by the runner, read by loss tests);
//! - [`sink`]: `--serve-204`, the upstream of a forwarding benchmark.
#![forbid(unsafe_code)]

pub mod acks;
pub mod drive;
pub mod gen;
pub mod report;
pub mod sink;
pub mod wire;

//! Traceo Gateway: the server behind the `traceo-gateway` binary.
//!
//! Modules, one per concern (each says what it owns and may call):
//! - [`cluster`]: upstream health, the fleet rule and the route table (being built, issue 8);
//! - [`config`]: the YAML format, validation, the embedded default;
//! - [`listen`]: HTTP listener, routes, the mapping of errors to answers;
//! - [`ingest`]: the one path of every protocol's decoded request (tenant, plan, submit);
//! - [`tenant`]: who sent a request;
//! - [`pipeline`]: routing a tagged batch to its region's sinks and awaiting durability;
//! - [`share`]: the tagged share of a request and the log record codec;
//! - [`sinks`]: where a region's data goes (Parquet, Kafka, null);
//! - [`wal`]: the write-ahead log files of a region;
//! - [`delivery`]: from each region's log to its sinks, with per-sink cursors;
//! - [`quarantine`]: each region's records its upstreams refused for good, replayable;
//! - [`telemetry`]: self-metrics and logs;
//! - [`server`]: wiring them together and shutting down in order.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod explain;
pub mod ingest;
pub mod listen;
pub mod pipeline;
pub mod quarantine;
pub mod reload;
pub mod server;
pub mod share;
pub mod sinks;
pub mod tail;
pub mod telemetry;
pub mod tenant;
pub mod wal;
pub mod yaml;

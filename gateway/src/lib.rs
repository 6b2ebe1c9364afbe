//! Traceo Gateway: the server behind the `traceo-gateway` binary.
//!
//! Modules, one per concern, in layers that depend one way (top to bottom; the request's
//! path through them and the enforced layering are in `docs/architecture.md`):
//! - [`server`], [`explain`], [`tail`]: wiring and shutdown; the command-line tools;
//! - [`reload`]: the residency policy and limit overrides reload;
//! - [`listen`]: sockets, the router, the protocol handlers, the answers;
//! - [`ingest`]: the one path of every protocol's decoded request (tenant, plan, submit);
//! - [`tenant`]: who sent a request;
//! - [`pipeline`]: region choice, log records, the durable submit;
//! - [`config`]: the YAML file, composed of sections each component validates;
//! - [`delivery`]: from each region's log to its sinks, with per-sink cursors;
//! - [`quarantine`]: each region's records its upstreams refused for good, replayable;
//! - [`sinks`]: the sink contract and its kinds (Parquet, Kafka, remote-write, null); [`ha`]:
//!   HA-pair deduplication, its election kept in gossip;
//! - [`cluster`]: upstream probes, gossip, fleet health and routes; [`limits`]: per-tenant
//!   rates and active series;
//! - [`wal`]: the write-ahead log files of a region;
//! - [`share`]: the tagged share of a request and the log record codec;
//! - [`backoff`], [`telemetry`], [`tls`], [`yaml`]: retry policy, self-metrics and logs, the
//!   listeners' TLS, YAML units.
#![forbid(unsafe_code)]

#[cfg(test)]
mod architecture;

pub mod backoff;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod explain;
pub mod ha;
pub mod ingest;
pub mod limits;
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
pub mod tls;
pub mod wal;
pub mod yaml;

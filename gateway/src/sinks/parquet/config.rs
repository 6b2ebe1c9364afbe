//! `regions[].sinks.parquet:`: the Parquet sink's section as written, its defaults, and its
//! validation into [`ParquetSinkConfig`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::yaml::HumanDuration;

/// `regions[].sinks.parquet:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetFile {
    /// Local directory to write under (created if missing).
    pub path: PathBuf,
    /// Rotate a file at this many buffered bytes. Default 64 MiB.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// Rotate a file when its oldest row is this old. Requests are acknowledged when their
    /// file is committed, so this bounds request latency. Default `5s`.
    #[serde(default = "default_max_file_age")]
    pub max_file_age: HumanDuration,
    /// Requests queued for the sink before new ones get 503. Default 1024.
    #[serde(default = "crate::sinks::default_queue_capacity")]
    pub queue_capacity: usize,
}

const fn default_max_file_bytes() -> usize {
    64 << 20
}
const fn default_max_file_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// The Parquet sink of one region.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    /// Local directory the object store is rooted at.
    pub path: PathBuf,
    /// Close a file once its buffered rows reach this many bytes (estimated, uncompressed).
    pub max_file_bytes: usize,
    /// Close a file once its first row is this old.
    pub max_file_age: Duration,
    /// Requests queued for the sink before new ones are refused with 503.
    pub queue_capacity: usize,
}

impl ParquetFile {
    /// Checks meaning; every problem names its field under `prefix`.
    pub(crate) fn validate(self, prefix: &str, problems: &mut Vec<String>) -> ParquetSinkConfig {
        let p = self;
        if p.max_file_bytes == 0 {
            problems.push(format!("{prefix}.max_file_bytes: must be greater than 0"));
        }
        if p.max_file_age.0.is_zero() {
            problems.push(format!("{prefix}.max_file_age: must be greater than 0"));
        }
        if p.queue_capacity == 0 {
            problems.push(format!("{prefix}.queue_capacity: must be greater than 0"));
        }
        if p.path.as_os_str().is_empty() {
            problems.push(format!("{prefix}.path: must not be empty"));
        }
        ParquetSinkConfig {
            path: p.path,
            max_file_bytes: p.max_file_bytes,
            max_file_age: p.max_file_age.0,
            queue_capacity: p.queue_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkConfig;

    #[test]
    fn the_embedded_default_writes_parquet_under_data() {
        let c = crate::config::Config::embedded_default();
        let SinkConfig::Parquet(p) = &c.regions[0].sinks[0] else {
            panic!("a parquet sink")
        };
        assert_eq!(p.path, PathBuf::from("./data"));
    }
}

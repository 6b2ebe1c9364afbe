//! The one place that lists the sink kinds. Each kind's folder owns its section of the file
//! (`sinks/<kind>/config.rs`: format, defaults, validation), its probe and its workers; here
//! each kind is one field of [`SinksFile`], one variant of [`SinkConfig`], and one arm per
//! operation. Adding a kind is a folder and those lines.

use std::collections::HashSet;

use residency_rules::RegionId;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{kafka, null, parquet, remote_write, SinkHandle};
use crate::cluster::probe::{SinkUpstreams, Watched};
use crate::cluster::Cluster;

/// Record bytes a sink's feeder may have in flight unless the kind needs more.
const DEFAULT_WINDOW: usize = 64 << 20;

/// `regions[].sinks:` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinksFile {
    /// Parquet files through an object store.
    #[serde(default)]
    pub parquet: Option<parquet::ParquetFile>,
    /// The region's Kafka cluster.
    #[serde(default)]
    pub kafka: Option<kafka::KafkaFile>,
    /// Frames like Kafka, then drops: for measuring the gateway itself. Data is lost.
    #[serde(default)]
    pub null: Option<null::NullFile>,
    /// Prometheus-compatible remote-write endpoints (Prometheus, Mimir, VictoriaMetrics).
    #[serde(default)]
    pub remote_write: Vec<remote_write::RemoteWriteFile>,
}

impl SinksFile {
    /// Each kind validates its own section; every problem names its field under `prefix`
    /// (`regions[i].sinks`). `upstream_names` holds the upstream names used anywhere in the
    /// file, which must be unique (nodes gossip about upstreams by name).
    pub fn validate(
        self,
        prefix: &str,
        region: &RegionId,
        upstream_names: &mut HashSet<String>,
        problems: &mut Vec<String>,
    ) -> Vec<SinkConfig> {
        let mut sinks = Vec::new();
        if let Some(p) = self.parquet {
            let p = p.validate(&format!("{prefix}.parquet"), problems);
            sinks.push(SinkConfig::Parquet(p));
        }
        if let Some(k) = self.kafka {
            let k = k.validate(&format!("{prefix}.kafka"), region, upstream_names, problems);
            sinks.push(SinkConfig::Kafka(k));
        }
        if let Some(n) = self.null {
            sinks.push(SinkConfig::Null(
                n.validate(&format!("{prefix}.null"), problems),
            ));
        }
        let mut rw_names = HashSet::new();
        for (j, w) in self.remote_write.into_iter().enumerate() {
            let w = w.validate(
                &format!("{prefix}.remote_write[{j}]"),
                &mut rw_names,
                problems,
            );
            sinks.push(SinkConfig::RemoteWrite(w));
        }
        sinks
    }
}

/// One sink of a region, validated.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Parquet files.
    Parquet(parquet::ParquetSinkConfig),
    /// A Kafka topic, over the region's clusters in failover order.
    Kafka(kafka::KafkaSinkConfig),
    /// Frames and drops (measurement only).
    Null(null::NullSinkConfig),
    /// A remote-write endpoint.
    RemoteWrite(remote_write::RemoteWriteSinkConfig),
}

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A Parquet sink.
    #[error(transparent)]
    Parquet(#[from] parquet::StartError),
    /// A Kafka sink.
    #[error(transparent)]
    Kafka(#[from] kafka::StartError),
    /// A null sink.
    #[error(transparent)]
    Null(#[from] null::StartError),
    /// A remote-write sink.
    #[error(transparent)]
    RemoteWrite(#[from] remote_write::StartError),
}

/// A started sink: its handle, and what to await at shutdown once `stop` fired.
pub struct Started {
    /// Queues batches to the sink.
    pub handle: SinkHandle,
    /// Its tasks on the runtime.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its own threads.
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

impl SinkConfig {
    /// Starts the sink of `region`: `shards` workers where the kind shards, following the
    /// region's route in `cluster` where it fails over.
    pub fn spawn(
        &self,
        region: &RegionId,
        shards: usize,
        stop: &CancellationToken,
        cluster: &Cluster,
    ) -> Result<Started, StartError> {
        let threaded = |(handle, threads)| Started {
            handle,
            tasks: Vec::new(),
            threads,
        };
        Ok(match self {
            SinkConfig::Parquet(p) => {
                let (handle, task) = parquet::spawn(region.clone(), p.clone(), stop.clone())?;
                Started {
                    handle,
                    tasks: vec![task],
                    threads: Vec::new(),
                }
            }
            SinkConfig::Kafka(k) => {
                let route = cluster
                    .route(region)
                    .expect("Cluster::new gives every failing-over sink its route");
                threaded(kafka::spawn(
                    region.clone(),
                    k.clone(),
                    shards,
                    stop.clone(),
                    route,
                )?)
            }
            SinkConfig::Null(n) => threaded(null::spawn(
                region.clone(),
                n.clone(),
                shards,
                stop.clone(),
            )?),
            SinkConfig::RemoteWrite(w) => threaded(remote_write::spawn(
                region.clone(),
                w.clone(),
                shards,
                stop.clone(),
            )?),
        })
    }

    /// The name of the sink's delivery cursor file in its region's log directory: the kind,
    /// and for a kind a region may have several of, the sink's name (characters other than
    /// ASCII letters, digits and `-` become `_`). Part of the on-disk format of existing logs.
    pub fn cursor_name(&self) -> String {
        let name = match self {
            SinkConfig::Parquet(_) => "parquet".to_string(),
            SinkConfig::Kafka(_) => "kafka".to_string(),
            SinkConfig::Null(_) => "null".to_string(),
            SinkConfig::RemoteWrite(w) => format!("remote_write_{}", w.name),
        };
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }

    /// Record bytes the sink's feeder may have in flight: a Parquet file fills from it, so
    /// it takes at least two files' worth.
    pub fn window_bytes(&self) -> usize {
        match self {
            SinkConfig::Parquet(p) => (2 * p.max_file_bytes).max(DEFAULT_WINDOW),
            _ => DEFAULT_WINDOW,
        }
    }

    /// The largest one series may encode to for this sink, where it has a bound of its own
    /// (a Kafka message); the pipeline refuses a larger series at ingest.
    pub fn max_series_bytes(&self) -> Option<usize> {
        match self {
            SinkConfig::Kafka(k) => Some(k.max_series_bytes()),
            _ => None,
        }
    }

    /// The upstreams the fleet should watch for this sink of `region`, if any.
    pub fn upstreams(&self, region: &RegionId) -> Option<SinkUpstreams> {
        match self {
            // An object store is watched and shown; a region has one, so it has no route.
            SinkConfig::Parquet(p) => Some(SinkUpstreams {
                region: region.clone(),
                upstreams: vec![Watched {
                    name: format!("parquet-{region}"),
                    kind: "object_store",
                    setup: parquet::probe::setup(p.store.clone()),
                }],
                failover: false,
            }),
            SinkConfig::Kafka(k) => Some(SinkUpstreams {
                region: region.clone(),
                upstreams: k
                    .upstreams
                    .iter()
                    .map(|u| Watched {
                        name: u.name.clone(),
                        kind: "kafka",
                        setup: kafka::probe::setup(kafka::probe::KafkaProbeTarget {
                            brokers: u.brokers.clone(),
                            topic: k.health_topic.clone(),
                            properties: k.properties.clone(),
                            security: k.security.clone(),
                        }),
                    })
                    .collect(),
                failover: true,
            }),
            SinkConfig::Null(_) | SinkConfig::RemoteWrite(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn cursor_names_are_unique_per_sink_of_a_region() {
        let c = Config::from_yaml(
            "g.yaml",
            r#"
auth: { mode: off, default_region: eu }
regions:
  - id: eu
    sinks:
      parquet: { path: /tmp/x }
      kafka: { brokers: "b:9092" }
      remote_write:
        - { name: prom-a, url: "http://a:9090/api/v1/write" }
        - { name: prom_b, url: "http://b:9090/api/v1/write" }
"#,
        )
        .unwrap();
        let names: Vec<String> = c.regions[0].sinks.iter().map(|s| s.cursor_name()).collect();
        assert_eq!(
            names,
            [
                "parquet",
                "kafka",
                "remote_write_prom-a",
                "remote_write_prom_b"
            ]
        );
    }
}

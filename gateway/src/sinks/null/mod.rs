//! The `null` sink: frames each request exactly as the Kafka sink would (same partitioning,
//! same message format and size), counts the messages and drops them, then acknowledges. It
//! exists to measure what the gateway itself costs per sample, without a broker's; data sent
//! to it is lost, so it is never for a region whose data anyone keeps.

use std::thread::JoinHandle;

use residency_rules::RegionId;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::frame::Framing;
use super::{spawn_shards, ShardWorker, SinkHandle, SinkRequest};
pub mod config;

pub use config::{NullFile, NullSinkConfig};

use super::frame::KafkaFormat;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("null sink of region {region}: cannot start its threads: {source}")]
pub struct StartError {
    region: RegionId,
    source: std::io::Error,
}

/// Starts the sink as `shards` worker threads, as the Kafka sink runs, so the CPU it uses
/// shows up in the same places.
pub fn spawn(
    region: RegionId,
    cfg: NullSinkConfig,
    shards: usize,
    cancel: CancellationToken,
) -> Result<(SinkHandle, Vec<JoinHandle<()>>), StartError> {
    let name = format!("null/{region}");
    let workers = (0..shards.max(1))
        .map(|_| NullWorker {
            partitions: cfg.partitions,
            framing: Framing::new(cfg.format, cfg.message_bytes),
            messages: metrics::counter!("traceo_null_messages_total", "sink" => name.clone()),
            bytes: metrics::counter!("traceo_null_message_bytes_total", "sink" => name.clone()),
        })
        .collect();
    let (mut handle, threads) =
        spawn_shards(&name, region.clone(), cfg.queue_capacity, workers, &cancel)
            .map_err(|source| StartError { region, source })?;
    if cfg.format == KafkaFormat::RemoteWriteV1 {
        handle = handle.forwarding_v1();
    }
    let started = (handle, threads);
    info!(sink = %name, shards, "null sink started: data sent to this region is dropped");
    Ok(started)
}

struct NullWorker {
    partitions: u32,
    framing: Framing,
    messages: metrics::Counter,
    bytes: metrics::Counter,
}

impl ShardWorker for NullWorker {
    fn accept(&mut self, req: SinkRequest) {
        let (messages, bytes) = (&self.messages, &self.bytes);
        self.framing.frame(&req, self.partitions, |_, payload| {
            messages.increment(1);
            bytes.increment(payload.len() as u64);
            true
        });
        req.ack.accept();
    }

    fn stop(self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sinks::KafkaFormat;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_drops_and_acknowledges() {
        let cancel = CancellationToken::new();
        let cfg = NullSinkConfig {
            format: KafkaFormat::RemoteWriteV1,
            partitions: 16,
            message_bytes: 1_000_000,
            queue_capacity: 4,
        };
        let region = residency_rules::RegionId::parse("eu").unwrap();
        let (handle, threads) = spawn(region, cfg, 3, cancel.clone()).unwrap();
        let share = Arc::new(crate::share::testing::share(100));
        let ack = handle.enqueue(share).unwrap();
        assert_eq!(ack.await.unwrap(), Ok(()));
        cancel.cancel();
        tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| t.join().unwrap()))
            .await
            .unwrap();
        assert!(!handle.is_running());
    }
}

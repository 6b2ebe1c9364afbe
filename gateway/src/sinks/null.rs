//! The `null` sink: frames each request exactly as the Kafka sink would (same partitioning,
//! same message format and size), counts the messages and drops them, then acknowledges. It
//! exists to measure what the gateway itself costs per sample, without a broker's; data sent
//! to it is lost, so it is never for a region whose data anyone keeps.

use std::thread::JoinHandle;

use residency_rules::RegionId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::frame::frame_batch;
use super::{drain_on_thread, SinkHandle, SinkRequest};
use crate::config::NullSinkConfig;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("null sink of region {region}: cannot start its thread: {source}")]
pub struct StartError {
    region: RegionId,
    source: std::io::Error,
}

/// Starts the sink on its own thread, as the Kafka sink runs, so the CPU it uses shows up
/// in the same place.
pub fn spawn(
    region: RegionId,
    cfg: NullSinkConfig,
    cancel: CancellationToken,
) -> Result<(SinkHandle, JoinHandle<()>), StartError> {
    let name = format!("null/{region}");
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let runtime = tokio::runtime::Handle::current();
    let sink_name = name.clone();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run(sink_name, cfg, rx, cancel, runtime))
        .map_err(|source| StartError {
            region: region.clone(),
            source,
        })?;
    info!(sink = %name, "null sink started: data sent to this region is dropped");
    Ok((SinkHandle::new(name, region, tx), thread))
}

fn run(
    name: String,
    cfg: NullSinkConfig,
    rx: mpsc::Receiver<SinkRequest>,
    cancel: CancellationToken,
    runtime: tokio::runtime::Handle,
) {
    let messages = metrics::counter!("traceo_null_messages_total", "sink" => name.clone());
    let bytes = metrics::counter!("traceo_null_message_bytes_total", "sink" => name.clone());
    let accept = |req: SinkRequest| {
        frame_batch(
            &req.batch,
            cfg.partitions,
            cfg.format,
            cfg.message_bytes,
            |_, payload| {
                messages.increment(1);
                bytes.increment(payload.len() as u64);
                true
            },
        );
        req.ack.accept();
    };
    drain_on_thread(rx, &cancel, &runtime, accept);
    info!(sink = %name, "null sink stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::KafkaFormat;

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
        let (handle, thread) = spawn(region, cfg, cancel.clone()).unwrap();
        let share = Arc::new(super::super::frame::tests::share(100));
        let ack = handle.enqueue(share).unwrap();
        assert_eq!(ack.await.unwrap(), Ok(()));
        cancel.cancel();
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
        assert!(!handle.is_running());
    }
}

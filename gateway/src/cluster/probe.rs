//! Probes of Kafka upstreams: a metadata request for the health topic, then one produce to
//! it acknowledged by all in-sync replicas, each within the probe timeout. A broker that
//! answers metadata but cannot take a write (disk full, no leader) fails the probe.
//!
//! Object stores (the Parquet sinks' roots): a put and a delete of a small probe object.
//!
//! One thread per upstream; Kafka probes use their own small librdkafka producer (not the sink's: a probe
//! must not queue behind a full delivery queue, nor be idempotent, whose epoch handling
//! would tie probe failures to the data path).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::Probe;

/// One probe's outcome, for the control loop.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Index of the upstream in the cluster's list.
    pub upstream: usize,
    /// Outcome.
    pub probe: Probe,
    /// Why it failed, or a caveat on a success.
    pub detail: Option<String>,
}

/// What a Kafka probe needs.
#[derive(Debug, Clone)]
pub struct KafkaProbeTarget {
    /// Index of the upstream.
    pub upstream: usize,
    /// Upstream name, for logs.
    pub name: String,
    /// Bootstrap brokers.
    pub brokers: String,
    /// Health topic.
    pub topic: String,
    /// The sink's extra librdkafka settings (security settings apply to probes too).
    pub properties: std::collections::BTreeMap<String, String>,
}

/// The last delivery report, by probe number.
#[derive(Default)]
struct ProbeContext {
    report: Mutex<Option<(u64, Result<(), String>)>>,
}

impl ClientContext for ProbeContext {}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, n: Self::DeliveryOpaque) {
        let r = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        if let Ok(mut slot) = self.report.lock() {
            *slot = Some((*n, r));
        }
    }
}

/// What a probe thread needs besides its target.
#[derive(Clone)]
pub struct ProbeLoop {
    /// This node, written into probe messages and objects.
    pub node_id: String,
    /// Time between probes.
    pub interval: Duration,
    /// Probe deadline.
    pub timeout: Duration,
    /// Where results go.
    pub results: mpsc::Sender<ProbeResult>,
    /// Set at shutdown.
    pub stop: Arc<AtomicBool>,
}

impl ProbeLoop {
    /// Runs `probe` every `interval` on a thread named after the upstream until stopped or
    /// the receiver is gone. `setup` runs first on that thread and builds the probe (a failure
    /// is reported as a failed probe, every interval, with its reason).
    fn spawn<P>(
        self,
        upstream: usize,
        name: &str,
        setup: impl FnOnce() -> Result<P, String> + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>>
    where
        P: FnMut(u64) -> (Probe, Option<String>),
    {
        std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || {
                let mut probe = setup();
                let mut n: u64 = 0;
                let mut next = Instant::now();
                while !self.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    next = now + self.interval;
                    n += 1;
                    let (probe, detail) = match &mut probe {
                        Ok(p) => p(n),
                        Err(e) => (Probe::Failed, Some(e.clone())),
                    };
                    let sent = self.results.blocking_send(ProbeResult {
                        upstream,
                        probe,
                        detail,
                    });
                    if sent.is_err() {
                        return;
                    }
                }
            })
    }
}

/// Starts the probe thread of one Kafka upstream.
pub fn spawn_kafka(target: KafkaProbeTarget, l: ProbeLoop) -> std::io::Result<JoinHandle<()>> {
    let (upstream, name) = (target.upstream, target.name.clone());
    let (node_id, timeout) = (l.node_id.clone(), l.timeout);
    l.spawn(upstream, &name, move || {
        let mut c = ClientConfig::new();
        for (k, v) in &target.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &target.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .set("socket.timeout.ms", timeout.as_millis().max(10).to_string())
            // Reconnect quickly once the upstream is back, so recovery is seen in seconds.
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        let producer: BaseProducer<ProbeContext> =
            c.create_with_context(ProbeContext::default())
                .map_err(|e| format!("cannot create the probe client: {e}"))?;
        Ok(move |n| probe_once(&producer, &target, &node_id, n, timeout))
    })
}

/// What an object-store probe needs.
#[derive(Debug, Clone)]
pub struct ObjectStoreProbeTarget {
    /// Index of the upstream.
    pub upstream: usize,
    /// Upstream name, for logs.
    pub name: String,
    /// Root of the store (the Parquet sink's `path`).
    pub root: std::path::PathBuf,
}

/// Starts the probe thread of one object store: each probe puts a small object under
/// `_traceo_probe/` and deletes it, both within the timeout (a hung mount fails the probe
/// instead of hanging it).
pub fn spawn_object_store(
    target: ObjectStoreProbeTarget,
    l: ProbeLoop,
) -> std::io::Result<JoinHandle<()>> {
    use object_store::{ObjectStoreExt, PutPayload};
    let (node_id, timeout) = (l.node_id.clone(), l.timeout);
    l.spawn(target.upstream, &target.name.clone(), move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the probe runtime: {e}"))?;
        let root = std::fs::canonicalize(&target.root)
            .map_err(|e| format!("object store at {}: {e}", target.root.display()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| format!("object store at {}: {e}", root.display()))?;
        let path = object_store::path::Path::from(format!("_traceo_probe/{node_id}"));
        Ok(move |n: u64| {
            let started = Instant::now();
            let io = async {
                store
                    .put(&path, PutPayload::from(format!("{node_id} {n}")))
                    .await
                    .map_err(|e| format!("put {path}: {e}"))?;
                store
                    .delete(&path)
                    .await
                    .map_err(|e| format!("delete {path}: {e}"))
            };
            match runtime.block_on(async { tokio::time::timeout(timeout, io).await }) {
                Ok(Ok(())) => (Probe::Ok(started.elapsed()), None),
                Ok(Err(e)) => (Probe::Failed, Some(e)),
                Err(_) => (
                    Probe::Failed,
                    Some(format!("put and delete not done within {timeout:?}")),
                ),
            }
        })
    })
}

/// One probe: metadata, then a produce awaited up to the deadline.
fn probe_once(
    producer: &BaseProducer<ProbeContext>,
    target: &KafkaProbeTarget,
    node_id: &str,
    n: u64,
    timeout: Duration,
) -> (Probe, Option<String>) {
    let started = Instant::now();
    let deadline = started + timeout;
    let md = match producer
        .client()
        .fetch_metadata(Some(&target.topic), timeout)
    {
        Ok(md) => md,
        Err(e) => return (Probe::Failed, Some(format!("metadata: {e}"))),
    };
    let topic_error = md
        .topics()
        .iter()
        .find(|t| t.name() == target.topic)
        .map(|t| t.error().map(RDKafkaErrorCode::from));
    match topic_error {
        Some(None) => {}
        Some(Some(RDKafkaErrorCode::UnknownTopicOrPartition)) | None => {
            // The brokers answered; without the topic only metadata can be checked.
            return (
                Probe::Ok(started.elapsed()),
                Some(format!(
                    "health topic {} missing: probing metadata only (create it with one partition)",
                    target.topic
                )),
            );
        }
        Some(Some(code)) => {
            return (
                Probe::Failed,
                Some(format!("health topic {}: {code:?}", target.topic)),
            )
        }
    }
    let payload = format!("{node_id} {n}");
    let record = BaseRecord::with_opaque_to(&target.topic, Box::new(n))
        .key(node_id)
        .payload(&payload);
    if let Err((e, _)) = producer.send(record) {
        return (Probe::Failed, Some(format!("produce: {e}")));
    }
    loop {
        producer.poll(Duration::from_millis(10));
        let report = producer.context().report.lock().ok().and_then(|mut r| {
            // Reports of earlier probes that timed out are dropped here.
            match r.take() {
                Some((m, result)) if m == n => Some(result),
                _ => None,
            }
        });
        match report {
            Some(Ok(())) => return (Probe::Ok(started.elapsed()), None),
            Some(Err(e)) => return (Probe::Failed, Some(format!("produce: {e}"))),
            None if Instant::now() >= deadline => {
                return (
                    Probe::Failed,
                    Some(format!("produce: no acknowledgement within {timeout:?}")),
                )
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_result(root: std::path::PathBuf) -> ProbeResult {
        let (tx, mut rx) = mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let t = spawn_object_store(
            ObjectStoreProbeTarget {
                upstream: 7,
                name: "parquet-test".into(),
                root,
            },
            ProbeLoop {
                node_id: "node-1".into(),
                interval: Duration::from_millis(50),
                timeout: Duration::from_secs(5),
                results: tx,
                stop: stop.clone(),
            },
        )
        .unwrap();
        let r = rx.blocking_recv().unwrap();
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        t.join().unwrap();
        r
    }

    #[test]
    fn an_object_store_probe_puts_and_deletes_and_fails_on_a_missing_root() {
        let dir = tempfile::tempdir().unwrap();
        let ok = first_result(dir.path().to_path_buf());
        assert_eq!(ok.upstream, 7);
        assert!(matches!(ok.probe, Probe::Ok(_)), "{ok:?}");
        assert_eq!(ok.detail, None);
        // The probe object is gone again.
        let left = std::fs::read_dir(dir.path().join("_traceo_probe"))
            .unwrap()
            .count();
        assert_eq!(left, 0);

        let bad = first_result(dir.path().join("missing"));
        assert_eq!(bad.probe, Probe::Failed);
        let detail = bad.detail.unwrap();
        assert!(detail.contains("missing"), "{detail}");
    }
}

//! Probes of Kafka upstreams: a metadata request for the health topic, then one produce to
//! it acknowledged by all in-sync replicas, each within the probe timeout. A broker that
//! answers metadata but cannot take a write (disk full, no leader) fails the probe.
//!
//! One thread per upstream with its own small librdkafka producer (not the sink's: a probe
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

/// Starts the probe thread of one Kafka upstream; it sends a result every `interval` until
/// `stop` is set or the receiver is gone.
pub fn spawn_kafka(
    target: KafkaProbeTarget,
    node_id: String,
    interval: Duration,
    timeout: Duration,
    results: mpsc::Sender<ProbeResult>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("probe-{}", target.name))
        .spawn(move || {
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
                match c.create_with_context(ProbeContext::default()) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = results.blocking_send(ProbeResult {
                            upstream: target.upstream,
                            probe: Probe::Failed,
                            detail: Some(format!("cannot create the probe client: {e}")),
                        });
                        return;
                    }
                };
            let mut n: u64 = 0;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next = now + interval;
                n += 1;
                let (probe, detail) = probe_once(&producer, &target, &node_id, n, timeout);
                let sent = results.blocking_send(ProbeResult {
                    upstream: target.upstream,
                    probe,
                    detail,
                });
                if sent.is_err() {
                    return;
                }
            }
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

//! The Kafka sink's probe: a metadata request for the health topic, then one produce to
//! it acknowledged by all in-sync replicas, each within the probe timeout. A broker that
//! answers metadata but cannot take a write (disk full, no leader) fails the probe.
//!
//! Probes use their own small librdkafka producer (not the sink's: a probe must not queue
//! behind a full delivery queue, nor be idempotent, whose epoch handling would tie probe
//! failures to the data path).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::cluster::probe::{ProbeFn, ProbeSetup};
use crate::cluster::Probe;

/// What a Kafka probe needs.
#[derive(Debug, Clone)]
pub struct KafkaProbeTarget {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Health topic.
    pub topic: String,
    /// The sink's extra librdkafka settings.
    pub properties: std::collections::BTreeMap<String, String>,
    /// The sink's TLS and SASL: probes reach the cluster as the sink does.
    pub security: super::security::KafkaSecurity,
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

/// The probe of one Kafka cluster.
pub fn setup(target: KafkaProbeTarget) -> ProbeSetup {
    Box::new(move |node_id: &str, timeout: Duration| {
        let node_id = node_id.to_string();
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
        target
            .security
            .apply(&mut c)
            .map_err(|e| format!("cannot create the probe client: {e}"))?;
        let producer: BaseProducer<ProbeContext> =
            c.create_with_context(ProbeContext::default())
                .map_err(|e| format!("cannot create the probe client: {e}"))?;
        Ok(Box::new(move |n| probe_once(&producer, &target, &node_id, n, timeout)) as ProbeFn)
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

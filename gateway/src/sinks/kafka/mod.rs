//! The Kafka sink of one region: `pipeline.shards` workers, each with its own idempotent
//! librdkafka producer, framing buffers and metadata cache, so workers share no lock.
//!
//! A request's series are split over the workers and grouped by partition, both by the
//! series' identity hash ([`crate::share::series_hash`]), so a series always meets the same
//! worker, lands in one partition and keeps its order there; they are framed
//! into `prometheus.WriteRequest` messages of about `message_bytes`, with headers `tenant`,
//! `region`, `content-type` and `schema-version`. A request is acknowledged when the broker
//! confirmed every one of its messages (`acks=all`): each message carries the request's
//! [`Ack`] as its delivery opaque, so the ack completes when the last delivery report is in,
//! failed if any report was an error.
//!
//! Each producer is a `ThreadedProducer` (its own polling thread, delivery callbacks, no
//! per-message futures) driven from its worker's thread. When librdkafka's queue is full the
//! worker waits for deliveries instead of pulling more
//! requests, so the bounded request queue fills and new requests get a retryable 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::ClientContext;
use residency_rules::RegionId;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::frame::Framing;
use super::{spawn_shards, Ack, Reason, ShardWorker, SinkError, SinkHandle, SinkRequest};
use crate::cluster::RegionRoute;
pub mod config;
pub mod probe;
pub mod security;

pub use config::{KafkaCompression, KafkaFile, KafkaSinkConfig, KafkaUpstream};

use super::frame::KafkaFormat;

/// `content-type` header of remote-write 1.0 messages.
pub const CONTENT_TYPE_V1: &str = "application/x-protobuf;proto=prometheus.WriteRequest";
/// `content-type` header of remote-write 2.0 messages.
pub const CONTENT_TYPE_V2: &str = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
/// `schema-version` header: bumped on any incompatible change of message or headers.
pub const SCHEMA_VERSION: &str = "1";

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// librdkafka refused the configuration.
    #[error("kafka sink of region {region}: {source}")]
    Client {
        /// Region.
        region: RegionId,
        /// Cause.
        source: KafkaError,
    },
    /// The sink thread could not be started.
    #[error("kafka sink of region {region}: cannot start its thread: {source}")]
    Thread {
        /// Region.
        region: RegionId,
        /// Cause.
        source: std::io::Error,
    },
}

/// What a message carries to its delivery report.
struct Delivery {
    ack: Arc<Ack>,
    started: Instant,
}

struct Context {
    sink: String,
    /// Set when a delivery failed in a way only a new producer id cures.
    renew: Arc<AtomicBool>,
    metrics: SinkMetrics,
    /// The region's route and this producer's upstream in it: the first delivery after a
    /// switch ends the failover.
    route: Arc<RegionRoute>,
    upstream: usize,
}

/// Metric handles registered once per sink: looking them up (and allocating their labels)
/// per message would be work repeated on the hot path.
#[derive(Clone)]
struct SinkMetrics {
    messages: metrics::Counter,
    message_bytes: metrics::Counter,
    queue_full: metrics::Counter,
    delivered: metrics::Counter,
    delivery_errors: metrics::Counter,
    delivery_seconds: metrics::Histogram,
}

impl SinkMetrics {
    fn new(sink: &str) -> Self {
        let labels = [("sink", sink.to_string())];
        Self {
            messages: metrics::counter!("traceo_kafka_messages_total", &labels),
            message_bytes: metrics::counter!("traceo_kafka_message_bytes_total", &labels),
            queue_full: metrics::counter!("traceo_kafka_queue_full_total", &labels),
            delivered: metrics::counter!("traceo_kafka_messages_delivered_total", &labels),
            delivery_errors: metrics::counter!("traceo_kafka_delivery_errors_total", &labels),
            delivery_seconds: metrics::histogram!("traceo_kafka_delivery_seconds", &labels),
        }
    }
}

/// Whether a Kafka error can clear by itself. Refusals of the data or the destination (a
/// message over `message.max.bytes` of the producer or the broker, a topic or partition the
/// cluster does not have, an invalid topic name, no permission, a record the broker finds
/// invalid) are answered the same every time: permanent, so the record is quarantined instead
/// of blocking its region. Everything else (transport, timeouts, a full queue, no leader, too
/// few in-sync replicas, errors this list does not know) is retried, as before: an unknown
/// error costs a retry loop, not data.
pub(crate) fn classify(e: &KafkaError, answer: String) -> SinkError {
    use RDKafkaErrorCode as C;
    let Some(code) = e.rdkafka_error_code() else {
        return SinkError::retryable(Reason::Other, answer);
    };
    let permanent = match code {
        C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => {
            Some(Reason::MessageTooLarge)
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition => {
            Some(Reason::UnknownTopic)
        }
        C::InvalidTopic => Some(Reason::InvalidTopic),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => Some(Reason::NotAuthorized),
        C::InvalidRecord
        | C::InvalidTimestamp
        | C::PolicyViolation
        | C::UnsupportedForMessageFormat
        | C::InvalidMessage => Some(Reason::InvalidRecord),
        _ => None,
    };
    if let Some(reason) = permanent {
        return SinkError::permanent(reason, answer);
    }
    let reason = match code {
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            Reason::Timeout
        }
        C::QueueFull => Reason::QueueFull,
        C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::NetworkException
        | C::Resolve
        | C::BrokerNotAvailable => Reason::Transport,
        C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::ReplicaNotAvailable => Reason::Unavailable,
        _ => Reason::Other,
    };
    SinkError::retryable(reason, answer)
}

/// Delivery errors after which this producer's id or epoch is unusable on the broker: seen
/// with tansu, which answers `ProducerFenced` to the epoch bump librdkafka performs after
/// messages timed out in flight during an outage. Only a new producer recovers.
fn needs_new_producer(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.metrics.delivered.increment(1);
                self.route.delivered(self.upstream);
                self.metrics
                    .delivery_seconds
                    .record(delivery.started.elapsed().as_secs_f64());
            }
            Err((e, _)) => {
                self.metrics.delivery_errors.increment(1);
                warn!(sink = %self.sink, error = %e, "kafka delivery failed");
                if needs_new_producer(e) {
                    self.renew.store(true, Ordering::Relaxed);
                }
                delivery
                    .ack
                    .fail(classify(e, format!("{}: delivery failed: {e}", self.sink)));
            }
        }
        // Dropping `delivery` releases this message's hold on the request's ack.
    }
}

/// Builds the librdkafka configuration of a sink's producer for one of its clusters.
fn client_config(cfg: &KafkaSinkConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // A cluster that comes back is reconnected to within a second (default: up to 10 s).
        .set("reconnect.backoff.max.ms", "1000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "compression.type",
            match cfg.compression {
                KafkaCompression::Lz4 => "lz4",
                KafkaCompression::Zstd => "zstd",
                KafkaCompression::None => "none",
            },
        )
        .set("linger.ms", cfg.linger.as_millis().to_string())
        // A request fails (and is retried by its client) rather than wait longer than this.
        .set(
            "message.timeout.ms",
            cfg.delivery_timeout.as_millis().to_string(),
        )
        // Room for one framed message plus the record overhead, uncompressed.
        .set(
            "message.max.bytes",
            (cfg.message_bytes.saturating_mul(2).max(1 << 20)).to_string(),
        )
        .set("batch.size", cfg.message_bytes.max(16_384).to_string());
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Starts the Kafka sink of `region` as `shards` workers, each with its own producer per
/// cluster of the region (so no lock is shared between them); `route` says which cluster
/// takes traffic now. Returns its handle and the threads to join on stop.
pub fn spawn(
    region: RegionId,
    cfg: KafkaSinkConfig,
    shards: usize,
    cancel: CancellationToken,
    route: Arc<RegionRoute>,
) -> Result<(SinkHandle, Vec<JoinHandle<()>>), StartError> {
    let name = format!("kafka/{region}");
    let sink_metrics = SinkMetrics::new(&name);
    let mut workers = Vec::new();
    for _ in 0..shards.max(1) {
        let mut conns = Vec::new();
        for (i, upstream) in cfg.upstreams.iter().enumerate() {
            let conn = Conn::new(&name, &cfg, &upstream.brokers, &sink_metrics, &route, i)
                .map_err(|source| StartError::Client {
                    region: region.clone(),
                    source,
                })?;
            conns.push(conn);
        }
        workers.push(KafkaWorker {
            framing: Framing::new(cfg.format, cfg.message_bytes),
            sink: KafkaSink {
                name: name.clone(),
                region: region.clone(),
                cfg: cfg.clone(),
                metrics: sink_metrics.clone(),
                active: route.current(),
                route: route.clone(),
                conns,
            },
        });
    }
    let (mut handle, threads) =
        spawn_shards(&name, region.clone(), cfg.queue_capacity, workers, &cancel)
            .map_err(|source| StartError::Thread { region, source })?;
    if cfg.format == KafkaFormat::RemoteWriteV1 {
        handle = handle.forwarding_v1();
    }
    let started = (handle, threads);
    info!(sink = %name, shards, upstreams = ?route.upstreams(), "kafka sink started");
    Ok(started)
}

/// One worker of the sink: its framing buffers and its producer.
struct KafkaWorker {
    framing: Framing,
    sink: KafkaSink,
}

/// A worker's producers, one per cluster of the region, and the one in use.
struct KafkaSink {
    name: String,
    region: RegionId,
    cfg: KafkaSinkConfig,
    metrics: SinkMetrics,
    route: Arc<RegionRoute>,
    /// Index of the cluster this worker produces to.
    active: usize,
    conns: Vec<Conn>,
}

/// A producer to one cluster, with its metadata cache.
struct Conn {
    brokers: String,
    upstream: usize,
    producer: ThreadedProducer<Context>,
    renew: Arc<AtomicBool>,
    /// Partition count per topic, with when it was fetched.
    partitions: HashMap<String, (i32, Instant)>,
    /// `traffic_routing_requests_total` of this region and cluster.
    routed: metrics::Counter,
}

impl Conn {
    fn new(
        sink: &str,
        cfg: &KafkaSinkConfig,
        brokers: &str,
        metrics: &SinkMetrics,
        route: &Arc<RegionRoute>,
        upstream: usize,
    ) -> Result<Conn, KafkaError> {
        let renew = Arc::new(AtomicBool::new(false));
        let producer = Self::producer(sink, cfg, brokers, metrics, route, upstream, &renew)?;
        Ok(Conn {
            brokers: brokers.to_string(),
            upstream,
            producer,
            renew,
            partitions: HashMap::new(),
            routed: metrics::counter!(
                "traffic_routing_requests_total",
                "region" => route.region().to_string(),
                "upstream" => route.name(upstream).to_string()
            ),
        })
    }

    fn producer(
        sink: &str,
        cfg: &KafkaSinkConfig,
        brokers: &str,
        metrics: &SinkMetrics,
        route: &Arc<RegionRoute>,
        upstream: usize,
        renew: &Arc<AtomicBool>,
    ) -> Result<ThreadedProducer<Context>, KafkaError> {
        let mut c = client_config(cfg, brokers);
        cfg.security
            .apply(&mut c)
            .map_err(KafkaError::ClientCreation)?;
        c.create_with_context(Context {
            sink: sink.to_string(),
            renew: renew.clone(),
            metrics: metrics.clone(),
            route: route.clone(),
            upstream,
        })
    }
}

/// How long a topic's partition count is trusted before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(60);

impl ShardWorker for KafkaWorker {
    fn accept(&mut self, req: SinkRequest) {
        let sink = &mut self.sink;
        sink.follow_route();
        sink.renew_if_broken();
        let topic = sink.topic_for(req.batch.tenant.as_str());
        let partitions = match sink.partition_count(&topic) {
            Ok(n) => n,
            Err(e) => {
                warn!(sink = %sink.name, error = %e, "request not produced");
                req.ack.fail(e);
                return;
            }
        };
        sink.conns[sink.active].routed.increment(1);
        let framed = self.framing.frame(&req, partitions as u32, |p, payload| {
            sink.produce(&topic, p, payload, &req)
        });
        if framed {
            // Every message is queued; the ack now completes with the last delivery report.
            req.ack.accept();
        }
    }

    fn idle(&mut self) {
        self.sink.follow_route();
    }

    /// Shutting down, the queued requests were still produced (their clients wait for them);
    /// wait for their deliveries.
    fn stop(self) {
        let sink = self.sink;
        let timeout = sink.cfg.delivery_timeout + Duration::from_secs(1);
        for conn in &sink.conns {
            if let Err(e) = conn.producer.flush(timeout) {
                error!(sink = %sink.name, brokers = %conn.brokers, error = %e, "kafka flush at shutdown failed; unflushed requests are reported failed");
            }
        }
        info!(sink = %sink.name, "kafka sink worker stopped");
    }
}

impl KafkaSink {
    fn topic_for(&self, tenant: &str) -> String {
        self.cfg
            .topic
            .replace("{region}", self.region.as_str())
            .replace("{tenant}", tenant)
    }

    /// Moves to the cluster the region's route names now. Leaving a cluster the fleet sees
    /// down, what is still queued or in flight there is purged: those requests fail at once
    /// and the write-ahead log sends them again, to the new route, instead of waiting out
    /// `delivery_timeout` on a cluster that is gone. Leaving a usable one (failing back),
    /// its messages are left to finish.
    fn follow_route(&mut self) {
        let want = self.route.current();
        if want == self.active || want >= self.conns.len() {
            return;
        }
        let old = self.active;
        if !self.route.usable(old) {
            self.conns[old]
                .producer
                .purge(PurgeConfig::default().queue().inflight());
        }
        info!(sink = %self.name, from = self.route.name(old), to = self.route.name(want), "producing to another cluster of the region");
        self.active = want;
    }

    fn partition_count(&mut self, topic: &str) -> Result<i32, SinkError> {
        let conn = &mut self.conns[self.active];
        if let Some((n, at)) = conn.partitions.get(topic) {
            if at.elapsed() < METADATA_TTL {
                return Ok(*n);
            }
        }
        let upstream = self.route.name(self.active);
        let md = conn
            .producer
            .client()
            .fetch_metadata(Some(topic), self.cfg.delivery_timeout)
            .map_err(|e| {
                // The metadata request itself failing is the cluster, not the topic.
                SinkError::retryable(
                    Reason::Transport,
                    format!("{} ({upstream}): metadata of topic {topic}: {e}", self.name),
                )
            })?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| {
                // A broker answers for every topic asked about; an answer without it is odd
                // enough to be asked again rather than trusted.
                SinkError::retryable(
                    Reason::Other,
                    format!("{} ({upstream}): topic {topic} not in metadata", self.name),
                )
            })?;
        if let Some(e) = t.error() {
            let code = RDKafkaErrorCode::from(e);
            return Err(classify(
                &KafkaError::MetadataFetch(code),
                format!(
                    "{} ({upstream}): topic {topic}: {code:?} (create it, or enable auto-creation on the broker)",
                    self.name
                ),
            ));
        }
        let n = t.partitions().len() as i32;
        if n == 0 {
            // Being created: its partitions appear shortly.
            return Err(SinkError::retryable(
                Reason::Unavailable,
                format!(
                    "{} ({upstream}): topic {topic} has no partitions",
                    self.name
                ),
            ));
        }
        conn.partitions
            .insert(topic.to_string(), (n, Instant::now()));
        Ok(n)
    }

    /// Replaces a producer that hit a fatal error, or whose producer id the broker no longer
    /// accepts (see [`needs_new_producer`]): its pending messages fail (their requests are
    /// answered 503 and retried by their clients), and a fresh producer takes new ones.
    fn renew_if_broken(&mut self) {
        let conn = &mut self.conns[self.active];
        let fatal = conn.producer.client().fatal_error();
        let fenced = conn.renew.swap(false, Ordering::Relaxed);
        if fatal.is_none() && !fenced {
            return;
        }
        error!(sink = %self.name, upstream = self.route.name(conn.upstream), ?fatal, fenced, "kafka producer unusable; replacing it");
        metrics::counter!("traceo_kafka_producer_restarts_total", "sink" => self.name.clone())
            .increment(1);
        match Conn::producer(
            &self.name,
            &self.cfg,
            &conn.brokers,
            &self.metrics,
            &self.route,
            conn.upstream,
            &conn.renew,
        ) {
            Ok(p) => {
                // Dropping the old one purges and fails what it still held.
                conn.producer = p;
                conn.partitions.clear();
            }
            Err(e) => error!(sink = %self.name, error = %e, "cannot recreate the kafka producer"),
        }
    }

    /// Produces one message, waiting (not spinning) while librdkafka's queue is full. Returns
    /// false when the request failed and must not be produced further.
    fn produce(&mut self, topic: &str, partition: i32, payload: &[u8], req: &SinkRequest) -> bool {
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "tenant",
                value: Some(req.batch.tenant.as_str()),
            })
            .insert(Header {
                key: "region",
                value: Some(self.region.as_str()),
            })
            .insert(Header {
                key: "content-type",
                value: Some(match self.cfg.format {
                    KafkaFormat::RemoteWriteV1 => CONTENT_TYPE_V1,
                    KafkaFormat::RemoteWriteV2 => CONTENT_TYPE_V2,
                }),
            })
            .insert(Header {
                key: "schema-version",
                value: Some(SCHEMA_VERSION),
            });
        self.metrics.messages.increment(1);
        self.metrics.message_bytes.increment(payload.len() as u64);
        let mut record = BaseRecord::with_opaque_to(
            topic,
            Box::new(Delivery {
                ack: req.ack.clone(),
                started: Instant::now(),
            }),
        )
        .partition(partition)
        .key(req.batch.tenant.as_str())
        .payload(payload)
        .headers(headers);
        let deadline = Instant::now() + self.cfg.delivery_timeout;
        loop {
            match self.conns[self.active].producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if Instant::now() >= deadline {
                        req.ack.fail(SinkError::retryable(
                            Reason::QueueFull,
                            format!(
                                "{}: producer queue full for {:?}",
                                self.name, self.cfg.delivery_timeout
                            ),
                        ));
                        return false;
                    }
                    self.metrics.queue_full.increment(1);
                    // Deliveries free the queue; wait for them instead of spinning.
                    std::thread::sleep(Duration::from_millis(5));
                    record = back;
                }
                Err((e, _)) => {
                    let answer = format!(
                        "{}: produce {} bytes to {topic}: {e}",
                        self.name,
                        payload.len()
                    );
                    req.ack.fail(classify(&e, answer));
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(code: RDKafkaErrorCode) -> SinkError {
        classify(&KafkaError::MessageProduction(code), format!("{code:?}"))
    }

    #[test]
    fn refusals_of_the_data_or_the_topic_are_permanent() {
        for (code, reason) in [
            (
                RDKafkaErrorCode::MessageSizeTooLarge,
                Reason::MessageTooLarge,
            ),
            (
                RDKafkaErrorCode::MessageBatchTooLarge,
                Reason::MessageTooLarge,
            ),
            (
                RDKafkaErrorCode::UnknownTopicOrPartition,
                Reason::UnknownTopic,
            ),
            (RDKafkaErrorCode::UnknownTopic, Reason::UnknownTopic),
            (RDKafkaErrorCode::InvalidTopic, Reason::InvalidTopic),
            (
                RDKafkaErrorCode::TopicAuthorizationFailed,
                Reason::NotAuthorized,
            ),
            (RDKafkaErrorCode::InvalidRecord, Reason::InvalidRecord),
        ] {
            let e = produce(code);
            assert!(e.is_permanent(), "{code:?}");
            assert_eq!(e.reason(), reason, "{code:?}");
        }
    }

    #[test]
    fn outages_and_timeouts_are_retryable() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::ProducerFenced,
        ] {
            assert!(!produce(code).is_permanent(), "{code:?}");
        }
    }

    #[test]
    fn a_topic_missing_from_metadata_is_permanent() {
        let e = classify(
            &KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition),
            "topic metrics.a".into(),
        );
        assert!(e.is_permanent());
        assert_eq!(e.reason(), Reason::UnknownTopic);
    }

    #[test]
    fn an_error_without_a_code_is_retried() {
        let e = classify(&KafkaError::Canceled, "canceled".into());
        assert!(!e.is_permanent());
    }
}

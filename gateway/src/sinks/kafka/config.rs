//! `regions[].sinks.kafka:`: the Kafka sink's section as written, its defaults, and its
//! validation into [`KafkaSinkConfig`] (cluster names are unique over the whole file).

use std::collections::HashSet;
use std::time::Duration;

use residency_rules::RegionId;
use serde::Deserialize;

use super::security::{self, KafkaSecurity, SaslFile};
use crate::sinks::frame::KafkaFormat;
use crate::tls::client::ClientTlsFile;
use crate::yaml::HumanDuration;

/// `regions[].sinks.kafka:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaFile {
    /// Bootstrap brokers, `host:port[,host:port...]`: the region's one Kafka cluster (named
    /// `kafka-<region>`). Give either this or `upstreams`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// The region's Kafka clusters in failover order, primary first: traffic goes to the
    /// first one the fleet sees usable (see `cluster:`), and never to another region's.
    #[serde(default)]
    pub upstreams: Vec<KafkaUpstreamFile>,
    /// Topic the health probes produce to; it must exist on every cluster (one partition
    /// is enough). Without it probes check metadata only. Default `traceo-health`.
    #[serde(default = "default_health_topic")]
    pub health_topic: String,
    /// Topic name template: `{region}` and `{tenant}` are replaced. Default `metrics.{region}`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// `lz4` (default), `zstd` or `none`.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Message value: `remote_write_v1` (default, `prometheus.WriteRequest`) or
    /// `remote_write_v2` (`io.prometheus.write.v2.Request`, symbols interned per message).
    #[serde(default)]
    pub format: KafkaFormat,
    /// Producer linger (`linger.ms`). Default `1ms`: messages are pre-batched per request, so
    /// a longer linger only adds latency (measured, see BENCHMARKS.md).
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// Target size of one message before compression. Default 1000000 bytes.
    #[serde(default = "default_message_bytes")]
    pub message_bytes: usize,
    /// A request whose messages are not confirmed within this fails (retryable). Default `10s`.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// Requests queued for the sink before new ones get 503. Default 1024.
    #[serde(default = "crate::sinks::default_queue_capacity")]
    pub queue_capacity: usize,
    /// TLS toward every cluster of the region: `ca_file` (default: the system bundle),
    /// `cert_file` and `key_file` for mTLS.
    #[serde(default)]
    pub tls: Option<ClientTlsFile>,
    /// SASL toward every cluster of the region: `mechanism` (`plain`, `scram-sha-256`,
    /// `scram-sha-512`), `username`, `password_file`.
    #[serde(default)]
    pub sasl: Option<SaslFile>,
    /// Extra librdkafka settings; ours win where they collide with a setting the ack
    /// guarantee depends on. Secrets and settings that turn verification off are refused:
    /// use `tls:` and `sasl:`.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// `regions[].sinks.kafka.upstreams[]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaUpstreamFile {
    /// Name, unique over all regions (it is how nodes gossip about it), e.g. `eu-primary`.
    pub name: String,
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
}

fn default_health_topic() -> String {
    "traceo-health".into()
}

/// `regions[].sinks.kafka.compression`
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// LZ4 (fast; the default).
    #[default]
    Lz4,
    /// Zstandard (smaller, more CPU).
    Zstd,
    /// None.
    None,
}

fn default_topic() -> String {
    "metrics.{region}".into()
}
const fn default_linger() -> HumanDuration {
    HumanDuration(Duration::from_millis(1))
}
pub(crate) const fn default_message_bytes() -> usize {
    1_000_000
}
const fn default_delivery_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// Whether `topic` is a name Kafka accepts.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A Kafka sink's clusters from `brokers` or `upstreams` (exactly one of them), with names
/// unique over the whole file (`seen`).
fn kafka_upstreams(
    prefix: &str,
    region: &str,
    brokers: Option<String>,
    upstreams: Vec<KafkaUpstreamFile>,
    seen: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> Vec<KafkaUpstream> {
    let must_have_brokers = |field: &str, brokers: &str, problems: &mut Vec<String>| {
        if brokers.trim().is_empty() {
            problems.push(format!("{field}: must not be empty"));
        }
    };
    let list = match (brokers, upstreams.is_empty()) {
        (Some(brokers), true) => {
            must_have_brokers(&format!("{prefix}.brokers"), &brokers, problems);
            // The implied name is as unique as region ids are; recorded so that no
            // `upstreams[].name` elsewhere takes it.
            let name = format!("kafka-{region}");
            seen.insert(name.clone());
            return vec![KafkaUpstream { name, brokers }];
        }
        (None, false) => upstreams,
        (Some(_), false) => {
            problems.push(format!(
                "{prefix}: give either brokers (one cluster) or upstreams (several), not both"
            ));
            return Vec::new();
        }
        (None, true) => {
            problems.push(format!(
                "{prefix}.brokers: missing (or list the region's clusters in upstreams)"
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (j, KafkaUpstreamFile { name, brokers }) in list.into_iter().enumerate() {
        let field = format!("{prefix}.upstreams[{j}]");
        must_have_brokers(&format!("{field}.brokers"), &brokers, problems);
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !name_ok {
            problems.push(format!(
                "{field}.name: {name:?} must be ASCII letters, digits, '_' or '-'"
            ));
        } else if !seen.insert(name.clone()) {
            problems.push(format!(
                "{field}.name: {name:?} is already used; upstream names are unique over all regions"
            ));
        }
        out.push(KafkaUpstream { name, brokers });
    }
    out
}

/// Settings the acknowledgement guarantee rests on: `properties` may not override them.
const PINNED_KAFKA_PROPERTIES: &[&str] = &["enable.idempotence", "acks", "bootstrap.servers"];

/// The Kafka sink of one region (see `KafkaFile` for the meaning of each field).
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// The region's clusters in failover order (one when the file gave `brokers`).
    pub upstreams: Vec<KafkaUpstream>,
    /// Topic the health probes produce to.
    pub health_topic: String,
    /// Topic template.
    pub topic: String,
    /// Compression codec.
    pub compression: KafkaCompression,
    /// Message format.
    pub format: KafkaFormat,
    /// Producer linger.
    pub linger: Duration,
    /// Target message size before compression.
    pub message_bytes: usize,
    /// Per-message delivery timeout.
    pub delivery_timeout: Duration,
    /// Request queue capacity.
    pub queue_capacity: usize,
    /// Extra librdkafka settings.
    pub properties: std::collections::BTreeMap<String, String>,
    /// TLS and SASL.
    pub security: KafkaSecurity,
}

/// One Kafka cluster of a region.
#[derive(Debug, Clone)]
pub struct KafkaUpstream {
    /// Unique over all regions.
    pub name: String,
    /// Bootstrap brokers.
    pub brokers: String,
}

impl KafkaFile {
    /// Checks meaning; every problem names its field under `prefix`. `upstream_names` holds
    /// the cluster names already used anywhere in the file.
    pub(crate) fn validate(
        self,
        prefix: &str,
        region: &RegionId,
        upstream_names: &mut HashSet<String>,
        problems: &mut Vec<String>,
    ) -> KafkaSinkConfig {
        let k = self;
        let upstreams = kafka_upstreams(
            prefix,
            region.as_str(),
            k.brokers,
            k.upstreams,
            upstream_names,
            problems,
        );
        if !valid_topic(&k.health_topic) {
            problems.push(format!(
                "{prefix}.health_topic: {:?} is not a valid topic name (ASCII letters, digits, '.', '_', '-')",
                k.health_topic
            ));
        }
        let sample = k.topic.replace("{region}", "r").replace("{tenant}", "t");
        if !valid_topic(&sample) {
            problems.push(format!(
                "{prefix}.topic: {:?} does not make valid topic names (ASCII letters, digits, '.', '_', '-'; placeholders {{region}} and {{tenant}})",
                k.topic
            ));
        }
        if k.message_bytes == 0 || k.message_bytes > 64 << 20 {
            problems.push(format!(
                "{prefix}.message_bytes: {} is outside 1..=67108864",
                k.message_bytes
            ));
        }
        if k.delivery_timeout.0.is_zero() {
            problems.push(format!("{prefix}.delivery_timeout: must be greater than 0"));
        }
        if k.queue_capacity == 0 {
            problems.push(format!("{prefix}.queue_capacity: must be greater than 0"));
        }
        security::check_properties(prefix, &k.properties, problems);
        let security = KafkaSecurity::validate(prefix, k.tls, k.sasl, problems);
        for key in k.properties.keys() {
            if PINNED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                problems.push(format!(
                    "{prefix}.properties.{key}: set by the gateway (acknowledgements depend on it); remove it"
                ));
            }
        }
        KafkaSinkConfig {
            upstreams,
            health_topic: k.health_topic,
            topic: k.topic,
            compression: k.compression,
            format: k.format,
            linger: k.linger.0,
            message_bytes: k.message_bytes,
            delivery_timeout: k.delivery_timeout.0,
            queue_capacity: k.queue_capacity,
            properties: k.properties,
            security,
        }
    }
}

/// Bytes a Kafka message carries besides one series' `WriteRequest` field: the record's
/// headers (`tenant`, `region`, `content-type`), key, and the batch and record framing.
/// Generous, since a too small allowance only refuses a series a little early.
const KAFKA_MESSAGE_ALLOWANCE: usize = 4096;

impl KafkaSinkConfig {
    /// The producer's `message.max.bytes`: the sink's own default (room for one framed
    /// message plus the record overhead), unless `properties:` sets it.
    pub fn max_message_bytes(&self) -> usize {
        self.properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| self.message_bytes.saturating_mul(2).max(1 << 20))
    }

    /// The largest one series may encode to: one series is never split over two messages.
    pub fn max_series_bytes(&self) -> usize {
        self.max_message_bytes()
            .saturating_sub(KAFKA_MESSAGE_ALLOWANCE)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::sinks::SinkConfig;

    #[test]
    fn a_single_kafka_cluster_is_an_upstream_named_after_its_region() {
        let yaml = r#"
    auth: { mode: off, default_region: eu }
    regions:
      - id: eu
        sinks: { kafka: { brokers: "b:9092" } }
    "#;
        let c = Config::from_yaml("g.yaml", yaml).unwrap();
        let SinkConfig::Kafka(k) = &c.regions[0].sinks[0] else {
            panic!("a kafka sink")
        };
        assert_eq!(k.upstreams.len(), 1);
        assert_eq!(k.upstreams[0].name, "kafka-eu");
        assert_eq!(k.upstreams[0].brokers, "b:9092");
        assert_eq!(k.health_topic, "traceo-health");
        // No `cluster:` section: probes on their defaults, gossip off.
        assert!(c.cluster.gossip.is_none());
        assert_eq!(c.cluster.health.fail_after, 3);
        assert_eq!(
            c.cluster.health.hold_down,
            std::time::Duration::from_secs(30)
        );
    }

    #[test]
    fn kafka_sink_settings_are_checked() {
        let yaml = r#"
    auth: { mode: off, default_region: eu }
    regions:
      - id: eu
        sinks:
          kafka:
            brokers: " "
            topic: "metrics/{region}"
            message_bytes: 0
            properties: { acks: "1" }
    "#;
        let err = Config::from_yaml("g.yaml", yaml).unwrap_err().to_string();
        assert_eq!(
            err,
            "g.yaml: invalid configuration:
  - regions[0].sinks.kafka.brokers: must not be empty
  - regions[0].sinks.kafka.topic: \"metrics/{region}\" does not make valid topic names (ASCII letters, digits, '.', '_', '-'; placeholders {region} and {tenant})
  - regions[0].sinks.kafka.message_bytes: 0 is outside 1..=67108864
  - regions[0].sinks.kafka.properties.acks: set by the gateway (acknowledgements depend on it); remove it"
        );
    }
}

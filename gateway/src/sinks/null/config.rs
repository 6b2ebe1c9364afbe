//! `regions[].sinks.null:`: the null sink's section as written, its defaults, and its
//! validation into [`NullSinkConfig`].

use serde::Deserialize;

use crate::sinks::frame::KafkaFormat;

/// `regions[].sinks.null:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullFile {
    /// Message format to frame into, as for Kafka.
    #[serde(default)]
    pub format: KafkaFormat,
    /// Partitions to frame for, as if the topic had this many. Default 16.
    #[serde(default = "default_null_partitions")]
    pub partitions: u32,
    /// Target message size, as for Kafka.
    #[serde(default = "crate::sinks::kafka::config::default_message_bytes")]
    pub message_bytes: usize,
    /// Requests queued before new ones get 503.
    #[serde(default = "crate::sinks::default_queue_capacity")]
    pub queue_capacity: usize,
}

const fn default_null_partitions() -> u32 {
    16
}

/// The null sink of one region: frames like the Kafka sink, then drops the messages.
#[derive(Debug, Clone)]
pub struct NullSinkConfig {
    /// Message format.
    pub format: KafkaFormat,
    /// Partitions framed for.
    pub partitions: u32,
    /// Target message size before compression.
    pub message_bytes: usize,
    /// Requests queued before 503.
    pub queue_capacity: usize,
}

impl NullFile {
    /// Checks meaning; every problem names its field under `prefix`.
    pub(crate) fn validate(self, prefix: &str, problems: &mut Vec<String>) -> NullSinkConfig {
        let n = self;
        if n.partitions == 0 {
            problems.push(format!("{prefix}.partitions: must be greater than 0"));
        }
        if n.message_bytes == 0 || n.message_bytes > 64 << 20 {
            problems.push(format!(
                "{prefix}.message_bytes: {} is outside 1..=67108864",
                n.message_bytes
            ));
        }
        if n.queue_capacity == 0 {
            problems.push(format!("{prefix}.queue_capacity: must be greater than 0"));
        }
        NullSinkConfig {
            format: n.format,
            partitions: n.partitions,
            message_bytes: n.message_bytes,
            queue_capacity: n.queue_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::sinks::SinkConfig;

    #[test]
    fn null_sink_counts_as_a_sink_and_is_checked() {
        let ok = "auth: { mode: off, default_region: local }\nregions: [{ id: local, sinks: { null: {} } }]\n";
        let c = Config::from_yaml("g.yaml", ok).unwrap();
        let SinkConfig::Null(n) = &c.regions[0].sinks[0] else {
            panic!("a null sink")
        };
        assert_eq!((n.partitions, n.message_bytes), (16, 1_000_000));
        let bad = "auth: { mode: off, default_region: local }\nregions: [{ id: local, sinks: { null: { partitions: 0, message_bytes: 0 } } }]\n";
        let ConfigError::Invalid { problems, .. } = Config::from_yaml("g.yaml", bad).unwrap_err()
        else {
            panic!("expected Invalid")
        };
        assert_eq!(
            problems,
            [
                "regions[0].sinks.null.partitions: must be greater than 0",
                "regions[0].sinks.null.message_bytes: 0 is outside 1..=67108864"
            ]
        );
    }
}

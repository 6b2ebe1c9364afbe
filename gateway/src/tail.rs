//! `traceo-gateway tail`: reads a topic the Kafka sink writes and prints its samples, for a
//! person (one line per sample) or a script (`--json`, one object per line).
//!
//! It assigns every partition itself (no consumer group, commits nothing), so running it never
//! disturbs the offsets of real consumers.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use protocols::DecodeLimits;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// What to read and how to print it.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// One JSON object per sample instead of text.
    pub json: bool,
    /// Start at the end of each partition instead of the beginning.
    pub follow_only_new: bool,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Stop after this long without a message (`None`: run until interrupted).
    pub idle_exit: Option<Duration>,
}

/// One sample as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct SampleLine<'a> {
    /// `tenant` header.
    pub tenant: &'a str,
    /// `region` header.
    pub region: &'a str,
    /// Partition of the message.
    pub partition: i32,
    /// Offset of the message.
    pub offset: i64,
    /// Labels (including `__name__`), sorted.
    pub labels: std::collections::BTreeMap<&'a str, &'a str>,
    /// Float value (`None` for a histogram sample; NaN is printed as `null` too).
    pub value: Option<f64>,
    /// Histogram observation count, for a histogram sample.
    pub histogram_count: Option<f64>,
    /// Sample timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
}

fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> &'a str {
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|x| x.key == key)
                .and_then(|x| x.value)
                .and_then(|v| std::str::from_utf8(v).ok())
        })
        .unwrap_or("")
}

/// Reads and prints until `max_messages` or `idle_exit`; returns the number of messages.
pub fn tail(opts: &TailOptions, out: &mut impl Write) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", "traceo-gateway-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let md = consumer
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of topic {}", opts.topic))?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == opts.topic)
        .ok_or_else(|| anyhow!("topic {} not found", opts.topic))?;
    if let Some(e) = topic.error() {
        bail!(
            "topic {}: {:?}",
            opts.topic,
            rdkafka::error::RDKafkaErrorCode::from(e)
        );
    }
    let mut tpl = TopicPartitionList::new();
    let start = if opts.follow_only_new {
        Offset::End
    } else {
        Offset::Beginning
    };
    for p in topic.partitions() {
        tpl.add_partition_offset(&opts.topic, p.id(), start)
            .context("building the partition list")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;

    let limits = DecodeLimits::default();
    let mut messages = 0u64;
    let mut last = Instant::now();
    loop {
        if opts.max_messages.is_some_and(|m| messages >= m) {
            break;
        }
        if opts.idle_exit.is_some_and(|d| last.elapsed() >= d) {
            break;
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = result.context("reading from Kafka")?;
        last = Instant::now();
        messages += 1;
        let tenant = header(&m, "tenant");
        let region = header(&m, "region");
        let payload = m.payload().unwrap_or_default();
        let batch = match protocols::remote_write::v1::decode_message(
            Bytes::copy_from_slice(payload),
            &limits,
        ) {
            Ok(b) => b,
            Err(e) => {
                writeln!(
                    out,
                    "partition {} offset {}: not a remote-write 1.0 message: {e}",
                    m.partition(),
                    m.offset()
                )?;
                continue;
            }
        };
        for s in batch.series() {
            let labels = s.labels();
            let emit = |out: &mut dyn Write,
                        value: Option<f64>,
                        count: Option<f64>,
                        ts: i64|
             -> std::io::Result<()> {
                if opts.json {
                    let line = SampleLine {
                        tenant,
                        region,
                        partition: m.partition(),
                        offset: m.offset(),
                        labels: labels.iter().collect(),
                        value,
                        histogram_count: count,
                        timestamp_ms: ts,
                    };
                    let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
                    writeln!(out, "{text}")
                } else {
                    let sel: Vec<String> = labels
                        .iter()
                        .filter(|(k, _)| *k != "__name__")
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect();
                    let v = match (value, count) {
                        (Some(v), _) => v.to_string(),
                        (None, Some(c)) => format!("histogram(count={c})"),
                        _ => "?".into(),
                    };
                    writeln!(
                        out,
                        "[{tenant}@{region} p{}:{}] {}{{{}}} {v} {ts}",
                        m.partition(),
                        m.offset(),
                        s.metric_name(),
                        sel.join(", ")
                    )
                }
            };
            for sample in s.samples() {
                emit(out, Some(sample.value), None, sample.timestamp_ms)?;
            }
            for h in s.histograms() {
                emit(out, None, Some(h.count.as_f64()), h.timestamp_ms)?;
            }
        }
        out.flush()?;
    }
    Ok(messages)
}

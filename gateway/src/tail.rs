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
    /// Extra librdkafka settings (`security.protocol`, `ssl.*`, `sasl.*`), set last.
    pub properties: Vec<(String, String)>,
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
    /// Histogram sum of observations, for a histogram sample.
    pub histogram_sum: Option<f64>,
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
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", "traceo-gateway-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &opts.properties {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config.create().context("creating the Kafka consumer")?;
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
    // From the start: offset 0, which a broker whose log no longer begins there answers
    // "out of range", and `auto.offset.reset` then moves to its earliest offset. Not
    // `Offset::Beginning`: that asks the broker where the log starts, and tansu 0.6 answers
    // with its oldest-written batch rather than its lowest offset, so batches written out of
    // offset order by concurrent producers would be skipped.
    let start = if opts.follow_only_new {
        Offset::End
    } else {
        Offset::Offset(0)
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
        let samples = match decode_samples(header(&m, "content-type"), payload, &limits) {
            Ok(s) => s,
            Err(e) => {
                writeln!(
                    out,
                    "partition {} offset {}: {e}",
                    m.partition(),
                    m.offset()
                )?;
                continue;
            }
        };
        for s in &samples {
            if opts.json {
                let line = SampleLine {
                    tenant,
                    region,
                    partition: m.partition(),
                    offset: m.offset(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect(),
                    value: s.value,
                    histogram_count: s.histogram_count,
                    histogram_sum: s.histogram_sum,
                    timestamp_ms: s.timestamp_ms,
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            } else {
                let name = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "__name__")
                    .map_or("", |(_, v)| v.as_str());
                let sel: Vec<String> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "__name__")
                    .map(|(k, v)| format!("{k}={v:?}"))
                    .collect();
                let v = match (s.value, s.histogram_count) {
                    (Some(v), _) => v.to_string(),
                    (None, Some(c)) => format!(
                        "histogram(count={c}, sum={})",
                        s.histogram_sum.unwrap_or(f64::NAN)
                    ),
                    _ => "?".into(),
                };
                writeln!(
                    out,
                    "[{tenant}@{region} p{}:{}] {name}{{{}}} {v} {}",
                    m.partition(),
                    m.offset(),
                    sel.join(", "),
                    s.timestamp_ms
                )?;
            }
        }
        out.flush()?;
    }
    Ok(messages)
}

/// One sample of a message, owned (a cold path: people and tests read these).
#[derive(Debug)]
pub struct TailSample {
    /// Labels, sorted, `__name__` included.
    pub labels: Vec<(String, String)>,
    /// Float value, or `None` for a histogram sample.
    pub value: Option<f64>,
    /// Observation count of a histogram sample.
    pub histogram_count: Option<f64>,
    /// Sum of observations of a histogram sample.
    pub histogram_sum: Option<f64>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
}

/// Decodes a message value by its `content-type` header (1.0 when absent).
pub fn decode_samples(
    content_type: &str,
    payload: &[u8],
    limits: &DecodeLimits,
) -> anyhow::Result<Vec<TailSample>> {
    use prost::Message as _;
    use protocols::remote_write::v1::reference::histogram::Count;
    let mut out = Vec::new();
    if content_type.ends_with(protocols::remote_write::PROTO_V2) {
        let req = protocols::remote_write::v2::reference::Request::decode(payload)
            .context("not a remote-write 2.0 message")?;
        for (i, ts) in req.timeseries.iter().enumerate() {
            let labels: Vec<(String, String)> = req
                .labels(i)?
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            for s in &ts.samples {
                out.push(TailSample {
                    labels: labels.clone(),
                    value: Some(s.value),
                    histogram_count: None,
                    histogram_sum: None,
                    timestamp_ms: s.timestamp,
                });
            }
            for h in &ts.histograms {
                out.push(TailSample {
                    labels: labels.clone(),
                    value: None,
                    histogram_count: Some(match h.count {
                        Some(Count::CountInt(c)) => c as f64,
                        Some(Count::CountFloat(c)) => c,
                        None => 0.0,
                    }),
                    histogram_sum: Some(h.sum),
                    timestamp_ms: h.timestamp,
                });
            }
        }
        return Ok(out);
    }
    let batch =
        protocols::remote_write::v1::decode_message(Bytes::copy_from_slice(payload), limits)
            .context("not a remote-write 1.0 message")?;
    for s in batch.series() {
        let labels: Vec<(String, String)> = s
            .labels()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for sample in s.samples() {
            out.push(TailSample {
                labels: labels.clone(),
                value: Some(sample.value),
                histogram_count: None,
                histogram_sum: None,
                timestamp_ms: sample.timestamp_ms,
            });
        }
        for h in s.histograms() {
            out.push(TailSample {
                labels: labels.clone(),
                value: None,
                histogram_count: Some(h.count.as_f64()),
                histogram_sum: Some(h.sum),
                timestamp_ms: h.timestamp_ms,
            });
        }
    }
    Ok(out)
}

//! The remote-write sink: a region's data to a Prometheus-compatible endpoint in that region
//! (Prometheus with `--web.enable-remote-write-receiver`, Mimir, VictoriaMetrics), as
//! remote-write 1.0 or 2.0, snappy-compressed, with the tenant in a header.
//!
//! Requests queued at once for the same tenant are sent as one (up to `max_batch_bytes`).
//! A 2xx confirms the batch. A 5xx, a 429 or a network error is retried with backoff
//! (`Retry-After` honoured up to `max_backoff`) for up to `max_retry_time`, then the batch
//! fails: with `durability: wal` the log keeps it and its feeder delivers it again later. Any
//! other 4xx means the endpoint will never take the data (bad labels, out-of-order samples,
//! limits; the remote-write spec forbids retrying it): it is logged with the endpoint's
//! answer, counted in `traceo_remote_write_rejected_series_total{sink,status}`, and the batch
//! fails with a permanent [`SinkError`]: with `durability: wal` its records go to the region's
//! quarantine (with the answer) and delivery moves on, instead of retrying them forever or
//! dropping them unseen.
//!
//! Series are split over `pipeline.shards` workers by identity hash, so a series always
//! meets the same worker and its samples stay in order. May call: the network (HTTP and
//! HTTPS, [`client`]).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocols::remote_write::v2::V2Writer;
use residency_rules::{RegionId, TenantId};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{spawn_shards, Reason, ShardWorker, SinkError, SinkHandle, SinkRequest};
pub mod client;
pub mod config;

pub use config::{RemoteWriteFile, RemoteWriteSinkConfig};

use super::frame::KafkaFormat;
use crate::backoff::Backoff;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The worker threads.
    #[error("remote-write sink {name}: cannot start its threads: {source}")]
    Threads {
        /// The sink.
        name: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS or credential files (checked at load) no longer load.
    #[error("remote-write sink {name}: {why}")]
    Client {
        /// The sink.
        name: String,
        /// What is wrong, naming the file.
        why: String,
    },
}

/// Starts the sink's `shards` workers.
pub fn spawn(
    region: RegionId,
    cfg: RemoteWriteSinkConfig,
    shards: usize,
    cancel: CancellationToken,
) -> Result<(SinkHandle, Vec<JoinHandle<()>>), StartError> {
    let name = format!("remote_write/{region}/{}", cfg.name);
    let mut workers: Vec<RwWorker> = Vec::new();
    for _ in 0..shards.max(1) {
        let client = client::Client::new(&name, &cfg).map_err(|why| StartError::Client {
            name: name.clone(),
            why,
        })?;
        workers.push(RwWorker {
            name: name.clone(),
            cfg: cfg.clone(),
            client,
            cancel: cancel.clone(),
            pending: Vec::new(),
            tenant: None,
            body: Vec::new(),
            v2: V2Writer::new(),
            series: 0,
            compressor: protocols::snappy::Compressor::default(),
            payload: Vec::new(),
        });
    }
    let (mut handle, threads) = spawn_shards(&name, region, cfg.queue_capacity, workers, &cancel)
        .map_err(|source| StartError::Threads {
        name: name.clone(),
        source,
    })?;
    if cfg.format == KafkaFormat::RemoteWriteV1 {
        handle = handle.forwarding_v1();
    }
    info!(sink = %name, url = %cfg.url, shards, "remote-write sink started");
    Ok((handle, threads))
}

struct RwWorker {
    name: String,
    cfg: RemoteWriteSinkConfig,
    client: client::Client,
    cancel: CancellationToken,
    /// Requests in the batch being built (their acks complete when it is sent).
    pending: Vec<SinkRequest>,
    /// The tenant of the batch: one tenant per request sent.
    tenant: Option<TenantId>,
    /// The batch, 1.0: the `WriteRequest` so far.
    body: Vec<u8>,
    /// The batch, 2.0.
    v2: V2Writer,
    /// Series in the batch (for the metrics; a share read back from the log is not decoded,
    /// so series, not samples, are what every path can count).
    series: u64,
    /// Kept between batches: its table and output buffer (see [`Compressor`]).
    ///
    /// [`Compressor`]: protocols::snappy::Compressor
    compressor: protocols::snappy::Compressor,
    /// The last batch's uncompressed bytes, cleared and kept for the capacity.
    payload: Vec<u8>,
}

/// How one attempt went.
enum Attempt {
    Sent,
    /// Refused for good (4xx other than 429): the status and what the endpoint said.
    Rejected(u16, String),
    /// Worth retrying, after at least this long if the endpoint said so.
    Retry(SinkError, Option<Duration>),
}

impl RwWorker {
    fn batch_bytes(&self) -> usize {
        match self.cfg.format {
            KafkaFormat::RemoteWriteV1 => self.body.len(),
            KafkaFormat::RemoteWriteV2 => self.v2.approx_len(),
        }
    }

    fn add(&mut self, req: &SinkRequest) {
        let share = &req.batch;
        let count = req.positions.as_ref().map_or(share.len(), Vec::len);
        match self.cfg.format {
            KafkaFormat::RemoteWriteV1 => {
                if req.with_metadata {
                    share.put_v1_metadata(&mut self.body);
                }
                for n in 0..count {
                    let pos = req.positions.as_ref().map_or(n, |p| p[n] as usize);
                    share.put_v1_at(pos, &mut self.body);
                }
            }
            KafkaFormat::RemoteWriteV2 => {
                for n in 0..count {
                    let pos = req.positions.as_ref().map_or(n, |p| p[n] as usize);
                    share.put_v2_at(pos, &mut self.v2);
                }
            }
        }
        self.series += count as u64;
    }

    /// Sends the batch, retrying as the module docs say, and completes its requests.
    fn send(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        let (content_type, version) = match self.cfg.format {
            KafkaFormat::RemoteWriteV1 => {
                // The batch's buffer becomes the payload and the last payload's buffer the
                // next batch's: swapped, not copied, and neither regrows from empty.
                std::mem::swap(&mut payload, &mut self.body);
                (
                    "application/x-protobuf;proto=prometheus.WriteRequest",
                    "0.1.0",
                )
            }
            KafkaFormat::RemoteWriteV2 => {
                self.v2.finish(&mut payload);
                self.v2 = V2Writer::new();
                (
                    "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                    "2.0.0",
                )
            }
        };
        let mut compressor = std::mem::take(&mut self.compressor);
        self.deliver(compressor.compress(&payload), content_type, version);
        self.compressor = compressor;
        self.payload = payload;
    }

    /// Sends one compressed batch (the requests in `pending`), retrying as the module docs
    /// say, and completes its requests.
    fn deliver(&mut self, compressed: &[u8], content_type: &str, version: &str) {
        let tenant = self.tenant.take();
        let pending = std::mem::take(&mut self.pending);
        let series = std::mem::take(&mut self.series);
        let labels = [("sink", self.name.clone())];
        let started = Instant::now();
        let mut backoff = Backoff::new(self.cfg.min_backoff, self.cfg.max_backoff);
        let outcome = loop {
            match self.attempt(compressed, content_type, version, tenant.as_ref()) {
                Attempt::Sent => break Ok(()),
                Attempt::Rejected(status, body) => break Err((status, body)),
                Attempt::Retry(why, after) => {
                    metrics::counter!("traceo_remote_write_retries_total", &labels).increment(1);
                    // The step grows with every failed attempt; the endpoint's own Retry-After,
                    // when it sends one, is taken as given (up to max_backoff).
                    let step = backoff.next_wait();
                    let wait = after.unwrap_or(step).min(self.cfg.max_backoff);
                    if started.elapsed() + wait > self.cfg.max_retry_time
                        || self.cancel.is_cancelled()
                    {
                        error!(sink = %self.name, error = %why, "remote-write batch failed; it stays in the write-ahead log (durability: wal) or its clients get 503");
                        let e = SinkError::retryable(
                            why.reason(),
                            format!("remote-write endpoint {}: {why}", self.cfg.url),
                        );
                        for req in &pending {
                            req.ack.fail(e.clone());
                        }
                        return;
                    }
                    warn!(sink = %self.name, error = %why, retry_in = ?wait, "remote-write attempt failed; retrying");
                    std::thread::sleep(wait);
                }
            }
        };
        match outcome {
            Ok(()) => {
                metrics::counter!("traceo_remote_write_series_total", &labels).increment(series);
            }
            Err((status, body)) => {
                metrics::counter!("traceo_remote_write_rejected_series_total",
                    "sink" => self.name.clone(), "status" => status.to_string())
                .increment(series);
                error!(sink = %self.name, status, answer = %body, series, "remote-write endpoint refused a batch for good; not retried (its records go to quarantine)");
                let e = SinkError::from_http_status(
                    status,
                    format!(
                        "remote-write endpoint {}: HTTP {status}: {body}",
                        self.cfg.url
                    ),
                );
                for req in &pending {
                    req.ack.fail(e.clone());
                }
            }
        }
        for req in pending {
            req.ack.accept();
        }
    }

    fn attempt(
        &mut self,
        body: &[u8],
        content_type: &str,
        version: &str,
        tenant: Option<&TenantId>,
    ) -> Attempt {
        self.client.refresh();
        let mut req = self
            .client
            .post()
            .header("content-type", content_type)
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", version);
        if let (Some(t), false) = (tenant, self.cfg.tenant_header.is_empty()) {
            req = req.header(self.cfg.tenant_header.as_str(), t.as_str());
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(body) {
            Err(e) => {
                let reason = if matches!(e, ureq::Error::Timeout(_)) {
                    Reason::Timeout
                } else {
                    Reason::Transport
                };
                Attempt::Retry(SinkError::retryable(reason, e.to_string()), None)
            }
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Attempt::Sent;
                }
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text: String = resp
                    .body_mut()
                    .read_to_string()
                    .unwrap_or_default()
                    .chars()
                    .take(512)
                    .collect();
                let e =
                    SinkError::from_http_status(status, format!("HTTP {status}: {}", text.trim()));
                if e.is_permanent() {
                    Attempt::Rejected(status, text.trim().to_string())
                } else {
                    Attempt::Retry(e, retry_after)
                }
            }
        }
    }
}

impl ShardWorker for RwWorker {
    fn accept(&mut self, req: SinkRequest) {
        if self.tenant.as_ref().is_some_and(|t| *t != req.batch.tenant) {
            self.send();
        }
        self.tenant = Some(req.batch.tenant.clone());
        self.add(&req);
        self.pending.push(req);
        if self.batch_bytes() >= self.cfg.max_batch_bytes {
            self.send();
        }
    }

    fn idle(&mut self) {
        self.send();
    }

    fn stop(mut self) {
        self.send();
    }
}

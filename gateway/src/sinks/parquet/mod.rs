//! The Parquet sink: a region's samples as Parquet files in an object store, laid out as
//! `region=<r>/tenant=<t>/date=YYYY-MM-DD/hour=HH/<uuid>.parquet` (hour of the sample's own
//! timestamp, UTC), schema in `docs/formats.md`.
//!
//! Rows are buffered per (tenant, hour) and a file is written when its buffer reaches
//! `max_file_bytes` or its oldest row `max_file_age`. A file appears whole or not at all: the
//! object store writes it under a temporary name and renames it (local), or a bucket gets a
//! single PUT or, past `multipart_part_bytes`, a multipart upload that is visible only once
//! completed (a failed or crashed one stays incomplete, hence invisible). On local disk the
//! file and its directories are fsynced before the requests whose rows it holds are
//! acknowledged; a bucket's 200 is its durability. A refusal that retrying cannot mend (403,
//! 401, a missing bucket) is permanent: the records are quarantined and the log line names
//! the store and the key.
//!
//! May call: the object store and the local filesystem. Never: the network to clients.

mod http;
mod rows;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use protocols::METRIC_NAME_LABEL;
use residency_rules::{RegionId, TenantId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Ack, Reason, SinkError, SinkHandle, SinkRequest};
pub mod config;
pub mod probe;

pub use config::{ParquetFile, ParquetSinkConfig};
use rows::Rows;

pub use rows::schema;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[error("parquet sink of region {region}: {source}")]
pub struct StartError {
    /// Region.
    region: RegionId,
    /// Cause.
    source: store::StoreError,
}

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("building Arrow columns: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("encoding Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object path: {0}")]
    Path(#[from] object_store::path::Error),
    #[error("fsync: {0}")]
    Sync(#[from] std::io::Error),
    #[error("writer task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl FileError {
    /// Rows Arrow or Parquet cannot encode are refused the same way every time (permanent:
    /// their records are quarantined); the object store and the disk can recover (retried).
    fn into_sink_error(self) -> SinkError {
        let answer = format!("parquet write failed: {self}");
        match self {
            FileError::Arrow(_) | FileError::Parquet(_) | FileError::Path(_) => {
                SinkError::permanent(Reason::Encoding, answer)
            }
            // The store refuses us (credentials, permissions, no such bucket): the same every
            // time until someone changes its configuration.
            FileError::Store(
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. },
            ) => SinkError::permanent(Reason::NotAuthorized, answer),
            // A put never finds a missing key: NotFound is the bucket.
            FileError::Store(object_store::Error::NotFound { .. }) => {
                SinkError::permanent(Reason::NoSuchBucket, answer)
            }
            FileError::Store(_) | FileError::Sync(_) => SinkError::retryable(Reason::Io, answer),
            FileError::Join(_) => SinkError::retryable(Reason::Other, answer),
        }
    }
}

/// Flush checks run this often relative to `max_file_age`, so a file closes at most 25% late.
const AGE_CHECK_DIVISOR: u32 = 4;
/// Buffers of all open files together may reach this many times `max_file_bytes` before all
/// are flushed; bounds memory when many tenants or hours are open at once.
const MAX_BUFFERED_FILES: usize = 4;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PartitionKey {
    tenant: TenantId,
    /// Hours since the Unix epoch (UTC) of the rows' timestamps.
    hour: i64,
}

struct Partition {
    opened: Instant,
    rows: Rows,
    acks: Vec<Arc<Ack>>,
}

struct ParquetSink {
    name: String,
    region: RegionId,
    cfg: ParquetSinkConfig,
    /// The canonical directory of a local store (fsynced after each file); None for a bucket.
    root: Option<PathBuf>,
    store: Arc<dyn ObjectStore>,
    partitions: HashMap<PartitionKey, Partition>,
    buffered_bytes: usize,
}

/// Starts the Parquet sink of `region`; returns its handle and task.
pub fn spawn(
    region: RegionId,
    cfg: ParquetSinkConfig,
    cancel: CancellationToken,
) -> Result<(SinkHandle, JoinHandle<()>), StartError> {
    let (store, root) = cfg.store.open().map_err(|source| StartError {
        region: region.clone(),
        source,
    })?;
    let name = format!("parquet/{region}");
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let sink = ParquetSink {
        name: name.clone(),
        region: region.clone(),
        root,
        store,
        cfg,
        partitions: HashMap::new(),
        buffered_bytes: 0,
    };
    let task = tokio::spawn(sink.run(rx, cancel));
    Ok((SinkHandle::new(name, region, vec![tx], false), task))
}

impl ParquetSink {
    async fn run(mut self, mut rx: mpsc::Receiver<SinkRequest>, cancel: CancellationToken) {
        let period = (self.cfg.max_file_age / AGE_CHECK_DIVISOR).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                req = rx.recv() => match req {
                    Some(req) => self.accept(req).await,
                    None => break,
                },
                _ = tick.tick() => self.flush_aged().await,
            }
        }
        // Shutdown: take in what is already queued, then write everything out.
        rx.close();
        while let Some(req) = rx.recv().await {
            self.accept(req).await;
        }
        self.flush_all().await;
        info!(sink = %self.name, "parquet sink stopped");
    }

    async fn accept(&mut self, req: SinkRequest) {
        let batch = &req.batch;
        for (series, mut labels) in batch.series() {
            // `__name__` is the `metric` column.
            labels.retain(|(k, _)| k != METRIC_NAME_LABEL);
            let metric = series.metric_name();
            for s in series.samples() {
                let p = partition(
                    &mut self.partitions,
                    &batch.tenant,
                    s.timestamp_ms,
                    &req.ack,
                );
                self.buffered_bytes += p.rows.push_float(s.timestamp_ms, metric, &labels, s.value);
            }
            for h in series.histograms() {
                let p = partition(
                    &mut self.partitions,
                    &batch.tenant,
                    h.timestamp_ms,
                    &req.ack,
                );
                self.buffered_bytes += p.rows.push_histogram(h.timestamp_ms, metric, &labels, h);
            }
        }
        req.ack.accept();
        drop(req);

        let full: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.rows.approx_bytes() >= self.cfg.max_file_bytes)
            .map(|(k, _)| k.clone())
            .collect();
        for key in full {
            self.flush(key).await;
        }
        if self.buffered_bytes >= self.cfg.max_file_bytes.saturating_mul(MAX_BUFFERED_FILES) {
            self.flush_all().await;
        }
    }

    async fn flush_aged(&mut self) {
        let max_age = self.cfg.max_file_age;
        let aged: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.opened.elapsed() >= max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in aged {
            self.flush(key).await;
        }
    }

    async fn flush_all(&mut self) {
        let keys: Vec<PartitionKey> = self.partitions.keys().cloned().collect();
        for key in keys {
            self.flush(key).await;
        }
    }

    async fn flush(&mut self, key: PartitionKey) {
        let Some(p) = self.partitions.remove(&key) else {
            return;
        };
        let bytes = p.rows.approx_bytes();
        self.buffered_bytes = self.buffered_bytes.saturating_sub(bytes);
        let rows = p.rows.len();
        let started = Instant::now();
        let labels = [
            ("sink", self.name.clone()),
            ("region", self.region.to_string()),
        ];
        let path = object_path(&self.region, &key);
        match self.write_file(&key, &path, p.rows).await {
            Ok(size) => {
                metrics::counter!("traceo_sink_files_written_total", &labels).increment(1);
                metrics::counter!("traceo_sink_rows_written_total", &labels).increment(rows as u64);
                metrics::counter!("traceo_sink_bytes_written_total", &labels)
                    .increment(size as u64);
                metrics::histogram!("traceo_sink_flush_duration_seconds", &labels)
                    .record(started.elapsed().as_secs_f64());
                info!(sink = %self.name, %path, rows, bytes = size, "wrote parquet file");
            }
            Err(e) => {
                metrics::counter!("traceo_sink_write_errors_total", &labels).increment(1);
                let err = e.into_sink_error();
                error!(sink = %self.name, store = %self.cfg.store.describe(), key = %path, tenant = %key.tenant, rows, error = %err, permanent = err.is_permanent(), "parquet file not written; its requests fail (retried, or quarantined when the rows cannot be encoded or the store refuses us)");
                for a in &p.acks {
                    a.fail(err.clone());
                }
            }
        }
        // Dropping the acks completes every request whose last file this was.
        drop(p.acks);
    }

    async fn write_file(
        &self,
        key: &PartitionKey,
        path: &str,
        rows: Rows,
    ) -> Result<usize, FileError> {
        let tenant = key.tenant.clone();
        let region = self.region.clone();
        let encoded =
            tokio::task::spawn_blocking(move || rows.encode_parquet(&tenant, &region)).await??;
        let size = encoded.len();
        let location = object_store::path::Path::parse(path)?;
        let encoded = bytes::Bytes::from(encoded);
        if size <= self.cfg.multipart_part_bytes {
            self.store.put(&location, PutPayload::from(encoded)).await?;
        } else {
            self.put_in_parts(&location, encoded).await?;
        }
        if let Some(root) = self.root.clone() {
            let rel = path.to_string();
            tokio::task::spawn_blocking(move || sync_file_and_dirs(&root, &rel)).await??;
        }
        Ok(size)
    }

    /// A multipart upload: the object exists only once `finish` completes it. A failed or
    /// crashed upload stays incomplete and invisible; a bucket lifecycle rule for incomplete
    /// uploads removes its parts (docs/configuration.md).
    async fn put_in_parts(
        &self,
        location: &object_store::path::Path,
        encoded: bytes::Bytes,
    ) -> Result<(), FileError> {
        let upload = self.store.put_multipart(location).await?;
        let mut parts = object_store::WriteMultipart::new_with_chunk_size(
            upload,
            self.cfg.multipart_part_bytes,
        );
        parts.put(encoded);
        parts.finish().await?;
        Ok(())
    }
}

/// The open partition for (tenant, hour of `ts_ms`), registering `ack` with it once (a batch is
/// appended in one go, so "once" is "unless it is already the last one registered").
fn partition<'a>(
    partitions: &'a mut HashMap<PartitionKey, Partition>,
    tenant: &TenantId,
    ts_ms: i64,
    ack: &Arc<Ack>,
) -> &'a mut Partition {
    let key = PartitionKey {
        tenant: tenant.clone(),
        hour: ts_ms.div_euclid(3_600_000),
    };
    let p = partitions.entry(key).or_insert_with(|| Partition {
        opened: Instant::now(),
        rows: Rows::default(),
        acks: Vec::new(),
    });
    if p.acks.last().is_none_or(|a| !Arc::ptr_eq(a, ack)) {
        p.acks.push(ack.clone());
    }
    p
}

fn object_path(region: &RegionId, key: &PartitionKey) -> String {
    let start = chrono::DateTime::from_timestamp(key.hour.saturating_mul(3600), 0)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    format!(
        "region={region}/tenant={}/date={}/hour={}/{}.parquet",
        key.tenant,
        start.format("%Y-%m-%d"),
        start.format("%H"),
        uuid::Uuid::new_v4()
    )
}

/// fsyncs a written file and each directory from it up to `root`, so both its bytes and its
/// name survive a power loss (rename alone is not durable until the directory is synced).
fn sync_file_and_dirs(root: &Path, rel: &str) -> std::io::Result<()> {
    let full = root.join(rel);
    std::fs::File::open(&full)?.sync_all()?;
    let mut dir = full.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_errors_are_permanent_and_storage_errors_retryable() {
        let arrow = FileError::Arrow(arrow_schema::ArrowError::InvalidArgumentError("x".into()));
        let e = arrow.into_sink_error();
        assert!(e.is_permanent());
        assert_eq!(e.reason(), Reason::Encoding);
        let parquet = FileError::Parquet(parquet::errors::ParquetError::General("x".into()));
        assert!(parquet.into_sink_error().is_permanent());
        let io = FileError::Sync(std::io::Error::other("disk full"));
        let e = io.into_sink_error();
        assert!(!e.is_permanent());
        assert_eq!(e.reason(), Reason::Io);
        let store = FileError::Store(object_store::Error::Generic {
            store: "test",
            source: Box::new(std::io::Error::other("unreachable")),
        });
        assert!(!store.into_sink_error().is_permanent());
    }

    #[test]
    fn object_path_uses_hive_layout_and_utc_hour() {
        let key = PartitionKey {
            tenant: TenantId::parse("team-a").unwrap(),
            // 2026-11-23T09:00:00Z
            hour: 1_795_424_400 / 3600,
        };
        let p = object_path(&RegionId::parse("eu").unwrap(), &key);
        assert!(
            p.starts_with("region=eu/tenant=team-a/date=2026-11-23/hour=09/"),
            "{p}"
        );
        assert!(p.ends_with(".parquet"));
    }
}

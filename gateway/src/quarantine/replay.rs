//! Giving quarantined records back to the running gateway, once an operator fixed the cause.
//!
//! The CLI (`traceo-gateway quarantine replay`) and the gateway share only the region's
//! quarantine directory: the CLI writes a request file (temporary name, fsync, rename, so
//! the gateway never reads half of one), the gateway's replay task looks for it every
//! [`POLL`], claims it by renaming it, appends each requested entry's record to the region's
//! log through the pipeline's own append ([`WalHandle::append`]: durable before the entry is
//! removed, then delivered by every sink of the region), removes the replayed entries and
//! writes a result file that the CLI waits for and prints. No admin endpoint is needed on the
//! public port, and only someone who can write the gateway's data directory can replay.
//!
//! At-least-once: a replayed record goes to every sink of the region, so a sink that had
//! taken it before (another sink refused it) sees it twice; a crash between the append and
//! the removal replays it again on the next request (a claimed request found at start is
//! processed again). A record is never replayed into another region: it is checked to decode
//! as a record of this region first, and refused (kept) otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{Quarantine, QuarantineError};
use crate::share::record;
use crate::wal::writer::WalHandle;

/// How often the gateway looks for a request: a person waits at most this long, and an idle
/// gateway pays one `stat` per region per period.
pub const POLL: Duration = Duration::from_secs(1);
/// Records appended to the log per append: one fsync covers many small entries, and a large
/// replay never builds one group bigger than the log writer gathers at once (16 MiB).
const BATCH_BYTES: usize = 8 << 20;
/// How long the CLI waits for the result by default: a few polls plus appending a large
/// quarantine.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// How often the CLI looks for the result.
const CLI_POLL: Duration = Duration::from_millis(100);

const REQUEST: &str = "replay-request.json";
const TAKEN: &str = "replay-request.taken";
const RESULT: &str = "replay-result.json";

/// What the CLI asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Matches the result to the request.
    pub request: String,
    /// Entries to replay; every entry when absent.
    pub ids: Option<Vec<u64>>,
}

/// An entry that was not replayed, and why; it stays in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The entry.
    pub id: u64,
    /// Why.
    pub why: String,
}

/// What the gateway did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayResult {
    /// The request's id.
    pub request: String,
    /// Entries appended to the region's log and removed from quarantine.
    pub replayed: Vec<u64>,
    /// Entries kept, with why.
    pub refused: Vec<Refused>,
    /// Ids asked for that the quarantine does not hold.
    pub missing: Vec<u64>,
    /// Set when the request itself could not be read.
    pub error: Option<String>,
}

/// Why the CLI's replay did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The filesystem failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The region has no quarantine directory (nothing was ever quarantined there, or the
    /// config names another `durability.dir`).
    #[error("{0} does not exist: nothing was quarantined in this region (or --config names another durability.dir)")]
    NoQuarantine(PathBuf),
    /// Another replay is waiting or running.
    #[error("a replay request is already pending in {0}; wait for it (or remove the file if no gateway runs)")]
    Pending(PathBuf),
    /// No gateway took the request in time; it was withdrawn.
    #[error("no running gateway took the request within {0:?} (is it running with this durability.dir?); request withdrawn")]
    NotTaken(Duration),
    /// The gateway took the request but has not answered yet.
    #[error("the gateway took the request but did not answer within {0:?}; it goes on: check `quarantine list` later")]
    NoResult(Duration),
    /// The result file does not parse.
    #[error("result file {path}: {source}")]
    Result {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

fn rio(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that a reader sees all of it or nothing.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The CLI side: asks the gateway running on `dir` (a region's quarantine directory) to
/// replay `ids` (all entries when `None`) and waits up to `wait` for its answer.
pub fn request(
    dir: &Path,
    ids: Option<Vec<u64>>,
    wait: Duration,
) -> Result<ReplayResult, ReplayError> {
    if !dir.is_dir() {
        return Err(ReplayError::NoQuarantine(dir.to_path_buf()));
    }
    let (req_path, taken, result_path) = (dir.join(REQUEST), dir.join(TAKEN), dir.join(RESULT));
    if req_path.exists() || taken.exists() {
        return Err(ReplayError::Pending(dir.to_path_buf()));
    }
    let req = ReplayRequest {
        request: uuid::Uuid::new_v4().to_string(),
        ids,
    };
    let json = serde_json::to_vec(&req).expect("a request always serialises");
    write_atomically(&req_path, &json).map_err(rio(&req_path))?;
    let deadline = Instant::now() + wait;
    loop {
        match std::fs::read(&result_path) {
            Ok(bytes) => {
                let result: ReplayResult =
                    serde_json::from_slice(&bytes).map_err(|source| ReplayError::Result {
                        path: result_path.clone(),
                        source,
                    })?;
                if result.request == req.request {
                    std::fs::remove_file(&result_path).map_err(rio(&result_path))?;
                    return Ok(result);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(rio(&result_path)(e)),
        }
        if Instant::now() >= deadline {
            // Withdrawn if still untaken, so that it does not fire when nobody waits.
            return match std::fs::remove_file(&req_path) {
                Ok(()) => Err(ReplayError::NotTaken(wait)),
                Err(_) => Err(ReplayError::NoResult(wait)),
            };
        }
        std::thread::sleep(CLI_POLL);
    }
}

/// Claims a pending request (a claimed one left by a crash first). `Ok(None)`: none.
fn take(dir: &Path) -> Result<Option<Result<ReplayRequest, String>>, QuarantineError> {
    let (req_path, taken) = (dir.join(REQUEST), dir.join(TAKEN));
    if !taken.exists() {
        match std::fs::rename(&req_path, &taken) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(super::io(&req_path)(e)),
        }
    }
    let bytes = std::fs::read(&taken).map_err(super::io(&taken))?;
    Ok(Some(
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", taken.display())),
    ))
}

/// Publishes `result` for the CLI and lets go of the request.
fn finish(dir: &Path, result: &ReplayResult) -> Result<(), QuarantineError> {
    let path = dir.join(RESULT);
    let json = serde_json::to_vec(result).expect("a result always serialises");
    write_atomically(&path, &json).map_err(super::io(&path))?;
    let taken = dir.join(TAKEN);
    std::fs::remove_file(&taken).map_err(super::io(&taken))
}

/// The gateway side: looks for replay requests of `q`'s region every [`POLL`] until `stop`,
/// appending replayed records to `wal`, the region's log.
pub async fn watch(q: Arc<Quarantine>, wal: WalHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
        let dir = q.dir().to_path_buf();
        let taken = match tokio::task::spawn_blocking(move || take(&dir)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                error!(region = %q.region(), error = %e, "cannot read the quarantine replay request");
                continue;
            }
            Err(e) => {
                error!(region = %q.region(), error = %e, "quarantine replay task failed");
                continue;
            }
        };
        let result = match taken {
            None => continue,
            Some(Ok(req)) => replay(&q, &req, &wal).await,
            Some(Err(why)) => ReplayResult {
                error: Some(format!("the request does not parse: {why}")),
                ..ReplayResult::default()
            },
        };
        info!(region = %q.region(), replayed = result.replayed.len(), refused = result.refused.len(), missing = result.missing.len(), "quarantine replay done");
        let q2 = q.clone();
        match tokio::task::spawn_blocking(move || finish(q2.dir(), &result)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(region = %q.region(), error = %e, "cannot write the quarantine replay result")
            }
            Err(e) => error!(region = %q.region(), error = %e, "quarantine replay task failed"),
        }
    }
}

/// Entries of one append.
#[derive(Default)]
struct Batch {
    records: Vec<Vec<u8>>,
    /// Every entry the records stand for (identical records are appended once).
    ids: Vec<u64>,
    bytes: usize,
    /// (CRC32C, length) of each record, to find identical ones.
    seen: HashMap<(u32, usize), Vec<usize>>,
}

impl Batch {
    fn add(&mut self, id: u64, record: Vec<u8>) {
        self.ids.push(id);
        let key = (crc32c::crc32c(&record), record.len());
        let same = self.seen.entry(key).or_default();
        // Two sinks that refused the same record left two entries: one append serves both.
        if same.iter().any(|&i| self.records[i] == record) {
            return;
        }
        same.push(self.records.len());
        self.bytes += record.len();
        self.records.push(record);
    }
}

/// Replays `req` into `wal`; what happened to each entry is in the result.
pub async fn replay(q: &Arc<Quarantine>, req: &ReplayRequest, wal: &WalHandle) -> ReplayResult {
    let mut result = ReplayResult {
        request: req.request.clone(),
        ..ReplayResult::default()
    };
    let mut ids = req.ids.clone().unwrap_or_else(|| q.ids());
    ids.sort_unstable();
    ids.dedup();
    let replayed = metrics::counter!("traceo_quarantine_replayed_records_total", "region" => q.region().to_string());
    let mut batch = Batch::default();
    let mut log_failed: Option<String> = None;
    for &id in &ids {
        if log_failed.is_some() {
            break;
        }
        let q2 = q.clone();
        let read = tokio::task::spawn_blocking(move || q2.read(id)).await;
        let entry = match read {
            Ok(Ok(e)) => e,
            Ok(Err(QuarantineError::NoEntry(_))) => {
                result.missing.push(id);
                continue;
            }
            Ok(Err(e)) => {
                result.refused.push(Refused {
                    id,
                    why: e.to_string(),
                });
                continue;
            }
            Err(e) => {
                result.refused.push(Refused {
                    id,
                    why: format!("reading it failed: {e}"),
                });
                continue;
            }
        };
        // Residency and deliverability: only a record this region's sinks can read goes
        // back into this region's log.
        if let Err(e) = record::decode(entry.record.clone(), q.region()) {
            result.refused.push(Refused {
                id,
                why: format!("not a record of region {}: {e}", q.region()),
            });
            continue;
        }
        batch.add(id, entry.record);
        if batch.bytes >= BATCH_BYTES {
            let full = std::mem::take(&mut batch);
            log_failed = flush(q, wal, full, &mut result, &replayed).await;
        }
    }
    if !batch.ids.is_empty() && log_failed.is_none() {
        log_failed = flush(q, wal, batch, &mut result, &replayed).await;
    }
    if let Some(why) = log_failed {
        // What was not reached stays too.
        let done: std::collections::HashSet<u64> = result
            .replayed
            .iter()
            .chain(result.missing.iter())
            .copied()
            .chain(result.refused.iter().map(|r| r.id))
            .collect();
        for &id in ids.iter().filter(|id| !done.contains(id)) {
            result.refused.push(Refused {
                id,
                why: why.clone(),
            });
        }
    }
    result
}

/// Appends one batch and removes its entries; returns why the log refused, if it did.
async fn flush(
    q: &Arc<Quarantine>,
    wal: &WalHandle,
    batch: Batch,
    result: &mut ReplayResult,
    replayed: &metrics::Counter,
) -> Option<String> {
    if batch.ids.is_empty() {
        return None;
    }
    let count = batch.records.len() as u64;
    if let Err(e) = wal.append(batch.records).await {
        let why = format!("the region's log did not take it ({e}); kept, replay again later");
        for &id in &batch.ids {
            result.refused.push(Refused {
                id,
                why: why.clone(),
            });
        }
        return Some(why);
    }
    replayed.increment(count);
    let (q2, ids) = (q.clone(), batch.ids.clone());
    match tokio::task::spawn_blocking(move || q2.remove(&ids)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            error!(region = %q.region(), error = %e, "replayed entries could not be removed; a later replay delivers them again")
        }
        Err(e) => error!(region = %q.region(), error = %e, "quarantine removal task failed"),
    }
    result.replayed.extend(batch.ids);
    None
}

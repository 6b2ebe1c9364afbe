//! Quarantine: each region's dead-letter records, on disk beside the region's write-ahead log
//! (`<durability.dir>/<region>/quarantine/`).
//!
//! Why it exists: a record an upstream refuses for good (a message over the broker's size
//! limit, a topic that does not exist, a 4xx from a remote-write endpoint), or one the feeder
//! cannot read, used to be either retried forever (every later record of every tenant of the
//! region waited behind it until the log filled and the region answered 503) or confirmed
//! unseen (acknowledged data gone). Now the feeder puts such a record here, durably, and only
//! then confirms it and goes on with the next one: a record is confirmed only when delivered
//! or quarantined, never skipped. An operator fixes the cause and gives the entries back
//! (`traceo-gateway quarantine replay`).
//!
//! Guarantees:
//! - An entry is one file `{id:020}.entry` (format in [`entry`]), written under a temporary
//!   name, fsynced, renamed, and its directory fsynced before [`Quarantine::append`] returns.
//!   A crash leaves a whole entry or a temporary file, which opening removes; an entry that
//!   fails its CRC anyway (damage, not a crash) is renamed `*.damaged` and kept for a person.
//!   One file per entry, not a segmented log, because entries leave from the middle (a
//!   replay of some of them) and the oldest leave one at a time (the bound): with files both
//!   are a delete, with segments both would be a rewrite.
//! - The total size is bounded by `durability.quarantine_max_bytes`: past it the oldest
//!   entries are deleted, each with an `error!` and
//!   `traceo_quarantine_dropped_records_total{region}`; the newest entry is always kept, so
//!   the bound is exceeded by at most one entry. Dropped entries were refused by their
//!   upstream already; a bound is still needed so that a tenant whose every record is
//!   refused cannot fill the disk the log needs.
//! - Residency: a region's entries stay in that region's directory, and a replay appends
//!   them only to that region's log, and only records that name that region
//!   ([`crate::share::record`] checks it); anything else stays here, refused.
//! - Records the whole region cannot read (`undecodable`, `foreign_region`, `corrupt`) are
//!   found by every feeder of the region; the first one's entry is kept and the others
//!   confirm against it, so they are stored once.
//!
//! May call: the filesystem, the region's log (replay), the record codec. Never: sinks, the
//! network.

pub mod cli;
mod entry;
pub mod replay;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use residency_rules::RegionId;
use tracing::{error, info, warn};

use crate::share::now_ms;
use crate::sinks::Reason;
pub use entry::Entry;

/// The directory name under the region's log directory.
pub const DIR_NAME: &str = "quarantine";
const ENTRY_SUFFIX: &str = ".entry";
const DAMAGED_SUFFIX: &str = ".damaged";
const TMP_SUFFIX: &str = ".tmp";

/// The quarantine directory of `region` under `durability.dir`.
pub fn dir_of(root: &Path, region: &RegionId) -> PathBuf {
    root.join(region.as_str()).join(DIR_NAME)
}

/// Why a quarantine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The filesystem failed.
    #[error("quarantine {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An entry file does not read back.
    #[error("quarantine entry {id} is damaged: {reason}")]
    Damaged {
        /// The entry.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// No entry has this id (replayed, dropped, or never written).
    #[error("quarantine has no entry {0}")]
    NoEntry(u64),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a feeder hands over: a record and why it is here.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// The sink that refused it (or could not read it).
    pub sink: &'a str,
    /// Why.
    pub reason: Reason,
    /// What the upstream (or the decoder) said.
    pub answer: &'a str,
    /// Its sequence number in the region's log.
    pub wal_seq: u64,
    /// The record bytes as the log held them.
    pub record: &'a [u8],
}

/// Whether every feeder of a region meets a record refused for `reason` (it is the log's
/// content, not one upstream's answer), so that it is stored once.
fn region_wide(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::Undecodable | Reason::ForeignRegion | Reason::Corrupt
    )
}

#[derive(Debug, Clone, Copy)]
struct Held {
    bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Entries by id, oldest first.
    entries: BTreeMap<u64, Held>,
    bytes: u64,
    next_id: u64,
    /// Region-wide entries by (log sequence number, reason): see [`region_wide`].
    region_wide: HashMap<(u64, Reason), u64>,
}

/// One region's quarantine. Appends and removals serialise on an internal lock; they are
/// blocking file operations (call them from `spawn_blocking`).
pub struct Quarantine {
    region: RegionId,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    gauge: metrics::Gauge,
    dropped: metrics::Counter,
}

/// An entry's id from its file name.
fn entry_id(name: &str) -> Option<u64> {
    name.strip_suffix(ENTRY_SUFFIX)?.parse().ok()
}

fn entry_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{ENTRY_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<(), QuarantineError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Ids of the entries in `dir`, ascending; an absent directory holds none.
pub fn entry_ids(dir: &Path) -> Result<Vec<u64>, QuarantineError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut ids = Vec::new();
    for entry in read {
        let entry = entry.map_err(io(dir))?;
        if let Some(id) = entry.file_name().to_str().and_then(entry_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads entry `id` of the quarantine in `dir`, read-only (the CLI does this while the
/// gateway runs: an entry is whole once its name exists).
pub fn read_entry(dir: &Path, id: u64) -> Result<Entry, QuarantineError> {
    let path = entry_path(dir, id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(QuarantineError::NoEntry(id))
        }
        Err(e) => return Err(io(&path)(e)),
    };
    entry::decode(id, &bytes)
}

impl Quarantine {
    /// Opens (or creates) the quarantine of `region` in `dir`, bounded to `max_bytes`:
    /// removes temporary files a crash left, sets damaged entries aside, and indexes the rest.
    pub fn open(
        dir: &Path,
        region: RegionId,
        max_bytes: u64,
    ) -> Result<Quarantine, QuarantineError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut state = State::default();
        let mut highest = None;
        for file in std::fs::read_dir(dir).map_err(io(dir))? {
            let file = file.map_err(io(dir))?;
            let name = file.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = file.path();
            if name.ends_with(TMP_SUFFIX) {
                // An append or a replay file the crash interrupted: never confirmed.
                warn!(path = %path.display(), "removing an unfinished quarantine file");
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            if let Some(id) = name
                .strip_suffix(DAMAGED_SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                highest = highest.max(Some(id));
                continue;
            }
            let Some(id) = entry_id(name) else { continue };
            highest = highest.max(Some(id));
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            match entry::decode(id, &bytes) {
                Ok(e) => {
                    if let Some(reason) = reason_of(&e.reason).filter(|r| region_wide(*r)) {
                        state.region_wide.insert((e.wal_seq, reason), id);
                    }
                    state.entries.insert(
                        id,
                        Held {
                            bytes: bytes.len() as u64,
                        },
                    );
                    state.bytes += bytes.len() as u64;
                }
                Err(e) => {
                    let aside = dir.join(format!("{id:020}{DAMAGED_SUFFIX}"));
                    error!(path = %path.display(), error = %e, "quarantine entry is damaged; set aside as {}", aside.display());
                    std::fs::rename(&path, &aside).map_err(io(&path))?;
                }
            }
        }
        state.next_id = highest.map_or(1, |h| h + 1);
        let labels = [("region", region.to_string())];
        let q = Quarantine {
            gauge: metrics::gauge!("traceo_quarantine_bytes", &labels),
            dropped: metrics::counter!("traceo_quarantine_dropped_records_total", &labels),
            region,
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
        };
        sync_dir(dir)?;
        let (entries, bytes) = {
            let s = q.lock();
            (s.entries.len(), s.bytes)
        };
        q.gauge.set(bytes as f64);
        if entries > 0 {
            warn!(region = %q.region, entries, bytes, dir = %dir.display(), "quarantine holds refused records; see `traceo-gateway quarantine list`");
        }
        Ok(q)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The region.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of all entries.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Ids of the entries held, oldest first.
    pub fn ids(&self) -> Vec<u64> {
        self.lock().entries.keys().copied().collect()
    }

    /// Stores `r` durably and returns its entry id; past the bound, drops the oldest entries
    /// (see the module docs). A region-wide refusal already held returns the held entry.
    pub fn append(&self, r: Refusal<'_>) -> Result<u64, QuarantineError> {
        let mut state = self.lock();
        let key = (r.wal_seq, r.reason);
        if region_wide(r.reason) {
            if let Some(&id) = state.region_wide.get(&key) {
                if state.entries.contains_key(&id) {
                    return Ok(id);
                }
            }
        }
        let id = state.next_id;
        let file = entry::encode(&Entry {
            id,
            quarantined_ms: now_ms(),
            wal_seq: r.wal_seq,
            sink: r.sink.to_string(),
            reason: r.reason.as_str().to_string(),
            answer: r.answer.to_string(),
            record: r.record.to_vec(),
        });
        let path = entry_path(&self.dir, id);
        let tmp = self.dir.join(format!(".{id:020}{TMP_SUFFIX}"));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&file)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        sync_dir(&self.dir)?;
        state.next_id = id + 1;
        state.entries.insert(
            id,
            Held {
                bytes: file.len() as u64,
            },
        );
        state.bytes += file.len() as u64;
        if region_wide(r.reason) {
            state.region_wide.insert(key, id);
        }
        metrics::counter!("traceo_quarantined_records_total",
            "region" => self.region.to_string(),
            "sink" => r.sink.to_string(),
            "reason" => r.reason.as_str())
        .increment(1);
        error!(region = %self.region, sink = r.sink, reason = %r.reason, seq = r.wal_seq, id, bytes = r.record.len(), answer = r.answer, "record quarantined: its upstream refused it for good (or it cannot be read); delivery goes on; see `traceo-gateway quarantine list`");
        self.enforce_bound(&mut state, id);
        self.gauge.set(state.bytes as f64);
        Ok(id)
    }

    /// Drops the oldest entries, never `keep`, while the quarantine is over its bound.
    fn enforce_bound(&self, state: &mut State, keep: u64) {
        while state.bytes > self.max_bytes {
            let Some((&oldest, held)) = state.entries.iter().find(|(id, _)| **id != keep) else {
                break;
            };
            let held = *held;
            let path = entry_path(&self.dir, oldest);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    error!(path = %path.display(), error = %e, "cannot drop a quarantine entry; the quarantine stays over its bound");
                    break;
                }
            }
            state.entries.remove(&oldest);
            state.bytes -= held.bytes;
            state.region_wide.retain(|_, id| *id != oldest);
            self.dropped.increment(1);
            error!(region = %self.region, id = oldest, bytes = held.bytes, max_bytes = self.max_bytes, "quarantine is over durability.quarantine_max_bytes: dropped its oldest entry (a record its upstream had refused); it is lost");
        }
    }

    /// Reads entry `id`.
    pub fn read(&self, id: u64) -> Result<Entry, QuarantineError> {
        read_entry(&self.dir, id)
    }

    /// Deletes the entries `ids` (replayed) and makes the deletion durable.
    pub fn remove(&self, ids: &[u64]) -> Result<(), QuarantineError> {
        let mut state = self.lock();
        for &id in ids {
            let path = entry_path(&self.dir, id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            if let Some(held) = state.entries.remove(&id) {
                state.bytes -= held.bytes;
            }
            state.region_wide.retain(|_, held| *held != id);
        }
        sync_dir(&self.dir)?;
        self.gauge.set(state.bytes as f64);
        info!(region = %self.region, entries = ids.len(), "quarantine entries removed after replay");
        Ok(())
    }
}

/// The [`Reason`] a stored reason string names, if it is one this gateway knows.
fn reason_of(s: &str) -> Option<Reason> {
    [Reason::Undecodable, Reason::ForeignRegion, Reason::Corrupt]
        .into_iter()
        .find(|r| r.as_str() == s)
}

#[cfg(test)]
mod tests;

//! The write-ahead log of one region: append-only segment files on local disk, each record
//! framed with its length and a CRC32C, appended in groups that share one `fdatasync`.
//!
//! This module owns the files and their format; it knows nothing of what a record holds (the
//! pipeline decides) nor of sinks (they read records back by sequence number and keep their
//! own cursors). It may call the filesystem only.
//!
//! Format (also in `docs/formats.md`): a segment is named by the sequence number of its first
//! record, `{seq:020}.wal`, and starts with a 16-byte header (`TRACEOWL`, version 1 as u32 LE,
//! 4 reserved zero bytes). Records follow back to back: payload length (u32 LE), CRC32C of the
//! length bytes and the payload (u32 LE), payload. Sequence numbers are implicit: a record's
//! is its segment's first plus its index there.
//!
//! Crash safety: a group is written with one `write` and made durable with one
//! `fdatasync`; only then are its sequence numbers returned, so an acknowledged record is on
//! disk. A crash mid-group leaves a torn tail in the last segment: on open the last segment is
//! scanned and cut after its last valid record (logged, and reported in [`Recovery`]), and
//! start-up goes on. A corrupted record in an older segment is found when it is read
//! ([`WalError::Corrupt`]).
//!
//! Fair share: each record has an owner (the pipeline's records name their tenant; the log
//! learns it through [`WalLimits::owner_of`], so it still knows nothing else of the format),
//! and the log counts each owner's framed bytes per segment. An append that would take an
//! owner past [`WalLimits::max_bytes_per_owner`] is refused ([`WalError::OwnerFull`]) while
//! other owners' appends go on, so one tenant whose sinks are stuck, or who floods, cannot
//! fill the region's log for everyone. The counts are not stored: opening the log rebuilds
//! them by walking every segment's record headers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, info};

pub mod reader;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"TRACEOWL";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 16;
/// Length and CRC in front of every payload.
pub const RECORD_OVERHEAD: u64 = 8;
/// The largest payload a record may hold (the record codec's bound); a length above it can
/// only be corruption.
pub use crate::share::record::MAX_RECORD_BYTES;
/// The first bytes of a payload [`WalLimits::owner_of`] is shown (see the record codec).
pub use crate::share::record::OWNER_PEEK_BYTES;

/// Reads a record's owner from the first [`OWNER_PEEK_BYTES`] of its payload; `None`: no
/// owner (counted under the log's bound only).
pub type OwnerOf = fn(&[u8]) -> Option<&[u8]>;

/// Sizes of one region's log.
#[derive(Debug, Clone, Copy)]
pub struct WalLimits {
    /// A new segment starts once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// Appends that would take the log (all segments) past this are refused: backpressure.
    pub max_bytes: u64,
    /// Appends that would take one owner's records (framed, in all segments) past this are
    /// refused, for that owner only.
    pub max_bytes_per_owner: u64,
    /// Whose a record is (the pipeline's [`crate::share::record::tenant_of`]).
    pub owner_of: OwnerOf,
}

/// A bound shared by the logs of all regions (`durability.max_bytes`): each log reserves its
/// bytes here as well as under its own bound.
#[derive(Debug)]
pub struct SharedBudget {
    used: AtomicU64,
    limit: u64,
}

impl SharedBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: u64) -> Arc<SharedBudget> {
        Arc::new(SharedBudget {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// Takes `n` bytes if they fit; false (nothing taken) otherwise.
    fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes in use by all logs.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The log is at its size bound; nothing was written.
    #[error(
        "write-ahead log {dir} is full ({bytes} of {limit} bytes); retry once sinks caught up"
    )]
    Full {
        /// The log's directory.
        dir: PathBuf,
        /// Bytes in the log now.
        bytes: u64,
        /// The bound.
        limit: u64,
    },
    /// Another process holds the log's directory.
    #[error("write-ahead log {dir} is in use by another process ({reason}); give each gateway its own durability.dir")]
    Locked {
        /// The log's directory.
        dir: PathBuf,
        /// What the lock call said.
        reason: String,
    },
    /// One owner's records would take more than its share of the log; nothing was written.
    #[error("tenant {owner} has {bytes} bytes in write-ahead log {dir}, its share is {limit} bytes; retry once its sinks caught up")]
    OwnerFull {
        /// The log's directory.
        dir: PathBuf,
        /// The owner (lossy UTF-8).
        owner: String,
        /// The owner's bytes in the log now.
        bytes: u64,
        /// Its share.
        limit: u64,
    },
    /// A record larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is larger than the write-ahead log allows")]
    RecordTooLarge(usize),
    /// The filesystem failed.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A record failed its checksum or framing where no crash can explain it.
    #[error("write-ahead log {path}: corrupt record {seq} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// Its offset in the segment.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A sequence number the log no longer (or not yet) holds.
    #[error("write-ahead log {dir}: record {seq} is not in the log (it holds {first}..{next})")]
    OutOfRange {
        /// The log's directory.
        dir: PathBuf,
        /// Asked for.
        seq: u64,
        /// First record held.
        first: u64,
        /// Next record to be written.
        next: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What opening the log found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records found in the log.
    pub records: u64,
    /// Bytes cut from a torn or corrupted tail (0 after a clean stop).
    pub bytes_cut: u64,
    /// Why the tail was cut, if it was.
    pub cut_reason: Option<&'static str>,
}

/// Framed bytes of each owner's records.
type OwnerBytes = HashMap<Box<[u8]>, u64>;

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Framed bytes of each owner's records in this segment.
    owners: OwnerBytes,
}

/// A sealed segment taken out of its log ([`Wal::take_released`]) to be deleted; the log goes
/// on counting it until it is given back ([`Wal::forget`]).
#[derive(Debug)]
pub struct Released(Segment);

impl Released {
    /// The segment's file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Deletes the file; one already gone counts as deleted. Its directory is not synced here:
    /// a deletion lost to a crash leaves a segment below every cursor, released again.
    pub fn delete(&self) -> Result<(), WalError> {
        match std::fs::remove_file(&self.0.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&self.0.path)(e)),
            _ => Ok(()),
        }
    }

    /// Deletes the file as [`Released::delete`] does, after cutting it down `step` bytes at a
    /// time. On ext4 one unlink of a 64 MiB segment runs as one journal transaction of tens
    /// of milliseconds (its blocks freed, its cached pages dropped), and the appender's next
    /// `fdatasync` waits for that transaction: cut in steps, it waits for one step at most.
    pub fn delete_in_steps(&self, step: u64) -> Result<(), WalError> {
        let path = &self.0.path;
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(path)(e)),
        };
        let mut len = file.metadata().map_err(io(path))?.len();
        while len > step {
            len -= step;
            file.set_len(len).map_err(io(path))?;
        }
        drop(file);
        self.delete()
    }
}

/// One region's write-ahead log. Not shared: one appender owns it (see the module docs).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    limits: WalLimits,
    /// Sealed segments, oldest first, then the active one last.
    segments: Vec<Segment>,
    active: File,
    next_seq: u64,
    total_bytes: u64,
    /// Framed bytes of each owner's records in all segments.
    owner_bytes: OwnerBytes,
    budget: Option<Arc<SharedBudget>>,
    /// Test seam: OS error codes the next writes fail with, as a full disk would.
    #[cfg(test)]
    faults: Vec<i32>,
    /// Held (`flock`) while the log is open: two gateways on one directory would interleave
    /// sequence numbers and delete each other's segments.
    _lock: File,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn record_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len), payload)
}

/// Writes every byte of `bufs` (`Write::write_all_vectored` is not stable yet): a short
/// write resumes where it stopped.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn owner_key(owner_of: OwnerOf, payload: &[u8]) -> Option<&[u8]> {
    owner_of(&payload[..payload.len().min(OWNER_PEEK_BYTES)])
}

fn add_owner(owners: &mut OwnerBytes, owner: &[u8], bytes: u64) {
    match owners.get_mut(owner) {
        Some(b) => *b += bytes,
        None => {
            owners.insert(owner.into(), bytes);
        }
    }
}

/// The owners' bytes of a sealed segment, from its record headers and the first bytes of
/// each payload (the rest is skipped, not read). Stops at the first record that does not
/// frame: its bytes and the rest count under no owner (reading it reports the corruption).
fn scan_owners(path: &Path, owner_of: OwnerOf) -> Result<OwnerBytes, WalError> {
    let mut owners = OwnerBytes::new();
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut pos = HEADER_BYTES;
    r.seek(SeekFrom::Start(pos)).map_err(io(path))?;
    let mut peek = vec![0u8; OWNER_PEEK_BYTES];
    while pos + RECORD_OVERHEAD <= len {
        let mut head = [0u8; RECORD_OVERHEAD as usize];
        r.read_exact(&mut head).map_err(io(path))?;
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        if n > MAX_RECORD_BYTES as u64 || pos + RECORD_OVERHEAD + n > len {
            break;
        }
        let shown = (n as usize).min(OWNER_PEEK_BYTES);
        r.read_exact(&mut peek[..shown]).map_err(io(path))?;
        r.seek_relative((n as usize - shown) as i64)
            .map_err(io(path))?;
        if let Some(owner) = owner_of(&peek[..shown]) {
            add_owner(&mut owners, owner, RECORD_OVERHEAD + n);
        }
        pos += RECORD_OVERHEAD + n;
    }
    Ok(owners)
}

/// Where a segment's valid data ends before its end, and why.
type Cut = (u64, &'static str);

/// Walks the records of a segment's bytes: the payload range of each valid record, then
/// where and why the valid data ends (`None`: it ends exactly at the end).
fn scan(bytes: &[u8]) -> (Vec<std::ops::Range<usize>>, Option<Cut>) {
    let mut records = Vec::new();
    if bytes.len() < HEADER_BYTES as usize {
        return (records, Some((0, "segment header is truncated")));
    }
    if &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() {
        return (records, Some((0, "not a version 1 segment header")));
    }
    let mut pos = HEADER_BYTES as usize;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + RECORD_OVERHEAD as usize) else {
            return (records, Some((pos as u64, "record header is truncated")));
        };
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD_BYTES {
            return (records, Some((pos as u64, "record length is impossible")));
        }
        let start = pos + RECORD_OVERHEAD as usize;
        let Some(payload) = bytes.get(start..start + len) else {
            return (records, Some((pos as u64, "record payload is truncated")));
        };
        if record_crc(len_bytes, payload) != crc {
            return (
                records,
                Some((pos as u64, "record checksum does not match")),
            );
        }
        records.push(start..start + len);
        pos = start + len;
    }
    (records, None)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn or corrupted tail off its last
    /// segment.
    pub fn open(dir: &Path, limits: WalLimits) -> Result<(Wal, Recovery), WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if let Err(e) = lock.try_lock() {
            return Err(WalError::Locked {
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            });
        }
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata().map_err(io(&entry.path()))?.len();
            segments.push(Segment {
                first_seq: seq,
                path: entry.path(),
                bytes,
                owners: OwnerBytes::new(),
            });
        }
        segments.sort_by_key(|s| s.first_seq);
        let mut recovery = Recovery::default();
        let (active, next_seq) = match segments.last_mut() {
            None => {
                let seg = Self::create_segment(dir, 0)?;
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io(&seg.path))?;
                segments.push(seg);
                (file, 0)
            }
            Some(last) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.path)
                    .map_err(io(&last.path))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes).map_err(io(&last.path))?;
                let (records, end) = scan(&bytes);
                for r in &records {
                    if let Some(owner) = owner_key(limits.owner_of, &bytes[r.clone()]) {
                        add_owner(&mut last.owners, owner, RECORD_OVERHEAD + r.len() as u64);
                    }
                }
                let next = last.first_seq + records.len() as u64;
                if let Some((offset, reason)) = end {
                    // A header that never made it to disk is rewritten whole.
                    let keep = offset.max(HEADER_BYTES);
                    error!(
                        segment = %last.path.display(),
                        offset,
                        cut_bytes = bytes.len() as u64 - offset.min(bytes.len() as u64),
                        reason,
                        "write-ahead log tail is torn or corrupt; cutting it off"
                    );
                    metrics::counter!("traceo_wal_tail_cuts_total").increment(1);
                    recovery.bytes_cut = (bytes.len() as u64).saturating_sub(offset);
                    recovery.cut_reason = Some(reason);
                    if offset < HEADER_BYTES {
                        file.set_len(0).map_err(io(&last.path))?;
                        file.seek(SeekFrom::Start(0)).map_err(io(&last.path))?;
                        file.write_all(&Self::header()).map_err(io(&last.path))?;
                    }
                    file.set_len(keep).map_err(io(&last.path))?;
                    file.sync_all().map_err(io(&last.path))?;
                    last.bytes = keep;
                }
                file.seek(SeekFrom::End(0)).map_err(io(&last.path))?;
                (file, next)
            }
        };
        let first = segments.first().map_or(0, |s| s.first_seq);
        recovery.records = next_seq - first;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let sealed = segments.len().saturating_sub(1);
        for seg in &mut segments[..sealed] {
            seg.owners = scan_owners(&seg.path, limits.owner_of)?;
        }
        let mut owner_bytes = OwnerBytes::new();
        for seg in &segments {
            for (owner, b) in &seg.owners {
                add_owner(&mut owner_bytes, owner, *b);
            }
        }
        info!(dir = %dir.display(), records = recovery.records, first, next = next_seq, "write-ahead log open");
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                limits,
                segments,
                active,
                next_seq,
                total_bytes,
                owner_bytes,
                budget: None,
                #[cfg(test)]
                faults: Vec::new(),
                _lock: lock,
            },
            recovery,
        ))
    }

    fn header() -> [u8; HEADER_BYTES as usize] {
        let mut h = [0u8; HEADER_BYTES as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, WalError> {
        let path = segment_path(dir, first_seq);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&Self::header()).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))?;
        sync_dir(dir)?;
        Ok(Segment {
            first_seq,
            path,
            bytes: HEADER_BYTES,
            owners: OwnerBytes::new(),
        })
    }

    /// Appends `payloads` as consecutive records, durable when this returns: one write and
    /// one `fdatasync` for the whole group. Returns the first one's sequence number. Either
    /// every record is appended or, on error, none is (a failed write is cut off again).
    pub fn append<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64, WalError> {
        // Each record's frame (length, CRC) on its own and the payload where it lies: one
        // vectored write, so the payloads are copied once (into the page cache), not first
        // gathered into a group buffer.
        let mut frames: Vec<[u8; RECORD_OVERHEAD as usize]> = Vec::new();
        let mut bodies: Vec<&'a [u8]> = Vec::new();
        let mut group_bytes = 0u64;
        // Few owners per group (one per request, mostly): a list beats a map.
        let mut adds: Vec<(&'a [u8], u64)> = Vec::new();
        for p in payloads {
            if p.len() > MAX_RECORD_BYTES {
                return Err(WalError::RecordTooLarge(p.len()));
            }
            let len = (p.len() as u32).to_le_bytes();
            let mut frame = [0u8; RECORD_OVERHEAD as usize];
            frame[..4].copy_from_slice(&len);
            frame[4..].copy_from_slice(&record_crc(len, p).to_le_bytes());
            frames.push(frame);
            bodies.push(p);
            let framed = RECORD_OVERHEAD + p.len() as u64;
            group_bytes += framed;
            if let Some(owner) = owner_key(self.limits.owner_of, p) {
                match adds.iter_mut().find(|(o, _)| *o == owner) {
                    Some((_, b)) => *b += framed,
                    None => adds.push((owner, framed)),
                }
            }
        }
        let count = bodies.len() as u64;
        let first = self.next_seq;
        if count == 0 {
            return Ok(first);
        }
        for (owner, add) in &adds {
            let has = self.owner_bytes.get(*owner).copied().unwrap_or(0);
            if has + add > self.limits.max_bytes_per_owner {
                return Err(WalError::OwnerFull {
                    dir: self.dir.clone(),
                    owner: String::from_utf8_lossy(owner).into_owned(),
                    bytes: has,
                    limit: self.limits.max_bytes_per_owner,
                });
            }
        }
        if self.total_bytes + group_bytes > self.limits.max_bytes {
            return Err(WalError::Full {
                dir: self.dir.clone(),
                bytes: self.total_bytes,
                limit: self.limits.max_bytes,
            });
        }
        let grow = group_bytes;
        if let Some(b) = &self.budget {
            if !b.reserve(grow) {
                return Err(WalError::Full {
                    dir: self.dir.clone(),
                    bytes: b.used(),
                    limit: b.limit,
                });
            }
        }
        if self.active_segment().bytes >= self.limits.segment_bytes {
            if let Err(e) = self.rotate() {
                if let Some(b) = &self.budget {
                    b.release(grow);
                }
                return Err(e);
            }
        }
        let seg = self
            .segments
            .last_mut()
            .expect("the log always has an active segment");
        #[cfg(test)]
        let fault = (!self.faults.is_empty()).then(|| self.faults.remove(0));
        #[cfg(not(test))]
        let fault: Option<i32> = None;
        let written = match fault {
            Some(code) => Err(std::io::Error::from_raw_os_error(code)),
            None => {
                let mut slices: Vec<IoSlice<'_>> = frames
                    .iter()
                    .zip(&bodies)
                    .flat_map(|(f, b)| [IoSlice::new(f), IoSlice::new(b)])
                    .collect();
                write_all_vectored(&mut self.active, &mut slices)
                    .and_then(|()| self.active.sync_data())
            }
        };
        if let Err(e) = written {
            if let Some(b) = &self.budget {
                b.release(grow);
            }
            // Leave no partial group behind for a later append to build on.
            let _ = self.active.set_len(seg.bytes);
            let _ = self.active.seek(SeekFrom::Start(seg.bytes));
            return Err(WalError::Io {
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.bytes += group_bytes;
        for (owner, add) in adds {
            add_owner(&mut seg.owners, owner, add);
            add_owner(&mut self.owner_bytes, owner, add);
        }
        self.total_bytes += group_bytes;
        self.next_seq += count;
        Ok(first)
    }

    /// Makes the next writes fail with these OS error codes (a full disk: `ENOSPC`), as the
    /// filesystem would, so tests reach the failure paths without filling a disk.
    #[cfg(test)]
    pub(crate) fn fail_next_writes(&mut self, codes: &[i32]) {
        self.faults.extend_from_slice(codes);
    }

    /// Framed bytes of `owner`'s records in the log.
    pub fn owner_bytes_of(&self, owner: &[u8]) -> u64 {
        self.owner_bytes.get(owner).copied().unwrap_or(0)
    }

    /// Framed bytes of each owner's records in the log.
    pub fn owner_bytes(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.owner_bytes.iter().map(|(o, b)| (&o[..], *b))
    }

    fn active_segment(&self) -> &Segment {
        self.segments
            .last()
            .expect("the log always has an active segment")
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let seg = Self::create_segment(&self.dir, self.next_seq)?;
        self.active = OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .map_err(io(&seg.path))?;
        self.total_bytes += seg.bytes;
        if let Some(b) = &self.budget {
            // A header is small; it is counted, never refused.
            b.used.fetch_add(seg.bytes, Ordering::AcqRel);
        }
        self.segments.push(seg);
        Ok(())
    }

    /// Counts this log under `budget` as well as its own bound (its present size included, even
    /// if that is over: appends are refused until it shrinks).
    pub fn share_budget(&mut self, budget: Arc<SharedBudget>) {
        budget.used.fetch_add(self.total_bytes, Ordering::AcqRel);
        self.budget = Some(budget);
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest record still held.
    pub fn first_seq(&self) -> u64 {
        self.segments.first().map_or(self.next_seq, |s| s.first_seq)
    }

    /// Bytes on disk, headers included.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Deletes every sealed segment whose records all come before `seq` (every reader is past
    /// them), here and now: the writer hands them to its reaper instead (see
    /// [`Wal::take_released`]), so only tests call this. The active segment stays. A segment
    /// that cannot be deleted stays in the log, with those after it.
    #[cfg(test)]
    pub fn remove_before(&mut self, seq: u64) -> Result<(), WalError> {
        let mut taken = self.take_released(seq).into_iter();
        let mut removed = false;
        while let Some(released) = taken.next() {
            if let Err(e) = released.delete() {
                let back: Vec<Segment> = std::iter::once(released.0)
                    .chain(taken.map(|r| r.0))
                    .collect();
                self.segments.splice(0..0, back);
                return Err(e);
            }
            self.forget(released);
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Takes every sealed segment whose records all come before `seq` out of the log, to be
    /// deleted elsewhere: unlinking a 64 MiB file takes tens of milliseconds, which the
    /// appender must not spend while requests wait for their group. What is taken stays
    /// counted against the log's bounds (it is still on disk) until [`Wal::forget`] gets it
    /// back, deleted.
    pub fn take_released(&mut self, seq: u64) -> Vec<Released> {
        let n = self
            .segments
            .iter()
            .skip(1)
            .take_while(|s| s.first_seq <= seq)
            .count();
        self.segments.drain(..n).map(Released).collect()
    }

    /// Stops counting a segment [`Wal::take_released`] took, once it is deleted.
    pub fn forget(&mut self, released: Released) {
        let seg = released.0;
        self.total_bytes -= seg.bytes;
        for (owner, b) in &seg.owners {
            if let Some(total) = self.owner_bytes.get_mut(owner) {
                *total = total.saturating_sub(*b);
                if *total == 0 {
                    self.owner_bytes.remove(owner);
                }
            }
        }
        if let Some(b) = &self.budget {
            b.release(seg.bytes);
        }
    }

    /// The records from `seq` up to the last appended one, in order, as
    /// `(sequence number, payload)`.
    pub fn read_from(&self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let (first, next) = (self.first_seq(), self.next_seq);
        if seq < first || seq > next {
            return Err(WalError::OutOfRange {
                dir: self.dir.clone(),
                seq,
                first,
                next,
            });
        }
        let mut out = Vec::new();
        let start = self
            .segments
            .iter()
            .rposition(|s| s.first_seq <= seq)
            .unwrap_or(0);
        for (i, seg) in self.segments.iter().enumerate().skip(start) {
            let seg_next = self.segments.get(i + 1).map_or(next, |s| s.first_seq);
            if seg_next <= seq {
                continue;
            }
            let mut bytes = Vec::new();
            File::open(&seg.path)
                .and_then(|f| f.take(seg.bytes).read_to_end(&mut bytes))
                .map_err(io(&seg.path))?;
            let (records, end) = scan(&bytes);
            let expected = (seg_next - seg.first_seq) as usize;
            if records.len() < expected {
                let (offset, reason) = end.unwrap_or((bytes.len() as u64, "segment is short"));
                return Err(WalError::Corrupt {
                    path: seg.path.clone(),
                    seq: seg.first_seq + records.len() as u64,
                    offset,
                    reason,
                });
            }
            for (n, range) in records.into_iter().take(expected).enumerate() {
                let s = seg.first_seq + n as u64;
                if s >= seq {
                    out.push((s, bytes[range].to_vec()));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

//! Delivery: from each region's write-ahead log to that region's sinks.
//!
//! With `durability.mode: wal` the pipeline only appends a region's share to the region's log
//! and answers once it is fsynced; everything after that happens here. Each sink of a region
//! has a feeder task that reads the log from the sink's committed cursor, hands records to the
//! sink, and advances the cursor only over records the sink confirmed, in order. The cursor is
//! a small file written atomically (temporary file, fsync, rename, directory fsync) at most
//! every [`PERSIST_EVERY`]; segments are deleted once every sink's persisted cursor is past
//! them. On start each feeder replays from its cursor, so a record is delivered at least once:
//! a crash between a sink's confirmation and the next cursor write delivers it again.
//!
//! What a feeder does with a record the sink did not take depends on the sink's error:
//! - retryable (an upstream outage outlasting the sink's own retries): retried with backoff
//!   from that record on, for as long as it takes; the log absorbs the outage until its
//!   bound, and then the pipeline answers 503;
//! - permanent (the upstream refused this data for good: see [`crate::sinks::SinkError`]):
//!   the record goes to the region's quarantine ([`crate::quarantine`]), fsynced there, and
//!   only then is it confirmed; the feeder goes on with the next record, so one tenant's
//!   refused records never hold up anyone else's.
//!
//! A record is confirmed only when its sink delivered it or the quarantine holds it; nothing
//! is skipped. That includes what the feeder itself cannot read:
//! - a record that does not decode, or that names another region than this log's (a log
//!   directory copied between regions), is quarantined with reason `undecodable` or
//!   `foreign_region` (and counted in `traceo_wal_corrupt_records_total` or
//!   `traceo_wal_foreign_records_total`); a replay never moves it into another region;
//! - bytes of the log that fail their CRC or framing (a torn write below the durable end, or
//!   damage on disk; a crash's torn tail is cut at open and was never acknowledged) are
//!   counted in `traceo_wal_corrupt_records_total` and copied as they are into quarantine
//!   with reason `corrupt`: one failing record's frame, or, when the framing itself is lost,
//!   the rest of the segment, whose records cannot be told apart any more; delivery goes on
//!   at the next readable record (the next segment). Stopping the region instead would not
//!   bring those bytes back and would refuse every tenant of the region; confirming them
//!   unseen would lose acknowledged data without a trace. In quarantine they stay for a
//!   person (`quarantine show` says why they do not decode); a replay refuses them.
//!
//! May call: the log (`wal`), sinks through their handles, the quarantine, the filesystem for
//! cursor files.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use residency_rules::RegionId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::quarantine::{self, Quarantine, QuarantineError, Refusal};
use crate::share::{now_ms, record, TaggedBatch};
use crate::sinks::{EnqueueError, Reason, SinkError, SinkHandle};
use crate::wal::reader::WalReader;
use crate::wal::writer::{self, WalHandle};
use crate::wal::{SharedBudget, Wal, WalError, WalLimits};

/// A cursor is written at most this often (and at shutdown); a crash redelivers at most
/// this much confirmed data.
pub const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// Records one feeder has handed its sink and not yet seen confirmed.
const MAX_IN_FLIGHT_RECORDS: usize = 8192;
/// One read of the log brings at most this many records and bytes (then they are handed on
/// before the next read): a small batch keeps the first record's latency and the feeder's
/// raw-plus-decoded memory low while amortising the blocking-pool hop.
const READ_BATCH_RECORDS: usize = 256;
const READ_BATCH_BYTES: usize = 1 << 20;
/// Backoff after a failed record, doubling to [`MAX_BACKOFF`] (jittered, see [`Backoff`]).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a feeder waits for a full sink queue before trying again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);
/// Requests queued for a region's log writer before appends are refused as busy.
const WRITER_QUEUE: usize = 4096;

/// Why a region's log could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log.
    #[error("region {region}: {source}")]
    Wal {
        /// The region.
        region: RegionId,
        /// Cause.
        #[source]
        source: WalError,
    },
    /// The quarantine.
    #[error("region {region}: {source}")]
    Quarantine {
        /// The region.
        region: RegionId,
        /// Cause.
        #[source]
        source: QuarantineError,
    },
}

/// A sink of a region, with how much record payload its feeder may have in flight (a sink
/// that batches long, like Parquet, needs a wider window to fill its files).
pub struct SinkSlot {
    /// The sink.
    pub sink: SinkHandle,
    /// Record bytes in flight at most.
    pub window_bytes: usize,
    /// Its cursor file's name in the region's `cursors/`, unique in the region (see
    /// [`crate::sinks::SinkConfig::cursor_name`]).
    pub cursor: String,
}

/// What the feeders of one region share: each sink's persisted cursor (for segment deletion)
/// and the acceptance time of its oldest unconfirmed record (for the lag gauge; 0 for none).
struct Progress {
    cursors: Vec<AtomicU64>,
    oldest_ms: Vec<AtomicU64>,
}

/// A started region: its log's handle (for the pipeline) and the tasks to await at shutdown.
pub struct StartedRegion {
    /// Appends to the region's log.
    pub wal: WalHandle,
    /// Feeders and the gauge task; they end once `stop` fired and in-flight records settled.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens `region`'s log under `root` and its quarantine (bounded to `quarantine_max_bytes`),
/// starts the log's writer, one feeder per sink, the quarantine's replay task, and gauges.
pub fn start_region(
    region: &RegionId,
    root: &Path,
    limits: WalLimits,
    quarantine_max_bytes: u64,
    budget: &Arc<SharedBudget>,
    slots: Vec<SinkSlot>,
    stop: &CancellationToken,
) -> Result<StartedRegion, StartError> {
    let err = |source| StartError::Wal {
        region: region.clone(),
        source,
    };
    let dir = root.join(region.as_str());
    let (mut wal, recovery) = Wal::open(&dir, limits).map_err(err)?;
    let quarantine = Quarantine::open(
        &quarantine::dir_of(root, region),
        region.clone(),
        quarantine_max_bytes,
    )
    .map_err(|source| StartError::Quarantine {
        region: region.clone(),
        source,
    })?;
    let quarantine = Arc::new(quarantine);
    wal.share_budget(budget.clone());
    let (first, next) = (wal.first_seq(), wal.next_seq());
    let (tx, rx) = writer::queue(WRITER_QUEUE);
    let (handle, _thread) = writer::start(region.as_str(), wal, tx, rx).map_err(|e| {
        err(WalError::Io {
            path: dir.clone(),
            source: e,
        })
    })?;
    let progress = Arc::new(Progress {
        cursors: slots.iter().map(|_| AtomicU64::new(first)).collect(),
        oldest_ms: slots.iter().map(|_| AtomicU64::new(0)).collect(),
    });
    let mut tasks = Vec::new();
    let cursor_dir = dir.join("cursors");
    std::fs::create_dir_all(&cursor_dir).map_err(|e| {
        err(WalError::Io {
            path: cursor_dir.clone(),
            source: e,
        })
    })?;
    let mut starts = Vec::new();
    for (slot, s) in slots.iter().enumerate() {
        let path = cursor_dir.join(&s.cursor);
        let cursor = match read_cursor(&path) {
            Some(c) if (first..=next).contains(&c) => c,
            Some(c) => {
                warn!(
                    sink = s.sink.name(),
                    cursor = c,
                    first,
                    next,
                    "cursor is outside the log; delivering the whole log again"
                );
                first
            }
            None => first,
        };
        progress.cursors[slot].store(cursor, Ordering::Relaxed);
        starts.push((path, cursor));
    }
    info!(
        region = %region,
        records = recovery.records,
        cut_bytes = recovery.bytes_cut,
        replay = ?starts.iter().map(|(_, c)| next - c).collect::<Vec<_>>(),
        "write-ahead log ready"
    );
    for (slot, (s, (path, cursor))) in slots.into_iter().zip(starts).enumerate() {
        let reader = WalReader::open(&dir, cursor).map_err(err)?;
        let feeder = Feeder {
            region: region.clone(),
            sink: s.sink,
            window_bytes: s.window_bytes.max(1),
            slot,
            dir: dir.clone(),
            cursor_path: path,
            wal: handle.clone(),
            progress: progress.clone(),
            replay_until: next,
            quarantine: quarantine.clone(),
        };
        tasks.push(tokio::spawn(feeder.run(
            reader,
            handle.durable(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(quarantine::replay::watch(
        quarantine,
        handle.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(gauges(
        region.clone(),
        handle.clone(),
        progress,
        stop.clone(),
    )));
    Ok(StartedRegion { wal: handle, tasks })
}

fn read_cursor(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse() {
        Ok(c) => Some(c),
        Err(_) => {
            warn!(path = %path.display(), "cursor file is unreadable; delivering the whole log again");
            None
        }
    }
}

/// Writes `seq` to `path` so that a crash leaves the old or the new value, never a torn one.
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{seq}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A record handed to the sink, awaiting its confirmation (or one the feeder could not
/// read, with its verdict already in `ack`).
struct InFlight {
    seq: u64,
    /// The sequence number after it: `seq + 1`, or past a stretch lost to corruption.
    end: u64,
    bytes: usize,
    accepted_ms: u64,
    ack: oneshot::Receiver<Result<(), SinkError>>,
    /// The bytes to quarantine when the log cannot give them back by `seq` (corruption).
    damaged: Option<Vec<u8>>,
}

/// An acknowledgement that is already in.
fn resolved(result: Result<(), SinkError>) -> oneshot::Receiver<Result<(), SinkError>> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(result);
    rx
}

/// The bytes at `offset` of segment `path` that failed their check: one record's frame
/// (header included, so its stored CRC can be compared) when `one`, else everything to the
/// end of the segment. At most [`crate::wal::MAX_RECORD_BYTES`]: the log never holds more in
/// one record, and a segment is far smaller in any sane configuration.
fn read_damaged(path: &Path, offset: u64, one: bool) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let cap = crate::wal::MAX_RECORD_BYTES as u64;
    let want = if one {
        let mut head = [0u8; crate::wal::RECORD_OVERHEAD as usize];
        f.read_exact(&mut head)?;
        f.seek(SeekFrom::Start(offset))?;
        crate::wal::RECORD_OVERHEAD
            + u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
    } else {
        cap
    };
    let mut out = Vec::new();
    f.take(want.min(cap)).read_to_end(&mut out)?;
    Ok(out)
}

/// How one record of the log becomes what its sink takes: [`record::read_raw`] for a sink
/// that forwards remote-write 1.0, [`record::decode`] for the others.
type Parse = fn(Vec<u8>, &RegionId) -> Result<record::Record, record::RecordError>;

/// How much one read of the log may bring: up to the durable end, within the window; and how
/// its records are parsed (on the blocking pool too, see [`read_batch`]).
struct Want {
    end: u64,
    records: usize,
    bytes: usize,
    parse: Parse,
    region: RegionId,
}

/// What one read of the log brought, in log order.
enum Read {
    /// A record, by sequence number: its size in the log and what it parsed to.
    Record(u64, usize, Result<record::Record, record::RecordError>),
    /// Records `at..end` lost to corruption, with the bytes to quarantine.
    Corrupt {
        at: u64,
        end: u64,
        answer: String,
        damaged: Vec<u8>,
    },
    /// The log could not be read here now; the reader stays put and is tried again.
    Failed(String),
}

/// Reads up to `want` from `reader` on the blocking pool and parses each record there too;
/// gives the reader back. Parsing a batch is milliseconds of CPU (a 2000-series record is
/// split or decoded series by series, up to [`READ_BATCH_RECORDS`] of them): on a runtime
/// worker it would hold up every request that worker serves until the batch is done; on
/// the blocking pool the kernel's scheduler interleaves it with them. Past a
/// record whose CRC failed the reader steps over it; where the framing itself is lost it
/// skips the rest of the segment (see the module doc); either way the lost stretch comes
/// back as [`Read::Corrupt`] with its bytes, so that it is quarantined, never skipped unseen.
async fn read_batch(
    mut reader: WalReader,
    want: Want,
) -> Result<(WalReader, Vec<Read>), tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < want.records && bytes < want.bytes {
            let at = reader.position();
            match reader.next_record(want.end) {
                Ok(Some((seq, payload))) => {
                    let size = payload.len();
                    bytes += size;
                    out.push(Read::Record(seq, size, (want.parse)(payload, &want.region)));
                }
                Ok(None) => break,
                Err(WalError::Corrupt {
                    path,
                    offset,
                    reason,
                    ..
                }) => {
                    let one = reader.position() > at;
                    let end = if one {
                        reader.position()
                    } else {
                        match reader.skip_segment() {
                            Ok(next) => next,
                            Err(e) => {
                                out.push(Read::Failed(format!(
                                    "cannot step over the corruption: {e}"
                                )));
                                break;
                            }
                        }
                    };
                    let answer = format!(
                        "write-ahead log {} at byte {offset}: {reason}; records {at}..{end} cannot be read",
                        path.display()
                    );
                    let damaged = read_damaged(&path, offset, one).unwrap_or_else(|e| {
                        warn!(path = %path.display(), offset, error = %e, "cannot copy the corrupt bytes; the quarantine entry says where they were");
                        Vec::new()
                    });
                    bytes += damaged.len();
                    out.push(Read::Corrupt {
                        at,
                        end,
                        answer,
                        damaged,
                    });
                }
                Err(e) => {
                    out.push(Read::Failed(e.to_string()));
                    break;
                }
            }
        }
        (reader, out)
    })
    .await
}

/// Opens the log at `seq` on the blocking pool.
async fn reopen(dir: &Path, seq: u64) -> Result<WalReader, String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || WalReader::open(&dir, seq))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

enum Event {
    Ack(Result<Result<(), SinkError>, oneshot::error::RecvError>),
    More,
    Tick,
    Stop,
}

struct Feeder {
    region: RegionId,
    sink: SinkHandle,
    window_bytes: usize,
    slot: usize,
    dir: PathBuf,
    cursor_path: PathBuf,
    wal: WalHandle,
    progress: Arc<Progress>,
    /// Records below this were in the log when the gateway started: replays.
    replay_until: u64,
    /// Where records refused for good go.
    quarantine: Arc<Quarantine>,
}

impl Feeder {
    async fn run(
        self,
        mut reader: WalReader,
        mut durable: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let labels = [
            ("region", self.region.to_string()),
            ("sink", self.sink.name().to_string()),
        ];
        let replayed = metrics::counter!("traceo_wal_replayed_records_total", &labels);
        let retries = metrics::counter!("traceo_delivery_retries_total", &labels);
        let corrupt = metrics::counter!("traceo_wal_corrupt_records_total", &labels);
        let delivered = metrics::counter!("traceo_delivery_records_total", &labels);
        let foreign = metrics::counter!("traceo_wal_foreign_records_total", &labels);
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut bytes_in_flight = 0usize;
        let mut committed = reader.position();
        let mut persisted = committed;
        let mut last_persist = Instant::now();
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut stopping = false;
        // Reads refused records back for the quarantine; they come in log order, so one
        // reader moving forward serves them all.
        let mut rereader: Option<WalReader> = None;
        'feed: loop {
            // Fill the window from the log: a batch of records read on the blocking pool
            // (segment reads must not stall a runtime worker), then handed on in order.
            'fill: while !stopping
                && in_flight.len() < MAX_IN_FLIGHT_RECORDS
                && bytes_in_flight < self.window_bytes
            {
                let end = *durable.borrow();
                let want = Want {
                    end,
                    records: (MAX_IN_FLIGHT_RECORDS - in_flight.len()).min(READ_BATCH_RECORDS),
                    bytes: (self.window_bytes - bytes_in_flight).min(READ_BATCH_BYTES),
                    parse: if self.sink.forwards_v1() {
                        record::read_raw
                    } else {
                        record::decode
                    },
                    region: self.region.clone(),
                };
                let (back, items) = match read_batch(reader, want).await {
                    Ok(read) => read,
                    Err(e) => {
                        // The reading task itself failed: the reader is gone with it, so the
                        // log is opened again where the window ends.
                        error!(region = %self.region, sink = self.sink.name(), error = %e, "cannot read the write-ahead log; retrying");
                        pause(&stop, Duration::from_secs(1)).await;
                        let at = in_flight.back().map_or(committed, |f| f.end);
                        match self.reopen_until(at, &stop).await {
                            Some(r) => reader = r,
                            // Stopped first: what is unconfirmed is delivered after the restart.
                            None => break 'feed,
                        }
                        break;
                    }
                };
                reader = back;
                if items.is_empty() {
                    break;
                }
                for item in items {
                    let (seq, bytes, read) = match item {
                        Read::Record(seq, bytes, read) => (seq, bytes, read),
                        Read::Corrupt {
                            at,
                            end,
                            answer,
                            damaged,
                        } => {
                            corrupt.increment(end - at);
                            error!(region = %self.region, sink = self.sink.name(), first = at, end, error = %answer, "write-ahead log records lost to corruption; their bytes go to quarantine and delivery goes on after them");
                            bytes_in_flight += damaged.len();
                            in_flight.push_back(InFlight {
                                seq: at,
                                end,
                                bytes: damaged.len(),
                                accepted_ms: 0,
                                ack: resolved(Err(SinkError::permanent(Reason::Corrupt, answer))),
                                damaged: Some(damaged),
                            });
                            continue;
                        }
                        Read::Failed(e) => {
                            error!(region = %self.region, sink = self.sink.name(), error = %e, "cannot read the write-ahead log; retrying");
                            pause(&stop, Duration::from_secs(1)).await;
                            break 'fill;
                        }
                    };
                    let (accepted_ms, ack) = match read {
                        Ok(rec) => match self.enqueue(Arc::new(rec.share), &stop).await {
                            Some(ack) => (rec.accepted_ms, ack),
                            None => {
                                // Stopping: this record is delivered after the restart.
                                stopping = true;
                                break;
                            }
                        },
                        Err(e) => {
                            let reason = if matches!(e, record::RecordError::ForeignRegion { .. }) {
                                foreign.increment(1);
                                Reason::ForeignRegion
                            } else {
                                corrupt.increment(1);
                                Reason::Undecodable
                            };
                            error!(region = %self.region, sink = self.sink.name(), seq, error = %e, "write-ahead log record cannot be delivered here; it goes to quarantine");
                            (
                                0,
                                resolved(Err(SinkError::permanent(reason, e.to_string()))),
                            )
                        }
                    };
                    if seq < self.replay_until {
                        replayed.increment(1);
                    }
                    in_flight.push_back(InFlight {
                        seq,
                        end: seq + 1,
                        bytes,
                        accepted_ms,
                        ack,
                        damaged: None,
                    });
                    bytes_in_flight += bytes;
                }
            }
            self.progress.oldest_ms[self.slot].store(
                in_flight.front().map_or(0, |f| f.accepted_ms.max(1)),
                Ordering::Relaxed,
            );

            let room =
                in_flight.len() < MAX_IN_FLIGHT_RECORDS && bytes_in_flight < self.window_bytes;
            let event = match in_flight.front_mut() {
                Some(front) => tokio::select! {
                    r = &mut front.ack => Event::Ack(r),
                    r = durable.changed(), if !stopping && room => {
                        if r.is_ok() { Event::More } else { Event::Stop }
                    }
                    _ = stop.cancelled(), if !stopping => Event::Stop,
                    _ = tokio::time::sleep(PERSIST_EVERY) => Event::Tick,
                },
                None if stopping => break,
                None => tokio::select! {
                    r = durable.changed() => if r.is_ok() { Event::More } else { Event::Stop },
                    _ = stop.cancelled() => Event::Stop,
                    _ = tokio::time::sleep(PERSIST_EVERY) => Event::Tick,
                },
            };
            match event {
                Event::Ack(Ok(Ok(()))) => {
                    if let Some(f) = in_flight.pop_front() {
                        committed = f.end;
                        bytes_in_flight -= f.bytes;
                        delivered.increment(1);
                    }
                    backoff.reset();
                }
                Event::Ack(Ok(Err(e))) if e.is_permanent() => {
                    if let Some(f) = in_flight.pop_front() {
                        bytes_in_flight -= f.bytes;
                        if !self.quarantine_record(&f, &e, &mut rereader, &stop).await {
                            // Stopped before the quarantine kept it: it is read (and refused)
                            // again after the restart.
                            break;
                        }
                        committed = f.end;
                    }
                    backoff.reset();
                }
                Event::Ack(result) => {
                    let seq = in_flight.front().map_or(committed, |f| f.seq);
                    if stopping {
                        // The sink stopped; what is unconfirmed is delivered after the restart.
                        break;
                    }
                    let why = match result {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the sink dropped the record".to_string(),
                    };
                    retries.increment(1);
                    let wait = backoff.next_wait();
                    warn!(region = %self.region, sink = self.sink.name(), seq, error = %why, retry_in = ?wait, "delivery failed; retrying from this record");
                    pause(&stop, wait).await;
                    // Stopped while waiting: the rest is delivered after the restart.
                    stopping = stop.is_cancelled();
                    // Everything after it goes again too (at-least-once), in log order.
                    in_flight.clear();
                    bytes_in_flight = 0;
                    // Never on with the old reader: it is past the window just dropped, and
                    // going on from there would confirm records never delivered.
                    match self.reopen_until(seq, &stop).await {
                        Some(r) => reader = r,
                        None => break 'feed,
                    }
                }
                Event::More | Event::Tick => {}
                Event::Stop => stopping = true,
            }
            if committed != persisted && (stopping || last_persist.elapsed() >= PERSIST_EVERY) {
                if self.persist(committed).await {
                    persisted = committed;
                }
                last_persist = Instant::now();
            }
        }
        if committed != persisted {
            self.persist(committed).await;
        }
        self.progress.oldest_ms[self.slot].store(0, Ordering::Relaxed);
    }

    /// Opens the log at `seq`, retrying with backoff while it cannot be opened (it is logged
    /// each time); `None` once `stop` fires first.
    async fn reopen_until(&self, seq: u64, stop: &CancellationToken) -> Option<WalReader> {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            match reopen(&self.dir, seq).await {
                Ok(r) => return Some(r),
                Err(e) => {
                    let wait = backoff.next_wait();
                    error!(region = %self.region, sink = self.sink.name(), seq, error = %e, retry_in = ?wait, "cannot reopen the write-ahead log; delivery waits");
                    pause(stop, wait).await;
                }
            }
            if stop.is_cancelled() {
                return None;
            }
        }
    }

    /// Puts `f` into the region's quarantine with `why`, retrying a failing disk with backoff;
    /// true once it is durable there, false if `stop` fired first.
    async fn quarantine_record(
        &self,
        f: &InFlight,
        why: &SinkError,
        rereader: &mut Option<WalReader>,
        stop: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            let wait = backoff.next_wait();
            let record = match &f.damaged {
                Some(bytes) => Ok(bytes.clone()),
                None => self.reread(f.seq, rereader).await,
            };
            match record {
                Ok(record) => {
                    let q = self.quarantine.clone();
                    let sink = self.sink.name().to_string();
                    let (reason, answer, wal_seq) = (why.reason(), why.answer().to_string(), f.seq);
                    let kept = tokio::task::spawn_blocking(move || {
                        q.append(Refusal {
                            sink: &sink,
                            reason,
                            answer: &answer,
                            wal_seq,
                            record: &record,
                        })
                    })
                    .await;
                    match kept {
                        Ok(Ok(_)) => return true,
                        Ok(Err(e)) => {
                            error!(region = %self.region, sink = self.sink.name(), seq = f.seq, error = %e, retry_in = ?wait, "cannot quarantine a refused record; it is not confirmed, retrying")
                        }
                        Err(e) => {
                            error!(region = %self.region, seq = f.seq, error = %e, "quarantine task failed; retrying")
                        }
                    }
                }
                Err(e) => {
                    error!(region = %self.region, sink = self.sink.name(), seq = f.seq, error = %e, retry_in = ?wait, "cannot reread a refused record to quarantine it; retrying")
                }
            }
            pause(stop, wait).await;
            if stop.is_cancelled() {
                return false;
            }
        }
    }

    /// Record `seq` as the log holds it. The feeder keeps no copy of what it handed a sink
    /// (that would double the memory of every window for a rare case); the log still has
    /// it, since the cursor is not past it. `cached` is moved forward when it is not past
    /// `seq` already, so a run of refused records is read in one pass over the log.
    async fn reread(&self, seq: u64, cached: &mut Option<WalReader>) -> Result<Vec<u8>, String> {
        let dir = self.dir.clone();
        let reader = cached.take();
        let read = tokio::task::spawn_blocking(move || {
            let mut r = match reader {
                Some(r) if r.position() <= seq => r,
                _ => WalReader::open(&dir, seq)?,
            };
            while r.position() < seq {
                r.next_record(seq)?;
            }
            let got = r.next_record(seq + 1)?;
            Ok::<_, WalError>((r, got))
        })
        .await
        .map_err(|e| e.to_string())?;
        match read {
            Ok((r, Some((s, payload)))) if s == seq => {
                *cached = Some(r);
                Ok(payload)
            }
            Ok(_) => Err(format!("record {seq} is not in the log")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes the cursor (on the blocking pool: it fsyncs) and lets the log delete what
    /// every sink of the region is past.
    async fn persist(&self, committed: u64) -> bool {
        let path = self.cursor_path.clone();
        let written = tokio::task::spawn_blocking(move || write_cursor(&path, committed))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = written {
            error!(path = %self.cursor_path.display(), error = %e, "cannot write the delivery cursor; the log keeps the records");
            return false;
        }
        self.progress.cursors[self.slot].store(committed, Ordering::Release);
        let floor = self
            .progress
            .cursors
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(committed);
        self.wal.release(floor);
        true
    }

    /// Queues `share` for the sink, waiting while its queue is full; `None` once stopping
    /// or the sink is gone.
    async fn enqueue(
        &self,
        share: Arc<TaggedBatch>,
        stop: &CancellationToken,
    ) -> Option<oneshot::Receiver<Result<(), SinkError>>> {
        loop {
            match self.sink.enqueue(share.clone()) {
                Ok(ack) => return Some(ack),
                Err(EnqueueError::Overloaded { .. }) => {
                    if stop.is_cancelled() {
                        return None;
                    }
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err(_) => return None,
            }
        }
    }
}

/// Sleeps `d`, or less if `stop` fires.
async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

/// The region's log gauges, once a second.
async fn gauges(
    region: RegionId,
    wal: WalHandle,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let labels = [("region", region.to_string())];
    let bytes = metrics::gauge!("traceo_wal_bytes", &labels);
    let records = metrics::gauge!("traceo_wal_records", &labels);
    let lag = metrics::gauge!("replication_lag_seconds", &labels);
    let durable = wal.durable();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
        bytes.set(wal.bytes() as f64);
        records.set(durable.borrow().saturating_sub(wal.first_seq()) as f64);
        let oldest = progress
            .oldest_ms
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .filter(|&o| o > 0)
            .min();
        lag.set(oldest.map_or(0.0, |o| now_ms().saturating_sub(o) as f64 / 1000.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::testing::share;
    use residency_rules::TenantId;
    use tokio::sync::mpsc;

    /// A sink that refuses every request of tenant `bad` for good and takes the rest,
    /// reporting the tenants it took.
    fn picky_sink(region: &RegionId) -> (SinkHandle, mpsc::UnboundedReceiver<String>) {
        let (tx, mut rx) = mpsc::channel::<crate::sinks::SinkRequest>(64);
        let (took, taken) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let tenant = req.batch.tenant.to_string();
                if tenant == "bad" {
                    req.ack.fail(SinkError::permanent(
                        Reason::UnknownTopic,
                        "topic metrics.bad: UnknownTopicOrPartition",
                    ));
                } else {
                    let _ = took.send(tenant);
                }
                req.ack.accept();
            }
        });
        let handle = SinkHandle::new("test/eu".to_string(), region.clone(), vec![tx], false);
        (handle, taken)
    }

    fn record_of(tenant: &str) -> Vec<u8> {
        let mut s = share(2);
        s.tenant = TenantId::parse(tenant).unwrap();
        record::encode(&s, now_ms())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_record_is_quarantined_and_delivery_goes_on_for_the_others() {
        let tmp = tempfile::tempdir().unwrap();
        let region = RegionId::parse("eu").unwrap();
        let (sink, mut taken) = picky_sink(&region);
        let stop = CancellationToken::new();
        let limits = WalLimits {
            segment_bytes: 1 << 20,
            max_bytes: 64 << 20,
            max_bytes_per_owner: u64::MAX,
            owner_of: crate::share::record::tenant_of,
        };
        let started = start_region(
            &region,
            tmp.path(),
            limits,
            64 << 20,
            &SharedBudget::new(1 << 30),
            vec![SinkSlot {
                sink,
                window_bytes: 1 << 20,
                cursor: "test".into(),
            }],
            &stop,
        )
        .unwrap();
        let mut payloads = Vec::new();
        for i in 0..30 {
            payloads.push(record_of(if i % 3 == 0 { "bad" } else { "good" }));
        }
        // And one the feeder cannot read: quarantined too, never confirmed unseen.
        payloads.push(b"\x01 not a record".to_vec());
        payloads.push(record_of("good"));
        started.wal.append(payloads).await.unwrap();

        let mut good = 0;
        while good < 21 {
            let t = tokio::time::timeout(Duration::from_secs(20), taken.recv())
                .await
                .expect("the good tenant's records are delivered")
                .unwrap();
            assert_eq!(t, "good");
            good += 1;
        }
        let qdir = quarantine::dir_of(tmp.path(), &region);
        let deadline = Instant::now() + Duration::from_secs(20);
        while quarantine::entry_ids(&qdir).unwrap().len() < 11 {
            assert!(
                Instant::now() < deadline,
                "refused records reach quarantine"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        for t in started.tasks {
            t.await.unwrap();
        }
        let ids = quarantine::entry_ids(&qdir).unwrap();
        assert_eq!(ids.len(), 11);
        let reasons: Vec<String> = ids
            .iter()
            .map(|&id| quarantine::read_entry(&qdir, id).unwrap().reason)
            .collect();
        assert_eq!(reasons.iter().filter(|r| *r == "unknown_topic").count(), 10);
        assert_eq!(reasons.iter().filter(|r| *r == "undecodable").count(), 1);
        let first = quarantine::read_entry(&qdir, ids[0]).unwrap();
        assert_eq!(first.record, record_of_seq(tmp.path(), first.wal_seq));
        let cursor = read_cursor(&tmp.path().join("eu/cursors/test")).unwrap();
        assert_eq!(
            cursor, 32,
            "every record is confirmed: delivered or quarantined"
        );
    }

    /// Record `seq` of the test region's log, as stored.
    fn record_of_seq(root: &Path, seq: u64) -> Vec<u8> {
        let mut r = WalReader::open(&root.join("eu"), seq).unwrap();
        r.next_record(seq + 1).unwrap().unwrap().1
    }
}

//! Sinks: where a region's data goes. Each sink belongs to exactly one region, runs as its own
//! task fed by a bounded queue, and acknowledges a batch only once it is durable there.
//!
//! Every kind has one contract ([`SinkConfig`]: spawn, feeder window, series bound, watched
//! upstreams; deliveries end in [`SinkError`], retryable or permanent) and one folder that
//! owns its config section, validation, probe and workers; `kinds.rs` is the one list of
//! kinds.
//!
//! Sinks may call object stores and the network, and use `cluster` (routes, the probe
//! contract) and `share` (what they are handed); they never decide routing (that is
//! `pipeline`) and never answer clients (that is `listen`).

pub(crate) mod frame;
pub mod kafka;
mod kinds;
pub mod null;
pub mod parquet;
pub mod remote_write;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use residency_rules::RegionId;
use tokio::sync::{mpsc, oneshot};

use crate::share::TaggedBatch;

pub use error::{Reason, SinkError};
pub use frame::KafkaFormat;
pub use kinds::{SinkConfig, SinksFile, StartError, Started};

mod error;

/// Why a sink did not take a batch into its queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// A queue is full: backpressure.
    #[error("sink {sink} is overloaded, retry later")]
    Overloaded {
        /// The sink.
        sink: String,
    },
    /// The sink is stopping.
    #[error("sink {sink} is shutting down")]
    ShuttingDown {
        /// The sink.
        sink: String,
    },
}

/// Enough for Prometheus' default 50 shards x several in-flight requests per node, small
/// enough that a stalled sink fills it (and answers 503) within a second of traffic.
pub(crate) const fn default_queue_capacity() -> usize {
    1024
}

/// A batch (or one shard's part of it) queued for a sink, with the acknowledgement to
/// complete.
pub(crate) struct SinkRequest {
    pub(crate) batch: Arc<TaggedBatch>,
    /// Positions in the share's series order (see [`TaggedBatch::series_index`]) this worker
    /// handles; `None` for all of them.
    pub(crate) positions: Option<Vec<u32>>,
    /// Whether this part carries the request's metadata (exactly one part does).
    pub(crate) with_metadata: bool,
    pub(crate) ack: Arc<Ack>,
}

/// Completes a request when the last part of the sink holding its data lets go.
///
/// A batch's rows may land in several files (one per tenant and hour) or be split over a
/// sink's shards; each holder keeps an `Arc<Ack>`, and the acknowledgement is sent when the
/// last one drops: `Ok` if every part was taken in ([`Ack::accept`]) and nothing failed, the
/// first error otherwise. A part dropped from a queue unprocessed (shutdown, a crashed
/// thread) was never accepted, so the request is never reported durable.
pub(crate) struct Ack {
    /// Taken only in `drop`, which has `&mut self`: no lock needed.
    tx: Option<oneshot::Sender<Result<(), SinkError>>>,
    /// Parts not yet taken in.
    unaccepted: AtomicUsize,
    failure: Mutex<Option<SinkError>>,
}

impl Ack {
    fn new(tx: oneshot::Sender<Result<(), SinkError>>, parts: usize) -> Self {
        Self {
            tx: Some(tx),
            unaccepted: AtomicUsize::new(parts),
            failure: Mutex::new(None),
        }
    }

    /// One part's rows are taken in; success now depends only on committing them.
    pub(crate) fn accept(&self) {
        self.unaccepted.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks the request failed with `error`, what the client (or the feeder) is told. The
    /// first error wins, except that a retryable one replaces a permanent one: a request that
    /// may still go through once the transient part clears is not quarantined for the part
    /// that was refused (that part is refused again on the retry, and quarantined then).
    pub(crate) fn fail(&self, error: SinkError) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*f {
            None => *f = Some(error),
            Some(old) if old.is_permanent() && !error.is_permanent() => *f = Some(error),
            Some(_) => {}
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let tx = self.tx.take();
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let result = match failure {
            Some(e) => Err(e),
            None if *self.unaccepted.get_mut() > 0 => Err(SinkError::retryable(
                Reason::Stopped,
                "the sink stopped before the batch was written",
            )),
            None => Ok(()),
        };
        if let Some(tx) = tx {
            // The receiver is gone when the client disconnected; nothing to tell then.
            let _ = tx.send(result);
        }
    }
}

/// The loop of a sink that runs on its own thread: takes requests until `cancel` fires, then
/// still takes what was already queued (its clients are waiting for it), and returns.
/// How often a worker waiting for requests calls [`ShardWorker::idle`] anyway.
const IDLE_TICK: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) fn drain_on_thread<W: ShardWorker>(
    mut rx: mpsc::Receiver<SinkRequest>,
    cancel: &tokio_util::sync::CancellationToken,
    runtime: &tokio::runtime::Handle,
    worker: &mut W,
) {
    loop {
        // What is queued now is taken without blocking; once the queue is empty the worker
        // may finish a batch before waiting for more.
        match rx.try_recv() {
            Ok(req) => {
                worker.accept(req);
                continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => worker.idle(),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
        // Waking now and then lets an idle worker notice changes (a route that moved).
        let next = runtime.block_on(async {
            tokio::select! {
                biased;
                req = rx.recv() => req.map(Some),
                _ = cancel.cancelled() => None,
                _ = tokio::time::sleep(IDLE_TICK) => Some(None),
            }
        });
        match next {
            Some(Some(req)) => worker.accept(req),
            Some(None) => {}
            None => break,
        }
    }
    rx.close();
    while let Ok(req) = rx.try_recv() {
        worker.accept(req);
    }
}

/// One thread of a sharded sink: it owns its state (framing buffers, a producer) outright,
/// so the hot path takes no lock.
pub(crate) trait ShardWorker: Send + 'static {
    /// Handles one request part.
    fn accept(&mut self, req: SinkRequest);
    /// The queue is empty for now: a worker that batches across requests sends what it has.
    fn idle(&mut self) {}
    /// Called once the queue is drained at shutdown.
    fn stop(self);
}

/// Starts a sink as `workers.len()` threads named `{name}#{i}`, each with its own bounded
/// queue. [`SinkHandle::enqueue`] splits a request's series over them by identity hash, so
/// a series always meets the same worker and keeps its order.
pub(crate) fn spawn_shards<W: ShardWorker>(
    name: &str,
    region: RegionId,
    queue_capacity: usize,
    workers: Vec<W>,
    cancel: &tokio_util::sync::CancellationToken,
) -> std::io::Result<(SinkHandle, Vec<JoinHandle<()>>)> {
    let runtime = tokio::runtime::Handle::current();
    let mut txs = Vec::with_capacity(workers.len());
    let mut threads = Vec::with_capacity(workers.len());
    for (i, mut worker) in workers.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(queue_capacity);
        let (cancel, runtime) = (cancel.clone(), runtime.clone());
        let thread = std::thread::Builder::new()
            .name(format!("{name}#{i}"))
            .spawn(move || {
                drain_on_thread(rx, &cancel, &runtime, &mut worker);
                worker.stop();
            })?;
        txs.push(tx);
        threads.push(thread);
    }
    Ok((
        SinkHandle::new(name.to_string(), region, txs, true),
        threads,
    ))
}

/// The sending side of a sink: cheap to clone, one per sink.
#[derive(Clone)]
pub struct SinkHandle {
    name: String,
    region: RegionId,
    /// One queue per worker.
    txs: Vec<mpsc::Sender<SinkRequest>>,
    /// Whether the sink reads [`TaggedBatch::hashes`] (it frames by partition).
    needs_hashes: bool,
    /// Whether the sink writes remote-write 1.0 as is, so it can take raw shares.
    forwards_v1: bool,
}

impl SinkHandle {
    pub(crate) fn new(
        name: String,
        region: RegionId,
        txs: Vec<mpsc::Sender<SinkRequest>>,
        needs_hashes: bool,
    ) -> Self {
        Self {
            name,
            region,
            txs,
            needs_hashes,
            forwards_v1: false,
        }
    }

    /// Marks the sink as writing remote-write 1.0 as framed (see [`TaggedBatch::raw`]).
    pub(crate) fn forwarding_v1(mut self) -> Self {
        self.forwards_v1 = true;
        self
    }

    /// Whether the sink may be handed raw shares read back from the write-ahead log.
    pub(crate) fn forwards_v1(&self) -> bool {
        self.forwards_v1
    }

    /// The sink's name, for errors and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The one region this sink serves.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// Whether the pipeline must compute series hashes for this sink.
    pub(crate) fn needs_hashes(&self) -> bool {
        self.needs_hashes
    }

    /// True while every worker accepts work.
    pub fn is_running(&self) -> bool {
        self.txs.iter().all(|tx| !tx.is_closed())
    }

    /// Queues a batch without waiting, split over the workers by series hash; a full queue
    /// is backpressure, answered at once. Either every part is queued or none is.
    pub(crate) fn enqueue(
        &self,
        batch: Arc<TaggedBatch>,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, EnqueueError> {
        debug_assert_eq!(batch.region, self.region, "pipeline routes by region");
        // (worker, positions) of every part to queue.
        let parts: Vec<(usize, Option<Vec<u32>>)> =
            if self.txs.len() == 1 || batch.hashes.len() != batch.len() {
                vec![(0, None)]
            } else {
                let n = self.txs.len() as u64;
                let mut split = vec![Vec::new(); self.txs.len()];
                for (pos, h) in batch.hashes.iter().enumerate() {
                    split[(h % n) as usize].push(pos as u32);
                }
                let mut parts: Vec<(usize, Option<Vec<u32>>)> = split
                    .into_iter()
                    .enumerate()
                    .filter(|(_, p)| !p.is_empty())
                    .map(|(i, p)| (i, Some(p)))
                    .collect();
                if parts.is_empty() {
                    // No series: one part still carries the metadata.
                    parts.push((0, Some(Vec::new())));
                }
                parts
            };
        let mut permits = Vec::with_capacity(parts.len());
        for (i, _) in &parts {
            match self.txs[*i].try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(mpsc::error::TrySendError::Full(())) => {
                    return Err(EnqueueError::Overloaded {
                        sink: self.name.clone(),
                    })
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Err(EnqueueError::ShuttingDown {
                        sink: self.name.clone(),
                    })
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, parts.len()));
        for (n, (permit, (_, positions))) in permits.into_iter().zip(parts).enumerate() {
            permit.send(SinkRequest {
                batch: batch.clone(),
                positions,
                // Metadata rides with the first part.
                with_metadata: n == 0,
                ack: ack.clone(),
            });
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unprocessed_ack_reports_failure() {
        let (tx, rx) = oneshot::channel();
        drop(Ack::new(tx, 1));
        assert!(rx.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn accepted_ack_succeeds_when_last_holder_drops() {
        let (tx, mut rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, 1));
        ack.accept();
        let second = ack.clone();
        drop(ack);
        assert!(rx.try_recv().is_err(), "still held by a file");
        drop(second);
        assert_eq!(rx.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn one_failed_file_fails_the_request() {
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, 1));
        ack.accept();
        let other = ack.clone();
        ack.fail(SinkError::retryable(Reason::Io, "disk full"));
        drop(ack);
        drop(other);
        assert_eq!(
            rx.await.unwrap(),
            Err(SinkError::retryable(Reason::Io, "disk full"))
        );
    }

    #[tokio::test]
    async fn a_retryable_part_outranks_a_permanent_one() {
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, 1));
        ack.accept();
        ack.fail(SinkError::permanent(Reason::MessageTooLarge, "too big"));
        ack.fail(SinkError::retryable(Reason::Transport, "broker down"));
        ack.fail(SinkError::permanent(Reason::UnknownTopic, "no topic"));
        drop(ack);
        let e = rx.await.unwrap().unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert_eq!(e.reason(), Reason::Transport);
    }

    #[tokio::test]
    async fn the_first_permanent_refusal_is_kept() {
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, 1));
        ack.accept();
        ack.fail(SinkError::permanent(Reason::MessageTooLarge, "too big"));
        ack.fail(SinkError::permanent(Reason::UnknownTopic, "no topic"));
        drop(ack);
        let e = rx.await.unwrap().unwrap_err();
        assert_eq!(e.reason(), Reason::MessageTooLarge);
    }

    #[tokio::test]
    async fn a_part_never_taken_in_fails_the_request() {
        let (tx, rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx, 2));
        let other = ack.clone();
        ack.accept();
        drop(ack);
        // The second shard stopped without taking its part.
        drop(other);
        assert!(rx.await.unwrap().is_err());
    }
}

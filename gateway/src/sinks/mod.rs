//! Sinks: where a region's data goes. Each sink belongs to exactly one region, runs as its own
//! task fed by a bounded queue, and acknowledges a batch only once it is durable there.
//!
//! Sinks may call object stores and the network; they never decide routing (that is
//! `pipeline`) and never answer clients (that is `listen`).

mod frame;
pub mod kafka;
pub mod null;
pub mod parquet;

use std::sync::{Arc, Mutex};

use residency_rules::RegionId;
use tokio::sync::{mpsc, oneshot};

use crate::pipeline::{SubmitError, TaggedBatch};

/// Why a sink could not make a batch durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// A batch queued for a sink, with the acknowledgement to complete.
pub(crate) struct SinkRequest {
    pub(crate) batch: Arc<TaggedBatch>,
    pub(crate) ack: Arc<Ack>,
}

/// Completes a request when the last part of the sink holding its data lets go.
///
/// A batch's rows may land in several files (one per tenant and hour); each holds an
/// `Arc<Ack>`, and the acknowledgement is sent when the last one drops: `Ok` if every file was
/// committed, the first error otherwise. An ack starts failed ("not written"), so a request
/// dropped from a queue unprocessed (shutdown, a crashed task) is never reported durable; the
/// sink calls [`Ack::accept`] when it has taken the rows in.
pub(crate) struct Ack {
    tx: Mutex<Option<oneshot::Sender<Result<(), SinkError>>>>,
    failure: Mutex<Option<SinkError>>,
}

impl Ack {
    fn new(tx: oneshot::Sender<Result<(), SinkError>>) -> Self {
        Self {
            tx: Mutex::new(Some(tx)),
            failure: Mutex::new(Some(SinkError(
                "the sink stopped before the batch was written".to_string(),
            ))),
        }
    }

    /// The sink has taken the batch's rows; success now depends only on committing them.
    pub(crate) fn accept(&self) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The sink took the request in but will not write it, for `error`: what the client is
    /// told (instead of the generic "stopped before written").
    pub(crate) fn refuse(&self, error: SinkError) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Marks the request failed; the client will be told when the ack completes.
    pub(crate) fn fail(&self, error: SinkError) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(error);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        let tx = self.tx.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = tx {
            // The receiver is gone when the client disconnected; nothing to tell then.
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

/// The loop of a sink that runs on its own thread: takes requests until `cancel` fires, then
/// still takes what was already queued (its clients are waiting for it), and returns.
pub(crate) fn drain_on_thread(
    mut rx: mpsc::Receiver<SinkRequest>,
    cancel: &tokio_util::sync::CancellationToken,
    runtime: &tokio::runtime::Handle,
    mut accept: impl FnMut(SinkRequest),
) {
    while let Some(req) = runtime.block_on(async {
        tokio::select! {
            biased;
            req = rx.recv() => req,
            _ = cancel.cancelled() => None,
        }
    }) {
        accept(req);
    }
    rx.close();
    while let Ok(req) = rx.try_recv() {
        accept(req);
    }
}

/// The sending side of a sink: cheap to clone, one per sink.
#[derive(Clone)]
pub struct SinkHandle {
    name: String,
    region: RegionId,
    tx: mpsc::Sender<SinkRequest>,
}

impl SinkHandle {
    pub(crate) fn new(name: String, region: RegionId, tx: mpsc::Sender<SinkRequest>) -> Self {
        Self { name, region, tx }
    }

    /// The sink's name, for errors and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The one region this sink serves.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// True while the sink task accepts work.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Queues a batch without waiting; a full queue is backpressure, answered at once.
    pub(crate) fn enqueue(
        &self,
        batch: Arc<TaggedBatch>,
    ) -> Result<oneshot::Receiver<Result<(), SinkError>>, SubmitError> {
        debug_assert_eq!(batch.region, self.region, "pipeline routes by region");
        let (tx, rx) = oneshot::channel();
        let req = SinkRequest {
            batch,
            ack: Arc::new(Ack::new(tx)),
        };
        match self.tx.try_send(req) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::Overloaded {
                sink: self.name.clone(),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::ShuttingDown {
                sink: self.name.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unprocessed_ack_reports_failure() {
        let (tx, rx) = oneshot::channel();
        drop(Ack::new(tx));
        assert!(rx.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn accepted_ack_succeeds_when_last_holder_drops() {
        let (tx, mut rx) = oneshot::channel();
        let ack = Arc::new(Ack::new(tx));
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
        let ack = Arc::new(Ack::new(tx));
        ack.accept();
        let other = ack.clone();
        ack.fail(SinkError("disk full".into()));
        drop(ack);
        drop(other);
        assert_eq!(rx.await.unwrap(), Err(SinkError("disk full".into())));
    }
}

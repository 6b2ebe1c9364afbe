//! The pipeline: from a decoded, tagged batch to every sink of its region, and back with an
//! acknowledgement once each of them has made the data durable.
//!
//! It owns the region -> sinks routing table, built once from the validated configuration, so a
//! batch can only ever be handed to sinks of its own region. It never touches bytes on the wire
//! (that is `listen` and `protocols`) nor storage (that is `sinks`).

use std::collections::HashMap;
use std::sync::Arc;

use protocols::Batch;
use residency_rules::{RegionId, TenantId};

use crate::sinks::{SinkError, SinkHandle};

/// One request's data with the identity the gateway attached to it.
#[derive(Debug)]
pub struct TaggedBatch {
    /// Whose data this is.
    pub tenant: TenantId,
    /// The region it was routed to.
    pub region: RegionId,
    /// The decoded request.
    pub batch: Batch,
}

/// Why a batch was not made durable. Every variant is retryable by the client.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A sink's queue is full: backpressure.
    #[error("sink {sink} is overloaded, retry later")]
    Overloaded {
        /// The sink.
        sink: String,
    },
    /// A sink is stopping.
    #[error("sink {sink} is shutting down")]
    ShuttingDown {
        /// The sink.
        sink: String,
    },
    /// A sink could not make the data durable.
    #[error("sink {sink} failed: {error}")]
    Sink {
        /// The sink.
        sink: String,
        /// What went wrong.
        error: SinkError,
    },
    /// No sink serves the region (prevented by config validation; kept as an error, not a panic).
    #[error("no sink serves region {0}")]
    NoRoute(RegionId),
}

/// Routes batches to the sinks of their region.
#[derive(Clone)]
pub struct Pipeline {
    routes: Arc<HashMap<RegionId, Vec<SinkHandle>>>,
}

impl Pipeline {
    /// Builds the routing table from sink handles, each tagged with its one region.
    pub fn new(sinks: impl IntoIterator<Item = SinkHandle>) -> Self {
        let mut routes: HashMap<RegionId, Vec<SinkHandle>> = HashMap::new();
        for s in sinks {
            routes.entry(s.region().clone()).or_default().push(s);
        }
        Self {
            routes: Arc::new(routes),
        }
    }

    /// True when every sink is still running.
    pub fn is_ready(&self) -> bool {
        self.routes.values().flatten().all(SinkHandle::is_running)
    }

    /// Hands `batch` to every sink of its region and waits until all made it durable.
    pub async fn submit(&self, batch: Arc<TaggedBatch>) -> Result<(), SubmitError> {
        let sinks = self
            .routes
            .get(&batch.region)
            .ok_or_else(|| SubmitError::NoRoute(batch.region.clone()))?;
        // Enqueue everywhere first so sinks work in parallel, then wait for every ack.
        let mut acks = Vec::with_capacity(sinks.len());
        for sink in sinks {
            acks.push((sink, sink.enqueue(batch.clone())?));
        }
        for (sink, ack) in acks {
            match ack.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(SubmitError::Sink {
                        sink: sink.name().to_string(),
                        error,
                    })
                }
                Err(_) => {
                    return Err(SubmitError::ShuttingDown {
                        sink: sink.name().to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

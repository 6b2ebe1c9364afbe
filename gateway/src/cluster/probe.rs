//! The probe threads of the upstreams the fleet watches. What a probe does is the sink
//! kind's business (`sinks/<kind>/probe.rs` builds a [`ProbeSetup`]); here each one gets its
//! own thread (a probe must never queue behind delivery, nor a slow upstream behind another),
//! runs every `probe_interval` within `probe_timeout`, and reports to the control loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use residency_rules::RegionId;
use tokio::sync::mpsc;

use super::Probe;

/// One probe's outcome, for the control loop.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Index of the upstream in the cluster's list.
    pub upstream: usize,
    /// Outcome.
    pub probe: Probe,
    /// Why it failed, or a caveat on a success.
    pub detail: Option<String>,
}

/// One round of a probe: the health it saw, and why it failed or a caveat on a success.
pub type ProbeOutcome = (Probe, Option<String>);

/// An upstream's probe, built on its own thread; called once per round with the round's
/// number (written into what the probe sends, so late answers are told apart).
pub type ProbeFn = Box<dyn FnMut(u64) -> ProbeOutcome>;

/// Builds an upstream's probe on its probe thread (its client, its runtime), given this
/// node's id and the probe deadline. An error is reported as a failed probe every round.
pub type ProbeSetup = Box<dyn FnOnce(&str, Duration) -> Result<ProbeFn, String> + Send>;

/// One upstream a sink depends on, as the fleet watches it.
pub struct Watched {
    /// Name, unique over the fleet's configuration (how nodes gossip about it).
    pub name: String,
    /// Kind, for the status page: `kafka`, `object_store`.
    pub kind: &'static str,
    /// Its probe.
    pub setup: ProbeSetup,
}

/// What one sink of a region asks the fleet to watch.
pub struct SinkUpstreams {
    /// The sink's region.
    pub region: RegionId,
    /// Its upstreams, in failover order.
    pub upstreams: Vec<Watched>,
    /// Whether the sink fails over among them (the region's route); otherwise they are
    /// only watched and shown.
    pub failover: bool,
}

/// What a probe thread needs besides its probe.
#[derive(Clone)]
pub struct ProbeLoop {
    /// This node, written into probe messages and objects.
    pub node_id: String,
    /// Time between probes.
    pub interval: Duration,
    /// Probe deadline.
    pub timeout: Duration,
    /// Where results go.
    pub results: mpsc::Sender<ProbeResult>,
    /// Set at shutdown.
    pub stop: Arc<AtomicBool>,
}

impl ProbeLoop {
    /// Runs the probe every `interval` on a thread named after the upstream until stopped or
    /// the receiver is gone. `setup` runs first on that thread and builds the probe (a failure
    /// is reported as a failed probe, every interval, with its reason).
    pub fn spawn(
        self,
        upstream: usize,
        name: &str,
        setup: ProbeSetup,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || {
                let mut probe = setup(&self.node_id, self.timeout);
                let mut n: u64 = 0;
                let mut next = Instant::now();
                while !self.stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep((next - now).min(Duration::from_millis(100)));
                        continue;
                    }
                    next = now + self.interval;
                    n += 1;
                    let (probe, detail) = match &mut probe {
                        Ok(p) => p(n),
                        Err(e) => (Probe::Failed, Some(e.clone())),
                    };
                    let sent = self.results.blocking_send(ProbeResult {
                        upstream,
                        probe,
                        detail,
                    });
                    if sent.is_err() {
                        return;
                    }
                }
            })
    }
}

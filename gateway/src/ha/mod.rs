//! HA-pair deduplication: Prometheus replicas that scrape the same targets and both
//! remote-write carry `cluster` and `__replica__` labels; per `(tenant, cluster)` one replica
//! is elected ([`election`]), its samples kept with the replica label removed, the others'
//! answered 202 and counted. The election lives in the gossip the fleet already runs (every
//! node publishes every pair it knows under `ha.<hash>`, see [`crate::cluster::GossipState`]),
//! so it converges on every node and survives a node's restart: the restarted node learns it
//! back from its peers, and elects nothing during a short sync grace (it accepts meanwhile: a
//! possible duplicate, never a loss).
//!
//! The pair is read from a request's first series, as Mimir does: Prometheus puts its
//! `external_labels` on every series of a request, so the first speaks for all, and the check
//! stays one lookup per request rather than per series. The replica label is removed from
//! every series that has it.
//!
//! May call: `cluster` (the gossip contract), `telemetry`, `yaml`.

pub mod config;
pub mod election;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protocols::gossip::ha_pair::HaPairValue;
use protocols::Batch;
use residency_rules::TenantId;

pub use config::{HaDedupFile, HaLabels, HaSettings, MAX_HA_LABEL_BYTES};
use election::{decide, merge, Election, Verdict};

/// Key prefix of the pairs in gossip.
const PREFIX: &str = "ha.";
/// A pair's `last_seen` is republished at most this often (peers need it only to time a
/// failover, whose timeout is seconds).
const REPUBLISH_EVERY_MS: u64 = 1000;
/// Elected-replica changes kept for the status page.
const CHANGES_KEPT: usize = 32;
/// A peer's version dated more than this ahead of this node's clock is ignored: an election
/// from the future would never look silent, and lock the pair's other replicas out.
const MAX_PEER_CLOCK_AHEAD_MS: u64 = 60_000;

/// Why a request's HA labels were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaError {
    /// A cluster or replica label value is too long to track.
    #[error("the {label} label value is {len} bytes, over the {MAX_HA_LABEL_BYTES} an HA pair is tracked by")]
    LabelTooLong {
        /// The label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A cluster or replica label value with control characters (it travels in gossip and
    /// shows on the status page and in logs).
    #[error("the {label} label value holds control characters; an HA pair is tracked by printable values")]
    LabelUnprintable {
        /// The label.
        label: String,
    },
    /// The tenant has `max_clusters_per_tenant` clusters already.
    #[error("tenant {tenant:?} has {limit} HA clusters already (ha_dedup.max_clusters_per_tenant); cluster {cluster:?} is one more")]
    TooManyClusters {
        /// The tenant.
        tenant: String,
        /// The new cluster.
        cluster: String,
        /// The limit.
        limit: usize,
    },
    /// The fleet tracks `max_pairs` pairs already.
    #[error("the gateway tracks {0} HA pairs already (ha_dedup.max_pairs)")]
    TooManyPairs(usize),
}

/// What the HA step says of one tenant's part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaOutcome {
    /// No HA labels, or the tenant is not deduplicated: untouched.
    Untouched,
    /// From the elected replica (or during the sync grace): keep it, without this label.
    Keep {
        /// The replica label to remove from every series.
        replica_label: String,
    },
    /// From a replica that is not elected: drop it, answer 202.
    Deduplicated {
        /// Float samples dropped.
        samples: u64,
        /// Histogram samples dropped.
        histograms: u64,
        /// Exemplars dropped.
        exemplars: u64,
    },
}

/// One pair's state on this node.
#[derive(Debug, Default)]
struct PairState {
    /// The election this node goes by: its own decisions merged with the peers' versions.
    current: Option<Election>,
    /// The peers' versions, by node, as of the last gossip round.
    peers: HashMap<String, Election>,
    /// What this node last published, and when.
    published: Option<(Election, u64)>,
}

struct Pair {
    tenant: TenantId,
    cluster: String,
    key: String,
    state: Mutex<PairState>,
}

/// A change of a pair's elected replica, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    /// Unix ms.
    pub at_ms: u64,
    /// Tenant.
    pub tenant: String,
    /// Cluster.
    pub cluster: String,
    /// Replica before (`null`: the first election).
    pub from: Option<String>,
    /// Replica after.
    pub to: String,
}

/// One pair on the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairView {
    /// Tenant.
    pub tenant: String,
    /// Cluster.
    pub cluster: String,
    /// The election (`null` before the first).
    pub elected: Option<Election>,
}

/// The HA section of the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HaView {
    /// Every pair, by tenant then cluster.
    pub pairs: Vec<PairView>,
    /// The last changes of elected replicas, newest last.
    pub changes: Vec<Change>,
}

/// Every pair this node knows, and the settings.
pub struct HaTracker {
    settings: HaSettings,
    started: Instant,
    sync_grace: Duration,
    pairs: RwLock<HashMap<(TenantId, String), Arc<Pair>>>,
    deleted: Mutex<Vec<String>>,
    changes: Mutex<VecDeque<Change>>,
}

fn now_ms() -> u64 {
    crate::share::now_ms()
}

fn key_of(tenant: &TenantId, cluster: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\0{cluster}", tenant.as_str()).as_bytes(),
    );
    let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

fn encode(tenant: &TenantId, cluster: &str, e: &Election) -> String {
    HaPairValue {
        tenant: tenant.as_str().to_string(),
        cluster: cluster.to_string(),
        replica: e.replica.clone(),
        elected_at_ms: e.elected_at_ms,
        last_seen_ms: e.last_seen_ms,
    }
    .encode()
}

/// A peer's published pair, checked like any input (see [`HaPairValue::decode`]): a bad one
/// is ignored.
fn decode(value: &str) -> Option<(TenantId, String, Election)> {
    let v = HaPairValue::decode(value).ok()?;
    Some((
        TenantId::parse(&v.tenant).ok()?,
        v.cluster,
        Election {
            replica: v.replica,
            elected_at_ms: v.elected_at_ms,
            last_seen_ms: v.last_seen_ms,
        },
    ))
}

impl HaTracker {
    /// A tracker by `settings`; for `sync_grace` after start it elects nothing (it has not
    /// yet learned the fleet's elections; zero without gossip).
    pub fn new(settings: HaSettings, sync_grace: Duration) -> HaTracker {
        HaTracker {
            settings,
            started: Instant::now(),
            sync_grace,
            pairs: RwLock::new(HashMap::new()),
            deleted: Mutex::new(Vec::new()),
            changes: Mutex::new(VecDeque::new()),
        }
    }

    fn labels(&self, tenant: &TenantId) -> Option<&HaLabels> {
        if let Some(list) = &self.settings.tenants {
            if !list.contains(tenant) {
                return None;
            }
        }
        Some(
            self.settings
                .tenant_labels
                .get(tenant)
                .unwrap_or(&self.settings.labels),
        )
    }

    /// The HA step for `tenant`'s `batch` at this instant.
    pub fn check(&self, tenant: &TenantId, batch: &Batch) -> Result<HaOutcome, HaError> {
        self.check_at(tenant, batch, now_ms())
    }

    fn check_at(&self, tenant: &TenantId, batch: &Batch, now: u64) -> Result<HaOutcome, HaError> {
        let Some(labels) = self.labels(tenant) else {
            return Ok(HaOutcome::Untouched);
        };
        let Some(first) = batch.series().next() else {
            return Ok(HaOutcome::Untouched);
        };
        let l = first.labels();
        let (Some(cluster), Some(replica)) = (l.get(&labels.cluster), l.get(&labels.replica))
        else {
            return Ok(HaOutcome::Untouched);
        };
        for (label, v) in [(&labels.cluster, cluster), (&labels.replica, replica)] {
            if v.len() > MAX_HA_LABEL_BYTES {
                return Err(HaError::LabelTooLong {
                    label: label.clone(),
                    len: v.len(),
                });
            }
            if v.chars().any(char::is_control) {
                return Err(HaError::LabelUnprintable {
                    label: label.clone(),
                });
            }
        }
        let keep = HaOutcome::Keep {
            replica_label: labels.replica.clone(),
        };
        // In the sync grace a pair this node does not know yet is kept without an election,
        // and not even tracked: a pair made here would count toward the limits without ever
        // being elected, published or forgotten.
        let syncing = self.started.elapsed() < self.sync_grace;
        let pair = if syncing {
            match self.known(tenant, cluster) {
                Some(p) => p,
                None => return Ok(keep),
            }
        } else {
            self.pair(tenant, cluster, true)?
        };
        let mut state = pair.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.current.is_none() && syncing {
            return Ok(keep);
        }
        match decide(
            state.current.as_ref(),
            replica,
            now,
            self.settings.failover_timeout,
        ) {
            Verdict::Accept => {
                if let Some(c) = state.current.as_mut() {
                    c.last_seen_ms = c.last_seen_ms.max(now);
                }
                Ok(keep)
            }
            Verdict::Elect(e) => {
                let from = state.current.as_ref().map(|c| c.replica.clone());
                state.current = Some(e);
                drop(state);
                self.changed(&pair, from, replica, now);
                Ok(keep)
            }
            Verdict::Reject => {
                let (samples, histograms, exemplars) = (
                    batch.sample_count() as u64,
                    batch.histogram_count() as u64,
                    batch.exemplar_count() as u64,
                );
                metrics::counter!("traceo_ha_deduplicated_samples_total",
                    "tenant" => crate::telemetry::tenant_label(Some(tenant)))
                .increment(samples + histograms + exemplars);
                Ok(HaOutcome::Deduplicated {
                    samples,
                    histograms,
                    exemplars,
                })
            }
        }
    }

    fn changed(&self, pair: &Pair, from: Option<String>, to: &str, at_ms: u64) {
        metrics::counter!("traceo_ha_elected_replica_changes_total",
            "tenant" => crate::telemetry::tenant_label(Some(&pair.tenant)))
        .increment(1);
        tracing::info!(tenant = %pair.tenant, cluster = %pair.cluster, from = ?from, to, "HA pair elected a replica");
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if changes.len() == CHANGES_KEPT {
            changes.pop_front();
        }
        changes.push_back(Change {
            at_ms,
            tenant: pair.tenant.as_str().to_string(),
            cluster: pair.cluster.clone(),
            from,
            to: to.to_string(),
        });
    }

    /// Every pair, taken out of the map's lock (the gossip rounds work on them unlocked).
    fn all_pairs(&self) -> Vec<Arc<Pair>> {
        self.pairs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The pair of `(tenant, cluster)`, if this node tracks it.
    fn known(&self, tenant: &TenantId, cluster: &str) -> Option<Arc<Pair>> {
        self.pairs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.clone(), cluster.to_string()))
            .cloned()
    }

    /// The pair of `(tenant, cluster)`, made if `create` and under the limits.
    fn pair(&self, tenant: &TenantId, cluster: &str, create: bool) -> Result<Arc<Pair>, HaError> {
        let id = (tenant.clone(), cluster.to_string());
        if let Some(p) = self
            .pairs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(p.clone());
        }
        let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pairs.get(&id) {
            return Ok(p.clone());
        }
        if !create || pairs.len() >= self.settings.max_pairs {
            return Err(HaError::TooManyPairs(self.settings.max_pairs));
        }
        let of_tenant = pairs.keys().filter(|(t, _)| t == tenant).count();
        if of_tenant >= self.settings.max_clusters_per_tenant {
            return Err(HaError::TooManyClusters {
                tenant: tenant.as_str().to_string(),
                cluster: cluster.to_string(),
                limit: self.settings.max_clusters_per_tenant,
            });
        }
        let pair = Arc::new(Pair {
            tenant: tenant.clone(),
            cluster: cluster.to_string(),
            key: key_of(tenant, cluster),
            state: Mutex::new(PairState::default()),
        });
        pairs.insert(id, pair.clone());
        Ok(pair)
    }

    /// Pairs unseen this long are forgotten (on every node alike, as they share `last_seen`).
    fn forget_after_ms(&self) -> u64 {
        (self.settings.failover_timeout.saturating_mul(10))
            .max(Duration::from_secs(600))
            .as_millis() as u64
    }

    /// The status-page view.
    pub fn view(&self) -> HaView {
        let mut pairs: Vec<PairView> = self
            .pairs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| PairView {
                tenant: p.tenant.as_str().to_string(),
                cluster: p.cluster.clone(),
                elected: p
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current
                    .clone(),
            })
            .collect();
        pairs.sort_by(|a, b| (&a.tenant, &a.cluster).cmp(&(&b.tenant, &b.cluster)));
        HaView {
            pairs,
            changes: self
                .changes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn absorb_at(&self, peers: &[(String, String, String)], now: u64) {
        let mut by_pair: HashMap<(TenantId, String), Vec<(String, Election)>> = HashMap::new();
        // No peer is trusted with more pairs than the fleet may track.
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for (node, _key, value) in peers {
            let n = per_node.entry(node.as_str()).or_default();
            if *n >= self.settings.max_pairs {
                continue;
            }
            *n += 1;
            let Some((tenant, cluster, e)) = decode(value) else {
                continue;
            };
            if e.last_seen_ms > now.saturating_add(MAX_PEER_CLOCK_AHEAD_MS) {
                continue;
            }
            by_pair
                .entry((tenant, cluster))
                .or_default()
                .push((node.clone(), e));
        }
        // Pairs only peers know (learned, e.g. after this node restarted).
        for (tenant, cluster) in by_pair.keys() {
            // Over the limits a peer's pair is not tracked here: the peer refused no more
            // than this node would, so it is the same set everywhere but in a race.
            let _ = self.pair(tenant, cluster, true);
        }
        let all = self.all_pairs();
        let timeout = self.settings.failover_timeout;
        let mut forgotten = Vec::new();
        let mut clusters: HashMap<TenantId, usize> = HashMap::new();
        for pair in all {
            let versions = by_pair
                .remove(&(pair.tenant.clone(), pair.cluster.clone()))
                .unwrap_or_default();
            let mut state = pair.state.lock().unwrap_or_else(|p| p.into_inner());
            state.peers = versions.into_iter().collect();
            let mut known: Vec<Election> = state.peers.values().cloned().collect();
            known.extend(state.current.clone());
            let merged = merge(&known, timeout);
            let from = state.current.as_ref().map(|c| c.replica.clone());
            let changed =
                merged.as_ref().map(|m| &m.replica) != state.current.as_ref().map(|c| &c.replica);
            state.current = merged;
            let stale = state
                .current
                .as_ref()
                .is_some_and(|c| now.saturating_sub(c.last_seen_ms) > self.forget_after_ms());
            let to = state.current.as_ref().map(|c| c.replica.clone());
            drop(state);
            if stale {
                forgotten.push(pair.clone());
                continue;
            }
            *clusters.entry(pair.tenant.clone()).or_default() += 1;
            if let (true, Some(to)) = (changed, to) {
                self.changed(&pair, from, &to, now);
            }
        }
        if !forgotten.is_empty() {
            let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
            let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            for p in forgotten {
                pairs.remove(&(p.tenant.clone(), p.cluster.clone()));
                deleted.push(p.key.clone());
            }
        }
        for (tenant, n) in clusters {
            metrics::gauge!("traceo_ha_clusters", "tenant" => crate::telemetry::tenant_label(Some(&tenant)))
                .set(n as f64);
        }
    }

    fn to_publish_at(&self, now: u64) -> (Vec<(String, String)>, Vec<String>) {
        let pairs = self.all_pairs();
        let mut set = Vec::new();
        for pair in pairs {
            let mut state = pair.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(current) = state.current.clone() else {
                continue;
            };
            let due = match &state.published {
                None => true,
                Some((p, at)) => {
                    p.replica != current.replica
                        || p.elected_at_ms != current.elected_at_ms
                        || (p.last_seen_ms != current.last_seen_ms
                            && now.saturating_sub(*at) >= REPUBLISH_EVERY_MS)
                }
            };
            if due {
                set.push((
                    pair.key.clone(),
                    encode(&pair.tenant, &pair.cluster, &current),
                ));
                state.published = Some((current, now));
            }
        }
        let deleted = std::mem::take(&mut *self.deleted.lock().unwrap_or_else(|p| p.into_inner()));
        (set, deleted)
    }
}

impl crate::cluster::GossipState for HaTracker {
    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn to_publish(&self) -> (Vec<(String, String)>, Vec<String>) {
        self.to_publish_at(now_ms())
    }

    fn absorb(&self, peers: &[(String, String, String)]) {
        self.absorb_at(peers, now_ms())
    }
}

#[cfg(test)]
mod tests;

/// Renders the HA section of `/api/v1/status?format=text`.
pub fn render_text(view: &HaView, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(out, "\nHA pairs (elected replica per tenant and cluster):");
    if view.pairs.is_empty() {
        let _ = writeln!(out, "  none seen yet");
    }
    let at = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap_or_else(|| ms.to_string())
    };
    for p in &view.pairs {
        match &p.elected {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "  {:<24} {:<20} {:<20} elected {}  last seen {}",
                    p.tenant,
                    format!("{:?}", p.cluster),
                    format!("{:?}", e.replica),
                    at(e.elected_at_ms),
                    at(e.last_seen_ms)
                );
            }
            None => {
                let _ = writeln!(out, "  {:<24} {:<20?} (syncing)", p.tenant, p.cluster);
            }
        }
    }
    let _ = writeln!(out, "\nHA replica changes (newest last):");
    if view.changes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for c in &view.changes {
        let _ = writeln!(
            out,
            "  {}  {}/{:?}: {:?} -> {:?}",
            at(c.at_ms),
            c.tenant,
            c.cluster,
            c.from.as_deref().unwrap_or("-"),
            c.to
        );
    }
}

//! The pipeline: from a decoded batch and its residency decisions to the sinks of the regions
//! those decisions allow, and back with an acknowledgement once each sink has made its part
//! durable.
//!
//! It owns the region -> sinks routing table. A caller cannot name a region: it hands over a
//! [`Plan`] of residency [`RegionSet`]s, and the pipeline resolves each set through
//! [`TenantView::route`] (which only yields the tenant's allowed regions) to the first region
//! that has sinks. A route outside a tenant's allowed regions has no way to be expressed here.
//! It never touches bytes on the wire (that is `listen` and `protocols`) nor storage (`sinks`).
//! May call: `share`, `sinks` (handles), `wal` (appends), `cluster` (region health), `config`.

use std::collections::HashMap;
use std::sync::Arc;

use protocols::remote_write::v1::ExtraLabels;
use protocols::{Batch, SeriesRef};
use residency_rules::{LabelEdit, RegionId, RegionSet, TenantId, TenantView};

use crate::cluster::RegionRoute;
use crate::share::record;
use crate::share::{gateway_tags, resolve_edits, ResolvedEdit, TaggedBatch};
use crate::sinks::{EnqueueError, SinkError, SinkHandle};
use crate::wal::writer::{AppendError, WalHandle};

#[cfg(test)]
mod ingest_props;

/// When a request counts as kept, and so when it is acknowledged (`durability.mode`).
#[derive(Clone)]
pub enum Durability {
    /// Once every region's share is fsynced in that region's write-ahead log; the sinks read
    /// it from there (at-least-once: a crash may deliver a record twice, never lose it).
    Wal(Arc<HashMap<RegionId, WalHandle>>),
    /// Once every sink of the region confirmed it (nothing on local disk; an upstream outage
    /// is answered with 503 at once).
    Upstream,
    /// Once queued for the sinks: lossy, for data that may be lost (a crash or a failing
    /// upstream drops what was acknowledged).
    None,
}

/// Where each series of a request goes: groups of series sharing one region set, and the
/// label edits of the series that have any.
#[derive(Debug, Default)]
pub struct Plan {
    groups: Vec<(RegionSet, Vec<u32>)>,
    all: Option<RegionSet>,
    edits: HashMap<u32, Box<[ResolvedEdit]>>,
}

impl Plan {
    /// Every series of the batch to `set`, unedited: the common case, no per-series work.
    pub fn all(set: RegionSet) -> Plan {
        Plan {
            all: Some(set),
            ..Plan::default()
        }
    }

    /// Every series of a batch of `count` to `set`, unedited, except those in `refused`
    /// (ascending): a batch some of whose series a tenant limit refused.
    pub fn all_but(set: RegionSet, count: u32, refused: &[u32]) -> Plan {
        if refused.is_empty() {
            return Plan::all(set);
        }
        let mut skip = refused.iter().peekable();
        let kept: Vec<u32> = (0..count)
            .filter(|i| {
                if skip.peek() == Some(&i) {
                    skip.next();
                    false
                } else {
                    true
                }
            })
            .collect();
        let mut plan = Plan::default();
        if !kept.is_empty() {
            plan.groups.push((set, kept));
        }
        plan
    }

    /// Removes label `name` from every series of `batch` that has it (the HA replica label),
    /// before any other edit of the series.
    pub fn drop_label(&mut self, batch: &Batch, name: &str) {
        for (i, s) in batch.series().enumerate() {
            let Some(pos) = s.labels().iter().position(|(n, _)| n == name) else {
                continue;
            };
            let drop = ResolvedEdit {
                index: pos as u16,
                replacement: None,
            };
            let edits = self.edits.entry(i as u32).or_default();
            *edits = std::iter::once(drop).chain(edits.iter().cloned()).collect();
        }
    }

    /// Adds one series with its decision.
    pub fn add(
        &mut self,
        series: u32,
        set: RegionSet,
        edits: &[LabelEdit],
        view: &TenantView<'_>,
        labels: &SeriesRef<'_>,
    ) {
        match self.groups.iter_mut().find(|(s, _)| *s == set) {
            Some((_, list)) => list.push(series),
            None => self.groups.push((set, vec![series])),
        }
        if !edits.is_empty() {
            let resolved = resolve_edits(edits, labels, view.policy());
            self.edits.insert(series, resolved);
        }
    }

    /// Whether no series is routed anywhere (all denied).
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.groups.is_empty()
    }
}

/// Why a batch was not made durable. Every variant is retryable by the client but
/// [`SubmitError::Unstorable`].
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A series could not be stored so that the region's sinks can read it back (see
    /// [`record::RULES`]); nothing of the request was kept. Not retryable: 400 (413 for a
    /// request too large for one record).
    #[error("region {region}: cannot store {error}")]
    Unstorable {
        /// The region.
        region: RegionId,
        /// What and which series.
        error: record::Unstorable,
    },
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
    /// A region's write-ahead log did not keep the share (full, busy or failing).
    #[error("region {region}: {error}")]
    Wal {
        /// The region.
        region: RegionId,
        /// What went wrong.
        error: AppendError,
    },
    /// None of the allowed regions has a sink (prevented by config validation, kept as an
    /// error rather than a panic; the data goes nowhere rather than out of its regions).
    #[error("no sink serves any region allowed for tenant {0}")]
    NoRoute(TenantId),
}

impl From<EnqueueError> for SubmitError {
    fn from(e: EnqueueError) -> Self {
        match e {
            EnqueueError::Overloaded { sink } => SubmitError::Overloaded { sink },
            EnqueueError::ShuttingDown { sink } => SubmitError::ShuttingDown { sink },
        }
    }
}

/// A checked share on its way: a record for the region's log, or the share for its sinks.
enum Work {
    Append(Vec<u8>),
    Enqueue(Arc<TaggedBatch>),
}

/// A submission that passed every check and has not been handed to any log or sink yet
/// ([`Pipeline::prepare`]); dropping it submits nothing.
pub struct Prepared<'p> {
    tenant: TenantId,
    checked: Vec<(RegionId, &'p Vec<SinkHandle>, Work)>,
}

/// Routes batches to the sinks of allowed regions.
#[derive(Clone)]
pub struct Pipeline {
    routes: Arc<HashMap<RegionId, Vec<SinkHandle>>>,
    /// Each region's upstream route, where the region has upstreams the fleet watches.
    health: Arc<HashMap<RegionId, Arc<RegionRoute>>>,
    durability: Durability,
    tenant_label: Arc<str>,
    region_label: Arc<str>,
    /// The largest one series may encode to in each region: the smallest message a sink of
    /// the region takes (absent: the log's record bound).
    series_limits: Arc<HashMap<RegionId, usize>>,
}

/// The largest one series may encode to for the sinks of `region`: the smallest message any
/// of them takes (see [`crate::sinks::SinkConfig::max_series_bytes`]), at most a log record.
pub fn max_series_bytes(region: &crate::config::Region) -> usize {
    region
        .sinks
        .iter()
        .filter_map(|s| s.max_series_bytes())
        .fold(crate::wal::MAX_RECORD_BYTES, usize::min)
}

/// The region a set of allowed regions resolves to (see [`Pipeline`]'s region choice): the
/// first, in the tenant's failover order, that `serves` (has sinks) and is `usable`; when
/// none is usable, the first that serves. Only [`TenantView::route`] yields candidates, so
/// the answer is always an allowed region. `explain` asks the same question offline.
pub fn choose_region<'v>(
    view: &TenantView<'v>,
    set: RegionSet,
    serves: impl Fn(&RegionId) -> bool,
    usable: impl Fn(&RegionId) -> bool,
) -> Option<&'v RegionId> {
    let mut first = None;
    for r in view.route(set).filter(|r| serves(r)) {
        if usable(r) {
            return Some(r);
        }
        first.get_or_insert(r);
    }
    first
}

impl Pipeline {
    /// Builds the routing table from sink handles, each tagged with its one region.
    pub fn new(
        sinks: impl IntoIterator<Item = SinkHandle>,
        durability: Durability,
        tenant_label: &str,
        region_label: &str,
    ) -> Self {
        let mut routes: HashMap<RegionId, Vec<SinkHandle>> = HashMap::new();
        for s in sinks {
            routes.entry(s.region().clone()).or_default().push(s);
        }
        Self {
            routes: Arc::new(routes),
            health: Arc::default(),
            durability,
            tenant_label: tenant_label.into(),
            region_label: region_label.into(),
            series_limits: Arc::default(),
        }
    }

    /// Sets the largest one series may encode to per region (see [`max_series_bytes`]); a
    /// larger series is refused at ingest (400) rather than acknowledged and then refused by
    /// the sink.
    pub fn with_series_limits(
        mut self,
        limits: impl IntoIterator<Item = (RegionId, usize)>,
    ) -> Self {
        self.series_limits = Arc::new(limits.into_iter().collect());
        self
    }

    fn series_limit(&self, region: &RegionId) -> usize {
        self.series_limits
            .get(region)
            .copied()
            .unwrap_or(crate::wal::MAX_RECORD_BYTES)
    }

    /// Lets region choice skip regions whose every watched upstream is down (see
    /// [`Pipeline::resolve`]).
    pub fn with_region_health(
        mut self,
        health: impl IntoIterator<Item = (RegionId, Arc<RegionRoute>)>,
    ) -> Self {
        self.health = Arc::new(health.into_iter().collect());
        self
    }

    /// Why the gateway cannot keep what it is sent right now, if it cannot: a sink stopped,
    /// a region's write-ahead log cannot write (a full disk), or is full.
    pub fn unready_reason(&self) -> Option<String> {
        if let Some(s) = self.routes.values().flatten().find(|s| !s.is_running()) {
            return Some(format!("sink {} has stopped", s.name()));
        }
        if let Durability::Wal(logs) = &self.durability {
            let mut failing: Vec<(&str, String)> = logs
                .iter()
                .filter_map(|(r, h)| h.failure().map(|why| (r.as_str(), why)))
                .collect();
            if !failing.is_empty() {
                failing.sort_unstable();
                let list: Vec<String> = failing
                    .iter()
                    .map(|(r, why)| format!("region {r}: {why}"))
                    .collect();
                return Some(format!(
                    "write-ahead log cannot write ({}); writes get 503 until an append succeeds",
                    list.join("; ")
                ));
            }
            let mut full: Vec<&str> = logs
                .iter()
                .filter(|(_, h)| h.is_full())
                .map(|(r, _)| r.as_str())
                .collect();
            if !full.is_empty() {
                full.sort_unstable();
                return Some(format!(
                    "write-ahead log full in region {} (its sinks are behind; writes get 503 until they catch up)",
                    full.join(", ")
                ));
            }
        }
        None
    }

    /// Whether some region has sinks.
    pub fn serves(&self, region: &RegionId) -> bool {
        self.routes.get(region).is_some_and(|s| !s.is_empty())
    }

    /// The region a set resolves to: the first of the tenant's allowed regions, in failover
    /// order, that has sinks here and an upstream the fleet sees usable (a region without
    /// watched upstreams counts as usable); when every such region is down, the first with
    /// sinks, whose write-ahead log keeps the data until an upstream is back. Only
    /// [`TenantView::route`] yields candidates, so the answer is always an allowed region.
    fn resolve<'v>(&self, view: &TenantView<'v>, set: RegionSet) -> Option<&'v RegionId> {
        choose_region(
            view,
            set,
            |r| self.serves(r),
            |r| self.health.get(r).is_none_or(|h| h.any_usable()),
        )
    }

    /// Hands each group of `plan` to every sink of its region and waits until all made it
    /// durable. Nothing is submitted unless every group has a region and every share passes
    /// the record checks ([`Pipeline::prepare`], then [`Pipeline::commit`]).
    pub async fn submit(
        &self,
        view: &TenantView<'_>,
        tenant: &TenantId,
        batch: Batch,
        plan: Plan,
    ) -> Result<(), SubmitError> {
        let prepared = self.prepare(view, tenant, batch, plan)?;
        self.commit(prepared).await
    }

    /// Everything of a submission that can refuse it without side effects: each group's
    /// region, the tags, and the record checks (encoding the log records). A caller with
    /// several batches (an OTLP request of several tenants) prepares all of them before it
    /// commits any, so a request refused for one leaves nothing behind for another.
    pub fn prepare(
        &self,
        view: &TenantView<'_>,
        tenant: &TenantId,
        batch: Batch,
        plan: Plan,
    ) -> Result<Prepared<'_>, SubmitError> {
        let batch = Arc::new(batch);
        let edits = Arc::new(plan.edits);
        let mut shares: Vec<(RegionId, Option<Vec<u32>>)> = Vec::new();
        let groups: Vec<(RegionSet, Option<Vec<u32>>)> = match plan.all {
            Some(set) => vec![(set, None)],
            None => plan.groups.into_iter().map(|(s, l)| (s, Some(l))).collect(),
        };
        for (set, selection) in groups {
            let region = self
                .resolve(view, set)
                .ok_or_else(|| SubmitError::NoRoute(tenant.clone()))?;
            match shares.iter_mut().find(|(r, _)| r == region) {
                // Two sets resolving to one region: merge, keeping indices ascending.
                Some((_, Some(existing))) => {
                    if let Some(more) = selection {
                        existing.extend(more);
                        existing.sort_unstable();
                    }
                }
                Some((_, None)) => {}
                None => shares.push((region.clone(), selection)),
            }
        }
        // Checked everywhere first; `commit` then enqueues everywhere so regions work in
        // parallel, and waits for every ack.
        let mut checked = Vec::new();
        for (region, selection) in shares {
            let tags = gateway_tags(
                &self.tenant_label,
                &self.region_label,
                tenant,
                &region,
                view.policy(),
            );
            let sinks = self
                .routes
                .get(&region)
                .ok_or_else(|| SubmitError::NoRoute(tenant.clone()))?;
            let mut share = TaggedBatch {
                tenant: tenant.clone(),
                region: region.clone(),
                batch: batch.clone(),
                selection,
                edits: edits.clone(),
                extra: ExtraLabels::new(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                tags: tags.into(),
                hashes: Vec::new(),
                raw: None,
            };
            if sinks.iter().any(SinkHandle::needs_hashes) {
                // Hashed here, on the connection's task, so that sink workers only frame.
                share.compute_hashes();
            }
            let limit = self.series_limit(&region);
            let unstorable = |error| SubmitError::Unstorable {
                region: region.clone(),
                error,
            };
            match &self.durability {
                Durability::Wal(_) => {
                    let payload = record::encode_checked(&share, crate::share::now_ms(), limit)
                        .map_err(unstorable)?;
                    checked.push((region, sinks, Work::Append(payload)));
                }
                Durability::Upstream | Durability::None => {
                    record::check(&share, limit).map_err(unstorable)?;
                    checked.push((region, sinks, Work::Enqueue(Arc::new(share))));
                }
            }
        }
        Ok(Prepared {
            tenant: tenant.clone(),
            checked,
        })
    }

    /// Hands a prepared submission on and waits until it is durable (per
    /// `durability.mode`).
    pub async fn commit(&self, prepared: Prepared<'_>) -> Result<(), SubmitError> {
        let Prepared { tenant, checked } = prepared;
        let tenant = &tenant;
        let mut acks = Vec::new();
        let mut appends = Vec::new();
        // Every share passed its checks before any is handed on: a refused request leaves
        // nothing behind in any region.
        for (region, sinks, work) in checked {
            match (work, &self.durability) {
                (Work::Append(payload), Durability::Wal(logs)) => {
                    let log = logs
                        .get(&region)
                        .ok_or_else(|| SubmitError::NoRoute(tenant.clone()))?;
                    let pending = log.send(vec![payload]).map_err(|error| SubmitError::Wal {
                        region: region.clone(),
                        error,
                    })?;
                    appends.push((region, pending));
                }
                (Work::Enqueue(share), _) => {
                    for sink in sinks {
                        acks.push((sink, sink.enqueue(share.clone())?));
                    }
                }
                (Work::Append(_), _) => return Err(SubmitError::NoRoute(tenant.clone())),
            }
        }
        // Every region's share is kept, or the client is told to retry (a share kept in one
        // region while another refused is kept twice after the retry: at-least-once).
        for (region, pending) in appends {
            WalHandle::wait(pending)
                .await
                .map_err(|error| SubmitError::Wal { region, error })?;
        }
        if matches!(self.durability, Durability::None) {
            // Acknowledged once queued; the sinks report their own failures.
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::testing::batch;

    /// One region, `eu`, and one tenant, `acme`, at home there.
    fn acme_in_eu() -> residency_rules::CompiledPolicy {
        residency_rules::load(
            "regions: [{ id: eu, jurisdiction: EU }]\ntenants: [{ id: acme, home: eu }]\n",
        )
        .unwrap()
    }

    /// A prepared submission hands nothing on until it is committed, and a refusal comes
    /// from `prepare`: a caller with several batches (OTLP tenants) can check them all first.
    #[tokio::test]
    async fn prepare_refuses_without_side_effects_and_commit_hands_on() {
        let policy = acme_in_eu();
        let eu = RegionId::parse("eu").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let pipeline = Pipeline::new(
            [SinkHandle::new(
                "null/eu".into(),
                eu.clone(),
                vec![tx],
                false,
            )],
            Durability::None,
            "tenant",
            "region",
        )
        .with_series_limits([(eu.clone(), 200)]);
        let tenant = TenantId::parse("acme").unwrap();
        let view = policy.tenant(&tenant).unwrap();
        let small = || batch(&[("__name__", "up")]);
        let long = "v".repeat(300);
        let big = batch(&[("__name__", "up"), ("big", &long)]);

        let good = pipeline
            .prepare(&view, &tenant, small(), Plan::all(view.default_regions()))
            .unwrap();
        let refused = pipeline.prepare(&view, &tenant, big, Plan::all(view.default_regions()));
        assert!(
            matches!(refused, Err(SubmitError::Unstorable { .. })),
            "a series over the region's limit is refused by prepare"
        );
        drop(good);
        assert!(
            rx.try_recv().is_err(),
            "a dropped preparation handed nothing on"
        );

        let good = pipeline
            .prepare(&view, &tenant, small(), Plan::all(view.default_regions()))
            .unwrap();
        pipeline.commit(good).await.unwrap();
        assert!(rx.try_recv().is_ok(), "commit hands the share to the sink");
    }

    /// A region's log that cannot write (a full disk) makes the pipeline unready, naming the
    /// region and the error (what `/-/ready` answers with 503), and an append that succeeds
    /// makes it ready again.
    #[tokio::test]
    async fn a_log_that_cannot_write_makes_the_pipeline_unready_naming_the_region() {
        let policy = acme_in_eu();
        let eu = RegionId::parse("eu").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let limits = crate::wal::WalLimits {
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
            max_bytes_per_owner: u64::MAX,
            owner_of: |_| None,
        };
        let (mut wal, _) = crate::wal::Wal::open(dir.path(), limits).unwrap();
        // The group's write and the request's own retry both hit ENOSPC.
        const ENOSPC: i32 = 28;
        wal.fail_next_writes(&[ENOSPC, ENOSPC]);
        let (wtx, wrx) = crate::wal::writer::queue(8);
        let (handle, _writer) = crate::wal::writer::start("eu", wal, wtx, wrx).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let pipeline = Pipeline::new(
            [SinkHandle::new(
                "null/eu".into(),
                eu.clone(),
                vec![tx],
                false,
            )],
            Durability::Wal(Arc::new([(eu.clone(), handle)].into_iter().collect())),
            "tenant",
            "region",
        );
        let tenant = TenantId::parse("acme").unwrap();
        let view = policy.tenant(&tenant).unwrap();
        assert_eq!(pipeline.unready_reason(), None);
        let submit = || async {
            let p = pipeline
                .prepare(
                    &view,
                    &tenant,
                    batch(&[("__name__", "up")]),
                    Plan::all(view.default_regions()),
                )
                .unwrap();
            pipeline.commit(p).await
        };
        assert!(submit().await.is_err(), "the write failed");
        let why = pipeline
            .unready_reason()
            .expect("unready while the disk fails");
        assert!(why.contains("region eu"), "{why}");
        assert!(why.contains("No space left on device"), "{why}");
        submit().await.expect("the disk has room again");
        assert_eq!(pipeline.unready_reason(), None);
    }

    /// Region choice follows the fleet's view of upstream health inside the tenant's
    /// allowed regions, in their order, and never leaves them: whatever is down, the answer
    /// is an allowed region with sinks.
    #[test]
    fn region_choice_skips_a_down_region_but_never_leaves_the_allowed_ones() {
        let policy = residency_rules::load(
            r#"
regions: [{ id: eu-west, jurisdiction: EU }, { id: eu-central, jurisdiction: EU }, { id: us-east, jurisdiction: US }]
tenants: [{ id: acme, home: eu-west, allowed: [eu-west, eu-central] }]
"#,
        )
        .unwrap();
        let region = |s: &str| RegionId::parse(s).unwrap();
        let handle = |r: &str| {
            let (tx, _rx) = tokio::sync::mpsc::channel(1);
            SinkHandle::new(format!("null/{r}"), region(r), vec![tx], false)
        };
        let routes: Vec<(RegionId, Arc<RegionRoute>)> = ["eu-west", "eu-central", "us-east"]
            .iter()
            .map(|r| {
                (
                    region(r),
                    RegionRoute::fixed(region(r), &format!("{r}-kafka")),
                )
            })
            .collect();
        let pipeline = Pipeline::new(
            ["eu-west", "eu-central", "us-east"].map(handle),
            Durability::None,
            "tenant",
            "region",
        )
        .with_region_health(routes.clone());
        let tenant = TenantId::parse("acme").unwrap();
        let view = policy.tenant(&tenant).unwrap();
        let all = view.allowed();
        let health = |r: usize| &routes[r].1;
        let pick = || pipeline.resolve(&view, all).map(|r| r.as_str().to_string());

        assert_eq!(pick().as_deref(), Some("eu-west"));
        health(0).set_usable_for_test(0, false);
        assert_eq!(pick().as_deref(), Some("eu-central"));
        // Both allowed regions down, us-east healthy: still an allowed region (the first),
        // where the log holds the data.
        health(1).set_usable_for_test(0, false);
        assert_eq!(pick().as_deref(), Some("eu-west"));
        health(0).set_usable_for_test(0, true);
        assert_eq!(pick().as_deref(), Some("eu-west"));
    }
}

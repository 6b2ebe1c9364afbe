//! The pipeline: from a decoded batch and its residency decisions to the sinks of the regions
//! those decisions allow, and back with an acknowledgement once each sink has made its part
//! durable.
//!
//! It owns the region -> sinks routing table. A caller cannot name a region: it hands over a
//! [`Plan`] of residency [`RegionSet`]s, and the pipeline resolves each set through
//! [`TenantView::route`] (which only yields the tenant's allowed regions) to the first region
//! that has sinks. A route outside a tenant's allowed regions has no way to be expressed here.
//! It never touches bytes on the wire (that is `listen` and `protocols`) nor storage (`sinks`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use protocols::remote_write::v1::{encode_metadata, encode_series_with_labels, ExtraLabels};
use protocols::{Batch, SeriesRef};
use residency_rules::{EditOp, LabelEdit, RegionId, RegionSet, TenantId, TenantView};

use crate::cluster::RegionRoute;
use crate::sinks::{SinkError, SinkHandle};
use crate::wal::writer::{AppendError, WalHandle};

#[cfg(test)]
mod ingest_props;
pub mod record;

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

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A label edit with its replacement value already computed (hashes need the policy key,
/// which sinks do not hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEdit {
    /// Index of the label in the series' (sorted) label list.
    pub index: u16,
    /// `None`: drop the label; `Some(v)`: replace its value with `v`.
    pub replacement: Option<String>,
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
            let resolved = edits
                .iter()
                .map(|e| ResolvedEdit {
                    index: e.index,
                    replacement: match e.op {
                        EditOp::Drop => None,
                        EditOp::Hash => labels
                            .labels()
                            .iter()
                            .nth(e.index as usize)
                            .map(|(_, v)| view.policy().hash_value(v)),
                    },
                })
                .collect();
            self.edits.insert(series, resolved);
        }
    }

    /// Whether no series is routed anywhere (all denied).
    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.groups.is_empty()
    }
}

/// One region's share of a request, with the identity and tags the gateway attached.
#[derive(Debug)]
pub struct TaggedBatch {
    /// Whose data this is.
    pub tenant: TenantId,
    /// The region it was routed to: always one of the tenant's allowed regions.
    pub region: RegionId,
    /// The decoded request (shared by every region's share).
    pub batch: Arc<Batch>,
    /// Indices of the series routed here, ascending; `None` for all of them.
    pub selection: Option<Vec<u32>>,
    /// Label edits by series index.
    pub edits: Arc<HashMap<u32, Box<[ResolvedEdit]>>>,
    /// Labels the gateway adds: tenant, region, then the region's policy tags.
    pub tags: Arc<[(String, String)]>,
    /// The tags encoded once, for splicing into canonical series.
    pub extra: ExtraLabels,
    /// Identity hash of each series of the share, by position (see [`series_hash`]); empty
    /// when no sink of the region partitions.
    pub hashes: Vec<u64>,
    /// A share read back from the write-ahead log for a sink that forwards remote-write 1.0:
    /// its series as the log's own bytes, not decoded (`batch` is then empty).
    pub raw: Option<record::RawSeries>,
}

impl TaggedBatch {
    /// Number of series in this share.
    pub fn len(&self) -> usize {
        if let Some(raw) = &self.raw {
            return raw.series.len();
        }
        self.selection
            .as_ref()
            .map_or(self.batch.series_count(), Vec::len)
    }

    /// Whether the share carries metric metadata.
    pub fn has_metadata(&self) -> bool {
        match &self.raw {
            Some(raw) => !raw.metadata.is_empty(),
            None => self.batch.metadata_count() > 0,
        }
    }

    /// Appends the share's metadata as remote-write 1.0 `metadata` fields.
    pub fn put_v1_metadata(&self, buf: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => {
                for r in &raw.metadata {
                    buf.extend_from_slice(&raw.body[r.clone()]);
                }
            }
            None => encode_metadata(&self.batch, buf),
        }
    }

    /// Appends the series at `pos` in the share as a remote-write 1.0 `timeseries` field
    /// with its stored labels (copied as is from a raw share).
    pub fn put_v1_at(&self, pos: usize, buf: &mut Vec<u8>) {
        if let Some(raw) = &self.raw {
            if let Some(r) = raw.series.get(pos) {
                buf.extend_from_slice(&raw.body[r.clone()]);
            }
            return;
        }
        let index = self.series_index(pos);
        if let Some(series) = self.batch.series_at(index as usize) {
            self.put_v1_series(index, &series, buf);
        }
    }

    /// Whether the share has no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch index of the series at `pos` in the share.
    pub fn series_index(&self, pos: usize) -> u32 {
        self.selection.as_ref().map_or(pos as u32, |s| s[pos])
    }

    /// The residency edits of the series at batch index `index`.
    pub fn edits_of(&self, index: u32) -> &[ResolvedEdit] {
        self.edits.get(&index).map_or(&[][..], |e| &e[..])
    }

    /// The identity hash of the series at `pos` in the share (see [`series_hash`]).
    pub fn hash_at(&self, pos: usize, scratch: &mut Vec<u8>) -> u64 {
        let i = self.series_index(pos);
        self.batch
            .series_at(i as usize)
            .map_or(0, |s| series_hash(&s, self.edits_of(i), scratch))
    }

    /// Fills [`TaggedBatch::hashes`] for every series of the share.
    pub fn compute_hashes(&mut self) {
        let mut scratch = Vec::new();
        self.hashes = (0..self.len())
            .map(|pos| self.hash_at(pos, &mut scratch))
            .collect();
    }

    /// Appends the series at batch index `index` as a remote-write 1.0 `timeseries` field
    /// with its stored labels. The common case copies the client's bytes with the tags
    /// spliced in; edited or non-canonical series are encoded afresh.
    pub fn put_v1_series(&self, index: u32, series: &SeriesRef<'_>, buf: &mut Vec<u8>) {
        let edits = self.edits_of(index);
        if edits.is_empty() {
            if self.extra.put_spliced(series, buf) {
                return;
            }
            // Not canonical (e.g. decoded from 2.0): encode the client's sorted labels merged
            // with the sorted tags as they stream, without building a label list.
            if self.tags.windows(2).all(|w| w[0].0 < w[1].0) {
                let mark = buf.len();
                let clash = std::cell::Cell::new(false);
                let merged = MergeSorted {
                    client: series.labels().iter().peekable(),
                    tags: self.tags.iter().peekable(),
                    clash: &clash,
                };
                encode_series_with_labels(series, merged, buf);
                if !clash.get() {
                    return;
                }
                // A client label named like a tag: renamed below, the rare path.
                buf.truncate(mark);
            }
        }
        let labels = output_labels(series, edits, &self.tags);
        let labels = labels.iter().map(|(k, v)| (k.as_ref(), *v));
        encode_series_with_labels(series, labels, buf);
    }

    /// Adds the series at `pos` in the share to a remote-write 2.0 message with its stored
    /// labels (a decoded share only: 2.0 is always encoded afresh).
    pub fn put_v2_at(&self, pos: usize, writer: &mut protocols::remote_write::v2::V2Writer) {
        let index = self.series_index(pos);
        if let Some(series) = self.batch.series_at(index as usize) {
            let labels = output_labels(&series, self.edits_of(index), &self.tags);
            writer.add_series(
                &self.batch,
                &series,
                labels.iter().map(|(k, v)| (k.as_ref(), *v)),
            );
        }
    }

    /// The series of this share with their stored labels (see [`output_labels`]).
    pub fn series(&self) -> impl Iterator<Item = (SeriesRef<'_>, Vec<(Cow<'_, str>, &str)>)> {
        (0..self.len()).filter_map(move |pos| {
            let i = self.series_index(pos);
            let series = self.batch.series_at(i as usize)?;
            let labels = output_labels(&series, self.edits_of(i), &self.tags);
            Some((series, labels))
        })
    }
}

/// Two label lists sorted by name, merged into one sorted stream; a name in both sets
/// `clash` (the caller then encodes the series the long way, renaming the client's label).
struct MergeSorted<'a, C: Iterator<Item = (&'a str, &'a str)>> {
    client: std::iter::Peekable<C>,
    tags: std::iter::Peekable<std::slice::Iter<'a, (String, String)>>,
    clash: &'a std::cell::Cell<bool>,
}

impl<'a, C: Iterator<Item = (&'a str, &'a str)>> Iterator for MergeSorted<'a, C> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let take_tag = match (self.client.peek(), self.tags.peek()) {
            (Some((c, _)), Some((t, _))) => match (*c).cmp(t.as_str()) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => {
                    self.clash.set(true);
                    false
                }
            },
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => return None,
        };
        if take_tag {
            self.tags.next().map(|(k, v)| (k.as_str(), v.as_str()))
        } else {
            self.client.next()
        }
    }
}

/// A series' identity hash: over its labels after residency edits, before the gateway's tags
/// (constant within a share) are added. The Kafka partition and the sink worker of a series
/// derive from it, so it must not depend on how the client encoded the series.
pub fn series_hash(series: &SeriesRef<'_>, edits: &[ResolvedEdit], scratch: &mut Vec<u8>) -> u64 {
    if edits.is_empty() {
        series.labels_hash(scratch)
    } else {
        protocols::label_set_hash(edited_labels(series, edits), scratch)
    }
}

/// The client's labels after residency edits (dropped or replaced values), in name order.
fn edited_labels<'a>(
    series: &SeriesRef<'a>,
    edits: &'a [ResolvedEdit],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    series
        .labels()
        .iter()
        .enumerate()
        .filter_map(
            move |(i, (name, value))| match edits.iter().find(|e| e.index as usize == i) {
                Some(ResolvedEdit {
                    replacement: None, ..
                }) => None,
                Some(ResolvedEdit {
                    replacement: Some(h),
                    ..
                }) => Some((name, h.as_str())),
                None => Some((name, value)),
            },
        )
}

/// The labels the gateway adds to a series stored in `region`: tenant, region and the
/// region's policy tags (a policy tag cannot override the first two), sorted by name.
pub fn gateway_tags(
    tenant_label: &str,
    region_label: &str,
    tenant: &TenantId,
    region: &RegionId,
    policy: &residency_rules::CompiledPolicy,
) -> Vec<(String, String)> {
    let mut tags = vec![
        (tenant_label.to_string(), tenant.to_string()),
        (region_label.to_string(), region.to_string()),
    ];
    for (k, v) in policy.region_tags(region).iter() {
        if k != tenant_label && k != region_label {
            tags.push((k.clone(), v.clone()));
        }
    }
    // Sorted by name, so encoders can merge them into a series' sorted labels as they go.
    tags.sort();
    tags
}

/// A series' labels as stored: the client's labels (including `__name__`) after residency
/// edits, a client label named like a gateway tag renamed `exported_<name>` (repeatedly, until
/// free) so no client can spoof its tenant or region, then the tags; sorted by name.
pub fn output_labels<'a>(
    series: &SeriesRef<'a>,
    edits: &'a [ResolvedEdit],
    tags: &'a [(String, String)],
) -> Vec<(Cow<'a, str>, &'a str)> {
    let labels = series.labels();
    let mut out: Vec<(Cow<'a, str>, &'a str)> = Vec::with_capacity(labels.len() + tags.len());
    for (name, value) in edited_labels(series, edits) {
        if tags.iter().any(|(t, _)| t == name) {
            let mut renamed = format!("exported_{name}");
            while labels.get(&renamed).is_some() || tags.iter().any(|(t, _)| *t == renamed) {
                renamed.insert_str(0, "exported_");
            }
            out.push((Cow::Owned(renamed), value));
        } else {
            out.push((Cow::Borrowed(name), value));
        }
    }
    for (name, value) in tags {
        out.push((Cow::Borrowed(name.as_str()), value.as_str()));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
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

/// Bytes a Kafka message carries besides one series' `WriteRequest` field: the record's
/// headers (`tenant`, `region`, `content-type`), key, and the batch and record framing.
/// Generous, since a too small allowance only refuses a series a little early.
const KAFKA_MESSAGE_ALLOWANCE: usize = 4096;

/// The largest one series may encode to for the sinks of `region`: a Kafka sink takes
/// messages up to its producer's `message.max.bytes` (as `sinks::kafka` sets it, or as
/// `properties:` overrides it), and one series is never split over two messages.
pub fn max_series_bytes(region: &crate::config::Region) -> usize {
    let mut limit = crate::wal::MAX_RECORD_BYTES;
    if let Some(k) = &region.kafka {
        // The sink's own default (see `sinks::kafka`), unless `properties:` sets it.
        let max = k
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or_else(|| k.message_bytes.saturating_mul(2).max(1 << 20));
        limit = limit.min(max.saturating_sub(KAFKA_MESSAGE_ALLOWANCE));
    }
    limit
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
        let mut first = None;
        for r in view.route(set).filter(|r| self.serves(r)) {
            if self.health.get(r).is_none_or(|h| h.any_usable()) {
                return Some(r);
            }
            first.get_or_insert(r);
        }
        first
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
                    let payload =
                        record::encode_checked(&share, now_ms(), limit).map_err(unstorable)?;
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
    use bytes::Bytes;
    use protocols::remote_write::v1::reference as pb;
    use protocols::DecodeLimits;

    fn batch(labels: &[(&str, &str)]) -> Batch {
        use prost::Message;
        let req = pb::WriteRequest {
            timeseries: vec![pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: vec![pb::Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        protocols::remote_write::v1::decode_message(
            Bytes::from(req.encode_to_vec()),
            &DecodeLimits::default(),
        )
        .unwrap()
    }

    /// A prepared submission hands nothing on until it is committed, and a refusal comes
    /// from `prepare`: a caller with several batches (OTLP tenants) can check them all first.
    #[tokio::test]
    async fn prepare_refuses_without_side_effects_and_commit_hands_on() {
        let policy = residency_rules::load(
            "regions: [{ id: eu, jurisdiction: EU }]\ntenants: [{ id: acme, home: eu }]\n",
        )
        .unwrap();
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

    fn tags() -> Vec<(String, String)> {
        vec![
            ("tenant".into(), "acme".into()),
            ("region".into(), "eu-west".into()),
        ]
    }

    #[test]
    fn spoofed_tags_are_kept_as_exported() {
        let b = batch(&[
            ("__name__", "up"),
            ("exported_region", "x"),
            ("region", "us-east"),
            ("tenant", "evil"),
        ]);
        let s = b.series().next().unwrap();
        let tags = tags();
        let out = output_labels(&s, &[], &tags);
        let out: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            out,
            [
                ("__name__", "up"),
                ("exported_exported_region", "us-east"),
                ("exported_region", "x"),
                ("exported_tenant", "evil"),
                ("region", "eu-west"),
                ("tenant", "acme"),
            ]
        );
    }

    #[test]
    fn a_non_canonical_series_merges_tags_like_the_long_way() {
        // Unsorted input is not spliceable: the merge path encodes it.
        for labels in [
            &[("zone", "a"), ("__name__", "up"), ("job", "j")][..],
            &[("zone", "a"), ("__name__", "up"), ("region", "spoof")][..],
        ] {
            let b = Arc::new(batch(labels));
            let mut tags = tags();
            tags.sort();
            let share = TaggedBatch {
                tenant: TenantId::parse("acme").unwrap(),
                region: RegionId::parse("eu-west").unwrap(),
                batch: b.clone(),
                selection: None,
                edits: Arc::new(HashMap::new()),
                extra: ExtraLabels::new(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                tags: tags.clone().into(),
                hashes: Vec::new(),
                raw: None,
            };
            let s = b.series().next().unwrap();
            assert!(s.spliceable_bytes().is_none());
            let mut fast = Vec::new();
            share.put_v1_series(0, &s, &mut fast);
            let mut long = Vec::new();
            let out = output_labels(&s, &[], &tags);
            encode_series_with_labels(&s, out.iter().map(|(k, v)| (k.as_ref(), *v)), &mut long);
            assert_eq!(fast, long, "{labels:?}");
        }
    }

    #[test]
    fn edits_drop_and_replace() {
        let b = batch(&[("__name__", "up"), ("email", "a@b"), ("user", "42")]);
        let s = b.series().next().unwrap();
        let edits = [
            ResolvedEdit {
                index: 1,
                replacement: None,
            },
            ResolvedEdit {
                index: 2,
                replacement: Some("h".into()),
            },
        ];
        let tags = tags();
        let out = output_labels(&s, &edits, &tags);
        let out: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            out,
            [
                ("__name__", "up"),
                ("region", "eu-west"),
                ("tenant", "acme"),
                ("user", "h"),
            ]
        );
    }
}

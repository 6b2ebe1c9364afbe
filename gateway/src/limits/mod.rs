//! Per-tenant limits: an ingestion rate and a request rate (token buckets), and a cap on
//! active series, with defaults for every tenant and overrides from a reloaded file.
//!
//! Rates are fleet-wide: each node enforces `limit / live members` (members from gossip),
//! the burst undivided, so a load balancer spreading a tenant over the fleet sees the
//! configured rate in total. The active-series cap is per node and not divided: a load
//! balancer spreads every series of a tenant over every node, so each node sees them all.
//!
//! Costs on the hot path: per request, one read lock of one of 16 shards of the tenant map
//! (uncontended across tenants), and a compare-and-swap per rate; per series, a lookup in the
//! tenant's lock-free table ([`series`]). A tenant without a series limit is not tracked.
//!
//! May call: `yaml`, `telemetry`; never ingest, a listener or the cluster (the live-member
//! count is handed in as a number).

mod config;
pub mod rate;
pub mod series;
mod view;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use protocols::Batch;
use residency_rules::TenantId;
use tokio_util::sync::CancellationToken;

pub use config::{
    parse_overrides, LimitsSettings, Overrides, RateLimitedStatus, TenantLimits, TenantLimitsFile,
};
pub use view::{render_text, LimitsView, TenantLimitsView};

use rate::{Bucket, Rate};
use series::{Seen, SeriesTable};

/// Shards of the tenant map: requests of different tenants rarely meet on one lock.
const SHARDS: usize = 16;

/// Which rate a request went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    /// `ingestion_rate`, samples per second.
    Ingestion,
    /// `request_rate`, requests per second.
    Requests,
}

impl RateKind {
    /// The `reason` label of the discarded-samples counter.
    pub fn reason(self) -> &'static str {
        match self {
            RateKind::Ingestion => "rate_limited",
            RateKind::Requests => "request_rate_limited",
        }
    }

    fn field(self) -> &'static str {
        match self {
            RateKind::Ingestion => "ingestion_rate",
            RateKind::Requests => "request_rate",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            RateKind::Ingestion => "samples/s",
            RateKind::Requests => "requests/s",
        }
    }
}

/// A request refused by a tenant limit, before any of it was kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    /// Over a rate: transient, retry after `retry_after`.
    #[error(
        "tenant {tenant:?} is over its {} of {global} {} ({share:.1} {} on this node, \
         {members} gateway nodes); retry in {}s",
        kind.field(), kind.unit(), kind.unit(), retry_after_secs(*retry_after)
    )]
    RateLimited {
        /// The tenant.
        tenant: String,
        /// Which rate.
        kind: RateKind,
        /// The fleet-wide limit.
        global: f64,
        /// This node's share of it.
        share: f64,
        /// The live members the share was computed with.
        members: usize,
        /// How long until the bucket holds what the request needs.
        retry_after: Duration,
        /// 429 or 503, as the tenant's limits say.
        status: RateLimitedStatus,
    },
    /// The node keeps limit state for `max_tenants` tenants at most.
    #[error(
        "this gateway node tracks limits for {0} tenants at most (limits.max_tenants); retry later"
    )]
    TooManyTenants(usize),
}

impl LimitError {
    /// Whole seconds to wait before a retry (at least 1, as `Retry-After` counts seconds).
    pub fn retry_after_secs(&self) -> u32 {
        match self {
            LimitError::RateLimited { retry_after, .. } => retry_after_secs(*retry_after),
            LimitError::TooManyTenants(_) => 1,
        }
    }

    /// The `reason` label of the discarded-samples counter.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitError::RateLimited { kind, .. } => kind.reason(),
            LimitError::TooManyTenants(_) => "too_many_tenants",
        }
    }

    /// Whether it is answered 503 rather than 429.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LimitError::RateLimited { status, .. } => *status == RateLimitedStatus::Unavailable,
            LimitError::TooManyTenants(_) => true,
        }
    }
}

fn retry_after_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// New series a request brought past its tenant's active-series limit: refused, while the
/// rest of the request was kept. Persistent: retrying does not help until series expire or
/// the limit is raised, so it is answered 400 (OTLP: `partial_success`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesLimited {
    /// The tenant.
    pub tenant: String,
    /// `max_active_series`.
    pub limit: u64,
    /// Series refused.
    pub series: u64,
    /// Float samples, histogram samples and exemplars of the refused series.
    pub samples: u64,
    /// Float and histogram samples of the refused series (OTLP's data points).
    pub points: u64,
}

impl SeriesLimited {
    /// Adds another group's refusal (an OTLP request can carry several tenants).
    pub fn merge(&mut self, o: &SeriesLimited) {
        self.series += o.series;
        self.samples += o.samples;
        self.points += o.points;
    }
}

impl fmt::Display for SeriesLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {:?} is at its limit of {} active series (max_active_series): {} new \
             series refused ({} samples); series seen before were written",
            self.tenant, self.limit, self.series, self.samples
        )
    }
}

/// What a request may keep: its charge against the rates (given back unless
/// [`Admitted::keep`] is called, so data that is refused later or never made durable does not
/// count), and the series refused for the series limit.
pub struct Admitted {
    charge: Option<Charge>,
    /// Indices of the refused series in the batch, ascending.
    pub refused: Vec<u32>,
    /// What was refused, when anything was.
    pub series_limited: Option<SeriesLimited>,
}

struct Charge {
    state: Arc<TenantState>,
    samples: u64,
    /// The rate charged and the bucket state the take left, when the tenant has a rate.
    rate: Option<(Rate, u64)>,
    epoch: Instant,
}

impl Charge {
    /// Gives `n` of the charged samples back.
    fn refund(&mut self, n: u64) {
        let n = n.min(self.samples);
        if let Some((rate, end)) = self.rate {
            let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.state.samples.refund(n, rate, end, now);
        }
        self.samples -= n;
    }
}

impl Admitted {
    /// The request's data was kept: its charge stays, and it counts as usage.
    pub fn keep(mut self) {
        if let Some(c) = self.charge.take() {
            c.state
                .accepted_samples
                .fetch_add(c.samples, Ordering::Relaxed);
            c.state.accepted_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(mut c) = self.charge.take() {
            let n = c.samples;
            c.refund(n);
        }
    }
}

/// Names of the `limit` label of the per-tenant limit gauges.
const LIMIT_NAMES: [&str; 5] = [
    "ingestion_rate",
    "ingestion_burst",
    "request_rate",
    "request_burst",
    "max_active_series",
];

/// A tenant's gauges, registered once with its state: the upkeep sets them every second,
/// and a registry lookup per gauge per tenant per second would cost more than the setting.
struct TenantGauges {
    ingestion_rate: metrics::Gauge,
    request_rate: metrics::Gauge,
    active_series: metrics::Gauge,
    /// `traceo_tenant_limit` and `traceo_tenant_limit_node_share`, in [`LIMIT_NAMES`] order.
    limits: [(metrics::Gauge, metrics::Gauge); 5],
}

impl TenantGauges {
    fn new(label: &str) -> TenantGauges {
        let t = label.to_string();
        TenantGauges {
            ingestion_rate: metrics::gauge!("traceo_tenant_ingestion_rate", "tenant" => t.clone()),
            request_rate: metrics::gauge!("traceo_tenant_request_rate", "tenant" => t.clone()),
            active_series: metrics::gauge!("traceo_tenant_active_series", "tenant" => t.clone()),
            limits: LIMIT_NAMES.map(|name| {
                (
                    metrics::gauge!("traceo_tenant_limit", "tenant" => t.clone(), "limit" => name),
                    metrics::gauge!("traceo_tenant_limit_node_share", "tenant" => t.clone(), "limit" => name),
                )
            }),
        }
    }
}

/// One tenant's limit state.
struct TenantState {
    label: String,
    gauges: TenantGauges,
    samples: Bucket,
    requests: Bucket,
    series: ArcSwapOption<SeriesTable>,
    /// Held while the series table grows (rare: a doubling), so it grows once at a time.
    grow_lock: std::sync::Mutex<()>,
    /// Seconds since the epoch the tenant last sent.
    last_seen: AtomicU32,
    /// Seconds since the epoch the series table was last rebuilt.
    last_sweep: AtomicU32,
    accepted_samples: AtomicU64,
    accepted_requests: AtomicU64,
    /// Usage over the last upkeep interval, f64 bits.
    sample_rate: AtomicU64,
    request_rate: AtomicU64,
}

/// The limits of every tenant this node has seen, and their state.
pub struct Limits {
    defaults: Arc<TenantLimits>,
    overrides: ArcSwap<Overrides>,
    members: Arc<AtomicUsize>,
    max_tenants: usize,
    epoch: Instant,
    shards: [RwLock<HashMap<TenantId, Arc<TenantState>>>; SHARDS],
    tenants: AtomicUsize,
}

impl Limits {
    /// Limits by `settings`; `members` is the live-member count gossip keeps (0 or 1: alone).
    pub fn new(settings: &LimitsSettings, members: Arc<AtomicUsize>) -> Limits {
        Limits {
            defaults: settings.defaults.clone(),
            overrides: ArcSwap::new(Arc::new(settings.overrides.clone())),
            members,
            max_tenants: settings.max_tenants,
            epoch: Instant::now(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            tenants: AtomicUsize::new(0),
        }
    }

    /// Puts new overrides in force for requests from now on.
    pub fn replace_overrides(&self, overrides: Overrides) {
        self.overrides.store(Arc::new(overrides));
    }

    /// The defaults every tenant gets unless overridden.
    pub fn defaults(&self) -> &TenantLimits {
        &self.defaults
    }

    /// `tenant`'s limits now (fleet-wide values).
    pub fn limits_of(&self, tenant: &TenantId) -> Arc<TenantLimits> {
        self.overrides
            .load()
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.defaults.clone())
    }

    /// The live members a share is computed with: at least 1.
    pub fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed).max(1)
    }

    fn now(&self) -> (u64, u32) {
        let e = self.epoch.elapsed();
        (
            u64::try_from(e.as_nanos()).unwrap_or(u64::MAX),
            u32::try_from(e.as_secs()).unwrap_or(u32::MAX),
        )
    }

    fn shard(&self, tenant: &TenantId) -> &RwLock<HashMap<TenantId, Arc<TenantState>>> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.as_str().hash(&mut h);
        &self.shards[(h.finish() % SHARDS as u64) as usize]
    }

    fn state(&self, tenant: &TenantId) -> Result<Arc<TenantState>, LimitError> {
        let shard = self.shard(tenant);
        if let Some(s) = shard.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return Ok(s.clone());
        }
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(tenant) {
            return Ok(s.clone());
        }
        let counted = self
            .tenants
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_tenants).then_some(n + 1)
            });
        if counted.is_err() {
            return Err(LimitError::TooManyTenants(self.max_tenants));
        }
        let (_, now) = self.now();
        let label = crate::telemetry::tenant_label(Some(tenant));
        let state = Arc::new(TenantState {
            gauges: TenantGauges::new(&label),
            label,
            samples: Bucket::default(),
            requests: Bucket::default(),
            series: ArcSwapOption::empty(),
            grow_lock: std::sync::Mutex::new(()),
            last_seen: AtomicU32::new(now),
            last_sweep: AtomicU32::new(now),
            accepted_samples: AtomicU64::new(0),
            accepted_requests: AtomicU64::new(0),
            sample_rate: AtomicU64::new(0),
            request_rate: AtomicU64::new(0),
        });
        map.insert(tenant.clone(), state.clone());
        Ok(state)
    }

    /// Checks one tenant's part of a request against its limits: the request rate, then
    /// the ingestion rate (for every sample, histogram sample and exemplar of `batch`), then
    /// each series against the active-series limit. A rate refusal refuses the whole part
    /// (nothing is tracked); series over the limit are refused one by one, the rest kept.
    /// A series is identified by its labels without `without` (the HA replica label, which
    /// is not stored), so both replicas of a pair count as one series. A tenant without any
    /// limit keeps no state at all.
    pub fn check(
        &self,
        tenant: &TenantId,
        batch: &Batch,
        without: Option<&str>,
    ) -> Result<Admitted, LimitError> {
        let samples =
            (batch.sample_count() + batch.histogram_count() + batch.exemplar_count()) as u64;
        let limits = self.limits_of(tenant);
        if limits.ingestion_rate == 0.0
            && limits.request_rate == 0.0
            && limits.max_active_series == 0
        {
            return Ok(Admitted {
                charge: None,
                refused: Vec::new(),
                series_limited: None,
            });
        }
        let state = match self.state(tenant) {
            Ok(s) => s,
            Err(e) => {
                discard(
                    &crate::telemetry::tenant_label(Some(tenant)),
                    e.reason(),
                    samples,
                );
                return Err(e);
            }
        };
        let (now_ns, now_s) = self.now();
        state.last_seen.store(now_s, Ordering::Relaxed);
        let members = self.members();
        let refuse = |kind: RateKind, global: f64, share: f64, retry_after: Duration| {
            discard(&state.label, kind.reason(), samples);
            LimitError::RateLimited {
                tenant: tenant.as_str().to_string(),
                kind,
                global,
                share,
                members,
                retry_after,
                status: limits.rate_limited_status,
            }
        };
        if let Some(r) = request_rate(&limits, members) {
            state.requests.take(1, r, now_ns).map_err(|wait| {
                refuse(RateKind::Requests, limits.request_rate, r.per_second, wait)
            })?;
        }
        let rate = match ingestion_rate(&limits, members) {
            Some(r) => {
                let end = state.samples.take(samples, r, now_ns).map_err(|wait| {
                    refuse(
                        RateKind::Ingestion,
                        limits.ingestion_rate,
                        r.per_second,
                        wait,
                    )
                })?;
                Some((r, end))
            }
            None => None,
        };
        let mut admitted = Admitted {
            charge: Some(Charge {
                state: state.clone(),
                samples,
                rate,
                epoch: self.epoch,
            }),
            refused: Vec::new(),
            series_limited: None,
        };
        if limits.max_active_series == 0 {
            return Ok(admitted);
        }
        let mut table = state.table(limits.max_active_series);
        let mut scratch = Vec::new();
        let mut refused = SeriesLimited {
            tenant: tenant.as_str().to_string(),
            limit: limits.max_active_series,
            series: 0,
            samples: 0,
            points: 0,
        };
        for (i, s) in batch.series().enumerate() {
            let hash = match without {
                Some(name) if s.labels().get(name).is_some() => protocols::label_set_hash(
                    s.labels().iter().filter(|(n, _)| *n != name),
                    &mut scratch,
                ),
                _ => s.labels_hash(&mut scratch),
            };
            let mut seen = table.observe(hash, now_s);
            // The table grows by doubling up to twice the limit, so memory follows the
            // series a tenant has, not its limit.
            while seen == Seen::Full {
                table = state.grow(&table);
                seen = table.observe(hash, now_s);
            }
            if seen == Seen::Refused {
                admitted.refused.push(i as u32);
                let points = (s.samples().len() + s.histograms().len()) as u64;
                refused.series += 1;
                refused.points += points;
                refused.samples += points + s.exemplars().len() as u64;
            }
        }
        if refused.series > 0 {
            discard(&state.label, "series_limit", refused.samples);
            if let Some(c) = admitted.charge.as_mut() {
                c.refund(refused.samples);
            }
            admitted.series_limited = Some(refused);
        }
        Ok(admitted)
    }

    /// Once a second until `stop`: usage rates, the per-tenant gauges, series expiry, and
    /// forgetting tenants idle for long.
    pub async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
            let elapsed = last.elapsed().as_secs_f64().max(1e-3);
            last = Instant::now();
            self.upkeep(elapsed);
        }
    }

    /// One round of [`Limits::run_upkeep`], `elapsed` seconds after the last.
    pub fn upkeep(&self, elapsed: f64) {
        let (_, now) = self.now();
        let members = self.members();
        metrics::gauge!("traceo_limits_members").set(members as f64);
        for shard in &self.shards {
            let tenants: Vec<(TenantId, Arc<TenantState>)> = shard
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(t, s)| (t.clone(), s.clone()))
                .collect();
            for (tenant, state) in tenants {
                let limits = self.limits_of(&tenant);
                state.upkeep(&limits, members, elapsed, now);
                let idle = now.saturating_sub(state.last_seen.load(Ordering::Relaxed));
                let forget_after = limits.active_series_window.as_secs().max(600);
                let empty = state.series.load().as_ref().is_none_or(|t| t.is_empty());
                if u64::from(idle) > forget_after && empty {
                    let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
                    if map.remove(&tenant).is_some() {
                        self.tenants.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
    }
}

/// `tenant`'s share of its request rate on this node, if limited.
fn request_rate(l: &TenantLimits, members: usize) -> Option<Rate> {
    node_share(l.request_rate, l.request_burst, members)
}

/// `tenant`'s share of its ingestion rate on this node, if limited.
fn ingestion_rate(l: &TenantLimits, members: usize) -> Option<Rate> {
    node_share(l.ingestion_rate, l.ingestion_burst, members)
}

/// A fleet-wide `rate` divided over `members`, with its per-node `burst` (0: one second of
/// the fleet-wide rate, at least one token); `None` when the rate is unlimited.
fn node_share(rate: f64, burst: u64, members: usize) -> Option<Rate> {
    (rate > 0.0).then(|| Rate {
        per_second: rate / members as f64,
        burst: if burst > 0 {
            burst as f64
        } else {
            rate.max(1.0)
        },
    })
}

fn discard(label: &str, reason: &'static str, samples: u64) {
    metrics::counter!("traceo_discarded_samples_total",
        "tenant" => label.to_string(), "reason" => reason)
    .increment(samples);
}

impl TenantState {
    /// The series table for `limit`: made on the tenant's first request with a limit; a
    /// changed limit takes effect at the next upkeep (a rebuild for the new size).
    fn table(&self, limit: u64) -> Arc<SeriesTable> {
        if let Some(t) = self.series.load_full() {
            return t;
        }
        let fresh = Arc::new(SeriesTable::new(limit));
        let prev = self
            .series
            .compare_and_swap(&None::<Arc<SeriesTable>>, Some(fresh.clone()));
        match &*prev {
            Some(winner) => winner.clone(),
            None => fresh,
        }
    }

    /// A table twice the size of `full` (which said [`Seen::Full`]), swapped in; or the one
    /// another request grew meanwhile.
    fn grow(&self, full: &Arc<SeriesTable>) -> Arc<SeriesTable> {
        let _one_at_a_time = self.grow_lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.series.load_full() {
            Some(current) if Arc::ptr_eq(&current, full) => {
                let next = Arc::new(current.grown());
                self.series.store(Some(next.clone()));
                next
            }
            Some(current) => current,
            None => full.clone(),
        }
    }

    fn upkeep(&self, limits: &TenantLimits, members: usize, elapsed: f64, now: u32) {
        let samples = self.accepted_samples.swap(0, Ordering::Relaxed) as f64 / elapsed;
        let requests = self.accepted_requests.swap(0, Ordering::Relaxed) as f64 / elapsed;
        self.sample_rate.store(samples.to_bits(), Ordering::Relaxed);
        self.request_rate
            .store(requests.to_bits(), Ordering::Relaxed);
        let g = &self.gauges;
        g.ingestion_rate.set(samples);
        g.request_rate.set(requests);
        let values = [
            (limits.ingestion_rate, true),
            (ingestion_rate(limits, 1).map_or(0.0, |r| r.burst), false),
            (limits.request_rate, true),
            (request_rate(limits, 1).map_or(0.0, |r| r.burst), false),
            (limits.max_active_series as f64, false),
        ];
        for ((global, divided), (limit, share)) in values.into_iter().zip(&g.limits) {
            limit.set(global);
            share.set(if divided {
                global / members as f64
            } else {
                global
            });
        }
        // Series expiry: a rebuild at a twentieth of the window (at least every second), or
        // at once when the limit changed.
        let Some(table) = self.series.load_full() else {
            g.active_series.set(0.0);
            return;
        };
        if limits.max_active_series == 0 {
            self.series.store(None);
            g.active_series.set(0.0);
            return;
        }
        let window = u32::try_from(limits.active_series_window.as_secs()).unwrap_or(u32::MAX);
        let every = (window / 20).max(1);
        let due = now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) >= every;
        let cutoff = now.saturating_sub(window);
        let resized = table.limit() != limits.max_active_series;
        if resized || (due && table.expired(cutoff) > 0) {
            let next = Arc::new(table.rebuilt(limits.max_active_series, cutoff));
            self.series.store(Some(next.clone()));
            self.last_sweep.store(now, Ordering::Relaxed);
            g.active_series.set(next.len() as f64);
        } else {
            if due {
                self.last_sweep.store(now, Ordering::Relaxed);
            }
            g.active_series.set(table.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests;

//! The running side of [`super`]: the control loop that takes probe results and gossip,
//! decides each upstream's health and each region's route, and publishes them.
//!
//! Sinks read their region's route from a [`RegionRoute`] (one atomic load per request);
//! the status page reads an `arc-swap`ped [`View`]. Only the control loop writes either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use residency_rules::RegionId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::ClusterSettings;
use super::gossip::{self, Gossip, Member, PeerView};
use super::probe::{ProbeLoop, ProbeResult, ProbeSetup, SinkUpstreams};
use super::{fleet_health, Health, PeerObservation, Probe, RouteTable, UpstreamHealth, UpstreamId};

/// How many failovers the status page keeps.
const FAILOVERS_KEPT: usize = 32;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One configured upstream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Upstream {
    /// Its name.
    pub id: String,
    /// Its region.
    pub region: String,
    /// `kafka` or `object_store`.
    pub kind: &'static str,
}

/// The upstream a region's sink should use now, written by the control loop and read by
/// the sink's workers on every request.
#[derive(Debug)]
pub struct RegionRoute {
    region: RegionId,
    upstreams: Vec<String>,
    current: AtomicUsize,
    usable: Vec<AtomicBool>,
    /// Unix ms of the last switch until its first delivery; 0 when none is pending.
    switched_ms: AtomicU64,
    traceo_failover_seconds: metrics::Histogram,
}

impl RegionRoute {
    fn new(region: RegionId, upstreams: Vec<String>) -> Self {
        let usable = upstreams.iter().map(|_| AtomicBool::new(true)).collect();
        let traceo_failover_seconds =
            metrics::histogram!("traceo_failover_seconds", "region" => region.as_str().to_string());
        Self {
            region,
            upstreams,
            current: AtomicUsize::new(0),
            usable,
            switched_ms: AtomicU64::new(0),
            traceo_failover_seconds,
        }
    }

    /// A route that never moves: one upstream.
    #[cfg(test)]
    pub fn fixed(region: RegionId, upstream: &str) -> Arc<Self> {
        Arc::new(Self::new(region, vec![upstream.to_string()]))
    }

    /// Index (in the configured order) of the upstream to use now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Whether upstream `i` is usable in the fleet's view.
    pub fn usable(&self, i: usize) -> bool {
        self.usable
            .get(i)
            .is_some_and(|u| u.load(Ordering::Relaxed))
    }

    /// Whether any upstream of the region is usable.
    pub fn any_usable(&self) -> bool {
        (0..self.usable.len()).any(|i| self.usable(i))
    }

    /// Sets upstream `i`'s usability, as the control loop does.
    #[cfg(test)]
    pub fn set_usable_for_test(&self, i: usize, usable: bool) {
        self.usable[i].store(usable, Ordering::Relaxed);
    }

    /// Name of upstream `i`.
    pub fn name(&self, i: usize) -> &str {
        self.upstreams.get(i).map_or("", String::as_str)
    }

    /// The region.
    pub fn region(&self) -> &str {
        self.region.as_str()
    }

    /// The upstreams in order.
    pub fn upstreams(&self) -> &[String] {
        &self.upstreams
    }

    /// Called on every confirmed delivery to upstream `i`: the first one after a switch to
    /// it ends the failover and records how long it took.
    pub fn delivered(&self, i: usize) {
        if self.switched_ms.load(Ordering::Relaxed) == 0 || self.current() != i {
            return;
        }
        let since = self.switched_ms.swap(0, Ordering::Relaxed);
        if since != 0 {
            let took = unix_ms().saturating_sub(since);
            self.traceo_failover_seconds.record(took as f64 / 1000.0);
            info!(region = %self.region, upstream = self.name(i), took_ms = took, "first delivery after the route switched");
        }
    }
}

/// One upstream as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamView {
    /// Name.
    pub id: String,
    /// Region.
    pub region: String,
    /// Kind.
    pub kind: &'static str,
    /// This node's probes.
    pub local: Health,
    /// What this node routes by (the quorum rule applied).
    pub fleet: Health,
    /// Fresh peer observations.
    pub peers: BTreeMap<String, Health>,
    /// Why the last probe failed, or a caveat on its success.
    pub last_error: Option<String>,
    /// Unix ms the local state last changed.
    pub since_ms: u64,
}

/// A route change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failover {
    /// Unix ms.
    pub at_ms: u64,
    /// Region.
    pub region: String,
    /// Upstream before.
    pub from: String,
    /// Upstream after.
    pub to: String,
}

/// What `/api/v1/status` shows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct View {
    /// This node.
    pub node: String,
    /// Live members, this node first.
    pub members: Vec<Member>,
    /// Every upstream.
    pub upstreams: Vec<UpstreamView>,
    /// Region to the upstream its sink uses now.
    pub routes: BTreeMap<String, String>,
    /// Last route changes, newest last.
    pub failovers: VecDeque<Failover>,
}

/// The fleet's view of the upstreams, shared by the sinks, the status page and the loop.
pub struct Cluster {
    settings: ClusterSettings,
    upstreams: Vec<Upstream>,
    /// Each upstream's probe (by index in `upstreams`), until [`Cluster::start`] takes them.
    probes: Mutex<Vec<(usize, ProbeSetup)>>,
    routes: HashMap<RegionId, Arc<RegionRoute>>,
    table: RouteTable,
    view: ArcSwap<View>,
    /// Live members as gossip sees them (0 with gossip off: the node alone), for the
    /// fleet-wide tenant limits.
    members: Arc<AtomicUsize>,
    /// State other components keep in gossip, until [`Cluster::start`] takes it.
    states: Mutex<Vec<Arc<dyn GossipState>>>,
}

/// State another component keeps in gossip under its own key prefix (the HA elections): the
/// control loop publishes what it hands over and gives it what the live peers publish, every
/// gossip round. Nothing of it is on a request's path.
pub trait GossipState: Send + Sync {
    /// The key prefix, e.g. `ha.`; keys under it belong to this state alone.
    fn prefix(&self) -> &'static str;
    /// Keys to set, and keys to delete, on this node now (what changed since the last call).
    fn to_publish(&self) -> (Vec<(String, String)>, Vec<String>);
    /// The live peers' keys under the prefix, as `(node, key, value)`.
    fn absorb(&self, peers: &[(String, String, String)]);
}

impl Cluster {
    /// The upstreams the sinks named (`sinks`, in configuration order) and the routes of
    /// those that fail over; nothing runs until [`Cluster::start`].
    pub fn new(settings: &ClusterSettings, sinks: Vec<SinkUpstreams>) -> Arc<Cluster> {
        let mut upstreams = Vec::new();
        let mut probes = Vec::new();
        let mut routes = HashMap::new();
        for sink in sinks {
            let names: Vec<String> = sink.upstreams.iter().map(|u| u.name.clone()).collect();
            for u in sink.upstreams {
                probes.push((upstreams.len(), u.setup));
                upstreams.push(Upstream {
                    id: u.name,
                    region: sink.region.as_str().to_string(),
                    kind: u.kind,
                });
            }
            if sink.failover {
                routes.insert(
                    sink.region.clone(),
                    Arc::new(RegionRoute::new(sink.region.clone(), names)),
                );
            }
        }
        let view = View {
            node: settings.node_id.clone(),
            routes: routes
                .iter()
                .map(|(r, route)| (r.as_str().to_string(), route.name(0).to_string()))
                .collect(),
            ..View::default()
        };
        let table = RouteTable::new(routes.iter().map(|(r, route)| {
            let ids = route.upstreams.iter().map(|u| UpstreamId::new(u)).collect();
            (r.clone(), ids)
        }));
        Arc::new(Cluster {
            settings: settings.clone(),
            upstreams,
            probes: Mutex::new(probes),
            routes,
            table,
            view: ArcSwap::new(Arc::new(view)),
            members: Arc::new(AtomicUsize::new(0)),
            states: Mutex::new(Vec::new()),
        })
    }

    /// Every region's route (for region choice in the pipeline).
    pub fn routes(&self) -> impl Iterator<Item = (RegionId, Arc<RegionRoute>)> + '_ {
        self.routes
            .iter()
            .map(|(r, route)| (r.clone(), route.clone()))
    }

    /// The route of `region`'s failing-over sink.
    pub fn route(&self, region: &RegionId) -> Option<Arc<RegionRoute>> {
        self.routes.get(region).cloned()
    }

    /// Keeps `state` in gossip from [`Cluster::start`] on.
    pub fn keep_in_gossip(&self, state: Arc<dyn GossipState>) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state);
    }

    /// The live-member count, kept current by the control loop (0 until gossip says).
    pub fn members(&self) -> Arc<AtomicUsize> {
        self.members.clone()
    }

    /// The current view, for the status page.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Starts gossip (if configured), the probe threads and the control loop. Gossip that
    /// cannot bind is an error: a node silently alone would route against the fleet.
    pub async fn start(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Result<Running, gossip::GossipError> {
        let gossip = match &self.settings.gossip {
            Some(g) => {
                let started = Gossip::start(&self.settings.node_id, g).await?;
                info!(node = %self.settings.node_id, listen = %g.listen, advertise = %g.advertise, seeds = ?g.seeds, "gossip started");
                Some(started)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(64 + self.upstreams.len());
        let stop_probes = Arc::new(AtomicBool::new(false));
        let probe_loop = ProbeLoop {
            node_id: self.settings.node_id.clone(),
            interval: self.settings.probe_interval,
            timeout: self.settings.probe_timeout,
            results: tx.clone(),
            stop: stop_probes.clone(),
        };
        let mut threads = Vec::new();
        let probes = std::mem::take(&mut *self.probes.lock().unwrap_or_else(|p| p.into_inner()));
        for (upstream, setup) in probes {
            let name = &self.upstreams[upstream].id;
            match probe_loop.clone().spawn(upstream, name, setup) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    warn!(upstream = %name, error = %e, "cannot start the probe thread; the upstream stays in its last state")
                }
            }
        }
        drop(probe_loop);
        drop(tx);
        let states = std::mem::take(&mut *self.states.lock().unwrap_or_else(|p| p.into_inner()));
        let control = tokio::spawn(control_loop(self.clone(), rx, gossip, states, stop));
        Ok(Running {
            control,
            threads,
            stop_probes,
        })
    }
}

/// The running probes and loop.
pub struct Running {
    control: tokio::task::JoinHandle<()>,
    threads: Vec<JoinHandle<()>>,
    stop_probes: Arc<AtomicBool>,
}

impl Running {
    /// Waits for the loop (stopped by the token given to `start`) and the probe threads.
    pub async fn join(self) {
        self.stop_probes.store(true, Ordering::Relaxed);
        let _ = self.control.await;
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Per-upstream state the loop keeps.
struct Local {
    machine: UpstreamHealth,
    detail: Option<String>,
    /// Start of the current run of failed probes.
    failing_since: Option<Instant>,
    since_ms: u64,
    probes: u64,
    up_gauge: metrics::Gauge,
    detection: metrics::Histogram,
}

async fn control_loop(
    cluster: Arc<Cluster>,
    mut results: mpsc::Receiver<ProbeResult>,
    mut gossip: Option<Gossip>,
    states: Vec<Arc<dyn GossipState>>,
    stop: CancellationToken,
) {
    let s = &cluster.settings;
    let prefixes: Vec<&'static str> = states.iter().map(|st| st.prefix()).collect();
    let now = Instant::now();
    let mut local: Vec<Local> = cluster
        .upstreams
        .iter()
        .map(|u| {
            let labels = [("upstream", u.id.clone()), ("region", u.region.clone())];
            Local {
                machine: UpstreamHealth::new(s.health, now),
                detail: None,
                failing_since: None,
                since_ms: unix_ms(),
                probes: 0,
                up_gauge: metrics::gauge!("traceo_upstream_up", &labels),
                detection: metrics::histogram!(
                    "traceo_upstream_detection_seconds",
                    "upstream" => u.id.clone()
                ),
            }
        })
        .collect();
    let members_gauge = metrics::gauge!("traceo_gossip_members");
    let mut peers = PeerView::default();
    let mut failovers = VecDeque::new();
    let tick_every = s
        .gossip
        .as_ref()
        .map_or(s.probe_interval, |g| g.interval.min(s.probe_interval));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut probes_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            r = results.recv(), if probes_open => {
                let Some(r) = r else { probes_open = false; continue };
                let now = Instant::now();
                let (u, l) = (&cluster.upstreams[r.upstream], &mut local[r.upstream]);
                l.probes += 1;
                match r.probe {
                    Probe::Failed => { l.failing_since.get_or_insert(now); }
                    Probe::Ok(_) => {}
                }
                if l.detail != r.detail {
                    if let Some(d) = &r.detail {
                        warn!(upstream = %u.id, detail = %d, "upstream probe");
                    }
                    l.detail = r.detail.clone();
                }
                if let Some(t) = l.machine.observe(r.probe, now) {
                    l.since_ms = unix_ms();
                    if t.to == Health::Down {
                        let took = l.failing_since.map_or(Duration::ZERO, |f| now - f);
                        l.detection.record(took.as_secs_f64());
                        warn!(upstream = %u.id, region = %u.region, from = t.from.as_str(), detected_ms = took.as_millis() as u64, detail = ?l.detail, "upstream down by this node's probes");
                    } else {
                        info!(upstream = %u.id, region = %u.region, from = t.from.as_str(), to = t.to.as_str(), "upstream health changed by this node's probes");
                    }
                }
                if matches!(r.probe, Probe::Ok(_)) {
                    l.failing_since = None;
                }
                if let Some(g) = &mut gossip {
                    let key = gossip::observation_key(&u.id);
                    let value = gossip::observation_value(l.machine.state(), l.probes);
                    g.publish(&[(key, value)]).await;
                }
            }
            _ = tick.tick() => {
                if let Some(g) = &mut gossip {
                    peers = g.read(&prefixes).await;
                    for st in &states {
                        let prefix = st.prefix();
                        let mine: Vec<(String, String, String)> = peers
                            .extra
                            .iter()
                            .filter(|(_, k, _)| k.starts_with(prefix))
                            .cloned()
                            .collect();
                        st.absorb(&mine);
                        let (set, delete) = st.to_publish();
                        if !set.is_empty() {
                            g.publish(&set).await;
                        }
                        g.delete(&delete).await;
                    }
                } else {
                    // Alone: nothing to learn, nothing to tell; the state still ages.
                    for st in &states {
                        st.absorb(&[]);
                        let _ = st.to_publish();
                    }
                }
            }
        }
        decide(&cluster, &local, &peers, &mut failovers);
        // Without gossip `members` stays empty: the node alone.
        members_gauge.set(peers.members.len().max(1) as f64);
        cluster
            .members
            .store(peers.members.len(), Ordering::Relaxed);
    }
    if let Some(g) = gossip {
        g.shutdown().await;
    }
}

/// Applies the quorum rule, moves routes and publishes the view.
fn decide(
    cluster: &Cluster,
    local: &[Local],
    peers: &PeerView,
    failovers: &mut VecDeque<Failover>,
) {
    let s = &cluster.settings;
    let mut by_name: HashMap<&str, Health> = HashMap::new();
    let mut views = Vec::with_capacity(cluster.upstreams.len());
    for (u, l) in cluster.upstreams.iter().zip(local) {
        let seen: Vec<_> = peers
            .observations
            .iter()
            .filter(|o| o.upstream == u.id)
            .collect();
        let fresh: Vec<PeerObservation> = seen
            .iter()
            .map(|o| PeerObservation {
                health: o.health,
                age: o.age,
            })
            .collect();
        let own = l.machine.state();
        let fleet = fleet_health(own, &fresh, s.fresh);
        l.up_gauge.set(if fleet.usable() { 1.0 } else { 0.0 });
        by_name.insert(u.id.as_str(), fleet);
        views.push(UpstreamView {
            id: u.id.clone(),
            region: u.region.clone(),
            kind: u.kind,
            local: own,
            fleet,
            peers: seen
                .iter()
                .filter(|o| o.age <= s.fresh)
                .map(|o| (o.node.clone(), o.health))
                .collect(),
            last_error: l.detail.clone(),
            since_ms: l.since_ms,
        });
    }
    let mut routes = BTreeMap::new();
    for route in cluster.routes.values() {
        for (i, name) in route.upstreams.iter().enumerate() {
            let usable = by_name.get(name.as_str()).is_none_or(|h| h.usable());
            route.usable[i].store(usable, Ordering::Relaxed);
        }
        // The first usable upstream in order; none usable: the primary, where deliveries
        // fail and the write-ahead log holds the data until one comes back. Never another
        // region's: a route only names its own region's upstreams.
        let health = |u: &UpstreamId| by_name.get(u.as_str()).copied().unwrap_or(Health::Up);
        let want = cluster
            .table
            .route(&route.region, health)
            .and_then(|u| route.upstreams.iter().position(|n| n == u.as_str()))
            .unwrap_or(0);
        let was = route.current();
        if want != was {
            let f = Failover {
                at_ms: unix_ms(),
                region: route.region.as_str().to_string(),
                from: route.name(was).to_string(),
                to: route.name(want).to_string(),
            };
            warn!(region = %f.region, from = %f.from, to = %f.to, "route switched");
            metrics::counter!("traceo_failover_events_total", "region" => f.region.clone(), "from" => f.from.clone(), "to" => f.to.clone()).increment(1);
            route.switched_ms.store(f.at_ms, Ordering::Relaxed);
            route.current.store(want, Ordering::Relaxed);
            if failovers.len() == FAILOVERS_KEPT {
                failovers.pop_front();
            }
            failovers.push_back(f);
        }
        routes.insert(
            route.region.as_str().to_string(),
            route.name(want).to_string(),
        );
    }
    cluster.view.store(Arc::new(View {
        node: s.node_id.clone(),
        // Empty with gossip off.
        members: peers.members.clone(),
        upstreams: views,
        routes,
        failovers: failovers.clone(),
    }));
}

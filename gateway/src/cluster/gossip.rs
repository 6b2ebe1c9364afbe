//! Membership and gossip between gateway nodes, over chitchat (UDP, scuttlebutt
//! anti-entropy, phi-accrual failure detector).
//!
//! Each node publishes its own observation of every upstream as the key
//! `upstream.<id>.health` with value `<health> <n>`, `n` counting this node's probes, so the
//! value changes with every probe and a peer can tell a fresh observation from an old one by
//! its own clock (no clock agreement between nodes is needed).
//!
//! Every datagram is sealed with the fleet's key ring and checked before chitchat applies it
//! ([`super::transport`]). Should chitchat's task end anyway (a bug, a broken socket), the
//! next read notices, says so loudly, counts `traceo_gossip_restarts_total` and starts it
//! again under a new generation: peers see a restarted node, not a silent one.
//!
//! chitchat's state sits behind a mutex its server task also takes; only the control loop
//! ([`super::runtime`]) touches it, a few times a second, and publishes what it read into an
//! `arc-swap`ped view. Nothing on the request or delivery path ever takes that lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tracing::{error, info};

use super::config::GossipSettings;
use super::transport::SealedUdp;
use super::Health;

/// Key prefix of observations.
const PREFIX: &str = "upstream.";
/// Key suffix of observations.
const SUFFIX: &str = ".health";

/// The key a node publishes its observation of `upstream` under.
pub fn observation_key(upstream: &str) -> String {
    format!("{PREFIX}{upstream}{SUFFIX}")
}

/// The value of an observation: the health and this node's probe count.
pub fn observation_value(health: Health, probes: u64) -> String {
    format!("{} {probes}", health.as_str())
}

/// Parses an observation key and value into (upstream, health).
fn parse_observation<'a>(key: &'a str, value: &str) -> Option<(&'a str, Health)> {
    let upstream = key.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let health = Health::parse(value.split(' ').next()?)?;
    Some((upstream, health))
}

/// A live member of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Its `cluster.node_id`.
    pub node: String,
    /// Its gossip address.
    pub addr: SocketAddr,
    /// Whether it is this node.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// A peer's observation of an upstream, as read from gossip.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The peer.
    pub node: String,
    /// The upstream.
    pub upstream: String,
    /// What it saw.
    pub health: Health,
    /// Since this node last saw the value change.
    pub age: Duration,
}

/// What one read of the gossip state gives.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// Live members, this node first.
    pub members: Vec<Member>,
    /// The live peers' observations.
    pub observations: Vec<Observation>,
    /// The live peers' keys under the prefixes asked for (see [`Gossip::read`]), as
    /// `(node, key, value)`.
    pub extra: Vec<(String, String, String)>,
}

/// This node's gossip endpoint.
pub struct Gossip {
    handle: ChitchatHandle,
    me: ChitchatId,
    settings: GossipSettings,
    /// Set when chitchat's task ends without being asked to.
    ended: Arc<AtomicBool>,
    /// No restart before this.
    retry_at: Option<Instant>,
    /// The wait after the next restart or failed attempt.
    retry_step: Duration,
    dead_after: Duration,
    /// Each node's last heartbeat and when it changed.
    beats: HashMap<ChitchatId, (u64, Instant)>,
    /// Each (node, key)'s last value and when it changed.
    seen: HashMap<(ChitchatId, String), (String, Instant)>,
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("gossip on {addr}: {message}")]
pub struct GossipError {
    addr: SocketAddr,
    message: String,
}

/// First wait between gossip restarts; doubles up to [`MAX_RESTART_BACKOFF`].
const FIRST_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between gossip restarts.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// How long chitchat keeps a dead node's state, and so how long a node's old generation
/// still counts toward the fleet's node bound (twice this): long enough for every peer to
/// agree it is gone, short enough that rolling restarts do not pile up generations.
fn dead_node_grace(dead_after: Duration) -> Duration {
    (10 * dead_after).max(Duration::from_secs(60))
}

/// Starts chitchat for `node_id` under a fresh generation.
async fn spawn(
    node_id: &str,
    s: &GossipSettings,
) -> Result<(ChitchatHandle, ChitchatId, Arc<AtomicBool>), GossipError> {
    // The generation tells a restarted node from its previous life.
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let me = ChitchatId::new(node_id.to_string(), generation, s.advertise);
    let grace = dead_node_grace(s.dead_after);
    let config = ChitchatConfig {
        chitchat_id: me.clone(),
        cluster_id: s.cluster_id.clone(),
        gossip_interval: s.interval,
        listen_addr: s.listen,
        seed_nodes: s.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            // Our own `dead_after` decides membership; the phi detector's prior is set
            // to the gossip interval so it does not wait on its 5 s default either.
            initial_interval: s.interval,
            dead_node_grace_period: grace,
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let transport = SealedUdp {
        keys: s.keys.clone(),
        context: s.cluster_id.as_bytes().to_vec(),
        replay_window: s.replay_window,
        node_ttl: 2 * grace,
        me: (me.node_id.clone(), me.generation_id),
    };
    let handle = spawn_chitchat(config, Vec::new(), &transport)
        .await
        .map_err(|e| GossipError {
            addr: s.listen,
            message: format!("{e:#}"),
        })?;
    let ended = Arc::new(AtomicBool::new(false));
    let watcher = handle.termination_watcher();
    let flag = ended.clone();
    tokio::spawn(async move {
        let outcome = watcher.await;
        flag.store(true, Ordering::SeqCst);
        if let Err(e) = outcome {
            error!(error = %e, "gossip task ended with an error");
        }
    });
    Ok((handle, me, ended))
}

impl Gossip {
    /// Binds the UDP socket and starts gossiping with the seeds.
    pub async fn start(node_id: &str, s: &GossipSettings) -> Result<Gossip, GossipError> {
        metrics::counter!("traceo_gossip_restarts_total").absolute(0);
        for r in protocols::gossip::seal::Rejected::ALL {
            metrics::counter!("traceo_gossip_rejected_packets_total", "reason" => r.as_str())
                .absolute(0);
        }
        let (handle, me, ended) = spawn(node_id, s).await?;
        match &s.keys {
            Some(k) => info!(keys = ?k.ids(), "gossip sealed; the first key id seals"),
            None => tracing::warn!("gossip is NOT authenticated (cluster.gossip_insecure): anyone who can reach the gossip port can join the fleet and move traffic"),
        }
        Ok(Gossip {
            handle,
            me,
            settings: s.clone(),
            ended,
            retry_at: None,
            retry_step: FIRST_RESTART_BACKOFF,
            dead_after: s.dead_after,
            beats: HashMap::new(),
            seen: HashMap::new(),
        })
    }

    /// Starts chitchat again if its task ended; the caller goes on with the new one. Never
    /// waits: a restart that fails is tried again on a later call, after a backoff that
    /// doubles up to a minute (the control loop keeps routing by this node's own probes
    /// meanwhile, and a crash loop does not flood peers with new generations).
    async fn revive(&mut self) {
        if !self.ended.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        error!(node = %self.me.node_id, "gossip task ended unexpectedly; restarting it under a new generation");
        metrics::counter!("traceo_gossip_restarts_total").increment(1);
        let _ = self.handle.initiate_shutdown();
        match spawn(&self.me.node_id, &self.settings).await {
            Ok((handle, me, ended)) => {
                drop(std::mem::replace(&mut self.handle, handle));
                self.me = me;
                self.ended = ended;
                // The next end, if any, waits at least the current step.
                self.retry_at = Some(now + self.retry_step);
                self.retry_step = (self.retry_step * 2).min(MAX_RESTART_BACKOFF);
            }
            Err(e) => {
                error!(error = %e, retry_in = ?self.retry_step, "gossip restart failed");
                self.retry_at = Some(now + self.retry_step);
                self.retry_step = (self.retry_step * 2).min(MAX_RESTART_BACKOFF);
            }
        }
    }

    /// Publishes this node's observations.
    pub async fn publish(&mut self, values: &[(String, String)]) {
        self.revive().await;
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for (k, v) in values {
                    state.set(k, v);
                }
            })
            .await;
    }

    /// Deletes keys this node published.
    pub async fn delete(&mut self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        self.revive().await;
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for k in keys {
                    state.delete(k);
                }
            })
            .await;
    }

    /// Reads members, the peers' observations and their keys under `prefixes` (state other
    /// components keep in gossip). A node is a member while chitchat's detector calls it
    /// live and its heartbeat moved within `dead_after`; the keys of others are dropped.
    pub async fn read(&mut self, prefixes: &[&str]) -> PeerView {
        self.revive().await;
        let now = Instant::now();
        let chitchat = self.handle.chitchat();
        let guard = chitchat.lock().await;
        let mut view = PeerView {
            members: vec![Member {
                node: self.me.node_id.clone(),
                addr: self.me.gossip_advertise_addr,
                is_self: true,
            }],
            observations: Vec::new(),
            extra: Vec::new(),
        };
        let live: Vec<ChitchatId> = guard.live_nodes().cloned().collect();
        for id in live {
            if id == self.me {
                continue;
            }
            let Some(state) = guard.node_state(&id) else {
                continue;
            };
            let beat = u64::from(state.heartbeat());
            let entry = self.beats.entry(id.clone()).or_insert((beat, now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            if now.duration_since(entry.1) > self.dead_after {
                continue;
            }
            view.members.push(Member {
                node: id.node_id.clone(),
                addr: id.gossip_advertise_addr,
                is_self: false,
            });
            for (key, v) in state.iter_prefix(PREFIX) {
                let Some((upstream, health)) = parse_observation(key, &v.value) else {
                    continue;
                };
                let seen = self
                    .seen
                    .entry((id.clone(), key.to_string()))
                    .or_insert_with(|| (v.value.clone(), now));
                if seen.0 != v.value {
                    *seen = (v.value.clone(), now);
                }
                view.observations.push(Observation {
                    node: id.node_id.clone(),
                    upstream: upstream.to_string(),
                    health,
                    age: now.duration_since(seen.1),
                });
            }
            for prefix in prefixes {
                for (key, v) in state.iter_prefix(prefix) {
                    view.extra
                        .push((id.node_id.clone(), key.to_string(), v.value.clone()));
                }
            }
        }
        drop(guard);
        // Forget nodes gone for good (a restarted node comes back under a new generation).
        let keep = 10 * self.dead_after;
        self.beats
            .retain(|_, (_, at)| now.duration_since(*at) <= keep);
        let beats = &self.beats;
        self.seen.retain(|(id, _), _| beats.contains_key(id));
        view.members[1..].sort_by(|a, b| a.node.cmp(&b.node));
        view
    }

    /// Leaves the fleet: stops answering gossip.
    pub async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_round_trip_through_key_and_value() {
        let key = observation_key("eu-primary");
        let value = observation_value(Health::Down, 42);
        assert_eq!(key, "upstream.eu-primary.health");
        assert_eq!(value, "down 42");
        assert_eq!(
            parse_observation(&key, &value),
            Some(("eu-primary", Health::Down))
        );
        assert_eq!(parse_observation("upstream.x.other", "down 1"), None);
        assert_eq!(parse_observation(&key, "sideways 1"), None);
    }

    fn settings(port: u16, seeds: &[u16], key: Option<u8>) -> GossipSettings {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        GossipSettings {
            listen: addr,
            advertise: addr,
            seeds: seeds.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            cluster_id: "traceo".into(),
            interval: Duration::from_millis(50),
            dead_after: Duration::from_secs(2),
            keys: key.map(|k| Arc::new(protocols::gossip::seal::KeyRing::new(&[[k; 32]]).unwrap())),
            replay_window: Duration::from_secs(30),
        }
    }

    fn free_udp() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A gossiping node `name` on `port`, seeded with `seeds`, holding key `[key; 32]`.
    async fn node(name: &str, port: u16, seeds: &[u16], key: u8) -> Gossip {
        Gossip::start(name, &settings(port, seeds, Some(key)))
            .await
            .unwrap()
    }

    /// Reads `g` until `done` holds, for at most 10 s.
    async fn read_until(g: &mut Gossip, done: impl Fn(&PeerView) -> bool) -> PeerView {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = g.read(&[]).await;
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn nodes_sharing_a_key_gossip_through_the_sealed_transport_and_a_stranger_stays_out() {
        // Real chitchat messages (SYN, SYN-ACK, ACK with deltas) pass the seal and the check.
        let (pa, pb, px) = (free_udp(), free_udp(), free_udp());
        let mut a = node("a", pa, &[pb], 1).await;
        let mut b = node("b", pb, &[pa], 1).await;
        let mut x = node("x", px, &[pa, pb], 2).await;
        b.publish(&[(
            observation_key("eu-primary"),
            observation_value(Health::Down, 1),
        )])
        .await;
        x.publish(&[(
            observation_key("eu-primary"),
            observation_value(Health::Down, 1),
        )])
        .await;
        let v = read_until(&mut a, |v| !v.observations.is_empty()).await;
        let names: Vec<&str> = v.members.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v.observations.len(), 1, "{:?}", v.observations);
        assert_eq!(v.observations[0].node, "b");
        assert_eq!(v.observations[0].health, Health::Down);
        let vx = x.read(&[]).await;
        assert_eq!(
            vx.members.len(),
            1,
            "the stranger is alone: {:?}",
            vx.members
        );
        for g in [a, b, x] {
            g.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_gossip_task_that_ends_is_restarted_under_a_new_generation() {
        let (pa, pb) = (free_udp(), free_udp());
        let mut a = node("a", pa, &[pb], 1).await;
        let mut b = node("b", pb, &[pa], 1).await;
        read_until(&mut a, |v| v.members.len() == 2).await;
        let before = a.me.clone();
        // End chitchat's task behind the node's back, as a panic would.
        a.handle.initiate_shutdown().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !a.ended.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            a.ended.load(Ordering::SeqCst),
            "the watcher saw the task end"
        );
        let v = read_until(&mut a, |v| v.members.len() == 2).await;
        assert_ne!(a.me.generation_id, before.generation_id);
        assert!(!a.ended.load(Ordering::SeqCst));
        assert_eq!(v.members.len(), 2, "back in the fleet: {:?}", v.members);
        let vb = read_until(&mut b, |v| v.members.len() == 2).await;
        assert_eq!(vb.members.len(), 2);
        a.shutdown().await;
        b.shutdown().await;
    }
}

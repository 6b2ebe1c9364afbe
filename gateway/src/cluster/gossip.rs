//! Membership and gossip between gateway nodes, over chitchat (UDP, scuttlebutt
//! anti-entropy, phi-accrual failure detector).
//!
//! Each node publishes its own observation of every upstream as the key
//! `upstream.<id>.health` with value `<health> <n>`, `n` counting this node's probes, so the
//! value changes with every probe and a peer can tell a fresh observation from an old one by
//! its own clock (no clock agreement between nodes is needed).
//!
//! chitchat's state sits behind a mutex its server task also takes; only the control loop
//! ([`super::runtime`]) touches it, a few times a second, and publishes what it read into an
//! `arc-swap`ped view. Nothing on the request or delivery path ever takes that lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};

use super::config::GossipSettings;
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
}

/// This node's gossip endpoint.
pub struct Gossip {
    handle: ChitchatHandle,
    me: ChitchatId,
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

impl Gossip {
    /// Binds the UDP socket and starts gossiping with the seeds.
    pub async fn start(node_id: &str, s: &GossipSettings) -> Result<Gossip, GossipError> {
        // The generation tells a restarted node from its previous life.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let me = ChitchatId::new(node_id.to_string(), generation, s.advertise);
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
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = spawn_chitchat(config, Vec::new(), &UdpTransport)
            .await
            .map_err(|e| GossipError {
                addr: s.listen,
                message: format!("{e:#}"),
            })?;
        Ok(Gossip {
            handle,
            me,
            dead_after: s.dead_after,
            beats: HashMap::new(),
            seen: HashMap::new(),
        })
    }

    /// Publishes this node's observations.
    pub async fn publish(&self, values: &[(String, String)]) {
        self.handle
            .with_chitchat(|c| {
                let state = c.self_node_state();
                for (k, v) in values {
                    state.set(k, v);
                }
            })
            .await;
    }

    /// Reads members and the peers' observations. A node is a member while chitchat's
    /// detector calls it live and its heartbeat moved within `dead_after`; the observations
    /// of others are dropped.
    pub async fn read(&mut self) -> PeerView {
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
}

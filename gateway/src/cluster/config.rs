//! `cluster:`: how this node probes its upstreams and gossips with the other gateway nodes.
//! Optional: without it the node still probes and fails over by its own view, alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocols::gossip::chitchat::MAX_NODE_ID_BYTES;
use protocols::gossip::seal::KeyRing;

use serde::Deserialize;

use super::HealthPolicy;
use crate::yaml::HumanDuration;

/// `cluster:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This node's name in the fleet, unique. Default: the host name (a pod's name).
    #[serde(default)]
    pub node_id: Option<String>,
    /// UDP address gossip listens on. Default `0.0.0.0:7946`. `null` turns gossip off (the
    /// node then routes by its own probes alone).
    #[serde(default = "default_gossip_listen")]
    pub gossip_listen: Option<String>,
    /// Address peers reach this node at. Default: `gossip_listen`, which must then name a
    /// specific IP (in Kubernetes set it from the pod IP).
    #[serde(default)]
    pub gossip_advertise: Option<String>,
    /// Other nodes, `host:port`; names are resolved again every few seconds, so a
    /// Kubernetes headless service works as one seed.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Nodes only gossip with nodes of the same cluster id. Default `traceo`.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Time between gossip rounds. Default `500ms`.
    #[serde(default = "default_gossip_interval")]
    pub gossip_interval: HumanDuration,
    /// File of the fleet's gossip keys, one per line (64 hex digits, or base64 of 32 bytes as
    /// `openssl rand -base64 32` prints; `#` comments): the first seals every datagram, all
    /// open them. Required when gossip is on, unless `gossip_insecure` is set.
    #[serde(default)]
    pub gossip_keys_file: Option<PathBuf>,
    /// Gossip unauthenticated, in clear (anyone who can send UDP to the port can join and
    /// move traffic). Default false; only for a network nobody else can reach.
    #[serde(default)]
    pub gossip_insecure: bool,
    /// A sealed datagram is accepted within this of the receiver's clock, either way, and
    /// only once (replays inside the window are refused by nonce). Node clocks must agree
    /// within it (NTP). Default `30s`.
    #[serde(default = "default_gossip_replay_window")]
    pub gossip_replay_window: HumanDuration,
    /// A node not heard from (no new heartbeat) for this long leaves the membership and its
    /// observations stop counting. Default `5s`.
    #[serde(default = "default_dead_after")]
    pub dead_after: HumanDuration,
    /// Time between two probes of an upstream. Default `1s`.
    #[serde(default = "default_probe_interval")]
    pub probe_interval: HumanDuration,
    /// A probe not answered within this fails. Default `1s`.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: HumanDuration,
    /// A peer's observation older than this is ignored. Default `5s`.
    #[serde(default = "default_fresh")]
    pub fresh: HumanDuration,
    /// Consecutive failed probes that mark an upstream down. Default 3.
    #[serde(default = "default_fail_after")]
    pub fail_after: u32,
    /// Consecutive good probes before a down upstream starts its hold-down. Default 3.
    #[serde(default = "default_recover_after")]
    pub recover_after: u32,
    /// Time a recovering upstream must stay good before traffic returns. Default `30s`.
    #[serde(default = "default_hold_down")]
    pub hold_down: HumanDuration,
    /// A probe slower than this marks the upstream degraded (still used). Default `1s`.
    #[serde(default = "default_slow")]
    pub slow: HumanDuration,
}

impl Default for ClusterFile {
    fn default() -> Self {
        Self {
            node_id: None,
            // No `cluster:` section: a node alone, no gossip socket opened.
            gossip_listen: None,
            gossip_advertise: None,
            seeds: Vec::new(),
            cluster_id: default_cluster_id(),
            gossip_interval: default_gossip_interval(),
            gossip_keys_file: None,
            gossip_insecure: false,
            gossip_replay_window: default_gossip_replay_window(),
            dead_after: default_dead_after(),
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            fresh: default_fresh(),
            fail_after: default_fail_after(),
            recover_after: default_recover_after(),
            hold_down: default_hold_down(),
            slow: default_slow(),
        }
    }
}

fn default_gossip_listen() -> Option<String> {
    Some("0.0.0.0:7946".into())
}
fn default_cluster_id() -> String {
    "traceo".into()
}
const fn default_gossip_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
const fn default_gossip_replay_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
const fn default_dead_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
const fn default_probe_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
const fn default_probe_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
const fn default_fresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
const fn default_fail_after() -> u32 {
    3
}
const fn default_recover_after() -> u32 {
    3
}
const fn default_hold_down() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
const fn default_slow() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// `cluster:` validated.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's name.
    pub node_id: String,
    /// Gossip, if on.
    pub gossip: Option<GossipSettings>,
    /// Time between probes of one upstream.
    pub probe_interval: Duration,
    /// Probe deadline.
    pub probe_timeout: Duration,
    /// Age beyond which a peer's observation is ignored.
    pub fresh: Duration,
    /// The health state machine's thresholds.
    pub health: HealthPolicy,
}

/// Gossip settings.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Address peers use.
    pub advertise: SocketAddr,
    /// Seeds, `host:port`.
    pub seeds: Vec<String>,
    /// Cluster id.
    pub cluster_id: String,
    /// Gossip round interval.
    pub interval: Duration,
    /// Silence after which a node is no member.
    pub dead_after: Duration,
    /// The key ring that seals and opens datagrams; `None` only with `gossip_insecure`.
    pub keys: Option<Arc<KeyRing>>,
    /// Replay window of sealed datagrams.
    pub replay_window: Duration,
}

/// The host name, for the default node id.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "traceo-gateway".into())
}

impl ClusterFile {
    /// Checks meaning; every problem names its field under `cluster.`.
    pub fn validate(self, problems: &mut Vec<String>) -> ClusterSettings {
        let node_id = self.node_id.unwrap_or_else(host_name);
        if node_id.is_empty() || node_id.chars().any(char::is_whitespace) {
            problems.push(format!(
                "cluster.node_id: {node_id:?} must be non-empty without spaces"
            ));
        }
        if node_id.len() > MAX_NODE_ID_BYTES {
            problems.push(format!(
                "cluster.node_id: {} bytes, at most {MAX_NODE_ID_BYTES}",
                node_id.len()
            ));
        }
        for (field, d) in [
            ("gossip_interval", self.gossip_interval),
            ("dead_after", self.dead_after),
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("fresh", self.fresh),
            ("gossip_replay_window", self.gossip_replay_window),
        ] {
            if d.0.is_zero() {
                problems.push(format!("cluster.{field}: must be greater than 0"));
            }
        }
        if self.dead_after.0 < 2 * self.gossip_interval.0 {
            problems.push(format!(
                "cluster.dead_after: {:?} must be at least two gossip intervals ({:?})",
                self.dead_after.0,
                2 * self.gossip_interval.0
            ));
        }
        if self.fresh.0 < self.probe_interval.0 {
            problems.push(format!(
                "cluster.fresh: {:?} is shorter than probe_interval ({:?}): every peer observation would be stale",
                self.fresh.0, self.probe_interval.0
            ));
        }
        for (field, n) in [
            ("fail_after", self.fail_after),
            ("recover_after", self.recover_after),
        ] {
            if n == 0 {
                problems.push(format!("cluster.{field}: must be at least 1"));
            }
        }
        let gossip = self.gossip_listen.as_ref().and_then(|listen| {
            let listen: SocketAddr = listen
                .parse()
                .map_err(|e| {
                    problems.push(format!(
                        "cluster.gossip_listen: {listen:?} is not an address: {e}"
                    ))
                })
                .ok()?;
            let advertise = match &self.gossip_advertise {
                Some(a) => a
                    .parse::<SocketAddr>()
                    .map_err(|e| {
                        problems.push(format!(
                            "cluster.gossip_advertise: {a:?} is not an address: {e}"
                        ))
                    })
                    .ok()?,
                None if listen.ip().is_unspecified() => {
                    problems.push(format!(
                        "cluster.gossip_advertise: required when gossip_listen ({listen}) does not name an IP peers can reach"
                    ));
                    return None;
                }
                None => listen,
            };
            for (i, s) in self.seeds.iter().enumerate() {
                let port_ok = s
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    problems.push(format!("cluster.seeds[{i}]: {s:?} is not host:port"));
                }
            }
            let keys = match (&self.gossip_keys_file, self.gossip_insecure) {
                (Some(_), true) => {
                    problems.push(
                        "cluster.gossip_insecure: set together with gossip_keys_file; choose one"
                            .to_string(),
                    );
                    None
                }
                (None, true) => None,
                (None, false) => {
                    problems.push(
                        "cluster.gossip_keys_file: required when gossip is on (every datagram is sealed with the fleet's key); generate one with `openssl rand -base64 32`, or set gossip_insecure: true on a network nobody else reaches"
                            .to_string(),
                    );
                    None
                }
                (Some(path), false) => match std::fs::read_to_string(path) {
                    // The error names the file and the line, never a key.
                    Ok(text) => match KeyRing::parse(&text) {
                        Ok(ring) => Some(Arc::new(ring)),
                        Err(e) => {
                            problems.push(format!(
                                "cluster.gossip_keys_file: {}: {e}",
                                path.display()
                            ));
                            None
                        }
                    },
                    Err(e) => {
                        problems.push(format!(
                            "cluster.gossip_keys_file: cannot read {}: {e}",
                            path.display()
                        ));
                        None
                    }
                },
            };
            Some(GossipSettings {
                listen,
                advertise,
                seeds: self.seeds.clone(),
                cluster_id: self.cluster_id.clone(),
                interval: self.gossip_interval.0,
                dead_after: self.dead_after.0,
                keys,
                replay_window: self.gossip_replay_window.0,
            })
        });
        ClusterSettings {
            node_id,
            gossip,
            probe_interval: self.probe_interval.0,
            probe_timeout: self.probe_timeout.0,
            fresh: self.fresh.0,
            health: HealthPolicy {
                fail_after: self.fail_after,
                recover_after: self.recover_after,
                hold_down: self.hold_down.0,
                slow: self.slow.0,
            },
        }
    }
}

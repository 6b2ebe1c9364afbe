//! chitchat's UDP transport with every datagram sealed, checked and bounded before chitchat
//! sees it.
//!
//! A received datagram goes through, in order: opening with the key ring (unknown key or
//! failed authentication: dropped), the replay guard (outside the window or seen before:
//! dropped), [`protocols::gossip::chitchat::check_message`] (anything chitchat would assert
//! on or that is out of bounds: dropped), a delta about this node itself (chitchat would
//! apply a peer's version of our own state: dropped), the fleet's node bound (a message that
//! would make this node track more than [`MAX_NODES`] node ids, or more than
//! [`MAX_TRACKED`] node generations: dropped), and only then chitchat's own deserializer. Every drop is counted in `traceo_gossip_rejected_packets_total{reason}`
//! and logged at debug level (a flood must not flood the log too). With `gossip_insecure`
//! the first two steps are skipped; the checks still run.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use metrics::Counter;
use protocols::gossip::chitchat::{check_message, NodeRef, MAX_NODES};

/// Node generations (a restart makes a new one) tracked at once. chitchat keeps a dead
/// generation until its grace passes and puts every known one in its digest; at 181 bytes
/// an entry at most, 320 stay under the ~65 400-byte digest where chitchat's MTU arithmetic
/// would underflow, while leaving room for a fleet of 256 ids to roll through restarts.
pub const MAX_TRACKED: usize = 320;
use protocols::gossip::seal::{KeyRing, Rejected, ReplayGuard, NONCE_LEN, OVERHEAD};
use ring::rand::SecureRandom;
use tracing::{debug, warn};

/// The largest UDP payload over IPv4; chitchat fills messages up to it.
const MAX_DATAGRAM: usize = 65_507;
/// Nonces the replay guard remembers: a fleet's gossip is a few dozen datagrams a second per
/// node, so a 30 s window holds a few thousand; the cap only matters against a key holder.
const REPLAY_CAPACITY: usize = 65_536;

/// How the transport seals and bounds what it carries.
pub struct SealedUdp {
    /// The key ring; `None` gossips in clear (`gossip_insecure`).
    pub keys: Option<Arc<KeyRing>>,
    /// Bound into every seal: the cluster id, so fleets sharing a key stay apart.
    pub context: Vec<u8>,
    /// Replay window.
    pub replay_window: Duration,
    /// How long a node not named by any message still counts toward the node bound.
    pub node_ttl: Duration,
    /// This node's id and generation: deltas about it are refused.
    pub me: (String, u64),
}

#[async_trait::async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind {listen_addr}/UDP for gossip: {e}"))?;
        Ok(Box::new(SealedSocket {
            socket,
            gate: Gate::new(self),
            rng: ring::rand::SystemRandom::new(),
            plain: Vec::with_capacity(MAX_DATAGRAM),
            sealed: Vec::with_capacity(MAX_DATAGRAM + OVERHEAD),
            recv: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

/// What a received datagram must pass; one per socket, used by its receive loop only.
pub struct Gate {
    keys: Option<Arc<KeyRing>>,
    context: Vec<u8>,
    guard: ReplayGuard,
    node_ttl: Duration,
    me: (String, u64),
    nodes: HashMap<NodeRef, Instant>,
    rejected: Vec<(Rejected, Counter)>,
}

impl Gate {
    /// A gate for `cfg`'s keys and bounds.
    pub fn new(cfg: &SealedUdp) -> Gate {
        Gate {
            keys: cfg.keys.clone(),
            context: cfg.context.clone(),
            guard: ReplayGuard::new(
                u64::try_from(cfg.replay_window.as_millis()).unwrap_or(u64::MAX),
                REPLAY_CAPACITY,
            ),
            node_ttl: cfg.node_ttl,
            me: cfg.me.clone(),
            nodes: HashMap::new(),
            rejected: Rejected::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics::counter!("traceo_gossip_rejected_packets_total", "reason" => r.as_str()),
                    )
                })
                .collect(),
        }
    }

    /// The chitchat message in `datagram`, received at `now_ms` (wall clock, for the replay
    /// window) and `now` (monotonic, for the node bound), or why it was dropped (counted).
    pub fn accept(
        &mut self,
        datagram: &mut [u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<ChitchatMessage, Rejected> {
        let result = self.pass(datagram, now_ms, now);
        if let Err(r) = &result {
            if let Some((_, c)) = self.rejected.iter().find(|(x, _)| x == r) {
                c.increment(1);
            }
        }
        result
    }

    fn pass(
        &mut self,
        datagram: &mut [u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<ChitchatMessage, Rejected> {
        let payload: &[u8] = match &self.keys {
            None => datagram,
            Some(keys) => {
                let opened = keys.open(&self.context, datagram)?;
                self.guard.admit(&opened, now_ms)?;
                opened.payload
            }
        };
        let named = check_message(payload).map_err(|e| {
            debug!(error = %e, "gossip message refused before chitchat");
            Rejected::Invalid
        })?;
        // Honest peers never send our own state back (they only send what is newer than
        // what we told them, and nobody knows our state better than we do).
        if named
            .delta
            .iter()
            .any(|n| n.node_id == self.me.0 && n.generation == self.me.1)
        {
            debug!("gossip delta about this node refused");
            return Err(Rejected::Invalid);
        }
        self.admit_nodes(&named.all(), now)?;
        let mut cursor = payload;
        let message = ChitchatMessage::deserialize(&mut cursor).map_err(|e| {
            debug!(error = %e, "chitchat refused a message the check passed");
            Rejected::Invalid
        })?;
        Ok(message)
    }

    /// Refuses a message that would make this node track more than [`MAX_NODES`] node ids
    /// or [`MAX_TRACKED`] generations seen within `node_ttl`.
    fn admit_nodes(&mut self, nodes: &[NodeRef], now: Instant) -> Result<(), Rejected> {
        let fits = |tracked: &HashMap<NodeRef, Instant>| {
            let new: Vec<&NodeRef> = nodes.iter().filter(|n| !tracked.contains_key(n)).collect();
            if new.is_empty() {
                return true;
            }
            let mut ids: std::collections::HashSet<&str> =
                tracked.keys().map(|n| n.node_id.as_str()).collect();
            ids.extend(new.iter().map(|n| n.node_id.as_str()));
            tracked.len() + new.len() <= MAX_TRACKED && ids.len() <= MAX_NODES
        };
        if !fits(&self.nodes) {
            let ttl = self.node_ttl;
            self.nodes.retain(|_, at| now.duration_since(*at) <= ttl);
            if !fits(&self.nodes) {
                return Err(Rejected::TooManyNodes);
            }
        }
        for n in nodes {
            self.nodes.insert(n.clone(), now);
        }
        Ok(())
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    gate: Gate,
    rng: ring::rand::SystemRandom,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    /// One byte more than a datagram can hold, so a truncated read is detectable.
    recv: Box<[u8]>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// chitchat's own rule: these leave the socket usable.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[async_trait::async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        self.plain.clear();
        msg.serialize(&mut self.plain);
        let out: &[u8] = match &self.gate.keys {
            None => &self.plain,
            Some(keys) => {
                let mut nonce = [0u8; NONCE_LEN];
                self.rng
                    .fill(&mut nonce)
                    .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
                self.sealed.clear();
                keys.seal(
                    &self.gate.context,
                    now_ms(),
                    nonce,
                    &self.plain,
                    &mut self.sealed,
                );
                &self.sealed
            }
        };
        if out.len() > MAX_DATAGRAM {
            // chitchat sized the message for a bare datagram; with the seal it no longer
            // fits. Our state (a few keys per node) never comes near; say so if it does.
            warn!(bytes = out.len(), to = %to, "gossip message too large to send sealed; dropped");
            return Ok(());
        }
        self.socket
            .send_to(out, to)
            .await
            .map_err(|e| anyhow::anyhow!("gossip send to {to}: {e}"))?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv[..]).await {
                Ok(r) => r,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(anyhow::anyhow!("gossip socket failed: {e}")),
            };
            if len > MAX_DATAGRAM {
                continue;
            }
            match self
                .gate
                .accept(&mut self.recv[..len], now_ms(), Instant::now())
            {
                Ok(message) => return Ok((from, message)),
                Err(reason) => {
                    debug!(from = %from, bytes = len, reason = reason.as_str(), "gossip datagram dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::gossip::seal::KEY_LEN;

    fn cfg(keys: &[[u8; KEY_LEN]]) -> SealedUdp {
        SealedUdp {
            keys: Some(Arc::new(KeyRing::new(keys).unwrap())),
            context: b"traceo".to_vec(),
            replay_window: Duration::from_secs(30),
            node_ttl: Duration::from_secs(60),
            me: ("self".into(), 1),
        }
    }

    /// A SYN naming `nodes` in its digest, in chitchat 0.10's format (magic, version 0,
    /// type 0, digest, cluster id), as any peer could write it.
    fn syn(nodes: &[String]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&45_139u16.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(nodes.len() as u16).to_le_bytes());
        for n in nodes {
            b.extend_from_slice(&(n.len() as u16).to_le_bytes());
            b.extend_from_slice(n.as_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
            b.extend_from_slice(&[4, 127, 0, 0, 1]);
            b.extend_from_slice(&7946u16.to_le_bytes());
            b.extend_from_slice(&[0; 24]);
        }
        b.extend_from_slice(&6u16.to_le_bytes());
        b.extend_from_slice(b"traceo");
        b
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("node-{i}")).collect()
    }

    /// An ACK whose delta sets the max version of node `id` (generation 1).
    fn ack_about(id: &str, max_version: u64) -> Vec<u8> {
        let mut ops = vec![0u8];
        ops.extend_from_slice(&(id.len() as u16).to_le_bytes());
        ops.extend_from_slice(id.as_bytes());
        ops.extend_from_slice(&1u64.to_le_bytes());
        ops.extend_from_slice(&[4, 127, 0, 0, 1]);
        ops.extend_from_slice(&7946u16.to_le_bytes());
        ops.extend_from_slice(&[0; 16]);
        ops.push(2);
        ops.extend_from_slice(&max_version.to_le_bytes());
        let mut b = Vec::new();
        b.extend_from_slice(&45_139u16.to_le_bytes());
        b.extend_from_slice(&[0, 2, 2]);
        b.extend_from_slice(&(ops.len() as u16).to_le_bytes());
        b.extend_from_slice(&ops);
        b.push(0);
        b
    }

    #[test]
    fn a_delta_about_this_node_itself_is_refused_whoever_seals_it() {
        let c = cfg(&[[7; KEY_LEN]]);
        let mut gate = Gate::new(&c);
        let keys = c.keys.clone().unwrap();
        let now = Instant::now();
        let seal = |m: &[u8], n: u8| {
            let mut d = Vec::new();
            keys.seal(b"traceo", 1_000, [n; NONCE_LEN], m, &mut d);
            d
        };
        assert!(matches!(
            gate.accept(&mut seal(&ack_about("peer", 5), 1), 1_000, now),
            Ok(ChitchatMessage::Ack { .. })
        ));
        assert_eq!(
            gate.accept(&mut seal(&ack_about("self", 5), 2), 1_000, now)
                .unwrap_err(),
            Rejected::Invalid
        );
    }

    #[test]
    fn no_message_takes_the_fleet_past_its_node_bound_until_old_nodes_age_out() {
        let mut gate = Gate::new(&SealedUdp {
            keys: None,
            context: Vec::new(),
            replay_window: Duration::from_secs(30),
            node_ttl: Duration::from_secs(60),
            me: ("self".into(), 1),
        });
        let t0 = Instant::now();
        for chunk in 0..4 {
            let m = gate.accept(&mut syn(&names(chunk * 64..(chunk + 1) * 64)), 0, t0);
            assert!(matches!(m, Ok(ChitchatMessage::Syn { .. })), "{m:?}");
        }
        // Known nodes pass; one more new one does not.
        assert!(gate.accept(&mut syn(&names(0..10)), 0, t0).is_ok());
        assert_eq!(
            gate.accept(&mut syn(&names(256..257)), 0, t0).unwrap_err(),
            Rejected::TooManyNodes
        );
        // Once the first ones have not been named for the TTL, there is room again.
        let later = t0 + Duration::from_secs(61);
        assert!(gate
            .accept(&mut syn(&names(100..256)), 0, t0 + Duration::from_secs(30))
            .is_ok());
        assert!(gate.accept(&mut syn(&names(256..300)), 0, later).is_ok());
    }

    #[test]
    fn a_sealed_message_passes_the_gate_once_and_a_replay_is_counted_out() {
        let c = cfg(&[[7; KEY_LEN]]);
        let mut gate = Gate::new(&c);
        let keys = c.keys.clone().unwrap();
        let mut d = Vec::new();
        keys.seal(b"traceo", 1_000_000, [1; NONCE_LEN], &syn(&[]), &mut d);
        let now = Instant::now();
        let m = gate.accept(&mut d.clone(), 1_000_000, now).unwrap();
        assert!(matches!(m, ChitchatMessage::Syn { .. }), "{m:?}");
        assert_eq!(
            gate.accept(&mut d.clone(), 1_000_001, now).unwrap_err(),
            Rejected::Replayed
        );
        // A clear chitchat message, as a node without the key sends it.
        assert_eq!(
            gate.accept(&mut syn(&[]), 1_000_000, now).unwrap_err(),
            Rejected::Malformed
        );
    }

    #[test]
    fn a_gate_of_another_key_refuses_and_an_insecure_gate_still_checks() {
        let mut d = Vec::new();
        KeyRing::new(&[[8; KEY_LEN]]).unwrap().seal(
            b"traceo",
            5,
            [1; NONCE_LEN],
            &syn(&[]),
            &mut d,
        );
        let mut gate = Gate::new(&cfg(&[[7; KEY_LEN]]));
        assert_eq!(
            gate.accept(&mut d, 5, Instant::now()).unwrap_err(),
            Rejected::UnknownKey
        );
        let mut open = Gate::new(&SealedUdp {
            keys: None,
            context: Vec::new(),
            replay_window: Duration::from_secs(30),
            node_ttl: Duration::from_secs(60),
            me: ("self".into(), 1),
        });
        let m = open.accept(&mut syn(&[]), 0, Instant::now()).unwrap();
        assert!(matches!(m, ChitchatMessage::Syn { .. }), "{m:?}");
        assert_eq!(
            open.accept(&mut b"garbage".to_vec(), 0, Instant::now())
                .unwrap_err(),
            Rejected::Invalid
        );
    }
}

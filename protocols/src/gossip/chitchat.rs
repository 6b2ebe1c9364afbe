//! A check of chitchat 0.10 messages (protocol version 0) before chitchat sees them.
//!
//! chitchat trusts its peers: a delta that sets a node's max version below a key's version
//! trips an `assert!` in its state code and ends its gossip task; a SYN digest naming
//! thousands of nodes makes it track each of them (and can push its own digest past the
//! datagram size, where another assertion waits); a delta's zstd blocks decompress without
//! a total bound. Sealing keeps strangers out; this check keeps a buggy or compromised key
//! holder from stopping a node. It walks the message as chitchat's deserializer does and
//! refuses, beyond what chitchat itself refuses:
//!
//! - any shape chitchat's own serializer never writes and its state code asserts against: a
//!   `SetMaxVersion` op after key-values of the same node, below their versions;
//! - more than [`MAX_NODES`] nodes in a digest or a delta, node ids over
//!   [`MAX_NODE_ID_BYTES`];
//! - versions at or above [`MAX_VERSION`] (chitchat adds one to a node's max version when it
//!   sets a key: a peer-sent `u64::MAX` would wrap it and trip another assertion), keys over
//!   [`MAX_KEY_BYTES`], values over [`MAX_VALUE_BYTES`], more than
//!   [`MAX_KEY_VALUES_PER_NODE`] key-values for one node (so no key-value outgrows a delta
//!   and starves the nodes after it);
//! - a delta decompressing to more than [`MAX_DELTA_BYTES`];
//! - trailing bytes, unknown tags, bad UTF-8, truncation.
//!
//! It returns the nodes the message names, digest and delta apart, so the caller can bound
//! how many distinct nodes ever reach chitchat and refuse deltas about itself (chitchat
//! applies a peer's delta to its own node state too). The format is chitchat's (`message.rs`, `digest.rs`, `delta.rs`,
//! `serialize.rs` of 0.10.1): integers little-endian, strings `u16` length then UTF-8.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// chitchat's message magic number.
const MAGIC: u16 = 45_139;
/// Nodes one message may name. Every node chitchat knows rides in each of its SYN digests,
/// and a digest over about 65 400 bytes would underflow chitchat's MTU arithmetic; an entry
/// is at most 181 bytes (128-byte id), so 256 nodes take about 71% of a datagram. No gateway
/// fleet this design serves comes near.
pub const MAX_NODES: usize = 256;
/// Versions from peers stay below this, far from chitchat's `+ 1` overflow; a node would need
/// billions of updates a second for centuries to reach it.
pub const MAX_VERSION: u64 = 1 << 62;
/// Longest key: ours are `upstream.<name>.health`.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value: ours are `<health> <count>`.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Key-values of one node in one delta.
pub const MAX_KEY_VALUES_PER_NODE: usize = 1024;
/// Longest node id. `cluster.node_id` is refused above it at config load.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Most bytes a delta may decompress to: far above what chitchat's MTU-bound deltas of this
/// gateway's few keys per node reach, far below what zstd blocks in one datagram could claim.
pub const MAX_DELTA_BYTES: usize = 4 << 20;
/// The most one zstd block decompresses to, as chitchat's reader allows.
const BLOCK_MAX: usize = u16::MAX as usize;

/// A node a message names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    /// `node_id`.
    pub node_id: String,
    /// Generation (a restart makes a new one).
    pub generation: u64,
    /// Gossip address it advertises.
    pub addr: SocketAddr,
}

/// What was wrong with a message. Never shown to the sender; logged at debug level and
/// counted as `invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The message ended early.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Not chitchat's magic number or version 0.
    #[error("not a chitchat v0 message")]
    NotChitchat,
    /// An unknown message type, op tag, block type, IP version or deletion status.
    #[error("unknown {what} {value} at byte {at}")]
    Unknown {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u8,
        /// Where.
        at: usize,
    },
    /// A string that is not UTF-8.
    #[error("a string that is not UTF-8 at byte {0}")]
    Utf8(usize),
    /// Bytes after the message.
    #[error("{0} bytes after the message")]
    Trailing(usize),
    /// More than [`MAX_NODES`].
    #[error("{0} nodes named, over {MAX_NODES}")]
    TooManyNodes(usize),
    /// A node id over [`MAX_NODE_ID_BYTES`].
    #[error("a node id of {0} bytes, over {MAX_NODE_ID_BYTES}")]
    NodeIdTooLong(usize),
    /// A delta over [`MAX_DELTA_BYTES`] once decompressed, or a block that does not
    /// decompress within one block's bound.
    #[error("a delta block that does not decompress within the bounds")]
    Decompression,
    /// Ops in an order chitchat would refuse or assert on.
    #[error("delta op order: {0}")]
    OpOrder(&'static str),
    /// The same node twice in one delta.
    #[error("node {0:?} twice in one delta")]
    DuplicateNode(String),
    /// A version at or above [`MAX_VERSION`].
    #[error("a version of {0}, at or above the bound")]
    Version(u64),
    /// A key, a value or a node's key-values over their bounds.
    #[error("{0} over its bound")]
    TooLarge(&'static str),
}

/// What a message names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    /// Nodes of its digest (SYN, SYN-ACK).
    pub digest: Vec<NodeRef>,
    /// Nodes its delta carries state of (SYN-ACK, ACK).
    pub delta: Vec<NodeRef>,
}

impl Named {
    /// Every node named, once.
    pub fn all(&self) -> Vec<NodeRef> {
        let mut all: Vec<NodeRef> = self.digest.iter().chain(&self.delta).cloned().collect();
        all.sort();
        all.dedup();
        all
    }
}

fn version(v: u64) -> Result<u64, Invalid> {
    if v >= MAX_VERSION {
        Err(Invalid::Version(v))
    } else {
        Ok(v)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self.at.checked_add(n).ok_or(Invalid::Truncated(self.at))?;
        let Some(bytes) = self.buf.get(self.at..end) else {
            return Err(Invalid::Truncated(self.at));
        };
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, Invalid> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<&'a str, Invalid> {
        let len = self.u16()? as usize;
        let at = self.at;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| Invalid::Utf8(at))
    }

    fn addr(&mut self) -> Result<SocketAddr, Invalid> {
        let at = self.at;
        let ip = match self.u8()? {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            value => {
                return Err(Invalid::Unknown {
                    what: "IP version",
                    value,
                    at,
                })
            }
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn node(&mut self) -> Result<NodeRef, Invalid> {
        let node_id = self.string()?;
        if node_id.len() > MAX_NODE_ID_BYTES {
            return Err(Invalid::NodeIdTooLong(node_id.len()));
        }
        let generation = self.u64()?;
        let addr = self.addr()?;
        Ok(NodeRef {
            node_id: node_id.to_string(),
            generation,
            addr,
        })
    }

    fn done(&self) -> Result<(), Invalid> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(Invalid::Trailing(n)),
        }
    }
}

/// Checks one chitchat message; on success, the nodes it names.
pub fn check_message(message: &[u8]) -> Result<Named, Invalid> {
    let mut r = Reader::new(message);
    if r.u16()? != MAGIC || r.u8()? != 0 {
        return Err(Invalid::NotChitchat);
    }
    let at = r.at;
    let mut named = Named::default();
    match r.u8()? {
        // SYN: digest, cluster id.
        0 => {
            digest(&mut r, &mut named.digest)?;
            r.string()?;
        }
        // SYN-ACK: digest, delta.
        1 => {
            digest(&mut r, &mut named.digest)?;
            delta(&mut r, &mut named.delta)?;
        }
        // ACK: delta.
        2 => delta(&mut r, &mut named.delta)?,
        // BadCluster.
        3 => {}
        value => {
            return Err(Invalid::Unknown {
                what: "message type",
                value,
                at,
            })
        }
    }
    r.done()?;
    let all = named.all().len();
    if all > MAX_NODES {
        return Err(Invalid::TooManyNodes(all));
    }
    Ok(named)
}

fn digest(r: &mut Reader<'_>, nodes: &mut Vec<NodeRef>) -> Result<(), Invalid> {
    let count = r.u16()? as usize;
    if count > MAX_NODES {
        return Err(Invalid::TooManyNodes(count));
    }
    for _ in 0..count {
        nodes.push(r.node()?);
        // Heartbeat, last GC version, max version.
        r.u64()?;
        version(r.u64()?)?;
        version(r.u64()?)?;
    }
    Ok(())
}

/// The delta's block stream, decompressed within [`MAX_DELTA_BYTES`], then its ops.
fn delta(r: &mut Reader<'_>, nodes: &mut Vec<NodeRef>) -> Result<(), Invalid> {
    let mut data = Vec::new();
    // Only deltas with a compressed block need the 64 KiB scratch; most gossip carries none.
    let mut block: Vec<u8> = Vec::new();
    loop {
        let at = r.at;
        match r.u8()? {
            0 => break,
            1 => {
                let len = r.u16()? as usize;
                let compressed = r.take(len)?;
                if block.is_empty() {
                    block = vec![0u8; BLOCK_MAX];
                }
                let n = zstd::bulk::decompress_to_buffer(compressed, &mut block[..])
                    .map_err(|_| Invalid::Decompression)?;
                if data.len() + n > MAX_DELTA_BYTES {
                    return Err(Invalid::Decompression);
                }
                data.extend_from_slice(&block[..n]);
            }
            2 => {
                let len = r.u16()? as usize;
                let raw = r.take(len)?;
                if data.len() + len > MAX_DELTA_BYTES {
                    return Err(Invalid::Decompression);
                }
                data.extend_from_slice(raw);
            }
            value => {
                return Err(Invalid::Unknown {
                    what: "block type",
                    value,
                    at,
                })
            }
        }
    }
    ops(&data, nodes)
}

/// Where a node's ops stand while walking a delta.
struct Current {
    max_version: u64,
    has_key_values: bool,
    key_values: usize,
}

fn ops(data: &[u8], nodes: &mut Vec<NodeRef>) -> Result<(), Invalid> {
    let mut r = Reader::new(data);
    let mut seen = std::collections::HashSet::new();
    let mut current: Option<Current> = None;
    while r.at < data.len() {
        let at = r.at;
        match r.u8()? {
            // Node: id, last GC version, from version (excluded).
            0 => {
                let node = r.node()?;
                version(r.u64()?)?;
                version(r.u64()?)?;
                if !seen.insert(node.clone()) {
                    return Err(Invalid::DuplicateNode(node.node_id));
                }
                if seen.len() > MAX_NODES {
                    return Err(Invalid::TooManyNodes(seen.len()));
                }
                nodes.push(node);
                current = Some(Current {
                    max_version: 0,
                    has_key_values: false,
                    key_values: 0,
                });
            }
            // Key-value: key, value, version, deletion status.
            1 => {
                let Some(c) = current.as_mut() else {
                    return Err(Invalid::OpOrder("a key-value before any node"));
                };
                if r.string()?.len() > MAX_KEY_BYTES {
                    return Err(Invalid::TooLarge("a key"));
                }
                if r.string()?.len() > MAX_VALUE_BYTES {
                    return Err(Invalid::TooLarge("a value"));
                }
                c.key_values += 1;
                if c.key_values > MAX_KEY_VALUES_PER_NODE {
                    return Err(Invalid::TooLarge("a node's key-values"));
                }
                let version = version(r.u64()?)?;
                let status_at = r.at;
                let status = r.u8()?;
                if status > 2 {
                    return Err(Invalid::Unknown {
                        what: "deletion status",
                        value: status,
                        at: status_at,
                    });
                }
                if version <= c.max_version {
                    return Err(Invalid::OpOrder("key-value versions must increase"));
                }
                c.max_version = version;
                c.has_key_values = true;
            }
            // SetMaxVersion: chitchat writes it only for a node without key-values.
            2 => {
                let Some(c) = current.as_mut() else {
                    return Err(Invalid::OpOrder("a max version before any node"));
                };
                let max_version = version(r.u64()?)?;
                if c.has_key_values {
                    return Err(Invalid::OpOrder(
                        "a max version after key-values of the same node",
                    ));
                }
                c.max_version = max_version;
            }
            value => {
                return Err(Invalid::Unknown {
                    what: "delta op",
                    value,
                    at,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer of chitchat v0 messages, written from the format the module docs describe, to
    /// build the shapes a peer could send.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn header(ty: u8) -> W {
            let mut w = W::default();
            w.0.extend_from_slice(&MAGIC.to_le_bytes());
            w.0.push(0);
            w.0.push(ty);
            w
        }
        fn u16(&mut self, v: u16) -> &mut W {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut W {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn s(&mut self, v: &str) -> &mut W {
            self.u16(v.len() as u16);
            self.0.extend_from_slice(v.as_bytes());
            self
        }
        fn node(&mut self, id: &str) -> &mut W {
            self.s(id).u64(1);
            self.0.extend_from_slice(&[4, 127, 0, 0, 1]);
            self.u16(7946)
        }
    }

    fn op_node(ops: &mut W, id: &str) {
        ops.0.push(0);
        ops.node(id).u64(0).u64(0);
    }

    fn op_kv(ops: &mut W, key: &str, version: u64) {
        ops.0.push(1);
        ops.s(key).s("up 1").u64(version);
        ops.0.push(0);
    }

    fn op_max(ops: &mut W, version: u64) {
        ops.0.push(2);
        ops.u64(version);
    }

    /// An ACK carrying `ops` in one uncompressed block.
    fn ack(ops: &W) -> Vec<u8> {
        let mut w = W::header(2);
        w.0.push(2);
        w.u16(ops.0.len() as u16);
        w.0.extend_from_slice(&ops.0);
        w.0.push(0);
        w.0
    }

    #[test]
    fn a_well_formed_syn_and_ack_pass_and_name_their_nodes() {
        let mut syn = W::header(0);
        syn.u16(2).node("a").u64(1).u64(0).u64(3);
        syn.node("b").u64(1).u64(0).u64(3);
        syn.s("traceo");
        let named = check_message(&syn.0).unwrap();
        assert_eq!(
            named
                .digest
                .iter()
                .map(|n| n.node_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(named.delta.is_empty());

        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_kv(&mut ops, "upstream.x.health", 1);
        op_kv(&mut ops, "upstream.y.health", 2);
        op_node(&mut ops, "b");
        op_max(&mut ops, 5);
        assert_eq!(check_message(&ack(&ops)).unwrap().delta.len(), 2);
    }

    #[test]
    fn versions_near_overflow_and_oversized_keys_or_values_are_refused() {
        // SetMaxVersion(u64::MAX) on a node without key-values: chitchat would wrap its next
        // version to 0 and trip `assert!(version > self.max_version)`.
        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_max(&mut ops, u64::MAX);
        assert_eq!(check_message(&ack(&ops)), Err(Invalid::Version(u64::MAX)));
        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_kv(&mut ops, &"k".repeat(MAX_KEY_BYTES + 1), 1);
        assert_eq!(check_message(&ack(&ops)), Err(Invalid::TooLarge("a key")));
        let mut syn = W::header(0);
        syn.u16(1).node("a").u64(1).u64(0).u64(MAX_VERSION);
        syn.s("traceo");
        assert_eq!(check_message(&syn.0), Err(Invalid::Version(MAX_VERSION)));
    }

    #[test]
    fn a_max_version_below_the_keys_of_its_node_is_refused() {
        // The shape that tripped chitchat's `assert!(node_delta.max_version >= ...)`.
        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_kv(&mut ops, "upstream.x.health", 10);
        op_max(&mut ops, 1);
        assert_eq!(
            check_message(&ack(&ops)),
            Err(Invalid::OpOrder(
                "a max version after key-values of the same node"
            ))
        );
    }

    #[test]
    fn out_of_order_and_orphan_ops_are_refused() {
        let mut ops = W::default();
        op_kv(&mut ops, "k", 1);
        assert!(matches!(
            check_message(&ack(&ops)),
            Err(Invalid::OpOrder(_))
        ));
        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_kv(&mut ops, "k", 2);
        op_kv(&mut ops, "k2", 2);
        assert!(matches!(
            check_message(&ack(&ops)),
            Err(Invalid::OpOrder(_))
        ));
        let mut ops = W::default();
        op_node(&mut ops, "a");
        op_node(&mut ops, "a");
        assert!(matches!(
            check_message(&ack(&ops)),
            Err(Invalid::DuplicateNode(_))
        ));
    }

    #[test]
    fn a_digest_naming_too_many_nodes_or_a_long_id_is_refused() {
        let mut syn = W::header(0);
        syn.u16((MAX_NODES + 1) as u16);
        for i in 0..=MAX_NODES {
            syn.node(&format!("n{i}")).u64(1).u64(0).u64(1);
        }
        syn.s("traceo");
        assert!(matches!(
            check_message(&syn.0),
            Err(Invalid::TooManyNodes(_))
        ));
        let mut syn = W::header(0);
        syn.u16(1)
            .node(&"x".repeat(MAX_NODE_ID_BYTES + 1))
            .u64(1)
            .u64(0)
            .u64(1);
        syn.s("traceo");
        assert!(matches!(
            check_message(&syn.0),
            Err(Invalid::NodeIdTooLong(_))
        ));
    }

    #[test]
    fn truncation_trailing_bytes_and_unknown_tags_are_refused_at_every_cut() {
        let mut syn = W::header(0);
        syn.u16(1).node("a").u64(1).u64(0).u64(3);
        syn.s("traceo");
        let good = syn.0.clone();
        for cut in 0..good.len() {
            assert!(check_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(check_message(&long), Err(Invalid::Trailing(1)));
        let mut bad = good;
        bad[3] = 9;
        assert!(matches!(check_message(&bad), Err(Invalid::Unknown { .. })));
    }

    #[test]
    fn a_delta_decompressing_past_the_bound_is_refused() {
        // Zero bytes compress to almost nothing: many such blocks in one datagram.
        let block = zstd::bulk::compress(&vec![0u8; BLOCK_MAX], 3).unwrap();
        let mut w = W::header(2);
        for _ in 0..(MAX_DELTA_BYTES / BLOCK_MAX + 2) {
            w.0.push(1);
            w.u16(block.len() as u16);
            w.0.extend_from_slice(&block);
        }
        w.0.push(0);
        assert!(w.0.len() < 65_507, "fits one datagram: {}", w.0.len());
        assert_eq!(check_message(&w.0), Err(Invalid::Decompression));
    }
}

//! Sealed datagrams: what travels between gateway nodes is encrypted and authenticated with
//! a key of the fleet's key ring (ChaCha20-Poly1305 from `ring`, the crypto provider the TLS
//! listeners already use, so no second crypto library enters the tree).
//!
//! Layout of a sealed datagram, version 1:
//!
//! ```text
//! version u8 = 1 | key id [8] | nonce [12] | ciphertext of (sent_at_ms u64 BE | payload) | tag [16]
//! ```
//!
//! The key id is the first 8 bytes of SHA-256 over a domain string and the key, so a receiver
//! picks the key without trying each one and a log can name a key without showing it. The
//! associated data is the header (version, key id, nonce) followed by the caller's context
//! (the cluster id), so a datagram sealed for one fleet does not open in another that happens
//! to share a key. The send time rides inside the ciphertext: [`ReplayGuard`] refuses
//! datagrams outside its window and any nonce it already saw inside it.
//!
//! Nonces are random (the caller draws them: this crate does no I/O). At 96 bits, a collision
//! needs on the order of 2^48 datagrams under one key; a fleet gossiping a few hundred
//! datagrams a second is nowhere near, and rotating keys (see the key ring) resets the count.

use std::collections::{HashSet, VecDeque};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

/// Bytes of a gossip key.
pub const KEY_LEN: usize = 32;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;
/// The sealed-datagram format this code writes and reads.
pub const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const TIME_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Bytes sealing adds to a payload.
pub const OVERHEAD: usize = HEADER_LEN + TIME_LEN + TAG_LEN;
/// Keys a ring may hold: a primary and the older keys of a rotation still in progress.
/// memberlist allows any number; two or three are all a rotation needs, and each extra key is
/// one more secret that opens datagrams, so the ring stays small.
pub const MAX_KEYS: usize = 8;
/// Domain separation for key ids, so an id is never a hash some other protocol also uses.
const KEY_ID_DOMAIN: &[u8] = b"traceo-gossip-key-id-v1";

/// A key id: safe to log, names which key sealed a datagram.
pub type KeyId = [u8; KEY_ID_LEN];

/// Why a key ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No key at all.
    #[error("no key: a key ring needs at least one key (the first one seals)")]
    Empty,
    /// More than [`MAX_KEYS`].
    #[error("{0} keys: at most {MAX_KEYS} (a primary and the older keys of a rotation)")]
    TooMany(usize),
    /// A line that is neither 64 hex digits nor base64 of 32 bytes.
    #[error("line {line}: not a key (64 hex digits, or base64 of {KEY_LEN} bytes, as `openssl rand -base64 32` prints)")]
    NotAKey {
        /// 1-based line number.
        line: usize,
    },
    /// The same key twice.
    #[error("line {line}: the same key as line {first}")]
    Duplicate {
        /// 1-based line of the repeat.
        line: usize,
        /// 1-based line of the first.
        first: usize,
    },
    /// An all-zero key: what an empty or truncated secret often decodes to.
    #[error("line {line}: an all-zero key is not a secret")]
    Zero {
        /// 1-based line number.
        line: usize,
    },
}

struct RingKey {
    id: KeyId,
    key: LessSafeKey,
}

/// The fleet's gossip keys: the first seals, every one opens. Rotation, node by node: add the
/// new key second on every node, then make it first on every node, then drop the old one;
/// at each step every pair of nodes shares a key the other accepts, so the fleet never splits.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes: only their ids.
        f.debug_struct("KeyRing").field("ids", &self.ids()).finish()
    }
}

/// The id of `key`.
pub fn key_id(key: &[u8; KEY_LEN]) -> KeyId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(KEY_ID_DOMAIN);
    ctx.update(key);
    let digest = ctx.finish();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    id
}

/// Lower-case hex of a key id, as logs and `/api/v1/status` show it.
pub fn key_id_hex(id: &KeyId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str) -> Option<[u8; KEY_LEN]> {
    use base64::Engine as _;
    let mut key = [0u8; KEY_LEN];
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(key);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    (bytes.len() == KEY_LEN).then(|| {
        key.copy_from_slice(&bytes);
        key
    })
}

impl KeyRing {
    /// A ring of `keys`, the first sealing.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany(keys.len()));
        }
        let mut ring_keys: Vec<RingKey> = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if k.iter().all(|&b| b == 0) {
                return Err(KeyError::Zero { line: i + 1 });
            }
            let id = key_id(k);
            if let Some(first) = ring_keys.iter().position(|r| r.id == id) {
                return Err(KeyError::Duplicate {
                    line: i + 1,
                    first: first + 1,
                });
            }
            let unbound =
                UnboundKey::new(&CHACHA20_POLY1305, k).expect("a 32-byte key fits ChaCha20");
            ring_keys.push(RingKey {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        Ok(KeyRing { keys: ring_keys })
    }

    /// Parses a key file: one key per line, 64 hex digits or base64 of 32 bytes; blank lines
    /// and lines starting with `#` are ignored; the first key seals. Errors name the line,
    /// never its content.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys = Vec::new();
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_key(line).ok_or(KeyError::NotAKey { line: i + 1 })?;
            keys.push(key);
            lines.push(i + 1);
        }
        KeyRing::new(&keys).map_err(|e| match e {
            // Report file lines, not positions among the keys.
            KeyError::Duplicate { line, first } => KeyError::Duplicate {
                line: lines[line - 1],
                first: lines[first - 1],
            },
            KeyError::Zero { line } => KeyError::Zero {
                line: lines[line - 1],
            },
            other => other,
        })
    }

    /// The ids of the keys, primary first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| key_id_hex(&k.id)).collect()
    }

    /// The id of the sealing key.
    pub fn primary(&self) -> KeyId {
        self.keys[0].id
    }

    /// Appends to `out` the sealed datagram of `payload`, sent at `sent_at_ms`, under the
    /// primary key and `nonce`, bound to `context`.
    pub fn seal(
        &self,
        context: &[u8],
        sent_at_ms: u64,
        nonce: [u8; NONCE_LEN],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        let key = &self.keys[0];
        let start = out.len();
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.extend_from_slice(&sent_at_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
        aad.extend_from_slice(&out[start..body]);
        aad.extend_from_slice(context);
        let (_, plain) = out.split_at_mut(body);
        let tag = key
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), plain)
            .expect("ChaCha20-Poly1305 seals any payload under 256 GiB");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed datagram in place, bound to `context`. The payload it returns borrows
    /// `datagram`, which is left decrypted.
    pub fn open<'a>(&self, context: &[u8], datagram: &'a mut [u8]) -> Result<Opened<'a>, Rejected> {
        if datagram.len() < OVERHEAD {
            return Err(Rejected::Malformed);
        }
        if datagram[0] != VERSION {
            return Err(Rejected::Malformed);
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&datagram[1..1 + KEY_ID_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[1 + KEY_ID_LEN..HEADER_LEN]);
        let Some(key) = self.keys.iter().find(|k| k.id == id) else {
            return Err(Rejected::UnknownKey);
        };
        let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
        aad.extend_from_slice(&datagram[..HEADER_LEN]);
        aad.extend_from_slice(context);
        let (_, sealed) = datagram.split_at_mut(HEADER_LEN);
        let plain = key
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), sealed)
            .map_err(|_| Rejected::Forged)?;
        let (time, payload) = plain.split_at(TIME_LEN);
        let mut t = [0u8; TIME_LEN];
        t.copy_from_slice(time);
        Ok(Opened {
            key: id,
            nonce,
            sent_at_ms: u64::from_be_bytes(t),
            payload,
        })
    }
}

/// An opened datagram.
#[derive(Debug)]
pub struct Opened<'a> {
    /// Which key sealed it.
    pub key: KeyId,
    /// Its nonce.
    pub nonce: [u8; NONCE_LEN],
    /// When its sender sealed it, by the sender's clock (ms since the Unix epoch).
    pub sent_at_ms: u64,
    /// What was sealed.
    pub payload: &'a [u8],
}

/// Why a datagram was dropped; [`Rejected::as_str`] is the `reason` label of the rejected
/// packets metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Too short, or not version 1 of this format.
    #[error("not a sealed gossip datagram")]
    Malformed,
    /// Sealed with a key this node does not hold.
    #[error("sealed with a key this node does not hold")]
    UnknownKey,
    /// Failed authentication: altered, or sealed for another cluster.
    #[error("failed authentication")]
    Forged,
    /// Sent outside the replay window (or the clocks are that far apart).
    #[error("sent outside the replay window")]
    Stale,
    /// A nonce already seen inside the window.
    #[error("a replay of a datagram already received")]
    Replayed,
    /// Authentic, but not a gossip message this node accepts.
    #[error("authentic, but an invalid gossip message")]
    Invalid,
    /// Authentic and valid, but it would take the fleet past its node limit.
    #[error("it names more nodes than the fleet may hold")]
    TooManyNodes,
}

impl Rejected {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [Rejected; 7] = [
        Rejected::Malformed,
        Rejected::UnknownKey,
        Rejected::Forged,
        Rejected::Stale,
        Rejected::Replayed,
        Rejected::Invalid,
        Rejected::TooManyNodes,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::UnknownKey => "unknown_key",
            Rejected::Forged => "forged",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
            Rejected::Invalid => "invalid",
            Rejected::TooManyNodes => "too_many_nodes",
        }
    }
}

/// Nonces seen inside the replay window, to refuse a datagram received twice.
///
/// Entries leave once older than the window; the set is also capped at `capacity`, oldest
/// first, so memory is bounded whatever the rate (only authenticated datagrams enter it, so
/// only a key holder could push it to the cap).
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<(KeyId, [u8; NONCE_LEN])>,
    order: VecDeque<(u64, KeyId, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// A guard accepting datagrams sent within `window_ms` of the receiver's clock, either way,
    /// remembering at most `capacity` nonces.
    pub fn new(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Accepts `opened` at `now_ms` once: a second time, or outside the window, it is refused.
    pub fn admit(&mut self, opened: &Opened<'_>, now_ms: u64) -> Result<(), Rejected> {
        if opened.sent_at_ms.saturating_add(self.window_ms) < now_ms
            || opened.sent_at_ms > now_ms.saturating_add(self.window_ms)
        {
            return Err(Rejected::Stale);
        }
        while let Some(&(at, id, nonce)) = self.order.front() {
            if at.saturating_add(self.window_ms) >= now_ms && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&(id, nonce));
        }
        if !self.seen.insert((opened.key, opened.nonce)) {
            return Err(Rejected::Replayed);
        }
        self.order
            .push_back((opened.sent_at_ms, opened.key, opened.nonce));
        Ok(())
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];

    fn sealed(ring: &KeyRing, context: &[u8], at: u64, nonce: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ring.seal(context, at, [nonce; 12], payload, &mut out);
        out
    }

    #[test]
    fn a_sealed_datagram_opens_with_any_ring_holding_its_key() {
        let one = KeyRing::new(&[K1]).unwrap();
        let both = KeyRing::new(&[K2, K1]).unwrap();
        let mut d = sealed(&one, b"traceo", 7, 9, b"hello");
        assert_eq!(d.len(), OVERHEAD + 5);
        let opened = both.open(b"traceo", &mut d).unwrap();
        assert_eq!(opened.payload, b"hello");
        assert_eq!(opened.sent_at_ms, 7);
        assert_eq!(opened.key, key_id(&K1));
    }

    #[test]
    fn a_datagram_without_a_known_key_or_altered_or_for_another_cluster_does_not_open() {
        let one = KeyRing::new(&[K1]).unwrap();
        let other = KeyRing::new(&[K2]).unwrap();
        let d = sealed(&one, b"traceo", 7, 9, b"hello");
        assert_eq!(
            other.open(b"traceo", &mut d.clone()).unwrap_err(),
            Rejected::UnknownKey
        );
        assert_eq!(
            one.open(b"other-fleet", &mut d.clone()).unwrap_err(),
            Rejected::Forged
        );
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x40;
            let err = one.open(b"traceo", &mut bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Rejected::Forged | Rejected::UnknownKey | Rejected::Malformed
                ),
                "byte {i}: {err:?}"
            );
        }
        assert_eq!(
            one.open(b"traceo", &mut d[..OVERHEAD - 1].to_vec())
                .unwrap_err(),
            Rejected::Malformed
        );
    }

    #[test]
    fn the_replay_guard_refuses_repeats_and_datagrams_outside_its_window() {
        let ring = KeyRing::new(&[K1]).unwrap();
        let mut guard = ReplayGuard::new(1_000, 100);
        let mut a = sealed(&ring, b"c", 10_000, 1, b"x");
        let opened = ring.open(b"c", &mut a).unwrap();
        assert_eq!(guard.admit(&opened, 10_500), Ok(()));
        assert_eq!(guard.admit(&opened, 10_600), Err(Rejected::Replayed));
        assert_eq!(guard.admit(&opened, 11_001), Err(Rejected::Stale));
        let mut future = sealed(&ring, b"c", 20_000, 2, b"x");
        let opened = ring.open(b"c", &mut future).unwrap();
        assert_eq!(guard.admit(&opened, 18_000), Err(Rejected::Stale));
    }

    #[test]
    fn the_replay_guard_stays_within_its_capacity() {
        let ring = KeyRing::new(&[K1]).unwrap();
        let mut guard = ReplayGuard::new(60_000, 16);
        for n in 0..200u8 {
            let mut d = Vec::new();
            let mut nonce = [0u8; 12];
            nonce[0] = n;
            ring.seal(b"c", 1_000, nonce, b"x", &mut d);
            let opened = ring.open(b"c", &mut d).unwrap();
            guard.admit(&opened, 1_000).unwrap();
            assert!(guard.len() <= 16);
        }
    }

    #[test]
    fn key_files_take_hex_and_base64_and_name_the_bad_line_without_its_content() {
        let hex = "01".repeat(32);
        let b64 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
        let ring = KeyRing::parse(&format!("# rotation\n{b64}\n\n{hex}\n")).unwrap();
        assert_eq!(
            ring.ids(),
            vec![key_id_hex(&key_id(&K2)), key_id_hex(&key_id(&K1))]
        );
        let err = KeyRing::parse(&format!("{hex}\nsecret-ish\n")).unwrap_err();
        assert_eq!(err, KeyError::NotAKey { line: 2 });
        assert!(!err.to_string().contains("secret-ish"));
        assert_eq!(
            KeyRing::parse(&format!("{hex}\n# x\n{hex}\n")).unwrap_err(),
            KeyError::Duplicate { line: 3, first: 1 }
        );
        assert_eq!(
            KeyRing::parse(&"0".repeat(64)).unwrap_err(),
            KeyError::Zero { line: 1 }
        );
        assert_eq!(KeyRing::parse("# none\n").unwrap_err(), KeyError::Empty);
        assert!(!format!("{ring:?}").contains(&hex));
    }
}

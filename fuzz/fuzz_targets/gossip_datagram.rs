//! Gossip datagrams as a node receives them: opened with a two-key ring, passed through the
//! replay guard, checked, and, when the check passes, handed to chitchat's own deserializer
//! (the gateway's transport does exactly this before chitchat applies a message). Nothing may
//! panic. The input is also sealed as a key holder would send it: it must open to itself, and
//! one flipped bit anywhere must stop it opening.
#![no_main]

use chitchat::{ChitchatMessage, Deserializable};
use libfuzzer_sys::fuzz_target;
use protocols::gossip::chitchat::check_message;
use protocols::gossip::seal::{KeyRing, ReplayGuard};

fn received(payload: &[u8]) {
    if check_message(payload).is_ok() {
        let mut cursor = payload;
        let _ = ChitchatMessage::deserialize(&mut cursor);
    }
}

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::new(&[[7u8; 32], [9u8; 32]]).expect("two distinct non-zero keys");
    let mut guard = ReplayGuard::new(30_000, 64);

    // From the network: anything at all.
    let mut datagram = data.to_vec();
    if let Ok(opened) = ring.open(b"traceo", &mut datagram) {
        let _ = guard.admit(&opened, opened.sent_at_ms);
        received(opened.payload);
    }
    // From a key holder: the input as the chitchat message inside.
    received(data);
    let mut sealed = Vec::new();
    ring.seal(b"traceo", 1_000, [3; 12], data, &mut sealed);
    let mut copy = sealed.clone();
    let opened = ring
        .open(b"traceo", &mut copy)
        .expect("what is sealed opens");
    assert_eq!(opened.payload, data);
    if !sealed.is_empty() {
        let i = data.len() % sealed.len();
        sealed[i] ^= 0x01;
        assert!(
            ring.open(b"traceo", &mut sealed).is_err(),
            "a flipped bit at {i} still opened"
        );
    }
});

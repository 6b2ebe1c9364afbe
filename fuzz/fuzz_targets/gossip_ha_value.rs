//! A peer's gossiped HA pair value (`protocols::gossip::ha_pair`): any bytes are an error or
//! a value that re-encodes to itself, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::gossip::ha_pair::HaPairValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = HaPairValue::decode(text) {
        assert_eq!(HaPairValue::decode(&v.encode()), Ok(v));
    }
});

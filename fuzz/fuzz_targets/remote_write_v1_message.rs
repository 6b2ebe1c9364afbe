//! Uncompressed `WriteRequest` protobuf: skips snappy so every input exercises the parser.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use protocols::DecodeLimits;

fuzz_target!(|data: &[u8]| {
    let _ = protocols::remote_write::v1::decode_message(
        Bytes::copy_from_slice(data),
        &DecodeLimits::new_default(),
    );
});

//! Snappy block format with bounds checked before allocating.
//!
//! Remote-write bodies use the snappy *block* format (not the framed stream format). The block
//! starts with a varint of the decompressed length: we read it, compare it with the limit and
//! only then allocate exactly that many bytes.

use crate::{DecodeError, DecodeLimits};

/// The decompressed length a snappy block claims in its header, checked against the limits
/// (empty body, compressed size, decompressed size) without decompressing anything. A
/// caller with a memory budget reserves this many bytes before calling [`decompress_into`],
/// which allocates exactly this much (the block may not decompress to any other length).
pub fn decompressed_len(body: &[u8], limits: &DecodeLimits) -> Result<usize, DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::EmptyBody);
    }
    if body.len() > limits.max_compressed_bytes {
        return Err(DecodeError::CompressedTooLarge {
            size: body.len(),
            limit: limits.max_compressed_bytes,
        });
    }
    let claimed = claimed_len(body)?;
    if claimed > limits.max_decompressed_bytes as u64 {
        return Err(DecodeError::DecompressedTooLarge {
            claimed,
            limit: limits.max_decompressed_bytes,
        });
    }
    // Bounded by the limit, itself a `usize`.
    Ok(claimed as usize)
}

/// Decompresses a snappy block into `out` (cleared first, capacity reused), enforcing the
/// compressed and decompressed limits.
pub fn decompress_into(
    body: &[u8],
    limits: &DecodeLimits,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let claimed = decompressed_len(body, limits)?;
    out.clear();
    // `claimed` is bounded by the limit above, so this allocation is bounded too.
    out.resize(claimed, 0);
    let n = snap::raw::Decoder::new()
        .decompress(body, out)
        .map_err(|e| DecodeError::Snappy(e.to_string()))?;
    out.truncate(n);
    Ok(())
}

/// Decompresses a snappy block into a new buffer.
pub fn decompress(body: &[u8], limits: &DecodeLimits) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    decompress_into(body, limits, &mut out)?;
    Ok(out)
}

/// Compresses `data` as one snappy block.
pub fn compress(data: &[u8]) -> Vec<u8> {
    // Compression of an in-memory buffer only fails if the input exceeds snappy's ~4 GiB
    // block limit, which the decoded-size limits keep us far below.
    snap::raw::Encoder::new()
        .compress_vec(data)
        .expect("snappy block compression of a bounded buffer cannot fail")
}

/// A snappy block compressor for a caller that compresses one body after another (a sink
/// worker): it keeps the encoder's hash table and its output buffer between calls, so a call
/// neither allocates nor zeroes a fresh buffer of the body's maximum compressed size (that
/// memset was 5-6 % of a forwarding gateway's CPU). The buffer only grows, to the largest
/// body's bound, which the caller's batch size and the decode limits keep small.
pub struct Compressor {
    encoder: snap::raw::Encoder,
    out: Vec<u8>,
}

impl Default for Compressor {
    fn default() -> Self {
        Self {
            encoder: snap::raw::Encoder::new(),
            out: Vec::new(),
        }
    }
}

impl Compressor {
    /// Compresses `data` into one snappy block; the result lives until the next call.
    pub fn compress(&mut self, data: &[u8]) -> &[u8] {
        let need = snap::raw::max_compress_len(data.len());
        if self.out.len() < need {
            self.out.resize(need, 0);
        }
        // As in `compress`: only an input past snappy's ~4 GiB block limit fails.
        let n = self
            .encoder
            .compress(data, &mut self.out)
            .expect("snappy block compression of a bounded buffer cannot fail");
        &self.out[..n]
    }
}

/// The decompressed length a snappy block header claims (an unsigned LEB128 varint of at most
/// 32 bits, per the snappy format description).
fn claimed_len(body: &[u8]) -> Result<u64, DecodeError> {
    let mut value: u64 = 0;
    for (i, &b) in body.iter().enumerate().take(5) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if value > u64::from(u32::MAX) {
                break;
            }
            return Ok(value);
        }
    }
    Err(DecodeError::Snappy(
        "invalid decompressed-length header".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reused_compressor_gives_what_a_fresh_one_does() {
        let mut c = super::Compressor::default();
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let small = b"a short body after a long one".to_vec();
        for data in [&big, &small, &big] {
            let out = c.compress(data).to_vec();
            assert_eq!(out, super::compress(data));
            let limits = crate::DecodeLimits::new_default();
            assert_eq!(&super::decompress(&out, &limits).unwrap(), data);
        }
    }

    use super::*;

    #[test]
    fn refuses_header_claiming_4gib_before_allocating() {
        // varint 0xFFFF_FFFF followed by garbage.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x01];
        let mut out = Vec::new();
        let err = decompress_into(&body, &DecodeLimits::default(), &mut out).unwrap_err();
        assert!(
            matches!(err, DecodeError::DecompressedTooLarge { claimed, .. } if claimed == u64::from(u32::MAX))
        );
        assert_eq!(
            out.capacity(),
            0,
            "nothing may be allocated for a refused header"
        );
    }

    #[test]
    fn rejects_body_over_compressed_limit() {
        let limits = DecodeLimits {
            max_compressed_bytes: 4,
            ..DecodeLimits::default()
        };
        let err = decompress(&[1, 2, 3, 4, 5], &limits).unwrap_err();
        assert_eq!(err, DecodeError::CompressedTooLarge { size: 5, limit: 4 });
    }

    #[test]
    fn decompressed_len_is_the_header_checked_against_the_limits() {
        let data = b"abc".repeat(100);
        let body = compress(&data);
        assert_eq!(
            decompressed_len(&body, &DecodeLimits::default()).unwrap(),
            300
        );
        let limits = DecodeLimits {
            max_decompressed_bytes: 299,
            ..DecodeLimits::default()
        };
        assert_eq!(
            decompressed_len(&body, &limits).unwrap_err(),
            DecodeError::DecompressedTooLarge {
                claimed: 300,
                limit: 299
            }
        );
        assert_eq!(
            decompressed_len(&[], &limits).unwrap_err(),
            DecodeError::EmptyBody
        );
    }

    #[test]
    fn rejects_invalid_block() {
        let err = decompress(&[0x05, 0xff, 0xff], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::Snappy(_)), "{err:?}");
    }

    #[test]
    fn round_trips() {
        let data = b"hello hello hello hello".repeat(10);
        assert_eq!(
            decompress(&compress(&data), &DecodeLimits::default()).unwrap(),
            data
        );
    }
}

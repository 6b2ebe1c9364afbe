//! The one place this crate turns validated bytes into `&str` without re-checking.
//!
//! A [`crate::Batch`] validates every string field as UTF-8 once, at decode time, and keeps
//! only byte ranges. Re-validating on every access would cost as much as the decode itself on
//! the sink side, so access goes through [`str_at`]. Ranges are private to the crate and only
//! the decoder, after `std::str::from_utf8` succeeded on exactly that range, creates them.
//! Label-name ordering lives here too, as every codec sorts and merges names the same way.
#![allow(unsafe_code)]

/// A byte range into a batch's buffer, known to hold valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StrRange {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl StrRange {
    /// Validates `buf[start..end]` as UTF-8 and returns the range if it is.
    #[inline]
    pub(crate) fn validate(buf: &[u8], start: usize, end: usize) -> Option<StrRange> {
        let bytes = &buf[start..end];
        // Label values are short and almost always ASCII: the inlined word-wise ASCII check
        // is several times cheaper than a call into the general validator (profiled).
        if !bytes.is_ascii() {
            std::str::from_utf8(bytes).ok()?;
        }
        Some(StrRange {
            start: start as u32,
            end: end as u32,
        })
    }
}

/// The string at `r` in `buf`.
#[inline]
pub(crate) fn str_at(buf: &[u8], r: StrRange) -> &str {
    let bytes = &buf[r.start as usize..r.end as usize];
    debug_assert!(std::str::from_utf8(bytes).is_ok());
    // SAFETY: `StrRange` values are only built by `StrRange::validate`, which checked that
    // exactly these bytes are UTF-8, and the buffer they index is immutable (`bytes::Bytes`)
    // for the lifetime of the batch that holds both.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Byte order of two label names, as `<[u8]>::cmp`. Most neighbours differ in their first
/// eight bytes, which are compared as one big-endian word read inline; only a tie there costs
/// a `memcmp` call (which showed in the profile).
#[inline]
pub(crate) fn cmp_names(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (x, y) = (prefix_word(a), prefix_word(b));
    if x != y {
        // Keys differ at some byte: either both names have a real byte there, or the shorter
        // name ended (zero) and is a prefix of the other. Either way the order is the slices'.
        return x.cmp(&y);
    }
    a.cmp(b)
}

/// The first (up to) eight bytes of `b` as a big-endian word, zero-padded.
#[inline(always)]
fn prefix_word(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 8 {
        u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]))
    } else if n >= 4 {
        let hi = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let lo = u32::from_be_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]);
        u64::from(hi) << 32 | u64::from(lo) << (8 * (8 - n))
    } else {
        let mut w = 0u64;
        for (i, &c) in b.iter().enumerate() {
            w |= u64::from(c) << (56 - 8 * i);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_order_matches_the_slice_order() {
        let words: [&[u8]; 14] = [
            b"",
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"abcdefg",
            b"abcdefgh",
            b"abcdefghi",
            b"abcdefgi",
            b"b",
            b"\0",
            b"\0\0",
            b"abcdefgh\0",
            b"zzzzzzzzzzzzy",
        ];
        for a in words {
            for b in words {
                assert_eq!(cmp_names(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}

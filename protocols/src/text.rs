//! The one place this crate turns validated bytes into `&str` without re-checking.
//!
//! A [`crate::Batch`] validates every string field as UTF-8 once, at decode time, and keeps
//! only byte ranges. Re-validating on every access would cost as much as the decode itself on
//! the sink side, so access goes through [`str_at`]. Ranges are private to the crate and only
//! the decoder, after `std::str::from_utf8` succeeded on exactly that range, creates them.
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

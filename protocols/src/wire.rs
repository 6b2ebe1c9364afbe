//! Protobuf wire-format primitives (protobuf encoding spec: varints, tags, wire types),
//! written for a zero-copy decoder: a [`Reader`] walks a byte slice and reports offsets.

use crate::DecodeError;

pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
/// The length-delimited wire type (messages, strings, bytes, packed repeated fields).
pub const LEN: u8 = 2;
pub(crate) const FIXED32: u8 = 5;

/// A cursor over one protobuf message (or sub-message) inside a larger buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], start: usize, end: usize) -> Self {
        Self {
            buf,
            pos: start,
            end,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// The whole buffer this reader walks (offsets it reports index into it).
    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            if self.pos >= self.end {
                return Err(DecodeError::Truncated {
                    what: "varint",
                    offset: self.pos,
                });
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::Malformed {
                    what: "varint longer than 64 bits",
                    offset: self.pos - 1,
                });
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads a field key; returns (field number, wire type).
    #[inline]
    pub(crate) fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let at = self.pos;
        let k = self.varint()?;
        let field = k >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(DecodeError::Malformed {
                what: "invalid field number",
                offset: at,
            });
        }
        Ok((field as u32, (k & 7) as u8))
    }

    /// Reads a length prefix and returns the (start, end) of the delimited bytes.
    #[inline]
    pub(crate) fn len_delimited(
        &mut self,
        what: &'static str,
    ) -> Result<(usize, usize), DecodeError> {
        let len = self.varint()?;
        let start = self.pos;
        if len > (self.end - start) as u64 {
            return Err(DecodeError::Truncated {
                what,
                offset: start,
            });
        }
        self.pos = start + len as usize;
        Ok((start, self.pos))
    }

    #[inline]
    pub(crate) fn fixed64(&mut self) -> Result<u64, DecodeError> {
        if self.end - self.pos < 8 {
            return Err(DecodeError::Truncated {
                what: "fixed64",
                offset: self.pos,
            });
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.fixed64()?))
    }

    /// Skips a field of an unknown number (proto3: unknown fields are ignored).
    pub(crate) fn skip(&mut self, wire_type: u8) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.fixed64()?;
            }
            LEN => {
                self.len_delimited("skipped field")?;
            }
            FIXED32 => {
                if self.end - self.pos < 4 {
                    return Err(DecodeError::Truncated {
                        what: "fixed32",
                        offset: self.pos,
                    });
                }
                self.pos += 4;
            }
            _ => {
                return Err(DecodeError::Malformed {
                    what: "unsupported wire type (groups are not used by these schemas)",
                    offset: self.pos,
                })
            }
        }
        Ok(())
    }
}

/// One field of a protobuf message: its number, wire type, and where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field number.
    pub number: u32,
    /// Wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
    pub wire_type: u8,
    /// The whole field, key included.
    pub span: std::ops::Range<usize>,
}

/// The top-level fields of the message `buf`, in order, each checked to lie within `buf`;
/// the first malformed or truncated field ends the iteration with its error. For code that
/// copies or counts fields without decoding them (the gateway's log records).
pub fn fields(buf: &[u8]) -> impl Iterator<Item = Result<Field, DecodeError>> + '_ {
    let mut r = Reader::new(buf, 0, buf.len());
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || r.is_empty() {
            return None;
        }
        let start = r.pos;
        let field = r.key().and_then(|(number, wire_type)| {
            r.skip(wire_type)?;
            Ok(Field {
                number,
                wire_type,
                span: start..r.pos,
            })
        });
        failed = field.is_err();
        Some(field)
    })
}

pub(crate) fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn zigzag32(v: u64) -> i32 {
    zigzag64(v) as i32
}

// ---- encoding ----

#[inline]
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub(crate) fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub(crate) fn put_f64(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, FIXED64);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

pub(crate) fn put_uvarint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_varint(out, v);
}

pub(crate) fn zigzag_encode64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Writes a length-delimited sub-message whose body `f` writes; the length is patched in
/// afterwards, so the body is written once.
pub(crate) fn put_message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, field, LEN);
    // Reserve one byte for the length; most sub-messages are < 128 bytes. Longer ones shift.
    let len_pos = out.len();
    out.push(0);
    let body_start = out.len();
    f(out);
    let body_len = out.len() - body_start;
    let n = varint_len(body_len as u64);
    if n > 1 {
        out.splice(len_pos..len_pos + 1, std::iter::repeat_n(0u8, n));
    }
    // Written in place: a temporary `Vec` here was an allocation per label and per series,
    // the allocator's share of re-encoding in the profile (BENCHMARKS.md, remote-write 2.0).
    let mut v = body_len as u64;
    for b in &mut out[len_pos..len_pos + n - 1] {
        *b = (v as u8) | 0x80;
        v >>= 7;
    }
    out[len_pos + n - 1] = v as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_walks_top_level_fields_and_stops_at_the_first_bad_one() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, b"abc");
        put_uvarint_field(&mut msg, 2, 300);
        put_bytes(&mut msg, 3, b"");
        let got: Vec<Field> = fields(&msg).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got.iter()
                .map(|f| (f.number, f.wire_type))
                .collect::<Vec<_>>(),
            [(1, LEN), (2, VARINT), (3, LEN)]
        );
        assert_eq!(got[0].span, 0..5);
        assert_eq!(&msg[got[2].span.clone()], &[0x1a, 0]);
        // A length past the end is an error, and the last item.
        let mut bad = msg.clone();
        bad.extend_from_slice(&[0x0a, 0x7f, 1]);
        let all: Vec<_> = fields(&bad).collect();
        assert_eq!(all.len(), 4);
        assert!(all[3].is_err());
    }

    #[test]
    fn varint_round_trips_edges() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            let mut r = Reader::new(&out, 0, out.len());
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn rejects_overlong_varint() {
        let buf = [0xff; 11];
        let mut r = Reader::new(&buf, 0, buf.len());
        assert!(matches!(r.varint(), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            assert_eq!(zigzag64(zigzag_encode64(v)), v);
        }
    }

    #[test]
    fn put_message_patches_long_lengths() {
        let mut out = Vec::new();
        put_message(&mut out, 1, |o| o.extend_from_slice(&[7u8; 300]));
        let mut r = Reader::new(&out, 0, out.len());
        assert_eq!(r.key().unwrap(), (1, LEN));
        let (s, e) = r.len_delimited("x").unwrap();
        assert_eq!(e - s, 300);
        assert!(r.is_empty());
    }
}

//! One quarantine entry on disk: a file `{id:020}.entry` holding a magic, then one frame of
//! length + CRC32C + body, the body being the entry's fields and, last, the record bytes
//! exactly as the write-ahead log held them (also in `docs/formats.md`).
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `TRACEOQE` |
//! | 4 | body length (u32 LE) |
//! | 4 | CRC32C of the length bytes and the body (u32 LE) |
//! | 1 | body: version, 1 |
//! | 8 | when it was quarantined, ms since the epoch (u64 LE) |
//! | 8 | its sequence number in the region's log (u64 LE) |
//! | 2 + n | sink name: length (u16 LE), UTF-8 |
//! | 2 + n | reason: length (u16 LE), UTF-8 |
//! | 4 + n | the upstream's answer: length (u32 LE), UTF-8 |
//! | rest | the record |

use super::QuarantineError;
use crate::wal::MAX_RECORD_BYTES;

const MAGIC: &[u8; 8] = b"TRACEOQE";
const VERSION: u8 = 1;
/// Magic, length and CRC in front of the body.
const FILE_OVERHEAD: usize = 16;
/// The upstream's answer is kept up to this many bytes: enough for any broker or endpoint
/// message an operator reads, while a hostile endpoint cannot make entries large.
pub(crate) const MAX_ANSWER_BYTES: usize = 4096;
/// Names and reasons are the gateway's own short strings; a longer one is cut.
const MAX_NAME_BYTES: usize = 1024;
/// The largest entry file a reader accepts: a record of the log's largest size plus its
/// fields. A larger length can only be damage.
pub(crate) const MAX_ENTRY_BYTES: usize = MAX_RECORD_BYTES + 64 * 1024;

/// An entry's fields, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the region's quarantine (the file name), growing with time.
    pub id: u64,
    /// When it was quarantined, ms since the epoch.
    pub quarantined_ms: u64,
    /// Its sequence number in the region's log when it was quarantined.
    pub wal_seq: u64,
    /// The sink that refused it (or whose feeder could not read it).
    pub sink: String,
    /// Why, in a few words (see [`crate::sinks::Reason`]).
    pub reason: String,
    /// What the upstream (or the decoder) said.
    pub answer: String,
    /// The write-ahead log record, byte for byte.
    pub record: Vec<u8>,
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The file bytes of `e`.
pub(crate) fn encode(e: &Entry) -> Vec<u8> {
    let sink = cut(&e.sink, MAX_NAME_BYTES).as_bytes();
    let reason = cut(&e.reason, MAX_NAME_BYTES).as_bytes();
    let answer = cut(&e.answer, MAX_ANSWER_BYTES).as_bytes();
    let mut body =
        Vec::with_capacity(31 + sink.len() + reason.len() + answer.len() + e.record.len());
    body.push(VERSION);
    body.extend_from_slice(&e.quarantined_ms.to_le_bytes());
    body.extend_from_slice(&e.wal_seq.to_le_bytes());
    body.extend_from_slice(&(sink.len() as u16).to_le_bytes());
    body.extend_from_slice(sink);
    body.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    body.extend_from_slice(reason);
    body.extend_from_slice(&(answer.len() as u32).to_le_bytes());
    body.extend_from_slice(answer);
    body.extend_from_slice(&e.record);
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &body);
    let mut out = Vec::with_capacity(FILE_OVERHEAD + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn take<'a>(buf: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
    if buf.len() < n {
        return Err(what);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn text(bytes: &[u8], what: &'static str) -> Result<String, &'static str> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| what)
}

/// Reads the file bytes of entry `id`, checking magic, length and CRC.
pub(crate) fn decode(id: u64, file: &[u8]) -> Result<Entry, QuarantineError> {
    parse(id, file).map_err(|reason| QuarantineError::Damaged { id, reason })
}

fn parse(id: u64, file: &[u8]) -> Result<Entry, &'static str> {
    if file.len() > MAX_ENTRY_BYTES {
        return Err("entry is larger than any entry the gateway writes");
    }
    let mut buf = file;
    if take(&mut buf, 8, "magic is truncated")? != MAGIC {
        return Err("not a quarantine entry (magic)");
    }
    let len_bytes = take(&mut buf, 4, "length is truncated")?;
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    let crc = take(&mut buf, 4, "checksum is truncated")?;
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if buf.len() != len as usize {
        return Err("body length does not match the file (torn write)");
    }
    if crc32c::crc32c_append(crc32c::crc32c(len_bytes), buf) != crc {
        return Err("checksum does not match");
    }
    let version = take(&mut buf, 1, "version")?[0];
    if version != VERSION {
        return Err("entry version is not known to this gateway");
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(take(&mut buf, 8, "time is truncated")?);
    let quarantined_ms = u64::from_le_bytes(word);
    word.copy_from_slice(take(&mut buf, 8, "sequence number is truncated")?);
    let wal_seq = u64::from_le_bytes(word);
    let n = take(&mut buf, 2, "sink is truncated")?;
    let n = u16::from_le_bytes([n[0], n[1]]) as usize;
    let sink = text(take(&mut buf, n, "sink is truncated")?, "sink is not UTF-8")?;
    let n = take(&mut buf, 2, "reason is truncated")?;
    let n = u16::from_le_bytes([n[0], n[1]]) as usize;
    let reason = text(
        take(&mut buf, n, "reason is truncated")?,
        "reason is not UTF-8",
    )?;
    let n = take(&mut buf, 4, "answer is truncated")?;
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let answer = text(
        take(&mut buf, n, "answer is truncated")?,
        "answer is not UTF-8",
    )?;
    Ok(Entry {
        id,
        quarantined_ms,
        wal_seq,
        sink,
        reason,
        answer,
        record: buf.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            id: 7,
            quarantined_ms: 1_700_000_000_000,
            wal_seq: 42,
            sink: "kafka/eu".into(),
            reason: "message_too_large".into(),
            answer: "Broker: Message size too large".into(),
            record: (0..=255u8).collect(),
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let e = entry();
        assert_eq!(decode(7, &encode(&e)).unwrap(), e);
    }

    #[test]
    fn a_long_answer_is_cut_at_a_character_boundary() {
        let mut e = entry();
        e.answer = "é".repeat(MAX_ANSWER_BYTES);
        let back = decode(7, &encode(&e)).unwrap();
        assert!(back.answer.len() <= MAX_ANSWER_BYTES);
        assert!(back.answer.chars().all(|c| c == 'é'));
    }

    #[test]
    fn every_damage_is_an_error_not_a_panic() {
        let bytes = encode(&entry());
        for cut in 0..bytes.len() {
            assert!(decode(7, &bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(decode(7, &bad).is_err(), "flip at {at}");
        }
    }
}

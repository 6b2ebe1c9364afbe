//! Reading a log while its writer appends: a reader walks the segment files on disk by
//! sequence number, up to the durable end the writer publishes, so sinks never share the
//! writer's state or lock.
//!
//! Safe against the writer because records below the durable end are whole on disk and never
//! change, a new segment is created (and synced) before its first record is written, and
//! segments are deleted only once every reader is past them (see [`super::writer`]).

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{io, record_crc, segment_path, WalError, HEADER_BYTES, MAGIC, MAX_RECORD_BYTES};
use super::{RECORD_OVERHEAD, VERSION};

/// A cursor over one log's records.
pub struct WalReader {
    dir: PathBuf,
    segment: PathBuf,
    file: BufReader<File>,
    /// Offset of the next record in `segment`.
    offset: u64,
    /// Sequence number of the next record.
    next: u64,
}

/// First sequence numbers of the segments in `dir`, ascending.
pub fn segment_starts(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            starts.push(seq);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

impl WalReader {
    /// A reader whose first record is `seq`, which must be in the log (or its end).
    pub fn open(dir: &Path, seq: u64) -> Result<WalReader, WalError> {
        let starts = segment_starts(dir)?;
        let Some(&first) = starts.iter().rev().find(|&&s| s <= seq) else {
            return Err(WalError::OutOfRange {
                dir: dir.to_path_buf(),
                seq,
                first: starts.first().copied().unwrap_or(0),
                next: seq,
            });
        };
        let mut reader = Self::at_segment(dir, first)?;
        while reader.next < seq {
            if !reader.skip_one()? {
                return Err(WalError::OutOfRange {
                    dir: dir.to_path_buf(),
                    seq,
                    first,
                    next: reader.next,
                });
            }
        }
        Ok(reader)
    }

    fn at_segment(dir: &Path, first: u64) -> Result<WalReader, WalError> {
        let path = segment_path(dir, first);
        let mut file = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io(&path))?);
        let mut header = [0u8; HEADER_BYTES as usize];
        file.read_exact(&mut header).map_err(io(&path))?;
        if &header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
            return Err(WalError::Corrupt {
                path,
                seq: first,
                offset: 0,
                reason: "not a version 1 segment header",
            });
        }
        Ok(WalReader {
            dir: dir.to_path_buf(),
            segment: path,
            file,
            offset: HEADER_BYTES,
            next: first,
        })
    }

    /// The sequence number of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads a record header; `None` at the end of the segment's data.
    fn header(&mut self) -> Result<Option<(usize, u32, [u8; 4])>, WalError> {
        let mut head = [0u8; RECORD_OVERHEAD as usize];
        match self.file.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                // Back to the record boundary: a later call may find it written.
                self.file
                    .seek(SeekFrom::Start(self.offset))
                    .map_err(io(&self.segment))?;
                return Ok(None);
            }
            Err(e) => return Err(io(&self.segment)(e)),
        }
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(self.corrupt("record length is impossible"));
        }
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        Ok(Some((len, crc, len_bytes)))
    }

    fn corrupt(&self, reason: &'static str) -> WalError {
        WalError::Corrupt {
            path: self.segment.clone(),
            seq: self.next,
            offset: self.offset,
            reason,
        }
    }

    /// Moves to the segment that starts at `self.next` (the current one is exhausted).
    fn advance_segment(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.next);
        if !path.exists() {
            return Err(self.corrupt("segment ends before the log's durable end"));
        }
        *self = Self::at_segment(&self.dir.clone(), self.next)?;
        Ok(())
    }

    fn skip_one(&mut self) -> Result<bool, WalError> {
        let (len, _, _) = match self.header()? {
            Some(h) => h,
            None => {
                let path = segment_path(&self.dir, self.next);
                if !path.exists() {
                    return Ok(false);
                }
                self.advance_segment()?;
                return self.skip_one();
            }
        };
        self.file
            .seek_relative(len as i64)
            .map_err(io(&self.segment))?;
        self.offset += RECORD_OVERHEAD + len as u64;
        self.next += 1;
        Ok(true)
    }

    /// The next record as `(sequence number, payload)` if it is below `durable` (the writer's
    /// durable end), checked against its CRC. A record failing its CRC is stepped over (the
    /// error names it and [`WalReader::position`] is past it); after any other corruption
    /// the reader stays put and [`WalReader::skip_segment`] gives up the rest of the segment.
    pub fn next_record(&mut self, durable: u64) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        if self.next >= durable {
            return Ok(None);
        }
        let (len, crc, len_bytes) = match self.header()? {
            Some(h) => h,
            None => {
                self.advance_segment()?;
                return self.next_record(durable);
            }
        };
        let mut payload = vec![0u8; len];
        if let Err(e) = self.file.read_exact(&mut payload) {
            return Err(if e.kind() == ErrorKind::UnexpectedEof {
                self.corrupt("record payload is truncated below the durable end")
            } else {
                io(&self.segment)(e)
            });
        }
        let seq = self.next;
        let err = (record_crc(len_bytes, &payload) != crc)
            .then(|| self.corrupt("record checksum does not match"));
        // Its length framed it, so the reader can step over it either way.
        self.offset += RECORD_OVERHEAD + len as u64;
        self.next += 1;
        match err {
            Some(e) => Err(e),
            None => Ok(Some((seq, payload))),
        }
    }

    /// After a corrupt record: gives up the rest of its segment and goes on at the next one
    /// (if the log has one). Returns the sequence number the reader now stands at.
    pub fn skip_segment(&mut self) -> Result<u64, WalError> {
        let current = self
            .segment
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(self.next);
        match segment_starts(&self.dir)?
            .into_iter()
            .find(|&s| s > current)
        {
            Some(next) => {
                *self = Self::at_segment(&self.dir.clone(), next)?;
                Ok(next)
            }
            None => Err(self.corrupt("the corrupt record is in the last segment")),
        }
    }
}

//! The `--record-acks FILE` record: one line per request the gateway acknowledged, enough
//! for a loss test to find every acknowledged sample downstream.
//!
//! # Format (version 1)
//!
//! A UTF-8 text file, appended to (several runs may share one file). Each run first writes
//! one header line, then one line per acknowledged request, in the order the answers
//! arrived:
//!
//! ```text
//! # traceo-loadgen acks v1 protocol=rw1 url=http://127.0.0.1:8080/api/v1/write start_ms=1700000000000 seed=42
//! 0 loadgen-0 1700000000000 2000
//! 2 loadgen-2 1700000000002 2000
//! 1 loadgen-1 1700000000001 2000
//! ```
//!
//! Lines starting with `#` are comments. A record is four fields separated by one space:
//!
//! | field | meaning |
//! |---|---|
//! | `seq` | the request's id, unique within the run: request `n` of connection `c` (of `C`) is `c + n * C` |
//! | `tenant` | the tenant it was sent for (`X-Scope-OrgID`) |
//! | `timestamp_ms` | the timestamp of every sample in the request: `start_ms + seq` |
//! | `samples` | how many samples the gateway stores for it in the Prometheus model: float samples plus native histogram samples; a classic histogram counts `_bucket` per bound, `+Inf`, `_sum` and `_count`; OTLP adds the `target_info` sample of each resource |
//!
//! A request is acknowledged when the answer is 2xx (remote-write, OTLP/HTTP) or HTTP 200
//! with `grpc-status: 0` (OTLP/gRPC). With `--record-acks` every request of a run has its
//! own body, so its timestamp identifies it: downstream, the rows of `tenant` with timestamp
//! `timestamp_ms` are exactly that request's samples, `samples` of them (more if the gateway
//! delivered a request twice, which at-least-once allows). A loss test reads the file with
//! [`read`] and checks that for every record at least `samples` rows exist.
//!
//! Timestamps run from the run's start to `start_ms + requests`, up to that many
//! milliseconds in the future: runs appended to one file must start at least that far apart
//! for their timestamps not to overlap.
//!
//! Lines are buffered and flushed at least once a second and when the run ends, so a
//! process killed with SIGKILL can lose its last second of records (never invent one).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

/// The first words of the header line a run writes.
pub const HEADER: &str = "# traceo-loadgen acks v1";

/// One acknowledged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Request id, unique within the run.
    pub seq: u64,
    /// Tenant.
    pub tenant: String,
    /// Timestamp of each of its samples, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// Samples it amounts to downstream.
    pub samples: u64,
}

impl fmt::Display for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.seq, self.tenant, self.timestamp_ms, self.samples
        )
    }
}

/// A line that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("acks line {line}: {why}: {text:?}")]
pub struct ParseError {
    /// 1-based line number (0 when parsing one line alone).
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
    /// The line.
    pub text: String,
}

impl FromStr for Ack {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseError {
            line: 0,
            why,
            text: s.to_string(),
        };
        let mut f = s.split(' ');
        let (Some(seq), Some(tenant), Some(ts), Some(samples), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(err("expected 4 fields: seq tenant timestamp_ms samples"));
        };
        if tenant.is_empty() {
            return Err(err("empty tenant"));
        }
        Ok(Ack {
            seq: seq.parse().map_err(|_| err("seq is not a number"))?,
            tenant: tenant.to_string(),
            timestamp_ms: ts
                .parse()
                .map_err(|_| err("timestamp_ms is not a number"))?,
            samples: samples
                .parse()
                .map_err(|_| err("samples is not a number"))?,
        })
    }
}

/// Every record of an acks file's text, comments and blank lines skipped.
pub fn parse(text: &str) -> Result<Vec<Ack>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            l.parse::<Ack>()
                .map_err(|e| ParseError { line: i + 1, ..e })
        })
        .collect()
}

/// Every record of the acks file at `path`.
pub fn read(path: &Path) -> anyhow::Result<Vec<Ack>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse(&text)?)
}

/// Appends records to an acks file; shared by the connections of a run. Each record is one
/// short lock around a buffered write, never held across an `.await`.
pub struct AckWriter {
    out: Mutex<BufWriter<File>>,
}

impl AckWriter {
    /// Opens (creating or appending to) `path` and writes the run's header line:
    /// [`HEADER`] followed by `header` (`key=value` words).
    pub fn open(path: &Path, header: &str) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{HEADER} {header}")?;
        out.flush()?;
        Ok(Self {
            out: Mutex::new(out),
        })
    }

    /// Buffers one record.
    pub fn record(&self, ack: &Ack) -> std::io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(out, "{ack}")
    }

    /// Writes buffered records to the file.
    pub fn flush(&self) -> std::io::Result<()> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("loadgen-acks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks.txt");
        let _ = std::fs::remove_file(&path);
        let acks = vec![
            Ack {
                seq: 0,
                tenant: "loadgen-0".into(),
                timestamp_ms: 1_700_000_000_000,
                samples: 2000,
            },
            Ack {
                seq: 3,
                tenant: "loadgen-1".into(),
                timestamp_ms: 1_700_000_000_003,
                samples: 14,
            },
        ];
        for run in 0..2 {
            let w = AckWriter::open(&path, &format!("protocol=rw1 run={run}")).unwrap();
            for a in &acks {
                w.record(a).unwrap();
            }
            w.flush().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# traceo-loadgen acks v1 protocol=rw1 run=0\n0 loadgen-0 "));
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[..2], acks[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let e = parse("# header\n1 t 5 6\n1 t x 6\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.why, "timestamp_ms is not a number");
        assert!(parse("1 t 5").is_err());
        assert!(parse("1 t 5 6 7").is_err());
    }
}

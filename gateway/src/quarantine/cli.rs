//! What `traceo-gateway quarantine list` and `show` print. Read-only: they read entry files
//! while the gateway runs (an entry is whole once its name exists; one that disappears
//! meanwhile was replayed or dropped and is left out).

use std::io::Write;
use std::path::Path;

use residency_rules::RegionId;

use super::{dir_of, entry_ids, read_entry, Entry, QuarantineError};
use crate::share::record;

/// A label value is printed up to this many characters: a 16 KiB value would bury the rest.
const MAX_SHOWN_VALUE_CHARS: usize = 120;

fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || format!("{ms}ms"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

/// Tenant and series count of a record, or why it does not read.
fn summary(e: &Entry, region: &RegionId) -> (String, String) {
    match record::decode(e.record.clone(), region) {
        Ok(r) => (
            r.share.tenant.to_string(),
            r.share.batch.series_count().to_string(),
        ),
        Err(_) => ("?".to_string(), "?".to_string()),
    }
}

/// One line per entry of each region in `regions`, oldest first, as
/// `id=.. time=.. region=.. sink=.. tenant=.. series=.. bytes=.. reason=..`. Returns how
/// many entries it printed.
pub fn list(
    root: &Path,
    regions: &[RegionId],
    out: &mut impl Write,
) -> Result<usize, QuarantineError> {
    let mut printed = 0;
    for region in regions {
        let dir = dir_of(root, region);
        for id in entry_ids(&dir)? {
            let e = match read_entry(&dir, id) {
                Ok(e) => e,
                Err(QuarantineError::NoEntry(_)) => continue,
                Err(e) => {
                    let _ = writeln!(out, "id={id} region={region} damaged: {e}");
                    continue;
                }
            };
            let (tenant, series) = summary(&e, region);
            let _ = writeln!(
                out,
                "id={} time={} region={region} sink={} tenant={tenant} series={series} bytes={} reason={}",
                e.id,
                time(e.quarantined_ms),
                e.sink,
                e.record.len(),
                e.reason
            );
            printed += 1;
        }
    }
    Ok(printed)
}

fn shown(v: &str) -> String {
    if v.chars().count() <= MAX_SHOWN_VALUE_CHARS {
        return format!("{v:?}");
    }
    let head: String = v.chars().take(MAX_SHOWN_VALUE_CHARS).collect();
    format!("{head:?}...({} bytes)", v.len())
}

/// Decodes entry `id` of `region`: its fields, the upstream's answer, the tenant and each
/// series' labels with its sample count.
pub fn show(
    root: &Path,
    region: &RegionId,
    id: u64,
    out: &mut impl Write,
) -> Result<(), QuarantineError> {
    let dir = dir_of(root, region);
    let e = read_entry(&dir, id)?;
    let _ = writeln!(out, "entry:        {}", e.id);
    let _ = writeln!(out, "region:       {region}");
    let _ = writeln!(out, "quarantined:  {}", time(e.quarantined_ms));
    let _ = writeln!(out, "sink:         {}", e.sink);
    let _ = writeln!(out, "reason:       {}", e.reason);
    let _ = writeln!(out, "answer:       {}", e.answer);
    let _ = writeln!(out, "log sequence: {}", e.wal_seq);
    let _ = writeln!(out, "record bytes: {}", e.record.len());
    match record::decode(e.record.clone(), region) {
        Ok(r) => {
            let _ = writeln!(out, "tenant:       {}", r.share.tenant);
            let _ = writeln!(out, "accepted:     {}", time(r.accepted_ms));
            let _ = writeln!(out, "series:       {}", r.share.batch.series_count());
            for (series, labels) in r.share.series() {
                let body: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", shown(v)))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {{{}}} samples={} histograms={}",
                    body.join(", "),
                    series.samples().len(),
                    series.histograms().len()
                );
            }
        }
        Err(err) => {
            let _ = writeln!(out, "record does not decode here: {err}");
        }
    }
    Ok(())
}

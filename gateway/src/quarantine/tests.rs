use std::sync::Arc;
use std::time::Duration;

use super::replay::{self, ReplayRequest};
use super::*;
use crate::share::record;
use crate::share::testing::share;
use crate::wal::{writer, Wal, WalLimits};

const ROOMY: u64 = 64 << 20;

fn eu() -> RegionId {
    RegionId::parse("eu").unwrap()
}

/// A write-ahead log record of region `eu` with `n` series.
fn eu_record(n: usize) -> Vec<u8> {
    record::encode(&share(n), 1_700_000_000_000)
}

fn refusal<'a>(record: &'a [u8], seq: u64, reason: Reason) -> Refusal<'a> {
    Refusal {
        sink: "kafka/eu",
        reason,
        answer: "Broker: Message size too large",
        wal_seq: seq,
        record,
    }
}

#[test]
fn an_appended_entry_survives_a_reopen_with_every_field() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = eu_record(3);
    let q = Quarantine::open(tmp.path(), eu(), ROOMY).unwrap();
    let id = q
        .append(refusal(&rec, 17, Reason::MessageTooLarge))
        .unwrap();
    let second = q.append(refusal(&rec, 18, Reason::UnknownTopic)).unwrap();
    assert!(second > id, "ids grow");
    drop(q);

    let q = Quarantine::open(tmp.path(), eu(), ROOMY).unwrap();
    assert_eq!(q.ids(), vec![id, second]);
    let e = q.read(id).unwrap();
    assert_eq!(e.record, rec, "the record is kept byte for byte");
    assert_eq!(
        (e.sink.as_str(), e.reason.as_str(), e.wal_seq),
        ("kafka/eu", "message_too_large", 17)
    );
    assert_eq!(e.answer, "Broker: Message size too large");
    let third = q.append(refusal(&rec, 19, Reason::UnknownTopic)).unwrap();
    assert!(third > second, "ids keep growing after a reopen");
}

#[test]
fn past_its_bound_the_oldest_entries_are_dropped_and_the_newest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = vec![7u8; 100_000];
    // Room for about three entries of this size.
    let q = Quarantine::open(tmp.path(), eu(), 350_000).unwrap();
    let ids: Vec<u64> = (0..5)
        .map(|i| q.append(refusal(&rec, i, Reason::UnknownTopic)).unwrap())
        .collect();
    assert_eq!(q.ids(), ids[2..].to_vec(), "the two oldest went");
    assert!(q.bytes() <= 350_000);
    assert_eq!(
        entry_ids(tmp.path()).unwrap(),
        ids[2..].to_vec(),
        "on disk too"
    );

    // An entry larger than the whole bound is still kept, alone.
    let huge = vec![1u8; 400_000];
    let last = q.append(refusal(&huge, 9, Reason::UnknownTopic)).unwrap();
    assert_eq!(q.ids(), vec![last]);
}

#[test]
fn reopening_after_a_crash_removes_unfinished_files_and_sets_damaged_ones_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = eu_record(2);
    let q = Quarantine::open(tmp.path(), eu(), ROOMY).unwrap();
    let good = q.append(refusal(&rec, 1, Reason::UnknownTopic)).unwrap();
    let torn = q.append(refusal(&rec, 2, Reason::UnknownTopic)).unwrap();
    drop(q);
    // A crash mid-append leaves a temporary file; damage leaves an entry that fails its CRC.
    std::fs::write(
        tmp.path().join(".00000000000000000099.tmp"),
        b"TRACEOQE\x01",
    )
    .unwrap();
    let path = entry_path(tmp.path(), torn);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();

    let q = Quarantine::open(tmp.path(), eu(), ROOMY).unwrap();
    assert_eq!(q.ids(), vec![good]);
    assert!(!tmp.path().join(".00000000000000000099.tmp").exists());
    assert!(
        tmp.path().join(format!("{torn:020}.damaged")).exists(),
        "kept for a person, not deleted"
    );
    let next = q.append(refusal(&rec, 3, Reason::UnknownTopic)).unwrap();
    assert!(next > torn, "a damaged entry's id is not reused");
}

#[test]
fn a_record_every_feeder_of_the_region_refuses_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Quarantine::open(tmp.path(), eu(), ROOMY).unwrap();
    let garbage = b"not a record".to_vec();
    let a = q
        .append(Refusal {
            sink: "kafka/eu",
            ..refusal(&garbage, 5, Reason::Undecodable)
        })
        .unwrap();
    let b = q
        .append(Refusal {
            sink: "parquet/eu",
            ..refusal(&garbage, 5, Reason::Undecodable)
        })
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(q.ids().len(), 1);
    // One upstream's refusal is per sink: two sinks, two entries.
    let rec = eu_record(1);
    q.append(refusal(&rec, 6, Reason::UnknownTopic)).unwrap();
    q.append(Refusal {
        sink: "parquet/eu",
        ..refusal(&rec, 6, Reason::UnknownTopic)
    })
    .unwrap();
    assert_eq!(q.ids().len(), 3);
}

/// A started log writer of region `eu` in `dir`, and the thread that gives the log back.
fn log_writer(dir: &Path) -> (writer::WalHandle, std::thread::JoinHandle<Wal>) {
    let limits = WalLimits {
        segment_bytes: 1 << 20,
        max_bytes: 64 << 20,
        max_bytes_per_owner: u64::MAX,
        owner_of: crate::share::record::tenant_of,
    };
    let (wal, _) = Wal::open(dir, limits).unwrap();
    let (tx, rx) = writer::queue(16);
    writer::start("eu", wal, tx, rx).unwrap()
}

fn records_of(handle: writer::WalHandle, thread: std::thread::JoinHandle<Wal>) -> Vec<Vec<u8>> {
    drop(handle);
    let wal = thread.join().unwrap();
    wal.read_from(0)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_appends_records_to_the_log_and_removes_their_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let q = Arc::new(Quarantine::open(&tmp.path().join("q"), eu(), ROOMY).unwrap());
    let (a, b) = (eu_record(2), eu_record(5));
    let ia = q.append(refusal(&a, 1, Reason::UnknownTopic)).unwrap();
    // The same record refused by a second sink: appended once.
    let ia2 = q
        .append(Refusal {
            sink: "remote_write/eu/prom",
            ..refusal(&a, 1, Reason::ClientError4xx)
        })
        .unwrap();
    let ib = q.append(refusal(&b, 2, Reason::UnknownTopic)).unwrap();
    let (wal, thread) = log_writer(&tmp.path().join("log"));

    let req = ReplayRequest {
        request: "r1".into(),
        ids: Some(vec![ia, ia2, ib, 999]),
    };
    let result = replay::replay(&q, &req, &wal).await;
    assert_eq!(result.request, "r1");
    assert_eq!(result.replayed, vec![ia, ia2, ib]);
    assert_eq!(result.missing, vec![999]);
    assert!(result.refused.is_empty(), "{:?}", result.refused);
    assert!(q.ids().is_empty(), "replayed entries leave the quarantine");
    assert_eq!(q.bytes(), 0);
    assert_eq!(
        records_of(wal, thread),
        vec![a, b],
        "in id order, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_another_region_is_never_replayed_into_this_one() {
    let tmp = tempfile::tempdir().unwrap();
    // The quarantine of region `us` holding a record written for `eu` (a directory copied
    // between regions), and one that does not decode at all.
    let us = RegionId::parse("us").unwrap();
    let q = Arc::new(Quarantine::open(&tmp.path().join("q"), us, ROOMY).unwrap());
    let foreign = q
        .append(refusal(&eu_record(3), 4, Reason::ForeignRegion))
        .unwrap();
    let garbage = q
        .append(refusal(b"\x01garbage", 5, Reason::Undecodable))
        .unwrap();
    let (wal, thread) = log_writer(&tmp.path().join("log"));

    let req = ReplayRequest {
        request: "r2".into(),
        ids: None,
    };
    let result = replay::replay(&q, &req, &wal).await;
    assert!(result.replayed.is_empty());
    let refused: Vec<u64> = result.refused.iter().map(|r| r.id).collect();
    assert_eq!(refused, vec![foreign, garbage]);
    assert!(
        result.refused[0].why.contains("not a record of region us"),
        "{}",
        result.refused[0].why
    );
    assert_eq!(q.ids(), vec![foreign, garbage], "both stay in quarantine");
    assert!(
        records_of(wal, thread).is_empty(),
        "nothing reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_request_file_is_taken_answered_and_withdrawn_when_nobody_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let q = Arc::new(Quarantine::open(&dir, eu(), ROOMY).unwrap());
    let rec = eu_record(1);
    let id = q.append(refusal(&rec, 1, Reason::UnknownTopic)).unwrap();

    // No gateway: the request is withdrawn after the wait, and the entry stays.
    let d = dir.clone();
    let alone =
        tokio::task::spawn_blocking(move || replay::request(&d, None, Duration::from_millis(300)))
            .await
            .unwrap();
    assert!(
        matches!(alone, Err(replay::ReplayError::NotTaken(_))),
        "{alone:?}"
    );
    assert_eq!(entry_ids(&dir).unwrap(), vec![id]);

    // With the gateway's task running, the CLI gets the result.
    let (wal, thread) = log_writer(&tmp.path().join("log"));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(replay::watch(q.clone(), wal.clone(), stop.clone()));
    let d = dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        replay::request(&d, Some(vec![id]), Duration::from_secs(20))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(result.replayed, vec![id]);
    assert!(entry_ids(&dir).unwrap().is_empty());
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.is_empty(),
        "request and result files are gone: {leftovers:?}"
    );
    stop.cancel();
    task.await.unwrap();
    assert_eq!(records_of(wal, thread), vec![rec]);
}

#[test]
fn list_and_show_print_what_an_operator_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let q = Quarantine::open(&dir_of(root, &eu()), eu(), ROOMY).unwrap();
    let rec = eu_record(2);
    let id = q.append(refusal(&rec, 3, Reason::MessageTooLarge)).unwrap();
    q.append(refusal(b"junk", 4, Reason::Undecodable)).unwrap();

    let mut out = Vec::new();
    assert_eq!(cli::list(root, &[eu()], &mut out).unwrap(), 2);
    let text = String::from_utf8(out).unwrap();
    let first = text.lines().next().unwrap();
    for needle in [
        &format!("id={id} ") as &str,
        "region=eu",
        "sink=kafka/eu",
        "tenant=acme",
        "series=2",
        &format!("bytes={}", rec.len()),
        "reason=message_too_large",
    ] {
        assert!(first.contains(needle), "{needle} in {first}");
    }
    assert!(text.lines().nth(1).unwrap().contains("tenant=? series=?"));

    let mut out = Vec::new();
    cli::show(root, &eu(), id, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("answer:       Broker: Message size too large"),
        "{text}"
    );
    assert!(text.contains("tenant:       acme"), "{text}");
    assert!(text.contains("__name__=\"s1\""), "{text}");
    assert!(text.contains("samples=1"), "{text}");
}

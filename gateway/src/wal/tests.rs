use super::*;

const ROOMY: WalLimits = WalLimits {
    segment_bytes: 1 << 20,
    max_bytes: 64 << 20,
    max_bytes_per_owner: u64::MAX,
    owner_of: first_word,
};

/// Test records are owned by their first word (`record 7 ` -> `record`, `a:...` -> `a:`).
fn first_word(p: &[u8]) -> Option<&[u8]> {
    let end = p
        .iter()
        .position(|&b| b == b' ' || b == b':')
        .map(|i| i + 1)?;
    Some(&p[..end])
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i} ")
        .repeat(1 + (i as usize % 7))
        .into_bytes()
}

fn append_range(wal: &mut Wal, range: std::ops::Range<u64>) -> u64 {
    let payloads: Vec<Vec<u8>> = range.map(payload).collect();
    wal.append(payloads.iter().map(Vec::as_slice)).unwrap()
}

fn assert_records(wal: &Wal, from: u64, to: u64) {
    let got = wal.read_from(from).unwrap();
    let want: Vec<(u64, Vec<u8>)> = (from..to).map(|i| (i, payload(i))).collect();
    assert_eq!(got, want);
}

/// The segment files in `dir`, in order (the writer's tests use it too).
pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    s.sort();
    s
}

#[test]
fn groups_append_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, rec) = Wal::open(dir.path(), ROOMY).unwrap();
    assert_eq!(rec, Recovery::default());
    assert_eq!(append_range(&mut wal, 0..3), 0);
    assert_eq!(append_range(&mut wal, 3..10), 3);
    assert_eq!(
        wal.append(std::iter::empty()).unwrap(),
        10,
        "an empty group"
    );
    assert_records(&wal, 0, 10);
    assert_records(&wal, 7, 10);
    assert_eq!(wal.read_from(10).unwrap(), vec![]);
    drop(wal);

    let (mut wal, rec) = Wal::open(dir.path(), ROOMY).unwrap();
    assert_eq!(rec.records, 10);
    assert_eq!(rec.bytes_cut, 0);
    assert_eq!(append_range(&mut wal, 10..12), 10);
    assert_records(&wal, 0, 12);
    assert!(matches!(
        wal.read_from(13),
        Err(WalError::OutOfRange { seq: 13, .. })
    ));
}

/// A log of 200-byte segments holding records 0..20, one per append, so several segments are
/// sealed.
fn twenty_records_in_small_segments() -> (tempfile::TempDir, WalLimits, Wal) {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        segment_bytes: 200,
        max_bytes: 1 << 20,
        ..ROOMY
    };
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    for i in 0..20 {
        append_range(&mut wal, i..i + 1);
    }
    (dir, limits, wal)
}

#[test]
fn segments_rotate_and_are_removed_once_read_past() {
    let (dir, limits, mut wal) = twenty_records_in_small_segments();
    let before = segments(dir.path());
    assert!(before.len() > 3, "{before:?}");
    assert_records(&wal, 0, 20);

    let bytes = wal.bytes();
    wal.remove_before(12).unwrap();
    assert!(wal.bytes() < bytes);
    let first = wal.first_seq();
    assert!(first > 0 && first <= 12, "{first}");
    assert_records(&wal, first, 20);
    assert!(matches!(wal.read_from(0), Err(WalError::OutOfRange { .. })));
    // Everything read: all but the active segment go.
    wal.remove_before(20).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), limits).unwrap();
    assert_eq!(
        wal.next_seq(),
        20,
        "sequence numbers continue after a reopen"
    );
    assert_eq!(rec.records, 20 - wal.first_seq());
}

#[test]
fn a_torn_tail_is_cut_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), ROOMY).unwrap();
    append_range(&mut wal, 0..5);
    drop(wal);
    // A crash in the middle of writing the last record.
    let seg = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let (mut wal, rec) = Wal::open(dir.path(), ROOMY).unwrap();
    assert_eq!(rec.records, 4);
    assert_eq!(rec.cut_reason, Some("record payload is truncated"));
    assert_eq!(rec.bytes_cut, RECORD_OVERHEAD + payload(4).len() as u64 - 3);
    assert_eq!(append_range(&mut wal, 4..6), 4);
    assert_records(&wal, 0, 6);
}

#[test]
fn a_flipped_bit_in_the_tail_is_cut_and_in_older_segments_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        segment_bytes: 100,
        max_bytes: 1 << 20,
        ..ROOMY
    };
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    for i in 0..8 {
        append_range(&mut wal, i..i + 1);
    }
    drop(wal);
    let flip = |path: &Path, from_end: u64| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() - from_end as usize;
        bytes[at] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    };
    let all = segments(dir.path());
    // The last record of the last segment.
    flip(all.last().unwrap(), 2);
    let (wal, rec) = Wal::open(dir.path(), limits).unwrap();
    assert_eq!(rec.cut_reason, Some("record checksum does not match"));
    assert_eq!(wal.next_seq(), 7);
    assert_records(&wal, 0, 7);
    drop(wal);

    // A record in a sealed segment: reading it fails, naming it.
    flip(&all[0], 1);
    let (wal, _) = Wal::open(dir.path(), limits).unwrap();
    match wal.read_from(0) {
        Err(WalError::Corrupt { seq, reason, .. }) => {
            assert_eq!(reason, "record checksum does not match");
            assert!(seq < 7);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_segment_whose_header_never_reached_the_disk_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), ROOMY).unwrap();
    append_range(&mut wal, 0..2);
    drop(wal);
    // A crash right after creating the next segment.
    std::fs::write(segment_path(dir.path(), 2), b"TRAC").unwrap();
    let (mut wal, rec) = Wal::open(dir.path(), ROOMY).unwrap();
    assert_eq!(rec.cut_reason, Some("segment header is truncated"));
    assert_eq!(wal.next_seq(), 2);
    append_range(&mut wal, 2..4);
    assert_records(&wal, 0, 4);
}

#[test]
fn a_full_log_refuses_whole_groups_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        segment_bytes: 150,
        max_bytes: 600,
        ..ROOMY
    };
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    let mut next = 0;
    let err = loop {
        match wal.append([payload(next).as_slice(), payload(next + 1).as_slice()]) {
            Ok(_) => next += 2,
            Err(e) => break e,
        }
        assert!(next < 100, "the bound never hit");
    };
    assert!(matches!(err, WalError::Full { limit: 600, .. }), "{err}");
    assert!(wal.bytes() <= 600);
    assert_eq!(wal.next_seq(), next, "a refused group writes nothing");
    drop(wal);
    let (mut wal, rec) = Wal::open(dir.path(), limits).unwrap();
    assert_eq!(rec.bytes_cut, 0);
    assert_records(&wal, 0, next);
    // Sinks caught up: the old segments go and appends fit again.
    wal.remove_before(next).unwrap();
    assert_eq!(
        wal.append([payload(next).as_slice(), payload(next + 1).as_slice()])
            .unwrap(),
        next
    );
}

#[test]
fn a_reader_follows_the_writer_across_segments_up_to_the_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let small = WalLimits {
        segment_bytes: 256,
        max_bytes: 1 << 20,
        ..ROOMY
    };
    let (mut wal, _) = Wal::open(dir.path(), small).unwrap();
    append_range(&mut wal, 0..10);
    let mut reader = reader::WalReader::open(dir.path(), 3).unwrap();
    let mut got = Vec::new();
    // Nothing past the durable end, even if the bytes are there.
    while let Some(r) = reader.next_record(8).unwrap() {
        got.push(r);
    }
    assert_eq!(reader.position(), 8);
    // The writer goes on (rotating segments) while the reader is open.
    for i in 10..40 {
        append_range(&mut wal, i..i + 1);
    }
    assert!(segments(dir.path()).len() > 3, "small segments rotate");
    while let Some(r) = reader.next_record(wal.next_seq()).unwrap() {
        got.push(r);
    }
    let want: Vec<(u64, Vec<u8>)> = (3..40).map(|i| (i, payload(i))).collect();
    assert_eq!(got, want);
    // Segments below a reader's position go; the reader does not notice.
    wal.remove_before(30).unwrap();
    append_range(&mut wal, 40..41);
    assert_eq!(reader.next_record(41).unwrap(), Some((40, payload(40))));
    // Opening below the oldest segment is an error, not a silent skip.
    assert!(matches!(
        reader::WalReader::open(dir.path(), 0),
        Err(WalError::OutOfRange { .. })
    ));
}

#[test]
fn a_reader_steps_over_a_record_that_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), ROOMY).unwrap();
    append_range(&mut wal, 0..5);
    // Flip a payload byte of record 2 (not the tail: a running log is not rescanned).
    let seg = &segments(dir.path())[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let mut pos = HEADER_BYTES as usize;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += RECORD_OVERHEAD as usize + len;
    }
    bytes[pos + RECORD_OVERHEAD as usize + 1] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
    let mut reader = reader::WalReader::open(dir.path(), 0).unwrap();
    let mut got = Vec::new();
    let mut errors = Vec::new();
    loop {
        match reader.next_record(5) {
            Ok(Some((seq, _))) => got.push(seq),
            Ok(None) => break,
            Err(WalError::Corrupt { seq, .. }) => errors.push(seq),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, [0, 1, 3, 4]);
    assert_eq!(errors, [2]);
}

#[test]
fn one_process_per_log_and_one_budget_for_all_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = Wal::open(&dir.path().join("a"), ROOMY).unwrap();
    assert!(matches!(
        Wal::open(&dir.path().join("a"), ROOMY),
        Err(WalError::Locked { .. })
    ));
    let (mut b, _) = Wal::open(&dir.path().join("b"), ROOMY).unwrap();
    // Two empty logs (16-byte headers) and room for about one more 100-byte record.
    let budget = SharedBudget::new(32 + 2 * (8 + 100) + 50);
    a.share_budget(budget.clone());
    b.share_budget(budget.clone());
    let rec = vec![0u8; 100];
    a.append([rec.as_slice()]).unwrap();
    b.append([rec.as_slice()]).unwrap();
    assert!(matches!(
        a.append([rec.as_slice()]),
        Err(WalError::Full { .. })
    ));
    assert_eq!(
        budget.used(),
        32 + 2 * 108,
        "a refused append takes nothing"
    );
    drop(a);
    Wal::open(&dir.path().join("a"), ROOMY).expect("the lock goes with the log");
}

fn owned(owner: &str, n: usize) -> Vec<u8> {
    let mut p = format!("{owner}:").into_bytes();
    p.resize(n, b'x');
    p
}

#[test]
fn an_owner_past_its_share_is_refused_while_others_still_append() {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        segment_bytes: 300,
        max_bytes: 1 << 20,
        max_bytes_per_owner: 5 * (RECORD_OVERHEAD + 100),
        owner_of: first_word,
    };
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    let a = owned("a", 100);
    for _ in 0..5 {
        wal.append([a.as_slice()]).unwrap();
    }
    let err = wal.append([a.as_slice()]).unwrap_err();
    match &err {
        WalError::OwnerFull {
            owner,
            bytes,
            limit,
            ..
        } => {
            assert_eq!(owner, "a:");
            assert_eq!(*bytes, 5 * 108);
            assert_eq!(*limit, 5 * 108);
        }
        other => panic!("expected OwnerFull, got {other}"),
    }
    assert!(err.to_string().contains("tenant a:"), "{err}");
    // A group with the full owner in it is refused whole; another owner goes on alone.
    let b = owned("b", 100);
    assert!(wal.append([b.as_slice(), a.as_slice()]).is_err());
    assert_eq!(wal.append([b.as_slice()]).unwrap(), 5);
    assert_eq!(wal.owner_bytes_of(b"a:"), 5 * 108);
    assert_eq!(wal.owner_bytes_of(b"b:"), 108);
    assert_eq!(wal.owner_bytes_of(b"c:"), 0);
}

#[test]
fn owner_counts_are_rebuilt_on_open_and_freed_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let limits = WalLimits {
        segment_bytes: 300,
        max_bytes: 1 << 20,
        max_bytes_per_owner: 1 << 20,
        owner_of: first_word,
    };
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    for i in 0..12 {
        let owner = if i % 3 == 0 { "b" } else { "a" };
        // Some payloads longer than the peek window: only their heads are read on open.
        let p = owned(owner, 50 + 200 * (i % 2) + OWNER_PEEK_BYTES * (i % 4 / 3));
        wal.append([p.as_slice()]).unwrap();
    }
    assert!(segments(dir.path()).len() > 3, "several sealed segments");
    let mut before: Vec<(Vec<u8>, u64)> = wal.owner_bytes().map(|(o, b)| (o.to_vec(), b)).collect();
    before.sort();
    let total: u64 = before.iter().map(|(_, b)| b).sum();
    assert_eq!(
        total + HEADER_BYTES * segments(dir.path()).len() as u64,
        wal.bytes()
    );
    drop(wal);
    let (mut wal, _) = Wal::open(dir.path(), limits).unwrap();
    let mut after: Vec<(Vec<u8>, u64)> = wal.owner_bytes().map(|(o, b)| (o.to_vec(), b)).collect();
    after.sort();
    assert_eq!(before, after, "the same counts from scanning the segments");
    // Everything delivered: only the active segment's records still count.
    wal.remove_before(wal.next_seq()).unwrap();
    let left: u64 = wal.owner_bytes().map(|(_, b)| b).sum();
    assert_eq!(left + HEADER_BYTES, wal.bytes());
    assert!(
        wal.owner_bytes().all(|(_, b)| b > 0),
        "no owner left at zero"
    );
}

#[test]
fn a_failed_write_leaves_nothing_and_the_next_append_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), ROOMY).unwrap();
    append_range(&mut wal, 0..2);
    let bytes = wal.bytes();
    let owners: u64 = wal.owner_bytes().map(|(_, b)| b).sum();
    // ENOSPC, as a full disk answers a write.
    wal.fail_next_writes(&[28]);
    let err = wal.append([payload(2).as_slice()]).unwrap_err();
    match &err {
        WalError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(28)),
        other => panic!("expected Io, got {other}"),
    }
    assert_eq!(wal.bytes(), bytes);
    assert_eq!(wal.owner_bytes().map(|(_, b)| b).sum::<u64>(), owners);
    assert_eq!(append_range(&mut wal, 2..3), 2);
    assert_records(&wal, 0, 3);
}

/// A file that takes at most 3 bytes per write, as a signal-interrupted or nearly full one
/// may: the vectored append must resume mid-slice and lose or repeat nothing.
struct Trickle(Vec<u8>);

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(3);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.write(first)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_vectored_append_resumes_after_short_writes() {
    let parts: [&[u8]; 4] = [b"frame-1", b"", b"payload one", b"x"];
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut out = Trickle(Vec::new());
    write_all_vectored(&mut out, &mut slices).unwrap();
    assert_eq!(out.0, parts.concat());
}

#[test]
fn released_segments_stay_counted_until_forgotten_and_are_deleted_in_steps() {
    let (dir, limits, mut wal) = twenty_records_in_small_segments();
    let files = segments(dir.path()).len();
    let bytes = wal.bytes();
    let owned = wal.owner_bytes_of(b"record ");

    let released = wal.take_released(12);
    let taken = released.len();
    assert!(taken > 0);
    let first = wal.first_seq();
    assert!(first > 0 && first <= 12, "{first}");
    assert_records(&wal, first, 20);
    assert_eq!(wal.bytes(), bytes, "still on disk, still counted");
    assert_eq!(wal.owner_bytes_of(b"record "), owned);
    assert_eq!(segments(dir.path()).len(), files, "nothing deleted yet");

    let mut freed = 0;
    for r in released {
        freed += std::fs::metadata(r.path()).unwrap().len();
        // Steps smaller than a record: the file is cut many times before it goes.
        r.delete_in_steps(7).unwrap();
        assert!(!r.path().exists());
        // A second delete of a file already gone is not an error.
        r.delete_in_steps(7).unwrap();
        r.delete().unwrap();
        wal.forget(r);
    }
    assert_eq!(wal.bytes(), bytes - freed);
    assert!(wal.owner_bytes_of(b"record ") < owned);
    assert_eq!(segments(dir.path()).len(), files - taken);
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), limits).unwrap();
    assert_eq!(
        wal.first_seq(),
        first,
        "the reopened log starts where the kept segments do"
    );
    assert_eq!(rec.records, 20 - first);
}

/// A crash while the reaper cuts a released segment down leaves it short but still there: the
/// log opens, the records past every cursor read back, and the stub is released again.
#[test]
fn a_released_segment_cut_short_by_a_crash_opens_and_is_released_again() {
    let (dir, limits, mut wal) = twenty_records_in_small_segments();
    let released = wal.take_released(12);
    let first_kept = wal.first_seq();
    let stub = released[0].path().to_path_buf();
    let len = std::fs::metadata(&stub).unwrap().len();
    // Cut in the middle of a record, as one step of `delete_in_steps` may leave it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stub)
        .unwrap()
        .set_len(len / 2 + 3)
        .unwrap();
    drop(released);
    drop(wal);

    let (mut wal, rec) = Wal::open(dir.path(), limits).unwrap();
    assert_eq!(
        rec.bytes_cut, 0,
        "only the active segment's tail is ever cut"
    );
    assert_eq!(wal.next_seq(), 20);
    assert!(wal.first_seq() < first_kept, "the stub is back in the log");
    assert_records(&wal, first_kept, 20);
    wal.remove_before(12).unwrap();
    assert_eq!(wal.first_seq(), first_kept);
    assert!(!stub.exists());
    assert_records(&wal, first_kept, 20);
}

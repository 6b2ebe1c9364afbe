//! The write-ahead log against real processes: the gateway (default `durability: wal`), a
//! `tansu` broker read back with an rdkafka consumer, Parquet files read back with the
//! `parquet` crate, and `traceo-loadgen --record-acks` recording every acknowledged request.
//!
//! - SIGKILL at random moments under load, ten times: every acknowledged sample is in Kafka
//!   and in Parquet afterwards (duplicates counted and printed, never a loss);
//! - the broker stops answering for a minute under load: acknowledgements go on into the log
//!   until its bound, then only 503 with `Retry-After` (and `/-/ready` says why); once the
//!   broker is back the log drains and nothing acknowledged is missing;
//! - a torn and a bit-flipped log tail are cut at start (logged, counted) and the gateway goes
//!   on; a log at its bound answers 503 and recovers when its sink catches up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use traceo_e2e::{
    acknowledged, compare, get, now_ms, post_with, read_rows, remote_write_body, tail_json,
    wait_for, Broker, Gateway, Proc, REMOTE_WRITE_V1_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

fn loadgen_bin() -> PathBuf {
    traceo_e2e::loadgen_bin(GATEWAY)
}

/// Starts `traceo-loadgen` against `gw` at `rate` samples/s for `secs`, recording acks.
fn start_loadgen(gw: &Gateway, dir: &Path, acks: &Path, rate: u32, secs: u32) -> Proc {
    let mut cmd = Command::new(loadgen_bin());
    cmd.arg("--url")
        .arg(gw.url("/api/v1/write"))
        .args([
            "--tenants",
            "2",
            "--series",
            "3000",
            "--series-per-request",
            "30",
        ])
        .args([
            "--labels",
            "6",
            "--histograms",
            "none",
            "--connections",
            "4",
        ])
        .args(["--timeout", "10", "--json"])
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--record-acks")
        .arg(acks);
    Proc::spawn("traceo-loadgen", cmd, dir.join("loadgen.log"))
}

/// Offsets seen, by partition.
type Offsets = BTreeMap<i64, Vec<i64>>;

/// Samples per (tenant, timestamp) in `topic`, and the offsets seen per partition.
fn kafka_counts(broker: &Broker, topic: &str) -> (HashMap<(String, i64), u64>, Offsets) {
    let mut found = HashMap::new();
    let mut offsets = Offsets::new();
    for l in tail_json(GATEWAY, &broker.addr(), topic, 3) {
        let tenant = l["tenant"].as_str().unwrap_or_default().to_string();
        let ts = l["timestamp_ms"].as_i64().unwrap_or_default();
        *found.entry((tenant, ts)).or_insert(0) += 1;
        let p = l["partition"].as_i64().unwrap_or(-1);
        offsets
            .entry(p)
            .or_default()
            .push(l["offset"].as_i64().unwrap_or(-1));
    }
    (found, offsets)
}

/// Offsets missing from each partition's range, from 0 to the highest offset read (the
/// broker assigned them, yet they are not read back), as `partition: [offsets]`, at most 20
/// per partition. Empty when every partition is contiguous from 0: then a missing message
/// never got an offset at all.
fn offset_gaps(offsets: &Offsets) -> Vec<String> {
    let mut gaps = Vec::new();
    for (p, seen) in offsets {
        let mut seen = seen.clone();
        seen.push(-1); // the start, so that a partition read from above 0 shows its gap
        seen.sort_unstable();
        seen.dedup();
        let mut missing = Vec::new();
        for w in seen.windows(2) {
            missing.extend((w[0] + 1..w[1]).take(20usize.saturating_sub(missing.len())));
        }
        if !missing.is_empty() {
            gaps.push(format!("partition {p}: {missing:?}"));
        }
    }
    gaps
}

/// Compares with Kafka until nothing is missing or 90 s passed (the log may still drain).
/// On a shortfall it prints the offset gaps of the topic: a gap means the broker took the
/// message and did not give it back to the reader; no gap means it never reached the
/// broker's log.
fn kafka_eventually(
    want: &BTreeMap<(String, i64), u64>,
    broker: &Broker,
    topic: &str,
) -> (Vec<String>, u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (found, offsets) = kafka_counts(broker, topic);
        let k = compare(want, &found);
        if k.0.is_empty() || Instant::now() > deadline {
            if !k.0.is_empty() {
                println!("offset gaps in {topic}: {:?}", offset_gaps(&offsets));
            }
            return k;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn parquet_counts(dir: &Path) -> HashMap<(String, i64), u64> {
    let mut found = HashMap::new();
    for r in read_rows(dir) {
        *found.entry((r.tenant, r.timestamp_ms)).or_insert(0) += 1;
    }
    found
}

/// A small deterministic generator for the kill moments (seed printed, so a failure can be
/// replayed by hand).
struct XorShift(u64);
impl XorShift {
    fn next_ms(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

#[test]
fn acknowledged_samples_survive_ten_sigkills_under_load() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start(dir, "tansu");
    broker.create_topic("metrics.local", 3);
    let mut gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off, default_region: local }
pipeline: { shards: 2 }
# Small segments, so that segments rotate and are deleted while the gateway is killed.
durability: { dir: "{dir}/wal", segment_bytes: 262144 }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 300ms }
      kafka: { brokers: "BROKER", linger: 5ms }
"#
        .replace("BROKER", &broker.addr()),
    );
    let acks = dir.join("acks.txt");
    let mut load = start_loadgen(&gw, dir, &acks, 6000, 30);
    let seed = (now_ms() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    println!("kill moments seed: {seed}");
    let mut rng = XorShift(seed);
    std::thread::sleep(Duration::from_secs(2));
    let kills = 10;
    for n in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.next_ms(300, 1800)));
        load.assert_running();
        gw.kill9_and_restart(GATEWAY, &format!("gateway-{n}.log"));
    }
    wait_for(
        "the load generator to finish",
        Duration::from_secs(60),
        || load.try_wait(),
    );
    let want = acknowledged(&acks);
    let requests = want.len();
    let samples: u64 = want.values().sum();
    assert!(
        requests > 1000,
        "too little was acknowledged for the test to mean anything: {requests} requests"
    );

    // Parquet: wait until the replayed logs are drained into files.
    let mut parquet = (Vec::new(), 0);
    wait_for(
        "every acknowledged sample in Parquet",
        Duration::from_secs(90),
        || {
            parquet = compare(&want, &parquet_counts(&dir.join("data")));
            parquet.0.is_empty().then_some(())
        },
    );
    let kafka = kafka_eventually(&want, &broker, "metrics.local");
    println!(
        "{kills} SIGKILLs; {requests} requests ({samples} samples) acknowledged; \
         duplicates: Parquet {}, Kafka {}",
        parquet.1, kafka.1
    );
    assert!(
        kafka.0.is_empty(),
        "acknowledged but not in Kafka ({} of {requests} requests): {:?}",
        kafka.0.len(),
        &kafka.0[..kafka.0.len().min(20)]
    );
    // The restarts really replayed: some gateway log says so.
    let replayed: u64 = (0..kills)
        .map(|n| std::fs::read_to_string(dir.join(format!("gateway-{n}.log"))).unwrap_or_default())
        .filter(|l| l.contains("write-ahead log ready"))
        .count() as u64;
    assert_eq!(replayed, kills, "every restart opened the log");
}

/// The status of `/-/ready` and its body.
fn ready(gw: &Gateway) -> (u16, String) {
    get(&gw.url("/-/ready")).expect("ready answers")
}

/// Posts one single-sample request for `tenant` stamped `ts`; returns the status and the
/// `Retry-After` header.
fn post_one(gw: &Gateway, tenant: &str, ts: i64) -> (u16, Option<String>) {
    let body = remote_write_body(&[&[("__name__", "probe"), ("n", &ts.to_string())]], ts);
    let headers = [&REMOTE_WRITE_V1_HEADERS[..], &[("x-scope-orgid", tenant)]].concat();
    let a = post_with(&gw.url("/api/v1/write"), &body, &headers);
    let retry_after = a.header("retry-after").map(str::to_string);
    (a.status, retry_after)
}

#[test]
fn a_minute_long_broker_outage_fills_the_log_then_gets_503_and_drains_after() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let broker = Broker::start(dir, "tansu");
    broker.create_topic("metrics.local", 2);
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off, default_region: local }
durability: { dir: "{dir}/wal", segment_bytes: 65536, max_bytes_per_region: 2097152, max_bytes_per_tenant: 2097152 }
regions:
  - id: local
    sinks:
      kafka: { brokers: "BROKER", linger: 5ms, delivery_timeout: 5s }
"#
        .replace("BROKER", &broker.addr()),
    );
    let acks = dir.join("acks.txt");
    let mut load = start_loadgen(&gw, dir, &acks, 3000, 80);
    std::thread::sleep(Duration::from_secs(5));

    broker.proc.signal("STOP");
    let outage = Instant::now();
    let mut probes: Vec<(Duration, u16, Option<String>)> = Vec::new();
    let mut acked_probes: Vec<i64> = Vec::new();
    let mut ready_while_full = None;
    let base = 1_000_000_000_000i64;
    while outage.elapsed() < Duration::from_secs(60) {
        let ts = base + probes.len() as i64;
        let (status, retry_after) = post_one(&gw, "probe", ts);
        if status == 204 {
            acked_probes.push(ts);
        }
        if status == 503 && ready_while_full.is_none() {
            ready_while_full = Some(ready(&gw));
        }
        probes.push((outage.elapsed(), status, retry_after));
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.proc.signal("CONT");
    let recovered = Instant::now();
    wait_for(
        "a 204 after the broker is back",
        Duration::from_secs(90),
        || {
            let ts = base + probes.len() as i64;
            let (status, retry_after) = post_one(&gw, "probe", ts);
            probes.push((outage.elapsed(), status, retry_after));
            (status == 204).then(|| acked_probes.push(ts))
        },
    );
    println!(
        "log drained enough to accept again {:?} after the broker came back",
        recovered.elapsed()
    );
    wait_for(
        "the load generator to finish",
        Duration::from_secs(90),
        || load.try_wait(),
    );

    let during: Vec<&(Duration, u16, Option<String>)> = probes
        .iter()
        .filter(|(at, _, _)| *at < Duration::from_secs(60))
        .collect();
    let first_refusal = during.iter().position(|(_, s, _)| *s != 204);
    println!(
        "outage: {} probes, {} acknowledged into the log before the first refusal at {:?}",
        during.len(),
        first_refusal.unwrap_or(during.len()),
        first_refusal.map(|i| during[i].0)
    );
    assert!(
        first_refusal.is_some_and(|i| i > 0),
        "the log absorbed nothing before refusing, or never filled: {probes:?}"
    );
    for (at, status, retry_after) in &probes {
        assert!(
            *status == 204 || *status == 503,
            "at {at:?}: status {status} is neither an ack nor a retryable 503"
        );
        if *status == 503 {
            assert!(retry_after.is_some(), "503 at {at:?} without Retry-After");
        }
    }
    let (status, why) = ready_while_full.expect("a 503 was seen");
    assert_eq!(status, 503, "not ready while the log is full: {why}");
    assert!(why.contains("write-ahead log full"), "{why}");

    let mut want = acknowledged(&acks);
    for ts in &acked_probes {
        want.insert(("probe".to_string(), *ts), 1);
    }
    let kafka = kafka_eventually(&want, &broker, "metrics.local");
    println!(
        "{} requests acknowledged ({} during the outage probes); duplicates in Kafka: {}",
        want.len(),
        acked_probes.len(),
        kafka.1
    );
    assert!(
        kafka.0.is_empty(),
        "acknowledged but not in Kafka ({} requests): {:?}",
        kafka.0.len(),
        &kafka.0[..kafka.0.len().min(20)]
    );
    assert_eq!(ready(&gw).0, 200, "ready again once drained");
}

/// The last segment file of the region's log.
fn last_segment(wal: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(wal)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// A Parquet sink that never closes a file on its own within the test (so nothing is
/// confirmed and the log keeps every record), or one that closes them quickly.
fn parquet_config(file_age: &str, max_bytes: u64) -> String {
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
auth: {{ mode: off, default_region: local }}
durability: {{ dir: "{{dir}}/wal", segment_bytes: 16384, max_bytes_per_region: {max_bytes}, max_bytes_per_tenant: {max_bytes} }}
regions:
  - id: local
    sinks:
      parquet: {{ path: "{{dir}}/data", max_file_age: {file_age} }}
"#
    )
}

/// Rewrites the running gateway's config file (for the next restart).
fn rewrite_config(gw: &Gateway, yaml: &str) {
    let yaml = yaml
        .replace("{port}", &gw.port.to_string())
        .replace("{dir}", &gw.dir.display().to_string());
    std::fs::write(gw.dir.join("gateway.yaml"), yaml).expect("rewrite config");
}

fn parquet_timestamps(dir: &Path) -> Vec<i64> {
    let mut ts: Vec<i64> = read_rows(&dir.join("data"))
        .into_iter()
        .map(|r| r.timestamp_ms)
        .collect();
    ts.sort_unstable();
    ts.dedup();
    ts
}

#[test]
fn torn_and_bit_flipped_tails_are_cut_and_the_gateway_goes_on() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let mut gw = Gateway::start(GATEWAY, dir, &parquet_config("1h", 64 << 20));
    let wal = dir.join("wal/local");
    let base = 1_700_000_000_000i64;
    let mut sent = Vec::new();
    for (round, damage) in ["truncate", "flip"].into_iter().enumerate() {
        for i in 0..20 {
            let ts = base + (round as i64) * 1000 + i;
            assert_eq!(post_one(&gw, "acme", ts).0, 204);
            sent.push(ts);
        }
        // Nothing is confirmed yet (the Parquet file stays open): the log holds it all.
        let seg = last_segment(&wal);
        let mut bytes = std::fs::read(&seg).expect("segment");
        gw.proc.kill9();
        match damage {
            // A write torn by the crash: the last record lacks its last bytes.
            "truncate" => bytes.truncate(bytes.len() - 3),
            // A bit flipped on disk inside the last record.
            _ => {
                let at = bytes.len() - 5;
                bytes[at] ^= 0x10;
            }
        }
        std::fs::write(&seg, &bytes).expect("damage the tail");
        let lost = sent.pop().expect("the last request's record is damaged");
        gw.kill9_and_restart(GATEWAY, &format!("gateway-{damage}.log"));
        let log = std::fs::read_to_string(dir.join(format!("gateway-{damage}.log")))
            .expect("gateway log");
        assert!(
            log.contains("write-ahead log tail is torn or corrupt; cutting it off"),
            "{log}"
        );
        assert_eq!(
            gw.metric("traceo_wal_tail_cuts_total"),
            Some(1.0),
            "the cut is counted"
        );
        assert_eq!(ready(&gw).0, 200);
        println!("{damage}: request stamped {lost} cut off with the tail");
    }
    // A restart whose sink closes files quickly: every request before the cuts arrives.
    rewrite_config(&gw, &parquet_config("200ms", 64 << 20));
    gw.kill9_and_restart(GATEWAY, "gateway-drain.log");
    let after = base + 5000;
    assert_eq!(post_one(&gw, "acme", after).0, 204, "new writes go on");
    sent.push(after);
    wait_for(
        "every undamaged request in Parquet",
        Duration::from_secs(30),
        || {
            let found = parquet_timestamps(dir);
            sent.iter().all(|t| found.contains(t)).then_some(())
        },
    );
}

#[test]
fn a_log_at_its_bound_answers_503_and_recovers_once_its_sink_catches_up() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    // 64 KiB per region, 16 KiB segments; the sink confirms nothing within the test.
    let mut gw = Gateway::start(GATEWAY, dir, &parquet_config("1h", 65536));
    let base = 1_700_000_000_000i64;
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..5000 {
        let ts = base + i;
        match post_one(&gw, "acme", ts) {
            (204, _) => acked.push(ts),
            (status, retry_after) => {
                refusal = Some((i, status, retry_after));
                break;
            }
        }
    }
    let (i, status, retry_after) = refusal.expect("a 64 KiB log fills up");
    println!("log full after {i} requests");
    assert!(i > 10, "some requests fit before the bound");
    assert_eq!(status, 503);
    assert!(retry_after.is_some(), "503 carries Retry-After");
    let (status, why) = ready(&gw);
    assert_eq!(status, 503);
    assert!(
        why.contains("write-ahead log full in region local"),
        "{why}"
    );
    let (_, page) = get(&gw.url("/metrics")).expect("metrics");
    assert!(
        page.lines()
            .any(|l| l.starts_with("traceo_rejections_total") && l.contains(r#"reason="wal_full""#)),
        "the refusal is counted by reason"
    );
    // Still refused, never a 2xx for what it cannot keep.
    assert_eq!(post_one(&gw, "acme", base + 9999).0, 503);

    // The sink catches up (files close quickly after this restart): the log drains,
    // segments go, and writes are accepted again.
    rewrite_config(&gw, &parquet_config("200ms", 65536));
    gw.kill9_and_restart(GATEWAY, "gateway-drain.log");
    wait_for(
        "acceptance after the drain",
        Duration::from_secs(30),
        || (post_one(&gw, "acme", base + 10_000).0 == 204).then_some(()),
    );
    acked.push(base + 10_000);
    assert_eq!(ready(&gw).0, 200);
    wait_for(
        "every acknowledged request in Parquet",
        Duration::from_secs(30),
        || {
            let found = parquet_timestamps(dir);
            acked.iter().all(|t| found.contains(t)).then_some(())
        },
    );
}

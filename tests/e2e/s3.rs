//! Parquet into S3 buckets, against moto's S3 server (`moto[server]` from PyPI, run by the
//! tests on a free port). moto rather than `s3s-fs`: it implements the parts of S3 the sink
//! and its readers use (multipart uploads with their `-N` ETags, listing of uploads in
//! progress, path-style addressing, the location constraint of a bucket), it is what
//! pyarrow and duckdb are commonly tested against, and it comes from the same virtualenv as
//! the readers, so no second build joins the suite's ten-minute tansu build. Its storage is
//! in memory, so an outage is a SIGSTOP (a hung server: the harder case for a client), never
//! a restart.
//!
//! - A real Prometheus writes for two tenants of two regions; each region's bucket is read
//!   back with pyarrow's S3 filesystem and with duckdb's `read_parquet('s3://...')`: rows,
//!   labels and the hive layout are checked, and no row is in the other region's bucket.
//! - SIGKILL of the gateway while multipart uploads are in progress, under load: every
//!   object in the bucket is a whole Parquet file, the uploads cut short stay invisible, and
//!   every acknowledged sample is there (duplicates counted).
//! - The S3 server hung for 30 s under load: every request is still acknowledged (the log
//!   has room), no file lands meanwhile, and delivery resumes by itself with nothing lost.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use traceo_e2e::{
    acknowledged, compare, free_port, now_ms, prometheus_client, s3_python_bin, wait_for,
    wait_for_listener, Gateway, Proc,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");
const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/s3_tool.py");

/// moto's S3 server, in memory, on a free port of 127.0.0.1.
struct S3Server {
    proc: Proc,
    endpoint: String,
}

impl S3Server {
    fn start(dir: &Path) -> S3Server {
        let port = free_port();
        let mut cmd = Command::new(s3_python_bin());
        cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string());
        let mut proc = Proc::spawn("moto_server", cmd, dir.join("moto.log"));
        wait_for_listener("moto's S3 server", port, Duration::from_secs(60));
        proc.assert_running();
        S3Server {
            proc,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs `s3_tool.py <args>` against this server; its stdout, or a panic with stderr.
    fn tool(&self, args: &[&str]) -> String {
        let out = Command::new(s3_python_bin())
            .arg(TOOL)
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (set TRACEO_S3_PYTHON to a Python with moto, boto3, pyarrow \
                     and duckdb, or run scripts/install-test-deps.sh): {e}",
                    s3_python_bin()
                )
            });
        assert!(
            out.status.success(),
            "s3_tool.py {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("s3_tool.py prints UTF-8")
    }

    fn make_buckets(&self, region: &str, buckets: &[&str]) {
        let mut args = vec!["mkbucket", region];
        args.extend_from_slice(buckets);
        self.tool(&args);
    }

    /// What a consumer finds in `bucket` (see `census` in s3_tool.py).
    fn census(&self, bucket: &str) -> Census {
        let j: serde_json::Value =
            serde_json::from_str(&self.tool(&["census", bucket])).expect("census is JSON");
        let num = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("census.{k}: {j}"));
        let mut counts = HashMap::new();
        for c in j["counts"].as_array().expect("census.counts") {
            let tenant = c[0].as_str().expect("tenant").to_string();
            let ts = c[1].as_i64().expect("timestamp");
            counts.insert((tenant, ts), c[2].as_u64().expect("count"));
        }
        Census {
            objects: num("objects"),
            multipart_objects: num("multipart_objects"),
            largest_object_bytes: num("largest_object_bytes"),
            incomplete_uploads: num("incomplete_uploads"),
            other_keys: serde_json::from_value(j["other_keys"].clone()).expect("other_keys"),
            rows: num("rows"),
            counts,
        }
    }
}

/// A bucket as a consumer sees it.
#[derive(Debug)]
struct Census {
    objects: u64,
    /// Objects made by a multipart upload (their ETag ends in `-N`).
    multipart_objects: u64,
    largest_object_bytes: u64,
    /// Multipart uploads begun and never completed: invisible to readers.
    incomplete_uploads: u64,
    /// Keys that are neither Parquet files nor the probe's object.
    other_keys: Vec<String>,
    rows: u64,
    /// Samples per (tenant, timestamp).
    counts: HashMap<(String, i64), u64>,
}

/// One row as s3_tool.py prints it (from pyarrow or duckdb).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct S3Row {
    key: String,
    tenant: String,
    region: String,
    metric: String,
    labels: BTreeMap<String, String>,
    timestamp_ms: i64,
    /// Python's `repr` of the value: JSON has no NaN (a staleness marker is one).
    value: Option<String>,
}

fn rows(out: &str) -> Vec<S3Row> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("row {l}: {e}")))
        .collect()
}

/// The `options` of a parquet sink writing to `server`.
fn s3_options(server: &S3Server, aws_region: &str) -> String {
    format!(
        "{{ aws_endpoint: \"{}\", aws_region: {aws_region}, allow_http: true, \
         aws_access_key_id: traceo-e2e, aws_secret_access_key: traceo-e2e-secret, timeout: 5s }}",
        server.endpoint
    )
}

#[test]
fn prometheus_writes_to_two_regions_buckets_read_back_with_pyarrow_and_duckdb() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let s3 = S3Server::start(dir);
    s3.make_buckets("eu-west-1", &["traceo-eu"]);
    s3.make_buckets("us-east-2", &["traceo-us"]);
    let gw = Gateway::start(
        GATEWAY,
        dir,
        &format!(
            r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
regions:
  - id: eu-west
    sinks:
      parquet:
        url: s3://traceo-eu/metrics/v1
        options: {eu}
        max_file_age: 1s
  - id: us-east
    sinks:
      parquet:
        url: s3://traceo-us
        options: {us}
        max_file_age: 1s
tenants:
  - {{ id: team-eu, region: eu-west, passwords: ["eu-pass"] }}
  - {{ id: team-us, region: us-east, passwords: ["us-pass"] }}
"#,
            eu = s3_options(&s3, "eu-west-1"),
            us = s3_options(&s3, "us-east-2"),
        ),
    );

    // One Prometheus, one remote_write queue per tenant: the same series reach both regions.
    let started_ms = now_ms();
    let queue = |tenant: &str, password: &str| {
        format!(
            r#"  - url: "http://127.0.0.1:{port}/api/v1/write"
    name: {tenant}
    basic_auth: {{ username: {tenant}, password: {password} }}
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
"#,
            port = gw.port
        )
    };
    let (mut prom, prom_port) = prometheus_client(
        dir,
        "prom",
        "  scrape_interval: 1s\n",
        ("prometheus", &["SELF"]),
        &(queue("team-eu", "eu-pass") + &queue("team-us", "us-pass")),
    );

    let has = |rows: &[S3Row], m: &str| rows.iter().any(|r| r.metric == m);
    let (eu, us) = wait_for(
        "up and prometheus_build_info in both buckets",
        Duration::from_secs(120),
        || {
            prom.assert_running();
            let eu = rows(&s3.tool(&["rows", "traceo-eu/metrics/v1"]));
            let us = rows(&s3.tool(&["rows", "traceo-us"]));
            let done = [&eu, &us]
                .iter()
                .all(|r| has(r, "up") && has(r, "prometheus_build_info"));
            done.then_some((eu, us))
        },
    );
    let finished_ms = now_ms();

    for (rows, tenant, region) in [(&eu, "team-eu", "eu-west"), (&us, "team-us", "us-east")] {
        // Residency: a bucket holds its own region's tenant only, tagged with that region.
        for r in rows.iter() {
            assert_eq!(r.tenant, tenant, "{r:?}");
            assert_eq!(r.region, region, "{r:?}");
            assert_eq!(r.labels.get("tenant").map(String::as_str), Some(tenant));
            assert_eq!(r.labels.get("region").map(String::as_str), Some(region));
            assert!(
                r.key
                    .starts_with(&format!("region={region}/tenant={tenant}/date="))
                    || r.key
                        .starts_with(&format!("metrics/v1/region={region}/tenant={tenant}/date=")),
                "hive layout under the URL's prefix: {}",
                r.key
            );
            assert!(
                r.timestamp_ms >= started_ms - 60_000 && r.timestamp_ms <= finished_ms + 5_000,
                "timestamp outside the run: {r:?}"
            );
        }
        let up = rows.iter().find(|r| r.metric == "up").expect("an up row");
        assert_eq!(up.value.as_deref(), Some("1.0"), "{up:?}");
        assert_eq!(up.labels.get("job").map(String::as_str), Some("prometheus"));
        assert_eq!(
            up.labels.get("instance"),
            Some(&format!("127.0.0.1:{prom_port}"))
        );
        let build = rows
            .iter()
            .find(|r| r.metric == "prometheus_build_info")
            .expect("a build_info row");
        for label in ["version", "revision", "goversion"] {
            assert!(build.labels.contains_key(label), "{label} in {build:?}");
        }
    }
    assert!(
        eu.iter().all(|r| r.key.starts_with("metrics/v1/")),
        "the EU bucket's files are under the URL's prefix"
    );

    // duckdb over s3:// finds the same rows pyarrow does (files closed since are left out).
    for (target, pyarrow_rows) in [("traceo-eu/metrics/v1", &eu), ("traceo-us", &us)] {
        let duck = rows(&s3.tool(&["duckdb", target]));
        let keys: std::collections::BTreeSet<&str> =
            pyarrow_rows.iter().map(|r| r.key.as_str()).collect();
        let mut duck: Vec<S3Row> = duck
            .into_iter()
            .filter(|r| keys.contains(r.key.as_str()))
            .collect();
        let mut arrow = pyarrow_rows.clone();
        let order = |a: &S3Row, b: &S3Row| {
            (&a.key, a.timestamp_ms, &a.metric, &a.labels).cmp(&(
                &b.key,
                b.timestamp_ms,
                &b.metric,
                &b.labels,
            ))
        };
        duck.sort_by(order);
        arrow.sort_by(order);
        assert_eq!(
            duck.len(),
            arrow.len(),
            "{target}: rows via duckdb and pyarrow"
        );
        assert!(duck == arrow, "{target}: duckdb and pyarrow disagree");
        println!(
            "{target}: {} rows, read alike by pyarrow and duckdb",
            duck.len()
        );
    }
    assert!(
        !prom.log().contains("non-recoverable error"),
        "Prometheus saw non-recoverable errors:\n{}",
        prom.log()
    );
}

fn loadgen(gw: &Gateway, dir: &Path, acks: &Path, shape: &[&str], rate: u32, secs: u32) -> Proc {
    let mut cmd = Command::new(traceo_e2e::loadgen_bin(GATEWAY));
    cmd.arg("--url")
        .arg(gw.url("/api/v1/write"))
        .args([
            "--tenants",
            "2",
            "--histograms",
            "none",
            "--connections",
            "4",
        ])
        .args(shape)
        .args(["--timeout", "10", "--json"])
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--record-acks")
        .arg(acks);
    Proc::spawn("traceo-loadgen", cmd, dir.join("loadgen.log"))
}

/// Waits until `bucket` holds every acknowledged sample (the log may still be draining);
/// returns the last census, and the missing requests if the deadline passed first.
fn drained(
    s3: &S3Server,
    bucket: &str,
    want: &BTreeMap<(String, i64), u64>,
) -> (Census, Vec<String>, u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let census = s3.census(bucket);
        let (missing, duplicates) = compare(want, &census.counts);
        if missing.is_empty() || Instant::now() > deadline {
            return (census, missing, duplicates);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A gateway with the log and one region whose Parquet files go to `bucket` of `s3`, in
/// multipart uploads past 5 MiB (S3's smallest part).
fn load_gateway(dir: &Path, s3: &S3Server, bucket: &str, max_file_age: &str) -> Gateway {
    Gateway::start(
        GATEWAY,
        dir,
        &format!(
            r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
auth: {{ mode: off, default_region: eu-west }}
pipeline: {{ shards: 2 }}
durability: {{ dir: "{{dir}}/wal", segment_bytes: 4194304, max_bytes_per_region: 1073741824, max_bytes_per_tenant: 1073741824 }}
regions:
  - id: eu-west
    sinks:
      parquet:
        url: s3://{bucket}
        options: {options}
        max_file_age: {max_file_age}
        max_file_bytes: 67108864
        multipart_part_bytes: 5242880
"#,
            options = s3_options(s3, "eu-west-1"),
        ),
    )
}

/// The loadgen shape whose Parquet files outgrow one 5 MiB part within a second or two:
/// high-entropy label values of 48 bytes, which dictionary encoding cannot fold.
const BIG_FILES: [&str; 10] = [
    "--series",
    "40000",
    "--series-per-request",
    "500",
    "--labels",
    "10",
    "--value-len",
    "48",
    "--bodies",
    "4",
];

/// Lines `upload KEY` that `watch-uploads` has printed so far.
fn uploads_seen(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("upload "))
        .count()
}

#[test]
fn sigkill_during_multipart_uploads_leaves_no_partial_object_and_loses_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let s3 = S3Server::start(dir);
    s3.make_buckets("eu-west-1", &["traceo-load"]);
    let mut gw = load_gateway(dir, &s3, "traceo-load", "2s");

    // A reader of moto's list of uploads in progress: a line per upload as soon as it begins.
    let watch_log = dir.join("watch-uploads.log");
    let mut watch_cmd = Command::new(s3_python_bin());
    watch_cmd
        .arg(TOOL)
        .args(["--endpoint", &s3.endpoint, "watch-uploads", "traceo-load"]);
    let mut watcher = Proc::spawn("watch-uploads", watch_cmd, watch_log.clone());

    let acks = dir.join("acks.txt");
    let mut load = loadgen(&gw, dir, &acks, &BIG_FILES, 20_000, 45);
    let kills = 5;
    let mut cut_short = 0;
    for n in 0..kills {
        // Kill as soon as a multipart upload is under way.
        let before = uploads_seen(&watch_log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while uploads_seen(&watch_log) == before && Instant::now() < deadline {
            watcher.assert_running();
            std::thread::sleep(Duration::from_millis(5));
        }
        let during_upload = uploads_seen(&watch_log) > before;
        cut_short += u64::from(during_upload);
        load.assert_running();
        gw.kill9_and_restart(GATEWAY, &format!("gateway-{n}.log"));
        println!("kill {n}: during a multipart upload: {during_upload}");
    }
    wait_for(
        "the load generator to finish",
        Duration::from_secs(120),
        || load.try_wait(),
    );
    let want = acknowledged(&acks);
    let requests = want.len();
    let samples: u64 = want.values().sum();
    assert!(
        requests > 500,
        "too little was acknowledged for the test to mean anything: {requests} requests"
    );

    let (census, missing, duplicates) = drained(&s3, "traceo-load", &want);
    println!(
        "{kills} SIGKILLs ({cut_short} while a multipart upload was in progress); {requests} \
         requests ({samples} samples) acknowledged; bucket: {} objects ({} multipart, largest \
         {} bytes), {} rows, {duplicates} duplicate samples, {} uploads left incomplete",
        census.objects,
        census.multipart_objects,
        census.largest_object_bytes,
        census.rows,
        census.incomplete_uploads,
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not in the bucket ({} of {requests} requests): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    // Every object read whole (census fails otherwise); nothing else is in the bucket.
    assert!(census.other_keys.is_empty(), "{:?}", census.other_keys);
    assert!(
        census.multipart_objects > 0,
        "no file was a multipart upload: the test did not exercise them ({census:?})"
    );
    assert!(
        cut_short > 0 && census.incomplete_uploads > 0,
        "no kill cut an upload short ({cut_short} kills during one, {} incomplete)",
        census.incomplete_uploads
    );
}

#[test]
fn a_hung_s3_server_for_30s_under_load_keeps_2xx_and_delivery_resumes_by_itself() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let s3 = S3Server::start(dir);
    s3.make_buckets("eu-west-1", &["traceo-outage"]);
    let gw = load_gateway(dir, &s3, "traceo-outage", "1s");
    let acks = dir.join("acks.txt");
    let shape = [
        "--series",
        "6000",
        "--series-per-request",
        "100",
        "--labels",
        "8",
    ];
    let mut load = loadgen(&gw, dir, &acks, &shape, 5000, 50);
    let files = || gw.metric("traceo_sink_files_written_total").unwrap_or(0.0);
    let logged = || gw.metric("traceo_wal_records").unwrap_or(0.0);
    wait_for("files in the bucket", Duration::from_secs(30), || {
        (files() > 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));

    s3.proc.signal("STOP");
    let outage = Instant::now();
    // Uploads under way when the server hung may still land in its socket buffers; count
    // from a few seconds in.
    std::thread::sleep(Duration::from_secs(6));
    let files_hung = files();
    let mut peak_logged: f64 = 0.0;
    while outage.elapsed() < Duration::from_secs(30) {
        load.assert_running();
        peak_logged = peak_logged.max(logged());
        std::thread::sleep(Duration::from_millis(500));
    }
    let files_after_hang = files();
    s3.proc.signal("CONT");
    let resumed = Instant::now();
    wait_for(
        "a file written after the S3 server came back",
        Duration::from_secs(90),
        || (files() > files_after_hang).then_some(()),
    );
    println!(
        "first file after the hang {:?} after the server came back",
        resumed.elapsed()
    );
    println!(
        "S3 hung 30 s: files written {files_hung} -> {files_after_hang} meanwhile; log peaked \
         at {peak_logged} records"
    );
    assert_eq!(
        files_hung, files_after_hang,
        "files were written while the S3 server was hung"
    );

    let status = wait_for(
        "the load generator to finish",
        Duration::from_secs(90),
        || load.try_wait(),
    );
    assert!(status.success(), "loadgen: {}", load.log());
    let report: serde_json::Value = load
        .log()
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("loadgen's JSON report");
    let codes = report["codes"].as_object().expect("codes in the report");
    assert!(
        codes.keys().all(|c| c == "204"),
        "every request is acknowledged while the log has room: {codes:?}"
    );

    let want = acknowledged(&acks);
    let (census, missing, duplicates) = drained(&s3, "traceo-outage", &want);
    println!(
        "{} requests acknowledged; bucket: {} objects, {} rows, {duplicates} duplicate samples",
        want.len(),
        census.objects,
        census.rows
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not in the bucket ({} requests): {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(census.other_keys.is_empty(), "{:?}", census.other_keys);
    assert!(
        peak_logged > logged(),
        "the log held the outage's records and drained after ({peak_logged} -> {})",
        logged()
    );
}

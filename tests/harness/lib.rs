//! Harness for end-to-end tests: real processes on free loopback ports in temp dirs, readiness
//! waits with deadlines, logs printed when a test fails, children killed on drop, and a reader
//! for the Parquet files the gateway writes.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType};
use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A free port on 127.0.0.1, free for both TCP and UDP when handed out, for a child process to
/// take.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so nothing that
/// binds port 0 (a test's own proxy, a client's outgoing connection) can be handed the same
/// port between this call and the child's bind; each port is handed out once per process, so
/// two tests running in parallel never share one. The start is spread by process id so test
/// binaries run side by side rarely meet. A CI failure showed the race this avoids: a port
/// released by `bind(0)` was taken by another test's proxy, whose 500s then answered the
/// first test's readiness probe.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOW: u32 = 10_000;
    if ephemeral_low <= LOW + 1_000 {
        // An unusual kernel setting leaves no room below the range: fall back to port 0.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("the loopback interface has free ports");
    }
    let span = ephemeral_low - LOW;
    let start = (std::process::id() * 97) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 below {ephemeral_low}");
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A child process killed when dropped; its output goes to a log file printed if the test
/// is failing at that moment.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = File::create(&log).expect("log file in temp dir");
        let err = out.try_clone().expect("dup log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}; log:\n{}", self.name, self.log());
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`, ...) without waiting.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.name);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident set size so far (`VmHWM` of `/proc/<pid>/status`), bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_else(|e| panic!("cannot read /proc status of {}: {e}", self.name));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no VmHWM line for {}", self.name))
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_for(&format!("{} to exit", self.name), timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// An HTTP agent that returns every status instead of turning 4xx/5xx into errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET `url`; `Some((status, body))` if anything answered.
pub fn get(url: &str) -> Option<(u16, String)> {
    let mut resp = http().get(url).call().ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Some((status, body))
}

/// A running `traceo-gateway`.
pub struct Gateway {
    /// The process.
    pub proc: Proc,
    /// Its HTTP port on 127.0.0.1.
    pub port: u16,
    /// Its temp dir (config, logs, data).
    pub dir: PathBuf,
    /// Its plain telemetry listener (`listen.telemetry`), when the config has one.
    pub telemetry_port: Option<u16>,
}

impl Gateway {
    /// Starts the gateway binary `bin` with `config` (YAML; `{port}`, `{dir}` and
    /// `{telemetry_port}` are substituted) and waits until `/-/ready` answers 200 (on the
    /// telemetry listener when the config has one, as with TLS on the others).
    pub fn start(bin: &str, dir: &Path, config: &str) -> Gateway {
        let port = free_port();
        let telemetry_port = config.contains("{telemetry_port}").then(free_port);
        let yaml = config
            .replace("{port}", &port.to_string())
            .replace(
                "{telemetry_port}",
                &telemetry_port.unwrap_or_default().to_string(),
            )
            .replace("{dir}", &dir.display().to_string());
        let cfg = dir.join("gateway.yaml");
        std::fs::write(&cfg, yaml).expect("write config");
        let proc = Self::spawn(bin, dir, telemetry_port.unwrap_or(port), "gateway.log");
        Gateway {
            proc,
            port,
            dir: dir.to_path_buf(),
            telemetry_port,
        }
    }

    /// `http://127.0.0.1:<telemetry port><path>`.
    pub fn telemetry_url(&self, path: &str) -> String {
        let port = self.telemetry_port.expect("a config with listen.telemetry");
        format!("http://127.0.0.1:{port}{path}")
    }

    fn spawn(bin: &str, dir: &Path, port: u16, log: &str) -> Proc {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(dir.join("gateway.yaml"))
            .current_dir(dir);
        cmd.env("RUST_LOG", "info");
        let mut proc = Proc::spawn("traceo-gateway", cmd, dir.join(log));
        let url = format!("http://127.0.0.1:{port}/-/ready");
        wait_for("gateway readiness", Duration::from_secs(30), || {
            proc.assert_running();
            get(&url).filter(|(s, _)| *s == 200)
        });
        proc
    }

    /// Kills the gateway with SIGKILL and starts it again with the same config, port and
    /// directory (its log goes to `log`); returns once it is ready.
    pub fn kill9_and_restart(&mut self, bin: &str, log: &str) {
        self.proc.kill9();
        let ready = self.telemetry_port.unwrap_or(self.port);
        self.proc = Self::spawn(bin, &self.dir, ready, log);
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A self-metric of the gateway now (see [`metric_in`]).
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        metric_in(&get(&self.url("/metrics"))?.1, prefix)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The sum of the values of every `/metrics` line of `page` that starts with `prefix` (a
/// metric name, optionally with the start of its labels); `None` when no line does.
pub fn metric_in(page: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// One row of a gateway Parquet file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// File it came from, relative to the data dir.
    pub file: String,
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// `tenant` column.
    pub tenant: String,
    /// `region` column.
    pub region: String,
    /// `metric` column.
    pub metric: String,
    /// `labels` map column.
    pub labels: BTreeMap<String, String>,
    /// `value` column (None for histogram rows).
    pub value: Option<f64>,
    /// `histogram_count` column (None for float rows).
    pub histogram_count: Option<f64>,
    /// `histogram_sum` column (None for float rows).
    pub histogram_sum: Option<f64>,
}

/// Every `*.parquet` file under `dir`, recursively (temporary names are skipped).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads every row of every Parquet file under `dir` with the Arrow reader.
pub fn read_rows(dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        let file = File::open(&path).expect("open parquet file");
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap_or_else(|e| panic!("{rel} is not a readable Parquet file: {e}"))
            .build()
            .expect("build reader");
        for batch in reader {
            let batch = batch.expect("read record batch");
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("{rel} has no column {name}"))
                    .clone()
            };
            let ts = col("timestamp");
            let ts = ts.as_primitive::<TimestampMillisecondType>();
            let tenant = col("tenant");
            let tenant = tenant.as_string::<i32>();
            let region = col("region");
            let region = region.as_string::<i32>();
            let metric = col("metric");
            let metric = metric.as_string::<i32>();
            let value = col("value");
            let value = value.as_primitive::<Float64Type>();
            let hcount = col("histogram_count");
            let hcount = hcount.as_primitive::<Float64Type>();
            let hsum = col("histogram_sum");
            let hsum = hsum.as_primitive::<Float64Type>();
            let labels = col("labels");
            let labels = labels.as_map();
            for i in 0..batch.num_rows() {
                let entries = labels.value(i);
                let keys = entries.column(0).as_string::<i32>();
                let vals = entries.column(1).as_string::<i32>();
                let map = (0..entries.len())
                    .map(|j| (keys.value(j).to_string(), vals.value(j).to_string()))
                    .collect();
                rows.push(Row {
                    file: rel.clone(),
                    timestamp_ms: ts.value(i),
                    tenant: tenant.value(i).to_string(),
                    region: region.value(i).to_string(),
                    metric: metric.value(i).to_string(),
                    labels: map,
                    value: (!value.is_null(i)).then(|| value.value(i)),
                    histogram_count: (!hcount.is_null(i)).then(|| hcount.value(i)),
                    histogram_sum: (!hsum.is_null(i)).then(|| hsum.value(i)),
                });
            }
        }
    }
    rows
}

/// A snappy-compressed remote-write 1.0 request: one float sample at `timestamp_ms` per
/// series, each series given as `(name, value)` label pairs (sent in the order given).
pub fn remote_write_body(series: &[&[(&str, &str)]], timestamp_ms: i64) -> Vec<u8> {
    use prost::Message;
    use protocols::remote_write::v1::reference as pb;
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|labels| pb::TimeSeries {
                labels: labels
                    .iter()
                    .map(|(n, v)| pb::Label {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: vec![pb::Sample {
                    value: 1.0,
                    timestamp: timestamp_ms,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    protocols::snappy::compress(&req.encode_to_vec())
}

/// An HTTP answer as a test reads it.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// Headers, names as sent (lower-case over HTTP/1.1 from hyper).
    pub headers: Vec<(String, String)>,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs `body` to `url` with exactly `headers`; panics only if nothing answered.
pub fn post_with(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    try_post_with(&http(), url, body, headers).expect("gateway answers")
}

/// [`post_with`] through `agent`, with a transport error returned instead of a panic (for
/// load threads that count failures).
pub fn try_post_with(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<Answer, ureq::Error> {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Answer {
        status,
        body,
        headers,
    })
}

/// The headers of a remote-write 1.0 request.
pub const REMOTE_WRITE_V1_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

/// The headers of a remote-write 2.0 request.
pub const REMOTE_WRITE_V2_HEADERS: [(&str, &str); 3] = [
    (
        "content-type",
        "application/x-protobuf;proto=io.prometheus.write.v2.Request",
    ),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "2.0.0"),
];

/// POSTs a remote-write 1.0 body with [`REMOTE_WRITE_V1_HEADERS`] plus `headers`; returns
/// the status and the response body.
pub fn post_remote_write(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, String) {
    let all = [&REMOTE_WRITE_V1_HEADERS[..], headers].concat();
    let a = post_with(url, body, &all);
    (a.status, a.body)
}

/// The `tansu` broker binary: `$TANSU_BIN`, else where `.ci/run` installs it, else `PATH`.
pub fn tansu_bin() -> String {
    if let Ok(b) = std::env::var("TANSU_BIN") {
        return b;
    }
    if let Ok(home) = std::env::var("HOME") {
        let cached = Path::new(&home).join(".cache/traceo-tools/bin/tansu");
        if cached.exists() {
            return cached.display().to_string();
        }
    }
    "tansu".to_string()
}

/// Waits until something accepts TCP connections on `127.0.0.1:<port>`.
pub fn wait_for_listener(what: &str, port: u16, timeout: Duration) {
    wait_for(&format!("{what} to listen on {port}"), timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// The Python interpreter with the OpenTelemetry SDK: `$TRACEO_PYTHON`, else the virtualenv
/// `.ci/run` builds (`$TRACEO_TOOLS/otel-venv`, default `~/.cache/traceo-tools/otel-venv`),
/// else `python3` from `PATH`.
pub fn python_bin() -> String {
    venv_python("TRACEO_PYTHON", "otel-venv")
}

/// The Python interpreter with moto's S3 server, boto3, pyarrow and duckdb:
/// `$TRACEO_S3_PYTHON`, else `$TRACEO_TOOLS/s3-venv` (default `~/.cache/traceo-tools`), else
/// `python3` from `PATH`.
pub fn s3_python_bin() -> String {
    venv_python("TRACEO_S3_PYTHON", "s3-venv")
}

/// `$var`, else the interpreter of the tools cache's virtualenv `venv`, else `python3`.
fn venv_python(var: &str, venv: &str) -> String {
    if let Ok(p) = std::env::var(var) {
        return p;
    }
    let tools = std::env::var("TRACEO_TOOLS")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache/traceo-tools")));
    if let Ok(tools) = tools {
        let python = tools.join(venv).join("bin/python");
        if python.exists() {
            return python.display().to_string();
        }
    }
    "python3".to_string()
}

/// A running `tansu` Kafka-protocol broker with in-memory storage on a free port.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Broker {
    /// Starts a broker (`name` labels its log in `dir`) and waits until it accepts
    /// connections.
    pub fn start(dir: &Path, name: &str) -> Broker {
        Self::start_advertising(dir, name, None)
    }

    /// Starts a broker that tells clients to reach it at `advertised` (`host:port`, e.g. a
    /// TLS terminator in front of it) instead of its own listener.
    pub fn start_advertising(dir: &Path, name: &str, advertised: Option<&str>) -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&advertised)
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .current_dir(dir);
        let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
        wait_for(
            &format!("{name} to listen"),
            Duration::from_secs(30),
            || {
                proc.assert_running();
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            },
        );
        Broker { proc, port }
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .arg("topic")
            .arg("create")
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg(topic)
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {topic} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every sample in `topic`, read with `traceo-gateway tail --json` (an rdkafka consumer),
/// until the topic has been idle for `idle_secs`.
pub fn tail_json(
    gateway_bin: &str,
    brokers: &str,
    topic: &str,
    idle_secs: u64,
) -> Vec<serde_json::Value> {
    tail_json_with(gateway_bin, brokers, topic, idle_secs, &[])
}

/// [`tail_json`] with extra librdkafka settings (`tail --property KEY=VALUE`).
pub fn tail_json_with(
    gateway_bin: &str,
    brokers: &str,
    topic: &str,
    idle_secs: u64,
    properties: &[(&str, String)],
) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(gateway_bin);
    cmd.arg("tail");
    for (k, v) in properties {
        cmd.arg("--property").arg(format!("{k}={v}"));
    }
    let out = cmd
        .arg("--brokers")
        .arg(brokers)
        .arg("--topic")
        .arg(topic)
        .arg("--json")
        .arg("--idle-exit-secs")
        .arg(idle_secs.to_string())
        .output()
        .expect("run traceo-gateway tail");
    assert!(
        out.status.success(),
        "tail {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("tail printed {l:?}: {e}")))
        .collect()
}

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate with
/// common name `cn`, as PEM files under `dir`: `ca.pem`, `server.pem`, `server.key`,
/// `client.pem`, `client.key`, and second server and client pairs (`server-renewed.*`)
/// and a second client pair of the same name and CA,
/// `client-renewed.pem` and `client-renewed.key`, to rotate to.
pub fn write_pki(dir: &Path, cn: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "traceo test CA");
    let ca = ca.self_signed(&ca_key).expect("CA");
    // Two server pairs from the same CA: the second stands in for a renewal.
    let server_pair = || {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
        (cert, key)
    };
    let (server, server_key) = server_pair();
    let (server_renewed, server_renewed_key) = server_pair();
    // A server pair that names only a host nobody resolves, so a client reaching it by
    // address must be told the name to verify (`tls.server_name`).
    let named_key = KeyPair::generate().expect("server key");
    let mut named = CertificateParams::new(vec![NAMED_SERVER.to_string()]).expect("params");
    named.use_authority_key_identifier_extension = true;
    named.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    named.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let named = named
        .signed_by(&named_key, &ca, &ca_key)
        .expect("named server cert");
    // Two client pairs from the same CA: the second stands in for a renewal.
    let client_pair = |cn: &str| {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).expect("client cert");
        (cert, key)
    };
    let (client, client_key) = client_pair(cn);
    let (renewed, renewed_key) = client_pair(cn);
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
        ("server-renewed.pem", server_renewed.pem()),
        ("server-renewed.key", server_renewed_key.serialize_pem()),
        ("server-named.pem", named.pem()),
        ("server-named.key", named_key.serialize_pem()),
        ("client.pem", client.pem()),
        ("client.key", client_key.serialize_pem()),
        ("client-renewed.pem", renewed.pem()),
        ("client-renewed.key", renewed_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write PEM");
    }
}

/// The certificate (DER) a TLS server on 127.0.0.1:`port` presents to a new connection
/// that trusts `pki/ca.pem` and asks for `localhost`.
pub fn served_certificate(port: u16, pki: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).expect("CA PEM") {
        roots.add(c.expect("CA cert")).expect("CA usable");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("connection");
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).expect("handshake");
    }
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a server certificate")
}

/// The first certificate of a PEM file, DER.
pub fn pem_certificate(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .expect("a PEM certificate")
        .to_vec()
}

/// `traceo-loadgen`, built beside the gateway binary `gateway` by `cargo test --workspace`.
pub fn loadgen_bin(gateway: &str) -> PathBuf {
    let bin = Path::new(gateway)
        .parent()
        .expect("binary dir")
        .join("traceo-loadgen");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p traceo-loadtest` first)",
        bin.display()
    );
    bin
}

/// The only name on `server-named.pem` ([`write_pki`]); it resolves nowhere.
pub const NAMED_SERVER: &str = "prom.traceo.test";

/// Sends every host name to 127.0.0.1, so a test client can verify a certificate's name
/// (e.g. [`NAMED_SERVER`]) that no DNS knows.
#[derive(Debug)]
struct Loopback;

impl ureq::unversioned::resolver::Resolver for Loopback {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            uri.port_u16().unwrap_or(443),
        )));
        Ok(addrs)
    }
}

/// An HTTPS client trusting `pki/ca.pem` and showing `pki/client.pem` (as [`write_pki`]
/// writes them); every host name connects to 127.0.0.1.
pub fn https_agent(pki: &Path) -> ureq::Agent {
    let read = |f: &str| std::fs::read(pki.join(f)).expect("PEM file");
    let ca = ureq::tls::Certificate::from_pem(&read("ca.pem")).expect("CA PEM");
    let cert = ureq::tls::Certificate::from_pem(&read("client.pem")).expect("client PEM");
    let key = ureq::tls::PrivateKey::from_pem(&read("client.key")).expect("key PEM");
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
        .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)))
        .build();
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls)
        .build();
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        Loopback,
    )
}

/// The Prometheus binary: `$PROMETHEUS_BIN`, else `prometheus` from `PATH` (Debian package).
pub fn prometheus_bin() -> String {
    std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_string())
}

/// `root/name`, made, holding the gossip key ring `key` as `gossip.keys`: the directory of
/// one node of a gossiping fleet.
pub fn node_dir(root: &Path, name: &str, key: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("node dir");
    std::fs::write(dir.join("gossip.keys"), format!("{key}\n")).expect("gossip keys");
    dir
}

/// A Prometheus server (Debian's package) that scrapes itself every `scrape_interval` and
/// remote-writes as `remote_write` says (the YAML list under `remote_write:`, indented by two
/// spaces), with its data in `dir/prom-data`; returns it and its port.
pub fn prometheus_scraping_itself(
    dir: &Path,
    scrape_interval: &str,
    remote_write: &str,
) -> (Proc, u16) {
    prometheus_client(
        dir,
        "prom",
        &format!("  scrape_interval: {scrape_interval}\n"),
        ("prometheus", &["SELF"]),
        remote_write,
    )
}

/// A Prometheus server named `name` (config, data and log under `dir`): `global` is YAML
/// under `global:` (indented by two spaces: `scrape_interval`, `external_labels`), it scrapes
/// `(job, targets)` (`host:port`; `SELF` is its own address), and remote-writes as
/// `remote_write` says (the YAML list under `remote_write:`). Returns it and its port.
pub fn prometheus_client(
    dir: &Path,
    name: &str,
    global: &str,
    (job, targets): (&str, &[&str]),
    remote_write: &str,
) -> (Proc, u16) {
    let port = free_port();
    let me = format!("127.0.0.1:{port}");
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("\"{}\"", if *t == "SELF" { me.as_str() } else { t }))
        .collect();
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        format!(
            "global:\n  evaluation_interval: 1s\n{global}scrape_configs:\n  - job_name: {job}\n    \
             static_configs:\n      - targets: [{}]\nremote_write:\n{remote_write}",
            targets.join(", ")
        ),
    )
    .expect("write prometheus config");
    let mut cmd = Command::new(prometheus_bin());
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join(format!("{name}-data")).display()
        ))
        .arg(format!("--web.listen-address={me}"));
    (
        Proc::spawn("prometheus", cmd, dir.join(format!("{name}.log"))),
        port,
    )
}

/// A running Prometheus server that accepts remote-write (`--web.enable-remote-write-receiver`)
/// and scrapes nothing: a remote-write backend to query back.
pub struct PrometheusBackend {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http` or `https`.
    scheme: &'static str,
    /// The host its own probes and queries use (its certificate's name with TLS).
    host: &'static str,
    /// The client that reaches it (with a client certificate when it serves HTTPS).
    agent: ureq::Agent,
}

impl PrometheusBackend {
    /// Starts it with its data under `dir/<name>` and waits until it is ready.
    pub fn start(dir: &Path, name: &str) -> PrometheusBackend {
        Self::start_with(dir, name, None)
    }

    /// Starts it serving HTTPS only (`--web.config.file` with `tls_server_config`) with the
    /// `server-named` pair of `pki` ([`write_pki`]: it names only [`NAMED_SERVER`]), requiring a
    /// client certificate signed by its CA. [`PrometheusBackend::write_url`] then gives
    /// 127.0.0.1, so a client must verify [`NAMED_SERVER`] by configuration.
    pub fn start_tls(dir: &Path, name: &str, pki: &Path) -> PrometheusBackend {
        Self::start_with(dir, name, Some(pki))
    }

    fn start_with(dir: &Path, name: &str, pki: Option<&Path>) -> PrometheusBackend {
        let port = free_port();
        let cfg = dir.join(format!("{name}.yml"));
        std::fs::write(&cfg, "global:\n  scrape_interval: 15s\n").expect("write prometheus config");
        let mut cmd = Command::new(prometheus_bin());
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join(name).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver");
        let (scheme, host, agent) = match pki {
            None => ("http", "127.0.0.1", http()),
            Some(p) => {
                let web = dir.join(format!("{name}-web.yml"));
                let d = p.display();
                std::fs::write(
                    &web,
                    format!(
                        "tls_server_config:\n  cert_file: {d}/server-named.pem\n  key_file: {d}/server-named.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d}/ca.pem\n"
                    ),
                )
                .expect("write web config");
                cmd.arg(format!("--web.config.file={}", web.display()));
                ("https", NAMED_SERVER, https_agent(p))
            }
        };
        let mut proc = Proc::spawn(name, cmd, dir.join(format!("{name}.log")));
        let url = format!("{scheme}://{host}:{port}/-/ready");
        wait_for(
            &format!("{name} readiness"),
            Duration::from_secs(60),
            || {
                proc.assert_running();
                let mut r = agent.get(&url).call().ok()?;
                let body = r.body_mut().read_to_string().unwrap_or_default();
                (r.status().as_u16() == 200).then_some(body)
            },
        );
        PrometheusBackend {
            proc,
            port,
            scheme,
            host,
            agent,
        }
    }

    /// `<scheme>://127.0.0.1:<port>/api/v1/write`.
    pub fn write_url(&self) -> String {
        format!("{}://127.0.0.1:{}/api/v1/write", self.scheme, self.port)
    }

    /// The result vector of an instant query (`data.result`), empty if the query failed.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let mut resp = match self
            .agent
            .get(format!(
                "{}://{}:{}/api/v1/query",
                self.scheme, self.host, self.port
            ))
            .query("query", promql)
            .call()
        {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// Runs `traceo-gateway <args>` (a one-shot subcommand such as `quarantine list`) and returns
/// its stdout; panics with both streams if it fails.
pub fn gateway_cli(gateway_bin: &str, args: &[&str]) -> String {
    let out = Command::new(gateway_bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run traceo-gateway {args:?}: {e}"));
    assert!(
        out.status.success(),
        "traceo-gateway {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Samples acknowledged per (tenant, timestamp), from a `traceo-loadgen --record-acks` file.
pub fn acknowledged(acks: &Path) -> BTreeMap<(String, i64), u64> {
    let mut want = BTreeMap::new();
    for a in loadtest::acks::read(acks).expect("read acks") {
        *want.entry((a.tenant, a.timestamp_ms)).or_insert(0) += a.samples;
    }
    want
}

/// Compares what was acknowledged with what `found` holds (samples per tenant and
/// timestamp): the acknowledged requests it lacks, as `tenant@ts (got of want)`, and the
/// number of duplicate samples.
pub fn compare(
    want: &BTreeMap<(String, i64), u64>,
    found: &std::collections::HashMap<(String, i64), u64>,
) -> (Vec<String>, u64) {
    let mut missing = Vec::new();
    let mut duplicates = 0;
    for (key, &n) in want {
        let got = found.get(key).copied().unwrap_or(0);
        if got < n {
            missing.push(format!("{}@{} ({got} of {n})", key.0, key.1));
        } else {
            duplicates += got - n;
        }
    }
    (missing, duplicates)
}

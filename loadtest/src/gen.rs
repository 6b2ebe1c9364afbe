//! Realistic payloads from a fixed seed.
//!
//! Series look like what Prometheus scrapes from Kubernetes: a metric name from a list of
//! common exporters' metrics, then labels such as `cluster`, `namespace`, `pod`, `instance`
//! with values of realistic length (pod names with replica-set hashes, node host names, IP
//! and port instances). The same seed always yields the same bytes.
//!
//! A [`Generator`] keeps a pool of series and cycles through it, `series_per_request` series
//! per request, one point each, all at the request's timestamp. [`Shape`] adds what a real
//! fleet has beyond that: churn (pods replaced between scrapes), histograms (classic or
//! native), longer label values, and streams (several generators, e.g. one per connection,
//! that never make the same series). The generator is protocol-neutral: it yields a
//! [`Payload`], and [`crate::wire`] turns one into a remote-write 1.0, 2.0 or OTLP body.
//!
//! This module does no I/O. With [`Shape::default`] it yields exactly the bytes it yielded
//! before `Shape` existed, so the benches' payload does not move under their figures.

use std::str::FromStr;
use std::sync::Arc;

use protocols::remote_write::v1::reference as pb;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Shape of the generated traffic.
#[derive(Debug, Clone, Copy)]
pub struct PayloadSpec {
    /// Distinct series in the pool requests cycle through.
    pub series: usize,
    /// Series per request (one sample each).
    pub series_per_request: usize,
    /// Labels per series, `__name__` included (2..=16).
    pub labels_per_series: usize,
    /// Seed; same seed, same bytes.
    pub seed: u64,
}

impl Default for PayloadSpec {
    /// The shape of the project's benchmarks: 2000 series x 10 labels x 1 sample per request.
    fn default() -> Self {
        Self {
            series: 20_000,
            series_per_request: 2000,
            labels_per_series: 10,
            seed: 42,
        }
    }
}

/// Which histograms part of the pool carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistogramKind {
    /// Float samples only.
    #[default]
    None,
    /// Classic histograms: in remote-write a `_bucket` series per bound plus `+Inf`, `_sum`
    /// and `_count` ([`CLASSIC_SAMPLES`] samples); in OTLP an explicit-bounds histogram point.
    Classic,
    /// Native histograms (schema [`NATIVE_SCHEMA`]): in remote-write one histogram sample; in
    /// OTLP an exponential histogram point.
    Native,
}

impl FromStr for HistogramKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "classic" => Ok(Self::Classic),
            "native" => Ok(Self::Native),
            other => Err(format!(
                "unknown histogram kind {other:?}: use none, classic or native"
            )),
        }
    }
}

/// What [`PayloadSpec`] leaves out. The default reproduces [`Generator::new`]'s traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Fraction of the pool (0..=1) replaced by new series after each pass over it. A pass
    /// sends every series of the pool once, like one scrape interval of a fleet; a replaced
    /// series is a restarted pod: new pod name, new instance, possibly a new resource.
    pub churn: f64,
    /// Histograms in the pool.
    pub histograms: HistogramKind,
    /// Fraction of the pool's series (0..=1) that are histograms, when `histograms` is not
    /// [`HistogramKind::None`].
    pub histogram_fraction: f64,
    /// Every label value except `__name__` padded with random characters, or cut, to this many
    /// bytes; `instance` (which makes series distinct) is padded but never cut.
    pub value_len: Option<usize>,
    /// This generator is stream `stream` of `streams`: its `k`-th series gets index
    /// `stream + streams * k` (the index picks the `instance` address), so the streams of one
    /// run never make the same series.
    pub stream: usize,
    /// Number of streams (at least 1).
    pub streams: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            churn: 0.0,
            histograms: HistogramKind::None,
            histogram_fraction: DEFAULT_HISTOGRAM_FRACTION,
            value_len: None,
            stream: 0,
            streams: 1,
        }
    }
}

/// Share of histogram series when histograms are on: in a typical Kubernetes scrape about a
/// tenth of the metric families are histograms.
pub const DEFAULT_HISTOGRAM_FRACTION: f64 = 0.1;

/// Bounds of generated classic histograms: Prometheus client_golang's `DefBuckets`.
pub const CLASSIC_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Samples one classic histogram point amounts to: a `_bucket` per bound, `+Inf`, `_sum`
/// and `_count`.
pub const CLASSIC_SAMPLES: u64 = CLASSIC_BOUNDS.len() as u64 + 3;

/// Schema of generated native histograms: Prometheus' default resolution (8 buckets per
/// power of two).
pub const NATIVE_SCHEMA: i32 = 3;

/// Zero bucket width of generated native histograms: client_golang's default, 2^-128.
pub const NATIVE_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// Consecutive series that share one OTLP resource (one instrumented process): a process
/// exporting about a hundred series is typical of an SDK with runtime and HTTP metrics.
pub const SERIES_PER_RESOURCE: usize = 100;

/// Mixed into the seed for everything the original generator did not draw (histograms,
/// churn, padding), so that those never shift the original stream of labels and values.
const AUX_SEED: u64 = 0x5eed_a0c5_1a7e_0b5e;

const HISTOGRAM_METRICS: &[&str] = &[
    "http_request_duration_seconds",
    "grpc_server_handling_seconds",
    "apiserver_request_duration_seconds",
    "etcd_disk_wal_fsync_duration_seconds",
    "nginx_ingress_controller_request_duration_seconds",
    "rpc_client_duration_seconds",
    "db_query_duration_seconds",
];

/// What a series carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Float samples.
    Float,
    /// Classic histogram points.
    Classic,
    /// Native histogram points.
    Native,
}

/// The process a series comes from, as OTLP describes it (resource attributes).
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// Unique within a run (over all streams).
    pub id: u64,
    /// `service.name`, `service.instance.id`, `k8s.*`, `host.name`, ... sorted by key.
    pub attributes: Vec<(&'static str, String)>,
}

/// One series of the pool.
#[derive(Debug)]
pub struct Series {
    /// Labels sorted by name, `__name__` included; a histogram's `__name__` is its family
    /// name (no `_bucket` suffix; the encoders add it and `le`).
    pub labels: Vec<pb::Label>,
    /// What it carries.
    pub kind: SeriesKind,
    /// Its resource; [`SERIES_PER_RESOURCE`] consecutive series share one.
    pub resource: Arc<Resource>,
}

impl Series {
    /// The `__name__` label's value.
    pub fn name(&self) -> &str {
        self.labels
            .iter()
            .find(|l| l.name == protocols::METRIC_NAME_LABEL)
            .map_or("", |l| l.value.as_str())
    }
}

/// A classic histogram observation set.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicHistogram {
    /// Observations per bucket, not cumulative: one per bound of [`CLASSIC_BOUNDS`], then
    /// the `+Inf` bucket.
    pub counts: [u64; CLASSIC_BOUNDS.len() + 1],
    /// Sum of the observations.
    pub sum: f64,
}

impl ClassicHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A native histogram (schema [`NATIVE_SCHEMA`], positive buckets in one span).
#[derive(Debug, Clone, PartialEq)]
pub struct NativeHistogram {
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// Prometheus bucket index of `counts[0]`; bucket `i` holds `(2^((i-1)/8), 2^(i/8)]`.
    pub offset: i32,
    /// Observations per bucket, absolute (not deltas).
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl NativeHistogram {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.zero_count + self.counts.iter().sum::<u64>()
    }
}

/// The value of one point.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A float sample.
    Float(f64),
    /// A classic histogram.
    Classic(ClassicHistogram),
    /// A native histogram.
    Native(NativeHistogram),
}

/// One point of one series.
#[derive(Debug, Clone)]
pub struct Point {
    /// The series.
    pub series: Arc<Series>,
    /// Its value at the payload's timestamp.
    pub value: Value,
}

/// One request's worth of points, all at one timestamp.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Timestamp of every point, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The points, in pool order.
    pub points: Vec<Point>,
}

impl Payload {
    /// Samples the payload amounts to in the Prometheus model (float samples plus native
    /// histogram samples), as remote-write carries it: a classic histogram is
    /// [`CLASSIC_SAMPLES`]. OTLP adds one `target_info` per resource ([`Payload::resources`]).
    pub fn samples(&self) -> u64 {
        self.points
            .iter()
            .map(|p| match p.value {
                Value::Float(_) | Value::Native(_) => 1,
                Value::Classic(_) => CLASSIC_SAMPLES,
            })
            .sum()
    }

    /// Distinct resources of the payload's series.
    pub fn resources(&self) -> usize {
        let mut ids: Vec<u64> = self.points.iter().map(|p| p.series.resource.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

const METRICS: &[&str] = &[
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_request_duration_seconds_sum",
    "http_request_duration_seconds_count",
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_filesystem_avail_bytes",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_load1",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_fs_writes_bytes_total",
    "kube_pod_status_phase",
    "kube_pod_container_status_restarts_total",
    "kube_deployment_status_replicas_available",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "go_goroutines",
    "go_gc_duration_seconds",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket",
    "up",
    "scrape_duration_seconds",
    "apiserver_request_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "nginx_ingress_controller_requests",
    "redis_commands_processed_total",
    "pg_stat_database_tup_fetched",
];

const APPS: &[&str] = &[
    "checkout",
    "payments",
    "frontend",
    "catalog",
    "search",
    "auth",
    "inventory",
    "shipping",
    "recommendation",
    "notification",
    "gateway",
    "billing",
];
const NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "monitoring",
    "production",
    "staging",
    "ingress-nginx",
    "cert-manager",
    "data-platform",
];
const CLUSTERS: &[&str] = &["prod-eu-west-1", "prod-us-east-1", "staging-eu-central-1"];
const JOBS: &[&str] = &[
    "kubernetes-pods",
    "kubernetes-nodes",
    "kubelet",
    "node-exporter",
    "kube-state-metrics",
    "apiserver",
];
const EXTRA: &[&str] = &["app", "env", "image", "team", "version", "zone"];

fn hash_str(rng: &mut SmallRng, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Generates requests over a pool of series.
pub struct Generator {
    spec: PayloadSpec,
    shape: Shape,
    n_labels: usize,
    series: Vec<Arc<Series>>,
    next: usize,
    /// Labels of the first pool and float values: the original generator's stream.
    rng: SmallRng,
    /// Histograms, churn and padding.
    aux: SmallRng,
    /// Series made so far, replacements included.
    created: u64,
    /// Fractional series owed to churn from earlier passes.
    churn_carry: f64,
    resource: Option<Arc<Resource>>,
}

impl Generator {
    /// Builds the series pool from the spec's seed, with the default [`Shape`].
    pub fn new(spec: PayloadSpec) -> Self {
        Self::with_shape(spec, Shape::default())
    }

    /// Builds the series pool from the spec's seed and the shape.
    pub fn with_shape(spec: PayloadSpec, shape: Shape) -> Self {
        let shape = Shape {
            churn: shape.churn.clamp(0.0, 1.0),
            histogram_fraction: shape.histogram_fraction.clamp(0.0, 1.0),
            streams: shape.streams.max(1),
            ..shape
        };
        let mut g = Self {
            spec,
            shape,
            n_labels: spec.labels_per_series.clamp(2, 16),
            series: Vec::with_capacity(spec.series.max(1)),
            next: 0,
            rng: SmallRng::seed_from_u64(spec.seed),
            aux: SmallRng::seed_from_u64(spec.seed ^ AUX_SEED),
            created: 0,
            churn_carry: 0.0,
            resource: None,
        };
        for _ in 0..spec.series.max(1) {
            let s = g.make_series(false);
            g.series.push(s);
        }
        g
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &PayloadSpec {
        &self.spec
    }

    /// The shape it was built with (fractions clamped to 0..=1).
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The current pool.
    pub fn pool(&self) -> impl Iterator<Item = &Series> {
        self.series.iter().map(|s| &**s)
    }

    /// The next request: `series_per_request` series from the pool (cycling; churn applies
    /// after each full pass), one point each at `timestamp_ms`.
    pub fn next_payload(&mut self, timestamp_ms: i64) -> Payload {
        let n = self.spec.series_per_request;
        let mut points = Vec::with_capacity(n);
        for _ in 0..n {
            let series = Arc::clone(&self.series[self.next]);
            self.next += 1;
            if self.next == self.series.len() {
                self.next = 0;
                self.churn();
            }
            let value = match series.kind {
                SeriesKind::Float => Value::Float(if self.rng.random_bool(0.5) {
                    f64::from(self.rng.random_range(0u32..1_000_000))
                } else {
                    self.rng.random::<f64>() * 1000.0
                }),
                SeriesKind::Classic => Value::Classic(classic_value(&mut self.aux)),
                SeriesKind::Native => Value::Native(native_value(&mut self.aux)),
            };
            points.push(Point { series, value });
        }
        Payload {
            timestamp_ms,
            points,
        }
    }

    /// The next request as a remote-write 1.0 message.
    pub fn next_request(&mut self, timestamp_ms: i64) -> pb::WriteRequest {
        crate::wire::rw1_request(&self.next_payload(timestamp_ms))
    }

    /// The next request, protobuf-encoded and snappy-compressed, ready to POST.
    pub fn next_body(&mut self, timestamp_ms: i64) -> Vec<u8> {
        use prost::Message;
        protocols::snappy::compress(&self.next_request(timestamp_ms).encode_to_vec())
    }

    /// Replaces `churn` of the pool (carrying fractions over passes) with new series.
    fn churn(&mut self) {
        self.churn_carry += self.shape.churn * self.series.len() as f64;
        let k = (self.churn_carry.floor() as usize).min(self.series.len());
        if k == 0 {
            return;
        }
        self.churn_carry -= k as f64;
        let slots = rand::seq::index::sample(&mut self.aux, self.series.len(), k);
        for slot in slots {
            self.series[slot] = self.make_series(true);
        }
    }

    /// The next series: labels from the original stream for the first pool (so the default
    /// shape reproduces it), from the auxiliary one for churn replacements.
    fn make_series(&mut self, replacement: bool) -> Arc<Series> {
        let k = self.created;
        self.created += 1;
        let streams = self.shape.streams as u64;
        let stream = self.shape.stream as u64 % streams;
        let index = (stream + streams * k) as usize;
        let rng = if replacement {
            &mut self.aux
        } else {
            &mut self.rng
        };
        let mut labels = series_labels(rng, index, self.n_labels);
        let resource_id = (k / SERIES_PER_RESOURCE as u64) * streams + stream;
        let resource = match &self.resource {
            Some(r) if r.id == resource_id => Arc::clone(r),
            _ => {
                let r = Arc::new(resource(self.spec.seed, resource_id));
                self.resource = Some(Arc::clone(&r));
                r
            }
        };
        let mut kind = SeriesKind::Float;
        if self.shape.histograms != HistogramKind::None
            && self.aux.random_bool(self.shape.histogram_fraction)
        {
            kind = match self.shape.histograms {
                HistogramKind::Classic => SeriesKind::Classic,
                _ => SeriesKind::Native,
            };
            let name = HISTOGRAM_METRICS[self.aux.random_range(0..HISTOGRAM_METRICS.len())];
            if let Some(l) = labels
                .iter_mut()
                .find(|l| l.name == protocols::METRIC_NAME_LABEL)
            {
                l.value = name.to_string();
            }
        }
        if let Some(len) = self.shape.value_len {
            for l in labels
                .iter_mut()
                .filter(|l| l.name != protocols::METRIC_NAME_LABEL)
            {
                if l.value.len() > len && l.name != "instance" {
                    l.value.truncate(len);
                } else if l.value.len() < len {
                    let pad = len - l.value.len();
                    l.value.push_str(&hash_str(&mut self.aux, pad));
                }
            }
        }
        Arc::new(Series {
            labels,
            kind,
            resource,
        })
    }
}

/// A classic histogram of a request latency: most observations in the middle buckets.
fn classic_value(rng: &mut SmallRng) -> ClassicHistogram {
    let mut counts = [0u64; CLASSIC_BOUNDS.len() + 1];
    let mut sum = 0.0;
    for (i, c) in counts.iter_mut().enumerate() {
        let peak = 6usize.abs_diff(i) as u64;
        *c = rng.random_range(0..=(60 / (1 + peak)));
        let upper = CLASSIC_BOUNDS.get(i).copied().unwrap_or(20.0);
        sum += *c as f64 * upper * rng.random_range(0.5..1.0);
    }
    ClassicHistogram { counts, sum }
}

fn native_value(rng: &mut SmallRng) -> NativeHistogram {
    let n = rng.random_range(3..=12);
    let counts: Vec<u64> = (0..n).map(|_| rng.random_range(1..40)).collect();
    let offset = rng.random_range(-40..8);
    let zero_count = rng.random_range(0..3);
    let count: u64 = counts.iter().sum();
    // Bucket i's upper bound is 2^(i/8); the sum of its observations is about that.
    let sum = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| c as f64 * 2f64.powf(f64::from(offset + i as i32) / 8.0))
        .sum::<f64>()
        * rng.random_range(0.8..1.0);
    debug_assert!(count > 0);
    NativeHistogram {
        zero_count,
        offset,
        counts,
        sum,
    }
}

/// The resource attributes of resource `id`, from the seed: one Kubernetes pod running an
/// OpenTelemetry SDK.
fn resource(seed: u64, id: u64) -> Resource {
    let mut rng = SmallRng::seed_from_u64(seed ^ AUX_SEED ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let app = APPS[rng.random_range(0..APPS.len())];
    let hex = |rng: &mut SmallRng, n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect()
    };
    let uid = format!(
        "{}-{}-{}-{}-{}",
        hex(&mut rng, 8),
        hex(&mut rng, 4),
        hex(&mut rng, 4),
        hex(&mut rng, 4),
        hex(&mut rng, 12)
    );
    let mut attributes = vec![
        ("cloud.region", "eu-west-1".to_string()),
        (
            "host.name",
            format!(
                "ip-10-0-{}-{}.eu-west-1.compute.internal",
                rng.random_range(0..64),
                rng.random_range(1..255)
            ),
        ),
        (
            "k8s.namespace.name",
            NAMESPACES[rng.random_range(0..NAMESPACES.len())].to_string(),
        ),
        (
            "k8s.pod.name",
            format!("{app}-{}-{}", hash_str(&mut rng, 10), hash_str(&mut rng, 5)),
        ),
        ("service.instance.id", uid),
        ("service.name", app.to_string()),
        ("telemetry.sdk.language", "go".to_string()),
        ("telemetry.sdk.name", "opentelemetry".to_string()),
    ];
    attributes.sort_by_key(|(k, _)| *k);
    Resource { id, attributes }
}

fn series_labels(rng: &mut SmallRng, index: usize, n_labels: usize) -> Vec<pb::Label> {
    let app = APPS[rng.random_range(0..APPS.len())];
    let ns = NAMESPACES[rng.random_range(0..NAMESPACES.len())];
    // The index makes every series in the pool distinct, as in a real scrape.
    let ip = format!(
        "10.{}.{}.{}",
        (index >> 16) & 0xff,
        (index >> 8) & 0xff,
        index & 0xff
    );
    let candidates: Vec<(&str, String)> = vec![
        (
            "cluster",
            CLUSTERS[rng.random_range(0..CLUSTERS.len())].to_string(),
        ),
        ("container", app.to_string()),
        ("endpoint", "http-metrics".to_string()),
        (
            "instance",
            format!("{ip}:{}", [8080, 9100, 9090, 10250][rng.random_range(0..4)]),
        ),
        ("job", JOBS[rng.random_range(0..JOBS.len())].to_string()),
        ("namespace", ns.to_string()),
        (
            "node",
            format!(
                "ip-10-0-{}-{}.eu-west-1.compute.internal",
                rng.random_range(0..64),
                rng.random_range(1..255)
            ),
        ),
        (
            "pod",
            format!("{app}-{}-{}", hash_str(rng, 10), hash_str(rng, 5)),
        ),
        ("service", format!("{app}-svc")),
        (EXTRA[0], app.to_string()),
        (
            EXTRA[1],
            ["prod", "staging"][rng.random_range(0..2)].to_string(),
        ),
        (
            EXTRA[2],
            format!(
                "registry.example.com/{app}:v1.{}.{}",
                rng.random_range(0..30),
                rng.random_range(0..10)
            ),
        ),
        (EXTRA[3], format!("team-{}", rng.random_range(0..12))),
        (
            EXTRA[4],
            format!("1.{}.{}", rng.random_range(0..30), rng.random_range(0..10)),
        ),
        (
            EXTRA[5],
            format!("eu-west-1{}", ['a', 'b', 'c'][rng.random_range(0..3)]),
        ),
    ];
    let mut labels: Vec<pb::Label> = candidates
        .into_iter()
        .take(n_labels - 1)
        .map(|(name, value)| pb::Label {
            name: name.to_string(),
            value,
        })
        .collect();
    labels.push(pb::Label {
        name: "__name__".to_string(),
        value: METRICS[rng.random_range(0..METRICS.len())].to_string(),
    });
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::DecodeLimits;
    use std::collections::HashSet;

    fn fnv(bodies: impl IntoIterator<Item = Vec<u8>>) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bodies.into_iter().flatten() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    fn identity(s: &Series) -> Vec<(String, String)> {
        s.labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    }

    #[test]
    fn same_seed_same_bytes() {
        let a = Generator::new(PayloadSpec::default()).next_body(1000);
        let b = Generator::new(PayloadSpec::default()).next_body(1000);
        assert_eq!(a, b);
    }

    #[test]
    fn default_shape_keeps_the_bytes_the_benches_measured() {
        // FNV-1a of the bodies the generator produced before `Shape` existed.
        let mut g = Generator::new(PayloadSpec::default());
        assert_eq!(
            fnv([1000, 1001, 1002].map(|ts| g.next_body(ts))),
            0xb785_df5d_71fd_1e4e
        );
        let mut g = Generator::new(PayloadSpec {
            series: 50,
            series_per_request: 20,
            labels_per_series: 16,
            seed: 7,
        });
        assert_eq!(
            fnv([5, 6, 7, 8].map(|ts| g.next_body(ts))),
            0xbadc_05ed_e6f8_2823
        );
    }

    #[test]
    fn same_seed_and_shape_same_payloads_with_churn_and_histograms() {
        let shape = Shape {
            churn: 0.3,
            histograms: HistogramKind::Classic,
            histogram_fraction: 0.2,
            value_len: Some(24),
            ..Shape::default()
        };
        let spec = PayloadSpec {
            series: 100,
            series_per_request: 40,
            ..PayloadSpec::default()
        };
        let bodies = |seed| {
            let mut g = Generator::with_shape(PayloadSpec { seed, ..spec }, shape);
            fnv((0..10).map(|ts| g.next_body(ts)))
        };
        assert_eq!(bodies(1), bodies(1));
        assert_ne!(bodies(1), bodies(2));
    }

    #[test]
    fn default_shape_decodes_with_ten_labels_per_series() {
        let body = Generator::new(PayloadSpec::default()).next_body(1000);
        let batch = protocols::remote_write::v1::decode(&body, &DecodeLimits::default()).unwrap();
        assert_eq!(batch.series_count(), 2000);
        assert_eq!(batch.sample_count(), 2000);
        assert!(batch.series().all(|s| s.labels().len() == 10));
    }

    #[test]
    fn pool_series_are_distinct() {
        let g = Generator::new(PayloadSpec::default());
        let ids: HashSet<_> = g.pool().map(identity).collect();
        assert_eq!(ids.len(), 20_000);
    }

    #[test]
    fn churn_replaces_that_fraction_of_the_pool_per_pass() {
        let spec = PayloadSpec {
            series: 1000,
            series_per_request: 250,
            ..PayloadSpec::default()
        };
        let shape = Shape {
            churn: 0.1,
            ..Shape::default()
        };
        let mut g = Generator::with_shape(spec, shape);
        let before: HashSet<_> = g.pool().map(identity).collect();
        for _ in 0..3 {
            g.next_payload(0);
        }
        assert_eq!(g.pool().map(identity).collect::<HashSet<_>>(), before);
        // The fourth request completes the pass; 10% of the pool is replaced after it.
        g.next_payload(0);
        let after: HashSet<_> = g.pool().map(identity).collect();
        assert_eq!(after.len(), 1000);
        assert_eq!(before.difference(&after).count(), 100);
        let mut g = Generator::with_shape(spec, Shape::default());
        for _ in 0..8 {
            g.next_payload(0);
        }
        assert_eq!(g.pool().map(identity).collect::<HashSet<_>>(), before);
    }

    #[test]
    fn small_churn_accumulates_over_passes() {
        let spec = PayloadSpec {
            series: 10,
            series_per_request: 10,
            ..PayloadSpec::default()
        };
        let shape = Shape {
            churn: 0.05,
            ..Shape::default()
        };
        let mut g = Generator::with_shape(spec, shape);
        let before: HashSet<_> = g.pool().map(identity).collect();
        g.next_payload(0);
        assert_eq!(g.pool().map(identity).collect::<HashSet<_>>(), before);
        g.next_payload(0);
        let after: HashSet<_> = g.pool().map(identity).collect();
        assert_eq!(before.difference(&after).count(), 1);
    }

    #[test]
    fn streams_never_make_the_same_series() {
        let spec = PayloadSpec {
            series: 500,
            labels_per_series: 5,
            ..PayloadSpec::default()
        };
        let mut all = HashSet::new();
        for stream in 0..4 {
            let shape = Shape {
                stream,
                streams: 4,
                churn: 0.5,
                ..Shape::default()
            };
            let mut g = Generator::with_shape(spec, shape);
            // 2000 series per request: four passes, each replacing half of the pool.
            for _ in 0..3 {
                g.next_payload(0);
            }
            all.extend(g.pool().map(identity));
        }
        assert_eq!(all.len(), 2000);
    }

    #[test]
    fn histogram_fraction_and_kinds() {
        let spec = PayloadSpec {
            series: 2000,
            ..PayloadSpec::default()
        };
        for (kind, series_kind) in [
            (HistogramKind::Classic, SeriesKind::Classic),
            (HistogramKind::Native, SeriesKind::Native),
        ] {
            let g = Generator::with_shape(
                spec,
                Shape {
                    histograms: kind,
                    histogram_fraction: 0.25,
                    ..Shape::default()
                },
            );
            let n = g.pool().filter(|s| s.kind == series_kind).count();
            assert!((400..600).contains(&n), "{kind:?}: {n} histograms of 2000");
            assert!(g
                .pool()
                .filter(|s| s.kind == series_kind)
                .all(|s| HISTOGRAM_METRICS.contains(&s.name())));
        }
    }

    #[test]
    fn value_len_pads_and_cuts_but_never_cuts_instance() {
        let spec = PayloadSpec {
            series: 50,
            labels_per_series: 16,
            ..PayloadSpec::default()
        };
        for len in [4, 64] {
            let g = Generator::with_shape(
                spec,
                Shape {
                    value_len: Some(len),
                    ..Shape::default()
                },
            );
            for s in g.pool() {
                for l in &s.labels {
                    match l.name.as_str() {
                        "__name__" => {}
                        "instance" => assert!(l.value.len() >= len),
                        _ => assert_eq!(l.value.len(), len, "{}={}", l.name, l.value),
                    }
                }
            }
            let ids: HashSet<_> = g.pool().map(identity).collect();
            assert_eq!(ids.len(), 50);
        }
    }

    #[test]
    fn resources_group_consecutive_series() {
        let g = Generator::new(PayloadSpec {
            series: 250,
            ..PayloadSpec::default()
        });
        let ids: Vec<u64> = g.pool().map(|s| s.resource.id).collect();
        assert_eq!(ids[0], 0);
        assert_eq!(ids[99], 0);
        assert_eq!(ids[100], 1);
        assert_eq!(ids[249], 2);
        let r = &g.pool().next().unwrap().resource;
        assert!(r.attributes.iter().any(|(k, _)| *k == "service.name"));
        assert!(r.attributes.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn histogram_values_are_consistent() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let c = classic_value(&mut rng);
            assert!(c.sum >= 0.0);
            let n = native_value(&mut rng);
            assert!(n.count() >= n.counts.len() as u64);
            assert!(n.sum > 0.0);
        }
    }
}

//! Realistic remote-write payloads from a fixed seed.
//!
//! Series look like what Prometheus scrapes from Kubernetes: a metric name from a list of
//! common exporters' metrics, then labels such as `cluster`, `namespace`, `pod`, `instance`
//! with values of realistic length (pod names with replica-set hashes, node host names, IP
//! and port instances). The same seed always yields the same bytes.

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

/// Generates requests over a fixed pool of series.
pub struct Generator {
    spec: PayloadSpec,
    series: Vec<Vec<pb::Label>>,
    next: usize,
    rng: SmallRng,
}

impl Generator {
    /// Builds the series pool from the spec's seed.
    pub fn new(spec: PayloadSpec) -> Self {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        let n_labels = spec.labels_per_series.clamp(2, 16);
        let series = (0..spec.series.max(1))
            .map(|i| series_labels(&mut rng, i, n_labels))
            .collect();
        Self {
            spec,
            series,
            next: 0,
            rng,
        }
    }

    /// The next request: `series_per_request` series from the pool (cycling), one sample each
    /// at `timestamp_ms`.
    pub fn next_request(&mut self, timestamp_ms: i64) -> pb::WriteRequest {
        let n = self.spec.series_per_request;
        let mut timeseries = Vec::with_capacity(n);
        for _ in 0..n {
            let labels = self.series[self.next].clone();
            self.next = (self.next + 1) % self.series.len();
            let value = if self.rng.random_bool(0.5) {
                f64::from(self.rng.random_range(0u32..1_000_000))
            } else {
                self.rng.random::<f64>() * 1000.0
            };
            timeseries.push(pb::TimeSeries {
                labels,
                samples: vec![pb::Sample {
                    value,
                    timestamp: timestamp_ms,
                }],
                ..Default::default()
            });
        }
        pb::WriteRequest {
            timeseries,
            metadata: Vec::new(),
        }
    }

    /// The next request, protobuf-encoded and snappy-compressed, ready to POST.
    pub fn next_body(&mut self, timestamp_ms: i64) -> Vec<u8> {
        use prost::Message;
        protocols::snappy::compress(&self.next_request(timestamp_ms).encode_to_vec())
    }
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

    #[test]
    fn same_seed_same_bytes() {
        let a = Generator::new(PayloadSpec::default()).next_body(1000);
        let b = Generator::new(PayloadSpec::default()).next_body(1000);
        assert_eq!(a, b);
    }

    #[test]
    fn default_shape_decodes_with_ten_labels_per_series() {
        let body = Generator::new(PayloadSpec::default()).next_body(1000);
        let batch = protocols::remote_write::v1::decode(&body, &DecodeLimits::default()).unwrap();
        assert_eq!(batch.series_count(), 2000);
        assert_eq!(batch.sample_count(), 2000);
        assert!(batch.series().all(|s| s.labels().len() == 10));
    }
}

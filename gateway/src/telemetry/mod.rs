//! Self-telemetry: the Prometheus recorder behind `/metrics` and log set-up.
//!
//! Metric names are `traceo_*`; request metrics carry `protocol` and `tenant` labels. A
//! tenant id only becomes a label value once the request authenticated and the policy knew
//! the tenant ([`tenant_label`]); before that it is `unknown`. With authentication off, ids
//! still come from clients, so the number of distinct values is capped
//! ([`MAX_TENANT_LABELS`]); past the cap new tenants are counted as `other`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use residency_rules::TenantId;

/// Distinct `tenant` label values at most. Every value multiplies the request metrics' series
/// (protocols x codes x latency buckets: some 150 series a tenant), so 1024 tenants is about
/// 150k series on `/metrics`: still scrapable, and far more tenants than one fleet of gateways
/// serves with authentication off.
pub const MAX_TENANT_LABELS: usize = 1024;

/// The label value for requests whose tenant is not (yet) known.
pub const UNKNOWN_TENANT: &str = "unknown";
/// The label value for known tenants past [`MAX_TENANT_LABELS`].
pub const OTHER_TENANT: &str = "other";

/// Shards of the set of tenants given a label value, so requests of different tenants rarely
/// meet on one lock.
const LABEL_SHARDS: usize = 16;

struct TenantLabels {
    shards: [Mutex<HashSet<Box<str>>>; LABEL_SHARDS],
    count: AtomicUsize,
}

static TENANT_LABELS: LazyLock<TenantLabels> = LazyLock::new(|| TenantLabels {
    shards: std::array::from_fn(|_| Mutex::new(HashSet::new())),
    count: AtomicUsize::new(0),
});

/// The `tenant` label value for a request: `unknown` until it authenticated (pass `None`),
/// the tenant id while fewer than [`MAX_TENANT_LABELS`] tenants have one, `other` after.
pub fn tenant_label(tenant: Option<&TenantId>) -> String {
    let Some(t) = tenant else {
        return UNKNOWN_TENANT.to_string();
    };
    let id = t.as_str();
    // FNV-1a: a shard pick, not a security boundary; the ids are bounded by the cap anyway.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let shard = &TENANT_LABELS.shards[(h % LABEL_SHARDS as u64) as usize];
    let mut set = shard.lock().unwrap_or_else(|p| p.into_inner());
    if set.contains(id) {
        return id.to_string();
    }
    let counted = TENANT_LABELS
        .count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_TENANT_LABELS).then_some(n + 1)
        });
    if counted.is_ok() {
        set.insert(id.into());
        id.to_string()
    } else {
        OTHER_TENANT.to_string()
    }
}

/// Latency buckets (seconds): from sub-millisecond decode-only requests to the multi-second
/// waits a file-backed acknowledgement can take.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the global metrics recorder and returns the handle `/metrics` renders from.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)?
        .install_recorder()
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_unknown_before_authentication_and_capped_after() {
        assert_eq!(tenant_label(None), UNKNOWN_TENANT);
        let known = TenantId::parse("label-test-known").unwrap();
        assert_eq!(tenant_label(Some(&known)), "label-test-known");
        // Fill the cap (other tests may have taken some labels: fill whatever is left).
        let mut n = 0;
        while TENANT_LABELS.count.load(Ordering::Acquire) < MAX_TENANT_LABELS {
            let t = TenantId::parse(&format!("label-test-{n}")).unwrap();
            tenant_label(Some(&t));
            n += 1;
        }
        let late = TenantId::parse("label-test-late").unwrap();
        assert_eq!(tenant_label(Some(&late)), OTHER_TENANT);
        // A tenant labelled before the cap keeps its own value.
        assert_eq!(tenant_label(Some(&known)), "label-test-known");
        assert_eq!(
            TENANT_LABELS.count.load(Ordering::Acquire),
            MAX_TENANT_LABELS
        );
    }
}

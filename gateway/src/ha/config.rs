//! `ha_dedup:`: which tenants' Prometheus HA pairs are deduplicated, by which labels.

use std::collections::HashMap;
use std::time::Duration;

use residency_rules::TenantId;
use serde::Deserialize;

use crate::yaml::HumanDuration;

/// Longest cluster or replica label value an HA pair is tracked by: both travel in every
/// gossip datagram that carries the pair.
pub const MAX_HA_LABEL_BYTES: usize = protocols::gossip::ha_pair::MAX_LABEL_BYTES;
/// Most pairs a node tracks and gossips at all (each is one gossip key on every node).
const MAX_PAIRS: usize = 4096;

/// `ha_dedup:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaDedupFile {
    /// `all`, or a list of tenant ids.
    pub tenants: TenantsFile,
    /// The label naming a pair's cluster (kept on stored series). Default `cluster`.
    #[serde(default = "default_cluster_label")]
    pub cluster_label: String,
    /// The label naming the replica (removed from stored series). Default `__replica__`.
    #[serde(default = "default_replica_label")]
    pub replica_label: String,
    /// The elected replica silent this long: another replica's request takes over. Default
    /// `30s`.
    #[serde(default = "default_failover_timeout")]
    pub failover_timeout: HumanDuration,
    /// Clusters one tenant may have; a request naming one more is a 400. Default 100.
    #[serde(default = "default_max_clusters")]
    pub max_clusters_per_tenant: usize,
    /// Pairs the whole fleet may track (every node gossips every pair). Default 512.
    #[serde(default = "default_max_pairs")]
    pub max_pairs: usize,
    /// Per-tenant label names, overriding `cluster_label` and `replica_label`.
    #[serde(default)]
    pub tenant_labels: HashMap<String, LabelsFile>,
}

/// `ha_dedup.tenants`: `all` or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TenantsFile {
    /// `all`.
    All(String),
    /// Tenant ids.
    List(Vec<String>),
}

/// `ha_dedup.tenant_labels.<tenant>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsFile {
    /// Cluster label name.
    #[serde(default)]
    pub cluster_label: Option<String>,
    /// Replica label name.
    #[serde(default)]
    pub replica_label: Option<String>,
}

fn default_cluster_label() -> String {
    "cluster".into()
}
fn default_replica_label() -> String {
    "__replica__".into()
}
const fn default_failover_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
const fn default_max_clusters() -> usize {
    100
}
const fn default_max_pairs() -> usize {
    512
}

/// The label names of one tenant's pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaLabels {
    /// Cluster label.
    pub cluster: String,
    /// Replica label.
    pub replica: String,
}

/// `ha_dedup:` validated.
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// `None`: every tenant; else these.
    pub tenants: Option<Vec<TenantId>>,
    /// Default labels.
    pub labels: HaLabels,
    /// Per-tenant labels.
    pub tenant_labels: HashMap<TenantId, HaLabels>,
    /// Failover timeout.
    pub failover_timeout: Duration,
    /// Clusters per tenant.
    pub max_clusters_per_tenant: usize,
    /// Pairs in all.
    pub max_pairs: usize,
}

fn label_name_problem(field: &str, name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    (!ok).then(|| format!("{field}: {name:?} is not a label name"))
}

impl HaDedupFile {
    /// Validates the section; every problem names its field.
    pub fn validate(self, problems: &mut Vec<String>) -> HaSettings {
        let tenants = match self.tenants {
            TenantsFile::All(s) if s == "all" => None,
            TenantsFile::All(s) => {
                problems.push(format!(
                    "ha_dedup.tenants: {s:?} is neither `all` nor a list of tenant ids"
                ));
                None
            }
            TenantsFile::List(ids) => Some(
                ids.iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        TenantId::parse(t)
                            .map_err(|e| problems.push(format!("ha_dedup.tenants[{i}]: {e}")))
                            .ok()
                    })
                    .collect(),
            ),
        };
        problems.extend(label_name_problem(
            "ha_dedup.cluster_label",
            &self.cluster_label,
        ));
        problems.extend(label_name_problem(
            "ha_dedup.replica_label",
            &self.replica_label,
        ));
        if self.cluster_label == self.replica_label {
            problems.push("ha_dedup.replica_label: must differ from cluster_label".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.failover_timeout.0)
        {
            problems.push("ha_dedup.failover_timeout: must be within 1s..=1h".into());
        }
        if self.max_clusters_per_tenant == 0 {
            problems.push("ha_dedup.max_clusters_per_tenant: must be at least 1".into());
        }
        if !(1..=MAX_PAIRS).contains(&self.max_pairs) {
            problems.push(format!(
                "ha_dedup.max_pairs: must be within 1..={MAX_PAIRS}"
            ));
        }
        let labels = HaLabels {
            cluster: self.cluster_label,
            replica: self.replica_label,
        };
        let mut tenant_labels = HashMap::new();
        for (t, l) in self.tenant_labels {
            let field = format!("ha_dedup.tenant_labels.{t}");
            let Ok(id) = TenantId::parse(&t).map_err(|e| problems.push(format!("{field}: {e}")))
            else {
                continue;
            };
            let own = HaLabels {
                cluster: l.cluster_label.unwrap_or_else(|| labels.cluster.clone()),
                replica: l.replica_label.unwrap_or_else(|| labels.replica.clone()),
            };
            problems.extend(label_name_problem(
                &format!("{field}.cluster_label"),
                &own.cluster,
            ));
            problems.extend(label_name_problem(
                &format!("{field}.replica_label"),
                &own.replica,
            ));
            if own.cluster == own.replica {
                problems.push(format!(
                    "{field}.replica_label: must differ from cluster_label"
                ));
            }
            tenant_labels.insert(id, own);
        }
        HaSettings {
            tenants,
            labels,
            tenant_labels,
            failover_timeout: self.failover_timeout.0,
            max_clusters_per_tenant: self.max_clusters_per_tenant,
            max_pairs: self.max_pairs,
        }
    }
}

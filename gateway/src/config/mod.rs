//! Configuration: the YAML file format ([`ConfigFile`]), its validation into the runtime
//! [`Config`], and the embedded default used when no file is given.
//!
//! Parse, then validate: serde checks shape and types (unknown fields are refused), then
//! [`ConfigFile::validate`] checks meaning and collects *every* problem, each naming the file,
//! the field path and the bad value, before failing once.
//!
//! This module composes the top-level sections; a component's own section (its format,
//! defaults and checks) lives with the component: `sinks/<kind>/config.rs` for
//! `regions[].sinks`, `cluster/config.rs` for `cluster:`. May call those components' config
//! types, `wal` (its limits), `share` (the record rules) and `yaml`.

mod file;
mod listen;

pub use crate::cluster::config::{ClusterFile, ClusterSettings, GossipSettings};
pub use crate::yaml::HumanDuration;
pub use file::*;
pub use listen::{ListenFile, ListenSettings};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocols::DecodeLimits;
use residency_rules::{CompiledPolicy, PolicyError, RegionId, TenantId};
use std::sync::Arc;

/// The configuration the embedded default runs: one region `local`, Parquet under `./data`,
/// authentication off.
pub const EMBEDDED_DEFAULT: &str = r#"
listen:
  http: "0.0.0.0:8080"
auth:
  mode: off
  default_region: local
regions:
  - id: local
    sinks:
      parquet:
        path: ./data
"#;

/// Why a configuration was refused: every problem found, each on its own line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax or shape error (serde_yaml's message names the line and column).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What serde_yaml said.
        message: String,
    },
    /// Semantic problems.
    #[error("{file}: invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        file: String,
        /// One line per problem, each starting with the field path.
        problems: Vec<String>,
    },
}

/// How requests prove who they are.
#[derive(Debug, Clone)]
pub enum AuthPolicy {
    /// No authentication: tenant from `X-Scope-OrgID`, else the basic-auth user, else
    /// `default`; tenants not listed go to `default_region`.
    Off {
        /// Region for tenants not listed in `tenants` (implicit policy only; with a policy
        /// file its `unknown_tenants` decides).
        default_region: Option<RegionId>,
    },
    /// Credentials required: basic auth (user = tenant, password checked) or a bearer token.
    Required {
        /// Accept `X-Scope-OrgID` alone as identity (for deployments behind an auth proxy).
        trust_org_id_header: bool,
    },
}

/// A configured tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The tenant.
    pub id: TenantId,
    /// Where its data goes (implicit policy only; with a policy file the policy decides).
    pub region: Option<RegionId>,
    /// Accepted basic-auth passwords (several, for rotation), as digests.
    pub passwords: Vec<SecretDigest>,
}

/// A configured secret (password, bearer token) kept only as its BLAKE3 digest.
///
/// Comparing digests makes the comparison's time independent of the secret's length and of
/// where a guess first differs (a guess changes its digest unpredictably), and the plain
/// secret is not kept in memory, in `Debug` output or in a core dump.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The digest of `secret`.
    pub fn of(secret: &str) -> SecretDigest {
        SecretDigest(*blake3::hash(secret.as_bytes()).as_bytes())
    }

    /// Equality in constant time over the 32 bytes.
    pub fn matches(&self, other: &SecretDigest) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(<redacted>)")
    }
}

/// A region and its sinks.
#[derive(Debug, Clone)]
pub struct Region {
    /// Region id.
    pub id: RegionId,
    /// Its sinks, each validated by its kind (see [`crate::sinks::SinkConfig`]); at least one.
    pub sinks: Vec<crate::sinks::SinkConfig>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub http_addr: std::net::SocketAddr,
    /// Connection, time and in-flight bounds of every listener.
    pub listen: ListenSettings,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// Authentication policy.
    pub auth: AuthPolicy,
    /// Label names of the tags the gateway adds.
    pub tenant_label: String,
    /// Label name of the region tag.
    pub region_label: String,
    /// Regions in file order.
    pub regions: Vec<Region>,
    /// Tenants by id.
    pub tenants: HashMap<TenantId, Tenant>,
    /// Bearer tokens to the tenant they identify.
    pub bearer_tokens: HashMap<SecretDigest, TenantId>,
    /// Time between SIGTERM (readiness turns 503) and closing the listeners.
    pub drain_delay: Duration,
    /// The policy file settings; `None` for the implicit policy.
    pub residency: Option<ResidencySettings>,
    /// The residency policy in force at load (the server swaps in reloads): the policy file's,
    /// or the one implied by `regions`, `tenants` and `auth`.
    pub policy: Arc<CompiledPolicy>,
    /// OTLP listeners and translation.
    pub otlp: OtlpSettings,
    /// Workers of each partitioning sink (`pipeline.shards`, default one per core).
    pub shards: usize,
    /// When a request is acknowledged, and the write-ahead log.
    pub durability: DurabilitySettings,
    /// Probes and gossip.
    pub cluster: ClusterSettings,
    /// TLS on every listener, if configured.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Per-tenant limits and their overrides (`limits.tenant`, `limits.overrides_file`).
    pub tenant_limits: crate::limits::LimitsSettings,
    /// HA-pair deduplication, if on.
    pub ha_dedup: Option<crate::ha::HaSettings>,
}

/// `durability:` validated.
#[derive(Debug, Clone)]
pub struct DurabilitySettings {
    /// When a request counts as kept.
    pub mode: file::DurabilityMode,
    /// Root of the per-region logs.
    pub dir: std::path::PathBuf,
    /// Each region's log.
    pub limits: crate::wal::WalLimits,
    /// All logs together.
    pub max_bytes: u64,
    /// Each region's quarantine.
    pub quarantine_max_bytes: u64,
}

/// `otlp:` validated.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// OTLP/gRPC listener, if on.
    pub grpc_addr: Option<std::net::SocketAddr>,
    /// OTLP/HTTP listener, if on.
    pub http_addr: Option<std::net::SocketAddr>,
    /// How OTLP becomes Prometheus series.
    pub translate: protocols::otlp::TranslateOptions,
}

/// `residency:` validated.
#[derive(Debug, Clone)]
pub struct ResidencySettings {
    /// The policy file, resolved against the config file's directory.
    pub policy_file: PathBuf,
    /// 401 or 403 for a tenant the policy does not know.
    pub unknown_tenant_status: u16,
    /// How often the file is checked for changes.
    pub poll_interval: Duration,
}

impl Config {
    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::from_yaml(&file, &text)
    }

    /// The embedded default.
    pub fn embedded_default() -> Config {
        Config::from_yaml("<embedded default>", EMBEDDED_DEFAULT)
            .expect("the embedded default configuration is valid (tested)")
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn from_yaml(file: &str, text: &str) -> Result<Config, ConfigError> {
        let parsed: ConfigFile = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let mut config = parsed.validate().map_err(|problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })?;
        let invalid = |problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        };
        if let Some(settings) = config.residency.as_mut() {
            if settings.policy_file.is_relative() {
                if let Some(dir) = Path::new(file).parent() {
                    settings.policy_file = dir.join(&settings.policy_file);
                }
            }
            let settings = settings.clone();
            config.policy = Arc::new(config.load_policy(&settings).map_err(invalid)?);
        }
        let limits = &mut config.tenant_limits;
        if let Some(path) = limits.overrides_file.as_mut() {
            if path.is_relative() {
                if let Some(dir) = Path::new(file).parent() {
                    *path = dir.join(&*path);
                }
            }
        }
        limits.load_overrides().map_err(invalid)?;
        Ok(config)
    }

    /// The residency policy loaded with this configuration.
    pub fn policy(&self) -> Arc<CompiledPolicy> {
        self.policy.clone()
    }

    /// Reads and compiles the policy file of `settings` and checks it against this
    /// configuration; every problem names the policy file.
    pub fn load_policy(&self, settings: &ResidencySettings) -> Result<CompiledPolicy, Vec<String>> {
        let text = std::fs::read_to_string(&settings.policy_file).map_err(|e| {
            vec![format!(
                "residency.policy: cannot read {}: {e}",
                settings.policy_file.display()
            )]
        })?;
        self.compile_policy(settings, &text)
    }

    /// Compiles policy text read from `settings.policy_file` and checks it against this
    /// configuration.
    pub fn compile_policy(
        &self,
        settings: &ResidencySettings,
        text: &str,
    ) -> Result<CompiledPolicy, Vec<String>> {
        let name = settings.policy_file.display().to_string();
        let policy = residency_rules::load(text).map_err(|e| {
            e.problems
                .into_iter()
                .map(|p| format!("residency.policy ({name}): {p}"))
                .collect::<Vec<_>>()
        })?;
        let problems = self.check_policy(&policy, &name);
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// What makes a policy unusable with this configuration's sinks and credentials: a
    /// region with sinks the policy does not know (its sinks would never receive data), a
    /// tenant or data class whose allowed regions have no sink here, a tenant with
    /// credentials the policy would refuse.
    pub fn check_policy(&self, policy: &CompiledPolicy, policy_name: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let has_sink = |r: &RegionId| {
            self.regions
                .iter()
                .any(|g| &g.id == r && !g.sinks.is_empty())
        };
        for (i, r) in self.regions.iter().enumerate() {
            if !policy.has_region(&r.id) {
                problems.push(format!(
                    "regions[{i}].id: region {} is not in the residency policy {policy_name}, so its sinks would never receive data",
                    r.id
                ));
            }
        }
        let mut views: Vec<(String, residency_rules::TenantView<'_>)> = Vec::new();
        let mut ids: Vec<&TenantId> = policy.tenant_ids().collect();
        ids.sort();
        for t in ids {
            if let Ok(v) = policy.tenant(t) {
                views.push((format!("tenant {t}"), v));
            }
        }
        if let Some(v) = policy.unknown_tenant_view() {
            views.push(("unknown_tenants".to_string(), v));
        }
        for (who, view) in &views {
            let names = |set| {
                view.route(set)
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !view.route(view.default_regions()).any(has_sink) {
                problems.push(format!(
                    "residency.policy ({policy_name}): {who}: none of its allowed regions ({}) has a sink in this configuration",
                    names(view.default_regions())
                ));
            }
            for class in policy.class_names() {
                if let Some(set) = view.class_regions(class) {
                    if !view.route(set).any(has_sink) {
                        problems.push(format!(
                            "residency.policy ({policy_name}): {who}: class {class} allows only ({}), and none has a sink in this configuration",
                            names(set)
                        ));
                    }
                }
            }
        }
        let mut tenants: Vec<&Tenant> = self.tenants.values().collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        for t in tenants {
            if policy.tenant(&t.id).is_err() {
                problems.push(format!(
                    "tenants: tenant {} has credentials here but the residency policy {policy_name} does not know it, so all its requests would be refused",
                    t.id
                ));
            }
        }
        problems
    }
}

/// The policy a configuration without `residency.policy` implies: each listed tenant in
/// its `region` only, unlisted tenants in `auth.default_region` (auth off) or refused.
pub(crate) fn implicit_policy(
    regions: &[Region],
    tenants: &HashMap<TenantId, Tenant>,
    auth: &AuthPolicy,
) -> Result<CompiledPolicy, PolicyError> {
    use residency_rules::policy::{RegionPolicy, TenantPolicy, UnknownTenants};
    let policy = residency_rules::Policy {
        regions: regions
            .iter()
            .map(|r| RegionPolicy {
                id: r.id.to_string(),
                jurisdiction: "unspecified".into(),
                tags: Default::default(),
            })
            .collect(),
        tenants: tenants
            .values()
            .filter_map(|t| {
                t.region.as_ref().map(|r| TenantPolicy {
                    id: t.id.to_string(),
                    home: r.to_string(),
                    allowed: Vec::new(),
                    default_class: None,
                })
            })
            .collect(),
        unknown_tenants: match auth {
            AuthPolicy::Off {
                default_region: Some(r),
            } => UnknownTenants::Allow {
                home: r.to_string(),
                allowed: Vec::new(),
            },
            _ => UnknownTenants::Deny,
        },
        classes: Default::default(),
        rules: Vec::new(),
        hash_key: None,
    };
    residency_rules::compile(&policy)
}

#[cfg(test)]
mod tests;

//! Configuration: the YAML file format ([`ConfigFile`]), its validation into the runtime
//! [`Config`], and the embedded default used when no file is given.
//!
//! Parse, then validate: serde checks shape and types (unknown fields are refused), then
//! [`ConfigFile::validate`] checks meaning and collects *every* problem, each naming the file,
//! the field path and the bad value, before failing once.

mod duration;
mod file;

pub use duration::HumanDuration;
pub use file::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocols::DecodeLimits;
use residency_rules::{RegionId, TenantId};

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
        /// Region for tenants not listed in `tenants`.
        default_region: RegionId,
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
    /// Where its data goes.
    pub region: RegionId,
    /// Accepted basic-auth passwords (several, for rotation).
    pub passwords: Vec<String>,
}

/// The Parquet sink of one region.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    /// Local directory the object store is rooted at.
    pub path: PathBuf,
    /// Close a file once its buffered rows reach this many bytes (estimated, uncompressed).
    pub max_file_bytes: usize,
    /// Close a file once its first row is this old.
    pub max_file_age: Duration,
    /// Requests queued for the sink before new ones are refused with 503.
    pub queue_capacity: usize,
}

/// A region and its sinks.
#[derive(Debug, Clone)]
pub struct Region {
    /// The region.
    pub id: RegionId,
    /// Its Parquet sink, if any.
    pub parquet: Option<ParquetSinkConfig>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub http_addr: std::net::SocketAddr,
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
    pub bearer_tokens: HashMap<String, TenantId>,
    /// Time between SIGTERM (readiness turns 503) and closing the listeners.
    pub drain_delay: Duration,
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
        parsed.validate().map_err(|problems| ConfigError::Invalid {
            file: file.to_string(),
            problems,
        })
    }

    /// The region a tenant's data goes to, or `None` for a tenant that is not allowed.
    pub fn region_of(&self, tenant: &TenantId) -> Option<&RegionId> {
        match (self.tenants.get(tenant), &self.auth) {
            (Some(t), _) => Some(&t.region),
            (None, AuthPolicy::Off { default_region }) => Some(default_region),
            (None, AuthPolicy::Required { .. }) => None,
        }
    }
}

#[cfg(test)]
mod tests;

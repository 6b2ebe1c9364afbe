//! The YAML file format. Every field has a doc comment; `docs/configuration.md` mirrors them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use protocols::DecodeLimits;
use residency_rules::{RegionId, TenantId};

use super::{
    AuthPolicy, Config, DurabilitySettings, HumanDuration, OtlpSettings, Region, ResidencySettings,
    Tenant,
};
use crate::sinks::SinksFile;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listener addresses.
    #[serde(default)]
    pub listen: super::ListenFile,
    /// Per-request decode limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// How requests are authenticated and tenants identified.
    #[serde(default)]
    pub auth: AuthFile,
    /// Names of the labels the gateway adds.
    #[serde(default)]
    pub tags: TagsFile,
    /// Regions and their sinks. At least one.
    pub regions: Vec<RegionFile>,
    /// Known tenants.
    #[serde(default)]
    pub tenants: Vec<TenantFile>,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownFile,
    /// The residency policy. Without it, an implicit policy sends each tenant to its
    /// `tenants[].region` (and unlisted tenants to `auth.default_region`).
    #[serde(default)]
    pub residency: Option<ResidencyFile>,
    /// OTLP metrics ingestion.
    #[serde(default)]
    pub otlp: OtlpFile,
    /// How work is spread over cores.
    #[serde(default)]
    pub pipeline: PipelineFile,
    /// When a request counts as kept, and the write-ahead log.
    #[serde(default)]
    pub durability: DurabilityFile,
    /// Upstream health probes and gossip with the other gateway nodes.
    #[serde(default)]
    pub cluster: Option<super::ClusterFile>,
    /// TLS on every listener (see `tls:`); absent: plain TCP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsFile>,
    /// Prometheus HA-pair deduplication (see `docs/limits.md`); absent: off.
    #[serde(default)]
    pub ha_dedup: Option<crate::ha::HaDedupFile>,
}

/// `durability:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurabilityFile {
    /// `wal` (default), `upstream` or `none` (lossy).
    #[serde(default)]
    pub mode: DurabilityMode,
    /// Directory of the write-ahead logs, one subdirectory per region. Default `wal`
    /// (relative to the working directory).
    #[serde(default = "default_wal_dir")]
    pub dir: PathBuf,
    /// A log starts a new segment file past this many bytes. Default 64 MiB.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// One region's log may hold this many bytes; past it, writes for the region get 503.
    /// Default 4 GiB.
    #[serde(default = "default_region_wal_bytes")]
    pub max_bytes_per_region: u64,
    /// All regions' logs together may hold this many bytes. Default 16 GiB.
    #[serde(default = "default_total_wal_bytes")]
    pub max_bytes: u64,
    /// Each region's quarantine (records an upstream refused for good, kept under
    /// `<dir>/<region>/quarantine/` for `traceo-gateway quarantine`) may hold this many
    /// bytes; past it the oldest entries are dropped, loudly. Default 1 GiB.
    #[serde(default = "default_quarantine_bytes")]
    pub quarantine_max_bytes: u64,
    /// One tenant's records in one region's log may hold this many bytes; past it, that
    /// tenant's writes to the region get 503 while other tenants' go on. Default a quarter of
    /// `max_bytes_per_region`, so a stuck or flooding tenant leaves the rest of the log to
    /// the others.
    #[serde(default)]
    pub max_bytes_per_tenant: Option<u64>,
}

/// `durability.mode`
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Acknowledge once fsynced in the region's write-ahead log.
    #[default]
    Wal,
    /// Acknowledge once every sink confirmed.
    Upstream,
    /// Acknowledge once queued (lossy).
    None,
}

fn default_wal_dir() -> PathBuf {
    PathBuf::from("wal")
}
const fn default_segment_bytes() -> u64 {
    64 << 20
}
const fn default_region_wal_bytes() -> u64 {
    4 << 30
}
const fn default_total_wal_bytes() -> u64 {
    16 << 30
}
const fn default_quarantine_bytes() -> u64 {
    1 << 30
}

impl Default for DurabilityFile {
    fn default() -> Self {
        Self {
            mode: DurabilityMode::default(),
            dir: default_wal_dir(),
            segment_bytes: default_segment_bytes(),
            max_bytes_per_region: default_region_wal_bytes(),
            max_bytes: default_total_wal_bytes(),
            quarantine_max_bytes: default_quarantine_bytes(),
            max_bytes_per_tenant: None,
        }
    }
}

/// Smallest segment accepted: a segment holds at least a few requests.
const MIN_SEGMENT_BYTES: u64 = 4096;
/// Smallest quarantine accepted: room for a few refused requests of ordinary size; below it
/// every new entry would drop the one before, and the quarantine would keep almost nothing.
const MIN_QUARANTINE_BYTES: u64 = 1 << 20;
/// The default tenant share is the region's bound over this: four tenants stuck at once
/// still leave room, and one tenant alone can use a good part of an otherwise idle log.
const DEFAULT_TENANT_SHARES: u64 = 4;

impl DurabilityFile {
    fn validate(self, problems: &mut Vec<String>) -> DurabilitySettings {
        if self.mode == DurabilityMode::Wal {
            if self.dir.as_os_str().is_empty() {
                problems.push("durability.dir: must not be empty".to_string());
            }
            if self.segment_bytes < MIN_SEGMENT_BYTES {
                problems.push(format!(
                    "durability.segment_bytes: {} is below the minimum of {MIN_SEGMENT_BYTES}",
                    self.segment_bytes
                ));
            }
            if self.max_bytes_per_region < 2 * self.segment_bytes {
                problems.push(format!(
                    "durability.max_bytes_per_region: {} must be at least two segments (2 x segment_bytes = {})",
                    self.max_bytes_per_region,
                    2 * self.segment_bytes
                ));
            }
            if self.max_bytes < self.max_bytes_per_region {
                problems.push(format!(
                    "durability.max_bytes: {} is below max_bytes_per_region ({})",
                    self.max_bytes, self.max_bytes_per_region
                ));
            }
            if self.quarantine_max_bytes < MIN_QUARANTINE_BYTES {
                problems.push(format!(
                    "durability.quarantine_max_bytes: {} is below the minimum of {MIN_QUARANTINE_BYTES} (1 MiB)",
                    self.quarantine_max_bytes
                ));
            }
            if let Some(t) = self.max_bytes_per_tenant {
                if t == 0 || t > self.max_bytes_per_region {
                    problems.push(format!(
                        "durability.max_bytes_per_tenant: {t} is outside 1..=max_bytes_per_region ({})",
                        self.max_bytes_per_region
                    ));
                }
            }
        }
        let per_tenant = self
            .max_bytes_per_tenant
            .unwrap_or(self.max_bytes_per_region / DEFAULT_TENANT_SHARES);
        DurabilitySettings {
            mode: self.mode,
            dir: self.dir,
            limits: crate::wal::WalLimits {
                segment_bytes: self.segment_bytes,
                max_bytes: self.max_bytes_per_region,
                max_bytes_per_owner: per_tenant,
                owner_of: crate::share::record::tenant_of,
            },
            max_bytes: self.max_bytes,
            quarantine_max_bytes: self.quarantine_max_bytes,
        }
    }
}

/// `pipeline:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Workers of each partitioning sink (Kafka, null); a series always meets the same one.
    /// Default: one per core.
    #[serde(default)]
    pub shards: Option<usize>,
}

/// Most shards accepted: each Kafka shard is a producer with its own broker connections.
const MAX_SHARDS: usize = 256;

impl PipelineFile {
    fn validate(&self, problems: &mut Vec<String>) -> usize {
        match self.shards {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) if (1..=MAX_SHARDS).contains(&n) => n,
            Some(n) => {
                problems.push(format!(
                    "pipeline.shards: {n} is outside 1..={MAX_SHARDS}; leave it out for one per core"
                ));
                1
            }
        }
    }
}

/// `otlp:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpFile {
    /// OTLP/gRPC listener; `null` turns it off. Default `0.0.0.0:4317`.
    #[serde(default = "default_otlp_grpc")]
    pub grpc_listen: Option<String>,
    /// OTLP/HTTP listener; `null` turns it off (`/v1/metrics` stays on `listen.http`).
    /// Default `0.0.0.0:4318`.
    #[serde(default = "default_otlp_http")]
    pub http_listen: Option<String>,
    /// Metric and label naming.
    #[serde(default)]
    pub translation: OtlpTranslation,
    /// Resource attributes copied onto every series of their resource as labels.
    #[serde(default)]
    pub promote_resource_attributes: Vec<String>,
    /// Add `otel_scope_name`, `otel_scope_version`, `otel_scope_schema_url` and scope attributes
    /// to every series. Default false, as in Prometheus.
    #[serde(default)]
    pub promote_scope_metadata: bool,
    /// A resource attribute that names the tenant of its resource's data (treated as that
    /// resource's `X-Scope-OrgID`).
    #[serde(default)]
    pub tenant_attribute: Option<String>,
}

fn default_otlp_grpc() -> Option<String> {
    Some("0.0.0.0:4317".to_string())
}
fn default_otlp_http() -> Option<String> {
    Some("0.0.0.0:4318".to_string())
}

impl Default for OtlpFile {
    fn default() -> Self {
        Self {
            grpc_listen: default_otlp_grpc(),
            http_listen: default_otlp_http(),
            translation: OtlpTranslation::default(),
            promote_resource_attributes: Vec::new(),
            promote_scope_metadata: false,
            tenant_attribute: None,
        }
    }
}

/// `otlp.translation`: Prometheus' `translation_strategy` names, in snake case.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OtlpTranslation {
    /// `http.server.duration` in `ms` -> `http_server_duration_milliseconds`.
    #[default]
    UnderscoreEscapingWithSuffixes,
    /// Names as sent, UTF-8 included.
    NoTranslation,
}

/// `residency:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyFile {
    /// Policy file (see `docs/residency.md`); relative paths are relative to this file.
    pub policy: PathBuf,
    /// Status for a tenant the policy does not know: 401 or 403 (default).
    #[serde(default = "default_unknown_tenant_status")]
    pub unknown_tenant_status: u16,
    /// How often the policy file is checked for changes (SIGHUP reloads at once). Default `5s`.
    #[serde(default = "default_policy_poll")]
    pub poll_interval: HumanDuration,
}

const fn default_unknown_tenant_status() -> u16 {
    403
}
const fn default_policy_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// `listen:`
const DEFAULT_LIMITS: DecodeLimits = DecodeLimits::new_default();

/// `limits:` (defaults in [`DecodeLimits::new_default`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body (compressed), bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest decompressed request, bytes.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    /// Most series in one request.
    #[serde(default = "default_max_series")]
    pub max_series_per_request: usize,
    /// Most labels on one series.
    #[serde(default = "default_max_labels")]
    pub max_labels_per_series: usize,
    /// Longest label name, bytes.
    #[serde(default = "default_max_name")]
    pub max_label_name_bytes: usize,
    /// Longest label value, bytes.
    #[serde(default = "default_max_value")]
    pub max_label_value_bytes: usize,
    /// Most float samples in one request (OTLP: after translation), counted while decoding.
    #[serde(default = "default_max_samples")]
    pub max_samples_per_request: usize,
    /// Most native histogram samples in one request.
    #[serde(default = "default_max_histograms")]
    pub max_histograms_per_request: usize,
    /// Most histogram bucket spans, counts and custom bounds over one request.
    #[serde(default = "default_max_buckets")]
    pub max_histogram_buckets_per_request: usize,
    /// Most exemplars in one request.
    #[serde(default = "default_max_exemplars")]
    pub max_exemplars_per_request: usize,
    /// OTLP: most attributes (and nested attribute values) in one request, counted before
    /// the body is decoded.
    #[serde(default = "default_max_attributes")]
    pub max_attributes_per_request: usize,
    /// Per-tenant limits every tenant gets unless the overrides file says otherwise (see
    /// `docs/limits.md`).
    #[serde(default)]
    pub tenant: crate::limits::TenantLimitsFile,
    /// File of per-tenant overrides (`overrides: {<tenant>: {<field>: <value>}}`), re-read on
    /// SIGHUP and when its content changes; a file that does not validate keeps the limits in
    /// force. Relative to the configuration file. Default: none.
    #[serde(default)]
    pub overrides_file: Option<PathBuf>,
    /// How often the overrides file is checked for changes. Default `5s`.
    #[serde(default = "default_overrides_poll")]
    pub overrides_poll_interval: HumanDuration,
    /// Most tenants a node keeps limit state for at once (with `unknown_tenants: allow`,
    /// clients make tenant ids up); past it a new tenant gets 503. Default 10000.
    #[serde(default = "default_max_tenants")]
    pub max_tenants: usize,
}

const fn default_overrides_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
const fn default_max_tenants() -> usize {
    10_000
}

const fn default_max_samples() -> usize {
    DEFAULT_LIMITS.max_samples
}
const fn default_max_histograms() -> usize {
    DEFAULT_LIMITS.max_histograms
}
const fn default_max_buckets() -> usize {
    DEFAULT_LIMITS.max_histogram_buckets
}
const fn default_max_exemplars() -> usize {
    DEFAULT_LIMITS.max_exemplars
}
const fn default_max_attributes() -> usize {
    DEFAULT_LIMITS.max_attributes
}

const fn default_max_body_bytes() -> usize {
    DEFAULT_LIMITS.max_compressed_bytes
}
const fn default_max_decompressed_bytes() -> usize {
    DEFAULT_LIMITS.max_decompressed_bytes
}
const fn default_max_series() -> usize {
    DEFAULT_LIMITS.max_series
}
const fn default_max_labels() -> usize {
    DEFAULT_LIMITS.max_labels_per_series
}
const fn default_max_name() -> usize {
    DEFAULT_LIMITS.max_label_name_bytes
}
const fn default_max_value() -> usize {
    DEFAULT_LIMITS.max_label_value_bytes
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_series_per_request: default_max_series(),
            max_labels_per_series: default_max_labels(),
            max_label_name_bytes: default_max_name(),
            max_label_value_bytes: default_max_value(),
            max_samples_per_request: default_max_samples(),
            max_histograms_per_request: default_max_histograms(),
            max_histogram_buckets_per_request: default_max_buckets(),
            max_exemplars_per_request: default_max_exemplars(),
            max_attributes_per_request: default_max_attributes(),
            tenant: crate::limits::TenantLimitsFile::default(),
            overrides_file: None,
            overrides_poll_interval: default_overrides_poll(),
            max_tenants: default_max_tenants(),
        }
    }
}

/// Authentication mode.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every request must carry valid credentials (the default with a config file).
    #[default]
    Required,
    /// No authentication; tenant from `X-Scope-OrgID`, else the basic-auth user, else `default`.
    Off,
}

/// `auth:`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// `required` (default) or `off`.
    #[serde(default)]
    pub mode: AuthMode,
    /// With `required`: accept `X-Scope-OrgID` of a known tenant without credentials. Only
    /// for a gateway behind a proxy that authenticates and sets the header.
    #[serde(default)]
    pub trust_org_id_header: bool,
    /// With `off`: region for tenants not listed under `tenants`. Required with `off`.
    #[serde(default)]
    pub default_region: Option<String>,
}

/// `tags:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsFile {
    /// Label carrying the tenant. Default `tenant`.
    #[serde(default = "default_tenant_label")]
    pub tenant_label: String,
    /// Label carrying the region. Default `region`.
    #[serde(default = "default_region_label")]
    pub region_label: String,
}

fn default_tenant_label() -> String {
    "tenant".into()
}
fn default_region_label() -> String {
    "region".into()
}

impl Default for TagsFile {
    fn default() -> Self {
        Self {
            tenant_label: default_tenant_label(),
            region_label: default_region_label(),
        }
    }
}

/// One entry of `regions:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    /// Region id: ASCII letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// The region's sinks; at least one.
    #[serde(default)]
    pub sinks: SinksFile,
}

/// One entry of `tenants:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// Tenant id: ASCII letters, digits, `-`, `_`, `.`; at most 150 bytes.
    pub id: String,
    /// Region its data goes to. Only without `residency.policy` (the policy decides then).
    #[serde(default)]
    pub region: Option<String>,
    /// Basic-auth passwords accepted for this tenant (user name = tenant id).
    #[serde(default, deserialize_with = "crate::yaml::secret_list")]
    pub passwords: Vec<String>,
    /// Bearer tokens that identify this tenant.
    #[serde(default, deserialize_with = "crate::yaml::secret_list")]
    pub bearer_tokens: Vec<String>,
}

/// `shutdown:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownFile {
    /// After SIGTERM, answer 503 on `/-/ready` for this long before closing listeners, so
    /// load balancers stop sending first. Default `0s`.
    #[serde(default = "default_drain_delay")]
    pub drain_delay: HumanDuration,
}

const fn default_drain_delay() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}

impl Default for ShutdownFile {
    fn default() -> Self {
        Self {
            drain_delay: default_drain_delay(),
        }
    }
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl OtlpFile {
    fn validate(self, http: Option<SocketAddr>, problems: &mut Vec<String>) -> OtlpSettings {
        let mut addr = |field: &str, v: &Option<String>| -> Option<SocketAddr> {
            let v = v.as_ref()?;
            match v.parse::<SocketAddr>() {
                Ok(a) if Some(a) == http => {
                    problems.push(format!(
                        "otlp.{field}: {v:?} is listen.http's address; /v1/metrics is served \
                         there anyway, set otlp.{field} to null"
                    ));
                    None
                }
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(format!("otlp.{field}: {v:?} is not an address: {e}"));
                    None
                }
            }
        };
        let grpc_addr = addr("grpc_listen", &self.grpc_listen);
        let http_addr = addr("http_listen", &self.http_listen);
        if grpc_addr.is_some() && grpc_addr == http_addr {
            problems.push(format!(
                "otlp.http_listen: {:?} is also otlp.grpc_listen; one port serves both, set \
                 otlp.http_listen to null",
                self.http_listen.as_deref().unwrap_or_default()
            ));
        }
        let mut seen = HashSet::new();
        for (i, a) in self.promote_resource_attributes.iter().enumerate() {
            if a.trim().is_empty() {
                problems.push(format!("otlp.promote_resource_attributes[{i}]: is empty"));
            } else if !seen.insert(a.trim()) {
                problems.push(format!(
                    "otlp.promote_resource_attributes[{i}]: {a:?} is listed twice"
                ));
            }
        }
        if self
            .tenant_attribute
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            problems.push("otlp.tenant_attribute: is empty; leave it out instead".to_string());
        }
        OtlpSettings {
            grpc_addr,
            http_addr,
            translate: protocols::otlp::TranslateOptions {
                naming: match self.translation {
                    OtlpTranslation::UnderscoreEscapingWithSuffixes => {
                        protocols::otlp::Naming::UnderscoreEscapingWithSuffixes
                    }
                    OtlpTranslation::NoTranslation => protocols::otlp::Naming::NoTranslation,
                },
                promote_resource_attributes: self
                    .promote_resource_attributes
                    .iter()
                    .map(|a| a.trim().to_string())
                    .collect(),
                promote_scope_metadata: self.promote_scope_metadata,
                tenant_attribute: self.tenant_attribute.map(|a| a.trim().to_string()),
            },
        }
    }
}

impl ConfigFile {
    /// Validates meaning, collecting every problem; each names its field path and value.
    pub fn validate(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let has_policy = self.residency.is_some();
        let residency = self.residency.as_ref().map(|r| {
            if r.unknown_tenant_status != 401 && r.unknown_tenant_status != 403 {
                problems.push(format!(
                    "residency.unknown_tenant_status: {} is neither 401 nor 403",
                    r.unknown_tenant_status
                ));
            }
            if r.poll_interval.0.is_zero() {
                problems.push("residency.poll_interval: must be greater than 0".to_string());
            }
            ResidencySettings {
                policy_file: r.policy.clone(),
                unknown_tenant_status: r.unknown_tenant_status,
                poll_interval: r.poll_interval.0,
            }
        });

        let http_addr = self.listen.http_addr(&mut problems);
        let listen = self
            .listen
            .validate(self.limits.max_body_bytes, &mut problems);

        let otlp = self.otlp.validate(http_addr, &mut problems);
        let shards = self.pipeline.validate(&mut problems);
        let durability = self.durability.validate(&mut problems);
        let cluster = self.cluster.unwrap_or_default().validate(&mut problems);
        let tls = self.tls.map(|t| t.validate(&mut problems));
        let ha_dedup = self.ha_dedup.map(|h| h.validate(&mut problems));
        let cert_tenants = tls
            .as_ref()
            .is_some_and(|t| t.tenant_from != crate::tls::TenantFrom::None);

        let l = &self.limits;
        let tenant_limits = crate::limits::LimitsSettings::from_file(
            &l.tenant,
            l.overrides_file.as_deref(),
            l.overrides_poll_interval.0,
            l.max_tenants,
            &mut problems,
        );
        for (field, v) in [
            ("max_body_bytes", l.max_body_bytes),
            ("max_decompressed_bytes", l.max_decompressed_bytes),
            ("max_series_per_request", l.max_series_per_request),
            ("max_labels_per_series", l.max_labels_per_series),
            ("max_label_name_bytes", l.max_label_name_bytes),
            ("max_label_value_bytes", l.max_label_value_bytes),
            ("max_samples_per_request", l.max_samples_per_request),
            ("max_histograms_per_request", l.max_histograms_per_request),
            (
                "max_histogram_buckets_per_request",
                l.max_histogram_buckets_per_request,
            ),
            ("max_exemplars_per_request", l.max_exemplars_per_request),
            ("max_attributes_per_request", l.max_attributes_per_request),
        ] {
            if v == 0 {
                problems.push(format!("limits.{field}: must be greater than 0"));
            }
        }
        // Snappy block headers are 32-bit; anything larger could never be reached anyway.
        if l.max_decompressed_bytes > u32::MAX as usize {
            problems.push(format!(
                "limits.max_decompressed_bytes: {} is over 4 GiB, the snappy block maximum",
                l.max_decompressed_bytes
            ));
        }
        // What a client may send must fit what a log record may hold, with room for the
        // gateway's tags (the pipeline refuses, with 400, any series that still does not).
        let rules = crate::share::record::RULES;
        let room = crate::share::record::RECORD_TAG_ROOM;
        for (field, v, max) in [
            (
                "max_labels_per_series",
                l.max_labels_per_series,
                rules.max_labels_per_series - room,
            ),
            (
                "max_label_name_bytes",
                l.max_label_name_bytes,
                rules.max_label_name_bytes - room,
            ),
            (
                "max_label_value_bytes",
                l.max_label_value_bytes,
                rules.max_label_value_bytes,
            ),
        ] {
            if v > max {
                problems.push(format!(
                    "limits.{field}: {v} is over {max}, the most a write-ahead log record holds with the gateway's tags"
                ));
            }
        }
        let limits = DecodeLimits {
            max_compressed_bytes: l.max_body_bytes,
            max_decompressed_bytes: l.max_decompressed_bytes,
            max_series: l.max_series_per_request,
            max_labels_per_series: l.max_labels_per_series,
            max_label_name_bytes: l.max_label_name_bytes,
            max_label_value_bytes: l.max_label_value_bytes,
            max_samples: l.max_samples_per_request,
            max_histograms: l.max_histograms_per_request,
            max_histogram_buckets: l.max_histogram_buckets_per_request,
            max_exemplars: l.max_exemplars_per_request,
            max_attributes: l.max_attributes_per_request,
        };

        for (field, v) in [
            ("tags.tenant_label", &self.tags.tenant_label),
            ("tags.region_label", &self.tags.region_label),
        ] {
            if !valid_label_name(v) || v.starts_with("__") {
                problems.push(format!(
                    "{field}: {v:?} is not a valid label name (letters, digits, '_'; not starting with a digit or '__')"
                ));
            }
        }
        if self.tags.tenant_label == self.tags.region_label {
            problems.push(format!(
                "tags.region_label: {:?} is the same as tags.tenant_label",
                self.tags.region_label
            ));
        }

        if self.regions.is_empty() {
            problems.push("regions: at least one region is required".to_string());
        }
        let mut regions = Vec::new();
        let mut region_ids = HashSet::new();
        let mut upstream_names = HashSet::new();
        for (i, r) in self.regions.into_iter().enumerate() {
            let id = match RegionId::parse(&r.id) {
                Ok(id) => id,
                Err(e) => {
                    problems.push(format!("regions[{i}].id: {e}"));
                    continue;
                }
            };
            if !region_ids.insert(id.clone()) {
                problems.push(format!("regions[{i}].id: region {id} is defined twice"));
            }
            let sinks = r.sinks.validate(
                &format!("regions[{i}].sinks"),
                &id,
                &mut upstream_names,
                &mut problems,
            );
            if sinks.is_empty() {
                problems.push(format!(
                    "regions[{i}].sinks: region {id} has no sink; its data would have nowhere to go"
                ));
            }
            regions.push(Region { id, sinks });
        }

        let mut tenants = HashMap::new();
        let mut bearer_tokens = HashMap::new();
        let tenants_with_credentials: Vec<(usize, String)> = self
            .tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.passwords.is_empty() || !t.bearer_tokens.is_empty())
            .map(|(i, t)| (i, t.id.clone()))
            .collect();
        for (i, t) in self.tenants.into_iter().enumerate() {
            let id = match TenantId::parse(&t.id) {
                Ok(id) => id,
                Err(e) => {
                    problems.push(format!("tenants[{i}].id: {e}"));
                    continue;
                }
            };
            let region = match (t.region.as_deref().map(RegionId::parse), has_policy) {
                (Some(_), true) => {
                    problems.push(format!(
                        "tenants[{i}].region: the residency policy (residency.policy) decides where tenant {id}'s data goes; remove this field"
                    ));
                    None
                }
                (None, true) => None,
                (None, false) => {
                    problems.push(format!(
                        "tenants[{i}].region: required (or configure residency.policy)"
                    ));
                    continue;
                }
                (Some(Ok(r)), false) if region_ids.contains(&r) => Some(r),
                (Some(Ok(r)), false) => {
                    problems.push(format!(
                        "tenants[{i}].region: tenant {id} names region {r}, which is not under regions"
                    ));
                    continue;
                }
                (Some(Err(e)), false) => {
                    problems.push(format!("tenants[{i}].region: {e}"));
                    continue;
                }
            };
            for (j, p) in t.passwords.iter().enumerate() {
                if p.is_empty() {
                    problems.push(format!("tenants[{i}].passwords[{j}]: must not be empty"));
                }
            }
            for (j, tok) in t.bearer_tokens.into_iter().enumerate() {
                if tok.is_empty() {
                    problems.push(format!(
                        "tenants[{i}].bearer_tokens[{j}]: must not be empty"
                    ));
                } else if let Some(other) =
                    bearer_tokens.insert(super::SecretDigest::of(&tok), id.clone())
                {
                    problems.push(format!(
                        "tenants[{i}].bearer_tokens[{j}]: token already identifies tenant {other}"
                    ));
                }
            }
            let tenant = Tenant {
                id: id.clone(),
                region,
                passwords: t
                    .passwords
                    .iter()
                    .map(|p| super::SecretDigest::of(p))
                    .collect(),
            };
            if tenants.insert(id.clone(), tenant).is_some() {
                problems.push(format!("tenants[{i}].id: tenant {id} is defined twice"));
            }
        }

        if self.auth.mode == AuthMode::Off {
            // Credentials nobody checks would look like protection and be none: a token
            // holder's data would land as whatever tenant the request names.
            for (i, t) in tenants_with_credentials.iter() {
                problems.push(format!(
                    "tenants[{i}]: tenant {t} has passwords or bearer_tokens, but auth.mode is off, so they would never be checked; set auth.mode: required or remove them"
                ));
            }
        }
        let auth = match self.auth.mode {
            AuthMode::Off if has_policy => {
                if self.auth.default_region.is_some() {
                    problems.push(
                        "auth.default_region: the residency policy's unknown_tenants decides where unlisted tenants go; remove this field"
                            .to_string(),
                    );
                }
                Some(AuthPolicy::Off {
                    default_region: None,
                })
            }
            AuthMode::Off => match self.auth.default_region.as_deref().map(RegionId::parse) {
                Some(Ok(r)) if region_ids.contains(&r) => Some(AuthPolicy::Off {
                    default_region: Some(r),
                }),
                Some(Ok(r)) => {
                    problems.push(format!(
                        "auth.default_region: region {r} is not under regions"
                    ));
                    None
                }
                Some(Err(e)) => {
                    problems.push(format!("auth.default_region: {e}"));
                    None
                }
                None => {
                    problems.push(
                        "auth.default_region: required with auth.mode: off (where do unlisted tenants go?)"
                            .to_string(),
                    );
                    None
                }
            },
            AuthMode::Required => {
                if self.auth.default_region.is_some() {
                    problems.push(
                        "auth.default_region: only allowed with auth.mode: off; with required auth every tenant is listed"
                            .to_string(),
                    );
                }
                let any_credential =
                    tenants.values().any(|t| !t.passwords.is_empty()) || !bearer_tokens.is_empty();
                if !any_credential && !self.auth.trust_org_id_header && !cert_tenants {
                    problems.push(
                        "auth.mode: required, but no tenant has passwords or bearer_tokens, so every request would be refused"
                            .to_string(),
                    );
                }
                Some(AuthPolicy::Required {
                    trust_org_id_header: self.auth.trust_org_id_header,
                })
            }
        };

        // Without a policy file this is the policy in force; with one, a refuse-all
        // stand-in (its tenants have no region) that `Config::from_yaml` replaces at once.
        let policy = auth.as_ref().and_then(|auth| {
            super::implicit_policy(&regions, &tenants, auth)
                .map_err(|e| problems.extend(e.problems))
                .ok()
        });
        match (http_addr, auth, policy, problems.is_empty()) {
            (Some(http_addr), Some(auth), Some(policy), true) => Ok(Config {
                http_addr,
                listen,
                limits,
                auth,
                tenant_label: self.tags.tenant_label,
                region_label: self.tags.region_label,
                regions,
                tenants,
                bearer_tokens,
                drain_delay: self.shutdown.drain_delay.0,
                residency,
                policy: std::sync::Arc::new(policy),
                otlp,
                shards,
                durability,
                cluster,
                tls,
                tenant_limits,
                ha_dedup,
            }),
            _ => Err(problems),
        }
    }
}

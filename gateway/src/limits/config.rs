//! `limits.tenant`, `limits.overrides_file` and the overrides file: per-tenant limits as
//! written, and as validated once (at load, and at every reload of the overrides file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use residency_rules::TenantId;
use serde::Deserialize;

use crate::yaml::HumanDuration;

/// Shortest `active_series_window`: expiry runs at a twentieth of it, at least every second.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest `active_series_window`.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `max_active_series`: a full tracker takes 24 to 48 bytes a series (3 GiB here).
const MAX_SERIES_LIMIT: u64 = 1 << 26;
/// Smallest rate other than 0: below it a token would take longer than a bucket can count.
const MIN_RATE: f64 = 1e-3;

/// One tenant's limits as written: every field optional, so an override names only what it
/// changes. `0` means unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsFile {
    /// Samples per second (float samples, histogram samples and exemplars), fleet-wide: each
    /// node enforces its share, this divided by the live members. `0`: unlimited.
    #[serde(default)]
    pub ingestion_rate: Option<f64>,
    /// Token-bucket size for `ingestion_rate`, in samples, per node (not divided). `0`: one
    /// second of the fleet-wide rate.
    #[serde(default)]
    pub ingestion_burst: Option<u64>,
    /// Requests per second, fleet-wide like `ingestion_rate`. `0`: unlimited.
    #[serde(default)]
    pub request_rate: Option<f64>,
    /// Token-bucket size for `request_rate`, per node. `0`: one second of the rate (at
    /// least one request).
    #[serde(default)]
    pub request_burst: Option<u64>,
    /// Distinct series seen within `active_series_window`, per node (every node sees the
    /// tenant's series when a load balancer spreads its requests). `0`: unlimited.
    #[serde(default)]
    pub max_active_series: Option<u64>,
    /// A series not seen for this long no longer counts. Default `20m`.
    #[serde(default)]
    pub active_series_window: Option<HumanDuration>,
    /// The status of a request over a rate limit: `429` (default; remote-write senders
    /// retry it only when told to, OTLP senders always) or `503` (every sender retries it).
    #[serde(default)]
    pub rate_limited_status: Option<u16>,
}

/// How a rate refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum RateLimitedStatus {
    /// 429 Too Many Requests (gRPC `RESOURCE_EXHAUSTED` with `RetryInfo`).
    #[default]
    TooManyRequests,
    /// 503 Service Unavailable (gRPC `UNAVAILABLE`).
    Unavailable,
}

impl RateLimitedStatus {
    /// The HTTP status.
    pub fn code(self) -> u16 {
        match self {
            RateLimitedStatus::TooManyRequests => 429,
            RateLimitedStatus::Unavailable => 503,
        }
    }
}

/// One tenant's limits, validated; fleet-wide values (each node's share is computed per
/// request from the live members).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantLimits {
    /// Samples per second; 0: unlimited.
    pub ingestion_rate: f64,
    /// Samples; 0: one second of `ingestion_rate`.
    pub ingestion_burst: u64,
    /// Requests per second; 0: unlimited.
    pub request_rate: f64,
    /// Requests; 0: one second of `request_rate`.
    pub request_burst: u64,
    /// Series; 0: unlimited.
    pub max_active_series: u64,
    /// The active-series window.
    #[serde(serialize_with = "as_secs")]
    pub active_series_window: Duration,
    /// 429 or 503.
    pub rate_limited_status: RateLimitedStatus,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            ingestion_rate: 0.0,
            ingestion_burst: 0,
            request_rate: 0.0,
            request_burst: 0,
            max_active_series: 0,
            active_series_window: Duration::from_secs(20 * 60),
            rate_limited_status: RateLimitedStatus::TooManyRequests,
        }
    }
}

impl TenantLimitsFile {
    /// These fields over `base`; problems are named under `field` (e.g. `limits.tenant`).
    pub fn over(&self, base: &TenantLimits, field: &str) -> Result<TenantLimits, Vec<String>> {
        let mut problems = Vec::new();
        let rate = |v: Option<f64>, name: &str, base: f64, problems: &mut Vec<String>| match v {
            Some(r) if !(r.is_finite() && (r == 0.0 || r >= MIN_RATE)) => {
                problems.push(format!(
                    "{field}.{name}: {r} is not a rate (0 for unlimited, or at least {MIN_RATE})"
                ));
                base
            }
            Some(r) => r,
            None => base,
        };
        let ingestion_rate = rate(
            self.ingestion_rate,
            "ingestion_rate",
            base.ingestion_rate,
            &mut problems,
        );
        let request_rate = rate(
            self.request_rate,
            "request_rate",
            base.request_rate,
            &mut problems,
        );
        let max_active_series = self.max_active_series.unwrap_or(base.max_active_series);
        if max_active_series > MAX_SERIES_LIMIT {
            problems.push(format!(
                "{field}.max_active_series: {max_active_series} is over the most this \
                 gateway tracks ({MAX_SERIES_LIMIT})"
            ));
        }
        let active_series_window = self
            .active_series_window
            .map_or(base.active_series_window, |w| w.0);
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&active_series_window) {
            problems.push(format!(
                "{field}.active_series_window: {active_series_window:?} is not within 1s..=168h"
            ));
        }
        let rate_limited_status = match self.rate_limited_status {
            None => base.rate_limited_status,
            Some(429) => RateLimitedStatus::TooManyRequests,
            Some(503) => RateLimitedStatus::Unavailable,
            Some(other) => {
                problems.push(format!(
                    "{field}.rate_limited_status: {other} is neither 429 nor 503"
                ));
                base.rate_limited_status
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(TenantLimits {
            ingestion_rate,
            ingestion_burst: self.ingestion_burst.unwrap_or(base.ingestion_burst),
            request_rate,
            request_burst: self.request_burst.unwrap_or(base.request_burst),
            max_active_series,
            active_series_window,
            rate_limited_status,
        })
    }
}

/// The overrides file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesFile {
    /// Tenant id to the limits it changes.
    #[serde(default)]
    overrides: HashMap<String, TenantLimitsFile>,
}

/// Validated overrides: tenant to its whole limits (defaults filled in).
pub type Overrides = HashMap<TenantId, Arc<TenantLimits>>;

/// Parses and validates an overrides file's text over `defaults`; every problem at once,
/// named by the file and the tenant.
pub fn parse_overrides(
    text: &str,
    file: &Path,
    defaults: &TenantLimits,
) -> Result<Overrides, Vec<String>> {
    let name = file.display();
    let parsed: OverridesFile = match serde_yaml::from_str(text) {
        Ok(p) => p,
        // An empty file (or one of comments only) is no overrides.
        Err(_)
            if text
                .lines()
                .all(|l| l.trim().is_empty() || l.trim().starts_with('#')) =>
        {
            return Ok(Overrides::new())
        }
        Err(e) => return Err(vec![format!("{name}: {e}")]),
    };
    let mut problems = Vec::new();
    let mut out = Overrides::new();
    for (tenant, limits) in parsed.overrides {
        let id = match TenantId::parse(&tenant) {
            Ok(id) => id,
            Err(e) => {
                problems.push(format!("{name}: overrides.{tenant:?}: {e}"));
                continue;
            }
        };
        match limits.over(defaults, &format!("{name}: overrides.{tenant}")) {
            Ok(l) => {
                out.insert(id, Arc::new(l));
            }
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.sort();
        Err(problems)
    }
}

/// `limits:` as far as tenant limits go, validated.
#[derive(Debug, Clone)]
pub struct LimitsSettings {
    /// Every tenant's limits unless overridden.
    pub defaults: Arc<TenantLimits>,
    /// The overrides file, re-read on SIGHUP and when its content changes.
    pub overrides_file: Option<PathBuf>,
    /// How often the overrides file is checked for changes.
    pub poll_interval: Duration,
    /// The overrides read at load.
    pub overrides: Overrides,
    /// Most tenants whose limit state a node keeps at once.
    pub max_tenants: usize,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            defaults: Arc::new(TenantLimits::default()),
            overrides_file: None,
            poll_interval: Duration::from_secs(5),
            overrides: Overrides::new(),
            max_tenants: 10_000,
        }
    }
}

impl LimitsSettings {
    /// Validates the section (the overrides file is read by [`LimitsSettings::load_overrides`]
    /// once its path is resolved); problems name the field.
    pub fn from_file(
        tenant: &TenantLimitsFile,
        overrides_file: Option<&Path>,
        poll_interval: Duration,
        max_tenants: usize,
        problems: &mut Vec<String>,
    ) -> LimitsSettings {
        let defaults = tenant
            .over(&TenantLimits::default(), "limits.tenant")
            .map_err(|p| problems.extend(p))
            .unwrap_or_default();
        if max_tenants == 0 {
            problems.push("limits.max_tenants: must be at least 1".into());
        }
        if poll_interval < Duration::from_millis(100) {
            problems.push("limits.overrides_poll_interval: must be at least 100ms".into());
        }
        LimitsSettings {
            defaults: Arc::new(defaults),
            overrides_file: overrides_file.map(Path::to_path_buf),
            poll_interval,
            overrides: Overrides::new(),
            max_tenants,
        }
    }

    /// Reads and validates the overrides file, if one is configured.
    pub fn load_overrides(&mut self) -> Result<(), Vec<String>> {
        let Some(path) = &self.overrides_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![format!(
                "limits.overrides_file: cannot read {}: {e}",
                path.display()
            )]
        })?;
        self.overrides = parse_overrides(&text, path, &self.defaults).map_err(|p| {
            p.into_iter()
                .map(|m| format!("limits.overrides_file: {m}"))
                .collect::<Vec<_>>()
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_changes_only_what_it_names() {
        let defaults = TenantLimits {
            ingestion_rate: 1000.0,
            max_active_series: 50,
            ..TenantLimits::default()
        };
        let o = parse_overrides(
            "overrides:\n  team-a:\n    ingestion_rate: 20\n    rate_limited_status: 503\n",
            Path::new("o.yaml"),
            &defaults,
        )
        .unwrap();
        let a = &o[&TenantId::parse("team-a").unwrap()];
        assert_eq!(a.ingestion_rate, 20.0);
        assert_eq!(a.max_active_series, 50);
        assert_eq!(a.rate_limited_status, RateLimitedStatus::Unavailable);
        assert!(
            parse_overrides("# nothing yet\n", Path::new("o"), &defaults)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn every_problem_is_named_by_file_tenant_and_field() {
        let text =
            "overrides:\n  team-a:\n    ingestion_rate: -1\n    rate_limited_status: 500\n  \
                    team-b:\n    active_series_window: 0s\n";
        let p = parse_overrides(text, Path::new("o.yaml"), &TenantLimits::default()).unwrap_err();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p
            .iter()
            .any(|m| m.contains("o.yaml: overrides.team-a.ingestion_rate")));
        assert!(p
            .iter()
            .any(|m| m.contains("team-a.rate_limited_status: 500")));
        assert!(p.iter().any(|m| m.contains("team-b.active_series_window")));
        let p = parse_overrides(
            "overrides:\n  a:\n    ingestion_rat: 1\n",
            Path::new("o"),
            &TenantLimits::default(),
        )
        .unwrap_err();
        assert!(p[0].contains("ingestion_rat"), "{p:?}");
        let p = parse_overrides(
            "overrides:\n  'bad tenant': {}\n",
            Path::new("o"),
            &TenantLimits::default(),
        )
        .unwrap_err();
        assert!(p[0].contains("bad tenant"), "{p:?}");
    }
}

//! The limits part of `/api/v1/status`: per tenant, each limit fleet-wide and this node's
//! share, the member count the share was computed with, and current usage, so "why was I
//! limited" has an answer on every node.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{ingestion_rate, request_rate, Limits, TenantLimits};

/// The limits section of the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitsView {
    /// Live members the shares are computed with.
    pub members: usize,
    /// Every tenant's defaults.
    pub defaults: TenantLimits,
    /// Tenants this node has limit state for, by id.
    pub tenants: Vec<TenantLimitsView>,
}

/// One tenant on the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantLimitsView {
    /// The tenant.
    pub tenant: String,
    /// Whether the overrides file names it.
    pub overridden: bool,
    /// Its limits, fleet-wide.
    pub limits: TenantLimits,
    /// This node's share of `ingestion_rate` (samples/s); null when unlimited.
    pub ingestion_rate_node_share: Option<f64>,
    /// This node's share of `request_rate`; null when unlimited.
    pub request_rate_node_share: Option<f64>,
    /// Samples/s kept over the last second.
    pub ingestion_rate_now: f64,
    /// Requests/s kept over the last second.
    pub request_rate_now: f64,
    /// Samples the ingestion bucket holds now (negative: in debt); null when unlimited.
    pub ingestion_tokens: Option<f64>,
    /// Active series this node tracks (null when the tenant has no series limit).
    pub active_series: Option<u64>,
}

impl Limits {
    /// The status-page view, tenants sorted by id.
    pub fn view(&self) -> LimitsView {
        let members = self.members();
        let (now_ns, _) = self.now();
        let overrides = self.overrides.load();
        let mut tenants = Vec::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            for (tenant, state) in map.iter() {
                let limits = self.limits_of(tenant);
                let ingestion = ingestion_rate(&limits, members);
                tenants.push(TenantLimitsView {
                    tenant: tenant.as_str().to_string(),
                    overridden: overrides.contains_key(tenant),
                    ingestion_rate_node_share: ingestion.map(|r| r.per_second),
                    request_rate_node_share: request_rate(&limits, members).map(|r| r.per_second),
                    ingestion_rate_now: f64::from_bits(state.sample_rate.load(Ordering::Relaxed)),
                    request_rate_now: f64::from_bits(state.request_rate.load(Ordering::Relaxed)),
                    ingestion_tokens: ingestion.map(|r| state.samples.available(r, now_ns)),
                    active_series: state.series.load().as_ref().map(|t| t.len()),
                    limits: (*limits).clone(),
                });
            }
        }
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        LimitsView {
            members,
            defaults: (*self.defaults).clone(),
            tenants,
        }
    }
}

/// Renders the view as aligned text for `?format=text`.
pub fn render_text(view: &LimitsView, out: &mut String) {
    let _ = writeln!(
        out,
        "\ntenant limits (rates fleet-wide / this node's share with {} members; 0 = unlimited):",
        view.members
    );
    if view.tenants.is_empty() {
        let _ = writeln!(out, "  no tenant seen yet");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<24} {:>22} {:>14} {:>18} {:>12} {:>22}",
        "tenant", "ingestion_rate", "now", "request_rate", "now", "active_series"
    );
    for t in &view.tenants {
        let rate = |global: f64, share: Option<f64>| match share {
            Some(s) => format!("{global:.0}/{s:.0}"),
            None => "unlimited".to_string(),
        };
        let series = match t.active_series {
            Some(n) => format!("{n}/{}", t.limits.max_active_series),
            None => "untracked".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<24} {:>22} {:>14.0} {:>18} {:>12.1} {:>22}{}",
            t.tenant,
            rate(t.limits.ingestion_rate, t.ingestion_rate_node_share),
            t.ingestion_rate_now,
            rate(t.limits.request_rate, t.request_rate_node_share),
            t.request_rate_now,
            series,
            if t.overridden { "  (override)" } else { "" }
        );
    }
}

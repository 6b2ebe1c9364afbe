//! The residency plan of a batch: where each series may go and what to edit on the way.

use protocols::Batch;
use residency_rules::{DenyScope, SeriesDecision, TenantId, TenantView};

use super::{IngestError, Written};
use crate::pipeline::Plan;

/// Counts of one series' data, for the written counts of what the policy or a limit left out.
pub(super) fn counts_of(series: &protocols::SeriesRef<'_>) -> Written {
    Written {
        samples: series.samples().len() as u64,
        histograms: series.histograms().len() as u64,
        exemplars: series.exemplars().len() as u64,
    }
}

/// Residency decisions for every series of `batch` but those in `refused` (ascending: the
/// series a tenant limit refused, which go nowhere): where each may go and what to edit, and
/// the counts of what the policy dropped. A tenant without label rules skips the per-series
/// loop. A `deny_request` match refuses the whole request before anything reaches a sink;
/// `deny_series` drops the series (counted).
pub fn plan(
    view: &TenantView<'_>,
    tenant: &TenantId,
    batch: &Batch,
    refused: &[u32],
) -> Result<(Plan, Written), IngestError> {
    if !view.has_rules() {
        let count = u32::try_from(batch.series_count()).unwrap_or(u32::MAX);
        return Ok((
            Plan::all_but(view.default_regions(), count, refused),
            Written::default(),
        ));
    }
    let mut plan = Plan::default();
    let mut dropped = Written::default();
    let mut skip = refused.iter().peekable();
    for (i, series) in batch.series().enumerate() {
        if skip.peek() == Some(&&(i as u32)) {
            skip.next();
            // Refused by a limit, so stored nowhere; but a rule that refuses the whole
            // request still does, whichever series it matches.
            if let SeriesDecision::Deny(d) = view.decide(series.labels().iter()) {
                if d.scope == DenyScope::Request {
                    return Err(IngestError::PolicyDenied(d.reason.to_string()));
                }
            }
            continue;
        }
        match view.decide(series.labels().iter()) {
            SeriesDecision::Allow { regions, edits } => {
                plan.add(i as u32, regions, &edits, view, &series)
            }
            SeriesDecision::Deny(d) => {
                let rule = d.rule.as_deref().unwrap_or("classes").to_string();
                let scope = match d.scope {
                    DenyScope::Request => "request",
                    DenyScope::Series => "series",
                };
                metrics::counter!("traceo_residency_denied_total",
                    "tenant" => crate::telemetry::tenant_label(Some(tenant)), "scope" => scope, "rule" => rule)
                .increment(1);
                if d.scope == DenyScope::Request {
                    return Err(IngestError::PolicyDenied(d.reason.to_string()));
                }
                dropped = dropped.plus(counts_of(&series));
            }
        }
    }
    Ok((plan, dropped))
}

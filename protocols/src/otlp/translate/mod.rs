//! OTLP metrics into the Prometheus data model, following Prometheus' own OTLP receiver
//! (<https://prometheus.io/docs/guides/opentelemetry/>) so that data reads the same whether it
//! went through Prometheus or through this gateway:
//!
//! - names: unit and type suffixes (`_seconds`, `_total`, `_ratio`), invalid characters to `_`;
//!   or kept as they are with [`Naming::NoTranslation`];
//! - `job` from `service.namespace`/`service.name`, `instance` from `service.instance.id`, the
//!   other resource attributes in one `target_info` series per resource, and configured ones
//!   promoted onto every series;
//! - gauges and non-monotonic sums are gauges, monotonic cumulative sums counters; explicit
//!   histograms become classic `_bucket`/`_sum`/`_count` series, exponential histograms native
//!   histograms, summaries quantile series;
//! - the no-recorded-value flag becomes Prometheus' stale marker.
//!
//! Points Prometheus cannot represent faithfully are refused one by one and counted, never
//! silently altered: delta temporality (Prometheus' data model is cumulative; converting
//! needs per-series state an edge that may restart or be load-balanced cannot keep
//! consistently), missing values, bucket counts that do not match their bounds, exponential
//! scales below -4. The caller answers them with OTLP's `partial_success`.

use std::borrow::Cow;

use super::proto::{
    self, any_value, exemplar, metric, number_data_point, AggregationTemporality, AnyValue,
    ExportMetricsServiceRequest, KeyValue,
};
use crate::builder::Usage;
use crate::{Batch, BatchBuilder, BucketSpan, DecodeError, DecodeLimits, Histogram};
use crate::{HistogramCount, MetricType, ResetHint};

mod labels;
mod names;
mod points;

use labels::*;
use names::*;
use points::*;

/// How many distinct refusal messages one answer carries.
const MAX_MESSAGES: usize = 5;

/// How metric and label names are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// Prometheus' default: characters outside `[a-zA-Z0-9_:]` become `_`, and unit and type
    /// suffixes are added (`http.server.duration` in `ms` -> `http_server_duration_milliseconds`).
    #[default]
    UnderscoreEscapingWithSuffixes,
    /// Names are kept exactly as sent (UTF-8 names; no suffixes except the `_bucket`, `_sum`
    /// and `_count` series a histogram or summary needs).
    NoTranslation,
}

/// Translation settings.
#[derive(Debug, Clone, Default)]
pub struct TranslateOptions {
    /// Name translation.
    pub naming: Naming,
    /// Resource attributes copied onto every series of the resource (they stay in
    /// `target_info` too). A data point attribute of the same name wins.
    pub promote_resource_attributes: Vec<String>,
    /// Add `otel_scope_name` and `otel_scope_version` to every series.
    pub promote_scope_metadata: bool,
    /// A resource attribute naming the tenant of the resource's data; resources are then
    /// grouped by tenant.
    pub tenant_attribute: Option<String>,
}

/// The data of one tenant (or of the request's own tenant when `tenant` is `None`).
#[derive(Debug)]
pub struct TenantBatch {
    /// Value of the tenant attribute; `None` when not configured or absent.
    pub tenant: Option<String>,
    /// The translated series.
    pub batch: Batch,
    /// OTLP data points in the batch.
    pub points: u64,
}

/// A translated request.
#[derive(Debug, Default)]
pub struct Translation {
    /// One batch per tenant, in the order tenants first appear.
    pub batches: Vec<TenantBatch>,
    /// Data points refused (OTLP `partial_success.rejected_data_points`).
    pub rejected_points: u64,
    /// Why, up to a few distinct messages.
    pub messages: Vec<String>,
}

impl Translation {
    /// The refusal messages joined for `partial_success.error_message`.
    pub fn error_message(&self) -> String {
        self.messages.join("; ")
    }

    /// Data points accepted over all tenants.
    pub fn points(&self) -> u64 {
        self.batches.iter().map(|b| b.points).sum()
    }

    fn reject(&mut self, points: u64, message: impl FnOnce() -> String) {
        self.rejected_points += points;
        if self.messages.len() < MAX_MESSAGES {
            let m = message();
            if !self.messages.contains(&m) {
                self.messages.push(m);
            }
        }
    }
}

struct Group {
    tenant: Option<String>,
    builder: BatchBuilder,
    points: u64,
}

/// Translates `request` into one [`Batch`] per tenant. Errors are limits, each over the whole
/// request whatever the number of tenants (series, samples, which a histogram or summary
/// point makes several of, histograms, exemplars, built bytes) or per series (labels);
/// refused points are counted in the [`Translation`].
pub fn translate(
    request: &ExportMetricsServiceRequest,
    options: &TranslateOptions,
    limits: &DecodeLimits,
) -> Result<Translation, DecodeError> {
    let mut groups: Vec<Group> = Vec::new();
    let mut out = Translation::default();
    // Every limit bounds the whole request, whatever the number of tenant groups: before a
    // group's builder takes a metric it is told what the other groups hold.
    let mut total = Usage::default();
    let max_attrs = limits.max_labels_per_series;
    for rm in &request.resource_metrics {
        let empty = Vec::new();
        let resource_attrs = rm.resource.as_ref().map_or(&empty, |r| &r.attributes);
        let tenant = options
            .tenant_attribute
            .as_deref()
            .and_then(|k| find(resource_attrs, k))
            .map(|v| value_string(v).into_owned());
        let gi = match groups.iter().position(|g| g.tenant == tenant) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    tenant: tenant.clone(),
                    builder: BatchBuilder::new(*limits),
                    points: 0,
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[gi];
        let resource = ResourceLabels::new(resource_attrs, options, max_attrs)?;
        let mut latest_ms: Option<i64> = None;
        for sm in &rm.scope_metrics {
            let mut base = resource.labels.clone();
            if options.promote_scope_metadata {
                if let Some(scope) = sm.scope.as_ref().filter(|s| !s.name.is_empty()) {
                    let mut attrs = Labels::default();
                    attribute_labels(&scope.attributes, options.naming, max_attrs, &mut attrs)?;
                    for (n, v) in attrs.v {
                        base.set_default(Cow::Owned(format!("otel_scope_{n}")), v);
                    }
                    base.set("otel_scope_name".into(), Cow::Borrowed(scope.name.as_str()));
                    base.set(
                        "otel_scope_version".into(),
                        Cow::Borrowed(scope.version.as_str()),
                    );
                    base.set(
                        "otel_scope_schema_url".into(),
                        Cow::Borrowed(sm.schema_url.as_str()),
                    );
                }
            }
            for m in &sm.metrics {
                let before = group.builder.usage();
                group
                    .builder
                    .share_limits(total.plus_minus(Usage::default(), before));
                let mut cx = MetricCx {
                    b: &mut group.builder,
                    out: &mut out,
                    base: &base,
                    naming: options.naming,
                    max_attrs,
                    metric: m,
                    points: 0,
                    latest_ms: &mut latest_ms,
                };
                cx.metric()?;
                group.points += cx.points;
                total = total.plus_minus(group.builder.usage(), before);
            }
        }
        if let (Some(ts), true) = (latest_ms, !resource.info.is_empty()) {
            let mut info = resource.info.clone();
            // A resource attribute named `__name__` cannot rename the series.
            info.set(
                Cow::Borrowed(crate::METRIC_NAME_LABEL),
                Cow::Borrowed("target_info"),
            );
            let b = &mut group.builder;
            let before = b.usage();
            b.share_limits(total.plus_minus(Usage::default(), before));
            for (n, v) in info.iter() {
                b.label(n, v)?;
            }
            b.sample(1.0, ts)?;
            b.finish_series()?;
            total = total.plus_minus(b.usage(), before);
        }
    }
    out.batches = groups
        .into_iter()
        .map(|g| TenantBatch {
            tenant: g.tenant,
            batch: g.builder.build(),
            points: g.points,
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
pub(super) mod unit_tests {
    use super::*;

    #[test]
    fn metric_names_follow_prometheus() {
        let n = |name, unit, kind| metric_name(name, unit, kind, Naming::default());
        assert_eq!(
            n("http.server.duration", "ms", NameKind::Other),
            "http_server_duration_milliseconds"
        );
        assert_eq!(
            n("shop.orders", "{order}", NameKind::Counter),
            "shop_orders_total"
        );
        assert_eq!(
            n("system.cpu.utilization", "1", NameKind::Gauge),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(
            n("net.io", "By/s", NameKind::Counter),
            "net_io_bytes_per_second_total"
        );
        assert_eq!(n("requests_total", "", NameKind::Counter), "requests_total");
        assert_eq!(
            n("cpu.temperature", "Cel", NameKind::Gauge),
            "cpu_temperature_celsius"
        );
        assert_eq!(
            n("latency_seconds", "s", NameKind::Other),
            "latency_seconds"
        );
        assert_eq!(n("2xx", "", NameKind::Gauge), "_2xx");
        // Vectors from otlptranslator's own tests.
        assert_eq!(n("requests", "1/s", NameKind::Gauge), "requests_per_second");
        assert_eq!(n("items", "1", NameKind::Counter), "items_total");
        assert_eq!(
            n("cpu_usage_ratio", "1", NameKind::Gauge),
            "cpu_usage_ratio"
        );
        assert_eq!(
            n("custom_metric", "By/{custom}", NameKind::Gauge),
            "custom_metric_bytes"
        );
        assert_eq!(
            n("custom_metric", "custom_unit", NameKind::Gauge),
            "custom_metric_custom_unit"
        );
        assert_eq!(
            n("custom_metric", "unit@with#special/chars", NameKind::Gauge),
            "custom_metric_unit_with_special_per_chars"
        );
        assert_eq!(
            n(
                "metric__with__multiple__underscores",
                "unit__multiple__underscores",
                NameKind::Gauge
            ),
            "metric_with_multiple_underscores_unit_multiple_underscores"
        );
        assert_eq!(
            n("active_connections", "", NameKind::Other),
            "active_connections"
        );
        assert_eq!(n("total.requests", "", NameKind::Counter), "requests_total");
        assert_eq!(
            metric_name("a.b", "s", NameKind::Counter, Naming::NoTranslation),
            "a.b"
        );
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(label_name("http.method", Naming::default()), "http_method");
        assert_eq!(label_name("2fa", Naming::default()), "key_2fa");
        assert_eq!(label_name("__reserved", Naming::default()), "__reserved");
        assert_eq!(label_name("_foo", Naming::default()), "key_foo");
        assert_eq!(label_name("a..b", Naming::default()), "a__b");
        assert_eq!(label_name("ようこそ", Naming::default()), "");
        assert_eq!(label_name("a.b", Naming::NoTranslation), "a.b");
    }

    #[test]
    fn exponential_buckets_shift_and_merge() {
        let b = proto::Buckets {
            offset: -1,
            bucket_counts: vec![1, 2, 3, 4],
        };
        let (spans, deltas) = buckets(Some(&b), 0);
        assert_eq!(
            spans,
            vec![BucketSpan {
                offset: 0,
                length: 4
            }]
        );
        assert_eq!(deltas, vec![1, 1, 1, 1]);
        // One step coarser: OTLP -1 -> -1, 0 and 1 -> 0, 2 -> 1; then +1.
        let (spans, deltas) = buckets(Some(&b), 1);
        assert_eq!(
            spans,
            vec![BucketSpan {
                offset: 0,
                length: 3
            }]
        );
        assert_eq!(deltas, vec![1, 4, -1]);
    }

    #[test]
    fn floats_format_like_go() {
        assert_eq!(format_float(10.0), "10");
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(1e6), "1000000");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
    }
}

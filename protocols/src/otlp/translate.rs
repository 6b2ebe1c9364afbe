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

/// Prometheus' stale marker: a NaN with this exact bit pattern.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const FLAG_NO_RECORDED_VALUE: u32 = 1;
/// Native histogram schemas run from -4 to 8; finer OTLP scales are merged down to 8.
const MAX_SCHEMA: i32 = 8;
const MIN_SCHEMA: i32 = -4;
/// The finest scale OTLP defines; anything above is malformed (and would overflow the merge).
const MAX_OTLP_SCALE: i32 = 20;
/// OpenMetrics' limit on an exemplar's label runes.
const MAX_EXEMPLAR_RUNES: usize = 128;
/// Zero bucket width when the point leaves it unset (the OTLP default, and Prometheus').
const DEFAULT_ZERO_THRESHOLD: f64 = 1e-128;
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

/// A small label set with Prometheus' merge rules. Few labels per series, so a vector beats a
/// map.
#[derive(Clone, Default)]
struct Labels<'a> {
    v: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Labels<'a> {
    /// Sets `name`, replacing an earlier value.
    fn set(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self.v.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.v.push((name, value)),
        }
    }
    /// Sets `name` unless present.
    fn set_default(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        if !self.v.iter().any(|(n, _)| *n == name) {
            self.v.push((name, value));
        }
    }
    /// Adds an attribute; two attributes that sanitise to the same name keep both values,
    /// joined with `;` in key order (Prometheus' rule).
    fn merge(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self.v.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => {
                let mut joined = slot.1.to_string();
                joined.push(';');
                joined.push_str(&value);
                slot.1 = Cow::Owned(joined);
            }
            None => self.v.push((name, value)),
        }
    }
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.v.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }
    fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

/// Attributes in key order, so that collisions join deterministically.
fn sorted(attrs: &[KeyValue]) -> Vec<&KeyValue> {
    let mut v: Vec<&KeyValue> = attrs.iter().collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

/// Adds `attrs` as labels. More attributes than a series may have labels is refused before
/// any work, which also keeps the merge of colliding names (linear per attribute) bounded.
fn attribute_labels<'a>(
    attrs: &'a [KeyValue],
    naming: Naming,
    max: usize,
    into: &mut Labels<'a>,
) -> Result<(), DecodeError> {
    if attrs.len() > max {
        return Err(DecodeError::TooManyAttributes {
            count: attrs.len(),
            limit: max,
        });
    }
    for kv in sorted(attrs) {
        let name = label_name(&kv.key, naming);
        if name.is_empty() {
            continue;
        }
        let value = kv.value.as_ref().map_or(Cow::Borrowed(""), value_string);
        into.merge(name, value);
    }
    Ok(())
}

struct ResourceLabels<'a> {
    /// `job`, `instance` and promoted attributes.
    labels: Labels<'a>,
    /// `target_info` labels: `job`, `instance` and every other resource attribute.
    info: Labels<'a>,
}

const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

impl<'a> ResourceLabels<'a> {
    fn new(
        attrs: &'a [KeyValue],
        options: &'a TranslateOptions,
        max_attrs: usize,
    ) -> Result<Self, DecodeError> {
        if attrs.len() > max_attrs {
            return Err(DecodeError::TooManyAttributes {
                count: attrs.len(),
                limit: max_attrs,
            });
        }
        let mut job_instance = Labels::default();
        if let Some(name) = find(attrs, SERVICE_NAME) {
            let name = value_string(name);
            let job = match find(attrs, SERVICE_NAMESPACE).map(value_string) {
                Some(ns) if !ns.is_empty() => Cow::Owned(format!("{ns}/{name}")),
                _ => name,
            };
            job_instance.set("job".into(), job);
        }
        if let Some(id) = find(attrs, SERVICE_INSTANCE_ID) {
            job_instance.set("instance".into(), value_string(id));
        }
        let mut others = Labels::default();
        for kv in sorted(attrs) {
            if matches!(
                kv.key.as_str(),
                SERVICE_NAME | SERVICE_NAMESPACE | SERVICE_INSTANCE_ID
            ) {
                continue;
            }
            let name = label_name(&kv.key, options.naming);
            if name.is_empty() {
                continue;
            }
            others.merge(
                name,
                kv.value.as_ref().map_or(Cow::Borrowed(""), value_string),
            );
        }
        let mut labels = Labels::default();
        for key in &options.promote_resource_attributes {
            let name = label_name(key, options.naming);
            if let (Some(v), false) = (find(attrs, key), name.is_empty()) {
                labels.merge(name, value_string(v));
            }
        }
        let mut info = Labels::default();
        // Without job or instance a `target_info` could not be joined to anything.
        if !others.is_empty() && !job_instance.is_empty() {
            info = others;
            for (n, v) in job_instance.v.iter() {
                info.set(n.clone(), v.clone());
            }
        }
        for (n, v) in job_instance.v {
            labels.set(n, v);
        }
        Ok(ResourceLabels { labels, info })
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// An attribute value as a label value: strings as they are, other scalars in their usual
/// text form, arrays and maps as JSON (as Prometheus does).
fn value_string(v: &AnyValue) -> Cow<'_, str> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        Some(any_value::Value::BoolValue(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => Cow::Owned(i.to_string()),
        Some(any_value::Value::DoubleValue(d)) => Cow::Owned(format_float(*d)),
        Some(any_value::Value::BytesValue(b)) => {
            use base64::Engine;
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) => {
            let mut s = String::new();
            write_json(v, &mut s);
            Cow::Owned(s)
        }
        None => Cow::Borrowed(""),
    }
}

fn write_json(v: &AnyValue, out: &mut String) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => {
            out.push_str(&serde_json::Value::from(s.as_str()).to_string())
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, item) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(item.key.as_str()).to_string());
                out.push(':');
                match &item.value {
                    Some(v) => write_json(v, out),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
        Some(any_value::Value::DoubleValue(d)) if !d.is_finite() => {
            out.push_str(&serde_json::Value::from(format_float(*d)).to_string())
        }
        None => out.push_str("null"),
        Some(_) => out.push_str(&value_string(v)),
    }
}

/// Floats as Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which Prometheus uses for `le` and
/// `quantile`: shortest round-trip digits, no exponent; infinities as `+Inf`/`-Inf`.
fn format_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}

/// A label name per the naming mode, with Prometheus' default sanitisation: every character
/// outside `[a-zA-Z0-9_]` becomes `_` (runs are kept), a leading digit gets a `key_` prefix and
/// a single leading `_` a `key` prefix; `__`-prefixed (reserved) names are kept. A name that
/// would be only underscores is dropped (empty result).
fn label_name(key: &str, naming: Naming) -> Cow<'_, str> {
    if naming == Naming::NoTranslation || key.is_empty() {
        return Cow::Borrowed(key);
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bytes = key.as_bytes();
    let starts_digit = bytes[0].is_ascii_digit();
    let single_underscore = bytes[0] == b'_' && bytes.get(1) != Some(&b'_');
    let name: Cow<'_, str> = if key.chars().all(valid) && !starts_digit && !single_underscore {
        Cow::Borrowed(key)
    } else {
        let mut s = String::with_capacity(key.len() + 4);
        if starts_digit {
            s.push_str("key_");
        } else if single_underscore {
            s.push_str("key");
        }
        s.extend(key.chars().map(|c| if valid(c) { c } else { '_' }));
        Cow::Owned(s)
    };
    if name.bytes().all(|b| b == b'_') {
        return Cow::Borrowed("");
    }
    name
}

/// What kind of Prometheus metric a name is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameKind {
    Counter,
    Gauge,
    Other,
}

/// Prometheus' metric name with unit and type suffixes (`otlptranslator`'s rules).
fn metric_name(name: &str, unit: &str, kind: NameKind, naming: Naming) -> String {
    if naming == Naming::NoTranslation {
        return name.to_string();
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == ':';
    let mut tokens: Vec<String> = name
        .split(|c: char| !is_name_char(c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (unit.trim(), None),
    };
    let braces = |u: &str| u.contains('{') || u.contains('}');
    let mut main = if main.is_empty() || braces(main) {
        String::new()
    } else {
        clean_unit(lookup(UNITS, main))
    };
    let mut per = match per {
        Some(p) if !p.is_empty() && !braces(p) => {
            clean_unit(&format!("per_{}", lookup(PER_UNITS, p)))
        }
        _ => String::new(),
    };
    if tokens.contains(&main) {
        main.clear();
    }
    if per == "per_" {
        per.clear();
    } else {
        while per.ends_with('_') {
            per.pop();
        }
        if tokens.contains(&per) {
            per.clear();
        }
    }
    if !per.is_empty() {
        while main.ends_with('_') {
            main.pop();
        }
    }
    tokens.extend([main, per].into_iter().filter(|t| !t.is_empty()));
    if kind == NameKind::Counter {
        tokens.retain(|t| t != "total");
        tokens.push("total".to_string());
    }
    if kind == NameKind::Gauge && unit == "1" {
        tokens.retain(|t| t != "ratio");
        tokens.push("ratio".to_string());
    }
    let mut out = tokens.join("_");
    if out.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.insert(0, '_');
    }
    out
}

fn lookup<'a>(table: &[(&str, &'a str)], unit: &'a str) -> &'a str {
    table
        .iter()
        .find(|(k, _)| *k == unit)
        .map_or(unit, |(_, v)| v)
}

/// A unit as one name token: characters outside `[a-zA-Z0-9:]` become `_`, runs collapse, one
/// leading `_` goes.
fn clean_unit(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    for c in u.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    if out.starts_with('_') {
        out.remove(0);
    }
    out
}

/// UCUM units Prometheus spells out (`otlptranslator`'s unit map, its `tibibytes` included).
const UNITS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("TiBy", "tibibytes"),
    ("KBy", "kilobytes"),
    ("MBy", "megabytes"),
    ("GBy", "gigabytes"),
    ("TBy", "terabytes"),
    ("m", "meters"),
    ("V", "volts"),
    ("A", "amperes"),
    ("J", "joules"),
    ("W", "watts"),
    ("g", "grams"),
    ("Cel", "celsius"),
    ("Hz", "hertz"),
    ("1", ""),
    ("%", "percent"),
];

/// Units after `/`.
const PER_UNITS: &[(&str, &str)] = &[
    ("s", "second"),
    ("m", "minute"),
    ("h", "hour"),
    ("d", "day"),
    ("w", "week"),
    ("mo", "month"),
    ("y", "year"),
];

/// Translation of one metric into the builder.
struct MetricCx<'r, 'a> {
    b: &'r mut BatchBuilder,
    out: &'r mut Translation,
    base: &'r Labels<'a>,
    naming: Naming,
    /// Most attributes a point or exemplar may carry.
    max_attrs: usize,
    metric: &'a proto::Metric,
    points: u64,
    latest_ms: &'r mut Option<i64>,
}

/// Why a point is refused.
type Refusal = String;

impl<'r, 'a> MetricCx<'r, 'a> {
    fn metric(&mut self) -> Result<(), DecodeError> {
        let m = self.metric;
        let Some(data) = &m.data else {
            self.out
                .reject(0, || format!("metric {:?} has no data", m.name));
            return Ok(());
        };
        if metric_name(&m.name, "", NameKind::Other, self.naming).is_empty() {
            let points = point_count(data) as u64;
            self.out.reject(points, || {
                format!(
                    "metric name {:?} has no characters a metric name can use",
                    m.name
                )
            });
            return Ok(());
        }
        let cumulative = AggregationTemporality::Cumulative as i32;
        match data {
            metric::Data::Gauge(g) => {
                let name = metric_name(&m.name, &m.unit, NameKind::Gauge, self.naming);
                self.metadata(MetricType::Gauge, &name)?;
                for p in &g.data_points {
                    self.number_point(&name, p, false)?;
                }
            }
            metric::Data::Sum(s) => {
                if s.aggregation_temporality != cumulative {
                    return self.refuse_temporality(s.data_points.len(), s.aggregation_temporality);
                }
                let (kind, ty) = if s.is_monotonic {
                    (NameKind::Counter, MetricType::Counter)
                } else {
                    (NameKind::Other, MetricType::Gauge)
                };
                let name = metric_name(&m.name, &m.unit, kind, self.naming);
                self.metadata(ty, &name)?;
                for p in &s.data_points {
                    self.number_point(&name, p, true)?;
                }
            }
            metric::Data::Histogram(h) => {
                if h.aggregation_temporality != cumulative {
                    return self.refuse_temporality(h.data_points.len(), h.aggregation_temporality);
                }
                let name = metric_name(&m.name, &m.unit, NameKind::Other, self.naming);
                self.metadata(MetricType::Histogram, &name)?;
                for p in &h.data_points {
                    self.histogram_point(&name, p)?;
                }
            }
            metric::Data::ExponentialHistogram(h) => {
                if h.aggregation_temporality != cumulative {
                    return self.refuse_temporality(h.data_points.len(), h.aggregation_temporality);
                }
                let name = metric_name(&m.name, &m.unit, NameKind::Other, self.naming);
                self.metadata(MetricType::Histogram, &name)?;
                for p in &h.data_points {
                    self.exponential_point(&name, p)?;
                }
            }
            metric::Data::Summary(s) => {
                let name = metric_name(&m.name, &m.unit, NameKind::Other, self.naming);
                self.metadata(MetricType::Summary, &name)?;
                for p in &s.data_points {
                    self.summary_point(&name, p)?;
                }
            }
        }
        Ok(())
    }

    fn metadata(&mut self, ty: MetricType, family: &str) -> Result<(), DecodeError> {
        self.b
            .metadata(ty, family, &self.metric.description, &self.metric.unit)
    }

    fn refuse_temporality(&mut self, points: usize, temporality: i32) -> Result<(), DecodeError> {
        let name = &self.metric.name;
        self.out.reject(points as u64, || {
            if temporality == AggregationTemporality::Delta as i32 {
                format!(
                    "metric {name:?} has delta temporality, which the Prometheus data model \
                     cannot store; configure the exporter for cumulative temporality"
                )
            } else {
                format!("metric {name:?} has no aggregation temporality")
            }
        });
        Ok(())
    }

    fn refuse(&mut self, why: Refusal) {
        self.out.reject(1, || why);
    }

    /// Records an accepted point's time for `target_info`.
    fn accepted(&mut self, ts: i64) {
        self.points += 1;
        *self.latest_ms = Some(self.latest_ms.map_or(ts, |t| t.max(ts)));
    }

    fn time(&mut self, time_unix_nano: u64) -> Option<i64> {
        if time_unix_nano == 0 {
            let name = &self.metric.name;
            self.out.reject(1, || {
                format!("metric {name:?}: data point without time_unix_nano")
            });
            return None;
        }
        Some((time_unix_nano / 1_000_000) as i64)
    }

    /// A point's labels: its attributes, then the resource and scope labels (`job` and
    /// `instance` override attributes; promoted ones do not). Built once per point and shared
    /// by every series the point becomes (a histogram point is several).
    fn point_labels(&self, attrs: &'r [KeyValue]) -> Result<Labels<'r>, DecodeError> {
        let base: &'r Labels<'a> = self.base;
        let mut labels = Labels::default();
        attribute_labels(attrs, self.naming, self.max_attrs, &mut labels)?;
        for (n, v) in base.v.iter() {
            if n == "job" || n == "instance" {
                labels.set(Cow::Borrowed(n), Cow::Borrowed(v));
            } else {
                labels.set_default(Cow::Borrowed(n), Cow::Borrowed(v));
            }
        }
        Ok(labels)
    }

    /// Writes one series' labels: the point's, then `extra` and the name, which override a
    /// point label of the same name.
    fn open_series(
        &mut self,
        labels: &Labels<'_>,
        name: &str,
        extra: Option<(&str, &str)>,
    ) -> Result<(), DecodeError> {
        let extra_name = extra.map(|(n, _)| n);
        for (n, v) in labels.iter() {
            if n != crate::METRIC_NAME_LABEL && Some(n) != extra_name {
                self.b.label(n, v)?;
            }
        }
        if let Some((n, v)) = extra {
            self.b.label(n, v)?;
        }
        self.b.label(crate::METRIC_NAME_LABEL, name)
    }

    /// One series with one float sample and nothing else.
    fn float_series(
        &mut self,
        labels: &Labels<'_>,
        name: &str,
        extra: Option<(&str, &str)>,
        value: f64,
        ts: i64,
    ) -> Result<(), DecodeError> {
        self.open_series(labels, name, extra)?;
        self.b.sample(value, ts)?;
        self.b.finish_series()
    }

    fn exemplars(&mut self, exemplars: &[proto::Exemplar]) -> Result<(), DecodeError> {
        for e in exemplars {
            let value = match e.value {
                Some(exemplar::Value::AsDouble(v)) => v,
                Some(exemplar::Value::AsInt(v)) => v as f64,
                None => continue,
            };
            self.exemplar(e, value)?;
        }
        Ok(())
    }

    /// An exemplar's labels: `trace_id` and `span_id` in lower-case hex (when not all zero),
    /// then its filtered attributes, unless all of them together pass OpenMetrics' 128-rune
    /// budget, in which case only the ids are kept.
    fn exemplar(&mut self, e: &proto::Exemplar, value: f64) -> Result<(), DecodeError> {
        let id = |b: &[u8]| {
            if b.iter().all(|x| *x == 0) {
                String::new()
            } else {
                hex(b)
            }
        };
        let (trace, span) = (id(&e.trace_id), id(&e.span_id));
        let mut labels: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
        if !trace.is_empty() {
            labels.push(("trace_id".into(), Cow::Borrowed(trace.as_str())));
        }
        if !span.is_empty() {
            labels.push(("span_id".into(), Cow::Borrowed(span.as_str())));
        }
        let ids = labels.len();
        if e.filtered_attributes.len() > self.max_attrs {
            return Err(DecodeError::TooManyAttributes {
                count: e.filtered_attributes.len(),
                limit: self.max_attrs,
            });
        }
        for kv in &e.filtered_attributes {
            // Sanitised like every label name (Prometheus keeps them raw, but a raw name would
            // make the stored series unreadable as remote-write).
            let name = label_name(&kv.key, self.naming);
            if name.is_empty() || labels.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let v = kv.value.as_ref().map_or(Cow::Borrowed(""), value_string);
            labels.push((name, v));
        }
        let runes: usize = labels
            .iter()
            .map(|(n, v)| n.chars().count() + v.chars().count())
            .sum();
        if runes > MAX_EXEMPLAR_RUNES {
            labels.truncate(ids);
        }
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        let ts = (e.time_unix_nano / 1_000_000) as i64;
        self.b.exemplar(
            labels.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
            value,
            ts,
        )
    }

    /// A gauge or sum point; Prometheus keeps exemplars of sums only.
    fn number_point(
        &mut self,
        name: &str,
        p: &'a proto::NumberDataPoint,
        with_exemplars: bool,
    ) -> Result<(), DecodeError> {
        let Some(ts) = self.time(p.time_unix_nano) else {
            return Ok(());
        };
        let value = if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
            f64::from_bits(STALE_NAN)
        } else {
            match p.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => {
                    self.refuse(format!("metric {:?}: data point without a value", name));
                    return Ok(());
                }
            }
        };
        let labels = self.point_labels(&p.attributes)?;
        self.open_series(&labels, name, None)?;
        self.b.sample(value, ts)?;
        if with_exemplars {
            self.exemplars(&p.exemplars)?;
        }
        self.b.finish_series()?;
        self.accepted(ts);
        Ok(())
    }

    fn histogram_point(
        &mut self,
        name: &str,
        p: &'a proto::HistogramDataPoint,
    ) -> Result<(), DecodeError> {
        let Some(ts) = self.time(p.time_unix_nano) else {
            return Ok(());
        };
        let bounds = &p.explicit_bounds;
        if !p.bucket_counts.is_empty() && p.bucket_counts.len() != bounds.len() + 1 {
            self.refuse(format!(
                "metric {name:?}: {} bucket counts for {} explicit bounds (need bounds + 1)",
                p.bucket_counts.len(),
                bounds.len()
            ));
            return Ok(());
        }
        if bounds.iter().any(|b| b.is_nan()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
            self.refuse(format!(
                "metric {name:?}: explicit bounds are not strictly increasing numbers"
            ));
            return Ok(());
        }
        let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
        let v = |x: f64| if stale { f64::from_bits(STALE_NAN) } else { x };
        let labels = self.point_labels(&p.attributes)?;
        let bucket = format!("{name}_bucket");
        let mut cumulative: u64 = 0;
        // Each exemplar goes to the first bucket whose bound holds its value.
        let mut exemplars: Vec<(usize, &proto::Exemplar, f64)> = p
            .exemplars
            .iter()
            .filter_map(|e| {
                let value = match e.value? {
                    exemplar::Value::AsDouble(v) => v,
                    exemplar::Value::AsInt(v) => v as f64,
                };
                let i = bounds.partition_point(|b| *b < value);
                Some((i, e, value))
            })
            .collect();
        exemplars.sort_by_key(|(i, _, _)| *i);
        let mut next_exemplar = 0usize;
        let with_buckets = !p.bucket_counts.is_empty();
        if with_buckets {
            for i in 0..=bounds.len() {
                cumulative = cumulative.saturating_add(p.bucket_counts[i]);
                let (le, count) = match bounds.get(i) {
                    Some(b) => (format_float(*b), cumulative),
                    None => ("+Inf".to_string(), p.count),
                };
                self.open_series(&labels, &bucket, Some(("le", &le)))?;
                self.b.sample(v(count as f64), ts)?;
                while let Some((_, e, value)) = exemplars.get(next_exemplar).filter(|x| x.0 == i) {
                    self.exemplar(e, *value)?;
                    next_exemplar += 1;
                }
                self.b.finish_series()?;
            }
        }
        if let Some(sum) = p.sum {
            self.float_series(&labels, &format!("{name}_sum"), None, v(sum), ts)?;
        }
        self.float_series(
            &labels,
            &format!("{name}_count"),
            None,
            v(p.count as f64),
            ts,
        )?;
        self.accepted(ts);
        Ok(())
    }

    fn exponential_point(
        &mut self,
        name: &str,
        p: &'a proto::ExponentialHistogramDataPoint,
    ) -> Result<(), DecodeError> {
        let Some(ts) = self.time(p.time_unix_nano) else {
            return Ok(());
        };
        if p.scale > MAX_OTLP_SCALE {
            self.refuse(format!(
                "metric {name:?}: exponential histogram scale {} is above {MAX_OTLP_SCALE}, the \
                 finest OTLP defines",
                p.scale
            ));
            return Ok(());
        }
        if p.scale < MIN_SCHEMA {
            self.refuse(format!(
                "metric {name:?}: exponential histogram scale {} is below {MIN_SCHEMA}, the \
                 coarsest native histogram schema",
                p.scale
            ));
            return Ok(());
        }
        let scale_down = (p.scale - MAX_SCHEMA).max(0) as u32;
        let (positive_spans, positive_deltas) = buckets(p.positive.as_ref(), scale_down);
        let (negative_spans, negative_deltas) = buckets(p.negative.as_ref(), scale_down);
        let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
        let h = Histogram {
            count: HistogramCount::Int(p.count),
            sum: if stale {
                f64::from_bits(STALE_NAN)
            } else {
                p.sum.unwrap_or(0.0)
            },
            schema: p.scale - scale_down as i32,
            zero_threshold: if p.zero_threshold > 0.0 {
                p.zero_threshold
            } else {
                DEFAULT_ZERO_THRESHOLD
            },
            zero_count: HistogramCount::Int(p.zero_count),
            negative_spans,
            negative_deltas,
            negative_counts: Vec::new(),
            positive_spans,
            positive_deltas,
            positive_counts: Vec::new(),
            reset_hint: ResetHint::Unknown,
            timestamp_ms: ts,
            custom_values: Vec::new(),
        };
        let labels = self.point_labels(&p.attributes)?;
        self.open_series(&labels, name, None)?;
        self.b.histogram(h)?;
        self.exemplars(&p.exemplars)?;
        self.b.finish_series()?;
        self.accepted(ts);
        Ok(())
    }

    fn summary_point(
        &mut self,
        name: &str,
        p: &'a proto::SummaryDataPoint,
    ) -> Result<(), DecodeError> {
        let Some(ts) = self.time(p.time_unix_nano) else {
            return Ok(());
        };
        let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
        let v = |x: f64| if stale { f64::from_bits(STALE_NAN) } else { x };
        let labels = self.point_labels(&p.attributes)?;
        for q in &p.quantile_values {
            let quantile = format_float(q.quantile);
            self.float_series(&labels, name, Some(("quantile", &quantile)), v(q.value), ts)?;
        }
        self.float_series(&labels, &format!("{name}_sum"), None, v(p.sum), ts)?;
        self.float_series(
            &labels,
            &format!("{name}_count"),
            None,
            v(p.count as f64),
            ts,
        )?;
        self.accepted(ts);
        Ok(())
    }
}

/// OTLP exponential buckets into one native histogram span with delta-encoded counts.
///
/// OTLP bucket `i` covers `(base^i, base^(i+1)]`, Prometheus bucket `i` covers
/// `(base^(i-1), base^i]`, so indices shift by one. Scales finer than the finest schema are
/// merged: at `scale_down` steps coarser, OTLP bucket `i` falls into bucket `i >> scale_down`
/// (an arithmetic shift, so negative indices floor as they must).
fn buckets(b: Option<&proto::Buckets>, scale_down: u32) -> (Vec<BucketSpan>, Vec<i64>) {
    let Some(b) = b.filter(|b| !b.bucket_counts.is_empty()) else {
        return (Vec::new(), Vec::new());
    };
    let mut counts: Vec<u64> = Vec::with_capacity(b.bucket_counts.len());
    let mut first: Option<i64> = None;
    let mut last: i64 = 0;
    for (k, c) in b.bucket_counts.iter().enumerate() {
        let idx = ((b.offset as i64 + k as i64) >> scale_down) + 1;
        match first {
            None => {
                first = Some(idx);
                counts.push(*c);
            }
            Some(_) if idx == last => {
                if let Some(x) = counts.last_mut() {
                    *x = x.saturating_add(*c);
                }
            }
            Some(_) => counts.push(*c),
        }
        last = idx;
    }
    let offset = first.unwrap_or(0).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    let spans = vec![BucketSpan {
        offset,
        length: counts.len() as u32,
    }];
    let mut prev = 0i64;
    let deltas = counts
        .iter()
        .map(|c| {
            let c = *c as i64;
            let d = c.wrapping_sub(prev);
            prev = c;
            d
        })
        .collect();
    (spans, deltas)
}

fn point_count(data: &metric::Data) -> usize {
    match data {
        metric::Data::Gauge(g) => g.data_points.len(),
        metric::Data::Sum(s) => s.data_points.len(),
        metric::Data::Histogram(h) => h.data_points.len(),
        metric::Data::ExponentialHistogram(h) => h.data_points.len(),
        metric::Data::Summary(s) => s.data_points.len(),
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
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

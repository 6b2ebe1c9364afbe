//! Data points: numbers, histograms (classic and native), summaries and exemplars, each
//! into the batch or refused with its reason.

use super::*;

/// Prometheus' stale marker: a NaN with this exact bit pattern.
pub(super) const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
pub(super) const FLAG_NO_RECORDED_VALUE: u32 = 1;
/// Native histogram schemas run from -4 to 8; finer OTLP scales are merged down to 8.
pub(super) const MAX_SCHEMA: i32 = 8;
pub(super) const MIN_SCHEMA: i32 = -4;
/// The finest scale OTLP defines; anything above is malformed (and would overflow the merge).
pub(super) const MAX_OTLP_SCALE: i32 = 20;
/// OpenMetrics' limit on an exemplar's label runes.
pub(super) const MAX_EXEMPLAR_RUNES: usize = 128;
/// Zero bucket width when the point leaves it unset (the OTLP default, and Prometheus').
pub(super) const DEFAULT_ZERO_THRESHOLD: f64 = 1e-128;

/// Translation of one metric into the builder.
pub(super) struct MetricCx<'r, 'a> {
    pub(super) b: &'r mut BatchBuilder,
    pub(super) out: &'r mut Translation,
    pub(super) base: &'r Labels<'a>,
    pub(super) naming: Naming,
    /// Most attributes a point or exemplar may carry.
    pub(super) max_attrs: usize,
    pub(super) metric: &'a proto::Metric,
    pub(super) points: u64,
    pub(super) latest_ms: &'r mut Option<i64>,
}

/// Why a point is refused.
pub(super) type Refusal = String;

impl<'r, 'a> MetricCx<'r, 'a> {
    pub(super) fn metric(&mut self) -> Result<(), DecodeError> {
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

    pub(super) fn metadata(&mut self, ty: MetricType, family: &str) -> Result<(), DecodeError> {
        self.b
            .metadata(ty, family, &self.metric.description, &self.metric.unit)
    }

    pub(super) fn refuse_temporality(
        &mut self,
        points: usize,
        temporality: i32,
    ) -> Result<(), DecodeError> {
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

    pub(super) fn refuse(&mut self, why: Refusal) {
        self.out.reject(1, || why);
    }

    /// Records an accepted point's time for `target_info`.
    pub(super) fn accepted(&mut self, ts: i64) {
        self.points += 1;
        *self.latest_ms = Some(self.latest_ms.map_or(ts, |t| t.max(ts)));
    }

    pub(super) fn time(&mut self, time_unix_nano: u64) -> Option<i64> {
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
    pub(super) fn point_labels(&self, attrs: &'r [KeyValue]) -> Result<Labels<'r>, DecodeError> {
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
    pub(super) fn open_series(
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
    pub(super) fn float_series(
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

    pub(super) fn exemplars(&mut self, exemplars: &[proto::Exemplar]) -> Result<(), DecodeError> {
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
    pub(super) fn exemplar(&mut self, e: &proto::Exemplar, value: f64) -> Result<(), DecodeError> {
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
    pub(super) fn number_point(
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

    pub(super) fn histogram_point(
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

    pub(super) fn exponential_point(
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

    pub(super) fn summary_point(
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
pub(super) fn buckets(b: Option<&proto::Buckets>, scale_down: u32) -> (Vec<BucketSpan>, Vec<i64>) {
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

pub(super) fn point_count(data: &metric::Data) -> usize {
    match data {
        metric::Data::Gauge(g) => g.data_points.len(),
        metric::Data::Sum(s) => s.data_points.len(),
        metric::Data::Histogram(h) => h.data_points.len(),
        metric::Data::ExponentialHistogram(h) => h.data_points.len(),
        metric::Data::Summary(s) => s.data_points.len(),
    }
}

pub(super) fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

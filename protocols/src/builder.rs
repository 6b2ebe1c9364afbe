//! Building a [`Batch`] from owned strings, for formats whose wire layout does not match the
//! model's (OTLP: names are derived, labels come from several attribute sets).
//!
//! Strings are appended to one growing buffer that becomes the batch's `Bytes`, so the result
//! is indistinguishable from a decoded remote-write batch: sinks, residency and encoders take
//! it unchanged. Every limit of [`DecodeLimits`] that applies to a decoded request applies to a
//! built one too.

use crate::error::Element;
use crate::limits::too_many;
use crate::model::{ExemplarEntry, Label, MetadataEntry, SeriesEntry, Span};
use crate::text::{str_at, StrRange};
use crate::{Batch, DecodeError, DecodeLimits, Histogram, MetricType, Sample};

/// What a builder holds, per limited kind. Translation builds one batch per tenant and shares
/// the request's limits among them by telling each what the others hold
/// ([`BatchBuilder::share_limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) series: usize,
    pub(crate) metadata: usize,
    pub(crate) samples: usize,
    pub(crate) histograms: usize,
    pub(crate) exemplars: usize,
    pub(crate) bytes: usize,
}

impl Usage {
    /// `self + other - minus`, per kind.
    pub(crate) fn plus_minus(self, other: Usage, minus: Usage) -> Usage {
        let f = |a: usize, b: usize, c: usize| a.saturating_add(b).saturating_sub(c);
        Usage {
            series: f(self.series, other.series, minus.series),
            metadata: f(self.metadata, other.metadata, minus.metadata),
            samples: f(self.samples, other.samples, minus.samples),
            histograms: f(self.histograms, other.histograms, minus.histograms),
            exemplars: f(self.exemplars, other.exemplars, minus.exemplars),
            bytes: f(self.bytes, other.bytes, minus.bytes),
        }
    }
}

/// Accumulates series into a [`Batch`]. Call [`BatchBuilder::label`] for each label of a
/// series, then exactly one of [`BatchBuilder::finish_series`] (after adding samples,
/// histograms and exemplars) or [`BatchBuilder::abandon_series`].
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    batch: Batch,
    /// The request's limits, as errors name them.
    limits: DecodeLimits,
    /// What the other batches of the same request already hold (see [`Usage`]); this
    /// builder may hold the limits less that.
    elsewhere: Usage,
    /// First label of the open series.
    open_labels: usize,
    open_samples: usize,
    open_histograms: usize,
    open_exemplars: usize,
}

impl BatchBuilder {
    /// An empty builder enforcing `limits`.
    pub fn new(limits: DecodeLimits) -> Self {
        Self {
            // Empty, not pre-sized: a request may open a builder per tenant, and an allocation
            // per builder up front would be memory a body of tiny resources could multiply.
            buf: Vec::new(),
            batch: Batch::default(),
            limits,
            elsewhere: Usage::default(),
            open_labels: 0,
            open_samples: 0,
            open_histograms: 0,
            open_exemplars: 0,
        }
    }

    fn push_str(&mut self, s: &str) -> StrRange {
        let start = self.buf.len();
        self.buf.extend_from_slice(s.as_bytes());
        StrRange::validate(&self.buf, start, self.buf.len())
            .expect("a &str appended to the buffer is UTF-8")
    }

    /// Adds a label to the open series. Labels with an empty value are skipped, as Prometheus
    /// treats an empty value as an absent label.
    pub fn label(&mut self, name: &str, value: &str) -> Result<(), DecodeError> {
        if value.is_empty() {
            return Ok(());
        }
        self.check_label(self.batch.labels.len() - self.open_labels, name, value)?;
        let name = self.push_str(name);
        let value = self.push_str(value);
        self.batch.labels.push(Label { name, value });
        Ok(())
    }

    /// Adds a float sample to the open series; refused past `max_samples`.
    pub fn sample(&mut self, value: f64, timestamp_ms: i64) -> Result<(), DecodeError> {
        let limit = self.limits.max_samples;
        if self.batch.samples.len() >= limit.saturating_sub(self.elsewhere.samples) {
            return Err(too_many(Element::Samples, limit));
        }
        self.batch.samples.push(Sample {
            value,
            timestamp_ms,
        });
        Ok(())
    }

    /// Adds a native histogram sample to the open series; refused past `max_histograms`.
    /// Its buckets are not counted here: they come from a request whose buckets were
    /// counted when it was decoded.
    pub fn histogram(&mut self, histogram: Histogram) -> Result<(), DecodeError> {
        let limit = self.limits.max_histograms;
        if self.batch.histograms.len() >= limit.saturating_sub(self.elsewhere.histograms) {
            return Err(too_many(Element::Histograms, limit));
        }
        self.batch.histograms.push(histogram);
        Ok(())
    }

    /// Adds an exemplar with its own labels (sorted here) to the open series.
    pub fn exemplar<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        value: f64,
        timestamp_ms: i64,
    ) -> Result<(), DecodeError> {
        let limit = self.limits.max_exemplars;
        if self.batch.exemplars.len() >= limit.saturating_sub(self.elsewhere.exemplars) {
            return Err(too_many(Element::Exemplars, limit));
        }
        let start = self.batch.exemplar_labels.len();
        for (name, value) in labels {
            if value.is_empty() {
                continue;
            }
            self.check_label(self.batch.exemplar_labels.len() - start, name, value)?;
            let name = self.push_str(name);
            let value = self.push_str(value);
            self.batch.exemplar_labels.push(Label { name, value });
        }
        let end = self.batch.exemplar_labels.len();
        let buf = &self.buf;
        self.batch.exemplar_labels[start..end]
            .sort_unstable_by(|a, b| str_at(buf, a.name).cmp(str_at(buf, b.name)));
        self.batch.exemplars.push(ExemplarEntry {
            labels: Span::at(start, end),
            value,
            timestamp_ms,
        });
        Ok(())
    }

    /// Closes the open series: sorts its labels, refuses duplicates and a missing `__name__`,
    /// and records it. A series with no samples, histograms or exemplars is dropped.
    pub fn finish_series(&mut self) -> Result<(), DecodeError> {
        let series = self.batch.series.len();
        let labels = self.open_labels..self.batch.labels.len();
        let samples = Span::at(self.open_samples, self.batch.samples.len());
        let histograms = Span::at(self.open_histograms, self.batch.histograms.len());
        let exemplars = Span::at(self.open_exemplars, self.batch.exemplars.len());
        if samples.start == samples.end && histograms.start == histograms.end {
            self.abandon_series();
            return Ok(());
        }
        if series >= self.limits.max_series.saturating_sub(self.elsewhere.series) {
            return Err(DecodeError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        let buf = &self.buf;
        let own = &mut self.batch.labels[labels.clone()];
        own.sort_unstable_by(|a, b| str_at(buf, a.name).cmp(str_at(buf, b.name)));
        if let Some(w) = own
            .windows(2)
            .find(|w| str_at(buf, w[0].name) == str_at(buf, w[1].name))
        {
            return Err(DecodeError::DuplicateLabelName {
                series,
                name: str_at(buf, w[0].name).to_string(),
            });
        }
        if !own
            .iter()
            .any(|l| str_at(buf, l.name) == crate::METRIC_NAME_LABEL)
        {
            return Err(DecodeError::MissingMetricName { series });
        }
        self.batch.series.push(SeriesEntry {
            labels: Span::at(labels.start, labels.end),
            samples,
            histograms,
            exemplars,
            raw: Span::default(),
            spliceable: false,
        });
        self.reset_open();
        Ok(())
    }

    /// Discards the open series and everything added to it.
    pub fn abandon_series(&mut self) {
        self.batch.labels.truncate(self.open_labels);
        self.batch.samples.truncate(self.open_samples);
        self.batch.histograms.truncate(self.open_histograms);
        let first_exemplar_label = self
            .batch
            .exemplars
            .get(self.open_exemplars)
            .map(|e| e.labels.start as usize);
        if let Some(first) = first_exemplar_label {
            self.batch.exemplar_labels.truncate(first);
        }
        self.batch.exemplars.truncate(self.open_exemplars);
        self.reset_open();
    }

    fn reset_open(&mut self) {
        self.open_labels = self.batch.labels.len();
        self.open_samples = self.batch.samples.len();
        self.open_histograms = self.batch.histograms.len();
        self.open_exemplars = self.batch.exemplars.len();
    }

    /// Adds a metadata entry (type, help and unit of a metric family).
    pub fn metadata(
        &mut self,
        metric_type: MetricType,
        family: &str,
        help: &str,
        unit: &str,
    ) -> Result<(), DecodeError> {
        if self.batch.metadata.len()
            >= self
                .limits
                .max_series
                .saturating_sub(self.elsewhere.metadata)
        {
            return Err(DecodeError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        self.check_buffer()?;
        let family = self.push_str(family);
        let help = self.push_str(help);
        let unit = self.push_str(unit);
        self.batch.metadata.push(MetadataEntry {
            metric_type,
            family,
            help,
            unit,
        });
        Ok(())
    }

    /// Number of finished series.
    pub fn series_count(&self) -> usize {
        self.batch.series.len()
    }

    /// What this builder holds, per limited kind.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            series: self.batch.series.len(),
            metadata: self.batch.metadata.len(),
            samples: self.batch.samples.len(),
            histograms: self.batch.histograms.len(),
            exemplars: self.batch.exemplars.len(),
            bytes: self.buf.len(),
        }
    }

    /// Tells the builder what the other batches of the same request hold, so that its limits
    /// are what is left of the request's.
    pub(crate) fn share_limits(&mut self, elsewhere: Usage) {
        self.elsewhere = elsewhere;
    }

    /// The limits on one more label (`present` already on the series or exemplar), and room
    /// in the buffer for it.
    fn check_label(&self, present: usize, name: &str, value: &str) -> Result<(), DecodeError> {
        let series = self.batch.series.len();
        if present >= self.limits.max_labels_per_series {
            return Err(DecodeError::TooManyLabels {
                series,
                limit: self.limits.max_labels_per_series,
            });
        }
        if name.len() > self.limits.max_label_name_bytes {
            return Err(DecodeError::LabelNameTooLong {
                series,
                len: name.len(),
                limit: self.limits.max_label_name_bytes,
            });
        }
        if value.len() > self.limits.max_label_value_bytes {
            return Err(DecodeError::LabelValueTooLong {
                series,
                name: name.to_string(),
                len: value.len(),
                limit: self.limits.max_label_value_bytes,
            });
        }
        self.check_buffer()
    }

    /// The built string buffer may not outgrow the decompressed-size limit (byte ranges are
    /// `u32`, and the limit is what a decoded request may hold).
    fn check_buffer(&self) -> Result<(), DecodeError> {
        let limit = self
            .limits
            .max_decompressed_bytes
            .min(u32::MAX as usize / 2);
        let held = self.buf.len().saturating_add(self.elsewhere.bytes);
        if held > limit {
            return Err(DecodeError::DecompressedTooLarge {
                claimed: held as u64,
                limit,
            });
        }
        Ok(())
    }

    /// The finished batch; an open series is discarded.
    pub fn build(mut self) -> Batch {
        self.abandon_series();
        self.batch.buf_capacity = self.buf.capacity();
        self.batch.buf = bytes::Bytes::from(self.buf);
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_series_that_read_back() {
        let mut b = BatchBuilder::new(DecodeLimits::default());
        b.label("zone", "eu").unwrap();
        b.label("__name__", "up").unwrap();
        b.label("empty", "").unwrap();
        b.sample(1.0, 1000).unwrap();
        b.exemplar([("trace_id", "ab")], 1.0, 1000).unwrap();
        b.finish_series().unwrap();
        b.label("__name__", "no_samples").unwrap();
        b.finish_series().unwrap();
        b.metadata(MetricType::Gauge, "up", "help", "").unwrap();
        let batch = b.build();
        assert_eq!(batch.series_count(), 1);
        let s = batch.series_at(0).unwrap();
        let labels: Vec<_> = s.labels().iter().collect();
        assert_eq!(labels, vec![("__name__", "up"), ("zone", "eu")]);
        assert_eq!(s.samples()[0].value, 1.0);
        let ex: Vec<_> = s.exemplars().map(|e| e.labels().get("trace_id")).collect();
        assert_eq!(ex, vec![Some("ab")]);
        assert_eq!(batch.metadata().next().unwrap().family(), "up");
    }

    #[test]
    fn refuses_duplicates_missing_name_and_limits() {
        let mut b = BatchBuilder::new(DecodeLimits::default());
        b.label("__name__", "a").unwrap();
        b.label("x", "1").unwrap();
        b.label("x", "2").unwrap();
        b.sample(1.0, 1).unwrap();
        assert!(matches!(
            b.finish_series(),
            Err(DecodeError::DuplicateLabelName { .. })
        ));
        b.abandon_series();
        b.label("x", "1").unwrap();
        b.sample(1.0, 1).unwrap();
        assert!(matches!(
            b.finish_series(),
            Err(DecodeError::MissingMetricName { .. })
        ));
        b.abandon_series();
        let limits = DecodeLimits {
            max_labels_per_series: 1,
            max_series: 1,
            ..DecodeLimits::default()
        };
        let mut b = BatchBuilder::new(limits);
        b.label("__name__", "a").unwrap();
        assert!(matches!(
            b.label("b", "c"),
            Err(DecodeError::TooManyLabels { .. })
        ));
        b.sample(1.0, 1).unwrap();
        b.finish_series().unwrap();
        b.label("__name__", "b").unwrap();
        b.sample(1.0, 1).unwrap();
        assert!(matches!(
            b.finish_series(),
            Err(DecodeError::TooManySeries { .. })
        ));
    }
}

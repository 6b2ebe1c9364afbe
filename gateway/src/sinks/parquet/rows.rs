//! Rows of one Parquet file under construction, and the schema they follow.

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Float64Builder, MapBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{ArrowError, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use protocols::Histogram;
use residency_rules::{RegionId, TenantId};

/// Fixed bytes a row costs beyond its strings: timestamp, value and histogram columns.
const ROW_OVERHEAD_BYTES: usize = 40;

/// Column builders for one file.
pub(crate) struct Rows {
    timestamps: Vec<i64>,
    metric: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    value: Float64Builder,
    histogram_count: Float64Builder,
    histogram_sum: Float64Builder,
    histogram: BinaryBuilder,
    approx_bytes: usize,
    scratch: Vec<u8>,
}

impl Default for Rows {
    fn default() -> Self {
        Self {
            timestamps: Vec::new(),
            metric: StringBuilder::new(),
            labels: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            value: Float64Builder::new(),
            histogram_count: Float64Builder::new(),
            histogram_sum: Float64Builder::new(),
            histogram: BinaryBuilder::new(),
            approx_bytes: 0,
            scratch: Vec::new(),
        }
    }
}

impl Rows {
    pub(crate) fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// Uncompressed bytes buffered, estimated; drives rotation by size.
    pub(crate) fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    fn push_common(&mut self, ts: i64, metric: &str, labels: &[(Cow<'_, str>, &str)]) -> usize {
        self.timestamps.push(ts);
        self.metric.append_value(metric);
        let mut bytes = ROW_OVERHEAD_BYTES + metric.len();
        for (k, v) in labels {
            self.labels.keys().append_value(k);
            self.labels.values().append_value(v);
            bytes += k.len() + v.len();
        }
        self.labels
            .append(true)
            .expect("keys and values are appended in pairs");
        bytes
    }

    /// Adds a float sample; returns the bytes it added.
    pub(crate) fn push_float(
        &mut self,
        ts: i64,
        metric: &str,
        labels: &[(Cow<'_, str>, &str)],
        value: f64,
    ) -> usize {
        let bytes = self.push_common(ts, metric, labels);
        self.value.append_value(value);
        self.histogram_count.append_null();
        self.histogram_sum.append_null();
        self.histogram.append_null();
        self.approx_bytes += bytes;
        bytes
    }

    /// Adds a native histogram sample; returns the bytes it added.
    pub(crate) fn push_histogram(
        &mut self,
        ts: i64,
        metric: &str,
        labels: &[(Cow<'_, str>, &str)],
        h: &Histogram,
    ) -> usize {
        let mut bytes = self.push_common(ts, metric, labels);
        self.value.append_null();
        self.histogram_count.append_value(h.count.as_f64());
        self.histogram_sum.append_value(h.sum);
        self.scratch.clear();
        protocols::remote_write::v1::encode_histogram(h, &mut self.scratch);
        self.histogram.append_value(&self.scratch);
        bytes += self.scratch.len();
        self.approx_bytes += bytes;
        bytes
    }

    fn finish(mut self, tenant: &TenantId, region: &RegionId) -> Result<RecordBatch, ArrowError> {
        let n = self.timestamps.len();
        let columns: Vec<(&str, ArrayRef, bool)> = vec![
            (
                "timestamp",
                Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut self.timestamps))
                        .with_timezone("UTC"),
                ),
                false,
            ),
            (
                "tenant",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    tenant.as_str(),
                    n,
                ))),
                false,
            ),
            (
                "region",
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    region.as_str(),
                    n,
                ))),
                false,
            ),
            ("metric", Arc::new(self.metric.finish()), false),
            ("labels", Arc::new(self.labels.finish()), false),
            ("value", Arc::new(self.value.finish()), true),
            (
                "histogram_count",
                Arc::new(self.histogram_count.finish()),
                true,
            ),
            ("histogram_sum", Arc::new(self.histogram_sum.finish()), true),
            ("histogram", Arc::new(self.histogram.finish()), true),
        ];
        RecordBatch::try_from_iter_with_nullable(columns)
    }

    /// Encodes the rows as one Parquet file (snappy-compressed pages).
    pub(crate) fn encode_parquet(
        self,
        tenant: &TenantId,
        region: &RegionId,
    ) -> Result<Vec<u8>, super::FileError> {
        let batch = self.finish(tenant, region)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(out)
    }
}

/// The Arrow schema of every file this sink writes (documented in `docs/formats.md`).
pub fn schema() -> SchemaRef {
    let tenant = TenantId::parse("t").expect("static id");
    let region = RegionId::parse("r").expect("static id");
    Rows::default()
        .finish(&tenant, &region)
        .expect("an empty batch has consistent columns")
        .schema()
}

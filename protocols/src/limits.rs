//! Explicit bounds for every decode call.

/// Bounds a decoder enforces before and while it allocates. Every decode entry takes one, so
/// no caller can forget them; the defaults suit a public ingestion edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest compressed body accepted.
    pub max_compressed_bytes: usize,
    /// Largest decompressed message accepted; checked against the snappy header first.
    pub max_decompressed_bytes: usize,
    /// Most series (or metadata entries) in one request.
    pub max_series: usize,
    /// Most labels on one series.
    pub max_labels_per_series: usize,
    /// Longest label name in bytes.
    pub max_label_name_bytes: usize,
    /// Longest label value in bytes.
    pub max_label_value_bytes: usize,
}

impl DecodeLimits {
    /// Defaults: 16 MiB compressed and 64 MiB decompressed (Prometheus sends at most a few
    /// MiB per request; vmagent's own cap is 32 MiB), 100k series (Prometheus'
    /// `max_samples_per_send` is 2000 by default, so 50x headroom), 128 labels per series,
    /// 1 KiB names and 16 KiB values (Mimir's defaults are tighter, but an edge should not
    /// refuse what its backends accept; backends apply their own).
    pub const fn new_default() -> Self {
        Self {
            max_compressed_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_series: 100_000,
            max_labels_per_series: 128,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 16 * 1024,
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::new_default()
    }
}

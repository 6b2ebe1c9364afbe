//! The shared data of the write path: one region's tagged share of a request
//! ([`TaggedBatch`]), how its series are labelled and hashed on the way out, and the
//! write-ahead log's record codec ([`record`]). The pipeline builds shares; the log, the
//! feeders, the quarantine and every sink read them. Nothing here routes, stores or sends.
//!
//! May call: `protocols` and `residency_rules` only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use protocols::remote_write::v1::{encode_metadata, encode_series_with_labels, ExtraLabels};
use protocols::{Batch, SeriesRef};
use residency_rules::{CompiledPolicy, EditOp, LabelEdit, RegionId, TenantId};

pub mod record;
#[cfg(test)]
pub(crate) mod testing;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A label edit with its replacement value already computed (hashes need the policy key,
/// which sinks do not hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedEdit {
    /// Index of the label in the series' (sorted) label list.
    pub index: u16,
    /// `None`: drop the label; `Some(v)`: replace its value with `v`.
    pub replacement: Option<String>,
}

/// The policy's label edits of `series`, with each replacement value computed (a hash needs
/// the policy's key, which sinks do not hold).
pub fn resolve_edits(
    edits: &[LabelEdit],
    series: &SeriesRef<'_>,
    policy: &CompiledPolicy,
) -> Box<[ResolvedEdit]> {
    edits
        .iter()
        .map(|e| ResolvedEdit {
            index: e.index,
            replacement: match e.op {
                EditOp::Drop => None,
                EditOp::Hash => series
                    .labels()
                    .iter()
                    .nth(e.index as usize)
                    .map(|(_, v)| policy.hash_value(v)),
            },
        })
        .collect()
}

/// One region's share of a request, with the identity and tags the gateway attached.
#[derive(Debug)]
pub struct TaggedBatch {
    /// Whose data this is.
    pub tenant: TenantId,
    /// The region it was routed to: always one of the tenant's allowed regions.
    pub region: RegionId,
    /// The decoded request (shared by every region's share).
    pub batch: Arc<Batch>,
    /// Indices of the series routed here, ascending; `None` for all of them.
    pub selection: Option<Vec<u32>>,
    /// Label edits by series index.
    pub edits: Arc<HashMap<u32, Box<[ResolvedEdit]>>>,
    /// Labels the gateway adds: tenant, region, then the region's policy tags.
    pub tags: Arc<[(String, String)]>,
    /// The tags encoded once, for splicing into canonical series.
    pub extra: ExtraLabels,
    /// Identity hash of each series of the share, by position (see [`series_hash`]); empty
    /// when no sink of the region partitions.
    pub hashes: Vec<u64>,
    /// A share read back from the write-ahead log for a sink that forwards remote-write 1.0:
    /// its series as the log's own bytes, not decoded (`batch` is then empty).
    pub raw: Option<record::RawSeries>,
}

impl TaggedBatch {
    /// Number of series in this share.
    pub fn len(&self) -> usize {
        if let Some(raw) = &self.raw {
            return raw.series.len();
        }
        self.selection
            .as_ref()
            .map_or(self.batch.series_count(), Vec::len)
    }

    /// Whether the share carries metric metadata.
    pub fn has_metadata(&self) -> bool {
        match &self.raw {
            Some(raw) => !raw.metadata.is_empty(),
            None => self.batch.metadata_count() > 0,
        }
    }

    /// Appends the share's metadata as remote-write 1.0 `metadata` fields.
    pub fn put_v1_metadata(&self, buf: &mut Vec<u8>) {
        match &self.raw {
            Some(raw) => {
                for r in &raw.metadata {
                    buf.extend_from_slice(&raw.body[r.clone()]);
                }
            }
            None => encode_metadata(&self.batch, buf),
        }
    }

    /// Appends the series at `pos` in the share as a remote-write 1.0 `timeseries` field
    /// with its stored labels (copied as is from a raw share).
    pub fn put_v1_at(&self, pos: usize, buf: &mut Vec<u8>) {
        if let Some(raw) = &self.raw {
            if let Some(r) = raw.series.get(pos) {
                buf.extend_from_slice(&raw.body[r.clone()]);
            }
            return;
        }
        let index = self.series_index(pos);
        if let Some(series) = self.batch.series_at(index as usize) {
            self.put_v1_series(index, &series, buf);
        }
    }

    /// Whether the share has no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch index of the series at `pos` in the share.
    pub fn series_index(&self, pos: usize) -> u32 {
        self.selection.as_ref().map_or(pos as u32, |s| s[pos])
    }

    /// The residency edits of the series at batch index `index`.
    pub fn edits_of(&self, index: u32) -> &[ResolvedEdit] {
        self.edits.get(&index).map_or(&[][..], |e| &e[..])
    }

    /// The identity hash of the series at `pos` in the share (see [`series_hash`]).
    pub fn hash_at(&self, pos: usize, scratch: &mut Vec<u8>) -> u64 {
        let i = self.series_index(pos);
        self.batch
            .series_at(i as usize)
            .map_or(0, |s| series_hash(&s, self.edits_of(i), scratch))
    }

    /// Fills [`TaggedBatch::hashes`] for every series of the share.
    pub fn compute_hashes(&mut self) {
        let mut scratch = Vec::new();
        self.hashes = (0..self.len())
            .map(|pos| self.hash_at(pos, &mut scratch))
            .collect();
    }

    /// Appends the series at batch index `index` as a remote-write 1.0 `timeseries` field
    /// with its stored labels. The common case copies the client's bytes with the tags
    /// spliced in; edited or non-canonical series are encoded afresh.
    pub fn put_v1_series(&self, index: u32, series: &SeriesRef<'_>, buf: &mut Vec<u8>) {
        let edits = self.edits_of(index);
        if edits.is_empty() {
            if self.extra.put_spliced(series, buf) {
                return;
            }
            // Not canonical (e.g. decoded from 2.0): encode the client's sorted labels merged
            // with the sorted tags as they stream, without building a label list.
            if self.tags.windows(2).all(|w| w[0].0 < w[1].0) {
                let mark = buf.len();
                let clash = std::cell::Cell::new(false);
                let merged = MergeSorted {
                    client: series.labels().iter().peekable(),
                    tags: self.tags.iter().peekable(),
                    clash: &clash,
                };
                encode_series_with_labels(series, merged, buf);
                if !clash.get() {
                    return;
                }
                // A client label named like a tag: renamed below, the rare path.
                buf.truncate(mark);
            }
        }
        let labels = output_labels(series, edits, &self.tags);
        let labels = labels.iter().map(|(k, v)| (k.as_ref(), *v));
        encode_series_with_labels(series, labels, buf);
    }

    /// Adds the series at `pos` in the share to a remote-write 2.0 message with its stored
    /// labels (a decoded share only: 2.0 is always encoded afresh).
    pub fn put_v2_at(&self, pos: usize, writer: &mut protocols::remote_write::v2::V2Writer) {
        let index = self.series_index(pos);
        if let Some(series) = self.batch.series_at(index as usize) {
            let labels = output_labels(&series, self.edits_of(index), &self.tags);
            writer.add_series(
                &self.batch,
                &series,
                labels.iter().map(|(k, v)| (k.as_ref(), *v)),
            );
        }
    }

    /// The series of this share with their stored labels (see [`output_labels`]).
    pub fn series(&self) -> impl Iterator<Item = (SeriesRef<'_>, Vec<(Cow<'_, str>, &str)>)> {
        (0..self.len()).filter_map(move |pos| {
            let i = self.series_index(pos);
            let series = self.batch.series_at(i as usize)?;
            let labels = output_labels(&series, self.edits_of(i), &self.tags);
            Some((series, labels))
        })
    }
}

/// Two label lists sorted by name, merged into one sorted stream; a name in both sets
/// `clash` (the caller then encodes the series the long way, renaming the client's label).
struct MergeSorted<'a, C: Iterator<Item = (&'a str, &'a str)>> {
    client: std::iter::Peekable<C>,
    tags: std::iter::Peekable<std::slice::Iter<'a, (String, String)>>,
    clash: &'a std::cell::Cell<bool>,
}

impl<'a, C: Iterator<Item = (&'a str, &'a str)>> Iterator for MergeSorted<'a, C> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let take_tag = match (self.client.peek(), self.tags.peek()) {
            (Some((c, _)), Some((t, _))) => match (*c).cmp(t.as_str()) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => {
                    self.clash.set(true);
                    false
                }
            },
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => return None,
        };
        if take_tag {
            self.tags.next().map(|(k, v)| (k.as_str(), v.as_str()))
        } else {
            self.client.next()
        }
    }
}

/// A series' identity hash: over its labels after residency edits, before the gateway's tags
/// (constant within a share) are added. The Kafka partition and the sink worker of a series
/// derive from it, so it must not depend on how the client encoded the series.
pub fn series_hash(series: &SeriesRef<'_>, edits: &[ResolvedEdit], scratch: &mut Vec<u8>) -> u64 {
    if edits.is_empty() {
        series.labels_hash(scratch)
    } else {
        protocols::label_set_hash(edited_labels(series, edits), scratch)
    }
}

/// The client's labels after residency edits (dropped or replaced values), in name order.
fn edited_labels<'a>(
    series: &SeriesRef<'a>,
    edits: &'a [ResolvedEdit],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    series
        .labels()
        .iter()
        .enumerate()
        .filter_map(
            move |(i, (name, value))| match edits.iter().find(|e| e.index as usize == i) {
                Some(ResolvedEdit {
                    replacement: None, ..
                }) => None,
                Some(ResolvedEdit {
                    replacement: Some(h),
                    ..
                }) => Some((name, h.as_str())),
                None => Some((name, value)),
            },
        )
}

/// The labels the gateway adds to a series stored in `region`: tenant, region and the
/// region's policy tags (a policy tag cannot override the first two), sorted by name.
pub fn gateway_tags(
    tenant_label: &str,
    region_label: &str,
    tenant: &TenantId,
    region: &RegionId,
    policy: &residency_rules::CompiledPolicy,
) -> Vec<(String, String)> {
    let mut tags = vec![
        (tenant_label.to_string(), tenant.to_string()),
        (region_label.to_string(), region.to_string()),
    ];
    for (k, v) in policy.region_tags(region).iter() {
        if k != tenant_label && k != region_label {
            tags.push((k.clone(), v.clone()));
        }
    }
    // Sorted by name, so encoders can merge them into a series' sorted labels as they go.
    tags.sort();
    tags
}

/// A series' labels as stored: the client's labels (including `__name__`) after residency
/// edits, a client label named like a gateway tag renamed `exported_<name>` (repeatedly, until
/// free) so no client can spoof its tenant or region, then the tags; sorted by name.
pub fn output_labels<'a>(
    series: &SeriesRef<'a>,
    edits: &'a [ResolvedEdit],
    tags: &'a [(String, String)],
) -> Vec<(Cow<'a, str>, &'a str)> {
    let labels = series.labels();
    let mut out: Vec<(Cow<'a, str>, &'a str)> = Vec::with_capacity(labels.len() + tags.len());
    for (name, value) in edited_labels(series, edits) {
        if tags.iter().any(|(t, _)| t == name) {
            let mut renamed = format!("exported_{name}");
            while labels.get(&renamed).is_some() || tags.iter().any(|(t, _)| *t == renamed) {
                renamed.insert_str(0, "exported_");
            }
            out.push((Cow::Owned(renamed), value));
        } else {
            out.push((Cow::Borrowed(name), value));
        }
    }
    for (name, value) in tags {
        out.push((Cow::Borrowed(name.as_str()), value.as_str()));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::testing::batch;

    fn tags() -> Vec<(String, String)> {
        vec![
            ("tenant".into(), "acme".into()),
            ("region".into(), "eu-west".into()),
        ]
    }

    #[test]
    fn spoofed_tags_are_kept_as_exported() {
        let b = batch(&[
            ("__name__", "up"),
            ("exported_region", "x"),
            ("region", "us-east"),
            ("tenant", "evil"),
        ]);
        let s = b.series().next().unwrap();
        let tags = tags();
        let out = output_labels(&s, &[], &tags);
        let out: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            out,
            [
                ("__name__", "up"),
                ("exported_exported_region", "us-east"),
                ("exported_region", "x"),
                ("exported_tenant", "evil"),
                ("region", "eu-west"),
                ("tenant", "acme"),
            ]
        );
    }

    #[test]
    fn a_non_canonical_series_merges_tags_like_the_long_way() {
        // Unsorted input is not spliceable: the merge path encodes it.
        for labels in [
            &[("zone", "a"), ("__name__", "up"), ("job", "j")][..],
            &[("zone", "a"), ("__name__", "up"), ("region", "spoof")][..],
        ] {
            let b = Arc::new(batch(labels));
            let mut tags = tags();
            tags.sort();
            let share = TaggedBatch {
                tenant: TenantId::parse("acme").unwrap(),
                region: RegionId::parse("eu-west").unwrap(),
                batch: b.clone(),
                selection: None,
                edits: Arc::new(HashMap::new()),
                extra: ExtraLabels::new(tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                tags: tags.clone().into(),
                hashes: Vec::new(),
                raw: None,
            };
            let s = b.series().next().unwrap();
            assert!(s.spliceable_bytes().is_none());
            let mut fast = Vec::new();
            share.put_v1_series(0, &s, &mut fast);
            let mut long = Vec::new();
            let out = output_labels(&s, &[], &tags);
            encode_series_with_labels(&s, out.iter().map(|(k, v)| (k.as_ref(), *v)), &mut long);
            assert_eq!(fast, long, "{labels:?}");
        }
    }

    #[test]
    fn edits_drop_and_replace() {
        let b = batch(&[("__name__", "up"), ("email", "a@b"), ("user", "42")]);
        let s = b.series().next().unwrap();
        let edits = [
            ResolvedEdit {
                index: 1,
                replacement: None,
            },
            ResolvedEdit {
                index: 2,
                replacement: Some("h".into()),
            },
        ];
        let tags = tags();
        let out = output_labels(&s, &edits, &tags);
        let out: Vec<(&str, &str)> = out.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            out,
            [
                ("__name__", "up"),
                ("region", "eu-west"),
                ("tenant", "acme"),
                ("user", "h"),
            ]
        );
    }
}

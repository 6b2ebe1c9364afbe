//! Pre-scans of OTLP bodies that count elements before anything is decoded.
//!
//! `prost` and `serde` build the whole request tree before translation sees it, and a tree
//! element costs far more than its wire bytes (an empty data point is 2 bytes of protobuf and
//! about a hundred decoded; `{}` is 2 bytes of JSON). So the body is first walked without
//! allocating: every resource, scope, metric, data point, bucket, exemplar and attribute is
//! counted against [`DecodeLimits`] and the body is refused as soon as one count passes its
//! limit. What the decoder then allocates is proportional to the limits, not to the body
//! ([`DecodeLimits::worst_case_decoded_bytes`]).
//!
//! The scans only count and walk the framing. A protobuf body whose framing the scan cannot
//! walk (truncated, bad varints, unbalanced groups) is refused as invalid protobuf, since
//! what was not walked was not counted; field contents (UTF-8, wire types of known fields)
//! are left to `prost`. A malformed JSON body ends its scan without an error: `serde_json`
//! reads it in the same order and refuses it at the same place, having built only values the
//! scan had counted before it.

use crate::error::Element;
use crate::limits::{too_many, Allowance};
use crate::wire::{Reader, FIXED64, LEN, VARINT};
use crate::{DecodeError, DecodeLimits};

/// Deeper than `prost` (100 nested messages) and `serde_json` (128 nested values) decode,
/// so every element either decoder accepts is counted before it decodes it.
const MAX_DEPTH: usize = 130;

/// The running counts of one request.
struct Counts<'l> {
    limits: &'l DecodeLimits,
    /// Resources, scopes and metrics, each bounded by `max_series`.
    containers: [usize; 3],
    samples: Allowance,
    histograms: Allowance,
    buckets: Allowance,
    exemplars: Allowance,
    attributes: Allowance,
}

impl<'l> Counts<'l> {
    fn new(limits: &'l DecodeLimits) -> Self {
        Self {
            limits,
            containers: [0; 3],
            samples: Allowance::new(Element::Samples, limits.max_samples),
            histograms: Allowance::new(Element::Histograms, limits.max_histograms),
            buckets: Allowance::new(Element::HistogramBuckets, limits.max_histogram_buckets),
            exemplars: Allowance::new(Element::Exemplars, limits.max_exemplars),
            attributes: Allowance::new(Element::Attributes, limits.max_attributes),
        }
    }

    /// One more resource (0), scope (1) or metric (2): each becomes at least one series.
    fn container(&mut self, which: usize) -> Result<(), DecodeError> {
        if self.containers[which] >= self.limits.max_series {
            return Err(DecodeError::TooManySeries {
                limit: self.limits.max_series,
            });
        }
        self.containers[which] += 1;
        Ok(())
    }
}

/// Counts an `ExportMetricsServiceRequest` in protobuf and refuses it when a count passes its
/// limit.
pub(crate) fn scan_protobuf(buf: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    let mut scan = Protobuf {
        buf,
        counts: Counts::new(limits),
    };
    match scan.request() {
        Ok(()) => Ok(()),
        Err(e @ (DecodeError::TooManyElements { .. } | DecodeError::TooManySeries { .. })) => {
            Err(e)
        }
        // Framing the scan cannot walk is refused here rather than left to `prost`: what it
        // could not walk it could not count.
        Err(e) => Err(DecodeError::Protobuf(e.to_string())),
    }
}

struct Protobuf<'b, 'l> {
    buf: &'b [u8],
    counts: Counts<'l>,
}

/// A field of a message: number, wire type and, for length-delimited fields, their bytes.
type Field = (u32, u8, usize, usize);

impl Protobuf<'_, '_> {
    /// Calls `f` for each field of the message in `start..end`.
    fn fields(
        &mut self,
        start: usize,
        end: usize,
        mut f: impl FnMut(&mut Self, Field) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut r = Reader::new(self.buf, start, end);
        while !r.is_empty() {
            let (field, wt) = r.key()?;
            if wt == LEN {
                let (s, e) = r.len_delimited("OTLP field")?;
                f(self, (field, wt, s, e))?;
            } else if wt == START_GROUP {
                skip_group(&mut r, field, 0)?;
            } else {
                r.skip(wt)?;
                f(self, (field, wt, 0, 0))?;
            }
        }
        Ok(())
    }

    fn request(&mut self) -> Result<(), DecodeError> {
        self.fields(0, self.buf.len(), |p, (field, wt, s, e)| {
            match (field, wt) {
                (1, LEN) => p.resource_metrics(s, e),
                _ => Ok(()),
            }
        })
    }

    fn resource_metrics(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.container(0)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            // Resource.attributes
            (1, LEN) => p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (1, LEN) => p.key_value(s, e, 0),
                _ => Ok(()),
            }),
            (2, LEN) => p.scope_metrics(s, e),
            _ => Ok(()),
        })
    }

    fn scope_metrics(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.container(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            // InstrumentationScope.attributes
            (1, LEN) => p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (3, LEN) => p.key_value(s, e, 0),
                _ => Ok(()),
            }),
            (2, LEN) => p.metric(s, e),
            _ => Ok(()),
        })
    }

    fn metric(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.container(2)?;
        self.fields(start, end, |p, (field, wt, s, e)| {
            let point: fn(&mut Self, usize, usize) -> Result<(), DecodeError> = match (field, wt) {
                (5 | 7, LEN) => Self::number_point,
                (9, LEN) => Self::histogram_point,
                (10, LEN) => Self::exponential_point,
                (11, LEN) => Self::summary_point,
                _ => return Ok(()),
            };
            // Gauge, Sum, Histogram, ExponentialHistogram and Summary keep their points in
            // field 1.
            p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (1, LEN) => point(p, s, e),
                _ => Ok(()),
            })
        })
    }

    fn number_point(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.samples.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (7, LEN) => p.key_value(s, e, 0),
            (5, LEN) => p.exemplar(s, e),
            _ => Ok(()),
        })
    }

    fn histogram_point(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.samples.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (9, LEN) => p.key_value(s, e, 0),
            (8, LEN) => p.exemplar(s, e),
            // bucket_counts (fixed64) and explicit_bounds (double), packed or not.
            (6 | 7, LEN) => p.counts.buckets.take((e - s) / 8),
            (6 | 7, FIXED64) => p.counts.buckets.take(1),
            _ => Ok(()),
        })
    }

    fn exponential_point(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.histograms.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (1, LEN) => p.key_value(s, e, 0),
            (11, LEN) => p.exemplar(s, e),
            // Buckets.bucket_counts (uint64), packed or not.
            (8 | 9, LEN) => p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (2, LEN) => {
                    // One value per byte without the continuation bit.
                    let values = p.buf[s..e].iter().filter(|b| **b < 0x80).count();
                    p.counts.buckets.take(values)
                }
                (2, VARINT) => p.counts.buckets.take(1),
                _ => Ok(()),
            }),
            _ => Ok(()),
        })
    }

    fn summary_point(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.samples.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (7, LEN) => p.key_value(s, e, 0),
            (6, LEN) => p.counts.buckets.take(1),
            _ => Ok(()),
        })
    }

    fn exemplar(&mut self, start: usize, end: usize) -> Result<(), DecodeError> {
        self.counts.exemplars.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (7, LEN) => p.key_value(s, e, 0),
            _ => Ok(()),
        })
    }

    fn key_value(&mut self, start: usize, end: usize, depth: usize) -> Result<(), DecodeError> {
        self.counts.attributes.take(1)?;
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            (2, LEN) => p.any_value(s, e, depth + 1),
            _ => Ok(()),
        })
    }

    fn any_value(&mut self, start: usize, end: usize, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::Malformed {
                what: "attribute values nested too deep",
                offset: start,
            });
        }
        self.fields(start, end, |p, (field, wt, s, e)| match (field, wt) {
            // ArrayValue.values: AnyValue
            (5, LEN) => p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (1, LEN) => {
                    p.counts.attributes.take(1)?;
                    p.any_value(s, e, depth + 1)
                }
                _ => Ok(()),
            }),
            // KeyValueList.values: KeyValue
            (6, LEN) => p.fields(s, e, |p, (f, wt, s, e)| match (f, wt) {
                (1, LEN) => p.key_value(s, e, depth + 1),
                _ => Ok(()),
            }),
            _ => Ok(()),
        })
    }
}

/// The deprecated group wire types, which no OTLP field uses.
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;

/// Skips a group field up to its end, as `prost` skips an unknown one (it allocates nothing
/// for it). Without this the scan would stop at a group and leave what follows uncounted,
/// while `prost` decodes on.
fn skip_group(r: &mut Reader<'_>, field: u32, depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Malformed {
            what: "groups nested too deep",
            offset: 0,
        });
    }
    loop {
        let (f, wt) = r.key()?;
        match wt {
            END_GROUP if f == field => return Ok(()),
            END_GROUP => {
                return Err(DecodeError::Malformed {
                    what: "unmatched end of group",
                    offset: 0,
                })
            }
            START_GROUP => skip_group(r, f, depth + 1)?,
            _ => r.skip(wt)?,
        }
    }
}

/// What an array's elements are, from the key it is the value of (OTLP JSON keys, in
/// lowerCamelCase and in the snake_case the decoder accepts too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    ResourceMetrics,
    ScopeMetrics,
    Metrics,
    DataPoints,
    Attributes,
    Exemplars,
    Buckets,
    ExponentialHistogram,
    Other,
}

impl Key {
    fn of(name: &[u8]) -> Key {
        match name {
            b"resourceMetrics" | b"resource_metrics" => Key::ResourceMetrics,
            b"scopeMetrics" | b"scope_metrics" => Key::ScopeMetrics,
            b"metrics" => Key::Metrics,
            b"dataPoints" | b"data_points" => Key::DataPoints,
            // `values` holds the elements of array and map attribute values.
            b"attributes" | b"filteredAttributes" | b"filtered_attributes" | b"values" => {
                Key::Attributes
            }
            b"exemplars" => Key::Exemplars,
            b"bucketCounts" | b"bucket_counts" | b"explicitBounds" | b"explicit_bounds"
            | b"quantileValues" | b"quantile_values" => Key::Buckets,
            b"exponentialHistogram" | b"exponential_histogram" => Key::ExponentialHistogram,
            _ => Key::Other,
        }
    }
}

/// An open object or array.
#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    /// Objects: the key they are the value of. Arrays: the key they are the value of, and
    /// for `dataPoints` whether the metric is an exponential histogram.
    key: Key,
    exponential: bool,
    /// Objects: the last key read, which the next value belongs to.
    member: Key,
    /// Objects: whether a key comes next.
    expect_key: bool,
}

/// Counts an OTLP JSON body: the elements its keys say it holds, like the protobuf scan, and
/// every JSON value against [`DecodeLimits::json_value_budget`], because `serde` buffers the
/// values of a flattened struct (a metric, a data point, an attribute value) before reading
/// them into fields. Strings are skipped whole, so brackets inside them count for nothing.
pub(crate) fn scan_json(body: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    let mut counts = Counts::new(limits);
    let budget = limits.json_value_budget();
    let mut values = 0usize;
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {
                if c == b':' {
                    if let Some(top) = stack.last_mut() {
                        top.expect_key = false;
                    }
                }
                i += 1;
                continue;
            }
            b',' => {
                if let Some(top) = stack.last_mut() {
                    top.expect_key = !top.array;
                }
                i += 1;
                continue;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
                continue;
            }
            _ => {}
        }
        let start = i;
        let mut escaped = false;
        i = match c {
            b'"' => {
                let (end, esc) = string_end(body, i);
                escaped = esc;
                end
            }
            b'{' | b'[' => i + 1,
            _ => scalar_end(body, i),
        };
        if c == b'"' {
            if let Some(top) = stack.last_mut().filter(|t| !t.array && t.expect_key) {
                top.member = key_of(&body[start..i], escaped);
                continue;
            }
        }
        // A value starts: count it, and as an element of the array it is in.
        values += 1;
        if values > budget {
            return Err(too_many(Element::JsonValues, budget));
        }
        let parent = stack.last().copied();
        if let Some(p) = parent.filter(|p| p.array) {
            element(&mut counts, p)?;
        }
        if c == b'{' || c == b'[' {
            if stack.len() >= MAX_DEPTH {
                // serde_json refuses this nesting before it gets here.
                return Ok(());
            }
            let (key, exponential) = match parent {
                Some(p) if p.array => (p.key, p.exponential),
                Some(p) => (p.member, p.key == Key::ExponentialHistogram),
                None => (Key::Other, false),
            };
            stack.push(Frame {
                array: c == b'[',
                key,
                exponential,
                member: Key::Other,
                expect_key: c == b'{',
            });
        }
    }
    Ok(())
}

/// Takes one element of the kind array `p` holds.
fn element(counts: &mut Counts<'_>, p: Frame) -> Result<(), DecodeError> {
    match p.key {
        Key::ResourceMetrics => counts.container(0),
        Key::ScopeMetrics => counts.container(1),
        Key::Metrics => counts.container(2),
        Key::DataPoints if p.exponential => counts.histograms.take(1),
        Key::DataPoints => counts.samples.take(1),
        Key::Attributes => counts.attributes.take(1),
        Key::Exemplars => counts.exemplars.take(1),
        Key::Buckets => counts.buckets.take(1),
        Key::ExponentialHistogram | Key::Other => Ok(()),
    }
}

/// The key a quoted JSON string (quotes included) names; an escaped key is unescaped first,
/// as `serde` would read it.
fn key_of(quoted: &[u8], escaped: bool) -> Key {
    if !escaped {
        return Key::of(&quoted[1..quoted.len().saturating_sub(1).max(1)]);
    }
    match serde_json::from_slice::<String>(quoted) {
        Ok(name) => Key::of(name.as_bytes()),
        Err(_) => Key::Other,
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of the first byte of `x` equal to `b` set (and maybe of later bytes: the
/// borrow of the subtraction only ever runs upwards, so the lowest set bit is exact).
#[inline(always)]
const fn first_byte_eq(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * b as u64);
    y.wrapping_sub(ONES) & !y & HIGH
}

/// The index just past the string starting at `start` (a `"`), or the end of the body, and
/// whether it holds an escape. Most of an OTLP JSON body is strings, so they are skipped
/// eight bytes at a time to the next quote or backslash (a byte at a time was most of the
/// scan's cost).
fn string_end(body: &[u8], start: usize) -> (usize, bool) {
    let mut i = start + 1;
    let mut escaped = false;
    loop {
        while let Some(chunk) = body.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            let hits = first_byte_eq(w, b'"') | first_byte_eq(w, b'\\');
            if hits != 0 {
                i += (hits.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match body.get(i) {
            None => return (body.len(), escaped),
            Some(b'\\') => {
                escaped = true;
                i += 2;
            }
            Some(b'"') => return (i + 1, escaped),
            Some(_) => i += 1,
        }
    }
}

/// The index just past a number or literal starting at `start`.
fn scalar_end(body: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < body.len()
        && !matches!(
            body[i],
            b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r' | b':' | b'"' | b'{' | b'['
        )
    {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time skip must stop exactly where a byte-at-a-time one does, wherever
    /// the quote or backslash falls in a word.
    #[test]
    fn string_end_matches_a_byte_at_a_time_scan_at_every_position() {
        fn naive(body: &[u8], start: usize) -> (usize, bool) {
            let (mut i, mut escaped) = (start + 1, false);
            while i < body.len() {
                match body[i] {
                    b'\\' => {
                        escaped = true;
                        i += 2
                    }
                    b'"' => return (i + 1, escaped),
                    _ => i += 1,
                }
            }
            (body.len(), escaped)
        }
        for len in 0..20 {
            for pos in 0..len {
                for special in [b'"', b'\\', 0x80, 0xff, b'a'] {
                    let mut body = vec![b'x'; len];
                    body.insert(0, b'"');
                    body[pos + 1] = special;
                    body.extend_from_slice(b"tail\"");
                    assert_eq!(string_end(&body, 0), naive(&body, 0), "{body:?}");
                }
            }
        }
    }

    #[test]
    fn json_keys_inside_strings_and_unknown_keys_count_no_elements() {
        let limits = DecodeLimits {
            max_samples: 1,
            ..DecodeLimits::new_default()
        };
        let body =
            br#"{"x":"\"dataPoints\":[{},{}]","dataPointsX":[{},{}],"y":{"dataPoints":[{}]}}"#;
        assert!(scan_json(body, &limits).is_ok());
        let body = br#"{"y":{"dataPoints":[{},{}]}}"#;
        assert!(scan_json(body, &limits).is_err());
    }
}

//! A series' identity as a number: stable across requests, restarts, gateway versions and
//! nodes, because it picks the Kafka partition (and the pipeline shard) of every series.
//!
//! The hash is XXH3-64 (seed 0) of the series' labels, sorted by name, each encoded as a
//! remote-write `Label` field in the canonical protobuf form (`0a len 0a len name 12 len value`,
//! minimal varints). That is byte for byte what a sender that sorts its labels already put on
//! the wire, so for such series ([`crate::SeriesRef::labels_hash`]) the hash runs over the
//! request's own bytes, without re-encoding; any other series gets the same number through
//! [`label_set_hash`]. XXH3 is a published, versioned algorithm, so a consumer can compute the
//! same partition.

use crate::wire::{put_bytes, put_message};

/// The identity hash of a label set given sorted by name; `scratch` is reused to encode it.
pub fn label_set_hash<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    scratch: &mut Vec<u8>,
) -> u64 {
    scratch.clear();
    for (name, value) in labels {
        put_message(scratch, 1, |o| {
            put_bytes(o, 1, name.as_bytes());
            put_bytes(o, 2, value.as_bytes());
        });
    }
    hash_bytes(scratch)
}

/// The hash function itself, over encoded label fields.
#[inline]
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_values() {
        // Pinned: changing the hash moves every series to another partition.
        let mut scratch = Vec::new();
        assert_eq!(
            label_set_hash([("__name__", "up"), ("job", "node")], &mut scratch),
            label_set_hash([("__name__", "up"), ("job", "node")], &mut Vec::new())
        );
        assert_eq!(label_set_hash([], &mut scratch), 0x2d06_8005_38d3_94c2);
        assert_ne!(
            label_set_hash([("a", "bc")], &mut scratch),
            label_set_hash([("ab", "c")], &mut scratch)
        );
    }
}

//! One tenant's active series: the distinct series (by label-set hash) seen within the
//! window, in a fixed-size open-addressing table of atomics, so that checking a series is a
//! few loads and at most one compare-and-swap: no lock, whatever the number of cores.
//!
//! The table starts small and doubles (a [`SeriesTable::grown`] copy the caller swaps in,
//! when [`Seen::Full`] says it is half full) up to twice the tenant's limit rounded up to a
//! power of two, so probes stay short and memory follows the series a tenant really has: a
//! set never holds more than its limit, and costs 12 bytes a slot. Slots are only ever
//! filled on the hot path; expiry rebuilds the table (a [`SeriesTable::rebuilt`] copy without
//! the series unseen for a window, swapped in by the caller), so a lookup never has to step
//! over deleted slots. A series added to the old table while the copy is made may
//! be missed by it; it is then counted as new once more when next seen (an overcount of at
//! most what arrives during one rebuild, never an undercount).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The key of an empty slot; a series whose hash is 0 is stored as 1.
const EMPTY: u64 = 0;

/// Fewest slots of a table.
const MIN_SLOTS: usize = 16;
/// Slots of a new table (12 KiB), before it grows.
const FIRST_SLOTS: usize = 1024;

/// What the table says of one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Seen within the window: accepted, its last-seen time refreshed.
    Known,
    /// New, and under the limit: now counted.
    Added,
    /// New, and the set is at its limit: refused.
    Refused,
    /// New, under the limit, but the table is half full: grow it and look again.
    Full,
}

/// A set of at most `limit` series hashes with the time each was last seen.
#[derive(Debug)]
pub struct SeriesTable {
    keys: Box<[AtomicU64]>,
    /// Last seen, in seconds since the limiter's epoch.
    seen: Box<[AtomicU32]>,
    mask: usize,
    live: AtomicU64,
    limit: u64,
    /// Past this many series a larger table is wanted; `u64::MAX` at the largest size.
    grow_at: u64,
}

impl SeriesTable {
    /// An empty table for at most `limit` series, at its first size.
    pub fn new(limit: u64) -> SeriesTable {
        SeriesTable::with_slots(limit, FIRST_SLOTS)
    }

    /// The most slots a table for `limit` takes: twice the limit, as a power of two.
    fn max_slots(limit: u64) -> usize {
        usize::try_from(limit.saturating_mul(2))
            .unwrap_or(usize::MAX / 2)
            .max(MIN_SLOTS)
            .next_power_of_two()
    }

    fn with_slots(limit: u64, slots: usize) -> SeriesTable {
        let max = SeriesTable::max_slots(limit);
        let slots = slots.next_power_of_two().clamp(MIN_SLOTS, max);
        SeriesTable {
            keys: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            seen: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            mask: slots - 1,
            live: AtomicU64::new(0),
            limit,
            grow_at: if slots < max {
                slots as u64 / 2
            } else {
                u64::MAX
            },
        }
    }

    /// The limit it was made for.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Series in the set (some may have expired since the last rebuild).
    pub fn len(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table takes.
    pub fn heap_bytes(&self) -> usize {
        self.keys.len() * (size_of::<AtomicU64>() + size_of::<AtomicU32>())
    }

    /// Looks `hash` up at time `now` (seconds), adding it while the set is under its limit.
    pub fn observe(&self, hash: u64, now: u32) -> Seen {
        let key = if hash == EMPTY { 1 } else { hash };
        let mut i = (key as usize) & self.mask;
        // At most every slot once; the table is at most half full, so this ends early.
        for _ in 0..=self.mask {
            let k = self.keys[i].load(Ordering::Acquire);
            if k == key {
                self.seen[i].store(now, Ordering::Relaxed);
                return Seen::Known;
            }
            if k == EMPTY {
                match self.reserve() {
                    Ok(()) => {}
                    Err(full) => return full,
                }
                match self.keys[i].compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        self.seen[i].store(now, Ordering::Relaxed);
                        return Seen::Added;
                    }
                    Err(other) => {
                        // Another request took the slot first: maybe with this very series.
                        self.live.fetch_sub(1, Ordering::Relaxed);
                        if other == key {
                            self.seen[i].store(now, Ordering::Relaxed);
                            return Seen::Known;
                        }
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
        Seen::Refused
    }

    /// Counts one more series if the set is under its limit and the table has room.
    fn reserve(&self) -> Result<(), Seen> {
        let mut why = Seen::Refused;
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if n >= self.limit {
                    why = Seen::Refused;
                    None
                } else if n >= self.grow_at {
                    why = Seen::Full;
                    None
                } else {
                    Some(n + 1)
                }
            })
            .map(|_| ())
            .map_err(|_| why)
    }

    /// A copy twice the size (up to the largest for the limit), with every series.
    pub fn grown(&self) -> SeriesTable {
        let next = SeriesTable::with_slots(self.limit, self.keys.len() * 2);
        for (key, seen) in self.entries() {
            next.observe(key, seen);
        }
        next
    }

    /// Series last seen before `cutoff` (seconds).
    pub fn expired(&self, cutoff: u32) -> u64 {
        self.entries().filter(|&(_, seen)| seen < cutoff).count() as u64
    }

    fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.keys.iter().zip(self.seen.iter()).filter_map(|(k, s)| {
            let k = k.load(Ordering::Acquire);
            (k != EMPTY).then(|| (k, s.load(Ordering::Relaxed)))
        })
    }

    /// A copy for `limit` without the series last seen before `cutoff` (seconds); with a
    /// lower limit than before, the most recently seen are kept.
    pub fn rebuilt(&self, limit: u64, cutoff: u32) -> SeriesTable {
        let mut keep: Vec<(u64, u32)> = self.entries().filter(|&(_, s)| s >= cutoff).collect();
        if keep.len() as u64 > limit {
            keep.sort_unstable_by_key(|&(_, seen)| std::cmp::Reverse(seen));
            keep.truncate(limit as usize);
        }
        // Room for what is kept at under half full, and no smaller than a new table.
        let next = SeriesTable::with_slots(limit, (keep.len() * 4).max(FIRST_SLOTS));
        for (key, seen) in keep {
            next.observe(key, seen);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// Observes like the limits do: growing the table when it says so.
    fn observe(t: &mut SeriesTable, hash: u64, now: u32) -> Seen {
        loop {
            match t.observe(hash, now) {
                Seen::Full => *t = t.grown(),
                seen => return seen,
            }
        }
    }

    #[test]
    fn the_limit_holds_and_known_series_keep_passing() {
        let mut t = SeriesTable::new(1000);
        let outcomes: Vec<Seen> = (0..1200u64)
            .map(|i| observe(&mut t, i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 5))
            .collect();
        assert_eq!(outcomes.iter().filter(|&&s| s == Seen::Added).count(), 1000);
        assert_eq!(
            outcomes.iter().filter(|&&s| s == Seen::Refused).count(),
            200
        );
        assert_eq!(t.len(), 1000);
        for i in 0..1000u64 {
            assert_eq!(
                t.observe(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), 6),
                Seen::Known
            );
        }
        // A zero hash is a series like any other.
        let small = SeriesTable::new(2);
        assert_eq!(small.observe(0, 1), Seen::Added);
        assert_eq!(small.observe(0, 1), Seen::Known);
    }

    #[test]
    fn a_rebuild_drops_what_the_window_no_longer_covers() {
        let t = SeriesTable::new(10);
        for i in 1..=10 {
            t.observe(i, 100);
        }
        assert_eq!(t.observe(99, 100), Seen::Refused);
        for i in 1..=4 {
            t.observe(i, 200);
        }
        assert_eq!(t.expired(150), 6);
        let next = t.rebuilt(10, 150);
        assert_eq!(next.len(), 4);
        assert_eq!(next.observe(99, 201), Seen::Added);
        assert_eq!(next.observe(1, 201), Seen::Known);
        // A lower limit keeps the most recent.
        let smaller = t.rebuilt(2, 0);
        assert_eq!(smaller.len(), 2);
        assert_eq!(smaller.limit(), 2);
    }

    #[test]
    fn memory_follows_the_series_up_to_twice_the_limit() {
        let mut t = SeriesTable::new(1_000_000);
        assert_eq!(
            t.heap_bytes(),
            1024 * 12,
            "a new tenant takes 12 KiB whatever its limit"
        );
        for i in 1..=10_000u64 {
            observe(&mut t, i, 1);
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(
            t.heap_bytes(),
            32_768 * 12,
            "grown to keep it at most half full"
        );
        let mut small = SeriesTable::new(1000);
        for i in 1..=100_000u64 {
            observe(&mut small, i, 1);
        }
        assert_eq!(small.len(), 1000);
        assert_eq!(small.heap_bytes(), 2048 * 12, "never past twice the limit");
    }

    #[test]
    fn concurrent_requests_never_pass_the_limit_nor_count_a_series_twice() {
        // At its largest size: growth is the caller's, and not what this test is about.
        let t = Arc::new(SeriesTable::with_slots(5000, 1 << 20));
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let t = t.clone();
                // Overlapping ranges: every series is offered by two threads.
                std::thread::spawn(move || {
                    let start = (w / 2) * 4000;
                    (start..start + 4000)
                        .filter(|&i| t.observe(i, 1) == Seen::Added)
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let added: Vec<u64> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<u64> = added.iter().copied().collect();
        assert_eq!(added.len(), distinct.len(), "no series added twice");
        assert_eq!(added.len(), 5000);
        assert_eq!(t.len(), 5000);
    }
}

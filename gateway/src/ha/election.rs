//! The election rule of one `(tenant, cluster)` HA pair: pure, with instants passed in, so it
//! is tested at exact times (no clock, no sleeps).
//!
//! An [`Election`] names a replica, when it was elected and when it was last seen sending.
//! A request from the elected replica is accepted and refreshes `last_seen`; one from another
//! replica is refused, unless the elected one has been silent for `failover_timeout`, in which
//! case the sender is elected (a failover). The first request of a pair elects its sender.
//!
//! Nodes decide alone and gossip what they decided; [`merge`] combines the versions a node
//! holds into one, the same on every node whatever the order they arrive in: an election
//! replaces another only if, when it was made, the other had been silent for the timeout (a
//! failover); otherwise the earlier stands (ties: the smaller replica name). So two nodes
//! that elect different replicas at once converge on one within a gossip round, and a node
//! that elected in ignorance (just restarted, not yet synced) gives way to the election the
//! fleet already had. While nodes disagree both replicas are accepted somewhere: the worst
//! case is a duplicate, never a loss.

use std::time::Duration;

/// One pair's election.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Election {
    /// The elected replica (its replica label value).
    pub replica: String,
    /// Unix ms it was elected.
    pub elected_at_ms: u64,
    /// Unix ms a node last accepted a request from it.
    pub last_seen_ms: u64,
}

/// What to do with a request from `replica`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// From the elected replica: accept (and refresh its `last_seen`).
    Accept,
    /// Accept, and this is the pair's election from now on (first request, or a failover).
    Elect(Election),
    /// From another replica while the elected one is alive: refuse (answered 202).
    Reject,
}

/// The verdict for a request from `replica` at `now_ms`, given the pair's `current` election.
pub fn decide(
    current: Option<&Election>,
    replica: &str,
    now_ms: u64,
    timeout: Duration,
) -> Verdict {
    let elect = || {
        Verdict::Elect(Election {
            replica: replica.to_string(),
            elected_at_ms: now_ms,
            last_seen_ms: now_ms,
        })
    };
    match current {
        None => elect(),
        Some(e) if e.replica == replica => Verdict::Accept,
        Some(e) if silent_for(e, now_ms, timeout) => elect(),
        Some(_) => Verdict::Reject,
    }
}

/// Whether `e`'s replica has sent nothing for `timeout` as of `at_ms`.
fn silent_for(e: &Election, at_ms: u64, timeout: Duration) -> bool {
    at_ms >= e.last_seen_ms.saturating_add(timeout.as_millis() as u64)
}

/// The one election the versions in `all` stand for (any order): sorted by election time
/// (then replica), each replaces the one before only if that one was silent for `timeout`
/// when it was made; versions naming the same replica as the standing one are one
/// election, seen as late as any of them says. `None` for no versions.
pub fn merge(all: &[Election], timeout: Duration) -> Option<Election> {
    let mut sorted: Vec<&Election> = all.iter().collect();
    sorted.sort_by(|a, b| {
        (a.elected_at_ms, &a.replica, a.last_seen_ms).cmp(&(
            b.elected_at_ms,
            &b.replica,
            b.last_seen_ms,
        ))
    });
    let mut standing: Option<Election> = None;
    for e in sorted {
        match &mut standing {
            None => standing = Some(e.clone()),
            Some(s) if s.replica == e.replica => {
                s.last_seen_ms = s.last_seen_ms.max(e.last_seen_ms)
            }
            Some(s) if silent_for(s, e.elected_at_ms, timeout) => *s = e.clone(),
            Some(_) => {}
        }
    }
    standing
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Duration = Duration::from_secs(30);

    fn e(replica: &str, at: u64, seen: u64) -> Election {
        Election {
            replica: replica.into(),
            elected_at_ms: at,
            last_seen_ms: seen,
        }
    }

    #[test]
    fn the_first_sender_is_elected_the_other_refused_until_the_elected_is_silent() {
        assert_eq!(
            decide(None, "a", 1000, T),
            Verdict::Elect(e("a", 1000, 1000))
        );
        let cur = e("a", 1000, 5000);
        assert_eq!(decide(Some(&cur), "a", 6000, T), Verdict::Accept);
        assert_eq!(decide(Some(&cur), "b", 6000, T), Verdict::Reject);
        // Silent for 29.999 s: still refused; for 30 s: b takes over.
        assert_eq!(decide(Some(&cur), "b", 34_999, T), Verdict::Reject);
        assert_eq!(
            decide(Some(&cur), "b", 35_000, T),
            Verdict::Elect(e("b", 35_000, 35_000))
        );
    }

    #[test]
    fn concurrent_elections_converge_on_the_earlier_and_a_failover_replaces_its_predecessor() {
        // Two nodes elect different replicas 5 ms apart: the earlier stands.
        let a = e("a", 1000, 1000);
        let b = e("b", 1005, 1005);
        assert_eq!(merge(&[b.clone(), a.clone()], T), Some(a.clone()));
        assert_eq!(merge(&[a.clone(), b.clone()], T), Some(a.clone()));
        // At the same instant: the smaller replica name.
        assert_eq!(
            merge(&[e("b", 1000, 1000), e("a", 1000, 1000)], T)
                .unwrap()
                .replica,
            "a"
        );
        // A failover (a silent 30 s before b was elected) replaces a.
        let f = e("b", 40_000, 41_000);
        assert_eq!(merge(&[e("a", 1000, 10_000), f.clone()], T), Some(f));
        // A node restarted and, not yet synced, elected b while a was alive: a stands.
        let alive = e("a", 1000, 59_000);
        assert_eq!(
            merge(&[alive.clone(), e("b", 60_000, 60_000)], T),
            Some(alive)
        );
        // Versions of one election: seen as late as any says.
        assert_eq!(
            merge(
                &[e("a", 1000, 2000), e("a", 1000, 9000), e("a", 1500, 3000)],
                T
            ),
            Some(e("a", 1000, 9000))
        );
        assert_eq!(merge(&[], T), None);
    }

    fn election() -> impl Strategy<Value = Election> {
        (0u8..3, 0u64..200_000, 0u64..100_000).prop_map(|(r, at, extra)| Election {
            replica: ["a", "b", "c"][r as usize].to_string(),
            elected_at_ms: at,
            last_seen_ms: at + extra,
        })
    }

    proptest! {
        /// Every node converges on the same election whatever order the versions reach it
        /// in, and merging is idempotent and associative in effect: merging a merged result
        /// with more versions equals merging all at once.
        #[test]
        fn merge_is_order_independent(
            mut all in prop::collection::vec(election(), 0..12),
            seed in any::<u64>(),
        ) {
            let once = merge(&all, T);
            // A deterministic shuffle.
            let n = all.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 1) >> 7) as usize % (i + 1);
                all.swap(i, j);
            }
            prop_assert_eq!(merge(&all, T), once.clone());
            if let Some(m) = &once {
                prop_assert!(all.iter().any(|e| e.replica == m.replica));
                prop_assert_eq!(merge(std::slice::from_ref(m), T), Some(m.clone()));
            }
        }

        /// A request is refused only while the elected replica is alive: a sender other than
        /// the elected one is never refused once the elected one has been silent for the
        /// timeout (no replica can be locked out by a dead one).
        #[test]
        fn a_silent_replica_never_locks_the_others_out(
            cur in election(),
            other in 0u8..3,
            after in 0u64..100_000,
        ) {
            let replica = ["a", "b", "c"][other as usize];
            let now = cur.last_seen_ms + after;
            let v = decide(Some(&cur), replica, now, T);
            if replica == cur.replica {
                prop_assert_eq!(v, Verdict::Accept);
            } else if after >= 30_000 {
                let elected = matches!(v, Verdict::Elect(ref e) if e.replica == replica);
                prop_assert!(elected);
                // And the fleet keeps that failover once it gossips it.
                if let Verdict::Elect(new) = v {
                    prop_assert_eq!(merge(&[cur.clone(), new.clone()], T), Some(new));
                }
            } else {
                prop_assert_eq!(v, Verdict::Reject);
            }
        }
    }
}

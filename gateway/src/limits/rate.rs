//! A lock-free token bucket in its GCRA form: one atomic "theoretical arrival time" per
//! bucket, so a rate check is a load and a compare-and-swap, whatever the number of cores.
//!
//! The bucket holds up to `burst` tokens and refills at `rate` tokens per second. State is
//! the time at which the bucket would be full again (`tat`); the tokens available at `now`
//! are `burst - max(0, tat - now) * rate`. A request of `n` tokens passes when the bucket
//! holds `min(n, burst)` of them and then takes all `n`, going into debt past `burst`: so a
//! request larger than the burst is not refused for ever (it passes on a full bucket), and
//! the long-run rate still holds, since the debt is paid back before the next one passes.
//! Rate and burst are given at every call: a reload or a change in the fleet's size takes
//! effect on the next request, without touching the state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One bucket's state: nanoseconds since the limiter's epoch.
#[derive(Debug, Default)]
pub struct Bucket {
    tat: AtomicU64,
}

/// A rate and a burst, in tokens per second and tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens per second; positive and finite.
    pub per_second: f64,
    /// Bucket size in tokens; at least 1.
    pub burst: f64,
}

impl Rate {
    /// Nanoseconds one token takes to refill.
    fn ns_per_token(self) -> f64 {
        1e9 / self.per_second
    }
}

impl Bucket {
    /// Takes `n` tokens at `now_ns`, or says how long until the bucket holds enough. On
    /// success, the state it left (for [`Bucket::refund`]).
    pub fn take(&self, n: u64, rate: Rate, now_ns: u64) -> Result<u64, Duration> {
        let t = rate.ns_per_token();
        let capacity = rate.burst * t;
        let need = (n as f64).min(rate.burst) * t;
        let cost = (n as f64 * t).min(u64::MAX as f64 / 4.0) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now_ns);
            let debt = (base - now_ns) as f64;
            if debt + need > capacity {
                return Err(Duration::from_nanos((debt + need - capacity).ceil() as u64));
            }
            let end = base.saturating_add(cost);
            match self
                .tat
                .compare_exchange_weak(tat, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(end),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back `n` tokens of a take that left the state at `end` (its [`Bucket::take`]
    /// result), for data that was not kept after all, so only kept data counts against the
    /// rate. Only what of that take has not refilled by `now_ns` comes back (at most
    /// `end - now`), and the state never goes below `now_ns`: a refund cannot hand out tokens
    /// that other requests' charges took since.
    pub fn refund(&self, n: u64, rate: Rate, end: u64, now_ns: u64) {
        let cost = (n as f64 * rate.ns_per_token()).min(u64::MAX as f64 / 4.0) as u64;
        let back = cost.min(end.saturating_sub(now_ns));
        if back == 0 {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(back).max(now_ns.min(tat)))
            });
    }

    /// Tokens available at `now_ns` (negative while in debt), for the status page.
    pub fn available(&self, rate: Rate, now_ns: u64) -> f64 {
        let debt = self.tat.load(Ordering::Relaxed).saturating_sub(now_ns) as f64;
        rate.burst - debt / rate.ns_per_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refills_at_the_rate() {
        let b = Bucket::default();
        let r = rate(100.0, 50.0);
        let now = 10 * SEC;
        assert!(b.take(50, r, now).is_ok());
        let wait = b.take(10, r, now).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "10 tokens at 100/s");
        assert!(b.take(10, r, now + SEC / 10).is_ok());
        assert!(b.take(1, r, now + SEC / 10).is_err());
        assert!((b.available(r, now + SEC) - 50.0).abs() < 1e-6);
    }

    #[test]
    fn a_request_over_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() {
        let b = Bucket::default();
        let r = rate(100.0, 10.0);
        let now = 10 * SEC;
        assert!(b.take(100, r, now).is_ok(), "a full bucket lets it through");
        // 90 tokens of debt plus the 10 the next request needs: a second.
        let wait = b.take(10, r, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(b.available(r, now) < 0.0);
    }

    #[test]
    fn a_refund_gives_the_tokens_back() {
        let b = Bucket::default();
        let r = rate(10.0, 10.0);
        let end = b.take(10, r, SEC).unwrap();
        assert!(b.take(5, r, SEC).is_err());
        b.refund(5, r, end, SEC);
        assert!(b.take(5, r, SEC).is_ok());
    }

    #[test]
    fn a_late_refund_never_hands_out_what_later_charges_took() {
        // 100/s, burst 100: A takes 100 at 0 s, B 100 at 1 s; A's refund at 1.5 s may give
        // back only what of A has not refilled by then (nothing), not B's charge.
        let b = Bucket::default();
        let r = rate(100.0, 100.0);
        let a_end = b.take(100, r, 10 * SEC).unwrap();
        b.take(100, r, 11 * SEC).unwrap();
        b.refund(100, r, a_end, 11 * SEC + SEC / 2);
        assert!(
            b.take(100, r, 11 * SEC + SEC / 2).is_err(),
            "B's tokens are still taken"
        );
        assert!(
            b.take(50, r, 11 * SEC + SEC / 2).is_ok(),
            "half a second refilled 50"
        );
    }

    proptest! {
        /// Whatever the request sizes and their timing, what passes within `elapsed` never
        /// exceeds `burst + rate * elapsed` plus one request's overshoot of the burst.
        #[test]
        fn what_passes_stays_within_rate_times_time_plus_burst(
            per_second in 1.0f64..1e6,
            burst in 1.0f64..1e5,
            requests in prop::collection::vec((1u64..20_000, 0u64..50_000_000), 1..300),
        ) {
            let r = rate(per_second, burst);
            let b = Bucket::default();
            let start = 5 * SEC;
            let mut now = start;
            let mut passed = 0u64;
            let mut largest = 0u64;
            for (i, (n, gap)) in requests.into_iter().enumerate() {
                now += gap;
                if let Ok(end) = b.take(n, r, now) {
                    // Every third charge is refunded at once (a request that failed after
                    // its check): it must not count, and must not free anyone else's.
                    if i % 3 == 2 {
                        b.refund(n, r, end, now);
                        continue;
                    }
                    passed += n;
                    largest = largest.max(n);
                }
            }
            let elapsed = (now - start) as f64 / 1e9;
            let bound = burst + per_second * elapsed + (largest as f64 - burst).max(0.0);
            prop_assert!(passed as f64 <= bound + 1.0, "{passed} > {bound}");
        }
    }
}

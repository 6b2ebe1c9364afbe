//! The one retry policy of every retry loop: exponential backoff with jitter.
//!
//! Without jitter every node of a fleet that saw the same outage retries at the same
//! instants, and the upstream that just came back takes the whole fleet's backlog in
//! lockstep. Each wait here is drawn uniformly from the upper half of the current step
//! ("equal jitter"): spread enough to break the lockstep, never so short that a retry is
//! immediate. Steps double from `min` to `max`; a success resets them.
//!
//! May call: nothing of the crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Backoff state of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    /// xorshift64 state: a different sequence in every loop of every process.
    rng: u64,
}

impl Backoff {
    /// Steps from `min` (at least 1 ms) doubling to `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let mut h = RandomState::new().build_hasher();
        h.write_u64(min.as_nanos() as u64);
        Self {
            min,
            max: max.max(min),
            step: min,
            rng: h.finish() | 1,
        }
    }

    /// The wait before the next attempt, in `[step/2, step]`; the step then doubles.
    pub fn next_wait(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.step.as_nanos() as u64;
        let half = step / 2;
        let wait = Duration::from_nanos(half + self.rng % (step - half + 1));
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// The longest the next wait can be (for logs).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// After a success: the next failure waits about `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_within_the_upper_half_of_each_step_and_stop_at_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        for step in [100u64, 200, 400, 800, 800, 800] {
            let w = b.next_wait();
            let step = Duration::from_millis(step);
            assert!(
                w >= step / 2 && w <= step,
                "{w:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[test]
    fn two_loops_do_not_retry_in_lockstep() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let wa: Vec<Duration> = (0..6).map(|_| a.next_wait()).collect();
        let wb: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        assert_ne!(wa, wb, "same waits in two loops: no jitter");
    }
}

//! The health of one upstream as this node sees it, from its probes: a small state machine
//! with thresholds and a hold-down, so one lost probe does not fail over and one good probe
//! does not fail back.
//!
//! Pure: probe outcomes and the clock come in as arguments, so every rule is unit-tested
//! with exact instants.
//!
//! Rules (also in `docs/operations.md` once probes run):
//! - `fail_after` consecutive failed probes mark an upstream `Down`;
//! - a successful probe slower than `slow` marks it `Degraded` (still routed to);
//! - a `Down` upstream needs `recover_after` consecutive successes, and then `hold_down` more
//!   time without a failure, before it is `Up` again; any failure restarts that.

use std::time::{Duration, Instant};

/// What routing needs to know of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Answering probes in time.
    Up,
    /// Answering, but slowly: still used.
    Degraded,
    /// Not answering: routes avoid it.
    Down,
}

impl Health {
    /// Whether traffic may go there.
    pub fn usable(self) -> bool {
        self != Health::Down
    }

    /// `up`, `degraded` or `down`, as gossiped and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }

    /// The inverse of [`Health::as_str`].
    pub fn parse(s: &str) -> Option<Health> {
        match s {
            "up" => Some(Health::Up),
            "degraded" => Some(Health::Degraded),
            "down" => Some(Health::Down),
            _ => None,
        }
    }
}

/// Thresholds of the state machine (`cluster.health` in the config, once probes run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failed probes that mark an upstream down.
    pub fail_after: u32,
    /// Consecutive successful probes before a down upstream starts its hold-down.
    pub recover_after: u32,
    /// Time a recovering upstream must stay good before it is up again.
    pub hold_down: Duration,
    /// A probe slower than this marks the upstream degraded.
    pub slow: Duration,
}

impl Default for HealthPolicy {
    /// Probes every second or so: down within about 3 s of an outage, back 30 s after it
    /// ends (industry plans we were given: detection under 30 s, recovery under 5 min).
    fn default() -> Self {
        Self {
            fail_after: 3,
            recover_after: 3,
            hold_down: Duration::from_secs(30),
            slow: Duration::from_secs(1),
        }
    }
}

/// One probe's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Answered, in this long.
    Ok(Duration),
    /// Failed or timed out.
    Failed,
}

/// A change of state, for logs, metrics and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

/// One upstream's state as this node's probes see it.
#[derive(Debug, Clone)]
pub struct UpstreamHealth {
    policy: HealthPolicy,
    state: Health,
    failures: u32,
    successes: u32,
    /// When a down upstream met `recover_after`; it is up once `hold_down` has passed.
    recovering_since: Option<Instant>,
    /// When the state last changed.
    since: Instant,
}

impl UpstreamHealth {
    /// A new upstream, assumed up until probes say otherwise (a gateway starting during an
    /// outage finds out within `fail_after` probes; assuming down would refuse traffic on
    /// every restart).
    pub fn new(policy: HealthPolicy, now: Instant) -> Self {
        Self {
            policy,
            state: Health::Up,
            failures: 0,
            successes: 0,
            recovering_since: None,
            since: now,
        }
    }

    /// The current state.
    pub fn state(&self) -> Health {
        self.state
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Takes one probe result at `now`; returns the transition it caused, if any.
    pub fn observe(&mut self, probe: Probe, now: Instant) -> Option<Transition> {
        let next = match (self.state, probe) {
            (Health::Down, Probe::Failed) => {
                self.successes = 0;
                self.recovering_since = None;
                Health::Down
            }
            (Health::Down, Probe::Ok(_)) => {
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.policy.recover_after {
                    let since = *self.recovering_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= self.policy.hold_down {
                        Health::Up
                    } else {
                        Health::Down
                    }
                } else {
                    Health::Down
                }
            }
            (_, Probe::Failed) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.policy.fail_after {
                    Health::Down
                } else {
                    self.state
                }
            }
            (_, Probe::Ok(latency)) => {
                self.failures = 0;
                if latency > self.policy.slow {
                    Health::Degraded
                } else {
                    Health::Up
                }
            }
        };
        if next == self.state {
            return None;
        }
        let t = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        self.since = now;
        self.failures = 0;
        self.successes = 0;
        self.recovering_since = None;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Probe = Probe::Ok(Duration::from_millis(5));

    fn policy() -> HealthPolicy {
        HealthPolicy {
            fail_after: 3,
            recover_after: 2,
            hold_down: Duration::from_secs(10),
            slow: Duration::from_millis(500),
        }
    }

    #[test]
    fn down_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut h = UpstreamHealth::new(policy(), t0);
        let s = |n: u64| t0 + Duration::from_secs(n);
        assert_eq!(h.observe(Probe::Failed, s(1)), None);
        assert_eq!(h.observe(Probe::Failed, s(2)), None);
        // A success in between resets the count: no flapping on sporadic loss.
        assert_eq!(h.observe(FAST, s(3)), None);
        assert_eq!(h.observe(Probe::Failed, s(4)), None);
        assert_eq!(h.observe(Probe::Failed, s(5)), None);
        assert_eq!(
            h.observe(Probe::Failed, s(6)),
            Some(Transition {
                from: Health::Up,
                to: Health::Down
            })
        );
        assert_eq!(h.since(), s(6));
        assert!(!h.state().usable());
    }

    #[test]
    fn back_up_only_after_the_hold_down_without_a_failure() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut h = UpstreamHealth::new(policy(), t0);
        for n in 1..=3 {
            h.observe(Probe::Failed, s(n));
        }
        assert_eq!(h.state(), Health::Down);
        // Two successes start the hold-down at s(5); a failure at s(8) restarts it all.
        h.observe(FAST, s(4));
        h.observe(FAST, s(5));
        h.observe(FAST, s(7));
        h.observe(Probe::Failed, s(8));
        h.observe(FAST, s(9));
        assert_eq!(h.observe(FAST, s(10)), None, "hold-down starts at s(10)");
        assert_eq!(h.observe(FAST, s(19)), None, "9 s is not 10");
        assert_eq!(
            h.observe(FAST, s(20)),
            Some(Transition {
                from: Health::Down,
                to: Health::Up
            })
        );
    }

    #[test]
    fn slow_answers_degrade_without_failing_over() {
        let t0 = Instant::now();
        let mut h = UpstreamHealth::new(policy(), t0);
        let slow = Probe::Ok(Duration::from_secs(2));
        assert_eq!(
            h.observe(slow, t0),
            Some(Transition {
                from: Health::Up,
                to: Health::Degraded
            })
        );
        assert!(h.state().usable());
        assert_eq!(
            h.observe(FAST, t0),
            Some(Transition {
                from: Health::Degraded,
                to: Health::Up
            })
        );
    }
}

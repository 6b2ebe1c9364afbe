//! The global budget of request bytes in flight: what all connections of all listeners are
//! reading, decompressing and decoding at once (`listen.max_inflight_bytes`).
//!
//! Per-request limits bound one request; this bounds their sum, so hundreds of connections
//! that each stay under the per-request limits (a stream per connection that never finishes
//! its body, say) cannot add up to more memory than the operator allowed. A request charges
//! its body as it arrives (what arrived, not what it declared), then its decompressed size before decompressing and its decoded
//! batch once decoded; a charge that does not fit is refused (503 with `Retry-After`: the
//! sender retries once others finished) rather than waited for, since waiting would hold the
//! connection and what it already read. Everything is released when the request's
//! [`Reservation`] drops, whatever the outcome.
//!
//! Lock-free: one atomic add per charge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The shared bound and what is charged against it now.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    gauge: metrics::Gauge,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        metrics::gauge!("traceo_inflight_limit_bytes").set(limit as f64);
        Arc::new(MemoryBudget {
            limit,
            used: AtomicU64::new(0),
            gauge: metrics::gauge!("traceo_inflight_bytes"),
        })
    }

    /// An empty reservation for one request.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Bytes charged now, over every request.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The configured bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn try_charge(&self, n: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|&v| v <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.increment(n as f64);
                    return true;
                }
                Err(seen) => cur = seen,
            }
        }
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.decrement(n as f64);
    }
}

/// One request's share of the budget; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

/// A charge did not fit in the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gateway is reading and decoding {used} bytes of requests, and {wanted} more would pass its budget of {limit} bytes (listen.max_inflight_bytes); retry shortly")]
pub struct OverBudget {
    /// Bytes in flight over all requests when it was refused.
    pub used: u64,
    /// What this request asked for.
    pub wanted: u64,
    /// The budget.
    pub limit: u64,
}

impl Reservation {
    /// Charges `n` more bytes to this request.
    pub fn grow(&mut self, n: u64) -> Result<(), OverBudget> {
        if self.budget.try_charge(n) {
            self.bytes += n;
            Ok(())
        } else {
            Err(OverBudget {
                used: self.budget.used(),
                wanted: n,
                limit: self.budget.limit,
            })
        }
    }

    /// Charges enough to make this request's total `total` bytes (no-op when it already is).
    pub fn grow_to(&mut self, total: u64) -> Result<(), OverBudget> {
        match total.checked_sub(self.bytes) {
            Some(more) if more > 0 => self.grow(more),
            _ => Ok(()),
        }
    }

    /// Bytes this request holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_up_to_the_limit_and_refuses_past_it() {
        let b = MemoryBudget::new(100);
        let mut r1 = b.reservation();
        r1.grow(60).unwrap();
        let mut r2 = b.reservation();
        let e = r2.grow(41).unwrap_err();
        assert_eq!(
            e,
            OverBudget {
                used: 60,
                wanted: 41,
                limit: 100
            }
        );
        r2.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        assert!(r2.grow(1).is_err());
    }

    #[test]
    fn dropping_a_reservation_gives_its_bytes_back() {
        let b = MemoryBudget::new(100);
        {
            let mut r = b.reservation();
            r.grow(70).unwrap();
            r.grow_to(90).unwrap();
            assert_eq!(r.bytes(), 90);
            r.grow_to(50).unwrap();
            assert_eq!(r.bytes(), 90);
        }
        assert_eq!(b.used(), 0);
        b.reservation().grow(100).unwrap();
        assert_eq!(b.used(), 0);
    }
}

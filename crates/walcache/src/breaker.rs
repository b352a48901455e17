//! The circuit breaker around Redis: closed → (N consecutive failures) → open → (cool-down) →
//! half-open → (one probe succeeds) → closed, or (it fails) → open again.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::metrics as m;

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// The breaker's state, as reported by [`Walcache::breaker_state`](crate::Walcache::breaker_state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// One probe call is allowed through to see whether Redis is back.
    HalfOpen,
    /// Calls skip Redis until the cool-down ends.
    Open,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `start` at which the breaker opened.
    opened_at_ms: AtomicU64,
    /// Set while a half-open probe is in flight.
    probing: AtomicU8,
    start: Instant,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        metrics::gauge!(m::BREAKER_STATE).set(f64::from(CLOSED));
        Breaker {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            probing: AtomicU8::new(0),
            start: Instant::now(),
            threshold,
            open_for,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// May a call go to Redis now? In half-open, only one probe at a time is let through.
    ///
    /// The call reports its outcome through the returned [`Admission`]. A probe whose call is
    /// dropped before it reports (its caller's future cancelled by a deadline or a
    /// `select!`) gives the probe back when the admission drops, so the next call probes:
    /// left taken, no call would ever be let through again.
    pub(crate) fn admit(&self) -> Option<Admission<'_>> {
        let probe = match self.state.load(Ordering::Acquire) {
            CLOSED => false,
            OPEN => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                let cool = u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX);
                if self.now_ms().saturating_sub(opened) < cool {
                    return None;
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.transition(HALF_OPEN);
                }
                if !self.try_probe() {
                    return None;
                }
                true
            }
            _ => {
                if !self.try_probe() {
                    return None;
                }
                true
            }
        };
        Some(Admission {
            breaker: self,
            probe,
            settled: false,
        })
    }

    fn try_probe(&self) -> bool {
        self.probing
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn record_success(&self) {
        // Read before writing: every successful call lands here, and an unconditional store
        // would pull the shared cache line into every worker's core in exclusive state.
        if self.failures.load(Ordering::Acquire) != 0 {
            self.failures.store(0, Ordering::Release);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.probing.store(0, Ordering::Release);
            if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
                self.transition(CLOSED);
            }
        }
    }

    fn record_failure(&self) {
        let state = self.state.load(Ordering::Acquire);
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if state == HALF_OPEN || (state == CLOSED && failures >= self.threshold) {
            self.opened_at_ms.store(self.now_ms(), Ordering::Release);
            self.probing.store(0, Ordering::Release);
            if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
                self.transition(OPEN);
            }
        }
    }

    fn transition(&self, to: u8) {
        let label = match to {
            CLOSED => "closed",
            HALF_OPEN => "half_open",
            _ => "open",
        };
        metrics::gauge!(m::BREAKER_STATE).set(f64::from(to));
        metrics::counter!(m::BREAKER_TRANSITIONS_TOTAL, "to" => label).increment(1);
        match to {
            OPEN => tracing::warn!("redis circuit breaker opened"),
            CLOSED => tracing::info!("redis circuit breaker closed"),
            _ => tracing::debug!("redis circuit breaker half-open: probing"),
        }
    }
}

/// One call let through by [`Breaker::admit`]: report its outcome with
/// [`success`](Self::success) or [`failure`](Self::failure). Dropped without either (the call
/// was cancelled), a probe is given back and the breaker is left as it was.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Admission<'_> {
    /// The call succeeded: a probe closes the breaker.
    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    /// The call failed: counted; a probe reopens the breaker.
    pub(crate) fn failure(mut self) {
        self.settled = true;
        self.breaker.record_failure();
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            // No verdict: the next call may probe.
            self.breaker.probing.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_after_probe() {
        let b = Breaker::new(3, Duration::ZERO);
        b.admit().unwrap().failure();
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        // Cool-down of zero: the next call is the half-open probe, and only one at a time.
        let probe = b.admit().expect("the probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_none());
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_some());
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_none(), "cool-down not over");
        let b = Breaker::new(1, Duration::ZERO);
        b.admit().unwrap().failure();
        b.admit().expect("the probe").failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_probe_dropped_without_a_verdict_is_given_back() {
        let b = Breaker::new(1, Duration::ZERO);
        b.admit().unwrap().failure();
        let probe = b.admit().expect("the probe");
        assert!(b.admit().is_none(), "one probe at a time");
        drop(probe); // its call was cancelled
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let again = b.admit().expect("the next call probes");
        again.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}

//! Reconnect and retry pauses.

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with jitter, for reconnects.
#[derive(Debug)]
pub(super) struct Backoff {
    pub(super) attempt: u32,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Reconnecting to PostgreSQL: from 100 ms up to 2 s. Short for the same reason as
    /// Redis's: once PostgreSQL is back, every commit until the daemon reconnects is served
    /// stale from L2 in `available` mode, so the wait after an outage of any length must stay
    /// small (the staleness auditor measured up to ~1 s after a restart already with this
    /// schedule's first steps). One connection attempt every 2 s is no load on a server.
    pub(super) fn postgres() -> Self {
        Backoff {
            attempt: 0,
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    /// Retrying a publish while Redis is away: short, because every commit made while the
    /// daemon waits is served stale from L2 until it publishes (the staleness auditor measured
    /// ~270 ms after a Redis restart with the PostgreSQL schedule). A refused connection costs
    /// nothing; an unreachable host is bounded by the publisher's timeout anyway.
    pub(super) fn redis() -> Self {
        Backoff {
            attempt: 0,
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }

    pub(super) fn next(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(10_000).max(2);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

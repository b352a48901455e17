//! Whether the daemon may certify freshness: heartbeats, `/readyz`, lag.

use std::time::{Duration, Instant};

use walcache_cdc::Lsn;

/// Logs catch-up progress while the daemon is far behind (after a restart, an outage or a
/// large transaction), at most every 10 s, and once when it has caught up.
#[derive(Debug, Default)]
pub(super) struct CatchUp {
    behind_since: Option<(Instant, Lsn)>,
    last_log: Option<Instant>,
}

impl CatchUp {
    /// Lag above which the daemon counts as catching up (and says so).
    const BEHIND_BYTES: u64 = 16 * 1024 * 1024;
    const EVERY: Duration = Duration::from_secs(10);

    pub(super) fn report(&mut self, lag: u64, confirmed: Lsn) {
        let now = Instant::now();
        match self.behind_since {
            None if lag >= Self::BEHIND_BYTES => {
                self.behind_since = Some((now, confirmed));
                self.last_log = Some(now);
                tracing::info!(behind_mib = lag / (1024 * 1024), "catching up with the WAL");
            }
            Some((since, from)) if lag < Self::BEHIND_BYTES => {
                let done_mib = confirmed.0.saturating_sub(from.0) / (1024 * 1024);
                tracing::info!(took = ?since.elapsed(), done_mib, "caught up with the WAL");
                *self = CatchUp::default();
            }
            Some((since, from)) if self.last_log.is_none_or(|t| now - t >= Self::EVERY) => {
                let done = confirmed.0.saturating_sub(from.0);
                let secs = since.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    behind_mib = lag / (1024 * 1024),
                    done_mib = done / (1024 * 1024),
                    mib_per_s = format!("{:.1}", done as f64 / secs / (1024.0 * 1024.0)),
                    "catching up with the WAL"
                );
                self.last_log = Some(now);
            }
            _ => {}
        }
    }
}

//! Timestamps as the replication protocol sends them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds from the Unix epoch (1970-01-01) to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A point in time as PostgreSQL's replication protocol carries it: microseconds since
/// 2000-01-01 00:00:00 UTC (the PostgreSQL epoch), possibly negative.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use walcache_cdc::PgTimestamp;
///
/// let t = PgTimestamp::from_system_time(UNIX_EPOCH + Duration::from_secs(946_684_800));
/// assert_eq!(t, PgTimestamp(0));
/// assert_eq!(t.to_system_time(), Some(UNIX_EPOCH + Duration::from_secs(946_684_800)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts from a [`SystemTime`], saturating at the ends of the `i64` range.
    pub fn from_system_time(time: SystemTime) -> Self {
        let unix_micros = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_micros())
                .map(|m| -m)
                .unwrap_or(i64::MIN),
        };
        PgTimestamp(unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS))
    }

    /// Converts to a [`SystemTime`], or `None` if the platform cannot represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix_micros = i128::from(self.0) + i128::from(PG_EPOCH_UNIX_MICROS);
        let magnitude = Duration::from_micros(u64::try_from(unix_micros.unsigned_abs()).ok()?);
        if unix_micros >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// Microseconds since the PostgreSQL epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversions() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(PgTimestamp::from_system_time(pg_epoch), PgTimestamp(0));
        assert_eq!(
            PgTimestamp::from_system_time(UNIX_EPOCH),
            PgTimestamp(-PG_EPOCH_UNIX_MICROS)
        );
        assert_eq!(
            PgTimestamp(-PG_EPOCH_UNIX_MICROS).to_system_time(),
            Some(UNIX_EPOCH)
        );
        let t = pg_epoch + Duration::from_micros(1_234_567);
        assert_eq!(PgTimestamp::from_system_time(t).to_system_time(), Some(t));
        assert!(PgTimestamp::now().0 > 0);
        // Extreme values never panic.
        let _ = PgTimestamp(i64::MIN).to_system_time();
        let _ = PgTimestamp(i64::MAX).to_system_time();
    }
}

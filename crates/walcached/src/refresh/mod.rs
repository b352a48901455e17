//! Full refresh (DESIGN, consistency contract 6): the safety net for anything the stream could
//! not deliver.
//!
//! The daemon cannot recompute values, so the safety net is expiry: each cycle walks the L2
//! value keys of every namespace the rules write to (their own and their `tag_namespaces`) in
//! one SCAN pass over the prefix (`SCAN MATCH wc:{*}:g[0-9]*`, whatever the number of
//! namespaces), attributes each key to its namespace by its hash tag `{ns}` — keys of other
//! namespaces, and keys that do not have a value key's shape (`wc:{ns}:gen`, …), are left
//! alone — and deletes, at most
//! [`max_deletes_per_second`](RefreshConfig::max_deletes_per_second), every value and cached
//! "not found" stamped at or before the cycle's start, and every key that is not an envelope at
//! all. Leases are left alone (their own time-to-live ends them). Each check-and-delete runs in
//! one Lua script per chunk of one namespace's keys (so of one Redis Cluster slot), so a value
//! refilled between the SCAN and the delete is never removed.
//!
//! **Time is Redis's.** An envelope's stamp is when its fill lease was taken, in µs since the
//! Unix epoch on the Redis server's clock (`TIME`, read inside the library's script). The
//! cycle's start is one `TIME` call when it begins, and the bound beyond which a stamp is
//! corrupt ("implausibly far in the future") is read with `TIME` inside the delete script:
//! neither the services' clocks nor the daemon's enter, so hosts whose clocks disagree cannot
//! keep a value alive past a cycle.
//!
//! After one complete cycle nothing stamped before it survives in L2. L1's bound is the
//! library's `time_to_live`, which must be kept at or below
//! [`interval_secs`](RefreshConfig::interval_secs): then, whatever was lost, nothing older than
//! one interval plus one cycle is served from either tier.
//!
//! **Tag versions are pruned after a complete cycle.** Each namespace's tags hash
//! (`Naming::tags_key`, no time-to-live) would otherwise keep a field for every tag ever
//! invalidated. Each tag invalidation prunes a few fields from a cursor (the library's and the
//! daemon's scripts); a complete cycle also deletes every field older than the cycle's start
//! minus [`MAX_LEASE_TTL`](walcache_protocol::MAX_LEASE_TTL) (`prune_tags` argues why that is
//! safe), whatever the values' time-to-live; the library's bookkeeping fields (`" now"`, the
//! tag clock; `" ttl"`; `" cursor"`) never.
//!
//! The start of the last completed cycle is kept in Redis (`Naming::refresh_last_key`,
//! `{prefix}:refresh:last`, ms since the Unix epoch on the Redis server's clock), so a
//! restarted daemon keeps the schedule instead of starting the interval over — a daemon
//! deployed more often than the interval still refreshes — and does not wipe L2 on every start
//! either.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use crate::config::ConfigError;
use crate::metrics as m;

mod cycle;
pub mod jobs;
mod schedule;

pub use cycle::run_cycle;
pub use jobs::{JobId, RefreshJobs};
pub use schedule::run_schedule;

/// Connecting to Redis and each command's reply: the daemon's one Redis timeout (a SCAN page
/// or one script over a chunk of keys answers in milliseconds; see its reasons).
const REDIS_TIMEOUT: Duration = crate::publisher::REDIS_TIMEOUT;

/// `[refresh]`: the periodic full refresh.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// Seconds between the starts of two cycles; 0 disables the schedule (`walcached refresh`
    /// still runs a cycle on demand). Keep every service's L1 `time_to_live` at or below it.
    /// Default 3600. Env: `WALCACHED_REFRESH_INTERVAL_SECS`.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Most L2 entries deleted per second, so the database never sees a stampede of misses.
    /// Default 5000. Env: `WALCACHED_REFRESH_MAX_DELETES_PER_SECOND`.
    #[serde(default = "default_max_deletes")]
    pub max_deletes_per_second: u64,
    /// `COUNT` of each `SCAN`: keys examined per round trip. Default 500.
    #[serde(default = "default_scan_count")]
    pub scan_count: u64,
}

fn default_interval() -> u64 {
    3600
}
fn default_max_deletes() -> u64 {
    5000
}
fn default_scan_count() -> u64 {
    500
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            interval_secs: default_interval(),
            max_deletes_per_second: default_max_deletes(),
            scan_count: default_scan_count(),
        }
    }
}

impl RefreshConfig {
    /// Smallest non-zero interval: a shorter one would empty L2 continuously.
    pub const MIN_INTERVAL_SECS: u64 = 60;
    /// Largest `scan_count`: a page's keys go into one script call.
    pub const MAX_SCAN_COUNT: u64 = 10_000;

    /// Check each field on its own.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `refresh.<field>`, the value and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval_secs != 0 && self.interval_secs < Self::MIN_INTERVAL_SECS {
            return Err(ConfigError::new(
                "refresh.interval_secs",
                format!(
                    "{}: use 0 to disable the schedule, or at least {} (each cycle empties L2 of \
                     everything older than itself)",
                    self.interval_secs,
                    Self::MIN_INTERVAL_SECS
                ),
            ));
        }
        if self.max_deletes_per_second == 0 {
            return Err(ConfigError::new(
                "refresh.max_deletes_per_second",
                "0: must be at least 1 (default 5000); size it to the misses the database can \
                 take",
            ));
        }
        if !(1..=Self::MAX_SCAN_COUNT).contains(&self.scan_count) {
            return Err(ConfigError::new(
                "refresh.scan_count",
                format!(
                    "{}: use between 1 and {} (default 500)",
                    self.scan_count,
                    Self::MAX_SCAN_COUNT
                ),
            ));
        }
        Ok(())
    }

    /// [`interval_secs`](Self::interval_secs) as a duration; `None` when the schedule is off.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_secs > 0).then(|| Duration::from_secs(self.interval_secs))
    }

    /// Keys checked per script call: a tenth of a second's deletes, at most one SCAN page, so
    /// no burst exceeds a tenth of the per-second budget.
    fn chunk_len(&self) -> usize {
        let n = (self.max_deletes_per_second / 10).clamp(1, self.scan_count.max(1));
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

/// Progress of the refresh, for logs and metrics (every update is exported as a metric too).
#[derive(Debug, Default)]
pub struct RefreshProgress {
    keys_scanned: AtomicU64,
    keys_deleted: AtomicU64,
    cycles_completed: AtomicU64,
    last_cycle_start_ms: AtomicU64,
    last_cycle_end_ms: AtomicU64,
    in_progress: AtomicBool,
}

impl RefreshProgress {
    /// Value keys examined, over every cycle.
    pub fn keys_scanned(&self) -> u64 {
        self.keys_scanned.load(Ordering::Relaxed)
    }
    /// Keys deleted, over every cycle.
    pub fn keys_deleted(&self) -> u64 {
        self.keys_deleted.load(Ordering::Relaxed)
    }
    /// Cycles run to completion.
    pub fn cycles_completed(&self) -> u64 {
        self.cycles_completed.load(Ordering::Relaxed)
    }
    /// Start of the last cycle begun, ms since the Unix epoch on the Redis server's clock (0:
    /// none yet).
    pub fn last_cycle_start_ms(&self) -> u64 {
        self.last_cycle_start_ms.load(Ordering::Relaxed)
    }
    /// End of the last cycle completed, ms since the Unix epoch on the Redis server's clock
    /// (its start plus its duration; 0: none yet).
    pub fn last_cycle_end_ms(&self) -> u64 {
        self.last_cycle_end_ms.load(Ordering::Relaxed)
    }
    /// A cycle is running.
    pub fn in_progress(&self) -> bool {
        self.in_progress.load(Ordering::Relaxed)
    }

    fn begin(&self, start_ms: u64) -> InProgress<'_> {
        self.last_cycle_start_ms.store(start_ms, Ordering::Relaxed);
        self.in_progress.store(true, Ordering::Relaxed);
        metrics::gauge!(m::REFRESH_IN_PROGRESS).set(1.0);
        InProgress(self)
    }

    fn scanned(&self, n: u64) {
        self.keys_scanned.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(m::REFRESH_KEYS_SCANNED_TOTAL).increment(n);
    }

    fn deleted(&self, n: u64) {
        self.keys_deleted.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(m::REFRESH_KEYS_DELETED_TOTAL).increment(n);
    }

    fn completed(&self, end_ms: u64) {
        self.last_cycle_end_ms.store(end_ms, Ordering::Relaxed);
        self.cycles_completed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::REFRESH_CYCLES_TOTAL).increment(1);
        #[allow(clippy::cast_precision_loss)] // ms since the epoch fit an f64's mantissa
        metrics::gauge!(m::REFRESH_LAST_COMPLETED_TIMESTAMP_SECONDS).set(end_ms as f64 / 1000.0);
    }
}

/// Clears "in progress" however the cycle ends (completed, failed, or dropped on shutdown).
struct InProgress<'a>(&'a RefreshProgress);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.in_progress.store(false, Ordering::Relaxed);
        metrics::gauge!(m::REFRESH_IN_PROGRESS).set(0.0);
    }
}

/// What one complete cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// Namespaces walked.
    pub namespaces: usize,
    /// Value keys examined.
    pub keys_scanned: u64,
    /// Keys deleted: stamped at or before the start, or not envelopes.
    pub keys_deleted: u64,
    /// Tag versions pruned after the cycle: fields of the namespaces' tags hashes older than
    /// the cycle's start minus [`MAX_LEASE_TTL`](walcache_protocol::MAX_LEASE_TTL).
    pub tag_versions_pruned: u64,
    /// The cycle's start, µs since the Unix epoch on the Redis server's clock: everything
    /// stamped at or before it is gone.
    pub started_at_micros: u64,
    /// [`started_at_micros`](Self::started_at_micros) in ms, as recorded in Redis.
    pub started_at_ms: u64,
    /// How long the cycle took.
    pub elapsed: Duration,
}

impl fmt::Display for CycleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refresh complete: {} namespaces, {} keys scanned, {} keys deleted, {} tag versions \
             pruned, {:.3} seconds",
            self.namespaces,
            self.keys_scanned,
            self.keys_deleted,
            self.tag_versions_pruned,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The Redis server's clock (`TIME`), µs since the Unix epoch: the clock every stamp is read
/// from.
///
/// # Errors
///
/// Redis errors, or a reply that is not two integers.
pub async fn server_time_micros(
    conn: &mut MultiplexedConnection,
) -> Result<u64, redis::RedisError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    secs.checked_mul(1_000_000)
        .and_then(|us| us.checked_add(micros))
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "TIME out of range")))
}

async fn connect(redis: &redis::Client) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap;

    const BASE: &str = r#"
[postgres]
url = "postgres://walcached@127.0.0.1:5432/app"

[redis]
url = "redis://127.0.0.1:6379/"

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}"]
"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_a_section() {
        let c = Config::parse(BASE, &env(&[])).expect("valid");
        assert_eq!(c.refresh, RefreshConfig::default());
        assert_eq!(c.refresh.interval_secs, 3600);
        assert_eq!(c.refresh.max_deletes_per_second, 5000);
        assert_eq!(c.refresh.scan_count, 500);
        assert_eq!(c.refresh.interval(), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn the_section_and_the_environment_set_fields() {
        let text = format!("{BASE}\n[refresh]\ninterval_secs = 0\nscan_count = 100\n");
        let c = Config::parse(&text, &env(&[])).expect("valid");
        assert_eq!(c.refresh.interval(), None, "0 disables the schedule");
        assert_eq!(c.refresh.scan_count, 100);
        let c = Config::parse(
            BASE,
            &env(&[
                ("WALCACHED_REFRESH_INTERVAL_SECS", "600"),
                ("WALCACHED_REFRESH_MAX_DELETES_PER_SECOND", "250"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.refresh.interval_secs, 600);
        assert_eq!(c.refresh.max_deletes_per_second, 250);
        let e = Config::parse(
            BASE,
            &env(&[("WALCACHED_REFRESH_MAX_DELETES_PER_SECOND", "fast")]),
        )
        .expect_err("not a number");
        assert_eq!(e.field, "WALCACHED_REFRESH_MAX_DELETES_PER_SECOND");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (section, field) in [
            ("interval_secs = 5", "refresh.interval_secs"),
            (
                "max_deletes_per_second = 0",
                "refresh.max_deletes_per_second",
            ),
            ("scan_count = 0", "refresh.scan_count"),
            ("scan_count = 1000000", "refresh.scan_count"),
        ] {
            let text = format!("{BASE}\n[refresh]\n{section}\n");
            let e = Config::parse(&text, &env(&[])).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let text = format!("{BASE}\n[refresh]\nintervall_secs = 60\n");
        let e = Config::parse(&text, &env(&[])).expect_err("unknown field");
        assert!(e.to_string().contains("intervall_secs"), "{e}");
    }
}

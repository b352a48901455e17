//! Full refresh (DESIGN, consistency contract 6): the safety net for anything the stream could
//! not deliver.
//!
//! The daemon cannot recompute values, so the safety net is expiry: each cycle walks every
//! namespace the rules write to (their own and their `tag_namespaces`), SCANs its L2 value
//! keys (`SCAN MATCH wc:{ns}:g<digits>*`) and deletes, at most
//! [`max_deletes_per_second`](RefreshConfig::max_deletes_per_second), every value and cached
//! "not found" stamped at or before the cycle's start, and every key that is not an envelope at
//! all. Leases are left alone (their own time-to-live ends them). Each check-and-delete runs in
//! one Lua script per chunk of a SCAN page, so a value refilled between the SCAN and the delete
//! is never removed.
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
//! minus [`MAX_LEASE_TTL`] (`prune_tags` argues why that is
//! safe), whatever the values' time-to-live; the library's bookkeeping fields (`" now"`, the
//! tag clock; `" ttl"`; `" cursor"`) never.
//!
//! The start of the last completed cycle is kept in Redis (`Naming::refresh_last_key`,
//! `{prefix}:refresh:last`, ms since the Unix epoch on the Redis server's clock), so a
//! restarted daemon keeps the schedule instead of starting the interval over — a daemon
//! deployed more often than the interval still refreshes — and does not wipe L2 on every start
//! either.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use tokio::time::Instant;
use walcache_protocol::{Naming, MAX_LEASE_TTL};

use crate::config::ConfigError;
use crate::metrics as m;

pub mod jobs;
mod schedule;

pub use jobs::{JobId, RefreshJobs};
pub use schedule::run_schedule;

/// Stamps further ahead of the Redis server's clock than this are corrupt envelopes, which
/// would otherwise survive every cycle: deleted. Stamps come from that clock (or from a
/// namespace's tag clock, which runs ahead of it only by what it gains in one microsecond
/// steps), so only a step back of the clock or a failover to a server whose clock is behind
/// puts a genuine stamp ahead of it, by less than this.
const MAX_FUTURE_STAMP: Duration = Duration::from_secs(300);
/// How often a long cycle logs its progress.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Connecting to Redis and each command's reply: the daemon's one Redis timeout (a SCAN page
/// or one script over a chunk of keys answers in milliseconds; see its reasons).
const REDIS_TIMEOUT: Duration = crate::publisher::REDIS_TIMEOUT;
/// Fields of a namespace's tags hash that start with this are the library's bookkeeping (the
/// tag clock `" now"`, `" ttl"`, `" cursor"`; no tag contains a space): never pruned.
const BOOKKEEPING_PREFIX: char = ' ';

/// Check and delete, atomically per key list (one namespace, so one Cluster slot).
/// `allow-oom`: the deletes must run on a Redis at `maxmemory` (see the publisher's script).
const SCRIPT: &str = r"#!lua flags=allow-oom
-- KEYS: value keys of one namespace.
-- ARGV[1]: delete envelopes stamped at or before this time (µs since the Unix epoch, the
-- Redis server's clock: the cycle's start);
-- ARGV[2]: ...and those stamped more than this many µs after the server's TIME now (corrupt:
-- implausibly far in the future).
-- Leases are kept; anything that is not an envelope is deleted. Returns how many were deleted.
local cutoff, allowance = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = redis.call('TIME')
local future = tonumber(now[1]) * 1000000 + tonumber(now[2]) + allowance
local deleted = 0
for _, k in ipairs(KEYS) do
  local head = redis.pcall('GETRANGE', k, 0, 8)
  local delete = true
  if type(head) == 'string' then
    local tag = string.byte(head, 1)
    if tag == 0 and string.byte(head, 2) == 76 then
      delete = false
    elseif (tag == 1 or tag == 2) and #head == 9 then
      local len = redis.call('STRLEN', k)
      if (tag == 1 and len >= 11) or (tag == 2 and len == 9) then
        local t = 0
        for i = 9, 2, -1 do t = t * 256 + string.byte(head, i) end
        delete = t <= cutoff or t > future
      end
    end
  end
  if delete then deleted = deleted + redis.call('DEL', k) end
end
return deleted
";

/// Prune tag versions, atomically per list of fields of one namespace's tags hash: delete
/// each field whose time is still below the threshold (one bumped since the HSCAN is kept),
/// never the bookkeeping (fields starting with a space). `allow-oom`: deletes free memory.
const PRUNE_SCRIPT: &str = r"#!lua flags=allow-oom
-- KEYS[1]: a namespace's tags hash. ARGV[1]: delete fields whose time (µs) is below this;
-- ARGV[2..]: the fields to check. Returns how many were deleted.
local threshold = tonumber(ARGV[1])
local deleted = 0
for i = 2, #ARGV do
  local f = ARGV[i]
  if string.byte(f, 1) ~= 32 then
    local v = tonumber(redis.call('HGET', KEYS[1], f) or '')
    if v and v < threshold then deleted = deleted + redis.call('HDEL', KEYS[1], f) end
  end
end
return deleted
";

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
    /// the cycle's start minus [`MAX_LEASE_TTL`].
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

/// Run one cycle now: walk every namespace's value keys and delete, rate-limited, every value
/// and cached "not found" stamped at or before the cycle's start (the Redis server's `TIME`
/// when it begins), and every key that is not an envelope. Leases and other namespaces' keys
/// are untouched. Duplicate namespaces are walked once. On completion the cycle's start is
/// recorded in Redis for [`run_schedule`], and the namespaces' tag versions older than the
/// start minus [`MAX_LEASE_TTL`] are pruned.
///
/// Dropping the future stops the cycle between two scripts; what was deleted stays deleted.
///
/// # Errors
///
/// The first Redis error (the cycle is then incomplete: run another). A failure while pruning
/// does not fail a completed cycle: it is logged, and the next cycle prunes.
pub async fn run_cycle(
    redis: &redis::Client,
    naming: &Naming,
    namespaces: &[String],
    cfg: &RefreshConfig,
    progress: &RefreshProgress,
) -> Result<CycleReport, redis::RedisError> {
    let started = Instant::now();
    let mut conn = connect(redis).await?;
    // The cutoff: Redis's clock, the one every stamp was read from.
    let start_us = server_time_micros(&mut conn).await?;
    let start_ms = start_us / 1000;
    let _running = progress.begin(start_ms);
    let namespaces: BTreeSet<&str> = namespaces.iter().map(String::as_str).collect();
    tracing::info!(
        namespaces = namespaces.len(),
        max_deletes_per_second = cfg.max_deletes_per_second,
        "refresh cycle started"
    );
    let script = redis::Script::new(SCRIPT);
    let mut pacer = Pacer::new(cfg.max_deletes_per_second);
    let chunk_len = cfg.chunk_len();
    let (mut scanned, mut deleted) = (0_u64, 0_u64);
    let mut last_log = Instant::now();
    for ns in &namespaces {
        let prefix = naming.value_key_prefix(ns);
        let pattern = format!("{}[0-9]*", glob_escape(&prefix));
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(cfg.scan_count)
                .query_async(&mut conn)
                .await?;
            // The pattern is a superset (a key may have more after `g<digit>`): keep value keys.
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| is_value_key(k, prefix.as_bytes()))
                .collect();
            let n = keys.len() as u64;
            scanned += n;
            progress.scanned(n);
            for chunk in keys.chunks(chunk_len) {
                pacer.wait().await;
                let began = Instant::now();
                let mut inv = script.prepare_invoke();
                for k in chunk {
                    inv.key(k.as_slice());
                }
                let d: u64 = inv
                    .arg(start_us)
                    .arg(duration_micros(MAX_FUTURE_STAMP))
                    .invoke_async(&mut conn)
                    .await?;
                pacer.charge(d, began);
                deleted += d;
                progress.deleted(d);
            }
            if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
                last_log = Instant::now();
                tracing::info!(
                    namespace = *ns,
                    keys_scanned = scanned,
                    keys_deleted = deleted,
                    "refresh cycle in progress"
                );
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        tracing::debug!(namespace = *ns, "refresh: namespace done");
    }
    // Recorded only once every namespace is done: it is what the schedule resumes from.
    redis::cmd("SET")
        .arg(naming.refresh_last_key())
        .arg(start_ms)
        .query_async::<()>(&mut conn)
        .await?;
    let mut pruned = 0_u64;
    for ns in &namespaces {
        match prune_tags(&mut conn, naming, ns, start_us, cfg, &mut pacer).await {
            Ok(n) => pruned += n,
            Err(e) => {
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                tracing::warn!(namespace = *ns, error = %e, "pruning the namespace's tag versions failed; the next cycle prunes them");
            }
        }
    }
    let elapsed = started.elapsed();
    let report = CycleReport {
        namespaces: namespaces.len(),
        keys_scanned: scanned,
        keys_deleted: deleted,
        tag_versions_pruned: pruned,
        started_at_micros: start_us,
        started_at_ms: start_ms,
        elapsed,
    };
    progress.completed(start_ms.saturating_add(duration_ms(elapsed)));
    Ok(report)
}

/// After a completed cycle that began at `start_us` (µs, Redis's clock), delete the fields of
/// `namespace`'s tags hash whose time is below `start_us − MAX_LEASE_TTL` — never its
/// bookkeeping (`" now"`, `" ttl"`, `" cursor"`) — in pages of an `HSCAN`, each checked and
/// deleted by one script, paced with the cycle's deletes. Returns how many were deleted.
///
/// Why this is safe: a pruned tag reads as never invalidated (version 0), which matters only
/// for a value carrying it, stamped `s` at or before its time `v`, that would be current again.
/// Such a value's fill landed within `MAX_LEASE_TTL` of `s` (a lease ends by then, and a fill
/// needs its lease) — before `v + MAX_LEASE_TTL < start_us`, so before the cycle began: it was
/// in L2 for the whole SCAN of the namespace's value keys (every generation's), which
/// therefore returned it, and the cycle deleted it (`s ≤ v < start_us`), unless it was gone
/// already. A value written later carries a later stamp. (The tag clock can run ahead of
/// `TIME`, never behind: `s` is at least the real time of its lease, so the bound holds.) A
/// field bumped between the `HSCAN` and the delete is above the threshold again, and the
/// script keeps it.
///
/// # Errors
///
/// Redis errors (a tags hash of the wrong type among them: the publisher deletes it at the
/// next bump, and the namespace is flushed).
async fn prune_tags(
    conn: &mut MultiplexedConnection,
    naming: &Naming,
    namespace: &str,
    start_us: u64,
    cfg: &RefreshConfig,
    pacer: &mut Pacer,
) -> Result<u64, redis::RedisError> {
    let key = naming.tags_key(namespace);
    let threshold = start_us.saturating_sub(duration_micros(MAX_LEASE_TTL));
    let script = redis::Script::new(PRUNE_SCRIPT);
    let chunk_len = cfg.chunk_len();
    let mut pruned = 0_u64;
    let mut cursor = 0_u64;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(cfg.scan_count)
            .query_async(conn)
            .await?;
        let old: Vec<String> = page
            .into_iter()
            .filter(|(field, value)| {
                !field.starts_with(BOOKKEEPING_PREFIX)
                    && value.parse::<u64>().is_ok_and(|v| v < threshold)
            })
            .map(|(field, _)| field)
            .collect();
        for chunk in old.chunks(chunk_len) {
            pacer.wait().await;
            let began = Instant::now();
            let mut inv = script.prepare_invoke();
            inv.key(&key).arg(threshold);
            for field in chunk {
                inv.arg(field);
            }
            let d: u64 = inv.invoke_async(conn).await?;
            pacer.charge(d, began);
            pruned += d;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if pruned > 0 {
        metrics::counter!(m::REFRESH_TAG_VERSIONS_PRUNED_TOTAL).increment(pruned);
        tracing::debug!(namespace, pruned, "refresh: old tag versions pruned");
    }
    Ok(pruned)
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

/// Spaces deletes at `rate` per second: a chunk may start once the deletes before it have been
/// paid for, so at most one chunk's deletes run ahead of the rate, and idle time (a page of
/// fresh keys) does not bank credit for a later burst.
struct Pacer {
    rate: f64,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        #[allow(clippy::cast_precision_loss)] // validated to be a sane number
        let rate = rate.max(1) as f64;
        Pacer {
            rate,
            next: Instant::now(),
        }
    }

    async fn wait(&self) {
        tokio::time::sleep_until(self.next).await;
    }

    /// `deleted` keys were deleted by a chunk that began at `began`.
    fn charge(&mut self, deleted: u64, began: Instant) {
        if deleted > 0 {
            #[allow(clippy::cast_precision_loss)]
            let cost = Duration::from_secs_f64(deleted as f64 / self.rate);
            self.next = self.next.max(began) + cost;
        }
    }
}

/// `prefix` followed by `<digits>:s<digits>:`: the shape of a value key (so the generation
/// counter `…:gen`, which the SCAN pattern cannot exclude by itself, is never touched).
fn is_value_key(key: &[u8], prefix: &[u8]) -> bool {
    fn digits(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0).then(|| &s[n..])
    }
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    let Some(rest) = digits(rest).and_then(|r| r.strip_prefix(b":s")) else {
        return false;
    };
    digits(rest).is_some_and(|r| r.starts_with(b":"))
}

/// Escape Redis glob characters (prefixes and namespaces have none, but keep it exact).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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

    #[test]
    fn only_value_keys_have_the_value_key_shape() {
        let p = Naming::default().value_key_prefix("users");
        let p = p.as_bytes();
        for good in [
            "wc:{users}:g0:s1:42",
            "wc:{users}:g17:s3:",
            "wc:{users}:g1:s1:a:b",
        ] {
            assert!(is_value_key(good.as_bytes(), p), "{good}");
        }
        for bad in [
            "wc:{users}:gen",
            "wc:{users}:schemas",
            "wc:{users}:g:s1:42",
            "wc:{users}:g1:s:42",
            "wc:{users}:g1:s1",
            "wc:{users}:g1x:s1:42",
            "wc:{users2}:g1:s1:42",
            "wc:{users}:tags",
        ] {
            assert!(!is_value_key(bad.as_bytes(), p), "{bad}");
        }
    }

    #[test]
    fn globs_are_escaped_and_chunks_follow_the_rate() {
        assert_eq!(glob_escape("wc:{users}:g"), "wc:{users}:g");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let cfg = |rate, scan| RefreshConfig {
            interval_secs: 3600,
            max_deletes_per_second: rate,
            scan_count: scan,
        };
        assert_eq!(cfg(5000, 500).chunk_len(), 500);
        assert_eq!(cfg(200, 500).chunk_len(), 20);
        assert_eq!(cfg(5, 500).chunk_len(), 1);
        assert_eq!(cfg(100_000, 50).chunk_len(), 50);
    }
}

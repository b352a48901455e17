//! The schedule: one task runs every cycle, scheduled or asked for, one at a time.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use walcache_protocol::Naming;

use super::{
    connect, duration_ms, run_cycle, server_time_micros, RefreshConfig, RefreshJobs,
    RefreshProgress,
};
use crate::metrics as m;

/// After a failed cycle, try again after this long (or after the interval, if shorter).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Run a cycle every [`interval_secs`](RefreshConfig::interval_secs) (no schedule when it is
/// 0), and each manual cycle queued in `jobs` as soon as it is, until `shutdown` is cancelled,
/// which stops a running cycle between two scripts. Every cycle is recorded in `jobs`.
///
/// The next scheduled cycle is due one interval after the start of the last completed one —
/// read from Redis at start-up and compared with the Redis server's clock, so restarts keep
/// the schedule (with none recorded, the first cycle runs at once); afterwards the wait is
/// measured on this process's monotonic clock, and a completed manual cycle moves it on like a
/// scheduled one. A Redis error never stops the daemon: it is logged and counted, and a
/// scheduled cycle is retried after a minute (or the interval, if shorter).
pub async fn run_schedule(
    redis: redis::Client,
    naming: Naming,
    namespaces: Vec<String>,
    cfg: RefreshConfig,
    progress: Arc<RefreshProgress>,
    jobs: Arc<RefreshJobs>,
    shutdown: CancellationToken,
) {
    let interval = cfg.interval();
    if interval.is_none() {
        tracing::info!(
            "full refresh schedule disabled (refresh.interval_secs = 0): cycles run only when \
             asked for"
        );
    }
    let retry = interval.map_or(RETRY_AFTER, |i| RETRY_AFTER.min(i));
    // When the next scheduled cycle is due; `None` until read from Redis.
    let mut due: Option<Instant> = None;
    // When to try reading it again after a failure.
    let mut read_again: Option<Instant> = None;
    loop {
        if let (Some(interval), None) = (interval, due) {
            if read_again.is_none_or(|t| t <= Instant::now()) {
                let read = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = last_completed(&redis, &naming) => r,
                };
                match read {
                    Ok((last, now_ms)) => {
                        let wait = last.map_or(Duration::ZERO, |l| {
                            let due_ms = l.saturating_add(duration_ms(interval));
                            Duration::from_millis(due_ms.saturating_sub(now_ms))
                        });
                        tracing::info!(
                            interval_secs = cfg.interval_secs,
                            last_cycle_start_ms = last,
                            next_in_secs = wait.as_secs(),
                            "full refresh scheduled"
                        );
                        due = Some(Instant::now() + wait);
                        read_again = None;
                    }
                    Err(e) => {
                        redis_error(&e, "cannot read the last refresh time; retrying");
                        read_again = Some(Instant::now() + retry);
                    }
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep_until_opt(due.or(read_again)) => {}
            () = jobs.queued() => {}
        }
        let id = match jobs.start_queued() {
            Some(id) => id,
            None if due.is_some_and(|d| d <= Instant::now()) => match jobs.start_scheduled() {
                Some(id) => id,
                None => continue,
            },
            None => continue,
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => {
                tracing::info!(job = %id, "full refresh cycle stopped by shutdown");
                jobs.finish(&id, Err("stopped by shutdown".to_owned()));
                return;
            }
            r = run_cycle(&redis, &naming, &namespaces, &cfg, &progress)
                .instrument(tracing::info_span!("refresh", job = %id)) => r,
        };
        match outcome {
            Ok(report) => {
                tracing::info!(
                    job = %id,
                    namespaces = report.namespaces,
                    keys_scanned = report.keys_scanned,
                    keys_deleted = report.keys_deleted,
                    tag_versions_pruned = report.tag_versions_pruned,
                    seconds = report.elapsed.as_secs_f64(),
                    "refresh cycle complete"
                );
                jobs.finish(&id, Ok(&report));
                // One interval after the cycle's start.
                due = interval.map(|i| Instant::now() + i.saturating_sub(report.elapsed));
            }
            Err(e) => {
                redis_error(&e, "refresh cycle failed; retrying");
                jobs.finish(&id, Err(format!("redis: {e}")));
                // A scheduled cycle that was due is retried; a failed manual one leaves the
                // schedule as it was.
                let now = Instant::now();
                if let Some(d) = due.as_mut().filter(|d| **d <= now) {
                    *d = now + retry;
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn redis_error(e: &redis::RedisError, what: &str) {
    metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
    tracing::warn!(error = %e, "{what}");
}

/// The start of the last completed cycle, as recorded in Redis, and the Redis server's clock
/// now, both in ms since the Unix epoch.
async fn last_completed(
    redis: &redis::Client,
    naming: &Naming,
) -> Result<(Option<u64>, u64), redis::RedisError> {
    let mut conn = connect(redis).await?;
    let raw: Option<String> = redis::cmd("GET")
        .arg(naming.refresh_last_key())
        .query_async(&mut conn)
        .await?;
    let now_ms = server_time_micros(&mut conn).await? / 1000;
    // Unparsable: as if none were recorded (the next cycle runs at once and rewrites it).
    Ok((raw.and_then(|s| s.parse().ok()), now_ms))
}

//! The latency benchmark's reader process (this binary, [`READER_COMMAND`]): a live walcache
//! handle whose L1 holds every key, watching them leave it.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use walcache::{Cache, Walcache};

use super::{mono_ns, BoxError, LATENCY_NS, READER_POLL, READER_WINDOW};

/// The hidden subcommand of the latency benchmark's reader process.
pub(crate) const READER_COMMAND: &str = "--latency-reader";
/// The reader's signing keys, when the pass is signed (unset: it accepts unsigned messages).
pub(super) const READER_KEYS_ENV: &str = "WALCACHE_BENCH_SIGNING_KEYS";
/// How long the reader keeps watching for stragglers once the daemon has confirmed the last
/// commit.
const READER_GRACE: Duration = Duration::from_secs(1);

/// The reader process: a live walcache handle whose L1 holds keys `0..n` of namespace `lat`;
/// prints `READY`, then watches the keys in each writer's update order and, once stdin is closed (and
/// [`READER_GRACE`] has passed) or every key is gone, prints `E key monotonic_ns` per eviction,
/// `N monotonic_ns` if the handle was ever not live, and one `S …` line of statistics.
pub(crate) fn latency_reader(args: &[String]) -> Result<(), BoxError> {
    let [redis_url, n, writers] = args else {
        return Err("usage: --latency-reader REDIS_URL N WRITERS".into());
    };
    let n: usize = n.parse()?;
    let writers: usize = writers.parse::<usize>()?.max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let builder = Walcache::builder().redis_url(redis_url.as_str());
    let builder = if std::env::var_os(READER_KEYS_ENV).is_some() {
        builder.signing_keys_env(READER_KEYS_ENV)
    } else {
        builder.allow_unsigned()
    };
    let handle = rt.block_on(builder.build())?;
    let cache = filled_latency_cache(&rt, &handle, n, Duration::from_secs(30))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY")?;
    stdout.flush()?;

    let writer_done = Arc::new(AtomicBool::new(false));
    {
        let done = Arc::clone(&writer_done);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            done.store(true, Ordering::Release);
        });
    }
    let mut evicted: Vec<Option<i64>> = vec![None; n];
    // Writer w commits keys w, w + writers, … in order, but the writers drift apart: one
    // window per writer, over the keys that writer has not yet been seen to invalidate.
    let per_writer_window = (READER_WINDOW / writers).max(1);
    let mut los: Vec<usize> = (0..writers).collect();
    let mut sweeps: u64 = 0;
    let mut not_live_sweeps: u64 = 0;
    let mut first_not_live: Option<i64> = None;
    let mut done_at: Option<Instant> = None;
    let watch_start = mono_ns();
    let mut last_sweep = watch_start;
    let mut max_gap: i64 = 0;
    while los.iter().any(|&lo| lo < n) {
        let now = mono_ns();
        max_gap = max_gap.max(now - last_sweep);
        last_sweep = now;
        for lo in &mut los {
            for k in (*lo..n).step_by(writers).take(per_writer_window) {
                if evicted[k].is_none() && !cache.contains_in_l1(&(k as i64)) {
                    evicted[k] = Some(mono_ns());
                }
            }
            while *lo < n && evicted[*lo].is_some() {
                *lo += writers;
            }
        }
        sweeps += 1;
        if !handle.is_live() {
            // Evictions seen now may be a liveness flush, not the key's invalidation.
            not_live_sweeps += 1;
            first_not_live.get_or_insert_with(mono_ns);
        }
        if writer_done.load(Ordering::Acquire) {
            let at = *done_at.get_or_insert_with(Instant::now);
            if at.elapsed() > READER_GRACE {
                break;
            }
        }
        std::thread::sleep(READER_POLL);
    }
    let watched_ns = mono_ns() - watch_start;
    for (k, e) in evicted.iter().enumerate() {
        if let Some(t) = e {
            writeln!(stdout, "E {k} {t}")?;
        }
    }
    if let Some(t) = first_not_live {
        writeln!(stdout, "N {t}")?;
    }
    writeln!(
        stdout,
        "S sweep={:.0}µs max_gap={:.1}ms not_live_sweeps={not_live_sweeps}",
        watched_ns as f64 / 1e3 / sweeps.max(1) as f64,
        max_gap as f64 / 1e6
    )?;
    stdout.flush()?;
    Ok(())
}

/// Once `handle`'s invalidation stream is live (within `live_within`), a cache of namespace
/// [`LATENCY_NS`] whose L1 holds keys `0..n` (each its own value), with room and time to
/// keep them all: what the reader and the fan-out's other subscribers watch leave L1.
pub(crate) fn filled_latency_cache(
    rt: &Runtime,
    handle: &Walcache,
    n: usize,
    live_within: Duration,
) -> Result<Cache<i64, i64>, BoxError> {
    let start = Instant::now();
    while !handle.is_live() {
        if start.elapsed() > live_within {
            return Err("the invalidation stream did not become live".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let cache = handle
        .cache::<i64, i64>(LATENCY_NS)
        .max_capacity(2 * n as u64 + 100)
        .time_to_live(Duration::from_secs(3600))
        .ttl_jitter(0.0)
        .build()?;
    rt.block_on(async {
        for k in 0..n as i64 {
            walcache_benches::fill(&cache, &k, k).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    if let Some(k) = (0..n as i64).find(|k| !cache.contains_in_l1(k)) {
        return Err(format!("key {k} is not in L1 after the fill").into());
    }
    Ok(cache)
}

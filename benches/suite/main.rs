//! The benchmark suite: every walcache tier beside the raw tool beneath it, in one run, on a
//! private Redis and PostgreSQL started through `walcache_testkit`; it rewrites the section of
//! `BENCHMARKS.md` between `<!-- suite:begin -->` and `<!-- suite:end -->` and the SVG plots
//! under `docs/benchmarks/`.
//!
//! `cargo run --release -p walcache-benches --bin suite [-- --quick]`
//!
//! 1. **Tiers under concurrency**: p50/p99/p99.9 and throughput at 1, 8 and 64 tokio tasks on
//!    a multi-thread runtime, for an L1 hit (vs raw moka), an L2 hit (vs a raw redis-rs GET on
//!    a multiplexed connection) and a miss to PostgreSQL (vs the same SELECT through
//!    tokio-postgres), at 64 B, 1 KiB and 16 KiB.
//! 2. **Workloads**: Zipf (s = 1.0) reads over 100k keys with 1% writes (UPDATE + invalidate),
//!    for L1-only, L2-only and two-tier configurations.
//! 3. **Memory**: RSS growth per L1 entry in a child process, walcache vs raw moka.
//! 4. **Stampede**: loads of one cold key under 1,000 readers in 4 processes (children of this
//!    binary), with the Redis lease, with `lease_wait(0)`, and for hand-written cache-aside.
//! 5. **Pipeline**: walcached's drain rate against `pg_recvlogical` on the same slot contents,
//!    commit → L1 eviction (in another process) at several commit rates with where the time
//!    goes, and the daemon's peak RSS through one large transaction (needs the `walcached`
//!    binary next to this one: `cargo build --release -p walcached`).
//!
//! Hidden subcommands, for the child processes it spawns: `--memory-child KIND`,
//! `--stampede-child …`, `--latency-reader …`.

mod caveat;
mod pipeline;
mod report;
mod stages;
mod stampede;

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::{Cache, Walcache};
use walcache_benches::{keyspace_counters, redis_value_key, table, value_of, Servers, KEYS};
use walcache_testkit::{unique_prefix, Zipf};

/// Value sizes of the tiers section (the shared set-up creates the first two tables).
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];
/// Concurrent callers (tokio tasks).
const CONCURRENCY: [usize; 3] = [1, 8, 64];
/// Keys of the workloads table.
const WORKLOAD_KEYS: usize = 100_000;
/// L1 capacity in the workloads (10% of the keys).
const WORKLOAD_L1: u64 = 10_000;
/// Entries of the memory measurement.
const MEMORY_ENTRIES: u64 = 100_000;

/// How long each measured case runs.
#[derive(Clone, Copy)]
struct Mode {
    quick: bool,
    tier_case: Duration,
    /// Operations of the workloads' warm-up and of their measurement.
    workload_warm: u64,
    workload_run: u64,
    stampede_rounds: usize,
    /// Row changes per drained slot.
    drain_rows: u64,
    /// Commit rates (`None` = unthrottled) and commits per rate.
    latency_rates: &'static [(Option<f64>, usize)],
    /// Rows of the large transaction the daemon's RSS is measured through.
    rss_rows: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--memory-child") => {
            memory_child(args.get(2).map_or("", String::as_str));
            return;
        }
        Some(stampede::CHILD_COMMAND) => {
            if let Err(e) = stampede::child(&args[2..]) {
                eprintln!("stampede child: {e}");
                std::process::exit(1);
            }
            return;
        }
        Some(pipeline::READER_COMMAND) => {
            if let Err(e) = pipeline::latency_reader(&args[2..]) {
                eprintln!("latency reader: {e}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    let quick = args.iter().any(|a| a == "--quick");
    caveat::start(quick);
    let mode = if quick {
        Mode {
            quick,
            tier_case: Duration::from_millis(300),
            workload_warm: 20_000,
            workload_run: 40_000,
            stampede_rounds: 2,
            drain_rows: 20_000,
            latency_rates: &[
                (Some(250.0), 250),
                (Some(1000.0), 500),
                (Some(4000.0), 1000),
                (None, 1000),
            ],
            rss_rows: 50_000,
        }
    } else {
        Mode {
            quick,
            tier_case: Duration::from_secs(2),
            workload_warm: 200_000,
            workload_run: 400_000,
            stampede_rounds: 5,
            drain_rows: 300_000,
            latency_rates: &[
                (Some(250.0), 2500),
                (Some(1000.0), 10_000),
                (Some(4000.0), 20_000),
                (None, 20_000),
            ],
            rss_rows: 1_000_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the multi-thread runtime");
    let started = Instant::now();
    let (mut results, servers) = rt.block_on(run(mode));
    eprintln!(
        "suite: stampede (at {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    results.stampede = stampede::run(mode, &servers);
    eprintln!(
        "suite: pipeline (at {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    results.pipeline = Some(pipeline::run(mode, &rt, &servers));
    drop(servers);
    let mode_ops = (mode.workload_warm, mode.workload_run);
    let elapsed = started.elapsed();
    report::write(&results, mode.quick, mode_ops, elapsed);
    eprintln!("suite: done in {:.1} s", elapsed.as_secs_f64());
}

/// Everything the report needs.
pub(crate) struct Results {
    pub(crate) tiers: Vec<TierRow>,
    pub(crate) l2_gets_per_op: Vec<(usize, usize, f64)>,
    pub(crate) clock_ns: f64,
    pub(crate) workloads: Vec<WorkloadRow>,
    pub(crate) memory: Vec<(String, f64)>,
    pub(crate) stampede: Vec<StampedeRow>,
    pub(crate) pipeline: Option<pipeline::PipelineResults>,
    pub(crate) pg_version: String,
    pub(crate) redis_version: String,
}

/// One tier case: walcache and the raw tool at one size and concurrency.
pub(crate) struct TierRow {
    pub(crate) tier: &'static str,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
    pub(crate) walcache: Stats,
    pub(crate) raw: Stats,
}

/// Latency percentiles and throughput of one measured run.
#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) ops: u64,
    pub(crate) ops_per_s: f64,
    pub(crate) mean_ns: f64,
    pub(crate) p50_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) p999_ns: u64,
}

impl Stats {
    fn of(mut ns: Vec<u64>, elapsed: Duration) -> Stats {
        if ns.is_empty() {
            return Stats::default();
        }
        ns.sort_unstable();
        let n = ns.len();
        // Nearest rank: the smallest sample with at least p·n samples at or below it.
        let pct = |p: f64| {
            let rank = (p * n as f64).ceil() as usize;
            ns[rank.clamp(1, n) - 1]
        };
        Stats {
            ops: n as u64,
            ops_per_s: n as f64 / elapsed.as_secs_f64(),
            mean_ns: ns.iter().map(|&x| x as f64).sum::<f64>() / n as f64,
            p50_ns: pct(0.50),
            p99_ns: pct(0.99),
            p999_ns: pct(0.999),
        }
    }
}

/// One workload configuration.
pub(crate) struct WorkloadRow {
    pub(crate) config: &'static str,
    pub(crate) reads: u64,
    pub(crate) writes: u64,
    pub(crate) loads: u64,
    pub(crate) read: Stats,
}

/// One stampede variant, over its rounds.
pub(crate) struct StampedeRow {
    pub(crate) variant: &'static str,
    pub(crate) loads: Vec<u64>,
    pub(crate) all_served_ms: Vec<f64>,
}

/// Run `concurrency` tasks for `duration`, each calling `op(worker, i)` for i = 0, 1, …; `op`
/// returns the time it measured itself (so it can leave set-up untimed). Every
/// [`YIELD_EVERY`] calls a task yields, so all tasks take turns even when an operation never
/// suspends.
async fn measure<F, Fut>(concurrency: usize, duration: Duration, op: F) -> (Vec<u64>, Duration)
where
    F: Fn(usize, u64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            tokio::spawn(async move {
                let mut ns = Vec::with_capacity(1 << 16);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let d = op(w, i).await;
                    ns.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    i += 1;
                    if i % YIELD_EVERY == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ns
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a measuring task"));
    }
    (all, start.elapsed())
}

/// Walcache and the raw tool, each for `duration` in two halves in the order A B B A, so
/// that drift on a shared machine falls on both sides alike.
async fn abba<F, Fut, G, Gut>(
    concurrency: usize,
    duration: Duration,
    walcache: F,
    raw: G,
) -> (Stats, Stats)
where
    F: Fn(usize, u64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Duration> + Send,
    G: Fn(usize, u64) -> Gut + Copy + Send + Sync + 'static,
    Gut: Future<Output = Duration> + Send,
{
    let half = duration / 2;
    let (mut a, ta) = measure(concurrency, half, walcache).await;
    let (mut b, tb) = measure(concurrency, half, raw).await;
    let (b2, tb2) = measure(concurrency, half, raw).await;
    let (a2, ta2) = measure(concurrency, half, walcache).await;
    a.extend(a2);
    b.extend(b2);
    (Stats::of(a, ta + ta2), Stats::of(b, tb + tb2))
}

/// Calls between two yields of a measuring task: rare enough that the call after a yield (its
/// caches cooled by the scheduler) stays out of p99.
pub(crate) const YIELD_EVERY: u64 = 1024;

/// Time one future.
async fn timed<T>(f: impl Future<Output = T>) -> Duration {
    let t = Instant::now();
    black_box(f.await);
    t.elapsed()
}

/// Leak a value to share it with `'static` tasks without a reference count per operation.
fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

/// Worker `w` of `c` cycles through `0..KEYS`, starting spread out from the others.
fn key_of(w: usize, i: u64, c: usize) -> i64 {
    let keys = KEYS as u64;
    ((w as u64 * keys / c as u64 + i) % keys) as i64
}

async fn run(mode: Mode) -> (Results, Servers) {
    let servers = Servers::start().await;
    // The shared set-up creates the 64 B and 1 KiB tables; add 16 KiB and the workload table.
    let insert = servers
        .db
        .prepare(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (id bigint PRIMARY KEY, body text NOT NULL)",
            t = table(SIZES[2])
        ))
        .await
        .expect("prepare");
    servers.db.execute(&insert, &[]).await.expect("create");
    let ins = servers
        .db
        .prepare(&format!(
            "INSERT INTO {} (id, body) VALUES ($1, $2)",
            table(SIZES[2])
        ))
        .await
        .expect("prepare the insert");
    for id in 0..KEYS {
        servers
            .db
            .execute(&ins, &[&id, &value_of(SIZES[2], id)])
            .await
            .expect("insert a 16 KiB row");
    }
    // One statement per call: VACUUM cannot run inside the implicit transaction of a batch.
    for sql in [
        format!("VACUUM ANALYZE {}", table(SIZES[2])),
        "CREATE TABLE wl (id bigint PRIMARY KEY, body text NOT NULL)".to_owned(),
        format!(
            "INSERT INTO wl SELECT g, rpad(g::text || '-', 64, 'abcdefgh') \
             FROM generate_series(0, {}) g",
            WORKLOAD_KEYS - 1
        ),
        "VACUUM ANALYZE wl".to_owned(),
    ] {
        servers
            .db
            .batch_execute(&sql)
            .await
            .expect("create the workload table");
    }
    let pg_version: String = servers
        .db
        .query_one("SHOW server_version", &[])
        .await
        .expect("server_version")
        .get(0);
    let mut conn = servers.redis_connection().await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .expect("INFO server");
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();

    let clock_ns = {
        let n = 1_000_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(Instant::now());
        }
        t.elapsed().as_nanos() as f64 / f64::from(n)
    };

    let mut tiers = Vec::new();
    let mut l2_gets_per_op = Vec::new();
    eprintln!("suite: tiers");
    // One Redis-backed handle per tier for all sizes (the caches are leaked, and with them the
    // handles' subscriptions: fewer handles, fewer bystanders receiving each invalidation).
    let l2_prefix = unique_prefix();
    let l2_handle = servers.walcache(&l2_prefix).await;
    let miss_handle = servers.walcache(&unique_prefix()).await;
    for size in SIZES {
        tiers.extend(l1_tier(mode, size).await);
        let (rows, gets) = l2_tier(mode, &servers, &l2_handle, &l2_prefix, size).await;
        tiers.extend(rows);
        l2_gets_per_op.extend(gets);
        tiers.extend(miss_tier(mode, &servers, &miss_handle, size).await);
    }
    eprintln!("suite: workloads");
    let workloads = workloads(mode, &servers).await;
    eprintln!("suite: memory");
    let memory = memory();
    let results = Results {
        tiers,
        l2_gets_per_op,
        clock_ns,
        workloads,
        memory,
        stampede: Vec::new(),
        pipeline: None,
        pg_version,
        redis_version,
    };
    (results, servers)
}

async fn l1_tier(mode: Mode, size: usize) -> Vec<TierRow> {
    let handle = Walcache::builder()
        .allow_unsigned()
        .without_invalidation_stream()
        .build()
        .await
        .expect("an L1-only handle");
    let cache: &'static Cache<i64, String> = leak(
        handle
            .cache(&format!("l1_{size}"))
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(3600))
            .build()
            .expect("the L1 cache"),
    );
    let moka: &'static moka::sync::Cache<i64, String> = leak(
        moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(3600))
            .build(),
    );
    for id in 0..KEYS {
        walcache_benches::fill(cache, &id, value_of(size, id))
            .await
            .expect("fill");
        moka.insert(id, value_of(size, id));
    }
    cache.run_pending_tasks();
    moka.run_pending_tasks();
    assert!((0..KEYS).all(|id| cache.contains_in_l1(&id) && moka.contains_key(&id)));
    let mut rows = Vec::new();
    for c in CONCURRENCY {
        let (walcache, raw) = abba(
            c,
            mode.tier_case,
            move |w, i| timed(async move { cache.get(&key_of(w, i, c)).await.expect("an L1 hit") }),
            move |w, i| timed(async move { moka.get(&key_of(w, i, c)).expect("a moka hit") }),
        )
        .await;
        rows.push(TierRow {
            tier: "L1 hit",
            size,
            concurrency: c,
            walcache,
            raw,
        });
    }
    rows
}

async fn l2_tier(
    mode: Mode,
    servers: &Servers,
    handle: &Walcache,
    prefix: &str,
    size: usize,
) -> (Vec<TierRow>, Vec<(usize, usize, f64)>) {
    let ns = format!("l2_{size}");
    // An L1 entry lives 1 ms: a worker comes back to a key only after KEYS / concurrency reads.
    let cache: &'static Cache<i64, String> = leak(
        handle
            .cache(&ns)
            .max_capacity(10_000)
            .time_to_live(Duration::from_millis(1))
            .ttl_jitter(0.0)
            .build()
            .expect("the L2 cache"),
    );
    let keys: &'static Vec<String> = leak(
        (0..KEYS)
            .map(|id| redis_value_key(prefix, &ns, id))
            .collect(),
    );
    let conn: &'static redis::aio::MultiplexedConnection = leak(servers.redis_connection().await);
    let mut info = conn.clone();
    for id in 0..KEYS {
        walcache_benches::fill(cache, &id, value_of(size, id))
            .await
            .expect("fill");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(cache.get(&0).await.is_some(), "an L2 hit");
    let mut rows = Vec::new();
    let mut gets = Vec::new();
    for c in CONCURRENCY {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = keyspace_counters(&mut info).await;
        let (walcache, raw) = abba(
            c,
            mode.tier_case,
            move |w, i| timed(async move { cache.get(&key_of(w, i, c)).await.expect("an L2 hit") }),
            move |w, i| {
                let key = &keys[key_of(w, i, c) as usize];
                let mut conn = conn.clone();
                timed(async move {
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .expect("GET");
                    v.expect("a Redis hit")
                })
            },
        )
        .await;
        let after = keyspace_counters(&mut info).await;
        // Every raw GET is one keyspace hit; the rest are walcache's.
        let walcache_hits = (after.0 - before.0).saturating_sub(raw.ops);
        gets.push((size, c, walcache_hits as f64 / walcache.ops as f64));
        rows.push(TierRow {
            tier: "L2 hit",
            size,
            concurrency: c,
            walcache,
            raw,
        });
    }
    (rows, gets)
}

static LOADS: AtomicU64 = AtomicU64::new(0);

async fn miss_tier(mode: Mode, servers: &Servers, handle: &Walcache, size: usize) -> Vec<TierRow> {
    let cache: &'static Cache<i64, String> = leak(
        handle
            .cache(&format!("miss_{size}"))
            .max_capacity(10_000)
            .build()
            .expect("the miss cache"),
    );
    let db: &'static tokio_postgres::Client = leak(
        servers
            .pg
            .connect(&servers.database)
            .await
            .expect("connect"),
    );
    let select: &'static tokio_postgres::Statement = leak(
        db.prepare(&format!("SELECT body FROM {} WHERE id = $1", table(size)))
            .await
            .expect("prepare the SELECT"),
    );
    let mut rows = Vec::new();
    for c in CONCURRENCY {
        let before = LOADS.load(Ordering::Relaxed);
        let (walcache, raw) = abba(
            c,
            mode.tier_case,
            move |w, i| async move {
                let k = key_of(w, i, c);
                cache.invalidate(&k).await.expect("invalidate");
                timed(cache.try_get_with(&k, async move {
                    LOADS.fetch_add(1, Ordering::Relaxed);
                    db.query_one(select, &[&k])
                        .await
                        .map(|r| r.get::<_, String>(0))
                }))
                .await
            },
            move |w, i| {
                let k = key_of(w, i, c);
                timed(async move {
                    let row = db.query_one(select, &[&k]).await.expect("SELECT");
                    row.get::<_, String>(0)
                })
            },
        )
        .await;
        let loads = LOADS.load(Ordering::Relaxed) - before;
        assert_eq!(loads, walcache.ops, "every walcache read must load");
        rows.push(TierRow {
            tier: "miss to PostgreSQL",
            size,
            concurrency: c,
            walcache,
            raw,
        });
    }
    rows
}

/// splitmix64: a tiny generator whose consecutive seeds still give independent-looking output.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A rank of `zipf`.
    fn zipf(&mut self, zipf: &Zipf) -> usize {
        zipf.rank(self.unit())
    }
}

/// Concurrent callers of the workloads.
const WORKLOAD_CALLERS: usize = 8;
/// Writes per 10,000 operations.
const WRITES_PER_10K: u64 = 100;

async fn workloads(mode: Mode, servers: &Servers) -> Vec<WorkloadRow> {
    let zipf: &'static Zipf = leak(Zipf::new(WORKLOAD_KEYS, 1.0));
    let db: &'static tokio_postgres::Client = leak(
        servers
            .pg
            .connect(&servers.database)
            .await
            .expect("connect"),
    );
    let select: &'static tokio_postgres::Statement = leak(
        db.prepare("SELECT body FROM wl WHERE id = $1")
            .await
            .expect("prepare"),
    );
    let update: &'static tokio_postgres::Statement = leak(
        db.prepare("UPDATE wl SET body = $2 WHERE id = $1")
            .await
            .expect("prepare"),
    );
    let mut rows = Vec::new();
    for config in ["L1 only", "L2 only", "two tiers"] {
        let handle = match config {
            "L1 only" => Walcache::builder()
                .allow_unsigned()
                .without_invalidation_stream()
                .build()
                .await
                .expect("an L1-only handle"),
            _ => servers.walcache(&unique_prefix()).await,
        };
        let builder = handle.cache::<i64, String>("wl");
        let builder = if config == "L2 only" {
            builder
                .max_capacity(0)
                .time_to_live(Duration::from_millis(1))
        } else {
            builder
                .max_capacity(WORKLOAD_L1)
                .time_to_live(Duration::from_secs(600))
        };
        let cache: &'static Cache<i64, String> = leak(builder.build().expect("the cache"));
        let loads: &'static AtomicU64 = leak(AtomicU64::new(0));
        let writes: &'static AtomicU64 = leak(AtomicU64::new(0));
        let op = move |w: usize, i: u64| async move {
            // A per-(worker, op) stream: deterministic, independent across workers.
            let mut rng = Rng(((w as u64) << 56) ^ i);
            let k = rng.zipf(zipf) as i64;
            if rng.next() % 10_000 < WRITES_PER_10K {
                writes.fetch_add(1, Ordering::Relaxed);
                let body = format!("{k}-w{i}-{w}");
                db.execute(update, &[&k, &body]).await.expect("UPDATE");
                cache.invalidate(&k).await.expect("invalidate");
                return None;
            }
            let t = Instant::now();
            let v = cache
                .try_get_with(&k, async move {
                    loads.fetch_add(1, Ordering::Relaxed);
                    db.query_one(select, &[&k])
                        .await
                        .map(|r| r.get::<_, String>(0))
                })
                .await
                .expect("a read");
            black_box(v);
            Some(t.elapsed())
        };
        // Warm up, then measure from the counters' current values.
        let per_worker = |ops: u64| ops / WORKLOAD_CALLERS as u64;
        let _ = measure_reads(WORKLOAD_CALLERS, per_worker(mode.workload_warm), op).await;
        let (l0, w0) = (
            loads.load(Ordering::Relaxed),
            writes.load(Ordering::Relaxed),
        );
        let read = measure_reads(WORKLOAD_CALLERS, per_worker(mode.workload_run), op).await;
        rows.push(WorkloadRow {
            config,
            reads: read.ops,
            writes: writes.load(Ordering::Relaxed) - w0,
            loads: loads.load(Ordering::Relaxed) - l0,
            read,
        });
        eprintln!("suite: workload {config} done");
    }
    rows
}

/// Run `concurrency` tasks calling `op(worker, i)` `per_worker` times each; operations are
/// reads (`Some(latency)`) or writes (`None`, untimed). Every configuration runs the same
/// number of operations, so its hit ratio does not depend on its speed.
async fn measure_reads<F, Fut>(concurrency: usize, per_worker: u64, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Option<Duration>> + Send,
{
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = SEQ.fetch_add(1 << 40, Ordering::Relaxed);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            tokio::spawn(async move {
                let mut ns = Vec::with_capacity(1 << 16);
                for i in 0..per_worker {
                    if let Some(d) = op(w, base + i).await {
                        ns.push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    }
                    if (i + 1) % YIELD_EVERY == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                ns
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a measuring task"));
    }
    Stats::of(all, start.elapsed())
}

/// RSS growth per entry for each kind of L1, each in a fresh child process.
fn memory() -> Vec<(String, f64)> {
    let exe = std::env::current_exe().expect("the suite's own path");
    ["walcache", "moka_i64", "moka_arc_str"]
        .into_iter()
        .map(|kind| {
            let out = std::process::Command::new(&exe)
                .args(["--memory-child", kind])
                .output()
                .expect("run the memory child");
            assert!(out.status.success(), "memory child {kind} failed");
            let bytes: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("the child prints bytes per entry");
            (kind.to_owned(), bytes)
        })
        .collect()
}

/// Resident set size from `/proc/self/statm`, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

/// The memory child: fill one L1 with [`MEMORY_ENTRIES`] 64 B values keyed by `i64`, print the
/// RSS growth per entry.
fn memory_child(kind: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = MEMORY_ENTRIES;
    let keys: Vec<i64> = (0..n as i64).collect();
    let values: Vec<String> = (0..n as i64).map(|id| value_of(64, id)).collect();
    let per_entry = rt.block_on(async {
        match kind {
            "walcache" => {
                let handle = Walcache::builder()
                    .allow_unsigned()
                    .without_invalidation_stream()
                    .build()
                    .await
                    .expect("handle");
                let cache: Cache<i64, String> = handle
                    .cache("mem")
                    .max_capacity(2 * n)
                    .build()
                    .expect("cache");
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    walcache_benches::fill(&cache, k, v).await.expect("fill");
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
            "moka_i64" => {
                let cache: moka::sync::Cache<i64, String> = moka::sync::Cache::builder()
                    .max_capacity(2 * n)
                    .time_to_live(Duration::from_secs(60))
                    .build();
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    cache.insert(*k, v);
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
            _ => {
                let cache: moka::sync::Cache<Arc<str>, String> = moka::sync::Cache::builder()
                    .max_capacity(2 * n)
                    .time_to_live(Duration::from_secs(60))
                    .build();
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    cache.insert(Arc::from(k.to_string()), v);
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
        }
    });
    println!("{}", per_entry as f64 / n as f64);
}

//! The benchmark suite: every walcache tier beside the raw tool beneath it, in one run, on a
//! private Redis and PostgreSQL started through `walcache_testkit`; it rewrites the section of
//! `BENCHMARKS.md` between `<!-- suite:begin -->` and `<!-- suite:end -->` and the SVG plots
//! under `docs/benchmarks/`.
//!
//! `cargo run --release -p walcache-benches --bin suite [-- --quick]`; `-- --tiers-only` (with
//! or without `--quick`) runs the tiers alone and prints them, writing nothing.
//!
//! 1. **Tiers under concurrency**: p50/p99/p99.9 and throughput at 1, 8 and 64 tokio tasks on
//!    a multi-thread runtime, for an L1 hit (vs raw moka), an L2 hit (vs a raw redis-rs GET on
//!    a multiplexed connection) and a miss to PostgreSQL (vs the same SELECT through
//!    tokio-postgres, and vs hand-written cache-aside: GET → SELECT → SET PX), at 64 B, 1 KiB
//!    and 16 KiB.
//! 2. **Workloads**: Zipf (s = 1.0) reads over 100k keys with 1% writes (UPDATE + invalidate),
//!    for L1-only, L2-only and two-tier configurations.
//! 3. **Memory**: RSS growth per L1 entry in a child process, walcache vs raw moka.
//! 4. **Stampede**: loads of one cold key under 1,000 readers in 4 processes (children of this
//!    binary), with the Redis lease, with `lease_wait(0)`, and for hand-written cache-aside.
//! 5. **Pipeline**: walcached's drain rate against `pg_recvlogical` on the same slot contents,
//!    commit → L1 eviction (in another process) at several commit rates with where the time
//!    goes, and the daemon's peak RSS through one large transaction (needs the `walcached`
//!    binary next to this one: `cargo build --release -p walcached`).
//! 6. **Costs at scale**: 500 namespaces (caches, daemon start, heartbeats, re-subscribe and
//!    gap recovery), full-refresh cycles over more and more namespaces, 50 subscribed handles
//!    (commit → eviction, publish cost), and the drain rate as `stream.batch_max_keys` varies.
//!
//! Hidden subcommands, for the child processes it spawns: `--memory-child KIND`,
//! `--stampede-child …`, `--latency-reader …`, `--scale-subscriber …`.

mod caveat;
mod cpu;
mod memory;
mod pipeline;
mod report;
mod scale;
mod stages;
mod stampede;
mod tiers;
mod workloads;

use std::hint::black_box;
use std::time::{Duration, Instant};

use walcache_benches::{table, value_of, Servers, KEYS};

pub(crate) use tiers::TierRow;
pub(crate) use workloads::{WORKLOAD_CALLERS, WRITES_PER_10K};

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
    /// Costs at scale: namespaces of the large configuration and repetitions of each of its
    /// liveness measurements; subscribed handles of the fan-out and its commits; single-row
    /// commits per batch-size drain; value keys of the refresh cycles and the namespace counts
    /// they are spread over.
    scale_namespaces: usize,
    scale_reps: usize,
    fanout_handles: &'static [usize],
    fanout_commits: usize,
    batch_changes: u64,
    refresh_keys: u64,
    refresh_namespaces: &'static [usize],
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--memory-child") => {
            memory::child(args.get(2).map_or("", String::as_str));
            return;
        }
        Some(stampede::CHILD_COMMAND) => {
            if let Err(e) = stampede::child(&args[2..]) {
                eprintln!("stampede child: {e}");
                std::process::exit(1);
            }
            return;
        }
        Some(scale::fanout::SUBSCRIBER_COMMAND) => {
            if let Err(e) = scale::fanout::subscriber(&args[2..]) {
                eprintln!("scale subscriber: {e}");
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
            scale_namespaces: 20,
            scale_reps: 2,
            fanout_handles: &[1, 3],
            fanout_commits: 200,
            batch_changes: 300,
            refresh_keys: 1000,
            refresh_namespaces: &[1, 20],
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
            scale_namespaces: 500,
            scale_reps: 10,
            fanout_handles: &[1, 10, 50],
            fanout_commits: 3000,
            batch_changes: 10_000,
            refresh_keys: 20_000,
            refresh_namespaces: &[1, 10, 100, 500],
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the multi-thread runtime");
    let started = Instant::now();
    if args.iter().any(|a| a == "--tiers-only") {
        // An experiment's shortcut: the tiers alone, printed, no report written.
        rt.block_on(tiers_only(mode));
        return;
    }
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
    eprintln!(
        "suite: costs at scale (at {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    results.scale = Some(scale::run(mode, &rt, &servers));
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
    pub(crate) scale: Option<scale::ScaleResults>,
    pub(crate) pg_version: String,
    pub(crate) redis_version: String,
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

/// Start the servers and create the tables every section reads.
async fn start_servers() -> Servers {
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
    servers
}

async fn run(mode: Mode) -> (Results, Servers) {
    let servers = start_servers().await;
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

    eprintln!("suite: tiers");
    let (tiers, l2_gets_per_op) = tiers::run(mode, &servers).await;
    eprintln!("suite: workloads");
    let workloads = workloads::run(mode, &servers).await;
    eprintln!("suite: memory");
    let memory = memory::run();
    let results = Results {
        tiers,
        l2_gets_per_op,
        clock_ns,
        workloads,
        memory,
        stampede: Vec::new(),
        pipeline: None,
        scale: None,
        pg_version,
        redis_version,
    };
    (results, servers)
}

/// `--tiers-only`: run the tiers and print each row's p50s and the miss's CPU per read.
async fn tiers_only(mode: Mode) {
    let servers = start_servers().await;
    let (tiers, _) = tiers::run(mode, &servers).await;
    for t in &tiers {
        let hand = t.by_hand.map_or(String::new(), |h| {
            format!(" by hand {:.1} µs", h.p50_ns as f64 / 1e3)
        });
        eprintln!(
            "{} {} B × {}: walcache {:.1} µs raw {:.1} µs{hand}",
            t.tier,
            t.size,
            t.concurrency,
            t.walcache.p50_ns as f64 / 1e3,
            t.raw.p50_ns as f64 / 1e3
        );
        if let Some((w, h)) = t.cpu {
            eprintln!("  CPU µs per read: walcache {w:.1?} by hand {h:.1?}");
        }
    }
}

/// Calls between two yields of a measuring task: rare enough that the call after a yield (its
/// caches cooled by the scheduler) stays out of p99.
pub(crate) const YIELD_EVERY: u64 = 1024;

/// Leak a value to share it with `'static` tasks without a reference count per operation.
pub(crate) fn leak<T>(v: T) -> &'static T {
    Box::leak(Box::new(v))
}

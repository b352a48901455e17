//! Workloads: Zipf (s = 1.0) reads over [`WORKLOAD_KEYS`] keys with 1% writes (UPDATE +
//! invalidate), for L1-only, L2-only and two-tier configurations.

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use walcache::Cache;
use walcache_benches::Servers;
use walcache_testkit::{unique_prefix, Zipf};

use crate::{leak, Mode, Stats, WorkloadRow, WORKLOAD_KEYS, WORKLOAD_L1, YIELD_EVERY};

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
pub(crate) const WORKLOAD_CALLERS: usize = 8;
/// Writes per 10,000 operations.
pub(crate) const WRITES_PER_10K: u64 = 100;

pub(crate) async fn run(mode: Mode, servers: &Servers) -> Vec<WorkloadRow> {
    let zipf: &'static Zipf = leak(Zipf::new(WORKLOAD_KEYS, 1.0));
    let db: &'static tokio_postgres::Client = leak(servers.connect_db().await);
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
            "L1 only" => walcache_benches::l1_only_handle().await,
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

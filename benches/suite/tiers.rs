//! The tiers under concurrency: every walcache tier beside the raw tool beneath it, at 1, 8
//! and 64 tokio tasks, for each value size. The miss to PostgreSQL is also measured beside a
//! hand-written cache-aside read (GET → SELECT → SET PX on a multiplexed redis-rs connection),
//! what a service would write without walcache.

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use walcache::{Cache, Walcache};
use walcache_benches::{keyspace_counters, redis_value_key, table, value_of, Servers, KEYS};

use crate::cpu::Cpu;
use crate::{leak, Mode, Stats, CONCURRENCY, SIZES, YIELD_EVERY};

/// One tier case: walcache and the raw tool at one size and concurrency.
pub(crate) struct TierRow {
    pub(crate) tier: &'static str,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
    pub(crate) walcache: Stats,
    pub(crate) raw: Stats,
    /// The hand-written cache-aside read, where the tier has one (the miss).
    pub(crate) by_hand: Option<Stats>,
    /// CPU per read (µs) of walcache and of the hand-written cache-aside, where measured.
    pub(crate) cpu: Option<(Cpu, Cpu)>,
}

/// Every tier at every size and concurrency, and the Redis keyspace hits per walcache read of
/// the L2 cases (size, callers, hits per read).
pub(crate) async fn run(mode: Mode, servers: &Servers) -> (Vec<TierRow>, Vec<(usize, usize, f64)>) {
    let mut tiers = Vec::new();
    let mut l2_gets_per_op = Vec::new();
    // One Redis-backed handle per tier for all sizes (the caches are leaked, and with them the
    // handles' subscriptions: fewer handles, fewer bystanders receiving each invalidation).
    let l2_prefix = walcache_testkit::unique_prefix();
    let l2_handle = servers.walcache(&l2_prefix).await;
    let miss_handle = servers.walcache(&walcache_testkit::unique_prefix()).await;
    for size in SIZES {
        tiers.extend(l1_tier(mode, size).await);
        let (rows, gets) = l2_tier(mode, servers, &l2_handle, &l2_prefix, size).await;
        tiers.extend(rows);
        l2_gets_per_op.extend(gets);
        tiers.extend(miss_tier(mode, servers, &miss_handle, size).await);
    }
    (tiers, l2_gets_per_op)
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

/// Walcache, the raw tool and a third variant, each for `duration` in two halves in the order
/// A B C C B A: the three-way form of [`abba`]. Also the CPU each variant cost this process,
/// Redis and the PostgreSQL backend `pg_pid` (sampled around each half, so set-up the
/// operations leave untimed is counted, and work they leave behind is counted where it runs).
async fn abccba<F, Fut, G, Gut, H, Hut>(
    concurrency: usize,
    duration: Duration,
    (redis, pg_pid): (&MultiplexedConnection, u32),
    walcache: F,
    raw: G,
    third: H,
) -> ([Stats; 3], [Cpu; 3])
where
    F: Fn(usize, u64) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Duration> + Send,
    G: Fn(usize, u64) -> Gut + Copy + Send + Sync + 'static,
    Gut: Future<Output = Duration> + Send,
    H: Fn(usize, u64) -> Hut + Copy + Send + Sync + 'static,
    Hut: Future<Output = Duration> + Send,
{
    let half = duration / 2;
    let mut redis = redis.clone();
    let mut ns: [Vec<u64>; 3] = Default::default();
    let mut wall = [Duration::ZERO; 3];
    let mut cpu = [Cpu::default(); 3];
    for v in [0, 1, 2, 2, 1, 0] {
        let before = Cpu::now(&mut redis, pg_pid).await;
        let (samples, t) = match v {
            0 => measure(concurrency, half, walcache).await,
            1 => measure(concurrency, half, raw).await,
            _ => measure(concurrency, half, third).await,
        };
        cpu[v] = cpu[v] + (Cpu::now(&mut redis, pg_pid).await - before);
        ns[v].extend(samples);
        wall[v] += t;
    }
    let [a, b, c] = ns;
    (
        [
            Stats::of(a, wall[0]),
            Stats::of(b, wall[1]),
            Stats::of(c, wall[2]),
        ],
        cpu,
    )
}

/// Wait until every key's L1 entry is past its time-to-live, so that the next reads go to L2.
async fn l1_expired(cache: &Cache<i64, String>) {
    walcache_testkit::wait_until(
        "L1 entries past their time-to-live",
        Duration::from_secs(5),
        || async { (0..KEYS).all(|id| !cache.contains_in_l1(&id)) },
    )
    .await
    .expect("L1 entries expire");
}

/// Time one future.
async fn timed<T>(f: impl Future<Output = T>) -> Duration {
    let t = Instant::now();
    black_box(f.await);
    t.elapsed()
}

/// Worker `w` of `c` cycles through `0..KEYS`, starting spread out from the others.
fn key_of(w: usize, i: u64, c: usize) -> i64 {
    let keys = KEYS as u64;
    ((w as u64 * keys / c as u64 + i) % keys) as i64
}

async fn l1_tier(mode: Mode, size: usize) -> Vec<TierRow> {
    let handle = walcache_benches::l1_only_handle().await;
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
            by_hand: None,
            cpu: None,
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
    l1_expired(cache).await;
    assert!(cache.get(&0).await.is_some(), "an L2 hit");
    let mut rows = Vec::new();
    let mut gets = Vec::new();
    for c in CONCURRENCY {
        l1_expired(cache).await;
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
            by_hand: None,
            cpu: None,
        });
    }
    (rows, gets)
}

static LOADS: AtomicU64 = AtomicU64::new(0);
/// Hand-written cache-aside reads whose GET hit (must stay 0: every key is fresh).
static BY_HAND_HITS: AtomicU64 = AtomicU64::new(0);

/// The next key never read before: every miss reads a new one (the rows read are `key % KEYS`).
static COLD: AtomicI64 = AtomicI64::new(0);
/// How long a miss's value stays in L2, on both sides: long past the read, short enough that
/// Redis does not hold every value the run wrote.
const COLD_TTL: Duration = Duration::from_secs(5);

/// The miss: a read of a key no one has read before (a fresh number from [`COLD`], so neither
/// tier holds it and no set-up runs), by walcache's `try_get_with`, by the bare SELECT, and by
/// hand-written cache-aside (GET misses, SELECT, SET PX), all reading row `key % KEYS` on the
/// same prepared statement and connection; the cache-aside's Redis calls go through one
/// multiplexed redis-rs connection shared by every caller, as walcache's do. Values stay in
/// L2 for [`COLD_TTL`] on both sides, so Redis's memory stays bounded.
async fn miss_tier(mode: Mode, servers: &Servers, handle: &Walcache, size: usize) -> Vec<TierRow> {
    let cache: &'static Cache<i64, String> = leak(
        handle
            .cache(&format!("miss_{size}"))
            .max_capacity(10_000)
            .l2_time_to_live(COLD_TTL)
            .build()
            .expect("the miss cache"),
    );
    let db: &'static tokio_postgres::Client = leak(servers.connect_db().await);
    let select: &'static tokio_postgres::Statement = leak(
        db.prepare(&format!("SELECT body FROM {} WHERE id = $1", table(size)))
            .await
            .expect("prepare the SELECT"),
    );
    let conn: &'static redis::aio::MultiplexedConnection = leak(servers.redis_connection().await);
    let pg_pid: u32 = db
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("the backend's pid")
        .get::<_, i32>(0)
        .try_into()
        .expect("a pid");
    let ttl_ms = u64::try_from(COLD_TTL.as_millis()).expect("a short TTL");
    let mut rows = Vec::new();
    for c in CONCURRENCY {
        let before = LOADS.load(Ordering::Relaxed);
        let ([walcache, raw, by_hand], [cpu_walcache, _, cpu_by_hand]) = abccba(
            c,
            mode.tier_case,
            (conn, pg_pid),
            move |_, _| async move {
                let k = COLD.fetch_add(1, Ordering::Relaxed);
                timed(cache.try_get_with(&k, async move {
                    LOADS.fetch_add(1, Ordering::Relaxed);
                    db.query_one(select, &[&(k % KEYS)])
                        .await
                        .map(|r| r.get::<_, String>(0))
                }))
                .await
            },
            move |_, _| {
                let k = COLD.fetch_add(1, Ordering::Relaxed);
                timed(async move {
                    let row = db.query_one(select, &[&(k % KEYS)]).await.expect("SELECT");
                    row.get::<_, String>(0)
                })
            },
            move |_, _| async move {
                let k = COLD.fetch_add(1, Ordering::Relaxed);
                let key = format!("aside:{size}:{k}");
                let mut conn = conn.clone();
                timed(async move {
                    let cached: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .expect("GET");
                    if cached.is_some() {
                        // A fresh key found in Redis: the measurement would be wrong.
                        BY_HAND_HITS.fetch_add(1, Ordering::Relaxed);
                    }
                    let row = db.query_one(select, &[&(k % KEYS)]).await.expect("SELECT");
                    let body: String = row.get(0);
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(body.as_bytes())
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn)
                        .await
                        .expect("SET");
                    body
                })
                .await
            },
        )
        .await;
        let loads = LOADS.load(Ordering::Relaxed) - before;
        assert_eq!(loads, walcache.ops, "every walcache read must load");
        let hits = BY_HAND_HITS.swap(0, Ordering::Relaxed);
        assert_eq!(hits, 0, "a cache-aside GET of a fresh key hit");
        rows.push(TierRow {
            tier: "miss to PostgreSQL",
            size,
            concurrency: c,
            walcache,
            raw,
            by_hand: Some(by_hand),
            cpu: Some((
                cpu_walcache.per_op_us(walcache.ops),
                cpu_by_hand.per_op_us(by_hand.ops),
            )),
        });
    }
    rows
}

//! The tiers benchmark: each walcache tier against the raw tool beneath it, on one private
//! Redis and one private PostgreSQL started once for the whole run.
//!
//! - `l1_hit`: `Cache::get` on a warm L1 vs `moka::sync::Cache::get` (keyed by `i64`, and by a
//!   string formatted per lookup).
//! - `l2_hit`: `Cache::get` that misses L1 (entries expire after 1 ms) and hits L2 vs a raw
//!   redis-rs `GET` of the same key and bytes on a multiplexed connection.
//! - `miss_to_postgres`: `Cache::try_get_with` on a key invalidated just before (untimed), so
//!   it misses both tiers and loads from PostgreSQL, vs the loader's `SELECT` alone.
//!
//! `cargo bench -p walcache-benches`; `WALCACHE_BENCH_QUICK=1` for the CI mode.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;
use walcache::{Cache, Walcache};
use walcache_benches::{
    criterion, keyspace_counters, redis_value_key, runtime, table, value_of, Servers, KEYS,
    VALUE_SIZES,
};
use walcache_testkit::unique_prefix;

/// L1 capacity, in entries, of every cache in `l1_hit` (walcache and raw moka alike).
const L1_CAPACITY: u64 = 10_000;
/// L1 time-to-live in `l1_hit`: long enough that nothing expires during the run.
const L1_TTL: Duration = Duration::from_secs(3600);

fn main() {
    let mut c = criterion();
    let rt = runtime();
    let servers = rt.block_on(Servers::start());
    l1_hit(&mut c, &rt, &servers);
    l2_hit(&mut c, &rt, &servers);
    miss_to_postgres(&mut c, &rt, &servers);
    c.final_summary();
}

/// Key `i`'s successor in the cycle over `0..KEYS`.
fn next_key(i: i64) -> i64 {
    (i + 1) % KEYS
}

fn l1_hit(c: &mut Criterion, rt: &Runtime, servers: &Servers) {
    let handle = rt.block_on(servers.walcache(&unique_prefix()));
    let mut group = c.benchmark_group("l1_hit");
    for size in VALUE_SIZES {
        l1_hit_of(&mut group, rt, &handle, size, "string", |s| s);
        l1_hit_of(&mut group, rt, &handle, size, "arc", Arc::<str>::from);
    }
    group.finish();
}

fn l1_hit_of<V>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    handle: &Walcache,
    size: usize,
    kind: &str,
    make: fn(String) -> V,
) where
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    let cache: Cache<i64, V> = handle
        .cache(&format!("l1_{kind}_{size}"))
        .max_capacity(L1_CAPACITY)
        .time_to_live(L1_TTL)
        .build()
        .expect("build the L1 cache");
    let by_int: moka::sync::Cache<i64, V> = moka::sync::Cache::builder()
        .max_capacity(L1_CAPACITY)
        .time_to_live(L1_TTL)
        .build();
    let by_str: moka::sync::Cache<Arc<str>, V> = moka::sync::Cache::builder()
        .max_capacity(L1_CAPACITY)
        .time_to_live(L1_TTL)
        .build();
    rt.block_on(async {
        for id in 0..KEYS {
            let v = make(value_of(size, id));
            walcache_benches::fill(&cache, &id, v.clone())
                .await
                .expect("fill walcache");
            by_int.insert(id, v.clone());
            by_str.insert(Arc::from(id.to_string()), v);
        }
    });
    cache.run_pending_tasks();
    by_int.run_pending_tasks();
    by_str.run_pending_tasks();
    for id in 0..KEYS {
        assert!(cache.contains_in_l1(&id), "walcache L1 lacks key {id}");
        assert!(by_int.contains_key(&id), "moka lacks key {id}");
    }

    if kind == "string" && size == VALUE_SIZES[0] {
        // The hit path is an `async fn`: its future is built (and its state laid out) on every
        // call, whether or not it ever reaches L2.
        let future = cache.get(&0);
        eprintln!(
            "walcache Cache::<i64, String>::get future: {} bytes",
            std::mem::size_of_val(&future)
        );
        drop(future);
    }
    let mut id = 0;
    group.bench_function(BenchmarkId::new(format!("walcache_{kind}"), size), |b| {
        let cache = &cache;
        b.to_async(rt).iter(|| {
            id = next_key(id);
            let k = id;
            async move { black_box(cache.get(&k).await.expect("an L1 hit")) }
        });
    });
    group.bench_function(BenchmarkId::new(format!("moka_i64_{kind}"), size), |b| {
        b.iter(|| {
            id = next_key(id);
            black_box(by_int.get(&black_box(id)).expect("a moka hit"))
        });
    });
    let mut buf = String::new();
    group.bench_function(
        BenchmarkId::new(format!("moka_str_key_{kind}"), size),
        |b| {
            b.iter(|| {
                id = next_key(id);
                buf.clear();
                let _ = write!(buf, "{}", black_box(id));
                black_box(by_str.get(buf.as_str()).expect("a moka hit"))
            });
        },
    );
}

fn l2_hit(c: &mut Criterion, rt: &Runtime, servers: &Servers) {
    let prefix = unique_prefix();
    let handle = rt.block_on(servers.walcache(&prefix));
    let mut conn = rt.block_on(servers.redis_connection());
    let mut group = c.benchmark_group("l2_hit");
    for size in VALUE_SIZES {
        let ns = format!("l2_{size}");
        // An L1 entry lives 1 ms (no jitter); a key comes round again only after KEYS reads
        // of tens of microseconds each, so every read misses L1, hits L2 and refills L1.
        let cache: Cache<i64, String> = handle
            .cache(&ns)
            .max_capacity(L1_CAPACITY)
            .time_to_live(Duration::from_millis(1))
            .ttl_jitter(0.0)
            .build()
            .expect("build the L2 cache");
        let keys: Vec<String> = (0..KEYS)
            .map(|id| redis_value_key(&prefix, &ns, id))
            .collect();
        rt.block_on(async {
            for id in 0..KEYS {
                walcache_benches::fill(&cache, &id, value_of(size, id))
                    .await
                    .expect("fill walcache");
            }
            // The raw side reads walcache's own keys: check they hold its value envelopes.
            for key in &keys {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                let bytes = bytes.unwrap_or_else(|| panic!("no value at {key}"));
                assert!(
                    bytes.first() == Some(&1) && bytes.len() > size,
                    "{key} does not hold a value envelope"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            // The first read learns the namespace's generation (a script reading it too).
            assert!(cache.get(&0).await.is_some(), "an L2 hit");
            tokio::time::sleep(Duration::from_millis(5)).await;
            // From then on: exactly one GET per read, and it hits.
            let before = keyspace_counters(&mut conn).await;
            for id in 1..=100 {
                assert_eq!(cache.get(&id).await, Some(value_of(size, id)));
            }
            let after = keyspace_counters(&mut conn).await;
            assert_eq!(
                (after.0 - before.0, after.1 - before.1),
                (100, 0),
                "100 walcache reads must be 100 L2 GET hits (keyspace hits, misses)"
            );
        });

        let mut id = 0;
        group.bench_function(BenchmarkId::new("walcache", size), |b| {
            let cache = &cache;
            b.to_async(rt).iter(|| {
                id = next_key(id);
                let k = id;
                async move { black_box(cache.get(&k).await.expect("an L2 hit")) }
            });
        });
        group.bench_function(BenchmarkId::new("redis_get", size), |b| {
            let keys = &keys;
            b.to_async(rt).iter(|| {
                id = next_key(id);
                let key = &keys[usize::try_from(id).unwrap_or_default()];
                let mut conn = conn.clone();
                async move {
                    let bytes: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .expect("GET");
                    black_box(bytes.expect("a Redis hit"))
                }
            });
        });
    }
    group.finish();
}

fn miss_to_postgres(c: &mut Criterion, rt: &Runtime, servers: &Servers) {
    let handle = rt.block_on(servers.walcache(&unique_prefix()));
    let db = &servers.db;
    let mut group = c.benchmark_group("miss_to_postgres");
    for size in VALUE_SIZES {
        let cache: Cache<i64, String> = handle
            .cache(&format!("miss_{size}"))
            .max_capacity(L1_CAPACITY)
            .build()
            .expect("build the miss cache");
        let select = rt
            .block_on(db.prepare(&format!("SELECT body FROM {} WHERE id = $1", table(size))))
            .expect("prepare the SELECT");
        let select = &select;
        let loads = AtomicU64::new(0);
        let loads = &loads;
        let load = move |id: i64| async move {
            loads.fetch_add(1, Ordering::Relaxed);
            db.query_one(select, &[&id])
                .await
                .map(|row| row.get::<_, String>(0))
        };
        rt.block_on(async {
            let v = cache.try_get_with(&7, load(7)).await.expect("a load");
            assert_eq!(v, value_of(size, 7));
        });

        let mut id = 0;
        group.bench_function(BenchmarkId::new("walcache", size), |b| {
            let cache = &cache;
            b.to_async(rt).iter_custom(|iters| {
                let mut k = id;
                id = (id + i64::try_from(iters % 1_000_000).unwrap_or_default()) % KEYS;
                async move {
                    let before = loads.load(Ordering::Relaxed);
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        k = next_key(k);
                        cache.invalidate(&k).await.expect("invalidate");
                        let start = Instant::now();
                        let v = cache.try_get_with(&k, load(k)).await.expect("a load");
                        spent += start.elapsed();
                        black_box(v);
                    }
                    assert_eq!(
                        loads.load(Ordering::Relaxed) - before,
                        iters,
                        "every read must miss both tiers and load"
                    );
                    spent
                }
            });
        });
        // What a hand-written cache-aside read does on a miss: GET (miss), SELECT, SET PX.
        let conn = rt.block_on(servers.redis_connection());
        let aside_keys: Vec<String> = (0..KEYS).map(|k| format!("aside:{size}:{k}")).collect();
        group.bench_function(BenchmarkId::new("cache_aside_by_hand", size), |b| {
            let aside_keys = &aside_keys;
            let conn = &conn;
            b.to_async(rt).iter_custom(|iters| {
                let mut k = id;
                id = (id + i64::try_from(iters % 1_000_000).unwrap_or_default()) % KEYS;
                let mut conn = conn.clone();
                async move {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        k = next_key(k);
                        let key = &aside_keys[usize::try_from(k).unwrap_or_default()];
                        let _: () = redis::cmd("DEL")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .expect("DEL");
                        let start = Instant::now();
                        let cached: Option<Vec<u8>> = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        assert!(cached.is_none(), "the key was just deleted");
                        let row = db.query_one(select, &[&k]).await.expect("SELECT");
                        let body: String = row.get(0);
                        let _: () = redis::cmd("SET")
                            .arg(key)
                            .arg(body.as_bytes())
                            .arg("PX")
                            .arg(3_600_000)
                            .query_async(&mut conn)
                            .await
                            .expect("SET");
                        spent += start.elapsed();
                        black_box(body);
                    }
                    spent
                }
            });
        });
        group.bench_function(BenchmarkId::new("postgres_select", size), |b| {
            b.to_async(rt).iter(|| {
                id = next_key(id);
                let k = id;
                async move {
                    let row = db.query_one(select, &[&k]).await.expect("SELECT");
                    black_box(row.get::<_, String>(0))
                }
            });
        });
    }
    group.finish();
}

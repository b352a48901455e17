//! A randomized concurrency test of the read path, in the spirit of foyer's fuzzy tests:
//! many tasks reading, filling, invalidating (keys, tags, the namespace) and writing random
//! keys of one cache against a real Redis, and a checker that **no read returns a value older
//! than the last invalidation that completed before the read began** (this process reads its
//! own writes: the contract of `invalidate`, `invalidate_tag` and `invalidate_all`).
//!
//! The "database" is a vector of versions that only grow; a write bumps a version and then
//! invalidates. The loaders read it. The seed is printed; set `WALCACHE_FUZZ_SEED` to replay
//! an operation sequence (the interleaving is the scheduler's), `WALCACHE_FUZZ_OPS` (default
//! 100,000) and `WALCACHE_FUZZ_SECS` (default 60, whichever ends first) to run longer:
//!
//! ```sh
//! WALCACHE_FUZZ_OPS=1000000000 WALCACHE_FUZZ_SECS=1800 \
//!     cargo nextest run -p walcache --release --test it fuzz --no-capture
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walcache_testkit::RedisServer;

use crate::support::{self, builder, make_live, namespace, Publisher};

/// Keys `0..KEYS`; keys below `TAGGED` carry the tag `t{key % TAGS}` and are always read
/// tagged (a tag invalidation must cover every fill of them).
const KEYS: u64 = 48;
const TAGGED: u64 = 32;
const TAGS: u64 = 4;
const TASKS: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

/// What the checker needs of one invalidation: once it completed, every read of `key` that
/// begins later must see at least `version`.
#[derive(Clone, Copy)]
struct Bound {
    key: u64,
    version: u64,
    completed: Instant,
    /// `invalidate`, `invalidate_tag` or `invalidate_all`.
    by: &'static str,
}

/// One read: when it began, and what it returned.
#[derive(Clone, Copy)]
struct Seen {
    key: u64,
    version: u64,
    began: Instant,
    /// `try_get_with`, `try_get_tagged_with` or `get`.
    via: &'static str,
}

#[derive(Default)]
struct Log {
    bounds: Vec<Bound>,
    reads: Vec<Seen>,
    errors: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tag_of(key: u64) -> Option<String> {
    (key < TAGGED).then(|| format!("t{}", key % TAGS))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_fills_and_invalidations_never_return_a_value_older_than_a_completed_invalidation(
) {
    support::recorder();
    let seed = env_u64("WALCACHE_FUZZ_SEED", rand::random());
    let ops_limit = env_u64("WALCACHE_FUZZ_OPS", 100_000);
    let time_limit = Duration::from_secs(env_u64("WALCACHE_FUZZ_SECS", 60));
    eprintln!(
        "fuzz: seed {seed} (WALCACHE_FUZZ_SEED), up to {ops_limit} operations or {time_limit:?}"
    );

    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis)
        .redis_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("handle");
    make_live(&h, &mut publisher).await;
    // Heartbeats keep L1 live for the whole run (the timeout is 30 s; one a second).
    let beating = tokio::spawn(async move {
        loop {
            publisher.heartbeat().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let cache = h
        .cache::<u64, u64>(&namespace("fuzz"))
        .build()
        .expect("cache");

    let db: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let log = Arc::new(Mutex::new(Log::default()));
    let ops = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (cache, db, log, ops) = (
            cache.clone(),
            Arc::clone(&db),
            Arc::clone(&log),
            Arc::clone(&ops),
        );
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(task as u64));
        tasks.push(tokio::spawn(async move {
            let mut mine = Log::default();
            while (ops.fetch_add(1, Ordering::Relaxed) as u64) < ops_limit
                && started.elapsed() < time_limit
            {
                let key = rng.random_range(0..KEYS);
                let dice = rng.random_range(0..100u32);
                let load = {
                    let db = Arc::clone(&db);
                    async move { Ok::<_, Never>(db[key as usize].load(Ordering::SeqCst)) }
                };
                match dice {
                    // Read through the loader.
                    0..=59 => {
                        let began = Instant::now();
                        let (got, via) = match tag_of(key) {
                            Some(tag) => (
                                cache.try_get_tagged_with(&key, &[&tag], load).await,
                                "try_get_tagged_with",
                            ),
                            None => (cache.try_get_with(&key, load).await, "try_get_with"),
                        };
                        match got {
                            Ok(version) => mine.reads.push(Seen {
                                key,
                                version,
                                began,
                                via,
                            }),
                            Err(_) => mine.errors += 1,
                        }
                    }
                    // Read without a loader: L1, then L2.
                    60..=74 => {
                        let began = Instant::now();
                        if let Some(version) = cache.get(&key).await {
                            mine.reads.push(Seen {
                                key,
                                version,
                                began,
                                via: "get",
                            });
                        }
                    }
                    // Write the row, then invalidate its key.
                    75..=91 => {
                        db[key as usize].fetch_add(1, Ordering::SeqCst);
                        let version = db[key as usize].load(Ordering::SeqCst);
                        if cache.invalidate(&key).await.is_ok() {
                            mine.bounds.push(Bound {
                                key,
                                version,
                                completed: Instant::now(),
                                by: "invalidate",
                            });
                        } else {
                            mine.errors += 1;
                        }
                    }
                    // Write every row of a tag, then invalidate the tag.
                    92..=97 => {
                        let t = key % TAGS;
                        let members: Vec<u64> = (0..TAGGED).filter(|k| k % TAGS == t).collect();
                        let versions: Vec<(u64, u64)> = members
                            .iter()
                            .map(|&k| (k, db[k as usize].fetch_add(1, Ordering::SeqCst) + 1))
                            .collect();
                        if cache.invalidate_tag(&format!("t{t}")).await.is_ok() {
                            let completed = Instant::now();
                            mine.bounds
                                .extend(versions.into_iter().map(|(key, version)| Bound {
                                    key,
                                    version,
                                    completed,
                                    by: "invalidate_tag",
                                }));
                        } else {
                            mine.errors += 1;
                        }
                    }
                    // Flush the namespace: every row as it was when the flush began.
                    _ => {
                        let versions: Vec<u64> =
                            db.iter().map(|v| v.load(Ordering::SeqCst)).collect();
                        if cache.invalidate_all().await.is_ok() {
                            let completed = Instant::now();
                            mine.bounds.extend(versions.into_iter().enumerate().map(
                                |(key, version)| Bound {
                                    key: key as u64,
                                    version,
                                    completed,
                                    by: "invalidate_all",
                                },
                            ));
                        } else {
                            mine.errors += 1;
                        }
                    }
                }
            }
            let mut all = log.lock().unwrap();
            all.bounds.append(&mut mine.bounds);
            all.reads.append(&mut mine.reads);
            all.errors += mine.errors;
        }));
    }
    for t in tasks {
        t.await.expect("fuzz task");
    }
    beating.abort();
    let elapsed = started.elapsed();

    let log = log.lock().unwrap();
    let stale = check(&log.bounds, &log.reads);
    eprintln!(
        "fuzz: seed {seed}: {} operations in {elapsed:.1?}, {} reads, {} invalidation bounds, \
         {} Redis errors, {} stale",
        ops.load(Ordering::Relaxed).min(ops_limit as usize),
        log.reads.len(),
        log.bounds.len(),
        log.errors,
        stale.len()
    );
    assert!(
        log.reads.len() > 1_000,
        "the run read too little to mean anything"
    );
    assert!(
        stale.is_empty(),
        "seed {seed}: {} reads older than an invalidation completed before they began; \
         {}",
        stale.len(),
        stale.join("; ")
    );
}

/// Every read that saw a version below the highest bound of its key completed before it
/// began, described.
fn check(bounds: &[Bound], reads: &[Seen]) -> Vec<String> {
    // Per key, bounds by completion time with the running maximum of their versions (and the
    // call that set it).
    let mut per_key: Vec<Vec<(Instant, u64, &str)>> = vec![Vec::new(); KEYS as usize];
    for b in bounds {
        per_key[b.key as usize].push((b.completed, b.version, b.by));
    }
    for list in &mut per_key {
        list.sort_by_key(|(t, _, _)| *t);
        let mut max = (0, "");
        for entry in list.iter_mut() {
            if entry.1 > max.0 {
                max = (entry.1, entry.2);
            }
            (entry.1, entry.2) = max;
        }
    }
    let mut stale = Vec::new();
    for r in reads {
        let list = &per_key[r.key as usize];
        let before = list.partition_point(|(t, _, _)| *t < r.began);
        if before > 0 {
            let (at, required, by) = list[before - 1];
            if r.version < required {
                stale.push(format!(
                    "key {} read version {} through {}, but version {} was invalidated by {} \
                     {:?} before the read began",
                    r.key,
                    r.version,
                    r.via,
                    required,
                    by,
                    r.began - at
                ));
            }
        }
    }
    stale
}

#[test]
fn the_checker_finds_a_read_older_than_a_completed_invalidation() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_millis(5);
    let bounds = [Bound {
        key: 1,
        version: 3,
        completed: t0,
        by: "invalidate",
    }];
    let fresh = Seen {
        key: 1,
        version: 3,
        began: later,
        via: "get",
    };
    let stale = Seen {
        key: 1,
        version: 2,
        began: later,
        via: "get",
    };
    let concurrent = Seen {
        key: 1,
        version: 2,
        began: t0 - Duration::from_millis(1),
        via: "get",
    };
    let other_key = Seen {
        key: 2,
        version: 0,
        began: later,
        via: "get",
    };
    assert!(check(&bounds, &[fresh, concurrent, other_key]).is_empty());
    assert_eq!(check(&bounds, &[stale]).len(), 1);
}

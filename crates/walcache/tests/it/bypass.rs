//! Loads that bypass the caches: capped per handle, and visible while they run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use walcache::metrics::{BYPASS_LOADS_IN_FLIGHT, BYPASS_LOADS_TOTAL};
use walcache::Freshness;
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{self, builder, namespace, LoadError, DEADLINE};

/// In strict mode a handle that is not live bypasses both tiers. With `max_bypass_loads(2)`,
/// three callers make two loads run and one wait; the in-flight gauge says 2 meanwhile and 0
/// once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypassing_loads_are_capped_and_counted_while_they_run() {
    let recorder = support::recorder();
    let redis = RedisServer::start().expect("redis");
    let h = builder(&redis)
        .freshness(Freshness::Strict)
        .max_bypass_loads(2)
        .build()
        .await
        .expect("handle (never live: no daemon)");
    let ns = namespace("bypass");
    let cache = h.cache::<i64, i64>(&ns).build().expect("cache");
    let started = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let loads: Vec<_> = (0..3)
        .map(|k| {
            let (cache, started, release) =
                (cache.clone(), Arc::clone(&started), Arc::clone(&release));
            tokio::spawn(async move {
                cache
                    .try_get_with(&k, async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _go = release.acquire().await.expect("open");
                        Ok::<_, LoadError>(k)
                    })
                    .await
            })
        })
        .collect();
    let in_flight = || recorder.gauge(BYPASS_LOADS_IN_FLIGHT, &[("namespace", &ns)]);
    let bypassing = || {
        recorder.counter(
            BYPASS_LOADS_TOTAL,
            &[("namespace", &ns), ("reason", "strict_not_live")],
        )
    };
    // All three bypass (counted before they wait for the cap); two run.
    wait_until("two loads running, three bypassing", DEADLINE, || async {
        started.load(Ordering::SeqCst) == 2 && in_flight() == 2.0 && bypassing() == 3
    })
    .await
    .expect("the cap lets two loads run");
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the third waits its turn"
    );
    release.add_permits(3);
    for (k, load) in loads.into_iter().enumerate() {
        assert_eq!(load.await.expect("task").expect("load"), k as i64);
    }
    assert_eq!(started.load(Ordering::SeqCst), 3);
    assert_eq!(in_flight(), 0.0, "none in flight once done");
}

/// How many times Redis ran `command` (also inside scripts) since it started.
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// With `fleet_bypass_loads(2)`, two processes together run two bypassing loads: the second
/// process's caller is refused while the first holds both permits, and runs once they are
/// given back. Every permit is given back at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_cap_holds_across_processes() {
    let redis = RedisServer::start().expect("redis");
    let strict = || {
        builder(&redis)
            .freshness(Freshness::Strict)
            .max_bypass_loads(10)
            .fleet_bypass_loads(2)
            .build()
    };
    let (a, b) = (strict().await.expect("a"), strict().await.expect("b"));
    let ns = namespace("fleet");
    let (ca, cb) = (
        a.cache::<i64, i64>(&ns).build().expect("a's cache"),
        b.cache::<i64, i64>(&ns).build().expect("b's cache"),
    );
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin");
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let start = |cache: walcache::Cache<i64, i64>, k: i64, started: Arc<AtomicUsize>| {
        let release = Arc::clone(&release);
        tokio::spawn(async move {
            cache
                .try_get_with(&k, async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _go = release.acquire().await.expect("open");
                    Ok::<_, LoadError>(k)
                })
                .await
        })
    };
    let (started_a, started_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loads = vec![
        start(ca.clone(), 1, Arc::clone(&started_a)),
        start(ca.clone(), 2, Arc::clone(&started_a)),
    ];
    wait_until("a's two loads running", DEADLINE, || async {
        started_a.load(Ordering::SeqCst) == 2
    })
    .await
    .expect("two permits for a");
    let asks_before = command_calls(&mut admin, "zcard").await;
    loads.push(start(cb.clone(), 3, Arc::clone(&started_b)));
    // b asks, is refused (both permits are a's), and asks again.
    wait_until("b refused twice", DEADLINE, || async {
        command_calls(&mut admin.clone(), "zcard").await >= asks_before + 2
    })
    .await
    .expect("b asks for a permit");
    assert_eq!(started_b.load(Ordering::SeqCst), 0, "b waits for a permit");
    release.add_permits(3);
    wait_until("b's load running", DEADLINE, || async {
        started_b.load(Ordering::SeqCst) == 1
    })
    .await
    .expect("b gets a permit once a gives them back");
    for (load, k) in loads.into_iter().zip([1, 2, 3]) {
        assert_eq!(load.await.expect("task").expect("load"), k);
    }
    let key = walcache_protocol::Naming::default().bypass_permits_key();
    wait_until("every permit given back", DEADLINE, || async {
        let held: u64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut admin.clone())
            .await
            .expect("ZCARD");
        held == 0
    })
    .await
    .expect("permits are given back");
}

/// A fleet-wide cap needs Redis to hold it.
#[tokio::test]
async fn a_fleet_cap_without_redis_is_a_config_error() {
    let e = walcache::Walcache::builder()
        .without_invalidation_stream()
        .fleet_bypass_loads(8)
        .build()
        .await
        .expect_err("no Redis to hold the permits");
    assert!(e.to_string().contains("fleet_bypass_loads"), "{e}");
}

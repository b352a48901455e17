//! L1 hit, miss and expiry; L2 fills L1; single-flight in one process and across handles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walcache::Walcache;
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{
    self, builder, make_live, namespace, raw_get, LoadError, Publisher, DEADLINE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hit_miss_expiry_and_l2_fills_l1() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let a = builder(&redis).build().await.expect("handle a");
    let b = builder(&redis).build().await.expect("handle b");
    make_live(&a, &mut publisher).await;
    make_live(&b, &mut publisher).await;
    let ns = namespace("users");
    let ca = a
        .cache::<i64, String>(&ns)
        .time_to_live(Duration::from_millis(300))
        .ttl_jitter(0.0)
        .build()
        .expect("cache a");
    let cb = b.cache::<i64, String>(&ns).build().expect("cache b");
    let loads = AtomicUsize::new(0);
    let load = |v: &'static str| {
        let loads = &loads;
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, LoadError>(v.to_owned())
        }
    };

    // Miss everywhere: get() does not load.
    assert_eq!(ca.get(&1).await, None);
    // Miss → loader → L2 and L1.
    assert_eq!(ca.try_get_with(&1, load("one")).await.unwrap(), "one");
    ca.wait_for_l2_fills().await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(ca.contains_in_l1(&1));
    assert!(raw_get(&redis, &ns, "1").await.is_some_and(|b| b[0] == 1));
    // L1 hit: the loader is not called.
    assert_eq!(ca.try_get_with(&1, load("other")).await.unwrap(), "one");
    assert_eq!(ca.get(&1).await.as_deref(), Some("one"));
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // Another handle (another process): L2 hit, which fills its L1.
    assert!(!cb.contains_in_l1(&1));
    assert_eq!(cb.try_get_with(&1, load("other")).await.unwrap(), "one");
    assert!(cb.contains_in_l1(&1));
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // L1 expiry: the entry leaves L1 after its time-to-live; L2 still answers.
    wait_until("L1 entry expired", DEADLINE, || async {
        !ca.contains_in_l1(&1)
    })
    .await
    .expect("expiry");
    assert_eq!(ca.get(&1).await.as_deref(), Some("one"));
    assert!(ca.contains_in_l1(&1), "an L2 hit fills L1");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let r = support::recorder();
    assert!(
        r.counter(
            walcache::metrics::HITS_TOTAL,
            &[("namespace", &ns), ("tier", "l2")]
        ) >= 2
    );
}

/// Run `n` concurrent readers of one cold key per handle; the loader is held until every
/// reader has started, and counts its calls.
async fn stampede(handles: &[Walcache], per_handle: usize) -> usize {
    let ns = namespace("hot");
    let caches: Vec<_> = handles
        .iter()
        .map(|h| h.cache::<&str, u64>(&ns).build().expect("cache"))
        .collect();
    let total = handles.len() * per_handle;
    let started = Arc::new(AtomicUsize::new(0));
    let loads = Arc::new(AtomicUsize::new(0));
    let all_started = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..per_handle {
            let cache = cache.clone();
            let (started, loads, all_started) = (
                Arc::clone(&started),
                Arc::clone(&loads),
                Arc::clone(&all_started),
            );
            tasks.push(tokio::spawn(async move {
                if started.fetch_add(1, Ordering::SeqCst) + 1 == total {
                    all_started.notify_waiters();
                }
                cache
                    .try_get_with(&"the-key", async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let wait = all_started.notified();
                        if started.load(Ordering::SeqCst) < total {
                            wait.await;
                        }
                        Ok::<_, LoadError>(7)
                    })
                    .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("value"), 7);
    }
    loads.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_readers_in_one_process_load_once() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    assert_eq!(stampede(&[h], 1000).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_readers_across_four_handles_load_once() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let mut handles = Vec::new();
    for _ in 0..4 {
        // Separate handles: separate connections and subscriptions, as separate processes.
        let h = builder(&redis)
            .lease_wait(Duration::from_secs(30))
            .build()
            .await
            .expect("handle");
        make_live(&h, &mut publisher).await;
        handles.push(h);
    }
    assert_eq!(stampede(&handles, 250).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_only_mode_works_without_redis() {
    support::recorder();
    let h = support::l1_only_handle().await;
    assert!(h.is_live(), "no stream: L1 is always usable");
    let c = h
        .cache::<(i64, &str), String>("local")
        .build()
        .expect("cache");
    let loads = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = c
            .try_get_with(&(1, "a"), async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, LoadError>("x".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(v, "x");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    c.invalidate(&(1, "a")).await.unwrap();
    assert!(!c.contains_in_l1(&(1, "a")));
    #[allow(deprecated)] // deprecated, still supported
    c.insert(&(2, "b"), "y".to_owned()).await.unwrap();
    assert_eq!(c.get(&(2, "b")).await.as_deref(), Some("y"));
    c.invalidate_all().await.unwrap();
    c.run_pending_tasks();
    assert_eq!(c.get(&(2, "b")).await, None);
}

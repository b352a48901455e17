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
    wait_until("two loads running", DEADLINE, || async {
        started.load(Ordering::SeqCst) == 2 && in_flight() == 2.0
    })
    .await
    .expect("the cap lets two loads run");
    let counted = recorder.counter(
        BYPASS_LOADS_TOTAL,
        &[("namespace", &ns), ("reason", "strict_not_live")],
    );
    assert_eq!(counted, 3, "all three bypass");
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

//! After the caller has its answer (ADR 0012): what a lease fill's compare-and-set takes out
//! when it does not store, and a fill whose caller's runtime goes away before it lands.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use walcache::Cache;
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{
    failing, live_handle, namespace, raw_get, value, LoadError, Publisher, DEADLINE,
};

/// A leader for key 1 whose loader has read its row and holds it until `go` is notified.
async fn held_leader(
    cache: &Cache<i64, String>,
    v: &'static str,
) -> (
    Arc<Notify>,
    tokio::task::JoinHandle<Result<String, walcache::Error>>,
) {
    let go = Arc::new(Notify::new());
    let (read_tx, read_rx) = oneshot::channel();
    let leader = {
        let (cache, go) = (cache.clone(), Arc::clone(&go));
        tokio::spawn(async move {
            let wait = go.notified();
            cache
                .try_get_with(&1, async move {
                    let _ = read_tx.send(());
                    wait.await;
                    Ok::<_, LoadError>(v.to_owned())
                })
                .await
        })
    };
    read_rx.await.expect("the leader's loader ran");
    (go, leader)
}

/// The daemon changes row 1 while its load is held: delete + announce, and wait until this
/// process has applied the announcement (key 2, in L1, is announced in the same message).
async fn change_row_1(cache: &Cache<i64, String>, publisher: &mut Publisher, ns: &str) {
    assert_eq!(
        cache.try_get_with(&2, value("probe")).await.unwrap(),
        "probe"
    );
    cache.wait_for_l2_fills().await;
    assert!(cache.contains_in_l1(&2));
    publisher.invalidate(ns, &["1", "2"]).await;
    wait_until("the announcement applied", DEADLINE, || async {
        !cache.contains_in_l1(&2)
    })
    .await
    .expect("the invalidation reached L1");
}

/// A fill that loses its compare-and-set to an invalidation takes the key out of L1 again
/// (`PendingFill::run` → `forget`). It must take out only what it put there: here a newer
/// load, started after the invalidation, filled L1 (and L2) with the current row first, and
/// the older fill's clean-up removes that. Before ADR 0012 a raced fill touched no tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_fills_failed_cas_does_not_remove_a_newer_fill_from_l1() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("olderforget");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");

    let (go, old) = held_leader(&cache, "old").await;
    change_row_1(&cache, &mut publisher, &ns).await;
    // A read after the invalidation: a flight of its own, which loads and stores the new row.
    assert_eq!(cache.try_get_with(&1, value("new")).await.unwrap(), "new");
    cache.wait_for_l2_fills().await;
    assert!(cache.contains_in_l1(&1), "the new row is in L1");

    // The old load ends: its L1 fill is refused (the flight's snapshot moved) and its CAS
    // finds the new value instead of its lease.
    go.notify_one();
    assert_eq!(old.await.expect("task").expect("old load"), "old");
    cache.wait_for_l2_fills().await;
    assert!(
        raw_get(&redis, &ns, "1")
            .await
            .is_some_and(|b| b.first() == Some(&1)),
        "L2 holds the new row"
    );
    assert!(
        cache.contains_in_l1(&1),
        "the older fill's failed compare-and-set removed the newer fill from L1"
    );
}

/// The same clean-up also drops the stale-if-error copy, though this fill never put one
/// there (its L1 fill was refused): the last good value seen is lost, and a database outage
/// right after a raced load is an error instead of the fallback. Before ADR 0012 a raced fill
/// left the copy alone (`a_fill_raced_by_an_invalidation_is_not_kept_as_the_fallback` keeps
/// the raced value out; this keeps the older one in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raced_fill_leaves_the_older_stale_if_error_copy_alone() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("raceforget");
    let cache = h
        .cache::<i64, String>(&ns)
        .stale_if_error(Duration::from_secs(60))
        .build()
        .expect("cache");
    assert_eq!(cache.try_get_with(&1, value("v1")).await.unwrap(), "v1");
    cache.wait_for_l2_fills().await;
    // The row changes (the daemon's invalidation keeps the fallback copy, by design).
    publisher.invalidate(&ns, &["1"]).await;
    wait_until("key 1 dropped from L1", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("invalidation applied");

    // The next load races another change of the row: neither tier may keep its value...
    let (go, load) = held_leader(&cache, "v2").await;
    change_row_1(&cache, &mut publisher, &ns).await;
    go.notify_one();
    assert_eq!(load.await.expect("task").expect("load"), "v2");
    cache.wait_for_l2_fills().await;
    assert!(!cache.contains_in_l1(&1));

    // ...and the database goes down: the copy from before the race is still the fallback.
    let got = cache.try_get_with(&1, failing()).await;
    assert_eq!(
        got.ok().as_deref(),
        Some("v1"),
        "the raced fill's clean-up dropped the stale-if-error copy it never wrote"
    );
}

/// A caller on a runtime of its own (a synchronous wrapper's `block_on` on a current-thread
/// runtime, then dropped) gets its value; the compare-and-set was spawned on that runtime and
/// never runs. L2 is left with the lease (another process waits `lease_wait` for it, then
/// loads without caching, until `lease_ttl`), and L1 keeps a value no compare-and-set ever
/// checked. Before ADR 0012 the compare-and-set was awaited inside `block_on`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_survives_the_callers_runtime_going_away() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("deadruntime");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");

    let on_thread = cache.clone();
    let got = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let got = rt.block_on(on_thread.try_get_with(&1, value("v")));
        drop(rt);
        got
    })
    .await
    .expect("thread")
    .expect("load");
    assert_eq!(got, "v");
    tokio::time::timeout(DEADLINE, cache.wait_for_l2_fills())
        .await
        .expect("no fill left pending");
    let held = raw_get(&redis, &ns, "1").await;
    assert!(
        held.as_ref().is_some_and(|b| b.first() == Some(&1)),
        "L2 holds {held:?}, not the value (0x00: a stranded lease)"
    );
}

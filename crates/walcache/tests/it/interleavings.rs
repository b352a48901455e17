//! Issue 13: read-path races and stuck states, each forced deterministically on a real Redis
//! with the handle's pause points (`walcache::hooks`, the `test-hooks` feature) or with the
//! test's control of the daemon's stand-in. None of these tests reads the process-wide metrics
//! recorder: their assertions are on what a read returns and on what Redis holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use walcache::hooks::{HookPoint, Pause};
use walcache::{Cache, Walcache};
use walcache_protocol::Naming;
use walcache_testkit::{wait_until, RedisServer, TcpProxy};

use crate::support::{
    failing, live_handle, make_live, namespace, raw_get, value, LoadError, Publisher, DEADLINE,
};

/// Wait, with the test deadline, until a task stops at `pause`.
async fn reached(pause: &Pause, what: &str) {
    tokio::time::timeout(DEADLINE, pause.reached())
        .await
        .unwrap_or_else(|_| panic!("no task reached the pause point: {what}"));
}

async fn wait_live(h: &Walcache, live: bool) {
    wait_until(if live { "live" } else { "not live" }, DEADLINE, || async {
        h.is_live() == live
    })
    .await
    .expect("liveness changed");
}

/// Item 1: a reader that learns the namespace's generation while `invalidate_all` is between
/// its local flush and the flush script must not pin the process to the old generation (whose
/// keys the daemon's deletes never touch), nor leave the old value in L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_racing_a_reader_does_not_pin_the_old_generation() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("flushpin");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    assert_eq!(cache.try_get_with(&1, value("old")).await.unwrap(), "old");

    let pause = h.test_hooks().pause_next(HookPoint::BeforeL2Flush);
    let flush = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.invalidate_all().await })
    };
    reached(&pause, "invalidate_all before the flush script").await;
    // L1 is flushed and the generation forgotten; Redis still has the old generation.
    assert_eq!(
        cache.try_get_with(&1, value("new")).await.unwrap(),
        "old",
        "read before the flush reached Redis"
    );
    pause.release();
    flush.await.expect("task").expect("invalidate_all");

    // The flush has completed: nothing of the old generation may be served.
    assert!(
        !cache.contains_in_l1(&1),
        "the old value was re-cached in L1"
    );
    assert_eq!(
        cache.get(&1).await,
        None,
        "read from the old generation's keys: the process is pinned to it"
    );
    assert_eq!(cache.try_get_with(&1, value("new")).await.unwrap(), "new");
    // And the daemon's deletes (at the current generation) reach what this process reads.
    publisher.invalidate(&ns, &["1"]).await;
    wait_until("key 1 dropped from L1", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("the stream invalidation reached L1");
    assert_eq!(
        cache.try_get_with(&1, value("newer")).await.unwrap(),
        "newer"
    );
}

/// Which application-side invalidation item 2 exercises.
#[derive(Clone, Copy, Debug)]
enum AppInvalidation {
    Key,
    Tag,
}

/// Item 2: `invalidate` / `invalidate_tag` drop L1 before the L2 delete; a local read in
/// between re-caches the old value from L2, and the process skips its own message. Once the
/// call returns, this process must read its own write.
async fn reads_its_own_write(kind: AppInvalidation) {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("ryw");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    let read = |cache: Cache<i64, String>, v: &'static str| async move {
        match kind {
            AppInvalidation::Key => cache.try_get_with(&1, value(v)).await,
            AppInvalidation::Tag => cache.try_get_tagged_with(&1, &["t"], value(v)).await,
        }
        .expect("read")
    };
    assert_eq!(read(cache.clone(), "old").await, "old");
    assert!(cache.contains_in_l1(&1));

    let pause = h.test_hooks().pause_next(HookPoint::BeforeL2Invalidate);
    let invalidation = {
        let cache = cache.clone();
        tokio::spawn(async move {
            match kind {
                AppInvalidation::Key => cache.invalidate(&1).await,
                AppInvalidation::Tag => cache.invalidate_tag("t").await,
            }
        })
    };
    reached(&pause, "the invalidation before its L2 delete").await;
    assert!(!cache.contains_in_l1(&1), "L1 dropped first");
    // A concurrent local reader: L2 still has the old value.
    assert_eq!(read(cache.clone(), "new").await, "old");
    pause.release();
    invalidation.await.expect("task").expect("invalidate");

    assert!(
        !cache.contains_in_l1(&1),
        "the old value re-cached during the invalidation survived it"
    );
    assert_eq!(read(cache.clone(), "new").await, "new", "read-your-writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_then_this_process_reads_its_own_write() {
    reads_its_own_write(AppInvalidation::Key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_then_this_process_reads_its_own_write() {
    reads_its_own_write(AppInvalidation::Tag).await;
}

/// Item 3: a caller that arrives after an invalidation must not be handed the result of a
/// load that started before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_arriving_after_an_invalidation_does_not_join_an_older_load() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("join");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");

    let (read_tx, read_rx) = oneshot::channel();
    let go = Arc::new(Notify::new());
    let leader = {
        let (cache, go) = (cache.clone(), Arc::clone(&go));
        tokio::spawn(async move {
            let wait = go.notified();
            cache
                .try_get_with(&1, async move {
                    let _ = read_tx.send(()); // the old row is read...
                    wait.await; // ...and held until the invalidation has completed
                    Ok::<_, LoadError>("old".to_owned())
                })
                .await
        })
    };
    read_rx.await.expect("the leader's loader ran");
    cache.invalidate(&1).await.expect("invalidate");

    // A new caller, after the invalidation completed.
    let joined = h.test_hooks().pause_next(HookPoint::JoinedFlight);
    let (loading_tx, loading_rx) = oneshot::channel();
    let follower = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .try_get_with(&1, async move {
                    let _ = loading_tx.send(());
                    Ok::<_, LoadError>("new".to_owned())
                })
                .await
        })
    };
    // Either it joined the old load (and waits at the pause point), or it loads itself.
    tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            () = joined.reached() => {}
            _ = loading_rx => {}
        }
    })
    .await
    .expect("the new caller joined the flight or loaded");
    joined.release();
    go.notify_one();
    assert_eq!(leader.await.expect("task").expect("leader"), "old");
    assert_eq!(
        follower.await.expect("task").expect("follower"),
        "new",
        "a read that began after the invalidation got a value loaded before it"
    );
}

/// Item 4, first half: a value served by stale-if-error is an answer, not a fill. It must not
/// be written to L2 or L1 as if just loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_error_answer_is_written_to_no_tier() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("stalefill");
    let cache = h
        .cache::<i64, String>(&ns)
        .stale_if_error(Duration::from_secs(60))
        .build()
        .expect("cache");
    assert_eq!(cache.try_get_with(&1, value("v1")).await.unwrap(), "v1");
    // Stored (the stale-if-error copy is kept once the fill's compare-and-set has stored it).
    cache.wait_for_l2_fills().await;
    // The row changes: the daemon deletes and announces it.
    publisher.invalidate(&ns, &["1"]).await;
    wait_until("key 1 dropped from L1", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("invalidation applied");
    // The database is down: the last value seen is served...
    assert_eq!(cache.try_get_with(&1, failing()).await.unwrap(), "v1");
    // ...but stored nowhere, so it cannot outlive the outage (the lease the read took is
    // given back in the background).
    let held = raw_get(&redis, &ns, "1").await;
    assert!(
        held.as_ref().is_none_or(|b| b[0] != 1),
        "the stale answer was written to L2 as a fresh value"
    );
    wait_until("the lease given back", DEADLINE, || async {
        raw_get(&redis, &ns, "1").await.is_none()
    })
    .await
    .expect("nothing left in L2");
    assert!(
        !cache.contains_in_l1(&1),
        "the stale answer was written to L1"
    );
    assert_eq!(cache.try_get_with(&1, value("v2")).await.unwrap(), "v2");
}

/// Item 4, second half: a value whose L1 fill lost to an invalidation is not kept as the
/// stale-if-error fallback either (an explicit `invalidate` drops the fallback copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_raced_by_an_invalidation_is_not_kept_as_the_fallback() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("staleraced");
    let cache = h
        .cache::<i64, String>(&ns)
        .stale_if_error(Duration::from_secs(60))
        .build()
        .expect("cache");
    // Another cache of the namespace fills L2 only as far as `cache` is concerned.
    let other = h.cache::<i64, String>(&ns).build().expect("other");
    assert_eq!(other.try_get_with(&1, value("v1")).await.unwrap(), "v1");
    other.wait_for_l2_fills().await;

    let pause = h.test_hooks().pause_next(HookPoint::AfterL2Read);
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.try_get_with(&1, value("unused")).await })
    };
    reached(&pause, "the reader after its L2 hit").await;
    cache.invalidate(&1).await.expect("invalidate");
    pause.release();
    assert_eq!(reader.await.expect("task").expect("read"), "v1");
    assert!(!cache.contains_in_l1(&1), "the raced fill is not in L1");
    let err = cache
        .try_get_with(&1, failing())
        .await
        .expect_err("no fallback may survive the explicit invalidation");
    assert!(err.loader_error::<LoadError>().is_some());
}

/// Item 5: while a namespace flush is applied, a read whose counter snapshot already includes
/// the flush must not read the pre-flush generation, or it fills L1 with an old value that the
/// flush's L1 sweep has already passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_a_flush_does_not_pair_the_new_counter_with_the_old_generation() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let other = live_handle(&redis, &mut publisher).await; // another process
    let ns = namespace("flushpair");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    let remote = other.cache::<i64, String>(&ns).build().expect("remote");
    // This process knows the generation and holds a probe in L1; key 3 is only in L2.
    assert_eq!(
        cache.try_get_with(&2, value("probe")).await.unwrap(),
        "probe"
    );
    assert!(cache.contains_in_l1(&2));
    assert_eq!(remote.try_get_with(&3, value("old")).await.unwrap(), "old");

    // The other process flushes the namespace; our subscriber stops inside apply_flush.
    let applying = h.test_hooks().pause_next(HookPoint::InsideApplyFlush);
    remote.invalidate_all().await.expect("flush");
    reached(&applying, "the subscriber inside apply_flush").await;
    // A read now, stopped after its L2 read.
    let read_done = h.test_hooks().pause_next(HookPoint::AfterL2Read);
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.try_get_with(&3, value("new")).await })
    };
    reached(&read_done, "the reader after its L2 read").await;
    applying.release();
    wait_until("the flush swept L1", DEADLINE, || async {
        !cache.contains_in_l1(&2)
    })
    .await
    .expect("flush applied");
    read_done.release();
    let _ = reader.await.expect("task").expect("read");

    // The flush has been applied: the pre-flush value must not be in L1.
    assert_ne!(
        cache.get(&3).await.as_deref(),
        Some("old"),
        "a pre-flush value was filled into L1 after the flush"
    );
    assert_eq!(cache.try_get_with(&3, value("new")).await.unwrap(), "new");
}

/// How the lost flush of item 6 is noticed.
#[derive(Clone, Copy, Debug)]
enum Noticed {
    Gap,
    EpochChange,
    Undecodable,
}

/// Item 6: a namespace flush whose message is lost is noticed only as a gap (or an epoch
/// change, or garbage). Flushing L1 is not enough: the process must also relearn the
/// namespace's generation, or it keeps reading the old generation's keys once live again.
async fn a_lost_flush_relearns_the_generation(noticed: Noticed) {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("lostflush");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    assert_eq!(cache.try_get_with(&1, value("old")).await.unwrap(), "old");

    // The daemon moves the namespace to a new generation; its Flush message is lost.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let g: u64 = redis::cmd("INCR")
        .arg(Naming::default().generation_key(&ns))
        .query_async(&mut conn)
        .await
        .expect("INCR");
    assert_eq!(g, 1);
    publisher.lose_one();
    match noticed {
        Noticed::Gap => publisher.heartbeat().await,
        Noticed::EpochChange => {
            publisher.epoch = publisher.epoch.wrapping_add(1);
            publisher.seq = 0;
            // The first message of the new epoch ends liveness; make it a data message so the
            // epoch change is not also a heartbeat that makes the stream live again.
            publisher.invalidate(&ns, &["999"]).await;
        }
        Noticed::Undecodable => publisher.publish_raw(b"garbage").await,
    }
    wait_live(&h, false).await;
    assert!(!cache.contains_in_l1(&1), "L1 flushed");
    make_live(&h, &mut publisher).await;

    assert_eq!(
        cache.get(&1).await,
        None,
        "read from the old generation after the lost flush"
    );
    assert_eq!(cache.try_get_with(&1, value("new")).await.unwrap(), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_flush_noticed_as_a_gap_relearns_the_generation() {
    a_lost_flush_relearns_the_generation(Noticed::Gap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_flush_noticed_as_an_epoch_change_relearns_the_generation() {
    a_lost_flush_relearns_the_generation(Noticed::EpochChange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_flush_noticed_as_garbage_relearns_the_generation() {
    a_lost_flush_relearns_the_generation(Noticed::Undecodable).await;
}

/// Item 9: a subscription whose socket went half-open (the peer's kernel still acknowledges,
/// no data crosses) must be replaced after `heartbeat_timeout` of silence, not after the
/// minutes the kernel takes, if ever, to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_subscription_is_replaced_after_heartbeat_silence() {
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let mut publisher = Publisher::new(&redis).await;
    let heartbeat_timeout = Duration::from_millis(300);
    let h = Walcache::builder()
        .allow_unsigned()
        .redis_url(proxy.redis_url())
        .redis_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .heartbeat_timeout(heartbeat_timeout)
        .build()
        .await
        .expect("handle");
    make_live(&h, &mut publisher).await;

    // The daemon keeps heartbeating, well inside the timeout, straight to Redis.
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = &mut stop_rx => return,
                _ = tick.tick() => publisher.heartbeat().await,
            }
        }
    });
    let accepted = proxy.stats().connections_accepted;
    assert!(proxy.blackhole_open_connections() >= 1);
    wait_live(&h, false).await;
    // Ten heartbeat timeouts: far below any kernel's notice, far above PING + reconnect.
    wait_until(
        "live again on a new connection",
        Duration::from_secs(10),
        || async { h.is_live() },
    )
    .await
    .expect("the half-open subscription was replaced");
    assert!(
        proxy.stats().connections_accepted > accepted,
        "a new connection"
    );
    let _ = stop_tx.send(());
    daemon.await.expect("daemon task");
}

/// A tagged fill that passed its check before `invalidate_tag` ran, and inserts into L1 after
/// it returned, must insert an entry that is refused on hit: its stamps are the tag's counter
/// from before the check, never the bumped one. (Read at the insert, the stamps were the new
/// ones, and the old value was served until the fill's re-read took it out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_fill_inserting_after_invalidate_tag_returned_is_never_served() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = live_handle(&redis, &mut publisher).await;
    let ns = namespace("tagfill");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");

    let before_insert = h.test_hooks().pause_next(HookPoint::BeforeL1Insert);
    let fill = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.try_get_tagged_with(&1, &["t"], value("old")).await })
    };
    reached(&before_insert, "the fill's checks passed, nothing inserted").await;
    cache.invalidate_tag("t").await.expect("invalidate_tag");
    // The invalidation has returned. The fill inserts now; stop it before its re-read.
    let after_insert = h.test_hooks().pause_next(HookPoint::AfterL1Insert);
    before_insert.release();
    reached(&after_insert, "the fill inserted, not re-read yet").await;
    let read = cache.get(&1).await;
    after_insert.release();
    assert_eq!(fill.await.expect("task").expect("fill"), "old");
    assert_eq!(
        read, None,
        "a value filled before invalidate_tag was served after it returned"
    );
}

//! Redis going away and coming back; bytes in L2 that no longer decode; strict mode;
//! stale-if-error; negative caching.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use walcache::{BreakerState, Freshness, Json, Walcache};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{
    self, builder, make_live, namespace, raw_get, raw_set, LoadError, Publisher, DEADLINE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_from_the_loader_and_the_breaker_opens_then_closes() {
    support::recorder();
    let mut redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis)
        .redis_timeout(Duration::from_millis(100))
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .await
        .expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("down");
    let cache = h.cache::<i64, i64>(&ns).build().expect("cache");
    let loads = AtomicUsize::new(0);
    let load = |v: i64| {
        let loads = &loads;
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, LoadError>(v)
        }
    };
    assert_eq!(cache.try_get_with(&1, load(10)).await.unwrap(), 10);

    redis.stop();
    wait_until("stream not live", DEADLINE, || async { !h.is_live() })
        .await
        .expect("the subscription notices");
    for i in 0..20 {
        let start = Instant::now();
        let v = cache
            .try_get_with(&1, load(11))
            .await
            .expect("answered by the loader");
        assert_eq!(v, 11, "read {i}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "read {i} took {:?}: must stay within the Redis timeout",
            start.elapsed()
        );
    }
    assert_eq!(h.breaker_state(), BreakerState::Open);
    assert_eq!(loads.load(Ordering::SeqCst), 21);

    redis.start_again().expect("redis back");
    // Reads drive the half-open probe; the breaker closes once Redis answers.
    wait_until("breaker closed", DEADLINE, || async {
        let _ = cache
            .try_get_with(&2, async { Ok::<_, LoadError>(2) })
            .await;
        h.breaker_state() == BreakerState::Closed
    })
    .await
    .expect("breaker closes when Redis is back");
    // L2 is used again: a fill lands in Redis.
    wait_until("L2 written again", DEADLINE, || async {
        let _ = cache
            .try_get_with(&3, async { Ok::<_, LoadError>(3) })
            .await;
        raw_get(&redis, &ns, "3").await.is_some()
    })
    .await
    .expect("fills reach L2 again");
    // The subscriber reconnects too: the stream becomes live again.
    let mut publisher = Publisher::new(&redis).await;
    make_live(&h, &mut publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_l2_bytes_are_a_counted_miss_and_get_overwritten() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("decode");
    // Another deploy wrote a String under the same schema version; we now read a number.
    let old = h
        .cache::<i64, String>(&ns)
        .codec(Json)
        .build()
        .expect("old");
    #[allow(deprecated)] // the shortest way to write another deploy's value
    old.insert(&1, "not a number".to_owned()).await.unwrap();
    // And something that is not walcache's at all.
    raw_set(&redis, &ns, "2", b"foreign bytes").await;

    let new = h.cache::<i64, u64>(&ns).codec(Json).build().expect("new");
    let undecodable = || {
        support::recorder().counter(
            walcache::metrics::L2_UNDECODABLE_TOTAL,
            &[("namespace", &ns)],
        )
    };
    let before = undecodable();
    for key in [1, 2] {
        let loads = AtomicUsize::new(0);
        let v = new
            .try_get_with(&key, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, LoadError>(42)
            })
            .await
            .expect("a miss, loaded");
        assert_eq!(v, 42);
        new.wait_for_l2_fills().await;
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let raw = raw_get(&redis, &ns, &key.to_string())
            .await
            .expect("overwritten");
        assert_eq!(raw[0], 1, "a value envelope now");
        assert_eq!(&raw[11..], b"42", "no tags, then the JSON");
    }
    assert_eq!(undecodable() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_bypasses_both_tiers_while_not_live() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let h = builder(&redis)
        .freshness(Freshness::Strict)
        .build()
        .await
        .expect("handle");
    assert!(!h.is_live(), "no heartbeat yet");
    let ns = namespace("strict");
    let cache = h.cache::<i64, i64>(&ns).build().expect("cache");
    let loads = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = cache
            .try_get_with(&1, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, LoadError>(1)
            })
            .await
            .unwrap();
        assert_eq!(v, 1);
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        3,
        "every read goes to the loader"
    );
    assert_eq!(raw_get(&redis, &ns, "1").await, None, "and writes no tier");
    assert_eq!(cache.get(&1).await, None);

    let mut publisher = Publisher::new(&redis).await;
    make_live(&h, &mut publisher).await;
    for _ in 0..3 {
        cache
            .try_get_with(&1, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, LoadError>(1)
            })
            .await
            .unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 4, "live: cached again");
}

/// This process's own `invalidate_tag` drops the stale-if-error copies carrying the tag, as its
/// `invalidate` and `invalidate_all` drop theirs: once it returns, this process reads nothing
/// filled with the tag before it, not even as a fallback. Copies of other tags stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_drops_the_stale_if_error_copies_carrying_the_tag() {
    let h = support::l1_only_handle().await;
    let cache = h
        .cache::<i64, String>("stale_tags")
        .stale_if_error(Duration::from_secs(60))
        .time_to_live(Duration::from_millis(50))
        .build()
        .expect("cache");
    for (k, tag) in [(1, "t"), (2, "u")] {
        cache
            .try_get_tagged_with(
                &k,
                &[tag],
                async move { Ok::<_, LoadError>(format!("v{k}")) },
            )
            .await
            .unwrap();
    }
    cache.invalidate_tag("t").await.unwrap();
    // Key 2's L1 entry expires, so the failing loader is asked and its copy answers.
    wait_until("key 2's L1 entry expired", DEADLINE, || async {
        !cache.contains_in_l1(&2)
    })
    .await
    .expect("expiry");
    let failing = || async { Err::<String, _>(LoadError) };
    let err = cache
        .try_get_tagged_with(&1, &["t"], failing())
        .await
        .expect_err("the copy carrying the invalidated tag is gone");
    assert_eq!(err.kind(), walcache::ErrorKind::Loader);
    assert_eq!(
        cache
            .try_get_tagged_with(&2, &["u"], failing())
            .await
            .unwrap(),
        "v2",
        "a copy carrying another tag still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_a_bounded_stale_value() {
    support::recorder();
    let h = support::l1_only_handle().await;
    let cache = h
        .cache::<i64, String>("stale")
        .stale_if_error(Duration::from_secs(60))
        .build()
        .expect("cache");
    let none = h.cache::<i64, String>("nostale").build().expect("cache");
    for c in [&cache, &none] {
        c.try_get_with(&1, async { Ok::<_, LoadError>("v1".to_owned()) })
            .await
            .unwrap();
    }
    // The entry expires or is evicted; the database is down.
    cache.run_pending_tasks();
    for c in [&cache, &none] {
        c.invalidate_all().await.unwrap(); // empties L1 (the stale copy is per entry age)
    }
    let failing = || async { Err::<String, _>(LoadError) };
    let err = none
        .try_get_with(&1, failing())
        .await
        .expect_err("no stale copy");
    assert!(err.loader_error::<LoadError>().is_some());
    assert_eq!(err.kind(), walcache::ErrorKind::Loader);
    // invalidate_all drops the stale copies too: stale-if-error never outlives an explicit flush.
    assert!(cache.try_get_with(&1, failing()).await.is_err());
    cache
        .try_get_with(&2, async { Ok::<_, LoadError>("v2".to_owned()) })
        .await
        .unwrap();
    cache.invalidate_all().await.unwrap();
    // A namespace no other test of the process uses: the recorder is process-wide.
    let stale2 = namespace("stale2");
    let c2 = h
        .cache::<i64, String>(&stale2)
        .stale_if_error(Duration::from_secs(60))
        .time_to_live(Duration::from_millis(50))
        .build()
        .expect("cache");
    c2.try_get_with(&1, async { Ok::<_, LoadError>("v1".to_owned()) })
        .await
        .unwrap();
    wait_until("L1 entry expired", DEADLINE, || async {
        !c2.contains_in_l1(&1)
    })
    .await
    .expect("expiry");
    assert_eq!(
        c2.try_get_with(&1, failing()).await.unwrap(),
        "v1",
        "stale served"
    );
    assert_eq!(
        support::recorder().counter(
            walcache::metrics::LOADS_TOTAL,
            &[("namespace", &stale2), ("outcome", "stale_served")]
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_results_are_cached_for_their_own_ttl() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("neg");
    let cache = h
        .cache::<i64, String>(&ns)
        .negative_ttl(Duration::from_secs(60))
        .build()
        .expect("cache");
    let loads = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = cache
            .try_get_optional_with(&404, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, LoadError>(None)
            })
            .await
            .unwrap();
        assert_eq!(v, None);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    cache.wait_for_l2_fills().await;
    assert_eq!(
        raw_get(&redis, &ns, "404").await.map(|b| b[0]),
        Some(2),
        "negative in L2"
    );
    // A caller that needs a value is not answered with "not found": it loads.
    let v = cache
        .try_get_with(&404, async { Ok::<_, LoadError>("made".to_owned()) })
        .await
        .unwrap();
    assert_eq!(v, "made");
}

/// Issue 13: a half-open probe whose caller drops its future mid-call (a client deadline, a
/// `select!`, an axum handler cancelled) must not leave the breaker half-open for good. On the
/// old code the probe slot stayed taken: no call reached Redis again and every read went to
/// the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_half_open_probe_does_not_disable_redis() {
    let redis = RedisServer::start().expect("redis");
    let proxy =
        walcache_testkit::TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let h = Walcache::builder()
        .allow_unsigned()
        .redis_url(proxy.redis_url())
        .without_invalidation_stream()
        .redis_timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_millis(200))
        .build()
        .await
        .expect("handle");
    let ns = namespace("probe");
    let cache = h.cache::<i64, i64>(&ns).build().expect("cache");
    assert_eq!(
        cache
            .try_get_with(&1, async { Ok::<_, LoadError>(1) })
            .await
            .unwrap(),
        1
    );

    proxy.set_blackhole(true);
    wait_until("breaker open", DEADLINE, || async {
        let _ = cache
            .try_get_with(&2, async { Ok::<_, LoadError>(2) })
            .await;
        h.breaker_state() == BreakerState::Open
    })
    .await
    .expect("timeouts open the breaker");
    // After the cool-down the next call is the probe: drop it mid-call (10 ms, while Redis
    // cannot answer for 100 ms).
    wait_until("a probe taken and dropped", DEADLINE, || async {
        let _ = tokio::time::timeout(
            Duration::from_millis(10),
            cache.try_get_with(&3, async { Ok::<_, LoadError>(3) }),
        )
        .await;
        h.breaker_state() == BreakerState::HalfOpen
    })
    .await
    .expect("a probe was let through and cancelled");

    proxy.set_blackhole(false);
    proxy.reset_all();
    wait_until("breaker closed", DEADLINE, || async {
        let _ = cache
            .try_get_with(&4, async { Ok::<_, LoadError>(4) })
            .await;
        h.breaker_state() == BreakerState::Closed
    })
    .await
    .expect("the next call probes and closes the breaker");
    wait_until("L2 written again", DEADLINE, || async {
        let _ = cache
            .try_get_with(&5, async { Ok::<_, LoadError>(5) })
            .await;
        raw_get(&redis, &ns, "5").await.is_some()
    })
    .await
    .expect("fills reach L2 again");
}

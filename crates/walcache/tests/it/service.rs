//! What the daemon's heartbeats say of each namespace (issues 12 and 13): a namespace listed
//! out of service bypasses both tiers until a heartbeat certifies it again; a certified one has
//! its L1 entries capped at the daemon's full-refresh interval; one no rule covers works as
//! before. Heartbeats are crafted here, as a v1.2 daemon sends them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::{Cache, Freshness, Walcache};
use walcache_protocol::HeartbeatDetails;
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{builder, namespace, raw_get, LoadError, Publisher, DEADLINE};

fn details(certified: &[&str], out_of_service: &[&str], refresh: Duration) -> HeartbeatDetails {
    HeartbeatDetails {
        lag_bytes: 0,
        refresh_interval_ms: u64::try_from(refresh.as_millis()).unwrap(),
        namespaces: certified.iter().map(|s| (*s).to_owned()).collect(),
        out_of_service: out_of_service.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Heartbeat with `d` until the handle is live (it is applied before liveness).
async fn make_live_with(h: &Walcache, publisher: &mut Publisher, d: &HeartbeatDetails) {
    for _ in 0..1000 {
        publisher.heartbeat_with(d.clone()).await;
        if wait_until("stream live", Duration::from_millis(20), || async {
            h.is_live()
        })
        .await
        .is_ok()
        {
            return;
        }
    }
    panic!("the handle never became live");
}

/// Read `key` through the cache with a loader that counts its calls and answers `value`.
async fn read(
    cache: &Cache<i64, String>,
    key: i64,
    calls: &Arc<AtomicUsize>,
    value: &str,
) -> String {
    let calls = Arc::clone(calls);
    let value = value.to_owned();
    cache
        .try_get_with(&key, async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, LoadError>(value)
        })
        .await
        .expect("read")
}

async fn out_of_service_bypasses_both_tiers(freshness: Freshness) {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis)
        .freshness(freshness)
        .build()
        .await
        .expect("handle");
    let ns = namespace("oos");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    make_live_with(&h, &mut publisher, &details(&[&ns], &[], Duration::ZERO)).await;
    let calls = Arc::new(AtomicUsize::new(0));

    // Certified: cached in both tiers.
    assert_eq!(read(&cache, 1, &calls, "v1").await, "v1");
    assert!(cache.contains_in_l1(&1));
    // The compare-and-set lands after the read returns (ADR 0012): until then L2 holds the
    // lease, which the value would replace under the comparison below.
    cache.wait_for_l2_fills().await;
    let in_l2 = raw_get(&redis, &ns, "1").await.expect("filled into L2");

    // Out of service: L1 dropped at once, and every read goes to the loader.
    publisher
        .heartbeat_with(details(&[], &[&ns], Duration::ZERO))
        .await;
    wait_until("L1 dropped for the namespace", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("an out-of-service namespace drops its L1 entries");
    for i in 0..3 {
        let fresh = format!("fresh{i}");
        assert_eq!(
            read(&cache, 1, &calls, &fresh).await,
            fresh,
            "read {i} answered from a cache tier"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1 + 3,
        "the loader serves every read"
    );
    assert!(
        !cache.contains_in_l1(&1),
        "L1 not filled while out of service"
    );
    assert_eq!(
        raw_get(&redis, &ns, "1").await,
        Some(in_l2),
        "L2 neither read nor written"
    );
    assert_eq!(read(&cache, 2, &calls, "v2").await, "v2");
    assert!(!cache.contains_in_l1(&2));
    assert_eq!(raw_get(&redis, &ns, "2").await, None, "no fill of L2");
    assert_eq!(cache.get(&1).await, None, "get() does not read L2 either");
    assert!(h.is_live(), "out of service is not a loss of liveness");

    // Back in service: cached again.
    publisher
        .heartbeat_with(details(&[&ns], &[], Duration::ZERO))
        .await;
    wait_until("cached again", DEADLINE, || async {
        read(&cache, 3, &calls, "v3").await;
        cache.contains_in_l1(&3)
    })
    .await
    .expect("a namespace back in service is cached again");
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(read(&cache, 3, &calls, "other").await, "v3");
    assert_eq!(calls.load(Ordering::SeqCst), before, "an L1 hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_service_namespace_bypasses_both_tiers_in_available_mode() {
    out_of_service_bypasses_both_tiers(Freshness::Available).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_service_namespace_bypasses_both_tiers_in_strict_mode() {
    out_of_service_bypasses_both_tiers(Freshness::Strict).await;
}

/// A heartbeat that certifies other namespaces (and lists none out of service) leaves a
/// namespace no rule covers working as before: it is cached in both tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_no_rule_covers_is_cached_as_before() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    let ns = namespace("app-only");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    make_live_with(
        &h,
        &mut publisher,
        &details(&["users"], &[], Duration::from_millis(200)),
    )
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(read(&cache, 1, &calls, "v1").await, "v1");
    assert!(cache.contains_in_l1(&1));
    assert!(raw_get(&redis, &ns, "1").await.is_some());
    assert_eq!(read(&cache, 1, &calls, "other").await, "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Issue 13: L1 entries of a namespace the daemon certifies expire after its full-refresh
/// interval even when the cache's time-to-live is an hour; a namespace no rule covers keeps
/// its own time-to-live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_entries_of_a_certified_namespace_expire_after_the_refresh_interval() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    let (covered, uncovered) = (namespace("capped"), namespace("uncapped"));
    let hour = Duration::from_secs(3600);
    let cache = h
        .cache::<i64, String>(&covered)
        .time_to_live(hour)
        .build()
        .expect("cache");
    let other = h
        .cache::<i64, String>(&uncovered)
        .time_to_live(hour)
        .build()
        .expect("cache");
    let refresh = Duration::from_millis(300);
    make_live_with(&h, &mut publisher, &details(&[&covered], &[], refresh)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let filled = Instant::now(); // before the fill: the entry is younger than this
    read(&cache, 1, &calls, "v1").await;
    read(&other, 1, &calls, "v1").await;
    assert!(cache.contains_in_l1(&1) && other.contains_in_l1(&1));
    wait_until("the capped entry expired", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("an L1 entry of a certified namespace outlives the refresh interval");
    assert!(h.is_live(), "expired, not flushed by a loss of liveness");
    // Not at once: capped, not dropped (half the interval leaves room for moka's clock).
    assert!(
        filled.elapsed() >= refresh / 2,
        "expired after {:?}, well before the cap",
        filled.elapsed()
    );
    assert!(
        other.contains_in_l1(&1),
        "a namespace no rule covers keeps its own time-to-live"
    );
    // A cache built after the cap is known is capped as well.
    let later = h
        .cache::<i64, String>(&covered)
        .time_to_live(hour)
        .schema_version(2)
        .build()
        .expect("cache");
    read(&later, 7, &calls, "v7").await;
    assert!(later.contains_in_l1(&7));
    wait_until("the later cache's entry expired", DEADLINE, || async {
        !later.contains_in_l1(&7)
    })
    .await
    .expect("capped too");
}

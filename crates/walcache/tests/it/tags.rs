//! Tags (issue 13, "Tags must scale and must not be evictable"): scoped to their namespace,
//! versioned in one hash per namespace with no time-to-live, checked when a value is read, so
//! that an invalidation is O(1) in Redis whatever the number of values carrying the tag; their
//! times and values' stamps come from the Redis server's clock and never move backwards.

use std::collections::HashMap;
use std::time::Duration;

use walcache::hooks::HookPoint;
use walcache_protocol::Naming;
use walcache_testkit::RedisServer;

use crate::support::{builder, live_handles, make_live, namespace, LoadError, Publisher, DEADLINE};

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connection")
}

/// The namespace's tag hash, as Redis holds it.
async fn tag_hash(redis: &RedisServer, ns: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(Naming::default().tags_key(ns))
        .query_async(&mut conn(redis).await)
        .await
        .expect("HGETALL")
}

/// The Redis server's clock, µs since the Unix epoch.
async fn redis_now_micros(redis: &RedisServer) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn(redis).await)
        .await
        .expect("TIME");
    secs * 1_000_000 + micros
}

/// Every value key of the namespace, with its bytes.
async fn values(redis: &RedisServer, ns: &str) -> Vec<Vec<u8>> {
    let mut c = conn(redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", Naming::default().value_key_prefix(ns)))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    let mut out = Vec::new();
    for k in keys {
        let v: Vec<u8> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut c)
            .await
            .expect("GET");
        out.push(v);
    }
    out
}

fn stamp(envelope: &[u8]) -> u64 {
    u64::from_le_bytes(envelope[1..9].try_into().expect("an envelope"))
}

/// A tag is its namespace's: invalidating `t` in one namespace leaves the values tagged `t` in
/// another, in L1 and in L2, in this process and in another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_drops_only_its_namespaces_entries() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 2).await;
    let (a, b) = (&handles[0], &handles[1]);
    let (ns1, ns2) = (namespace("tags-one"), namespace("tags-two"));
    let a1 = a.cache::<i64, i64>(&ns1).build().unwrap();
    let a2 = a.cache::<i64, i64>(&ns2).build().unwrap();
    let b2 = b.cache::<i64, i64>(&ns2).build().unwrap();
    for c in [&a1, &a2] {
        c.try_get_tagged_with(&1, &["t"], async { Ok::<_, LoadError>(1) })
            .await
            .unwrap();
        c.wait_for_l2_fills().await;
    }
    assert_eq!(b2.get(&1).await, Some(1), "b learns ns2's value from L2");
    a1.invalidate_tag("t").await.unwrap();
    assert!(!a1.contains_in_l1(&1));
    assert!(
        a2.contains_in_l1(&1),
        "the other namespace's L1 entry stays"
    );
    assert_eq!(a2.get(&1).await, Some(1));
    assert_eq!(b2.get(&1).await, Some(1), "and its L2 value");
    assert_eq!(
        a1.get(&1).await,
        None,
        "the tagged value is superseded in L2"
    );
    assert!(!tag_hash(&redis, &ns2).await.contains_key("t"));
}

/// A tag invalidation costs one write in Redis, however many values carry the tag: the values
/// stay where they are and are read as misses (on the old design it deleted every member, one
/// script blocking Redis for O(members)). A value's stamp is the Redis server's time when its
/// lease was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_is_one_write_whatever_the_number_of_values_carrying_it() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 1).await;
    let ns = namespace("tags-many");
    let cache = handles[0].cache::<i64, i64>(&ns).build().unwrap();
    let before = redis_now_micros(&redis).await;
    for k in 0..500 {
        cache
            .try_get_tagged_with(&k, &["team:7"], async move { Ok::<_, LoadError>(k) })
            .await
            .unwrap();
    }
    cache.wait_for_l2_fills().await;
    let after = redis_now_micros(&redis).await;
    let stored = values(&redis, &ns).await;
    assert_eq!(stored.len(), 500);
    for v in &stored {
        let s = stamp(v);
        assert!(
            (before..=after).contains(&s),
            "stamp {s} from the Redis clock, within [{before}, {after}]"
        );
    }
    let hash_before = tag_hash(&redis, &ns).await;
    cache.invalidate_tag("team:7").await.unwrap();
    let hash_after = tag_hash(&redis, &ns).await;
    let version: u64 = hash_after["team:7"].parse().unwrap();
    assert!(stored.iter().all(|v| stamp(v) < version));
    assert_eq!(values(&redis, &ns).await.len(), 500, "no value was deleted");
    assert_eq!(
        hash_after.len(),
        hash_before.len() + 2,
        "the tag's field and the cursor: {hash_after:?}"
    );
    let handle = builder(&redis).build().await.unwrap();
    make_live(&handle, &mut Publisher::new(&redis).await).await;
    let other = handle.cache::<i64, i64>(&ns).build().unwrap();
    for k in [0, 250, 499] {
        assert_eq!(other.get(&k).await, None, "key {k} is superseded");
        let got = other
            .try_get_tagged_with(&k, &["team:7"], async move { Ok::<_, LoadError>(k + 1000) })
            .await
            .unwrap();
        assert_eq!(got, k + 1000, "loaded again");
    }
}

/// The server's clock steps back (stood for by the namespace's tag clock ahead of it): a tag
/// invalidated now still follows every stamp taken before, and a value loaded after it is
/// stamped after it, so it is cached, not refused until the clock catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_times_and_stamps_never_move_backwards_with_the_servers_clock() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 1).await;
    let ns = namespace("tags-clock");
    let cache = handles[0].cache::<i64, i64>(&ns).build().unwrap();
    cache
        .try_get_tagged_with(&1, &["t"], async { Ok::<_, LoadError>(1) })
        .await
        .unwrap();
    cache.wait_for_l2_fills().await;
    let ahead = redis_now_micros(&redis).await + 3_600_000_000;
    let _: () = redis::cmd("HSET")
        .arg(Naming::default().tags_key(&ns))
        .arg(" now")
        .arg(ahead)
        .query_async(&mut conn(&redis).await)
        .await
        .unwrap();
    cache.invalidate_tag("t").await.unwrap();
    let version: u64 = tag_hash(&redis, &ns).await["t"].parse().unwrap();
    assert!(version > ahead, "{version} follows the clock {ahead}");
    assert_eq!(
        cache.get(&1).await,
        None,
        "the value stamped before is stale"
    );
    let got = cache
        .try_get_tagged_with(&1, &["t"], async { Ok::<_, LoadError>(2) })
        .await
        .unwrap();
    assert_eq!(got, 2);
    cache.wait_for_l2_fills().await;
    let stored = values(&redis, &ns).await;
    assert_eq!(stored.len(), 1);
    assert!(
        stamp(&stored[0]) > version,
        "stamped after the invalidation"
    );
    let handle = builder(&redis).build().await.unwrap();
    make_live(&handle, &mut Publisher::new(&redis).await).await;
    let other = handle.cache::<i64, i64>(&ns).build().unwrap();
    assert_eq!(other.get(&1).await, Some(2), "served from L2");
}

/// Dynamic tags do not accumulate: a tag invalidation also drops the fields of tags last
/// invalidated longer ago than the namespace's longest time-to-live plus the longest lease
/// (no value they could make stale can still be read), and never the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tag_versions_are_pruned_by_later_invalidations() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 1).await;
    let ns = namespace("tags-prune");
    let cache = handles[0]
        .cache::<i64, i64>(&ns)
        .l2_time_to_live(Duration::from_secs(10))
        .build()
        .unwrap();
    cache
        .try_get_tagged_with(&1, &["live"], async { Ok::<_, LoadError>(1) })
        .await
        .unwrap();
    assert_eq!(
        tag_hash(&redis, &ns).await[" ttl"],
        "10000",
        "the ttl is recorded"
    );
    let now = redis_now_micros(&redis).await;
    let horizon = 10_000_000 + walcache_protocol::MAX_LEASE_TTL.as_micros() as u64;
    let mut c = conn(&redis).await;
    for i in 0..10 {
        let _: () = redis::cmd("HSET")
            .arg(Naming::default().tags_key(&ns))
            .arg(format!("old:{i}"))
            .arg(now - horizon - 1_000_000)
            .arg(format!("recent:{i}"))
            .arg(now - horizon + 5_000_000)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    cache.invalidate_tag("live").await.unwrap();
    let hash = tag_hash(&redis, &ns).await;
    assert!(
        !hash.keys().any(|f| f.starts_with("old:")),
        "old fields pruned: {hash:?}"
    );
    assert_eq!(hash.keys().filter(|f| f.starts_with("recent:")).count(), 10);
    assert!(hash.contains_key(" now") && hash.contains_key(" ttl") && hash.contains_key("live"));
}

/// A tag invalidation concerns entries carrying the tag only: an untagged fill of the same
/// namespace under way while it runs still fills L1 (on the previous code every tag message
/// bumped a process-wide counter and discarded every fill in flight, in every namespace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_does_not_discard_untagged_fills_in_flight() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("tags-untagged");
    let cache = h.cache::<i64, i64>(&ns).build().expect("cache");
    let after_read = h.test_hooks().pause_next(HookPoint::AfterL2Read);
    let fill = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .try_get_with(&1, async { Ok::<_, LoadError>(1) })
                .await
        })
    };
    tokio::time::timeout(DEADLINE, after_read.reached())
        .await
        .expect("the fill read L2");
    cache.invalidate_tag("t").await.expect("invalidate_tag");
    after_read.release();
    assert_eq!(fill.await.expect("task").expect("fill"), 1);
    assert!(cache.contains_in_l1(&1), "the untagged fill reached L1");
}

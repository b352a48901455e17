//! The subscriber's liveness (DESIGN contract 4): gaps, reconnects, silence, epoch changes and
//! garbage each flush L1, and L1 is used again only after an in-sequence heartbeat.
//!
//! The flushes and undecodable messages are counted per handle (`Hooks::count`), not read
//! from the process-wide metrics recorder: under plain `cargo test` the other tests' handles
//! in this process move the same counters.

use std::time::Duration;

use walcache::hooks::HookEvent;
use walcache::{Cache, Walcache};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{builder, make_live, namespace, LoadError, Publisher, DEADLINE};

async fn fill(cache: &Cache<i64, String>, key: i64) {
    let v = cache
        .try_get_with(&key, async move { Ok::<_, LoadError>(format!("v{key}")) })
        .await
        .expect("fill");
    assert_eq!(v, format!("v{key}"));
    assert!(cache.contains_in_l1(&key), "filled into L1 while live");
}

/// Whole-L1 flushes of `h` for `reason` so far.
fn flushes(h: &Walcache, reason: &'static str) -> u64 {
    h.test_hooks().count(HookEvent::L1Flush(reason))
}

async fn setup() -> (RedisServer, Publisher, Walcache, Cache<i64, String>) {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    let cache = h
        .cache::<i64, String>(&namespace("sub"))
        .build()
        .expect("cache");
    (redis, publisher, h, cache)
}

async fn wait_not_live(h: &Walcache) {
    wait_until("stream not live", DEADLINE, || async { !h.is_live() })
        .await
        .expect("liveness ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_gap_flushes_l1_until_the_next_heartbeat() {
    let (_redis, mut publisher, h, cache) = setup().await;
    fill(&cache, 1).await;
    let before = flushes(&h, "gap");
    publisher.lose_one();
    publisher.invalidate(cache.namespace(), &["999"]).await; // arrives one past the lost one
    wait_not_live(&h).await;
    assert!(!cache.contains_in_l1(&1), "a gap flushes L1");
    assert!(flushes(&h, "gap") > before);
    // Not live: reads skip L1 and do not fill it.
    fill_while_not_live(&cache, 2).await;
    publisher.heartbeat().await;
    wait_until("live again", DEADLINE, || async { h.is_live() })
        .await
        .expect("an in-sequence heartbeat makes it live");
    fill(&cache, 3).await;
}

async fn fill_while_not_live(cache: &Cache<i64, String>, key: i64) {
    let v = cache
        .try_get_with(&key, async move { Ok::<_, LoadError>(format!("v{key}")) })
        .await
        .expect("read while not live");
    assert_eq!(v, format!("v{key}"));
    assert!(
        !cache.contains_in_l1(&key),
        "L1 must not be filled while not live"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pubsub_connection_flushes_after_resubscribing_and_waits_for_a_heartbeat() {
    let (redis, mut publisher, h, cache) = setup().await;
    fill(&cache, 1).await;
    let subscribed_before = flushes(&h, "subscribed");
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1);
    wait_until("resubscribed and flushed", DEADLINE, || async {
        flushes(&h, "subscribed") > subscribed_before
    })
    .await
    .expect("a flush after the new SUBSCRIBE");
    assert!(!h.is_live(), "not live before the next heartbeat");
    assert!(!cache.contains_in_l1(&1), "L1 flushed");
    fill_while_not_live(&cache, 2).await;
    publisher.heartbeat().await;
    wait_until("live again", DEADLINE, || async { h.is_live() })
        .await
        .expect("live after the heartbeat");
    fill(&cache, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_silence_flushes_l1() {
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis)
        .heartbeat_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("handle");
    make_live(&h, &mut publisher).await;
    let cache = h
        .cache::<i64, String>(&namespace("silence"))
        .build()
        .expect("cache");
    fill(&cache, 1).await;
    let before = flushes(&h, "heartbeat_silence");
    // The daemon goes quiet.
    wait_not_live(&h).await;
    assert!(!cache.contains_in_l1(&1));
    assert!(flushes(&h, "heartbeat_silence") > before);
    make_live(&h, &mut publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_flushes_l1() {
    let (_redis, mut publisher, h, cache) = setup().await;
    fill(&cache, 1).await;
    let before = flushes(&h, "epoch_change");
    publisher.epoch = publisher.epoch.wrapping_add(1); // a restarted daemon
    publisher.seq = 0;
    publisher.heartbeat().await;
    wait_until("epoch change seen", DEADLINE, || async {
        flushes(&h, "epoch_change") > before
    })
    .await
    .expect("epoch change flush");
    assert!(!cache.contains_in_l1(&1));
    wait_until("live in the new epoch", DEADLINE, || async { h.is_live() })
        .await
        .expect("live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_channel_is_counted_and_flushes() {
    let (_redis, mut publisher, h, cache) = setup().await;
    fill(&cache, 1).await;
    let undecodable = || h.test_hooks().count(HookEvent::UndecodableMessage);
    let before = undecodable();
    for garbage in [
        &b""[..],
        b"\xff\xfe",
        b"WC\x01",
        b"WC\x09\x00\x00",
        &[0u8; 64],
    ] {
        publisher.publish_raw(garbage).await;
    }
    wait_until("garbage counted", DEADLINE, || async {
        undecodable() >= before + 5
    })
    .await
    .expect("every undecodable message counted");
    assert!(!h.is_live());
    assert!(!cache.contains_in_l1(&1));
    // The subscriber survived: a heartbeat brings it back.
    make_live(&h, &mut publisher).await;
    fill(&cache, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_invalidations_reach_l1() {
    let (_redis, mut publisher, _h, cache) = setup().await;
    fill(&cache, 1).await;
    fill(&cache, 2).await;
    publisher.invalidate(cache.namespace(), &["1"]).await;
    wait_until("key 1 dropped", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("invalidation applied");
    assert!(cache.contains_in_l1(&2), "only the named key is dropped");
    assert_eq!(cache.get(&1).await, None, "gone from L2 too");
}

//! Tag invalidations without moka's invalidation closures: nothing removes a tagged entry from
//! L1 when its tag is invalidated, so every way a read can reach an L1 entry must refuse it by
//! its stamps — whoever sent the invalidation (the daemon's stream, scoped or not to a
//! namespace; another process; this one), whichever cache object of the namespace holds it,
//! and however many tags share a stamp stripe.

use walcache_protocol::{Body, Message, Naming, TagRef};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{self, live_handles, namespace, value, LoadError, Publisher, DEADLINE};

async fn redis_now_micros(redis: &RedisServer) -> u64 {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.expect("TIME");
    secs * 1_000_000 + micros
}

/// What the daemon does for a tag invalidation: the tag's version in the namespace's tags
/// hash (so L2 reads the values carrying it as superseded), then the message on the sequenced
/// channel. `namespace: None` is an unscoped tag (an older sender): every namespace.
async fn daemon_invalidates_tag(
    redis: &RedisServer,
    publisher: &mut Publisher,
    namespaces: &[&str],
    scoped: bool,
    tag: &str,
) {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let now = redis_now_micros(redis).await;
    for ns in namespaces {
        let _: i64 = redis::cmd("HSET")
            .arg(Naming::default().tags_key(ns))
            .arg(tag)
            .arg(now)
            .query_async(&mut c)
            .await
            .expect("HSET");
    }
    publisher.seq += 1;
    let tags = if scoped {
        namespaces.iter().map(|ns| TagRef::new(*ns, tag)).collect()
    } else {
        vec![TagRef {
            namespace: None,
            tag: tag.to_owned(),
        }]
    };
    let m = Message::new(publisher.epoch, publisher.seq, Body::Tags(tags));
    let bytes = publisher.seal(m);
    publisher.publish_raw(&bytes).await;
}

/// Keys 10..=15 carry tag `t` (15 also `u`), 20 carries `u` only, 30 no tag.
async fn fill(cache: &walcache::Cache<i64, String>) {
    for k in 10..=14 {
        cache
            .try_get_tagged_with(&k, &["t"], value("old"))
            .await
            .expect("fill");
    }
    cache
        .try_get_tagged_with(&15, &["u", "t"], value("old"))
        .await
        .expect("fill");
    cache
        .try_get_tagged_with(&20, &["u"], value("old"))
        .await
        .expect("fill");
    cache.try_get_with(&30, value("old")).await.expect("fill");
    cache.wait_for_l2_fills().await;
    for k in [10, 11, 12, 13, 14, 15, 20, 30] {
        assert!(cache.contains_in_l1(&k), "{k} filled");
    }
}

/// Every read API on entries whose tag was invalidated: none answers the old value.
async fn assert_no_read_serves_old(cache: &walcache::Cache<i64, String>, what: &str) {
    assert!(!cache.contains_in_l1(&10), "{what}: contains_in_l1");
    assert_eq!(cache.get(&11).await, None, "{what}: get");
    assert_eq!(
        cache.try_get_with(&12, value("new")).await.unwrap(),
        "new",
        "{what}: try_get_with"
    );
    assert_eq!(
        cache
            .get_or_load(&13, || async { Ok::<_, LoadError>("new".to_owned()) })
            .await
            .unwrap(),
        "new",
        "{what}: get_or_load"
    );
    assert_eq!(
        cache
            .try_get_optional_with(&14, async { Ok::<_, LoadError>(Some("new".to_owned())) })
            .await
            .unwrap()
            .as_deref(),
        Some("new"),
        "{what}: try_get_optional_with"
    );
    assert_eq!(
        cache
            .try_get_tagged_with(&15, &["u", "t"], value("new"))
            .await
            .unwrap(),
        "new",
        "{what}: try_get_tagged_with, second of two tags"
    );
    // Untouched: another tag, no tag.
    assert!(cache.contains_in_l1(&20), "{what}: an entry tagged u only");
    assert!(cache.contains_in_l1(&30), "{what}: an untagged entry");
}

/// A tag invalidation from the daemon's stream, scoped to a namespace: every cache object of
/// the namespace refuses the entries carrying it, on every read path; the other namespace's
/// entries with the same tag are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_tag_message_is_enforced_on_every_read_path() {
    let redis = RedisServer::start().expect("redis");
    let (mut publisher, handles) = live_handles(&redis, 1).await;
    let h = &handles[0];
    let (ns, other) = (namespace("stamps-daemon"), namespace("stamps-other"));
    let a = h.cache::<i64, String>(&ns).build().unwrap();
    let a2 = h.cache::<i64, String>(&ns).build().unwrap();
    let b = h.cache::<i64, String>(&other).build().unwrap();
    // a2 learns a's values from L2: its entries' tags come from the envelopes.
    fill(&a).await;
    for k in [10, 11, 12, 13, 14, 15, 20, 30] {
        assert_eq!(a2.get(&k).await.as_deref(), Some("old"));
    }
    b.try_get_tagged_with(&10, &["t"], value("other"))
        .await
        .unwrap();
    b.wait_for_l2_fills().await;

    daemon_invalidates_tag(&redis, &mut publisher, &[&ns], true, "t").await;
    wait_until("the tag message applied", DEADLINE, || async {
        !a.contains_in_l1(&15)
    })
    .await
    .expect("the daemon's tag message reached L1");
    assert_no_read_serves_old(&a, "first cache").await;
    assert_no_read_serves_old(&a2, "second cache of the namespace").await;
    assert!(b.contains_in_l1(&10), "another namespace's tag t");
    assert_eq!(b.get(&10).await.as_deref(), Some("other"));
}

/// An unscoped tag (an older daemon) is every namespace's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unscoped_daemon_tag_message_is_enforced_in_every_namespace() {
    let redis = RedisServer::start().expect("redis");
    let (mut publisher, handles) = live_handles(&redis, 1).await;
    let h = &handles[0];
    let (n1, n2) = (namespace("stamps-u1"), namespace("stamps-u2"));
    let c1 = h.cache::<i64, String>(&n1).build().unwrap();
    let c2 = h.cache::<i64, String>(&n2).build().unwrap();
    fill(&c1).await;
    fill(&c2).await;
    daemon_invalidates_tag(&redis, &mut publisher, &[&n1, &n2], false, "t").await;
    wait_until("the tag message applied", DEADLINE, || async {
        !c1.contains_in_l1(&15) && !c2.contains_in_l1(&15)
    })
    .await
    .expect("the daemon's tag message reached L1");
    assert_no_read_serves_old(&c1, "first namespace").await;
    assert_no_read_serves_old(&c2, "second namespace").await;
}

/// Another process's `invalidate_tag` (the application channel): this process's entries,
/// filled from L2 with the envelope's tags, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processes_invalidate_tag_is_enforced_here_on_every_read_path() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 2).await;
    let ns = namespace("stamps-app");
    let a = handles[0].cache::<i64, String>(&ns).build().unwrap();
    let b = handles[1].cache::<i64, String>(&ns).build().unwrap();
    fill(&a).await;
    for k in [10, 11, 12, 13, 14, 15, 20, 30] {
        assert_eq!(b.get(&k).await.as_deref(), Some("old"));
        assert!(b.contains_in_l1(&k));
    }
    a.invalidate_tag("t").await.unwrap();
    assert_no_read_serves_old(&a, "the invalidating process").await;
    wait_until("the application message applied", DEADLINE, || async {
        !b.contains_in_l1(&15)
    })
    .await
    .expect("the tag invalidation reached the other process");
    assert_no_read_serves_old(&b, "the other process").await;
}

/// 1,000 tags over 256 stamp stripes (so many share one), one L1-only entry each: every
/// invalidation refuses its tag's entry, refilled entries are served again, and an entry
/// invalidated, refilled, then invalidated again (its stripe bumped by others in between) is
/// refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_sharing_stamp_stripes_never_hide_an_invalidation() {
    const TAGS: i64 = 1000;
    let h = support::l1_only_handle().await;
    let cache = h
        .cache::<i64, String>(&namespace("stamps-stripes"))
        .build()
        .unwrap();
    let tag = |k: i64| format!("tag-{k}");
    for k in 0..TAGS {
        let t = tag(k);
        cache
            .try_get_tagged_with(&k, &[t.as_str()], value("old"))
            .await
            .unwrap();
    }
    // A fixed permutation of the keys.
    let order: Vec<i64> = (0..TAGS).map(|i| (i * 617) % TAGS).collect();
    for round in ["first", "second"] {
        for &k in &order {
            cache.invalidate_tag(&tag(k)).await.unwrap();
            assert!(
                !cache.contains_in_l1(&k),
                "{round} invalidation of {}: still servable",
                tag(k)
            );
            let t = tag(k);
            let got = cache
                .try_get_tagged_with(&k, &[t.as_str()], value(round))
                .await
                .unwrap();
            assert_eq!(got, round, "{round} invalidation of {}", tag(k));
            assert!(cache.contains_in_l1(&k), "refilled after its invalidation");
        }
    }
}

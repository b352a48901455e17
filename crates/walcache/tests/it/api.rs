//! The public API's shape: futures are `Send`, configuration errors name the setting,
//! application-side invalidation reaches other processes, tags.

use std::sync::atomic::{AtomicUsize, Ordering};

use walcache::{ErrorKind, Walcache};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{self, live_handles, namespace, raw_get, LoadError, DEADLINE};

fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code, clippy::let_underscore_future)]
async fn every_public_future_is_send(h: Walcache) {
    assert_send(&Walcache::builder().build());
    let c = h.cache::<i64, String>("x").build().unwrap();
    assert_send(&c.get(&1));
    assert_send(&c.try_get_with(&1, async { Ok::<_, LoadError>(String::new()) }));
    assert_send(&c.get_or_load(&1, || async { Ok::<_, LoadError>(String::new()) }));
    assert_send(&c.try_get_tagged_with(&1, &["t"], async { Ok::<_, LoadError>(String::new()) }));
    assert_send(&c.try_get_optional_with(&1, async { Ok::<_, LoadError>(None) }));
    #[allow(deprecated)] // still public, still Send
    {
        assert_send(&c.insert(&1, String::new()));
        assert_send(&c.insert_tagged(&1, String::new(), &["t"]));
    }
    assert_send(&c.invalidate(&1));
    assert_send(&c.invalidate_tag("t"));
    assert_send(&c.invalidate_all());
    let s = h.cache::<str, String>("y").build().unwrap();
    assert_send(&s.get("k"));
}

#[tokio::test]
async fn configuration_errors_name_the_setting_and_the_fix() {
    let e = Walcache::builder().build().await.expect_err("no source");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("without_invalidation_stream"), "{e}");
    let e = Walcache::builder()
        .redis_url("not a url")
        .allow_unsigned()
        .build()
        .await
        .expect_err("bad url");
    assert!(e.to_string().contains("redis_url"), "{e}");
    // Following the stream needs the daemon's signing keys, or an explicit opt-out.
    let e = Walcache::builder()
        .redis_url("redis://127.0.0.1:1/")
        .build()
        .await
        .expect_err("an unauthenticated stream");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(
        e.to_string().contains("signing_keys_file") && e.to_string().contains("allow_unsigned"),
        "{e}"
    );
    let e = Walcache::builder()
        .redis_url("redis://127.0.0.1:1/")
        .signing_keys_env("WALCACHE_TEST_KEYS_NEVER_SET")
        .build()
        .await
        .expect_err("keys from an unset variable");
    assert!(
        e.to_string().contains("WALCACHE_TEST_KEYS_NEVER_SET"),
        "{e}"
    );
    let e = Walcache::builder()
        .key_prefix("Bad Prefix")
        .without_invalidation_stream()
        .build()
        .await
        .expect_err("bad prefix");
    assert!(e.to_string().contains("key_prefix"), "{e}");
    let e = Walcache::builder()
        .lease_ttl(walcache_protocol::MAX_LEASE_TTL + std::time::Duration::from_millis(1))
        .without_invalidation_stream()
        .build()
        .await
        .expect_err("a lease longer than tag pruning allows");
    assert!(
        e.to_string().contains("lease_ttl") && e.to_string().contains("60s"),
        "{e}"
    );
    let h = Walcache::builder()
        .without_invalidation_stream()
        .build()
        .await
        .unwrap();
    let e = h
        .cache::<i64, i64>("Not Valid")
        .build()
        .expect_err("namespace");
    assert!(e.to_string().contains("namespace"), "{e}");
    let e = h
        .cache::<i64, i64>("ok")
        .ttl_jitter(0.9)
        .build()
        .expect_err("jitter");
    assert!(e.to_string().contains("ttl_jitter"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_side_invalidation_reaches_other_handles() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let (mut publisher, handles) = live_handles(&redis, 2).await;
    let (a, b) = (&handles[0], &handles[1]);
    let ns = namespace("app");
    let ca = a.cache::<i64, String>(&ns).build().unwrap();
    let cb = b.cache::<i64, String>(&ns).build().unwrap();
    for c in [&ca, &cb] {
        for k in [1, 2] {
            c.try_get_with(&k, async move { Ok::<_, LoadError>(format!("v{k}")) })
                .await
                .unwrap();
        }
    }
    assert!(cb.contains_in_l1(&1));

    ca.invalidate(&1).await.expect("invalidate");
    assert!(!ca.contains_in_l1(&1), "own L1 at once");
    assert_eq!(raw_get(&redis, &ns, "1").await, None, "L2");
    wait_until("b's L1 dropped key 1", DEADLINE, || async {
        !cb.contains_in_l1(&1)
    })
    .await
    .expect("reaches the other handle");
    assert!(cb.contains_in_l1(&2));
    // It did not look like a gap on the daemon's channel.
    assert!(a.is_live() && b.is_live());
    publisher.heartbeat().await;
    publisher.invalidate(&ns, &["2"]).await;
    wait_until("b's L1 dropped key 2", DEADLINE, || async {
        !cb.contains_in_l1(&2)
    })
    .await
    .expect("stream still in sequence");
    assert!(b.is_live(), "still live: no gap");

    // invalidate_all moves the namespace to a new generation everywhere.
    for c in [&ca, &cb] {
        c.try_get_with(&3, async { Ok::<_, LoadError>("v3".to_owned()) })
            .await
            .unwrap();
    }
    ca.invalidate_all().await.unwrap();
    wait_until("b flushed", DEADLINE, || async { !cb.contains_in_l1(&3) })
        .await
        .expect("flush reaches b");
    let loads = AtomicUsize::new(0);
    let v = cb
        .try_get_with(&3, async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, LoadError>("v3-new".to_owned())
        })
        .await
        .unwrap();
    assert_eq!((v.as_str(), loads.load(Ordering::SeqCst)), ("v3-new", 1));
    assert!(b.is_live());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_invalidation_drops_tagged_entries_everywhere_and_wins_against_a_fill() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 2).await;
    let (a, b) = (&handles[0], &handles[1]);
    let ns = namespace("lists");
    let ca = a.cache::<&str, Vec<i64>>(&ns).build().unwrap();
    let cb = b.cache::<&str, Vec<i64>>(&ns).build().unwrap();
    ca.try_get_tagged_with(&"user:1:orders", &["orders"], async {
        Ok::<_, LoadError>(vec![1, 2])
    })
    .await
    .unwrap();
    cb.try_get_tagged_with(&"user:1:orders", &["orders"], async {
        Ok::<_, LoadError>(vec![9])
    })
    .await
    .unwrap();
    ca.try_get_with(&"untagged", async { Ok::<_, LoadError>(vec![0]) })
        .await
        .unwrap();
    assert!(cb.contains_in_l1(&"user:1:orders"));
    ca.invalidate_tag("orders").await.unwrap();
    assert!(!ca.contains_in_l1(&"user:1:orders"));
    assert!(ca.contains_in_l1(&"untagged"));
    wait_until("tag reached b", DEADLINE, || async {
        !cb.contains_in_l1(&"user:1:orders")
    })
    .await
    .expect("tag invalidation reaches b");
    // L2 still holds the value (a tag invalidation is one write, whatever the number of
    // values carrying the tag), but it is stamped before the tag's version: read as a miss.
    assert!(raw_get(&redis, &ns, "user%3A1%3Aorders").await.is_some());
    assert_eq!(cb.get(&"user:1:orders").await, None);
    let reloaded = cb
        .try_get_tagged_with(&"user:1:orders", &["orders"], async {
            Ok::<_, LoadError>(vec![4])
        })
        .await
        .unwrap();
    assert_eq!(reloaded, vec![4], "loaded again, not the superseded value");
    cb.wait_for_l2_fills().await;
    assert_eq!(
        ca.get(&"user:1:orders").await,
        Some(vec![4]),
        "the fill replaced it"
    );

    // A tag invalidation during a fill wins: the fill is not stored.
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let fill = {
        let (ca, go) = (ca.clone(), std::sync::Arc::clone(&go));
        tokio::spawn(async move {
            let wait = go.notified();
            ca.try_get_tagged_with(&"user:2:orders", &["orders"], async {
                started_tx.send(()).unwrap();
                wait.await;
                Ok::<_, LoadError>(vec![3])
            })
            .await
        })
    };
    started_rx.await.unwrap();
    cb.invalidate_tag("orders").await.unwrap();
    go.notify_one();
    assert_eq!(fill.await.unwrap().unwrap(), vec![3]);
    ca.wait_for_l2_fills().await;
    assert_eq!(
        raw_get(&redis, &ns, "user%3A2%3Aorders").await,
        None,
        "tag won in L2"
    );
    assert!(!ca.contains_in_l1(&"user:2:orders"), "tag won in L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_travel_with_the_value_through_l2() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 2).await;
    let (a, b) = (&handles[0], &handles[1]);
    let ns = namespace("tagged");
    let ca = a.cache::<i64, String>(&ns).build().unwrap();
    let cb = b.cache::<i64, String>(&ns).build().unwrap();
    ca.try_get_tagged_with(&1, &["team:7"], async {
        Ok::<_, LoadError>("x".to_owned())
    })
    .await
    .unwrap();
    ca.wait_for_l2_fills().await;
    // b learns the value from L2 through plain reads that name no tags...
    assert_eq!(cb.get(&1).await.as_deref(), Some("x"));
    assert!(cb.contains_in_l1(&1));
    // ...and still drops it when the tag is invalidated, because the tags came with it.
    ca.invalidate_tag("team:7").await.unwrap();
    wait_until("b dropped the tagged entry", DEADLINE, || async {
        !cb.contains_in_l1(&1)
    })
    .await
    .expect("tag reaches an entry filled from L2");
    assert_eq!(cb.get(&1).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    support::recorder();
    let redis = RedisServer::start_with_tls().expect("redis with TLS");
    let url = redis.tls_url().expect("a rediss:// URL");
    let ca = redis.ca_cert_path().expect("the test CA").to_owned();
    // The system roots do not know the test CA: a wrong trust setting fails at start-up.
    let untrusted = Walcache::builder()
        .redis_url(&url)
        .without_invalidation_stream()
        .build()
        .await;
    assert!(
        untrusted.is_err(),
        "a server signed by an unknown CA is refused"
    );
    let e = Walcache::builder()
        .redis_url("redis://127.0.0.1:1/")
        .redis_ca_file(&ca)
        .without_invalidation_stream()
        .build()
        .await
        .expect_err("a CA file needs rediss://");
    assert!(e.to_string().contains("redis_ca_file"), "{e}");

    let handles: Vec<Walcache> = futures_util::future::join_all((0..2).map(|_| {
        Walcache::builder()
            .redis_url(&url)
            .redis_ca_file(&ca)
            .without_invalidation_stream()
            .build()
    }))
    .await
    .into_iter()
    .map(|h| h.expect("handle over TLS"))
    .collect();
    let a = handles[0].cache::<i64, String>("tls").build().unwrap();
    let b = handles[1].cache::<i64, String>("tls").build().unwrap();
    a.try_get_with(&1, async { Ok::<_, LoadError>("over tls".to_owned()) })
        .await
        .unwrap();
    a.wait_for_l2_fills().await;
    // The other handle reads it from L2, through its own TLS connection.
    assert_eq!(b.get(&1).await.as_deref(), Some("over tls"));
}

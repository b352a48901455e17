//! Tags scoped to a namespace: every change of a rule's table moves its tags' versions in the
//! rule's own namespace and in each of its `tag_namespaces` — one field of the namespace's
//! tags hash each, on the Redis server's clock, strictly increasing, the namespace's tag clock
//! (`" now"`) with them — and announces them as `Body::Tags` with their namespaces; each bump
//! also prunes, from a cursor, tags too old to judge any value still readable. A corrupt tags
//! hash does not wedge the stream (the namespace is flushed), and a flush leaves the hash
//! alone (a process that has not heard of the flush yet still reads the old generation, whose
//! values the versions must keep judging).

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use walcache_protocol::{Body, Naming, TagRef};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{config, users_stack, Daemon, Listener, DEADLINE, USERS_RULE};

/// The users rule with its tag bumped in `orders` too.
fn users_tagging_orders() -> String {
    let rule = USERS_RULE.replace(
        "tags = [\"users\"]",
        "tags = [\"users\"]\ntag_namespaces = [\"orders\"]",
    );
    assert_ne!(rule, USERS_RULE);
    rule
}

async fn conn(redis: &RedisServer) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// `wc:{ns}:tags`, as field → µs.
async fn tags_hash(c: &mut MultiplexedConnection, ns: &str) -> HashMap<String, u64> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(Naming::default().tags_key(ns))
        .query_async(c)
        .await
        .expect("HGETALL tags");
    raw.into_iter()
        .map(|(k, v)| {
            let v = v.parse().unwrap_or_else(|_| panic!("{ns}: {k:?} = {v:?}"));
            (k, v)
        })
        .collect()
}

/// The Redis server's clock, µs.
async fn redis_micros(c: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(c).await.expect("TIME");
    s * 1_000_000 + us
}

async fn generation(c: &mut MultiplexedConnection, ns: &str) -> u64 {
    let g: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().generation_key(ns))
        .query_async(c)
        .await
        .expect("GET generation");
    g.unwrap_or(0)
}

/// The tags of every `Body::Tags` message so far.
fn tag_refs(listener: &Listener) -> Vec<TagRef> {
    listener
        .data()
        .into_iter()
        .filter_map(|m| match m.body {
            Body::Tags(t) => Some(t),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_moves_its_tags_in_every_namespace_they_are_bumped_in() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, &users_tagging_orders())).await;
    listener.wait_heartbeat().await;
    // The daemon invalidates tags in `orders` too: it certifies that namespace as well.
    let certified = listener
        .timed()
        .into_iter()
        .rev()
        .find_map(|(_, m)| match m.body {
            Body::Heartbeat {
                details: Some(d), ..
            } => Some(d.namespaces),
            _ => None,
        })
        .expect("a heartbeat with details");
    assert_eq!(certified, vec!["users".to_owned(), "orders".to_owned()]);
    let mut c = conn(&redis).await;
    listener.clear();
    let before = redis_micros(&mut c).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    let wanted = [
        TagRef::new("users", "users"),
        TagRef::new("orders", "users"),
    ];
    wait_until("both tags announced", DEADLINE, || async {
        let seen = tag_refs(&listener);
        wanted.iter().all(|t| seen.contains(t))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    assert!(
        tag_refs(&listener).iter().all(|t| wanted.contains(t)),
        "only the rule's tags, each with its namespace: {:?}",
        tag_refs(&listener)
    );
    // The versions moved before the announcement (one script): read them now.
    let mut first = HashMap::new();
    for ns in ["users", "orders"] {
        let hash = tags_hash(&mut c, ns).await;
        let v = hash["users"];
        assert!(
            v >= before,
            "{ns}: {v} is on the Redis clock, after {before}"
        );
        assert_eq!(hash[" now"], v, "{ns}: the tag clock moved with the tag");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(Naming::default().tags_key(ns))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(ttl, -1, "{ns}: the tags hash has no time-to-live");
        first.insert(ns, v);
    }

    // The tag clock of `orders` runs ahead (a library's tagged leases moved it, or the
    // server's clock stepped back): the next bump still goes past it, never back.
    // Besides, a service's tags: one invalidated long ago, one a second ago, and the longest
    // time-to-live of the namespace's tagged values (1 s): the bump prunes the first (older
    // than that plus the longest lease), as the library's invalidations do.
    let now = redis_micros(&mut c).await;
    let ahead = now + 3_600_000_000;
    let () = redis::cmd("HSET")
        .arg(Naming::default().tags_key("orders"))
        .arg(" now")
        .arg(ahead)
        .arg("old-app-tag")
        .arg(1_000)
        .arg("recent-app-tag")
        .arg(now - 1_000_000)
        .arg(" ttl")
        .arg(1_000)
        .query_async(&mut c)
        .await
        .unwrap();
    listener.clear();
    db.execute("UPDATE users SET name = 'Ada L.' WHERE id = 1", &[])
        .await
        .unwrap();
    wait_until("the second change's tags", DEADLINE, || async {
        let seen = tag_refs(&listener);
        wanted.iter().all(|t| seen.contains(t))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    let users = tags_hash(&mut c, "users").await;
    assert!(
        users["users"] > first["users"],
        "strictly increasing: {} after {}",
        users["users"],
        first["users"]
    );
    assert_eq!(users[" now"], users["users"]);
    let orders = tags_hash(&mut c, "orders").await;
    assert_eq!(orders["users"], ahead + 1, "past the namespace's tag clock");
    assert_eq!(orders[" now"], ahead + 1, "and the clock with it");
    assert!(!orders.contains_key("old-app-tag"), "pruned: {orders:?}");
    assert_eq!(orders.get("recent-app-tag"), Some(&(now - 1_000_000)));
    assert_eq!(
        orders.get(" ttl"),
        Some(&1_000),
        "the library's bookkeeping stays"
    );

    // A namespace flush (TRUNCATE) leaves its tags hash alone: the versions keep judging the
    // old generation's values. The rule's tags are bumped in the namespaces it does not flush.
    listener.clear();
    let gen_before = generation(&mut c, "users").await;
    db.batch_execute("TRUNCATE users").await.unwrap();
    wait_until("the truncate's flush", DEADLINE, || async {
        listener.flushes().contains(&"users".to_owned())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    assert!(generation(&mut c, "users").await > gen_before);
    assert_eq!(
        tags_hash(&mut c, "users").await,
        users,
        "a flush keeps the namespace's tag versions"
    );
    assert!(
        tags_hash(&mut c, "orders").await["users"] > ahead + 1,
        "a truncate bumps the rule's tags in the namespaces it does not flush"
    );
    assert!(
        !listener.flushes().contains(&"orders".to_owned()),
        "{:?}",
        listener.flushes()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_tags_hash_flushes_its_namespace_and_the_stream_goes_on() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, &users_tagging_orders())).await;
    listener.wait_heartbeat().await;
    let mut c = conn(&redis).await;
    let naming = Naming::default();

    // `orders`' tags hash is a string (wrong type); a field of `users`' is not a number.
    let () = redis::cmd("SET")
        .arg(naming.tags_key("orders"))
        .arg("garbage")
        .query_async(&mut c)
        .await
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(naming.tags_key("users"))
        .arg("users")
        .arg("not a number")
        .query_async(&mut c)
        .await
        .unwrap();
    let (orders_gen, users_gen) = (
        generation(&mut c, "orders").await,
        generation(&mut c, "users").await,
    );
    listener.clear();
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    // Both namespaces' versions are lost: each is flushed (a new generation: no value of the
    // old one is served again), and the keys still go out.
    wait_until("both namespaces flushed", DEADLINE, || async {
        let f = listener.flushes();
        f.contains(&"orders".to_owned()) && f.contains(&"users".to_owned())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    assert!(generation(&mut c, "orders").await > orders_gen);
    assert!(generation(&mut c, "users").await > users_gen);

    // Not wedged: the next change bumps the tags in hashes that are hashes again, and the
    // daemon keeps certifying.
    listener.clear();
    db.execute("UPDATE users SET name = 'Ada L.' WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    for ns in ["orders", "users"] {
        let hash = tags_hash(&mut c, ns).await;
        assert_eq!(hash.get("users"), hash.get(" now"), "{ns}: {hash:?}");
        assert!(hash.contains_key("users"), "{ns}: {hash:?}");
    }
    assert!(
        listener.flushes().is_empty(),
        "flushed once, not on every change: {:?}",
        listener.flushes()
    );
    listener.wait_heartbeat().await;
    daemon.stop().await;
}

/// Many tags are split into messages below `stream.max_message_bytes` (as keys are), each
/// bumped by the script that announces it, in its own namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_split_below_the_message_limit() {
    use walcache_cdc::Lsn;
    use walcached::publisher::{Batch, Publisher};
    let redis = RedisServer::start().expect("redis");
    let listener = Listener::start(&redis).await;
    let rules = [walcached::config::Rule {
        table: "public.users".into(),
        namespace: "users".into(),
        keys: vec!["{id}".into()],
        tags: vec!["users".into()],
        tag_namespaces: vec!["orders".into()],
    }];
    let limit = 4096;
    let mut publisher = Publisher::connect(
        &redis.client(),
        Naming::default(),
        7,
        limit,
        std::time::Duration::from_secs(5),
        &rules,
    )
    .await
    .expect("connect");
    publisher.set_server("test".into());
    // Signed with the longest key id: the split leaves room for the signature.
    let keys = walcached::signing::SigningKeys {
        keyring: walcache_protocol::Keyring::parse(&format!(
            "{}:{}",
            "k".repeat(32),
            "ab".repeat(32)
        ))
        .expect("keyring"),
        source: walcached::signing::KeySource::Env,
    };
    publisher.set_signer(walcached::signing::Signer::new(
        Some(&keys),
        Naming::default().invalidation_channel(),
        std::time::Duration::from_secs(3600),
    ));
    // No markers yet: both namespaces are flushed and their markers written.
    assert_eq!(publisher.verify(Lsn(1)).await.expect("verify"), 2);

    let mut batch = Batch {
        lsn: 2,
        ..Batch::default()
    };
    for i in 0..100 {
        let ns = if i % 2 == 0 { "users" } else { "orders" };
        batch
            .tags
            .insert(TagRef::new(ns, format!("{}-{i}", "t".repeat(100))));
    }
    publisher.publish(&batch).await.expect("publish");
    wait_until("every tag announced", DEADLINE, || async {
        tag_refs(&listener).len() >= batch.tags.len()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {} tags", tag_refs(&listener).len()));
    let messages: Vec<_> = listener
        .data()
        .into_iter()
        .filter(|m| matches!(m.body, Body::Tags(_)))
        .collect();
    assert!(messages.len() >= 3, "split: {} messages", messages.len());
    for m in &messages {
        assert!(m.encode().len() <= limit, "{} bytes", m.encode().len());
    }
    for (m, bytes) in listener.raw() {
        assert!(bytes.len() <= limit, "{} bytes signed", bytes.len());
        assert_eq!(
            keys.keyring
                .verify(&bytes, &Naming::default().invalidation_channel()),
            Ok(m)
        );
    }
    let announced: std::collections::BTreeSet<TagRef> = tag_refs(&listener).into_iter().collect();
    assert_eq!(announced, batch.tags, "each tag once, with its namespace");
    let mut c = conn(&redis).await;
    for ns in ["users", "orders"] {
        let hash = tags_hash(&mut c, ns).await;
        let bumped = batch
            .tags
            .iter()
            .filter(|t| t.namespace.as_deref() == Some(ns))
            .all(|t| hash.contains_key(&t.tag));
        assert!(bumped, "{ns}: {hash:?}");
    }
}

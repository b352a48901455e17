//! The miss path's round trips (issue 16): one script reads the key or takes its fill lease,
//! the loader runs, the caller has its answer, and the fill's compare-and-set lands after it.

use std::collections::HashMap;
use std::time::Duration;

use walcache::Walcache;
use walcache_testkit::{RedisServer, TcpProxy};

use crate::support::{live_handles, namespace, raw_get, LoadError};

type Conn = redis::aio::MultiplexedConnection;

/// The calls Redis has served per command since the last `CONFIG RESETSTAT`, among the
/// commands a cache read can send. Redis counts the commands a script runs as well as the
/// script itself.
async fn calls(conn: &mut Conn) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), n))
        })
        .filter(|(name, _)| {
            ["get", "mget", "hmget", "set", "evalsha", "eval", "script"].contains(&name.as_str())
        })
        .collect()
}

async fn reset_stats(conn: &mut Conn) {
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .expect("CONFIG RESETSTAT");
}

fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
}

/// A miss sends one script before the loader runs (the read and the lease together; the
/// previous path sent a `GET`, then the lease script) and one after it (the compare-and-set);
/// an L2 hit through `try_get_with` is that one script, through `get` one `GET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_one_script_before_the_loader_and_one_after() {
    let redis = RedisServer::start().expect("redis");
    let (_publisher, handles) = live_handles(&redis, 2).await;
    let ns = namespace("roundtrips");
    let cache = handles[0].cache::<i64, String>(&ns).build().expect("cache");
    let other = handles[1].cache::<i64, String>(&ns).build().expect("other");
    // Load the scripts first: the first call of each costs a NOSCRIPT round trip more.
    cache
        .try_get_with(&0, async { Ok::<_, LoadError>("warm".to_owned()) })
        .await
        .expect("warm-up");
    cache.wait_for_l2_fills().await;

    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    reset_stats(&mut admin).await;
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let got = {
        let mut admin = admin.clone();
        cache
            .try_get_with(&1, async move {
                seen_tx
                    .send(calls(&mut admin).await)
                    .expect("the test waits");
                Ok::<_, LoadError>("one".to_owned())
            })
            .await
            .expect("load")
    };
    assert_eq!(got, "one");
    // One script: inside it, a GET of the generation, a GET of the value key and the SET of
    // the lease. No GET of the client's own (the previous path's GET made it three).
    assert_eq!(
        seen_rx.await.expect("the loader ran"),
        counts(&[("evalsha", 1), ("get", 2), ("set", 1)]),
        "one script before the loader"
    );
    assert!(cache.contains_in_l1(&1), "in L1 when the caller has it");
    cache.wait_for_l2_fills().await;
    // The compare-and-set: GETs of the lease and the generation, the SET of the value.
    assert_eq!(
        calls(&mut admin).await,
        counts(&[("evalsha", 2), ("get", 4), ("set", 2)]),
        "and one compare-and-set after it"
    );
    assert!(raw_get(&redis, &ns, "1")
        .await
        .is_some_and(|b| b.first() == Some(&1)));

    // An L2 hit in another process: one script through `try_get_with`, one GET through `get`.
    reset_stats(&mut admin).await;
    let hit = other
        .try_get_with(&1, async { Ok::<_, LoadError>("not loaded".to_owned()) })
        .await
        .expect("hit");
    assert_eq!(hit, "one");
    assert_eq!(
        calls(&mut admin).await,
        counts(&[("evalsha", 1), ("get", 2)]),
        "an L2 hit through try_get_with: one script"
    );
    let fresh = handles[1]
        .cache::<i64, String>(&ns)
        .build()
        .expect("an L1 of its own");
    reset_stats(&mut admin).await;
    assert_eq!(fresh.get(&1).await.as_deref(), Some("one"));
    assert_eq!(
        calls(&mut admin).await,
        counts(&[("get", 1)]),
        "an L2 hit through get: one GET"
    );
}

/// The caller has its answer once the loader has: the compare-and-set is not waited for. Here
/// it cannot reach Redis at all; the value is in L1 meanwhile, and once the write fails (it is
/// not known whether an invalidation raced it) the value leaves L1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_has_its_answer_before_the_fill_reaches_l2() {
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let h = Walcache::builder()
        .allow_unsigned()
        .redis_url(proxy.redis_url())
        .without_invalidation_stream()
        .redis_timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("handle");
    let ns = namespace("answerfirst");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    let got = cache
        .try_get_with(&1, async {
            // Redis stops answering after the lease was taken, before the fill.
            proxy.set_blackhole(true);
            Ok::<_, LoadError>("loaded".to_owned())
        })
        .await
        .expect("load");
    assert_eq!(got, "loaded");
    assert!(cache.contains_in_l1(&1), "the answer is in L1");
    assert!(
        tokio::time::timeout(Duration::ZERO, cache.wait_for_l2_fills())
            .await
            .is_err(),
        "the fill is still on its way to a Redis that does not answer"
    );
    // The fill times out: the value leaves L1, and nothing is left pending.
    cache.wait_for_l2_fills().await;
    assert!(
        !cache.contains_in_l1(&1),
        "a fill of unknown outcome is not kept"
    );
    proxy.set_blackhole(false);
    proxy.reset_all();
}

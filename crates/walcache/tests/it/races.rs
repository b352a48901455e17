//! The fill/invalidate race (DESIGN contract 2), forced deterministically, with the loader
//! reading a real PostgreSQL; and a caller dropping its future mid-load.

use std::sync::Arc;

use tokio::sync::{oneshot, Notify};
use walcache_testkit::{wait_until, PgServer, RedisServer};

use crate::support::{
    self, builder, make_live, namespace, raw_del, raw_get, LoadError, Publisher, DEADLINE,
};

#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
struct DbError(#[from] tokio_postgres::Error);

async fn read_row(db: &tokio_postgres::Client, id: i64) -> Result<String, DbError> {
    let row = db
        .query_one("SELECT v FROM items WHERE id = $1", &[&id])
        .await?;
    Ok(row.get(0))
}

/// Which invalidation lands while the loader holds the old row.
#[derive(Clone, Copy, Debug)]
enum Invalidation {
    /// The daemon's: delete + announce on the sequenced channel.
    Stream,
    /// A bare `DEL` of the value key and nothing else: L2 must still be protected.
    PlainDel,
    /// Only the announcement, L2 untouched (as if the delete went to another Redis): the L1
    /// fill must still be dropped by the generation check.
    MessageOnly,
}

async fn stale_fill_race(kind: Invalidation) {
    support::recorder();
    let pg = PgServer::start().expect("postgres");
    let dbname = pg.create_database("race").await.expect("database");
    let db = Arc::new(pg.connect(&dbname).await.expect("connect"));
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO items VALUES (1, 'old'), (2, 'probe');",
    )
    .await
    .expect("schema");

    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis).build().await.expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("items");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");

    // A probe entry in L1 tells us when the subscriber has applied the invalidation.
    assert_eq!(
        cache
            .try_get_with(&2, read_row(&db, 2))
            .await
            .expect("probe"),
        "probe"
    );
    assert!(cache.contains_in_l1(&2));
    cache.wait_for_l2_fills().await;

    let (read_done_tx, read_done_rx) = oneshot::channel();
    let go = Arc::new(Notify::new());
    let fill = {
        let (cache, db, go) = (cache.clone(), Arc::clone(&db), Arc::clone(&go));
        tokio::spawn(async move {
            let wait = go.notified();
            cache
                .try_get_with(&1, async {
                    let v = read_row(&db, 1).await;
                    read_done_tx.send(()).expect("test waits");
                    wait.await; // hold the old row until the invalidation has landed
                    v
                })
                .await
        })
    };
    read_done_rx.await.expect("loader read the old row");

    // The row changes and its invalidation lands while the fill is in flight.
    db.execute("UPDATE items SET v = 'new' WHERE id = 1", &[])
        .await
        .expect("update");
    match kind {
        Invalidation::Stream => {
            publisher.invalidate(&ns, &["1", "2"]).await;
            wait_until("invalidation applied to L1", DEADLINE, || async {
                !cache.contains_in_l1(&2)
            })
            .await
            .expect("subscriber applied the message");
        }
        Invalidation::MessageOnly => {
            publisher.lose_one(); // keep the sequence: publish seq+1 by hand, without deletes
            let m = walcache_protocol::Message::new(
                publisher.epoch,
                publisher.seq,
                walcache_protocol::Body::Keys(vec![
                    walcache_protocol::KeyRef::new(ns.clone(), "1"),
                    walcache_protocol::KeyRef::new(ns.clone(), "2"),
                ]),
            );
            publisher.publish_raw(&m.encode()).await;
            wait_until("invalidation applied to L1", DEADLINE, || async {
                !cache.contains_in_l1(&2)
            })
            .await
            .expect("subscriber applied the message");
        }
        Invalidation::PlainDel => {
            assert_eq!(
                raw_del(&redis, &ns, "1").await,
                1,
                "the lease was there to delete"
            );
        }
    }
    go.notify_one();
    // The caller gets what it read (it was current when read)...
    assert_eq!(fill.await.expect("task").expect("value"), "old");
    // ...but no tier that was invalidated may keep it (L1 holds it until the compare-and-set,
    // which runs once the caller has its answer, finds the lease gone).
    cache.wait_for_l2_fills().await;
    assert!(!cache.contains_in_l1(&1), "old value stored in L1");
    let discarded = |tier: &str| {
        support::recorder().counter(
            walcache::metrics::FILLS_DISCARDED_TOTAL,
            &[("namespace", &ns), ("tier", tier)],
        )
    };
    if let Invalidation::MessageOnly = kind {
        // L2 was never told; only L1's generation check stands between the old row and L1.
        assert_eq!(discarded("l1"), 1);
        raw_del(&redis, &ns, "1").await;
    } else {
        assert_eq!(
            raw_get(&redis, &ns, "1").await,
            None,
            "old value stored in L2"
        );
        assert_eq!(discarded("l2"), 1);
    }
    // The next read loads the new row.
    assert_eq!(
        cache.try_get_with(&1, read_row(&db, 1)).await.unwrap(),
        "new"
    );
    assert_eq!(cache.get(&1).await.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_stream_invalidation_is_stored_in_neither_tier() {
    stale_fill_race(Invalidation::Stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_a_plain_del_is_not_stored() {
    stale_fill_race(Invalidation::PlainDel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_racing_an_l1_only_invalidation_is_kept_out_of_l1() {
    stale_fill_race(Invalidation::MessageOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_caller_gives_its_lease_back() {
    support::recorder();
    let redis = RedisServer::start().expect("redis");
    let mut publisher = Publisher::new(&redis).await;
    let h = builder(&redis)
        .lease_ttl(walcache_protocol::MAX_LEASE_TTL)
        .build()
        .await
        .expect("handle");
    make_live(&h, &mut publisher).await;
    let ns = namespace("drop");
    let cache = h.cache::<i64, String>(&ns).build().expect("cache");
    let task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .try_get_with(&5, std::future::pending::<Result<String, LoadError>>())
                .await
        })
    };
    wait_until("lease taken", DEADLINE, || async {
        raw_get(&redis, &ns, "5")
            .await
            .is_some_and(|b| b.starts_with(b"\0L"))
    })
    .await
    .expect("the loader is running under a lease");
    task.abort();
    // Far sooner than the 600 s lease: the dropped caller released it.
    wait_until("lease released", DEADLINE, || async {
        raw_get(&redis, &ns, "5").await.is_none()
    })
    .await
    .expect("lease released on drop");
    // And the next caller is not stuck behind it.
    let v = cache
        .try_get_with(&5, async { Ok::<_, LoadError>("five".to_owned()) })
        .await
        .unwrap();
    assert_eq!(v, "five");
}

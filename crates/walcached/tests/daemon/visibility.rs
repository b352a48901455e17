//! DESIGN contract 3 (a fill during the visibility window does not survive) beyond xid epoch 0.
//!
//! The daemon reads 32-bit xids from pgoutput's Begin and asks PostgreSQL whether each is
//! visible in a new snapshot, which holds xid8s (epoch × 2^32 + xid). These tests make the
//! epoch matter: a cluster in epoch 1, and one crossing from epoch 0 to 1 between two
//! commits. In each, two autocommit UPDATEs wait for a synchronous standby that never answers
//! ('ghost'), one after the other; both commits are in the stream, while the first still
//! waits the second's xid is above the snapshot's xmax, and a fill during each wait reads the
//! old row. Once the waits are cancelled both commits are visible, and both stale fills must
//! be invalidated.

use std::sync::Arc;

use walcache_testkit::{wait_until, PgOptions, PgServer, RedisServer};

use crate::support::{
    commit_waiting_for_the_ghost, config, live_library, make_commits_wait_for_a_ghost_standby,
    users_db, Daemon, DEADLINE, USERS_RULE,
};

/// `users.name` of row `id`, read in autocommit: the loader of the fills.
async fn load_name_of(
    db: Arc<tokio_postgres::Client>,
    id: i64,
) -> Result<String, tokio_postgres::Error> {
    db.query_one("SELECT name FROM users WHERE id = $1", &[&id])
        .await
        .map(|r| r.get::<_, String>(0))
}

/// The next xid8 the cluster will assign (the xmax of a new snapshot), provided no session
/// holds an xid: epoch × 2^32 + xid.
async fn next_xid8(db: &tokio_postgres::Client) -> u64 {
    let xmax: i64 = db
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    xmax as u64
}

/// The 32-bit xid backend `pid` holds (`pg_stat_activity.backend_xid`).
async fn backend_xid(db: &tokio_postgres::Client, pid: i32) -> u32 {
    let xid: i64 = db
        .query_one(
            "SELECT backend_xid::text::int8 FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    u32::try_from(xid).unwrap()
}

/// The scenario, on a fresh cluster `pg`. Rows 1 and 2 are cached ("old"); no other session
/// assigns xids (autovacuum is off), so the UPDATEs of rows 1 and 2 get the xid8s `first`
/// and the one after it (`first + 1`, or `first + 4` across a wrap, which skips the special
/// xids 0 to 2). With `first` given, xids are consumed up to it first; otherwise `first` is
/// whatever comes next. Panics unless both stale fills are gone within [`DEADLINE`] of the
/// commits becoming visible. Returns the two xid8s.
async fn two_stale_fills_do_not_survive(pg: &PgServer, first: Option<u64>) -> [u64; 2] {
    let redis = RedisServer::start().expect("redis");
    let (dbname, db) = users_db(pg).await;
    db.execute(
        "INSERT INTO users VALUES (1, 'a@x.org', 'old'), (2, 'b@x.org', 'old')",
        &[],
    )
    .await
    .unwrap();
    db.execute("ALTER SYSTEM SET autovacuum = off", &[])
        .await
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    let daemon = Daemon::start(&config(pg, &dbname, &redis, USERS_RULE)).await;
    let handle = live_library(&redis).await;
    let cache = handle.cache::<i64, String>("users").build().expect("cache");
    let reader = Arc::new(pg.connect(&dbname).await.unwrap());
    for id in [1, 2] {
        let name = cache
            .try_get_with(&id, load_name_of(Arc::clone(&reader), id))
            .await
            .unwrap();
        assert_eq!(name, "old");
    }
    make_commits_wait_for_a_ghost_standby(pg, &dbname, &db).await;

    let mut next = next_xid8(&db).await;
    if let Some(first) = first {
        let count = first.checked_sub(next).unwrap_or_else(|| {
            panic!("the set-up used xids up to {next}, past the first wanted, {first}")
        });
        next = pg
            .consume_xids(u32::try_from(count).unwrap())
            .await
            .unwrap();
        assert_eq!(next, first, "xids consumed up to the first UPDATE's");
    }

    let mut writers = Vec::new();
    let mut xids = Vec::new();
    for (id, sql) in [
        (1, "UPDATE users SET name = 'new' WHERE id = 1"),
        (2, "UPDATE users SET name = 'new' WHERE id = 2"),
    ] {
        let (pid, commit) = commit_waiting_for_the_ghost(pg, &dbname, &db, sql).await;
        xids.push(backend_xid(&db, pid).await);
        writers.push((pid, commit));
        // The stream carried the commit: the first invalidation evicts the entry...
        wait_until("first invalidation", DEADLINE, || async {
            !cache.contains_in_l1(&id)
        })
        .await
        .expect("invalidated from the stream");
        // ...yet a fill now still reads the old row, and stores it.
        let name = cache
            .try_get_with(&id, load_name_of(Arc::clone(&reader), id))
            .await
            .unwrap();
        assert_eq!(name, "old", "row {id} is read before its commit is visible");
        assert!(
            cache.contains_in_l1(&id),
            "the stale fill of row {id} landed"
        );
    }
    // Both waiting, one after the other: the second xid is past the snapshot's xmax.
    let snapshot: String = db
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    let second = if next % (1 << 32) == u64::from(u32::MAX) {
        next + 4
    } else {
        next + 1
    };
    assert_eq!(
        xids,
        [next as u32, second as u32],
        "the UPDATEs hold the xids after {next} (snapshot {snapshot})"
    );

    // The commits become visible (the waits are cancelled; the transactions stay committed).
    for (pid, commit) in writers {
        db.execute("SELECT pg_cancel_backend($1)", &[&pid])
            .await
            .unwrap();
        // A cancelled wait is a warning: the commit stands.
        let _ = commit.await.unwrap();
    }
    for id in [1, 2] {
        assert_eq!(load_name_of(Arc::clone(&reader), id).await.unwrap(), "new");
    }
    // The second invalidations remove both stale fills.
    let survivors = || [1, 2].into_iter().filter(|id| cache.contains_in_l1(id));
    let gone = wait_until("second invalidations", DEADLINE, || async {
        survivors().next().is_none()
    })
    .await;
    assert!(
        gone.is_ok(),
        "stale fills of rows {:?} survived their commits becoming visible \
         (xid8s {next} and {second}; snapshot while both waited: {snapshot})",
        survivors().collect::<Vec<_>>(),
    );
    for id in [1, 2] {
        let name = cache
            .try_get_with(&id, load_name_of(Arc::clone(&reader), id))
            .await
            .unwrap();
        assert_eq!(name, "new", "row {id} is fresh in both tiers");
    }
    daemon.stop().await;
    [next, second]
}

/// Epoch 1: every database older than 2^32 transactions is there. The first UPDATE's xid is
/// the snapshot's xmax, the second's is above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fills_in_xid_epoch_1_do_not_survive() {
    let pg = PgServer::start_with(PgOptions::new().xid_epoch(1)).expect("postgres in epoch 1");
    let [first, second] = two_stale_fills_do_not_survive(&pg, None).await;
    assert_eq!((first >> 32, second >> 32), (1, 1), "both in epoch 1");
}

/// Across the wrap: the first UPDATE holds the last xid of epoch 0 (2^32 - 1), the second
/// the first of epoch 1 (2^32 + 3), while the snapshot's xmax is still in epoch 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fills_across_the_xid_wrap_do_not_survive() {
    // A few hundred xids before the wrap: the set-up uses a few dozen.
    let pg = PgServer::start_with(PgOptions::new().next_xid(u32::MAX - 300))
        .expect("postgres near the wrap");
    let last_of_epoch_0 = u64::from(u32::MAX);
    let xids = two_stale_fills_do_not_survive(&pg, Some(last_of_epoch_0)).await;
    assert_eq!(xids, [last_of_epoch_0, (1 << 32) + 3]);
}

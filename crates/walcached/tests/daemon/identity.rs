//! The server we talk to is the server we think: a PostgreSQL that came back on another
//! timeline (a restore, a promoted standby) is an unknown gap.

use walcache_testkit::wait_until;

use crate::support::{config, users_stack, Daemon, Listener, DEADLINE, USERS_RULE};

/// The cluster behind the daemon's URL crashes and comes back as a standby of its own WAL,
/// then is promoted: same system, same slot on disk, a new timeline, as after a
/// point-in-time restore or a failover to a replica that carried the slot. Whatever was
/// written on the old timeline after the daemon's last confirmation may be gone or different:
/// the daemon must flush every namespace, not resume as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_new_timeline_flushes_every_namespace() {
    let (mut pg, redis, dbname, db) = users_stack().await;
    let timeline = |db: tokio_postgres::Client| async move {
        let row = db
            .query_one(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
                &[],
            )
            .await
            .expect("timeline");
        u32::from_str_radix(&row.get::<_, String>(0), 16).expect("hex")
    };
    let before = timeline(db).await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    listener.wait_heartbeat().await;
    listener.clear();

    pg.stop();
    std::fs::write(pg.data_dir().join("standby.signal"), b"").expect("standby.signal");
    pg.start_again().expect("start as a standby");
    let admin = pg.connect(&dbname).await.expect("connect to the standby");
    let promoted: bool = admin
        .query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .expect("promote")
        .get(0);
    assert!(promoted, "promoted");
    let after = timeline(pg.connect(&dbname).await.expect("connect")).await;
    assert!(after > before, "a new timeline: {before} -> {after}");

    wait_until("the namespace flushed", DEADLINE, || async {
        listener.flushes().iter().any(|ns| ns == "users")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: the daemon resumed on timeline {after} without flushing"));
    // And it streams on the new timeline.
    let writer = pg.connect(&dbname).await.expect("connect");
    writer
        .execute("INSERT INTO users VALUES (3, 'c@x.org', NULL)", &[])
        .await
        .expect("insert");
    listener.wait_keys(&["users/3"]).await;
    daemon.stop().await;
}

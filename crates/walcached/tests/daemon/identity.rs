//! The server we talk to is the server we think: a PostgreSQL that came back on another
//! timeline (a restore, a promoted standby) is an unknown gap.

use walcache_testkit::wait_until;

use crate::support::{
    config, confirmed_and_current, users_stack, Daemon, Listener, DEADLINE, USERS_RULE,
};

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

/// A restore to an older copy, promoted (a new timeline whose positions start below what the
/// daemon had confirmed on the old one): the daemon must resume from the new server's slot,
/// never confirm or certify its old, higher positions there (the slot would skip every
/// change between the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_lower_positions_resumes_from_the_new_servers_slot() {
    let (mut pg, redis, dbname, _db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE);
    let daemon = Daemon::start(&toml).await;
    listener.wait_heartbeat().await;

    // An older copy of the cluster, with the slot in it.
    pg.stop();
    let backup = tempfile::tempdir().expect("tempdir");
    copy_dir(pg.data_dir(), backup.path());
    pg.start_again().expect("start");
    // Far ahead of the copy: the daemon confirms positions the copy never reached.
    let db = pg.connect(&dbname).await.expect("reconnect");
    for i in 0..20_i64 {
        db.execute(
            "INSERT INTO users SELECT g, 'm' || g || '@x.org', repeat('x', 1000) FROM generate_series($1::int8, $1::int8 + 999) g",
            &[&(i * 1000 + 100)],
        )
        .await
        .expect("write ahead");
    }
    let ahead: i64 = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .unwrap()
        .get(0);
    wait_until("the daemon confirmed the writes", DEADLINE, || async {
        confirmed_and_current(&db).await.0 >= ahead as u64
    })
    .await
    .expect("confirmed");
    drop(db);

    // Restore the copy and promote it: timeline 2, positions below `ahead`.
    listener.clear();
    pg.stop();
    std::fs::remove_dir_all(pg.data_dir()).expect("remove");
    copy_dir(backup.path(), pg.data_dir());
    std::fs::write(pg.data_dir().join("standby.signal"), b"").expect("standby.signal");
    pg.start_again().expect("start the restored copy");
    let db = pg.connect(&dbname).await.expect("connect");
    let promoted: bool = db
        .query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted);
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .expect("insert");
    listener.wait_keys(&["users/1"]).await;
    listener.wait_heartbeat().await;
    let (confirmed, current) = confirmed_and_current(&db).await;
    assert!(
        confirmed <= current && (confirmed as i64) < ahead,
        "the restored server's slot was confirmed at {confirmed}, past its WAL end {current} \
         (the old server's position was {ahead})"
    );
    assert!(listener.flushes().iter().any(|n| n == "users"), "flushed");
    daemon.stop().await;
}

/// `cp -a`: the data directory's owner and modes kept.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

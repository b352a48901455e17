//! The replication pipeline end to end: row changes in PostgreSQL → keys deleted in Redis and
//! announced → a library `Cache` follows.

use walcache::KeyPart;
use walcache_protocol::{key_of, ColumnType};
use walcache_testkit::{wait_until, PgServer, RedisServer};

use crate::support::{
    commit_waiting_for_the_ghost, config, confirmed_and_current, live_library, load_name,
    make_commits_wait_for_a_ghost_standby, users_db, users_stack, Daemon, Listener, DEADLINE,
    USERS_RULE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_update_delete_truncate_invalidate_exactly_their_keys() {
    let started_micros = crate::support::unix_micros();
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;

    // Values in L2 that the changes must delete (as the library would have filled them).
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let naming = walcache_protocol::Naming::default();
    let _: () = redis::cmd("SADD")
        .arg(naming.schemas_key("users"))
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A new slot means unknown history: the daemon flushed the namespace at start, to a
    // generation of at least the time in µs (never back to a number a process may hold).
    let generation: u64 = redis::cmd("GET")
        .arg(naming.generation_key("users"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        generation >= started_micros,
        "{generation} < {started_micros}"
    );
    for key in ["1", "by_email:a@x.org", "by_email:b@x.org", "2"] {
        let _: () = redis::cmd("SET")
            .arg(naming.value_key("users", generation, 1, key))
            .arg("cached")
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    assert!(listener.tags().contains(&"users/users".to_owned()));
    let exists: bool = redis::cmd("EXISTS")
        .arg(naming.value_key("users", generation, 1, "1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !exists,
        "deleted from L2 before it was announced: {all:?} {:?}",
        listener.data()
    );

    listener.clear();
    db.execute("UPDATE users SET email = 'b@x.org' WHERE id = 1", &[])
        .await
        .unwrap();
    // The old and the new email key.
    listener
        .wait_keys(&[
            "users/1",
            "users/by_email:a@x.org",
            "users/by_email:b@x.org",
        ])
        .await;

    listener.clear();
    db.execute("UPDATE users SET id = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1", "users/2"]).await;

    listener.clear();
    db.execute("DELETE FROM users WHERE id = 2", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/2", "users/by_email:b@x.org"])
        .await;
    let keys = listener.keys();
    assert!(
        keys.iter()
            .all(|k| k == "users/2" || k == "users/by_email:b@x.org"),
        "{keys:?}"
    );

    listener.clear();
    let gen_before: Option<u64> = redis::cmd("GET")
        .arg(naming.generation_key("users"))
        .query_async(&mut conn)
        .await
        .unwrap();
    db.execute("INSERT INTO users VALUES (5, 'e@x.org', NULL)", &[])
        .await
        .unwrap();
    db.batch_execute("TRUNCATE users").await.unwrap();
    wait_until("truncate flushed the namespace", DEADLINE, || async {
        listener.flushes().contains(&"users".to_owned())
    })
    .await
    .expect("TRUNCATE → namespace flush");
    let gen_after: Option<u64> = redis::cmd("GET")
        .arg(naming.generation_key("users"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        gen_after.unwrap_or(0) > gen_before.unwrap_or(0),
        "a generation change"
    );
    assert!(listener.flushes().iter().any(|n| n == "users"), "a flush");

    // Sequence numbers are contiguous from 1 within the epoch.
    let data = listener.data();
    let epoch = data[0].epoch;
    assert!(data.iter().all(|m| m.epoch == epoch));
    let (confirmed, _) = confirmed_and_current(&db).await;
    assert!(confirmed > 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_evicts_a_library_cache_and_the_next_read_is_fresh() {
    let (pg, redis, dbname, db) = users_stack().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'old')", &[])
        .await
        .unwrap();
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;

    let handle = live_library(&redis).await;
    let cache = handle.cache::<i64, String>("users").build().expect("cache");
    let db = std::sync::Arc::new(db);
    let load = load_name;
    assert_eq!(
        cache
            .try_get_with(&1, load(std::sync::Arc::clone(&db)))
            .await
            .unwrap(),
        "old"
    );
    assert!(cache.contains_in_l1(&1));

    // Another task reads concurrently while the commit happens.
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move {
            wait_until("evicted from L1", DEADLINE, || async {
                !cache.contains_in_l1(&1)
            })
            .await
            .is_ok()
        })
    };
    db.execute("UPDATE users SET name = 'new' WHERE id = 1", &[])
        .await
        .unwrap();
    assert!(reader.await.unwrap(), "the commit evicts the L1 entry");
    assert_eq!(
        cache
            .try_get_with(&1, load(std::sync::Arc::clone(&db)))
            .await
            .unwrap(),
        "new"
    );
    assert!(handle.is_live());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keys_equal_library_keys_for_every_supported_type() {
    let pg = PgServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let dbname = pg.create_database("types").await.unwrap();
    let db = pg.connect(&dbname).await.unwrap();
    db.batch_execute(
        "CREATE TABLE typed (
            id int8 PRIMARY KEY, i2 int2, i4 int4, b bool, t text, v varchar(20), u uuid,
            by bytea, ts timestamp, tz timestamptz, d date, n numeric);
         ALTER TABLE typed REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let rule = r#"
[[rules]]
table = "typed"
namespace = "typed"
keys = ["{id}:{i2}:{i4}:{b}", "{t}:{v}:{u}", "{by}:{ts}:{tz}", "{d}:{n}"]
"#;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, rule)).await;
    db.batch_execute(
        "INSERT INTO typed VALUES (-9000000000, -7, 123456, true, 'spaced: text/ü', 'v:1',
            'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '\\x00ff10', '2024-02-29 13:14:15.5',
            '2024-02-29 13:14:15.123456+02', '1999-12-31', '1.500')",
    )
    .await
    .unwrap();
    // What the library builds from the same values, in Rust.
    let ts = 1_709_212_455_500_000i64; // 2024-02-29 13:14:15.5 (naive, as UTC)
    let tz = 1_709_205_255_123_456i64; // 2024-02-29 11:14:15.123456 UTC
    let days = 10_956; // 1999-12-31
    let expected = [
        key_of(&(-9_000_000_000i64, -7i16, 123_456i32, true)),
        key_of(&(
            "spaced: text/ü",
            "v:1",
            KeyPart::Uuid(0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11),
        )),
        key_of(&(
            KeyPart::Bytes(vec![0, 0xff, 0x10].into()),
            KeyPart::Timestamp(ts),
            KeyPart::Timestamp(tz),
        )),
        key_of(&(KeyPart::Date(days), KeyPart::numeric("1.5").unwrap())),
    ];
    let wanted: Vec<String> = expected.iter().map(|k| format!("typed/{k}")).collect();
    let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    listener.wait_keys(&wanted_refs).await;
    // The uuid is printed lower-case by PostgreSQL whatever the input's case.
    assert!(ColumnType::Uuid
        .parse_pg_text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")
        .is_ok());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_confirms_nothing_and_the_daemon_catches_up() {
    let (pg, mut redis, dbname, db) = users_stack().await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    redis.stop();
    db.execute("INSERT INTO users VALUES (7, 'g@x.org', NULL)", &[])
        .await
        .unwrap();
    // At or past the end of that commit.
    let lsn: i64 = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .unwrap()
        .get(0);
    let lsn = lsn as u64;
    // The daemon has received the commit...
    wait_until("commit sent to the daemon", DEADLINE, || async {
        let sent: Option<i64> = db
            .query_opt(
                "SELECT (sent_lsn - '0/0'::pg_lsn)::int8 FROM pg_stat_replication WHERE application_name = 'walcached'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        sent.is_some_and(|s| s as u64 >= lsn)
    })
    .await
    .expect("streamed");
    // ...and several status updates later it is still not confirmed.
    let reply_time = || async {
        db.query_opt(
            "SELECT reply_time::text FROM pg_stat_replication WHERE application_name = 'walcached'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0))
    };
    for _ in 0..3 {
        let before = reply_time().await;
        wait_until("another status update", DEADLINE, || async {
            reply_time().await != before
        })
        .await
        .expect("the daemon keeps sending status updates while Redis is down");
        let (confirmed, _) = confirmed_and_current(&db).await;
        assert!(
            confirmed < lsn,
            "confirmed {confirmed} past an unpublished commit at {lsn}"
        );
        assert!(daemon.status.confirmed_lsn() < lsn);
        assert!(!daemon.status.is_caught_up());
    }
    redis.start_again().expect("redis back");
    let listener = Listener::start(&redis).await;
    wait_until("caught up after redis came back", DEADLINE, || async {
        daemon.status.confirmed_lsn() >= lsn
    })
    .await
    .expect("the daemon publishes and confirms once Redis is back");
    // Redis restarted (run_id changed): the namespaces are flushed as an unknown gap, and
    // the batch itself was published.
    wait_until("flush for the unknown gap", DEADLINE, || async {
        listener.flushes().contains(&"users".to_owned())
            || listener.keys().contains(&"users/7".to_owned())
    })
    .await
    .expect("announced after the outage");
    wait_until("slot confirmed", DEADLINE, || async {
        confirmed_and_current(&db).await.0 >= lsn
    })
    .await
    .expect("confirmed in the slot");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_survived() {
    let (mut pg, redis, dbname, db) = users_stack().await;
    drop(db);
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    pg.restart().expect("restart");
    let db = pg.connect(&dbname).await.expect("reconnect");
    wait_until("daemon streaming again", DEADLINE, || async {
        daemon.status.is_caught_up()
    })
    .await
    .expect("reconnected");
    db.execute("INSERT INTO users VALUES (9, 'i@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/9"]).await;
    daemon.stop().await;
}

/// DESIGN contract 3, forced deterministically: with a synchronous standby that never answers
/// ('ghost'), a commit is in the logical stream while other sessions still read the old row.
/// A fill in that window reads the old row after the first invalidation; the second
/// invalidation, sent once the commit is visible, must remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_during_the_visibility_window_does_not_survive() {
    // A cluster of its own: the setting is cluster-wide.
    let (pg, redis, dbname, db) = users_stack().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'old')", &[])
        .await
        .unwrap();
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    let handle = live_library(&redis).await;
    let cache = handle.cache::<i64, String>("users").build().expect("cache");
    let reader = std::sync::Arc::new(pg.connect(&dbname).await.unwrap());
    let load = load_name;
    assert_eq!(
        cache
            .try_get_with(&1, load(std::sync::Arc::clone(&reader)))
            .await
            .unwrap(),
        "old"
    );

    make_commits_wait_for_a_ghost_standby(&pg, &dbname, &db).await;

    // The writer's autocommit UPDATE hangs in SyncRep.
    let (writer_pid, update) = commit_waiting_for_the_ghost(
        &pg,
        &dbname,
        &db,
        "UPDATE users SET name = 'new' WHERE id = 1",
    )
    .await;
    // The stream already carried the commit: the first invalidation evicts the entry...
    wait_until("first invalidation", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("invalidated from the stream");
    // ...yet a fill now still reads the old row, and stores it.
    assert_eq!(
        cache
            .try_get_with(&1, load(std::sync::Arc::clone(&reader)))
            .await
            .unwrap(),
        "old"
    );
    assert!(
        cache.contains_in_l1(&1),
        "the stale fill landed (the window is real)"
    );

    // The commit becomes visible (the wait is cancelled; the transaction stays committed).
    db.execute("SELECT pg_cancel_backend($1)", &[&writer_pid])
        .await
        .unwrap();
    let _ = update.await.unwrap(); // cancelled wait: a warning, the commit stands
    assert_eq!(load(std::sync::Arc::clone(&reader)).await.unwrap(), "new");
    // The second invalidation removes the stale fill from both tiers.
    wait_until("second invalidation", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("the stale fill does not survive the commit becoming visible");
    assert_eq!(
        cache
            .try_get_with(&1, load(std::sync::Arc::clone(&reader)))
            .await
            .unwrap(),
        "new"
    );
    db.execute("ALTER SYSTEM RESET synchronous_standby_names", &[])
        .await
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    daemon.stop().await;
}

/// The daemon killed mid-stream (SIGKILL, not a polite shutdown) and restarted: every
/// committed change is announced (duplicates allowed, losses not), and the slot's confirmed
/// position is never ahead of what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_loses_nothing_on_restart() {
    const ROWS: i64 = 300;
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("walcached.toml");
    std::fs::write(&config_path, config(&pg, &dbname, &redis, USERS_RULE)).unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_walcached"))
            .args(["run", "--config"])
            .arg(&config_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start walcached")
    };
    let mut daemon = spawn();
    // Rows written before the daemon made its slot are not in the stream (its start-up
    // flush covers them): start writing once it streams.
    listener.wait_heartbeat().await;
    // Each insert's commit ends at or before the WAL position read right after it.
    let mut upper_bounds: Vec<(i64, u64)> = Vec::new();
    let mut kills = 0;
    for id in 1..=ROWS {
        db.execute("INSERT INTO users VALUES ($1, 'x', NULL)", &[&id])
            .await
            .unwrap();
        let lsn: i64 = db
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
            .await
            .unwrap()
            .get(0);
        upper_bounds.push((id, lsn as u64));
        // Kill it three times, wherever it happens to be.
        if id % 70 == 0 && kills < 3 {
            daemon.kill().expect("SIGKILL");
            daemon.wait().unwrap();
            kills += 1;
            // Nothing confirmed may be unannounced.
            assert_confirmed_were_announced(&db, &listener, &upper_bounds).await;
            daemon = spawn();
        }
        if id % 50 == 0 {
            assert_confirmed_were_announced(&db, &listener, &upper_bounds).await;
        }
    }
    assert_eq!(kills, 3, "the daemon was killed mid-stream");
    let wanted: Vec<String> = (1..=ROWS).map(|i| format!("users/{i}")).collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    listener.wait_keys(&wanted).await;
    assert_confirmed_were_announced(&db, &listener, &upper_bounds).await;
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

async fn assert_confirmed_were_announced(
    db: &tokio_postgres::Client,
    listener: &Listener,
    upper_bounds: &[(i64, u64)],
) {
    let (confirmed, _) = confirmed_and_current(db).await;
    let must: Vec<String> = upper_bounds
        .iter()
        .filter(|(_, u)| *u <= confirmed)
        .map(|(id, _)| format!("users/{id}"))
        .collect();
    // The announcement precedes the confirmation; give the listener's socket time to deliver.
    let must: Vec<&str> = must.iter().map(String::as_str).collect();
    listener.wait_keys(&must).await;
}

/// A transaction too large to list key by key becomes one namespace flush: memory stays
/// bounded and no message nears Redis's pub/sub output limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_becomes_a_namespace_flush() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE)
        .replace("[stream]", "[stream]\nlarge_transaction_keys = 100");
    let daemon = Daemon::start(&toml).await;
    listener.clear();
    db.execute(
        "INSERT INTO users SELECT g, 'u' || g || '@x.org', NULL FROM generate_series(1, 5000) g",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO users VALUES (100000, 'small@x.org', NULL)",
        &[],
    )
    .await
    .unwrap();
    listener.wait_keys(&["users/100000"]).await;
    assert!(
        listener.flushes().contains(&"users".to_owned()),
        "the big one flushed the namespace"
    );
    let keys = listener.keys();
    assert!(
        keys.len() <= 2 * 100 + 2,
        "not listed key by key: {} keys",
        keys.len()
    );
    for m in listener.data() {
        assert!(m.encoded_len() < 64 * 1024, "messages stay small");
    }
    daemon.stop().await;
}

/// TLS end to end: `sslmode=verify-full` to PostgreSQL (replication and SQL sessions alike)
/// and `rediss://` with a private CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_over_tls_to_postgres_and_redis() {
    let pg = PgServer::start_with_tls().expect("postgres with TLS");
    let redis = RedisServer::start_with_tls().expect("redis with TLS");
    let (dbname, db) = users_db(&pg).await;
    let listener = Listener::start(&redis).await;
    let pg_ca = pg.ca_cert_path().expect("CA").display().to_string();
    let redis_ca = redis.ca_cert_path().expect("CA").display().to_string();
    let toml = format!(
        r#"
[postgres]
url = "{pg}?sslmode=verify-full&sslrootcert={pg_ca}"

[redis]
url = "{redis}"
ca_file = "{redis_ca}"

[stream]
heartbeat_interval_ms = 50

[http]
listen = ""

{USERS_RULE}
"#,
        pg = pg.url(&dbname),
        redis = redis.tls_url().expect("rediss URL"),
    );
    let daemon = Daemon::start(&toml).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    let encrypted: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name IN ('walcached', 'walcached-control') AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        encrypted, 2,
        "the replication and the control session both use TLS"
    );
    daemon.stop().await;
}

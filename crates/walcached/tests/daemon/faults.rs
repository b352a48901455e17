//! Faults the write path must survive with real servers (DESIGN.md: write path, contract 5 and
//! the failure table): a table altered under its rule, partitioned tables, two daemons on one
//! slot, and a slot that lost its WAL.

use walcache_protocol::Naming;
use walcache_testkit::{wait_until, PgServer, RedisServer};

use walcached::pipeline::RunOptions;

use crate::support::{
    config, users_stack, walsender_pid, Daemon, Listener, TestLog, DEADLINE, USERS_RULE,
};

async fn generation(redis: &RedisServer, namespace: &str) -> u64 {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let g: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().generation_key(namespace))
        .query_async(&mut conn)
        .await
        .expect("GET generation");
    g.unwrap_or(0)
}

/// Wait until the daemon has confirmed everything committed so far. Confirmation never passes
/// a transaction still waiting for its second (visibility) invalidation, so after this no
/// earlier change is announced again: a `Listener::clear()` then sees only what follows.
async fn settle(db: &tokio_postgres::Client, daemon: &Daemon) {
    let lsn: i64 = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .expect("current WAL position")
        .get(0);
    wait_until("the daemon confirmed every commit", DEADLINE, || async {
        daemon.status.confirmed_lsn() >= lsn as u64
    })
    .await
    .expect("the daemon confirms what it published");
}

async fn wait_flush(listener: &Listener, namespace: &str, what: &str) {
    wait_until(what, DEADLINE, || async {
        listener.flushes().iter().any(|n| n == namespace)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
}

/// DESIGN write path: "A Relation message mid-stream (ALTER TABLE) re-validates the templates;
/// a mismatch flushes the namespace and alerts, without a crash loop."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_under_its_rule_flushes_its_namespace() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    let sender = walsender_pid(&db).await.expect("the daemon streams");

    // The rule's key column disappears under it.
    db.batch_execute("ALTER TABLE users DROP COLUMN email")
        .await
        .unwrap();
    settle(&db, &daemon).await;
    listener.clear();
    let gen_before = generation(&redis, "users").await;
    db.execute("INSERT INTO users VALUES (2, 'Bob')", &[])
        .await
        .unwrap();
    // The flush may come from the catalog check (it sees the dropped column) before the
    // INSERT's own announcement, whose table tag says the INSERT itself was handled: wait for
    // both rather than reading the tags at the first flush.
    wait_until(
        "the INSERT flushed its namespace and moved its tag",
        DEADLINE,
        || async {
            listener.flushes().iter().any(|n| n == "users")
                && listener.tags().iter().any(|t| t == "users/users")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    assert!(
        generation(&redis, "users").await > gen_before,
        "the flush bumped the namespace's generation"
    );
    // A key it can no longer compute is never guessed: no keys, only the flush (and tags).
    assert!(listener.keys().is_empty(), "{:?}", listener.keys());

    // Still streaming on the same connection (no crash, no reconnect loop), caught up again.
    listener.wait_heartbeat().await;
    assert!(daemon.status.is_streaming());
    wait_until("caught up after the mismatch", DEADLINE, || async {
        daemon.status.is_caught_up()
    })
    .await
    .expect("caught up");
    assert_eq!(walsender_pid(&db).await, Some(sender), "no reconnect");

    // Every further change of the table keeps flushing its namespace.
    for (i, sql) in [
        "UPDATE users SET name = 'Robert' WHERE id = 2",
        "DELETE FROM users WHERE id = 1",
        "INSERT INTO users VALUES (3, 'Cy')",
    ]
    .into_iter()
    .enumerate()
    {
        settle(&db, &daemon).await;
        listener.clear();
        let gen_before = generation(&redis, "users").await;
        db.batch_execute(sql).await.unwrap();
        wait_flush(
            &listener,
            "users",
            &format!("flush #{} after the ALTER", i + 2),
        )
        .await;
        assert!(generation(&redis, "users").await > gen_before, "{sql}");
        assert!(listener.keys().is_empty(), "{sql}: {:?}", listener.keys());
    }
    listener.wait_heartbeat().await;
    assert_eq!(walsender_pid(&db).await, Some(sender), "no reconnect");
    daemon.stop().await;
}

/// The control session (visibility checks) lost while the stream stays up — as when
/// PostgreSQL shuts down: a fast shutdown ends ordinary sessions first, then waits for each
/// walsender's client to confirm everything sent. Found by the staleness auditor: the daemon
/// kept every later transaction "not yet visible" on the dead connection, so it never confirmed
/// again and `pg_ctl stop -m fast` hung. Now the session ends, the next one replays, and the
/// position moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_control_session_ends_the_session_and_confirmation_resumes() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    settle(&db, &daemon).await;
    let sender = walsender_pid(&db).await.expect("the daemon streams");

    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'walcached-control'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "one control session");
    listener.clear();
    db.execute("UPDATE users SET name = 'Ada L.' WHERE id = 1", &[])
        .await
        .unwrap();
    // Invalidated (published before the visibility verdict is needed), and confirmed.
    listener.wait_keys(&["users/1"]).await;
    settle(&db, &daemon).await;
    // Through a new session with a new control connection.
    assert_ne!(walsender_pid(&db).await, Some(sender), "a new session");
    wait_until("a control session again", DEADLINE, || async {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'walcached-control'",
            &[],
        )
        .await
        .is_ok_and(|r| r.get::<_, i64>(0) == 1)
    })
    .await
    .expect("the control connection is back");
    daemon.stop().await;
}

/// A rename is an ALTER under the rule too: the publication follows the table (by oid), so its
/// changes keep coming under the new name, and must not be dropped as "not ours".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_renamed_under_its_rule_flushes_its_namespace() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;

    db.batch_execute("ALTER TABLE users RENAME TO people")
        .await
        .unwrap();
    for sql in [
        "UPDATE people SET name = 'Ada L.' WHERE id = 1",
        "INSERT INTO people VALUES (2, 'b@x.org', 'Bob')",
    ] {
        settle(&db, &daemon).await;
        listener.clear();
        db.batch_execute(sql).await.unwrap();
        wait_flush(&listener, "users", sql).await;
    }
    // Renamed back, it matches its rule again: keys, not flushes.
    db.batch_execute("ALTER TABLE people RENAME TO users")
        .await
        .unwrap();
    settle(&db, &daemon).await;
    listener.clear();
    db.execute("UPDATE users SET name = 'Bobby' WHERE id = 2", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/2", "users/by_email:b@x.org"])
        .await;
    // The change itself is announced as keys (above). The catalog check may also flush the
    // namespace once, for the name that went and came back: what happened to the table
    // under another name (a partition truncated, say) is not known to it.
    daemon.stop().await;
}

/// DESIGN write path: "Partitioned tables: the publication uses `publish_via_partition_root =
/// true`, so rules on the parent see the partitions' changes."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_served_through_its_root() {
    let pg = PgServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let dbname = pg.create_database("parts").await.expect("database");
    let db = pg.connect(&dbname).await.expect("connect");
    db.batch_execute(
        "CREATE TABLE events (id bigint, at date, body text, PRIMARY KEY (id, at))
             PARTITION BY RANGE (at);
         CREATE TABLE events_2023 PARTITION OF events
             FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
         CREATE TABLE events_2024 PARTITION OF events
             FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
    )
    .await
    .expect("schema");
    let rule = r#"
[[rules]]
table = "public.events"
namespace = "events"
keys = ["{id}"]
tags = ["events"]
"#;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, rule)).await;
    let via_root: bool = db
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'walcached'",
            &[],
        )
        .await
        .expect("the daemon created its publication")
        .get(0);
    assert!(via_root, "publish_via_partition_root = true");
    settle(&db, &daemon).await;
    listener.clear();

    // Routed through the parent, and written to a partition directly.
    db.batch_execute(
        "INSERT INTO events VALUES (1, '2023-06-01', 'a');
         INSERT INTO events VALUES (2, '2024-06-01', 'b');
         INSERT INTO events_2023 VALUES (3, '2023-07-01', 'c');
         INSERT INTO events_2024 VALUES (4, '2024-07-01', 'd');",
    )
    .await
    .unwrap();
    listener
        .wait_keys(&["events/1", "events/2", "events/3", "events/4"])
        .await;
    // Moving a row across partitions and deleting one are seen through the root as well.
    settle(&db, &daemon).await;
    listener.clear();
    db.batch_execute(
        "UPDATE events SET at = '2024-01-15' WHERE id = 1;
         DELETE FROM events_2024 WHERE id = 4;",
    )
    .await
    .unwrap();
    listener.wait_keys(&["events/1", "events/4"]).await;
    assert!(
        listener.flushes().is_empty(),
        "mapped key by key, no fallback flush: {:?}",
        listener.data()
    );
    assert!(
        listener
            .keys()
            .iter()
            .all(|k| k == "events/1" || k == "events/4"),
        "{:?}",
        listener.keys()
    );
    daemon.stop().await;
}

/// Failure table: "daemon lagging or cut off … stops heartbeats"; contract 4: "a daemon …
/// waiting as a standby stays silent". A second daemon on the same slot waits quietly and
/// takes over when the first stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_slot_waits_then_takes_over() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE);
    let a = Daemon::start(&toml).await;
    listener.wait_heartbeat().await;
    let epochs = listener.epochs();
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let epoch_a = epochs[0];

    let log = TestLog::default();
    let b = Daemon::spawn_logging_to(&toml, RunOptions::default(), log.dispatch());
    // B reached START_REPLICATION and found the slot active (SQLSTATE 55006).
    wait_until("B waits as a standby", DEADLINE, || async {
        !log.lines("INFO", "waiting as a standby").is_empty()
    })
    .await
    .expect("the second daemon found the slot in use");
    // B retries (quietly, at debug)...
    wait_until("B retried", DEADLINE, || async {
        assert!(!b.status.is_streaming(), "B streams while A holds the slot");
        log.lines("DEBUG", "still in use").len() >= 2
    })
    .await
    .expect("the standby keeps retrying");
    // ...and across many of A's heartbeats B neither streams nor publishes.
    let heartbeats = listener.heartbeats();
    for _ in 0..10 {
        listener.wait_heartbeat().await;
        assert!(a.status.is_streaming());
        assert!(!b.status.is_streaming(), "B streams while A holds the slot");
        assert!(!b.status.is_caught_up());
        assert_eq!(listener.epochs(), vec![epoch_a], "only A publishes");
    }
    assert!(listener.heartbeats() >= heartbeats + 10);
    // Quietly: one info line for the whole wait, no warning per retry.
    assert_eq!(
        log.lines("INFO", "waiting as a standby").len(),
        1,
        "{:?}",
        log.lines("", "standby")
    );
    // (Besides the one start-up warning that its messages would be unsigned: no keys here.)
    let warnings: Vec<String> = log
        .lines("WARN", "")
        .into_iter()
        .filter(|l| !l.contains("publishing unsigned messages"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");

    a.stop().await;
    wait_until("B took over", DEADLINE, || async {
        b.status.is_caught_up()
    })
    .await
    .expect("the standby takes over once the slot is free");
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    let epochs = listener.epochs();
    assert_eq!(epochs.len(), 2, "{epochs:?}");
    assert_eq!(epochs[0], epoch_a);
    let last = listener.data().pop().expect("a data message");
    assert_eq!(last.epoch, epochs[1], "announced by B");
    b.stop().await;
}

/// Failure table: "slot lost (`wal_status = lost`) → recreate slot, bump generations, alert";
/// contract 5: an invalidated slot means an unknown gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_recreated_and_every_namespace_flushed() {
    let (pg, redis, dbname, db) = users_stack().await;
    db.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text);
         CREATE TABLE filler (n int);",
    )
    .await
    .unwrap();
    let rules = format!(
        "{USERS_RULE}
[[rules]]
table = \"public.accounts\"
namespace = \"accounts\"
keys = [\"{{id}}\"]
"
    );
    let toml = config(&pg, &dbname, &redis, &rules);
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&toml).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    daemon.stop().await;

    // The cluster uses 1 MB WAL segments: a slot more than 2 MB behind loses its WAL at the
    // next checkpoint.
    // (Separate statements: a multi-statement query is one transaction, ALTER SYSTEM refuses
    // that.)
    db.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '2MB'")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // A change the stopped daemon will never see (its WAL is gone).
    db.execute("INSERT INTO users VALUES (2, 'b@x.org', NULL)", &[])
        .await
        .unwrap();
    wait_until("the slot lost its WAL", DEADLINE, || async {
        let status: Option<String> = db
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walcached'",
                &[],
            )
            .await
            .expect("the slot exists")
            .get(0);
        if status.as_deref() == Some("lost") {
            return true;
        }
        for sql in [
            "INSERT INTO filler SELECT generate_series(1, 50000)",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            db.batch_execute(sql).await.expect("generate WAL");
        }
        false
    })
    .await
    .expect("wal_status = 'lost'");
    let gens_before = (
        generation(&redis, "users").await,
        generation(&redis, "accounts").await,
    );
    listener.clear();

    let daemon = Daemon::start(&toml).await;
    wait_until("every namespace flushed", DEADLINE, || async {
        let f = listener.flushes();
        f.iter().any(|n| n == "users") && f.iter().any(|n| n == "accounts")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    assert!(generation(&redis, "users").await > gens_before.0);
    assert!(generation(&redis, "accounts").await > gens_before.1);
    let status: Option<String> = db
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walcached'",
            &[],
        )
        .await
        .expect("the slot was recreated")
        .get(0);
    assert_ne!(status.as_deref(), Some("lost"), "recreated");

    db.execute("INSERT INTO accounts VALUES (7, 'g')", &[])
        .await
        .unwrap();
    db.execute("INSERT INTO users VALUES (8, 'h@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["accounts/7", "users/8"]).await;
    daemon.stop().await;
}

/// PostgreSQL 18 invalidates a slot nobody used for `idle_replication_slot_timeout` (at a
/// checkpoint): `invalidation_reason = 'idle_timeout'`, while `wal_status` stays as it was.
/// The daemon must recreate such a slot and flush, not retry a slot that can never stream.
/// Needs PostgreSQL 18 binaries: `WALCACHE_TESTKIT_PG_BINDIR=/path/to/pg18/bin cargo nextest
/// run -p walcached --run-ignored only idle_timeout` (the machine's own server is 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL 18 (WALCACHE_TESTKIT_PG_BINDIR)"]
async fn a_slot_invalidated_for_idle_timeout_is_recreated_and_every_namespace_flushed() {
    let (pg, redis, dbname, db) = users_stack().await;
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        version >= 180_000,
        "this test needs PostgreSQL 18, the server is {version}"
    );
    let toml = config(&pg, &dbname, &redis, USERS_RULE);
    let listener = Listener::start(&redis).await;
    Daemon::start(&toml).await.stop().await;
    db.batch_execute("ALTER SYSTEM SET idle_replication_slot_timeout = '1s'")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    wait_until("the slot invalidated for idle_timeout", DEADLINE, || async {
        db.batch_execute("CHECKPOINT").await.expect("checkpoint");
        let reason: Option<String> = db
            .query_one(
                "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = 'walcached'",
                &[],
            )
            .await
            .expect("the slot exists")
            .get(0);
        reason.as_deref() == Some("idle_timeout")
    })
    .await
    .expect("invalidation_reason = 'idle_timeout'");
    db.batch_execute("ALTER SYSTEM RESET idle_replication_slot_timeout")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    listener.clear();

    let daemon = Daemon::start(&toml).await;
    wait_until("the namespace flushed", DEADLINE, || async {
        listener.flushes().iter().any(|n| n == "users")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: saw {:?}", listener.data()));
    db.execute("INSERT INTO users VALUES (8, 'h@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/8"]).await;
    daemon.stop().await;
}

/// Redis at `maxmemory` under `noeviction` refuses writes (`OOM command not allowed`): the
/// invalidation scripts, flagged `allow-oom`, must still run — a refused write of a tag
/// version used to fail every publish, and the stream stalled with nothing announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_still_run_on_a_redis_at_maxmemory() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    listener.wait_heartbeat().await;

    // Data, then a maxmemory below what Redis uses: every write that needs memory is refused.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let filler = vec![b'x'; 64 * 1024];
    for i in 0..64 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(&filler)
            .query_async(&mut conn)
            .await
            .expect("filler");
    }
    for (setting, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1mb")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(setting)
            .arg(value)
            .query_async(&mut conn)
            .await
            .expect("CONFIG SET");
    }
    let refused: redis::RedisResult<i64> =
        redis::cmd("INCR").arg("probe").query_async(&mut conn).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("OOM")),
        "a plain INCR is refused at maxmemory: {refused:?}"
    );

    // A change: its tag version bump and key deletes run, the message goes out.
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    assert!(listener.tags().iter().any(|t| t == "users/users"));
    listener.wait_heartbeat().await;
    daemon.stop().await;
}

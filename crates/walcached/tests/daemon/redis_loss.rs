//! Redis forgets (issue: "Redis can forget"): a restart from an older snapshot with the daemon
//! running and with it down, `FLUSHALL`, a replica promoted after writes it had not received,
//! a crash while a flush is owed, an unreadable generation, and a rule change. Each loss is
//! found through the namespace's durable marker and flushed before any heartbeat certifies it;
//! generations never go back.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use walcache_protocol::{Body, Naming};
use walcache_testkit::{wait_until, RedisServer, TcpProxy};

use crate::support::{config, unix_micros, users_stack, Daemon, Listener, DEADLINE, USERS_RULE};

async fn conn(redis: &RedisServer) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn generation(conn: &mut MultiplexedConnection) -> u64 {
    let g: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().generation_key("users"))
        .query_async(conn)
        .await
        .expect("GET generation");
    g.unwrap_or(0)
}

async fn marker(conn: &mut MultiplexedConnection) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(Naming::default().marker_key("users"))
        .query_async(conn)
        .await
        .expect("HGETALL marker")
}

/// Stand for a value a service filled before the next change: user 1 under generation `g`.
async fn plant(conn: &mut MultiplexedConnection, g: u64) -> String {
    let naming = Naming::default();
    let key = naming.value_key("users", g, 1, "1");
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(naming.schemas_key("users"))
        .arg(1)
        .ignore()
        .cmd("SET")
        .arg(&key)
        .arg("Ada (stale once the UPDATE commits)")
        .ignore()
        .query_async(conn)
        .await
        .expect("plant");
    key
}

async fn exists(conn: &mut MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .expect("EXISTS")
}

/// A row, a running daemon, a planted value in a snapshot, and the UPDATE that deletes it
/// after the snapshot. Returns the generation the value lives under and its key.
async fn snapshot_then_delete(redis: &RedisServer, db: &tokio_postgres::Client) -> (u64, String) {
    let mut c = conn(redis).await;
    let g0 = generation(&mut c).await;
    let key = plant(&mut c, g0).await;
    let _: () = redis::cmd("SAVE").query_async(&mut c).await.expect("SAVE");
    let listener = Listener::start(redis).await;
    db.execute("UPDATE users SET name = 'Bea' WHERE id = 1", &[])
        .await
        .expect("update");
    listener.wait_keys(&["users/1"]).await;
    assert!(!exists(&mut c, &key).await, "the UPDATE deleted the value");
    (g0, key)
}

/// Issue case 1: Redis restarts from a snapshot taken before a delete while the daemon runs.
/// The snapshot brings the stale value back; no heartbeat may certify the namespace before it
/// is flushed (on the old code the first heartbeat came seconds before the flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_older_snapshot_is_flushed_before_any_heartbeat() {
    let (pg, mut redis, dbname, db) = users_stack().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    let (g0, key) = snapshot_then_delete(&redis, &db).await;

    redis.stop();
    redis
        .start_again()
        .expect("redis restarts from its snapshot");
    let mut c = conn(&redis).await;
    assert!(
        exists(&mut c, &key).await,
        "the snapshot brought the stale value back"
    );

    // Every heartbeat on the restarted server follows the flush: by the first one heard, the
    // namespace has moved past the generation the stale value lives under.
    let listener = Listener::start(&redis).await;
    listener.wait_heartbeat().await;
    let g1 = generation(&mut c).await;
    assert!(
        g1 > g0,
        "a heartbeat certified generation {g1} holding the stale value"
    );
    let mark = marker(&mut c).await;
    assert_eq!(mark.get("owed").map(String::as_str), Some("0"), "{mark:?}");
    daemon.stop().await;
}

/// Issue case 2: the same, with the daemon stopped before the restart and started after it:
/// the marker in the snapshot is behind the slot, so the namespace is flushed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_older_snapshot_while_the_daemon_is_down_is_flushed_at_start() {
    let (pg, mut redis, dbname, db) = users_stack().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    let cfg = config(&pg, &dbname, &redis, USERS_RULE);
    let daemon = Daemon::start(&cfg).await;
    let (g0, key) = snapshot_then_delete(&redis, &db).await;
    daemon.stop().await;

    redis.stop();
    redis
        .start_again()
        .expect("redis restarts from its snapshot");
    let mut c = conn(&redis).await;
    assert!(
        exists(&mut c, &key).await,
        "the snapshot brought the stale value back"
    );

    let daemon = Daemon::start(&cfg).await;
    let g1 = generation(&mut c).await;
    assert!(
        g1 > g0,
        "the daemon started over generation {g1} holding the stale value"
    );
    daemon.stop().await;
}

/// No false alarms: a daemon restarted over a Redis that kept everything flushes nothing,
/// and one restarted with a changed rule flushes that rule's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_flushes_nothing_and_a_changed_rule_flushes_its_namespace() {
    let (pg, redis, dbname, db) = users_stack().await;
    let cfg = config(&pg, &dbname, &redis, USERS_RULE);
    let daemon = Daemon::start(&cfg).await;
    for i in 0..20 {
        db.execute(
            "INSERT INTO users VALUES ($1, $2, 'x')",
            &[&i64::from(i), &format!("{i}@x.org")],
        )
        .await
        .unwrap();
    }
    let listener = Listener::start(&redis).await;
    db.execute("UPDATE users SET name = 'y' WHERE id = 19", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/19"]).await;
    daemon.stop().await;
    let mut c = conn(&redis).await;
    let g0 = generation(&mut c).await;

    let daemon = Daemon::start(&cfg).await;
    db.execute("UPDATE users SET name = 'z' WHERE id = 19", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/19"]).await;
    daemon.stop().await;
    assert_eq!(
        generation(&mut c).await,
        g0,
        "a clean restart flushes nothing"
    );
    assert!(listener.flushes().is_empty(), "{:?}", listener.flushes());

    let changed = USERS_RULE.replace(
        r#"keys = ["{id}", "by_email:{email}"]"#,
        r#"keys = ["{id}", "by_email:{email}", "by_name:{name}"]"#,
    );
    assert_ne!(changed, USERS_RULE);
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, &changed)).await;
    assert!(
        generation(&mut c).await > g0,
        "a changed rule flushes its namespace"
    );
    assert_eq!(listener.flushes(), vec!["users".to_owned()]);
    daemon.stop().await;
}

/// `FLUSHALL` while the daemon runs: `run_id` does not change, the marker is gone. The
/// namespace is flushed to a generation of at least the time in µs (never back to 1), and no
/// heartbeat sent after the `FLUSHALL` arrives before that flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_is_flushed_before_the_next_heartbeat_and_generations_never_go_back() {
    let (pg, redis, dbname, _db) = users_stack().await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    let listener = Listener::start(&redis).await;
    let mut c = conn(&redis).await;
    let g0 = generation(&mut c).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let after = unix_micros() as i64;

    wait_until("the namespace flushed", DEADLINE, || async {
        listener.flushes().iter().any(|n| n == "users")
    })
    .await
    .expect("FLUSHALL is found through the missing marker");
    let timed = listener.timed();
    let flush_at = timed
        .iter()
        .position(|(_, m)| matches!(&m.body, Body::Flush(ns) if ns.iter().any(|n| n == "users")))
        .expect("a flush");
    let early: Vec<_> = timed[..flush_at]
        .iter()
        .filter(|(_, m)| m.is_heartbeat() && m.sent_at_micros > after)
        .collect();
    assert!(
        early.is_empty(),
        "heartbeats sent after FLUSHALL came before the flush: {early:?}"
    );
    listener.wait_heartbeat().await;
    let g1 = generation(&mut c).await;
    assert!(g1 > g0 && g1 >= after as u64, "generation {g1} after {g0}");
    daemon.stop().await;
}

/// A failover: the daemon's Redis URL now reaches a replica promoted with `REPLICAOF NO ONE`
/// after writes it had not received (its link was cut). The replica still holds the value the
/// last UPDATE deleted on the old primary, and the marker from before; the namespace is
/// flushed before any heartbeat on the promoted server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_after_missing_writes_is_flushed_before_any_heartbeat() {
    let (pg, primary, dbname, db) = users_stack().await;
    let replica = RedisServer::start().expect("replica");
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    let link = TcpProxy::start(([127, 0, 0, 1], primary.port()).into()).expect("link");
    let front = TcpProxy::start(([127, 0, 0, 1], primary.port()).into()).expect("front");
    let mut r = conn(&replica).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(link.port())
        .query_async(&mut r)
        .await
        .unwrap();
    let cfg =
        config(&pg, &dbname, &primary, USERS_RULE).replace(&primary.url(), &front.redis_url());
    let daemon = Daemon::start(&cfg).await;
    let mut p = conn(&primary).await;
    let g0 = generation(&mut p).await;
    let key = plant(&mut p, g0).await;
    wait_until("the replica has the value", DEADLINE, || async {
        exists(&mut r.clone(), &key).await
    })
    .await
    .expect("replication");

    link.set_blackhole(true);
    let listener = Listener::start(&primary).await;
    db.execute("UPDATE users SET name = 'Bea' WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    assert!(!exists(&mut p, &key).await);
    assert!(exists(&mut r, &key).await, "the replica missed the delete");

    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut r)
        .await
        .unwrap();
    front.set_upstream(([127, 0, 0, 1], replica.port()).into());
    front.reset_all();
    let promoted = Listener::start(&replica).await;
    promoted.wait_heartbeat().await;
    let g1 = generation(&mut r).await;
    assert!(
        g1 > g0,
        "a heartbeat certified generation {g1} on the promoted replica"
    );
    daemon.stop().await;
}

/// Flushes owed are durable: the daemon records the flush of a new slot as owed, then cannot
/// publish it (its Redis user may not run scripts) and crashes. The restarted daemon repeats
/// the flush because the marker owes it — even a marker whose position would otherwise pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_owed_is_repeated_after_a_crash_before_it_was_published() {
    let started = unix_micros();
    let (pg, redis, dbname, db) = users_stack().await;
    let mut c = conn(&redis).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("noscripts")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-@scripting")
        .query_async(&mut c)
        .await
        .expect("ACL SETUSER");
    let url = redis.url().replace("redis://", "redis://noscripts:pw@");
    let cfg = config(&pg, &dbname, &redis, USERS_RULE);
    let daemon = Daemon::spawn(&cfg.replace(&redis.url(), &url));
    wait_until(
        "the flush recorded as owed and the slot created",
        DEADLINE,
        || async {
            let slot = db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walcached'",
                    &[],
                )
                .await
                .unwrap()
                .is_some();
            slot && marker(&mut c.clone()).await.get("owed").map(String::as_str) == Some("1")
        },
    )
    .await
    .expect("owed before the slot, which the restart cannot tell from a healthy one");
    daemon.crash().await;
    assert_eq!(generation(&mut c).await, 0, "nothing was flushed");
    // Make the rest of the marker pass, so that only the flag is left to say the flush is owed.
    let _: () = redis::cmd("HSET")
        .arg(Naming::default().marker_key("users"))
        .arg("lsn")
        .arg("FFFFFFFF/FFFFFFFF")
        .query_async(&mut c)
        .await
        .unwrap();

    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&cfg).await;
    assert!(
        generation(&mut c).await >= started,
        "the restart repeated the flush"
    );
    assert!(listener.flushes().iter().any(|n| n == "users"));
    assert_eq!(
        marker(&mut c).await.get("owed").map(String::as_str),
        Some("0")
    );
    daemon.stop().await;
}

/// A namespace whose generation in Redis is unreadable (a wrong type) cannot have its keys
/// deleted one by one: the daemon flushes the namespace instead (repairing the generation), and
/// the stream goes on — never a retry loop that stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_generation_falls_back_to_a_namespace_flush() {
    let started = unix_micros();
    let (pg, redis, dbname, db) = users_stack().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    let listener = Listener::start(&redis).await;
    let mut c = conn(&redis).await;
    let gen_key = Naming::default().generation_key("users");
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&gen_key)
        .ignore()
        .cmd("RPUSH")
        .arg(&gen_key)
        .arg("not a number")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    db.execute("UPDATE users SET name = 'Bea' WHERE id = 1", &[])
        .await
        .unwrap();
    wait_until("the namespace flushed instead", DEADLINE, || async {
        listener.flushes().iter().any(|n| n == "users")
    })
    .await
    .expect("fallback to a namespace flush");
    assert!(
        generation(&mut c).await >= started,
        "the generation is a number again"
    );

    listener.clear();
    db.execute("UPDATE users SET name = 'Cy' WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    assert!(listener.flushes().is_empty(), "{:?}", listener.flushes());
    daemon.stop().await;
}

/// `check` reports each marker against the slot: nothing lost after a clean stop; after a
/// `FLUSHALL`, what the daemon will flush at start and why. And it names the persistence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_marker_against_the_slot_and_the_persistence() {
    let (pg, redis, dbname, _db) = users_stack().await;
    // The users table's tags are bumped in `orders` too: that namespace has a marker of its
    // own.
    let rule = USERS_RULE.replace(
        "tags = [\"users\"]",
        "tags = [\"users\"]\ntag_namespaces = [\"orders\"]",
    );
    let cfg = config(&pg, &dbname, &redis, &rule);
    Daemon::start(&cfg).await.stop().await;
    let line = |stdout: &str, subject: &str| {
        stdout
            .lines()
            .find(|l| l.contains(subject))
            .unwrap_or_else(|| panic!("no line for {subject}:\n{stdout}"))
            .to_owned()
    };
    let (_, stdout, _) = crate::cli::outcome(&crate::cli::walcached("check", &cfg).await);
    for subject in ["marker of namespace users", "marker of namespace orders"] {
        let l = line(&stdout, subject);
        assert!(l.starts_with("ok") && l.contains("nothing lost"), "{l}");
    }
    let l = line(&stdout, "redis persistence");
    assert!(l.contains("none (no AOF, no RDB snapshots)"), "{l}");

    let mut c = conn(&redis).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let (_, stdout, _) = crate::cli::outcome(&crate::cli::walcached("check", &cfg).await);
    let l = line(&stdout, "marker of namespace users");
    assert!(
        l.starts_with("warn") && l.contains("there is no marker"),
        "{l}"
    );
}

/// A data call renews a marker's token but never moves its position: a batch can take several
/// calls, and a Redis that kept an early one and lost a later one must not show a position the
/// lost call was part of (found by review: each call wrote the batch's end, and the start
/// audit then accepted a Redis that had lost the batch's last delete). Only a check at the
/// confirmed position moves it; with heartbeats a minute apart, none runs in this test's
/// window after start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_call_never_moves_a_markers_position() {
    let (pg, redis, dbname, db) = users_stack().await;
    db.batch_execute(
        "INSERT INTO users SELECT i, repeat('x', 1500) || i || '@x.io', 'a' \
         FROM generate_series(1, 6) i",
    )
    .await
    .unwrap();
    // The table's tag is bumped in `witness` too: a namespace only tag calls (data calls)
    // write to, whose position only a check moves.
    let rule = USERS_RULE.replace(
        "tags = [\"users\"]",
        "tags = [\"users\"]\ntag_namespaces = [\"witness\"]",
    );
    let cfg = config(&pg, &dbname, &redis, &rule)
        .replace(
            "heartbeat_interval_ms = 50",
            "heartbeat_interval_ms = 60000",
        )
        .replace("[stream]\n", "[stream]\nmax_message_bytes = 4096\n");
    let daemon = Daemon::start(&cfg).await;
    let mut c = conn(&redis).await;
    let tag_marker = || async {
        let m: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Naming::default().marker_key("witness"))
            .query_async(&mut conn(&redis).await)
            .await
            .expect("HGETALL witness marker");
        m.get("lsn").cloned()
    };
    let listener = Listener::start(&redis).await;
    // A check (every 5 s here) moves every position, the witness's too: a round during which
    // the witness's position moved says nothing, and is tried again.
    let mut observed = false;
    for round in 0..5 {
        let before = marker(&mut c).await;
        let tag_before = tag_marker().await;
        // This round's messages only: a re-invalidation of the round before can still arrive.
        let start = u64::try_from(
            db.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
                .await
                .unwrap()
                .get::<_, i64>(0),
        )
        .unwrap();
        let this_round = || {
            listener
                .data()
                .into_iter()
                .filter(|m| m.lsn > start && matches!(m.body, Body::Keys(_)))
                .collect::<Vec<_>>()
        };
        db.execute("UPDATE users SET name = $1", &[&format!("b{round}")])
            .await
            .unwrap();
        wait_until("this round's keys", DEADLINE, || async {
            this_round().iter().any(|m| {
                // The last key of the batch (ids come first, then emails).
                matches!(&m.body, Body::Keys(k) if k.iter().any(|k| k.key.ends_with("6@x.io")))
            })
        })
        .await
        .unwrap();
        let keys_messages = this_round().len();
        assert!(
            keys_messages >= 2,
            "the batch spans several calls: {keys_messages} in {:?}",
            listener.data()
        );
        let after = marker(&mut c).await;
        if tag_marker().await != tag_before {
            continue;
        }
        assert_ne!(after.get("w"), before.get("w"), "the token was renewed");
        assert_eq!(
            after.get("lsn"),
            before.get("lsn"),
            "a data call moved the position: {before:?} → {after:?}"
        );
        observed = true;
        break;
    }
    assert!(
        observed,
        "every round overlapped a check (or data calls moved the witness's position)"
    );
    daemon.stop().await;
}

/// Replies lost after their writes landed (a Redis slower than the call timeout): every such
/// call's token is remembered, so the next call does not take the marker's newest token for a
/// loss (found by review: only the first lost token was remembered, and two in a row caused a
/// needless flush of everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_replies_were_lost_after_landing_are_not_taken_for_a_loss() {
    use walcache_cdc::Lsn;
    use walcached::publisher::Publisher;
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let client = redis::Client::open(proxy.redis_url()).expect("client");
    let rules = [walcached::config::Rule {
        table: "public.users".into(),
        namespace: "users".into(),
        keys: vec!["{id}".into()],
        tags: vec!["users".into()],
        tag_namespaces: vec!["orders".into()],
    }];
    let timeout = std::time::Duration::from_millis(200);
    let mut publisher =
        Publisher::connect(&client, Naming::default(), 7, 256 * 1024, timeout, &rules)
            .await
            .expect("connect");
    publisher.set_server("test".into());
    // No markers yet: both namespaces (users, and orders its tag is bumped in) are flushed and
    // their markers written.
    assert_eq!(publisher.verify(Lsn(1)).await.expect("verify"), 2);
    assert_eq!(publisher.verify(Lsn(2)).await.expect("verify"), 0);

    // Commands now reach Redis after the call has timed out: they land, their replies are lost.
    proxy.set_latency(timeout + std::time::Duration::from_millis(100));
    for _ in 0..2 {
        let err = publisher
            .verify(Lsn(3))
            .await
            .expect_err("the reply comes too late");
        assert!(err.is_timeout(), "{err}");
    }
    let c = conn(&redis).await;
    let landed = |m: &HashMap<String, String>| m.get("w").is_some_and(|w| w.ends_with("-5"));
    wait_until("both timed-out calls landed", DEADLINE, || async {
        landed(&marker(&mut c.clone()).await)
    })
    .await
    .expect("the delayed commands reach Redis");
    proxy.set_latency(std::time::Duration::ZERO);
    publisher.reconnect(&client).await.expect("reconnect");
    assert_eq!(
        publisher.verify(Lsn(4)).await.expect("verify"),
        0,
        "a marker holding the token of a call whose reply was lost is no loss"
    );
}

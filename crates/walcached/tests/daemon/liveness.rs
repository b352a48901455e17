//! Heartbeats certify freshness against the server's WAL position: a daemon catching up on a
//! backlog, or cut off from its walsender while the server writes, stays silent.

use std::time::{Duration, Instant};

use walcache_protocol::{Body, Message};
use walcache_testkit::wait_until;

use crate::support::{config, users_stack, walsender_pid, Daemon, Listener, DEADLINE, USERS_RULE};

/// The tests' heartbeat interval (`support::config`).
const INTERVAL: Duration = Duration::from_millis(50);
/// The daemon's default heartbeat interval, for the test that measures time to the first
/// heartbeat (two of the tests' 50 ms intervals are within a busy machine's scheduling noise).
const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);
/// Draining a 100,000-row backlog in a debug build on a loaded machine.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(120);

/// Whether `m` announces the key `users/{id}`.
fn announces(m: &Message, id: i64) -> bool {
    let key = id.to_string();
    matches!(&m.body, Body::Keys(keys) if keys.iter().any(|k| k.namespace == "users" && k.key == key))
}

/// Stopped, then restarted over a backlog: no heartbeat (and `/readyz` not ready) until the
/// backlog's last change is published, then a heartbeat within two intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_a_backlog_stays_silent_until_the_backlog_is_published() {
    const TXNS: i64 = 100;
    const ROWS_PER_TXN: i64 = 1_000;
    let (pg, redis, dbname, db) = users_stack().await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE).replace(
        "heartbeat_interval_ms = 50",
        &format!("heartbeat_interval_ms = {}", DEFAULT_INTERVAL.as_millis()),
    );
    assert!(toml.contains("heartbeat_interval_ms = 250"));
    // The slot exists and is confirmed up to now; then the daemon is away.
    Daemon::start(&toml).await.stop().await;
    for t in 0..TXNS {
        let lo = t * ROWS_PER_TXN + 1;
        db.execute(
            "INSERT INTO users SELECT g, 'u' || g || '@x.org', 'n' FROM generate_series($1::int8, $2::int8) g",
            &[&lo, &(lo + ROWS_PER_TXN - 1)],
        )
        .await
        .expect("backlog");
    }
    let last_id = TXNS * ROWS_PER_TXN;

    let listener = Listener::start(&redis).await;
    let daemon = Daemon::spawn(&toml);
    // Watch /readyz's source while the backlog drains: whenever it says ready, note how far
    // the daemon had published then.
    let status = std::sync::Arc::clone(&daemon.status);
    let watcher = tokio::spawn(async move {
        loop {
            if status.is_caught_up() {
                return status.published_seq();
            }
            tokio::task::yield_now().await;
        }
    });
    wait_until(
        "the backlog's last row announced",
        CATCH_UP_DEADLINE,
        || async { listener.data().iter().any(|m| announces(m, last_id)) },
    )
    .await
    .expect("the daemon drains the backlog");
    wait_until("a heartbeat after the backlog", DEADLINE, || async {
        listener.heartbeats() > 0
    })
    .await
    .expect("heartbeats resume once caught up");
    let ready_at_seq = tokio::time::timeout(CATCH_UP_DEADLINE, watcher)
        .await
        .expect("/readyz turns ready")
        .expect("watcher");

    let timed = listener.timed();
    let (last_at, last) = timed
        .iter()
        .find(|(_, m)| announces(m, last_id))
        .expect("the last row's message");
    let (first_hb_at, first_hb) = timed
        .iter()
        .find(|(_, m)| m.is_heartbeat())
        .expect("a heartbeat");
    assert!(
        first_hb_at >= last_at && first_hb.seq >= last.seq,
        "a heartbeat (seq {}) went out before the backlog's last change (seq {}) was published",
        first_hb.seq,
        last.seq
    );
    assert!(
        ready_at_seq >= last.seq,
        "/readyz was ready at seq {ready_at_seq}, before the backlog's last change (seq {})",
        last.seq
    );
    // Wire format v1.1: the heartbeat says what it certifies, and every message its send time.
    match &first_hb.body {
        Body::Heartbeat {
            details: Some(details),
            ..
        } => {
            assert_eq!(details.namespaces, vec!["users".to_owned()]);
            assert_eq!(
                details.refresh_interval_ms, 3_600_000,
                "the default schedule"
            );
            assert_eq!(details.lag_bytes, 0, "caught up");
            assert!(details.out_of_service.is_empty(), "{details:?}");
        }
        other => panic!("a v1.1 heartbeat, got {other:?}"),
    }
    assert!(last.sent_at_micros > 0 && first_hb.sent_at_micros >= last.sent_at_micros);
    let gap = first_hb_at.duration_since(*last_at);
    assert!(
        gap <= 2 * DEFAULT_INTERVAL,
        "the first heartbeat came {gap:?} after the backlog was published (two intervals: {:?})",
        2 * DEFAULT_INTERVAL
    );
    daemon.stop().await;
}

/// The walsender stops answering (SIGSTOP: the socket stays open, nothing arrives) while the
/// server keeps committing: heartbeats stop within two intervals, long before any receive
/// deadline, and resume once the stream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replication_link_under_writes_stops_heartbeats() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    listener.wait_heartbeat().await;
    let walsender = walsender_pid(&db).await.expect("the daemon's walsender");

    // A writer commits every few milliseconds throughout.
    let writer_db = pg.connect(&dbname).await.expect("writer");
    let writing = tokio_util::sync::CancellationToken::new();
    let stop_writing = writing.clone();
    let writer = tokio::spawn(async move {
        let mut id = 1_000_000_i64;
        while !stop_writing.is_cancelled() {
            id += 1;
            writer_db
                .execute("INSERT INTO users VALUES ($1, 'w@x.org', 'w')", &[&id])
                .await
                .expect("write");
            tokio::time::sleep(Duration::from_millis(5)).await; // pacing, not synchronisation
        }
        id
    });

    signal(walsender, "STOP");
    let stopped_at = Instant::now();
    // Two intervals after the stop, whatever was in flight is out; from then on, silence.
    let quiet_from = stopped_at + 2 * INTERVAL;
    let watch_until = stopped_at + Duration::from_secs(2);
    wait_until("the watch window ends", DEADLINE, || async {
        Instant::now() >= watch_until
    })
    .await
    .expect("clock");
    let late: Vec<_> = listener
        .timed()
        .into_iter()
        .filter(|(at, m)| m.is_heartbeat() && *at > quiet_from)
        .map(|(at, _)| at.duration_since(stopped_at))
        .collect();
    signal(walsender, "CONT");
    assert!(
        late.is_empty(),
        "heartbeats kept coming while the walsender was stopped and the server wrote: at {late:?}"
    );
    assert!(
        !daemon.status.is_caught_up(),
        "/readyz says ready while the stream is cut off"
    );

    writing.cancel();
    let last = writer.await.expect("writer");
    wait_until("the writes announced", DEADLINE, || async {
        listener.data().iter().any(|m| announces(m, last))
    })
    .await
    .expect("the stream resumes");
    listener.wait_heartbeat().await;
    daemon.stop().await;
}

/// Send `SIGname` to a server process (the tests run as root or as the server's owner).
fn signal(pid: i32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A daemon whose process froze (SIGSTOP: its sockets stay open, its walsender keeps the slot
/// until `wal_sender_timeout`, 60 s) is taken over by a standby daemon once the walsender has
/// heard nothing from it for the orphan threshold (10 s with these settings): the standby
/// terminates that walsender and streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_frozen_daemon_before_wal_sender_timeout() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("walcached.toml");
    std::fs::write(&path, &toml).expect("config file");
    let mut frozen = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcached"))
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("walcached");
    listener.wait_heartbeat().await;
    let old_walsender = walsender_pid(&db)
        .await
        .expect("the first daemon's walsender");
    let frozen_pid = i32::try_from(frozen.id().expect("pid")).expect("pid");
    signal(frozen_pid, "STOP");
    let frozen_at = Instant::now();

    let standby = Daemon::spawn(&toml);
    wait_until("the standby took over", Duration::from_secs(40), || async {
        standby.status.is_caught_up()
    })
    .await
    .expect("the standby takes over before wal_sender_timeout");
    let took = frozen_at.elapsed();
    let walsender = walsender_pid(&db).await.expect("the standby's walsender");
    assert_ne!(
        walsender, old_walsender,
        "the frozen daemon's walsender was replaced"
    );
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: no faster than waiting for wal_sender_timeout"
    );
    db.execute("INSERT INTO users VALUES (7, 'g@x.org', NULL)", &[])
        .await
        .expect("insert");
    listener.wait_keys(&["users/7"]).await;

    signal(frozen_pid, "CONT");
    frozen.kill().await.expect("kill the frozen daemon");
    standby.stop().await;
}

/// A transaction writes a record larger than a WAL page and stays open, and nothing else
/// commits: the WAL writer flushes only whole pages, so the server's flush position sits in
/// the middle of that record, past anything the walsender can decode. Heartbeats must go on
/// (the daemon asks the server to flush), or every L1 would turn off for as long as the
/// transaction stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_with_a_half_flushed_record_does_not_stop_heartbeats() {
    let (pg, redis, dbname, _db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    listener.wait_heartbeat().await;

    // One 200 kB WAL record (a transactional logical message, never decoded: the transaction
    // rolls back) spanning some 25 pages: the WAL writer flushes the whole pages of it.
    let open = pg.connect(&dbname).await.expect("connect");
    open.batch_execute("BEGIN; SELECT pg_logical_emit_message(true, 'test', repeat('x', 200000));")
        .await
        .expect("a large record in an open transaction");
    let insert_lsn: String = open
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("insert lsn")
        .get(0);
    let written = Instant::now();

    // Heartbeats keep coming for several heartbeat timeouts' worth of the library's 2 s.
    let mut seen = listener.heartbeats();
    while written.elapsed() < Duration::from_secs(5) {
        wait_until(
            "a heartbeat while the transaction stays open",
            Duration::from_secs(2),
            || async { listener.heartbeats() > seen },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: heartbeats stopped {:?} after the write at {insert_lsn}",
                written.elapsed()
            )
        });
        seen = listener.heartbeats();
    }
    open.batch_execute("ROLLBACK").await.expect("rollback");
    daemon.stop().await;
}

/// The WAL flush request fails (here an injected error; in production the xid wraparound stop
/// limit, for one): the control session must not stay in an aborted transaction, or every
/// later sample fails and heartbeats never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_flush_request_does_not_wedge_the_control_session() {
    let (pg, redis, dbname, db) = users_stack().await;
    // pg_current_xact_id() fails for the daemon's sessions, counting its calls in a sequence
    // (not rolled back with the failing statement).
    db.batch_execute(&format!(
        "CREATE SEQUENCE flush_attempts;
         CREATE FUNCTION public.pg_current_xact_id() RETURNS xid8 LANGUAGE plpgsql AS
         $$BEGIN PERFORM nextval('public.flush_attempts');
                 RAISE EXCEPTION 'cannot assign TransactionIds (injected)'; END$$;
         ALTER DATABASE \"{dbname}\" SET search_path = public, pg_catalog;"
    ))
    .await
    .expect("fault injection");
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    listener.wait_heartbeat().await;

    let open = pg.connect(&dbname).await.expect("connect");
    open.batch_execute("BEGIN; SELECT pg_logical_emit_message(true, 'test', repeat('x', 200000));")
        .await
        .expect("a large record in an open transaction");
    wait_until("the daemon asked for a WAL flush", DEADLINE, || async {
        let called: bool = db
            .query_one("SELECT is_called FROM flush_attempts", &[])
            .await
            .expect("sequence")
            .get(0);
        called
    })
    .await
    .expect("the half-flushed record makes the daemon ask");
    open.batch_execute("ROLLBACK").await.expect("rollback");

    // The record is complete now: heartbeats come back and changes flow.
    let seen = listener.heartbeats();
    db.execute("INSERT INTO users VALUES (2, 'b@x.org', NULL)", &[])
        .await
        .expect("insert");
    listener.wait_keys(&["users/2"]).await;
    wait_until("heartbeats again", DEADLINE, || async {
        listener.heartbeats() > seen + 5
    })
    .await
    .expect("the control session recovered from the failed flush request");
    daemon.stop().await;
}

/// An idle database with the longest status interval (10 s, equal to the receive deadline):
/// the daemon asks for keepalives on its own timer, so the quiet but healthy stream is never
/// taken for a dead one (the session, and its walsender, stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_with_the_longest_status_interval_is_not_taken_for_dead() {
    let (pg, redis, dbname, db) = users_stack().await;
    let toml = config(&pg, &dbname, &redis, USERS_RULE)
        .replace("status_interval_ms = 200", "status_interval_ms = 10000");
    assert!(toml.contains("status_interval_ms = 10000"));
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&toml).await;
    let first = walsender_pid(&db).await.expect("streaming");
    let started = Instant::now();
    // Past the 10 s receive deadline with nothing written.
    let mut seen = listener.heartbeats();
    while started.elapsed() < Duration::from_secs(12) {
        wait_until("heartbeats while idle", Duration::from_secs(2), || async {
            listener.heartbeats() > seen
        })
        .await
        .expect("heartbeats continue on an idle database");
        seen = listener.heartbeats();
    }
    assert_eq!(
        walsender_pid(&db).await,
        Some(first),
        "the idle session was ended and reconnected"
    );
    daemon.stop().await;
}

/// An idle, healthy daemon is ready all the time: `/readyz` never reads "not caught up" between
/// a new sample's arrival and its heartbeat. (Polled every 100 µs, not in a busy loop: a
/// core spinning on two would delay the daemon's samples past their interval, and then it is
/// rightly not ready.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_does_not_flap_while_idle() {
    let (pg, redis, dbname, _db) = users_stack().await;
    let daemon = Daemon::start(&config(&pg, &dbname, &redis, USERS_RULE)).await;
    let status = std::sync::Arc::clone(&daemon.status);
    let watched = tokio::task::spawn_blocking(move || {
        let until = Instant::now() + Duration::from_secs(3);
        let (mut polls, mut not_ready) = (0_u64, 0_u64);
        while Instant::now() < until {
            polls += 1;
            if !status.is_caught_up() {
                not_ready += 1;
            }
            std::thread::sleep(Duration::from_micros(100)); // the polling rate, not a wait
        }
        (polls, not_ready)
    })
    .await
    .expect("watcher");
    assert_eq!(
        watched.1, 0,
        "{} of {} polls over 3 s saw an idle daemon not ready",
        watched.1, watched.0
    );
    daemon.stop().await;
}

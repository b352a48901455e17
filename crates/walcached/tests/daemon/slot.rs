//! Creating the replication slot while transactions hold transaction ids: PostgreSQL's
//! snapshot builder waits for them. The daemon must say what it waits for, give up after its
//! cap (exit 1), stop promptly on shutdown without leaving a walsender or a slot behind, and
//! stream once the blockers are gone.

use std::time::{Duration, Instant};

use walcache_testkit::{wait_until, PgServer};
use walcached::pipeline::{RunError, RunOptions};
use walcached::slot::SlotError;

use crate::cli::{outcome, walcached};
use crate::support::{config, users_stack, Daemon, Listener, DEADLINE, USERS_RULE};

/// A session that holds a transaction id: `BEGIN; SELECT txid_current();`, left open.
struct XidHolder {
    client: tokio_postgres::Client,
    pid: i32,
    xid: u32,
}

impl XidHolder {
    async fn open(pg: &PgServer, db: &str) -> XidHolder {
        let client = pg.connect(db).await.expect("connect");
        client.batch_execute("BEGIN").await.expect("BEGIN");
        let row = client
            .query_one("SELECT pg_backend_pid(), txid_current()", &[])
            .await
            .expect("txid_current");
        // txid_current() carries the epoch in its high half; backend_xid is the low half.
        let xid = (row.get::<_, i64>(1) & 0xffff_ffff) as u32;
        XidHolder {
            client,
            pid: row.get(0),
            xid,
        }
    }

    async fn commit(self) {
        self.client.batch_execute("COMMIT").await.expect("COMMIT");
    }
}

/// The daemon's walsender is inside CREATE_REPLICATION_SLOT, waiting on a transaction lock.
async fn wait_for_slot_creation_to_block(db: &tokio_postgres::Client) {
    wait_until(
        "the walsender to wait for a transaction",
        DEADLINE,
        || async {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'walsender' AND wait_event = 'transactionid'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
                == 1
        },
    )
    .await
    .expect("slot creation waits for the open transaction");
}

/// `(walsenders, pg_stat_replication rows, replication slots)` in the cluster.
async fn walsenders_and_slots(db: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), \
                    (SELECT count(*) FROM pg_stat_replication), \
                    (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2))
}

/// Nothing of the daemon's left on the server: no walsender, no slot (not even half-created).
async fn assert_nothing_left(db: &tokio_postgres::Client) {
    // A closed replication connection's walsender exits asynchronously: wait for it.
    let result = wait_until(
        "no walsender and no slot",
        Duration::from_secs(5),
        || async { walsenders_and_slots(db).await == (0, 0, 0) },
    )
    .await;
    let left = walsenders_and_slots(db).await;
    assert!(
        result.is_ok(),
        "(walsenders, pg_stat_replication, slots) = {left:?}"
    );
}

/// An error and its sources, as `fail` prints it.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_creation_gives_up_after_its_cap_naming_the_blocker() {
    let (pg, redis, dbname, db) = users_stack().await;
    let holder = XidHolder::open(&pg, &dbname).await;
    let mut options = RunOptions::default();
    options.slot_max_wait = Duration::from_secs(3);
    let daemon = Daemon::spawn_with(&config(&pg, &dbname, &redis, USERS_RULE), options);
    let status = std::sync::Arc::clone(&daemon.status);
    let started = Instant::now();

    let error = daemon
        .join(DEADLINE)
        .await
        .expect_err("the daemon gives up on the slot");
    let waited = started.elapsed();
    let text = error_text(&error);
    assert!(
        matches!(
            &error,
            RunError::SlotCreation(SlotError::TimedOut { blockers, .. }) if !blockers.is_empty()
        ),
        "{error:?}"
    );
    assert!(!error.is_config(), "a runtime error (exit 1): {text}");
    assert!(
        text.contains(&format!("pid {}", holder.pid))
            && text.contains(&format!("xid {}", holder.xid)),
        "the error names the blocker (pid {}, xid {}): {text}",
        holder.pid,
        holder.xid
    );
    assert!(text.contains("supervisor"), "{text}");
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
        "gave up after {waited:?}"
    );
    assert!(!status.is_streaming());
    assert_nothing_left(&db).await;
    // With the walsender gone, the blocker's end creates no slot behind the daemon's back.
    holder.commit().await;
    assert_eq!(walsenders_and_slots(&db).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_slot_creation_returns_within_2s_leaving_nothing_behind() {
    let (pg, redis, dbname, db) = users_stack().await;
    let holder = XidHolder::open(&pg, &dbname).await;
    let daemon = Daemon::spawn(&config(&pg, &dbname, &redis, USERS_RULE));
    wait_for_slot_creation_to_block(&db).await;

    let started = Instant::now();
    daemon.signal_shutdown();
    let result = daemon.join(Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(result.is_ok(), "a shutdown is a clean exit: {result:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_nothing_left(&db).await;
    holder.commit().await;
    assert_eq!(walsenders_and_slots(&db).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_blocker_while_the_daemon_waits_and_streaming_starts_once_it_ends() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let holder = XidHolder::open(&pg, &dbname).await;
    let config_text = config(&pg, &dbname, &redis, USERS_RULE);
    let daemon = Daemon::spawn(&config_text);
    wait_for_slot_creation_to_block(&db).await;

    // What an operator runs while the daemon seems stuck at start-up.
    let (code, stdout, stderr) = outcome(&walcached("check", &config_text).await);
    assert_eq!(
        code, 0,
        "a warning, not a failure:\n{stdout}\nstderr:\n{stderr}"
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning") && l.contains("postgres.slot"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line per blocker:\n{stdout}");
    assert!(
        warnings[0].contains(&format!("pid {}", holder.pid))
            && warnings[0].contains(&format!("xid {}", holder.xid))
            && warnings[0].contains("will wait"),
        "{stdout}"
    );
    assert!(!daemon.status.is_streaming());

    holder.commit().await;
    let status = std::sync::Arc::clone(&daemon.status);
    wait_until("the daemon to stream", DEADLINE, || async {
        status.is_caught_up()
    })
    .await
    .expect("the slot is created once the blocker ends");
    db.execute(
        "INSERT INTO users (id, email, name) VALUES (1, 'a@example.com', 'a')",
        &[],
    )
    .await
    .expect("insert");
    listener.wait_keys(&["users/1"]).await;
    let persistent: bool = db
        .query_one(
            "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots \
             WHERE slot_name = 'walcached'",
            &[],
        )
        .await
        .expect("the slot exists")
        .get(0);
    assert!(persistent);
    daemon.stop().await;
}

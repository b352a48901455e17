//! The batch in flight: the stream is read on while its publish is stalled, and nothing is
//! confirmed past it until it is published.

use walcache_testkit::{wait_until, TcpProxy};

use crate::support::{config, confirmed_and_current, users_stack, Daemon, Listener, DEADLINE};

/// The users rule, with a transaction of more than 100 keys flushing the namespace (so that a
/// large transaction is read in bounded memory).
const RULE: &str = r#"
[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}"]
"#;

/// The server's current WAL position, at or past the end of every commit that returned.
async fn current_lsn(db: &tokio_postgres::Client) -> u64 {
    let lsn: i64 = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[])
        .await
        .expect("current lsn")
        .get(0);
    lsn as u64
}

/// How far the daemon's walsender has sent (0 while it has not started streaming).
async fn sent_lsn(db: &tokio_postgres::Client) -> u64 {
    let sent: Option<i64> = db
        .query_one(
            "SELECT max((sent_lsn - '0/0'::pg_lsn)::int8) FROM pg_stat_replication \
             WHERE application_name = 'walcached'",
            &[],
        )
        .await
        .expect("pg_stat_replication")
        .get(0);
    sent.unwrap_or(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_read_while_a_publish_is_stalled_and_nothing_past_it_is_confirmed() {
    let (pg, redis, dbname, db) = users_stack().await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let cfg = config(&pg, &dbname, &redis, RULE)
        .replace(&redis.url(), &proxy.redis_url())
        .replace(
            "status_interval_ms = 200",
            "status_interval_ms = 200\nlarge_transaction_keys = 100",
        );
    let daemon = Daemon::start(&cfg).await;
    let listener = Listener::start(&redis).await;

    // Redis stops answering: the batch of the next commit is launched and its script hangs
    // (for the 5 s of a call's timeout, then again on each retry).
    proxy.set_blackhole(true);
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ann')", &[])
        .await
        .unwrap();
    let first = current_lsn(&db).await;
    // Then a transaction whose changes (about 25 MB of them) outgrow the socket buffers
    // between the walsender and the daemon many times over: the walsender can send it all
    // only if the daemon reads while the first batch is stalled. (It becomes one flush of
    // the namespace: read in bounded memory.)
    db.execute(
        "INSERT INTO users SELECT g, g || '@x.org', repeat('n', 200) \
         FROM generate_series(2, 100001) g",
        &[],
    )
    .await
    .unwrap();
    let second = current_lsn(&db).await;
    wait_until(
        "the large transaction sent to the daemon",
        DEADLINE,
        || async { sent_lsn(&db).await >= second },
    )
    .await
    .expect("the daemon reads the stream while a publish is stalled");

    // Nothing is confirmed past the batch that is not published, in the daemon or the slot.
    let (slot, _) = confirmed_and_current(&db).await;
    assert!(
        slot < first,
        "the slot confirmed {slot} past the unpublished commit ending at {first}"
    );
    assert!(
        daemon.status.confirmed_lsn() < first,
        "the daemon confirmed {} past the unpublished commit ending at {first}",
        daemon.status.confirmed_lsn()
    );
    assert!(!daemon.status.is_caught_up());
    assert!(listener.keys().is_empty() && listener.flushes().is_empty());

    // Redis is back: the stalled batch is published, then the one read meanwhile, in commit
    // order, and only then is the position confirmed.
    proxy.set_blackhole(false);
    proxy.reset_all();
    wait_until("both commits confirmed", DEADLINE, || async {
        daemon.status.confirmed_lsn() >= second
    })
    .await
    .expect("published and confirmed once Redis is back");
    listener.wait_keys(&["users/1"]).await;
    wait_until(
        "the large transaction's flush announced",
        DEADLINE,
        || async { listener.flushes().contains(&"users".to_owned()) },
    )
    .await
    .expect("the flush is published");
    let seq_of = |wanted: &dyn Fn(&walcache_protocol::Body) -> bool| {
        listener
            .data()
            .into_iter()
            .find(|m| wanted(&m.body))
            .map(|m| m.seq)
            .expect("published")
    };
    let key_seq = seq_of(
        &|b| matches!(b, walcache_protocol::Body::Keys(k) if k.iter().any(|k| k.key == "1")),
    );
    let flush_seq = seq_of(&|b| matches!(b, walcache_protocol::Body::Flush(_)));
    assert!(
        key_seq < flush_seq,
        "the first commit's key (seq {key_seq}) is published before the second's flush (seq {flush_seq})"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_reports_a_keepalives_position_without_waiting_for_the_status_tick() {
    let (pg, redis, dbname, db) = users_stack().await;
    db.batch_execute("CREATE TABLE unpublished (id int)")
        .await
        .unwrap();
    // Status updates every 10 s (the longest allowed): a position reported within 2 s was
    // reported when the walsender's keepalive brought it, not by the tick.
    let cfg = config(&pg, &dbname, &redis, RULE)
        .replace("status_interval_ms = 200", "status_interval_ms = 10000");
    let daemon = Daemon::start(&cfg).await;
    for i in 0..3 {
        // WAL the publication does not carry: the walsender sends no change, only a
        // keepalive once it waits for more.
        db.execute("INSERT INTO unpublished VALUES ($1)", &[&i])
            .await
            .unwrap();
        let end = current_lsn(&db).await;
        wait_until(
            "the position past the unpublished commit confirmed in the slot",
            std::time::Duration::from_secs(2),
            // The daemon's own status is set once the send returns, which may be just after
            // PostgreSQL has applied it: wait for both.
            || async {
                confirmed_and_current(&db).await.0 >= end && daemon.status.confirmed_lsn() >= end
            },
        )
        .await
        .expect("reported once the walsender is idle");
    }
    daemon.stop().await;
}

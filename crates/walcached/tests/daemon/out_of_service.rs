//! Drift the daemon cannot repair (issue "Schema drift"): the namespaces of the rules it
//! fails are out of service — not certified in heartbeats, listed apart, `/readyz` not ready —
//! until the catalog is fixed; then flushed and back in service. Never a crash loop.

use walcache_testkit::wait_until;

use crate::drift::{stack, watched};
use crate::support::{config, Daemon, Listener, DEADLINE};

/// Serve `/readyz` (and the rest) of `daemon` on a loopback port, without installing a metrics
/// recorder (the handle renders an empty registry); the server stops with the returned token.
async fn serve_http(daemon: &Daemon) -> (String, tokio_util::sync::CancellationToken) {
    let listener = walcached::http::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(walcached::http::serve_on(
        listener,
        handle,
        std::sync::Arc::clone(&daemon.status),
        stop.clone(),
    ));
    (addr, stop)
}

/// The details of every heartbeat so far, in arrival order, each with its index among all
/// messages (to order them against flushes).
fn heartbeat_details(listener: &Listener) -> Vec<(usize, walcache_protocol::HeartbeatDetails)> {
    listener
        .timed()
        .into_iter()
        .enumerate()
        .filter_map(|(i, (_, m))| match m.body {
            walcache_protocol::Body::Heartbeat {
                details: Some(d), ..
            } => Some((i, d)),
            _ => None,
        })
        .collect()
}

/// The details of the first heartbeat heard (the daemon is caught up once it has published
/// one; the listener may hear it a moment later).
async fn first_heartbeat(listener: &Listener) -> walcache_protocol::HeartbeatDetails {
    wait_until("a heartbeat of the restarted daemon", DEADLINE, || async {
        !heartbeat_details(listener).is_empty()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    heartbeat_details(listener).remove(0).1
}

/// The indexes, among all messages so far, of the flushes of `namespace`.
fn flush_indexes(listener: &Listener, namespace: &str) -> Vec<usize> {
    listener
        .timed()
        .into_iter()
        .enumerate()
        .filter(|(_, (_, m))| {
            matches!(&m.body, walcache_protocol::Body::Flush(ns) if ns.iter().any(|n| n == namespace))
        })
        .map(|(i, _)| i)
        .collect()
}

const PD_AND_OTHER_RULES: &str = r#"
[[rules]]
table = "public.pd"
namespace = "pd"
keys = ["{id}"]

[[rules]]
table = "public.other"
namespace = "other"
keys = ["{id}"]
"#;

/// Issue 12, drift the daemon cannot repair: another consumer's publication (no managed
/// comment) stops publishing a rule's table while the daemon runs. Every later change of the
/// table is missed, so its namespace goes out of service — listed apart in heartbeats, no
/// longer certified, `/readyz` not ready and naming it — while the other namespace stays
/// certified and the daemon keeps running. Once the publication is fixed, the namespace is
/// flushed before any heartbeat certifies it again, and is back in service (on the old code
/// the heartbeats kept certifying it and `/readyz` stayed ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_publication_dropping_a_rules_table_takes_its_namespace_out_of_service_until_fixed(
) {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         CREATE TABLE other (id int PRIMARY KEY, v int);
         INSERT INTO pd VALUES (1, 1);
         CREATE PUBLICATION walcached FOR TABLE pd, other
             WITH (publish_via_partition_root = true);",
    )
    .await;
    let cfg = watched(config(&pg, &dbname, &redis, PD_AND_OTHER_RULES));
    let daemon = Daemon::start(&cfg).await;
    let (http, stop_http) = serve_http(&daemon).await;
    wait_until("/readyz ready", DEADLINE, || async {
        matches!(crate::cli::http_get(&http, "/readyz").await, Some((200, _)))
    })
    .await
    .expect("ready before the drift");
    let listener = Listener::start(&redis).await;

    db.batch_execute("ALTER PUBLICATION walcached DROP TABLE pd")
        .await
        .unwrap();
    wait_until("a heartbeat without pd certified", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| !d.namespaces.iter().any(|n| n == "pd"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: heartbeats {:?}", heartbeat_details(&listener)));
    let (_, last) = heartbeat_details(&listener).pop().expect("a heartbeat");
    assert_eq!(last.namespaces, vec!["other".to_owned()], "{last:?}");
    assert_eq!(last.out_of_service, vec!["pd".to_owned()], "{last:?}");
    let (code, body) = crate::cli::http_get(&http, "/readyz")
        .await
        .expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("out of service") && body.contains("pd"),
        "{body}"
    );
    assert_eq!(daemon.status.out_of_service(), vec!["pd".to_owned()]);
    assert!(!daemon.status.is_ready());
    assert!(
        daemon.status.is_caught_up(),
        "the other namespace is still certified: heartbeats go on"
    );

    // Fixed by its owner: flushed (the changes made meanwhile were missed), then certified.
    db.execute("UPDATE pd SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.clear();
    db.execute("ALTER PUBLICATION walcached ADD TABLE pd", &[])
        .await
        .unwrap();
    wait_until("pd certified again", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    let certified_at = heartbeat_details(&listener)
        .into_iter()
        .find(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
        .map(|(i, _)| i)
        .expect("a heartbeat certifying pd");
    assert!(
        flush_indexes(&listener, "pd")
            .first()
            .is_some_and(|&f| f < certified_at),
        "pd must be flushed before a heartbeat certifies it again: {:?}",
        listener.timed()
    );
    assert!(heartbeat_details(&listener)
        .iter()
        .filter(|(i, _)| *i >= certified_at)
        .all(|(_, d)| d.out_of_service.is_empty()));
    wait_until("/readyz ready again", DEADLINE, || async {
        matches!(crate::cli::http_get(&http, "/readyz").await, Some((200, _)))
    })
    .await
    .expect("ready once the drift is fixed");
    assert!(daemon.status.out_of_service().is_empty());
    // And the stream carries its changes again.
    listener.clear();
    db.execute("UPDATE pd SET v = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["pd/1"]).await;
    stop_http.cancel();
    daemon.stop().await;
}

/// The other kind of drift the daemon cannot repair: a rule's table re-created without a
/// usable replica identity cannot be added back to the daemon's own publication (publishing
/// it would make the application's UPDATEs fail), so its namespace is out of service until
/// the table gets a primary key; then the daemon adds it back, flushes it and certifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_recreated_without_an_identity_is_out_of_service_until_it_gets_one() {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         CREATE TABLE other (id int PRIMARY KEY, v int);",
    )
    .await;
    let cfg = watched(config(&pg, &dbname, &redis, PD_AND_OTHER_RULES));
    let daemon = Daemon::start(&cfg).await;
    let listener = Listener::start(&redis).await;
    db.batch_execute(
        "DROP TABLE pd;
         CREATE TABLE pd (id int NOT NULL, v int);
         INSERT INTO pd VALUES (1, 1);",
    )
    .await
    .unwrap();
    wait_until("pd out of service", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| d.out_of_service == ["pd"])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: heartbeats {:?}", heartbeat_details(&listener)));
    assert!(!daemon.status.is_ready());
    listener.clear();
    db.batch_execute("ALTER TABLE pd ADD PRIMARY KEY (id)")
        .await
        .unwrap();
    wait_until("pd certified again", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    assert!(
        !flush_indexes(&listener, "pd").is_empty(),
        "flushed on its way back"
    );
    assert!(daemon.status.out_of_service().is_empty());
    db.execute("UPDATE pd SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["pd/1"]).await;
    daemon.stop().await;
}

/// A daemon restarted while another consumer's publication misses a rule's table (drift that
/// began while it ran) starts with that namespace out of service instead of exiting: under a
/// supervisor, exiting would loop. (A first start, with no slot yet, still refuses it with the
/// fix: see `a_foreign_publication_without_delete_is_refused_with_the_fix`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_unrepairable_drift_starts_out_of_service_instead_of_exiting() {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         CREATE TABLE other (id int PRIMARY KEY, v int);
         INSERT INTO pd VALUES (1, 1);
         CREATE PUBLICATION walcached FOR TABLE pd, other
             WITH (publish_via_partition_root = true);",
    )
    .await;
    let cfg = watched(config(&pg, &dbname, &redis, PD_AND_OTHER_RULES));
    Daemon::start(&cfg).await.stop().await;
    db.batch_execute("ALTER PUBLICATION walcached DROP TABLE pd")
        .await
        .unwrap();
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&cfg).await;
    assert_eq!(daemon.status.out_of_service(), vec!["pd".to_owned()]);
    assert!(!daemon.status.is_ready());
    let first = first_heartbeat(&listener).await;
    assert_eq!(first.namespaces, vec!["other".to_owned()], "{first:?}");
    assert_eq!(first.out_of_service, vec!["pd".to_owned()], "{first:?}");
    db.execute("ALTER PUBLICATION walcached ADD TABLE pd", &[])
        .await
        .unwrap();
    wait_until("pd certified again", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    assert!(
        !flush_indexes(&listener, "pd").is_empty(),
        "flushed before it is certified again"
    );
    assert!(daemon.status.out_of_service().is_empty());
    daemon.stop().await;
}

/// A daemon restarted while a rule's table is gone (dropped while the daemon was down, or
/// between a crash and its restart) starts instead of exiting: under a supervisor, exiting
/// would loop until someone re-creates the table. The namespace is out of service (its changes
/// cannot be streamed); the other namespace is served. Once the table is back, the rule is
/// compiled against it, the table published again, the namespace flushed before any heartbeat
/// certifies it, and its changes name keys again (on the previous code the restart exited 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_rules_table_gone_starts_out_of_service_until_it_is_back() {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         CREATE TABLE other (id int PRIMARY KEY, v int);
         INSERT INTO pd VALUES (1, 1);
         INSERT INTO other VALUES (1, 1);",
    )
    .await;
    let cfg = watched(config(&pg, &dbname, &redis, PD_AND_OTHER_RULES));
    Daemon::start(&cfg).await.stop().await;
    db.batch_execute("DROP TABLE pd").await.unwrap();
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&cfg).await;
    assert_eq!(daemon.status.out_of_service(), vec!["pd".to_owned()]);
    let first = first_heartbeat(&listener).await;
    assert_eq!(first.namespaces, vec!["other".to_owned()], "{first:?}");
    assert_eq!(first.out_of_service, vec!["pd".to_owned()], "{first:?}");
    db.execute("UPDATE other SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["other/1"]).await;

    db.batch_execute(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         INSERT INTO pd VALUES (1, 1);",
    )
    .await
    .unwrap();
    wait_until("pd certified again", DEADLINE, || async {
        heartbeat_details(&listener)
            .last()
            .is_some_and(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    let certified = heartbeat_details(&listener)
        .into_iter()
        .find(|(_, d)| d.namespaces.iter().any(|n| n == "pd"))
        .map(|(i, _)| i)
        .expect("the certifying heartbeat");
    assert!(
        flush_indexes(&listener, "pd")
            .iter()
            .any(|&f| f < certified),
        "flushed before it is certified again: {:?}",
        listener.data()
    );
    assert!(daemon.status.out_of_service().is_empty());
    db.execute("UPDATE pd SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["pd/1"]).await;
    daemon.stop().await;
}

/// A daemon restarted after a rule's replica identity was narrowed (FULL → DEFAULT while it was
/// down) starts instead of exiting. The table is still published, so its changes come: each
/// flushes the namespace (the old email key cannot be named), which stays in service. Once the
/// identity is widened again, a catalog check compiles the rule and changes name their keys
/// again, without a restart (on the previous code the restart exited 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_narrowed_identity_flushes_until_the_identity_is_fixed() {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE ri (id int PRIMARY KEY, email text NOT NULL);
         ALTER TABLE ri REPLICA IDENTITY FULL;
         INSERT INTO ri VALUES (1, 'a@x.io');",
    )
    .await;
    let rule = r#"
[[rules]]
table = "public.ri"
namespace = "ri"
keys = ["{id}", "by_email:{email}"]
"#;
    let cfg = watched(config(&pg, &dbname, &redis, rule));
    Daemon::start(&cfg).await.stop().await;
    db.batch_execute("ALTER TABLE ri REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&cfg).await;
    assert!(daemon.status.out_of_service().is_empty());
    db.execute("UPDATE ri SET email = 'b@x.io' WHERE id = 1", &[])
        .await
        .unwrap();
    wait_until("the namespace flushed", DEADLINE, || async {
        listener.flushes().iter().any(|n| n == "ri")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    assert!(
        !listener
            .keys()
            .iter()
            .any(|k| k.starts_with("ri/by_email:")),
        "no key rendered from a column the old row did not carry: {:?}",
        listener.data()
    );

    db.batch_execute("ALTER TABLE ri REPLICA IDENTITY FULL")
        .await
        .unwrap();
    // Each round changes the email and waits for its announcement; once a catalog check has
    // found the rule fit, the change names the old email's key instead of flushing.
    let mut email = "b@x.io".to_owned();
    let mut round = 0;
    wait_until("the old email's key named again", DEADLINE, || {
        round += 1;
        let old = std::mem::replace(&mut email, format!("c{round}@x.io"));
        let (db, listener, new) = (&db, &listener, email.clone());
        async move {
            listener.clear();
            db.execute("UPDATE ri SET email = $1 WHERE id = 1", &[&new])
                .await
                .unwrap();
            let want = format!("ri/by_email:{old}");
            wait_until("the change announced", DEADLINE, || async {
                listener.keys().contains(&want) || listener.flushes().iter().any(|n| n == "ri")
            })
            .await
            .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
            listener.keys().contains(&want)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    daemon.stop().await;
}

/// Two rules' tables re-created in one transaction, one with a primary key and one without:
/// the table that fits is published again and its namespace back in service at once; only the
/// other namespace stays out of service (on the previous code a repair that could not add
/// every table added none, so both stayed out of service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_be_published_does_not_hold_back_another_tables_repair() {
    let (pg, redis, dbname, db) = stack(
        "CREATE TABLE pd (id int PRIMARY KEY, v int);
         CREATE TABLE other (id int PRIMARY KEY, v int);",
    )
    .await;
    let daemon = Daemon::start(&watched(config(&pg, &dbname, &redis, PD_AND_OTHER_RULES))).await;
    let listener = Listener::start(&redis).await;
    db.batch_execute(
        "BEGIN;
         DROP TABLE pd; CREATE TABLE pd (id int, v int);
         DROP TABLE other; CREATE TABLE other (id int PRIMARY KEY, v int);
         INSERT INTO other VALUES (1, 1);
         COMMIT;",
    )
    .await
    .unwrap();
    wait_until("pd out of service, other certified", DEADLINE, || async {
        heartbeat_details(&listener).last().is_some_and(|(_, d)| {
            d.out_of_service == vec!["pd".to_owned()] && d.namespaces == vec!["other".to_owned()]
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: messages {:?}", listener.data()));
    db.execute("UPDATE other SET v = 2 WHERE id = 1", &[])
        .await
        .unwrap();
    listener.wait_keys(&["other/1"]).await;
    assert_eq!(daemon.status.out_of_service(), vec!["pd".to_owned()]);
    daemon.stop().await;
}

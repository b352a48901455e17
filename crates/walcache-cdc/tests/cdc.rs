//! walcache-cdc against a real PostgreSQL (from walcache-testkit), plus property tests of the
//! decoders.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use walcache_cdc::client::{
    ClientCert, ReplicationClient, ReplicationConfig, SslMode, StartReplication,
};
use walcache_cdc::pgoutput::{
    ColumnValue, Commit, Delete, Insert, LogicalMessage, OldTuple, ReplicaIdentity, TupleData,
    Update,
};
use walcache_cdc::protocol::{ReplicationMessage, StandbyStatusUpdate};
use walcache_cdc::{Error, Lsn, PgTimestamp};
use walcache_testkit::{wait_until, ClientKeyFormat, PgOptions, PgServer, TestCerts};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long any single wait on the server may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn config(pg: &PgServer, db: &str) -> ReplicationConfig {
    ReplicationConfig::new("127.0.0.1", pg.port(), pg.superuser(), db)
}

/// A server, a database with `users` (replica identity default) and `audit` (replica identity
/// full) in publication `walcache`, and a tokio-postgres client on it.
async fn setup(
    prefix: &str,
) -> Result<(PgServer, String, tokio_postgres::Client), Box<dyn std::error::Error>> {
    let pg = PgServer::start()?;
    let db = pg.create_database(prefix).await?;
    let sql = pg.connect(&db).await?;
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, note text);
         CREATE TABLE audit (id int PRIMARY KEY, payload text);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE PUBLICATION walcache FOR TABLE users, audit;",
    )
    .await?;
    Ok((pg, db, sql))
}

/// The next pgoutput message, skipping keepalives.
async fn next_logical(stream: &mut walcache_cdc::client::ReplicationStream) -> LogicalMessage {
    loop {
        let event = tokio::time::timeout(DEADLINE, stream.next_event())
            .await
            .expect("no replication message before the deadline")
            .expect("replication stream failed")
            .expect("the server ended the stream");
        match event {
            ReplicationMessage::XLogData(data) => {
                return data
                    .logical_message()
                    .expect("undecodable pgoutput message")
            }
            ReplicationMessage::PrimaryKeepalive(_) => {}
            other => panic!("unexpected replication message {other:?}"),
        }
    }
}

/// One transaction's messages, Begin to Commit, with Relation and Type messages left out.
async fn next_transaction(
    stream: &mut walcache_cdc::client::ReplicationStream,
) -> (Vec<LogicalMessage>, Commit) {
    let LogicalMessage::Begin(begin) = next_logical(stream).await else {
        panic!("expected Begin");
    };
    let mut changes = Vec::new();
    loop {
        match next_logical(stream).await {
            LogicalMessage::Commit(commit) => {
                assert_eq!(commit.commit_lsn, begin.final_lsn);
                assert!(commit.end_lsn > commit.commit_lsn);
                assert_eq!(commit.commit_time, begin.commit_time);
                return (changes, commit);
            }
            LogicalMessage::Relation(_) | LogicalMessage::Type(_) => {}
            message => changes.push(message),
        }
    }
}

fn text(s: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn tuple(values: &[Option<&str>]) -> TupleData {
    TupleData(
        values
            .iter()
            .map(|v| v.map_or(ColumnValue::Null, text))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_row_changes_truncate_and_messages() -> TestResult {
    let (pg, db, sql) = setup("cdcstream").await?;
    let users_oid: u32 = sql
        .query_one("SELECT 'users'::regclass::oid", &[])
        .await?
        .get(0);

    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;
    let slot = client.create_logical_slot("walcache_stream", false).await?;
    assert_eq!(slot.slot_name, "walcache_stream");
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    let mut stream = client
        .start_replication(
            &StartReplication::new("walcache_stream", ["walcache"])
                .start_lsn(slot.consistent_point),
        )
        .await?;

    // INSERT: Begin, Relation, Insert x2, Commit.
    sql.batch_execute(
        "INSERT INTO users VALUES (1, 'a@example.com', 'hello'), (2, 'b@example.com', NULL)",
    )
    .await?;
    let LogicalMessage::Begin(begin) = next_logical(&mut stream).await else {
        panic!("expected Begin");
    };
    assert!(begin.final_lsn > slot.consistent_point);
    let LogicalMessage::Relation(relation) = next_logical(&mut stream).await else {
        panic!("expected Relation");
    };
    assert_eq!(relation.id, users_oid);
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "users")
    );
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<_> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.is_key()))
        .collect();
    assert_eq!(
        columns,
        [("id", 23, true), ("email", 25, false), ("note", 25, false)]
    );
    for expected in [
        tuple(&[Some("1"), Some("a@example.com"), Some("hello")]),
        tuple(&[Some("2"), Some("b@example.com"), None]),
    ] {
        assert_eq!(
            next_logical(&mut stream).await,
            LogicalMessage::Insert(Insert {
                relation_id: users_oid,
                new: expected
            })
        );
    }
    let LogicalMessage::Commit(commit) = next_logical(&mut stream).await else {
        panic!("expected Commit");
    };
    assert_eq!(commit.commit_lsn, begin.final_lsn);

    // UPDATE of a non-key column: no old tuple.
    sql.batch_execute("UPDATE users SET note = 'changed' WHERE id = 1")
        .await?;
    let (changes, _) = next_transaction(&mut stream).await;
    assert_eq!(
        changes,
        [LogicalMessage::Update(Update {
            relation_id: users_oid,
            old: None,
            new: tuple(&[Some("1"), Some("a@example.com"), Some("changed")]),
        })]
    );

    // UPDATE of the key: the old key tuple, other columns null.
    sql.batch_execute("UPDATE users SET id = 10 WHERE id = 2")
        .await?;
    let (changes, _) = next_transaction(&mut stream).await;
    assert_eq!(
        changes,
        [LogicalMessage::Update(Update {
            relation_id: users_oid,
            old: Some(OldTuple::Key(tuple(&[Some("2"), None, None]))),
            new: tuple(&[Some("10"), Some("b@example.com"), None]),
        })]
    );

    // REPLICA IDENTITY FULL: full old rows, several changes in one transaction.
    sql.batch_execute(
        "BEGIN;
         INSERT INTO audit VALUES (1, 'p');
         UPDATE audit SET payload = 'q' WHERE id = 1;
         DELETE FROM audit WHERE id = 1;
         COMMIT;",
    )
    .await?;
    let audit_oid: u32 = sql
        .query_one("SELECT 'audit'::regclass::oid", &[])
        .await?
        .get(0);
    let (changes, _) = next_transaction(&mut stream).await;
    assert_eq!(
        changes,
        [
            LogicalMessage::Insert(Insert {
                relation_id: audit_oid,
                new: tuple(&[Some("1"), Some("p")]),
            }),
            LogicalMessage::Update(Update {
                relation_id: audit_oid,
                old: Some(OldTuple::Full(tuple(&[Some("1"), Some("p")]))),
                new: tuple(&[Some("1"), Some("q")]),
            }),
            LogicalMessage::Delete(Delete {
                relation_id: audit_oid,
                old: OldTuple::Full(tuple(&[Some("1"), Some("q")])),
            }),
        ]
    );

    // DELETE with the default replica identity: the key only.
    sql.batch_execute("DELETE FROM users WHERE id = 10").await?;
    let (changes, _) = next_transaction(&mut stream).await;
    assert_eq!(
        changes,
        [LogicalMessage::Delete(Delete {
            relation_id: users_oid,
            old: OldTuple::Key(tuple(&[Some("10"), None, None])),
        })]
    );

    // Logical messages: transactional (inside Begin..Commit), then non-transactional (alone).
    sql.batch_execute("SELECT pg_logical_emit_message(true, 'walcache', 'x')")
        .await?;
    let (changes, _) = next_transaction(&mut stream).await;
    let [LogicalMessage::Message(message)] = changes.as_slice() else {
        panic!("expected one Message, got {changes:?}");
    };
    assert!(message.is_transactional());
    assert_eq!(message.prefix, "walcache");
    assert_eq!(message.content, Bytes::from_static(b"x"));
    sql.batch_execute("SELECT pg_logical_emit_message(false, 'walcache', 'y')")
        .await?;
    let LogicalMessage::Message(message) = next_logical(&mut stream).await else {
        panic!("expected a non-transactional Message");
    };
    assert!(!message.is_transactional());
    assert_eq!(message.content, Bytes::from_static(b"y"));

    // TRUNCATE.
    sql.batch_execute("TRUNCATE users RESTART IDENTITY").await?;
    let (changes, _) = next_transaction(&mut stream).await;
    let [LogicalMessage::Truncate(truncate)] = changes.as_slice() else {
        panic!("expected one Truncate, got {changes:?}");
    };
    assert_eq!(truncate.relation_ids, [users_oid]);
    assert_eq!(
        truncate.options,
        walcache_cdc::pgoutput::Truncate::RESTART_IDENTITY
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_status_advances_confirmed_flush_lsn() -> TestResult {
    let (pg, db, sql) = setup("cdcstatus").await?;
    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;
    let slot = client.create_logical_slot("walcache_status", false).await?;
    let mut stream = client
        .start_replication(&StartReplication::new("walcache_status", ["walcache"]))
        .await?;

    sql.batch_execute("INSERT INTO users VALUES (1, 'a@example.com', NULL)")
        .await?;
    let (_, commit) = next_transaction(&mut stream).await;
    let confirmed = || async {
        let row = sql
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walcache_status'",
                &[],
            )
            .await
            .expect("pg_replication_slots");
        row.get::<_, String>(0).parse::<Lsn>().expect("an LSN")
    };
    assert_eq!(confirmed().await, slot.consistent_point);

    stream
        .send_status(commit.end_lsn, commit.end_lsn, commit.end_lsn, false)
        .await?;
    wait_until(
        "confirmed_flush_lsn to reach the commit",
        DEADLINE,
        || async { confirmed().await >= commit.end_lsn },
    )
    .await?;

    // A status update asking for a reply gets a keepalive back.
    stream
        .send_status(commit.end_lsn, commit.end_lsn, commit.end_lsn, true)
        .await?;
    let keepalive = loop {
        let event = tokio::time::timeout(DEADLINE, stream.next_event())
            .await?
            .map_err(Box::new)?;
        if let Some(ReplicationMessage::PrimaryKeepalive(keepalive)) = event {
            break keepalive;
        }
    };
    assert!(keepalive.wal_end >= commit.end_lsn);
    let sent = keepalive
        .send_time
        .to_system_time()
        .ok_or("send time out of range")?;
    let skew = sent
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "keepalive time {sent:?}");

    // The walsender killed: a retryable error, not a hang or a panic.
    let pid = stream.backend_pid().ok_or("no pid")?;
    sql.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await?;
    let error = loop {
        match tokio::time::timeout(DEADLINE, stream.next_event()).await? {
            Ok(Some(_)) => {}
            Ok(None) => return Err("stream ended without an error".into()),
            Err(error) => break error,
        }
    };
    assert!(error.is_retryable(), "{error:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_is_pinned_and_commands_work() -> TestResult {
    let pg = PgServer::start()?;
    let db = pg.create_database("cdcsession").await?;
    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;

    for (setting, expected) in [
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("bytea_output", "hex"),
        ("client_encoding", "UTF8"),
        ("application_name", "walcached"),
    ] {
        let rows = client.simple_query(&format!("SHOW {setting}")).await?;
        assert_eq!(rows, [vec![Some(expected.to_owned())]], "{setting}");
    }
    assert_eq!(client.parameter("TimeZone"), Some("UTC"));
    assert!(client.parameter("server_version").is_some());
    assert!(client.backend_pid().is_some());

    let system = client.identify_system().await?;
    assert_eq!(system.dbname.as_deref(), Some(db.as_str()));
    assert!(system.timeline >= 1);
    assert!(!system.xlog_pos.is_invalid());

    // Plain SQL in a replication=database session, with NULLs and several statements.
    let rows = client
        .simple_query("SELECT 1 AS a, NULL::text AS b; SELECT '\\x01'::bytea, '2024-01-02 03:04:05+02'::timestamptz")
        .await?;
    assert_eq!(
        rows,
        [
            vec![Some("1".to_owned()), None],
            vec![
                Some("\\x01".to_owned()),
                Some("2024-01-02 01:04:05+00".to_owned())
            ]
        ]
    );

    // An error leaves the connection usable.
    let error = client
        .simple_query("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("42P01"));
    assert!(!error.is_retryable());
    assert_eq!(
        client.simple_query("SELECT 2").await?,
        [vec![Some("2".to_owned())]]
    );
    assert!(matches!(
        client.simple_query("SELECT '\0'").await,
        Err(Error::InvalidArgument(_))
    ));

    // The server sees the fixed application name.
    let sql = pg.connect(&db).await?;
    let pid = client.backend_pid().ok_or("no pid")?;
    let name: String = sql
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get(0);
    assert_eq!(name, "walcached");
    client.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_to_command_mode() -> TestResult {
    let (pg, db, sql) = setup("cdcstop").await?;
    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;
    client.create_logical_slot("walcache_stop", false).await?;
    let mut stream = client
        .start_replication(&StartReplication::new("walcache_stop", ["walcache"]))
        .await?;
    sql.batch_execute("INSERT INTO users VALUES (1, 'a@example.com', NULL)")
        .await?;
    let (changes, _) = next_transaction(&mut stream).await;
    assert_eq!(changes.len(), 1);

    let mut client = stream.stop().await?;
    assert_eq!(
        client.simple_query("SELECT 1").await?,
        [vec![Some("1".to_owned())]]
    );
    client.drop_slot("walcache_stop").await?;
    let slots: i64 = sql
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    assert_eq!(slots, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_errors_are_typed() -> TestResult {
    let pg = PgServer::start()?;
    let db = pg.create_database("cdcerrors").await?;

    let client = ReplicationClient::connect(&config(&pg, &db)).await?;
    let error = client
        .start_replication(&StartReplication::new("no_such_slot", ["walcache"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("42704"), "{error:?}");

    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;
    client.create_logical_slot("dup", true).await?;
    let error = client.create_logical_slot("dup", true).await.unwrap_err();
    assert_eq!(error.code(), Some("42710"), "{error:?}");

    let error = ReplicationClient::connect(&config(&pg, "no_such_database"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("3D000"), "{error:?}");

    // Nothing listens on a port the server just freed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let error = ReplicationClient::connect(&ReplicationConfig::new(
        "127.0.0.1",
        port,
        "postgres",
        "postgres",
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Io(_)), "{error:?}");
    assert!(error.is_retryable());

    // A frame longer than the configured maximum ends the connection with a typed error.
    let error = ReplicationClient::connect(&config(&pg, &db).max_frame_len(8))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::FrameTooLarge { max: 8, .. }),
        "{error:?}"
    );
    Ok(())
}

/// The next replication message that is not a keepalive.
async fn next_data(stream: &mut walcache_cdc::client::ReplicationStream) -> ReplicationMessage {
    loop {
        let event = tokio::time::timeout(DEADLINE, stream.next_event())
            .await
            .expect("no replication message before the deadline")
            .expect("replication stream failed")
            .expect("the server ended the stream");
        if !matches!(event, ReplicationMessage::PrimaryKeepalive(_)) {
            return event;
        }
    }
}

/// WAL data longer than the frame limit (a wide row, a long logical message) is handed over
/// as its head, naming the relation or the message's prefix, and the stream goes on with the
/// next message on the same connection: no error, no buffering of the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_data_over_the_frame_limit_is_read_past_keeping_its_head() -> TestResult {
    let (pg, db, sql) = setup("cdcwide").await?;
    let audit_oid: u32 = sql
        .query_one("SELECT 'audit'::regclass::oid", &[])
        .await?
        .get(0);
    const LIMIT: usize = 64 * 1024;
    let mut client = ReplicationClient::connect(&config(&pg, &db).max_frame_len(LIMIT)).await?;
    let slot = client.create_logical_slot("walcache_wide", false).await?;
    let mut stream = client
        .start_replication(
            &StartReplication::new("walcache_wide", ["walcache"])
                .start_lsn(slot.consistent_point)
                .messages(true),
        )
        .await?;

    // A row of about 1 MiB (in WAL it compresses; pgoutput sends it whole) between two
    // small ones, then a long logical message, then a small row.
    sql.batch_execute(
        "BEGIN;
         INSERT INTO audit VALUES (1, 'small');
         INSERT INTO audit VALUES (2, repeat('x', 1048576));
         INSERT INTO audit VALUES (3, 'small too');
         COMMIT;
         SELECT pg_logical_emit_message(true, 'walcache.test', repeat('y', 300000));
         INSERT INTO audit VALUES (4, 'after');",
    )
    .await?;
    let mut seen = Vec::new();
    loop {
        match next_data(&mut stream).await {
            ReplicationMessage::XLogData(x) => match x.logical_message()? {
                LogicalMessage::Insert(i) => {
                    assert_eq!(i.relation_id, audit_oid);
                    let id = match &i.new.0[0] {
                        ColumnValue::Text(t) => String::from_utf8(t.to_vec())?,
                        other => panic!("id column {other:?}"),
                    };
                    seen.push(format!("insert {id}"));
                    if id == "4" {
                        break;
                    }
                }
                LogicalMessage::Begin(_) | LogicalMessage::Commit(_) => {}
                LogicalMessage::Relation(_) | LogicalMessage::Type(_) => {}
                other => panic!("unexpected {other:?}"),
            },
            ReplicationMessage::OversizedXLogData(o) => {
                assert!(o.head.len() <= walcache_cdc::protocol::OVERSIZED_HEAD_LEN);
                match o.tag() {
                    Some(b'I') => {
                        assert_eq!(o.relation_id(), Some(audit_oid));
                        assert!(o.len > 1_048_576, "{}", o.len);
                        seen.push("oversized insert".to_owned());
                    }
                    Some(b'M') => {
                        assert_eq!(o.message_prefix(), Some("walcache.test"));
                        assert!(o.len > 300_000, "{}", o.len);
                        seen.push("oversized message".to_owned());
                    }
                    other => panic!("oversized {other:?}"),
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "insert 1",
            "oversized insert",
            "insert 3",
            "oversized message",
            "insert 4"
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_md5_authentication() -> TestResult {
    let pg = PgServer::start()?;
    let db = pg.create_database("cdcauth").await?;
    let sql = pg.connect(&db).await?;
    sql.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';",
    )
    .await?;
    // Password rules for the two roles first: pg_hba.conf's first matching line wins.
    let hba = pg.data_dir().join("pg_hba.conf");
    let existing = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!(
            "host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all md5_user 127.0.0.1/32 md5\n{existing}"
        ),
    )?;
    sql.batch_execute("SELECT pg_reload_conf()").await?;

    let scram = ReplicationConfig::new("127.0.0.1", pg.port(), "scram_user", &db);
    wait_until("pg_hba.conf to be reloaded", DEADLINE, || async {
        matches!(
            ReplicationClient::connect(&scram).await,
            Err(Error::Authentication { .. })
        )
    })
    .await?;

    let mut client = ReplicationClient::connect(&scram.clone().password("scram secret")).await?;
    assert!(client.identify_system().await.is_ok());
    let error = ReplicationClient::connect(&scram.password("wrong"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("28P01"), "{error:?}");
    assert!(!error.is_retryable());

    let md5 = ReplicationConfig::new("127.0.0.1", pg.port(), "md5_user", &db);
    let mut client = ReplicationClient::connect(&md5.clone().password("md5 secret")).await?;
    assert!(client.identify_system().await.is_ok());
    let error = ReplicationClient::connect(&md5.password("wrong"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("28P01"), "{error:?}");
    Ok(())
}

/// Whether the session behind `client` is encrypted, as the server sees it.
async fn server_sees_ssl(client: &mut ReplicationClient) -> Result<bool, Error> {
    let rows = client
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await?;
    Ok(rows == [vec![Some("t".to_owned())]])
}

/// The error and its sources, joined: where rustls's reason shows.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        text.push_str(": ");
        text.push_str(&error.to_string());
        source = error.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_over_tls_with_sslmode_require() -> TestResult {
    let pg = PgServer::start_with_tls()?;
    let db = pg.create_database("cdctls").await?;
    let sql = pg.connect(&db).await?;
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
         CREATE PUBLICATION walcache FOR TABLE users;",
    )
    .await?;

    // From a connection string, as the daemon configures it.
    let require: ReplicationConfig = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=require",
        pg.port()
    )
    .parse()?;
    assert_eq!(require.get_ssl_mode(), SslMode::Require);
    let mut client = ReplicationClient::connect(&require).await?;
    assert!(client.is_tls());
    assert!(server_sees_ssl(&mut client).await?);
    let slot = client.create_logical_slot("walcache_tls", false).await?;
    let mut stream = client
        .start_replication(
            &StartReplication::new("walcache_tls", ["walcache"]).start_lsn(slot.consistent_point),
        )
        .await?;
    sql.batch_execute("INSERT INTO users VALUES (1, 'a@example.com')")
        .await?;
    let (changes, commit) = next_transaction(&mut stream).await;
    let [LogicalMessage::Insert(Insert { new, .. })] = changes.as_slice() else {
        panic!("expected one Insert, got {changes:?}");
    };
    assert_eq!(new, &tuple(&[Some("1"), Some("a@example.com")]));
    stream
        .send_status(commit.end_lsn, commit.end_lsn, commit.end_lsn, false)
        .await?;
    let confirmed = commit.end_lsn.to_string();
    wait_until("confirmed_flush_lsn to advance over TLS", DEADLINE, || {
        let sql = &sql;
        let confirmed = confirmed.clone();
        async move {
            sql.query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = 'walcache_tls'",
                &[],
            )
            .await
            .is_ok_and(|row| row.get::<_, String>(0) == confirmed)
        }
    })
    .await?;
    let mut client = stream.stop().await?;
    client.drop_slot("walcache_tls").await?;
    client.close().await?;

    // prefer (the default) takes TLS when the server offers it; disable does not.
    let mut client = ReplicationClient::connect(&config(&pg, &db)).await?;
    assert!(client.is_tls() && server_sees_ssl(&mut client).await?);
    let mut client =
        ReplicationClient::connect(&config(&pg, &db).ssl_mode(SslMode::Disable)).await?;
    assert!(!client.is_tls() && !server_sees_ssl(&mut client).await?);

    // SCRAM-SHA-256 inside TLS (the server also offers SCRAM-SHA-256-PLUS, which is declined).
    sql.batch_execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';",
    )
    .await?;
    let hba = pg.data_dir().join("pg_hba.conf");
    let existing = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!("hostssl all scram_user 127.0.0.1/32 scram-sha-256\n{existing}"),
    )?;
    sql.batch_execute("SELECT pg_reload_conf()").await?;
    let scram = ReplicationConfig::new("127.0.0.1", pg.port(), "scram_user", &db)
        .ssl_mode(SslMode::Require);
    wait_until("pg_hba.conf to be reloaded", DEADLINE, || async {
        matches!(
            ReplicationClient::connect(&scram).await,
            Err(Error::Authentication { .. })
        )
    })
    .await?;
    let mut client = ReplicationClient::connect(&scram.password("scram secret")).await?;
    assert!(client.is_tls());
    assert!(client.identify_system().await.is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_and_verify_full_check_the_server_certificate() -> TestResult {
    let pg = PgServer::start_with_tls()?;
    let db = pg.create_database("cdcverify").await?;
    let ca = pg.ca_cert_path().expect("a TLS server has a CA");

    // The chain verifies against the test CA; verify-full matches the IP SAN 127.0.0.1 and
    // the DNS SAN localhost.
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let mut client =
            ReplicationClient::connect(&config(&pg, &db).ssl_mode(mode).root_cert(ca)).await?;
        assert!(client.is_tls(), "{mode}");
        assert!(server_sees_ssl(&mut client).await?, "{mode}");
        assert!(client.identify_system().await.is_ok(), "{mode}");
    }
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    );
    let mut client = ReplicationClient::connect(&url.parse()?).await?;
    assert!(server_sees_ssl(&mut client).await?);

    // A name the certificate does not carry: verify-ca passes, verify-full fails.
    let elsewhere = |mode| {
        ReplicationConfig::new("db.example.com", pg.port(), "postgres", &db)
            .hostaddr([127, 0, 0, 1].into())
            .ssl_mode(mode)
            .root_cert(ca)
    };
    ReplicationClient::connect(&elsewhere(SslMode::VerifyCa)).await?;
    let error = ReplicationClient::connect(&elsewhere(SslMode::VerifyFull))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    assert!(
        format!("{error:?}").contains("NotValidForName"),
        "{error:?}"
    );
    assert!(
        error_chain(&error).contains("not valid for name \"db.example.com\""),
        "{}",
        error_chain(&error)
    );
    assert!(!error.is_retryable());

    // Another CA: neither verify-ca nor verify-full (nor require with that root) trusts the
    // server.
    let other = tempfile::tempdir()?;
    let wrong_ca = TestCerts::generate(other.path())?;
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let error = ReplicationClient::connect(
            &config(&pg, &db)
                .ssl_mode(mode)
                .root_cert(wrong_ca.ca_cert_path()),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::Tls(_)), "{mode}: {error:?}");
        // UnknownIssuer, or BadSignature if the other CA has the same name.
        assert!(
            format!("{error:?}").contains("InvalidCertificate"),
            "{error:?}"
        );
    }

    // Configuration errors come before any connection attempt.
    let error = ReplicationClient::connect(&config(&pg, &db).ssl_mode(SslMode::VerifyFull))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("sslrootcert"), "{error}");
    let missing = other.path().join("missing.crt");
    let error = ReplicationClient::connect(
        &config(&pg, &db)
            .ssl_mode(SslMode::VerifyCa)
            .root_cert(&missing),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::RootCert { .. }), "{error:?}");
    let not_pem = other.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n")?;
    let error = ReplicationClient::connect(
        &config(&pg, &db)
            .ssl_mode(SslMode::VerifyCa)
            .root_cert(&not_pem),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::RootCert { .. }), "{error:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_a_server_without_tls() -> TestResult {
    let pg = PgServer::start()?;
    let db = pg.create_database("cdcnotls").await?;

    let error = ReplicationClient::connect(&config(&pg, &db).ssl_mode(SslMode::Require))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TlsRefused {
                mode: SslMode::Require
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the server does not accept TLS connections (it refused the SSLRequest) and \
         sslmode=require requires TLS: enable ssl on the server or lower sslmode"
    );
    assert!(!error.is_retryable());

    let certs_dir = tempfile::tempdir()?;
    let certs = TestCerts::generate(certs_dir.path())?;
    let error = ReplicationClient::connect(
        &config(&pg, &db)
            .ssl_mode(SslMode::VerifyFull)
            .root_cert(certs.ca_cert_path()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            Error::TlsRefused {
                mode: SslMode::VerifyFull
            }
        ),
        "{error:?}"
    );

    // prefer falls back to plain TCP.
    let mut client =
        ReplicationClient::connect(&config(&pg, &db).ssl_mode(SslMode::Prefer)).await?;
    assert!(!client.is_tls());
    assert!(client.identify_system().await.is_ok());
    Ok(())
}

fn column_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| ColumnValue::Text(v.into())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|v| ColumnValue::Binary(v.into())),
    ]
}

fn tuple_data() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(column_value(), 0..24).prop_map(TupleData)
}

fn change() -> impl Strategy<Value = LogicalMessage> {
    let old = prop_oneof![
        tuple_data().prop_map(OldTuple::Key),
        tuple_data().prop_map(OldTuple::Full),
    ];
    prop_oneof![
        (any::<u32>(), tuple_data())
            .prop_map(|(relation_id, new)| LogicalMessage::Insert(Insert { relation_id, new })),
        (any::<u32>(), proptest::option::of(old), tuple_data()).prop_map(
            |(relation_id, old, new)| {
                LogicalMessage::Update(Update {
                    relation_id,
                    old,
                    new,
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn pgoutput_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = LogicalMessage::decode(Bytes::from(bytes));
    }

    #[test]
    fn pgoutput_decoder_never_panics_after_a_valid_tag(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        let _ = LogicalMessage::decode(Bytes::from(bytes));
    }

    #[test]
    fn copy_data_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = ReplicationMessage::decode(Bytes::from(bytes.clone()));
        let _ = StandbyStatusUpdate::decode(Bytes::from(bytes));
    }

    #[test]
    fn insert_and_update_round_trip(message in change()) {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        let encoded = out.freeze();
        prop_assert_eq!(LogicalMessage::decode(encoded.clone()).unwrap(), message);
        // Every strict prefix is an error, never a panic and never a different message.
        for len in 0..encoded.len() {
            prop_assert!(LogicalMessage::decode(encoded.slice(..len)).is_err());
        }
    }

    #[test]
    fn xlogdata_round_trips(
        start in any::<u64>(), end in any::<u64>(), time in any::<i64>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let message = ReplicationMessage::XLogData(walcache_cdc::protocol::XLogData {
            wal_start: Lsn(start),
            wal_end: Lsn(end),
            send_time: PgTimestamp(time),
            data: data.into(),
        });
        let mut out = BytesMut::new();
        message.encode(&mut out);
        prop_assert_eq!(ReplicationMessage::decode(out.freeze()).unwrap(), message);
    }

    #[test]
    fn lsn_text_round_trips(value in any::<u64>()) {
        prop_assert_eq!(Lsn(value).to_string().parse::<Lsn>().unwrap(), Lsn(value));
    }
}

/// The client certificate's subject as the server saw it (`pg_stat_ssl.client_dn`).
async fn client_dn(client: &mut ReplicationClient) -> Result<Option<String>, Error> {
    let rows = client
        .simple_query("SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten()))
}

/// Mutual TLS: a role that PostgreSQL authenticates by certificate (`cert` in pg_hba.conf)
/// replicates with `sslcert`/`sslkey` (URL and key=value forms, PKCS#8, SEC1 and PKCS#1
/// keys) and is refused without them; unusable files are typed errors before any I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_as_a_role_authenticated_by_client_certificate() -> TestResult {
    let pg = PgServer::start_with(PgOptions::new().cert_auth_user("cdc_cert"))?;
    let db = pg.create_database("cdcmtls").await?;
    let sql = pg.connect(&db).await?;
    sql.batch_execute(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
         CREATE PUBLICATION walcache FOR TABLE users;
         CREATE ROLE cdc_cert LOGIN REPLICATION;
         GRANT SELECT ON users TO cdc_cert;",
    )
    .await?;
    let certs = pg.tls_certs().expect("a cert-auth server has TLS");
    let ca = certs.ca_cert_path();
    let (cert, key) = certs.client_cert("cdc_cert")?;

    // The URL form, verify-full, streaming a change.
    let url = format!(
        "postgres://cdc_cert@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pg.port(),
        ca.display(),
        cert.display(),
        key.display()
    );
    let config: ReplicationConfig = url.parse()?;
    assert_eq!(
        config.get_client_cert(),
        Some(&ClientCert::new(&cert, &key))
    );
    let mut client = ReplicationClient::connect(&config).await?;
    assert!(client.is_tls());
    assert_eq!(
        client_dn(&mut client).await?.as_deref(),
        Some("/CN=cdc_cert")
    );
    let slot = client.create_logical_slot("walcache_mtls", false).await?;
    let mut stream = client
        .start_replication(
            &StartReplication::new("walcache_mtls", ["walcache"]).start_lsn(slot.consistent_point),
        )
        .await?;
    sql.batch_execute("INSERT INTO users VALUES (7, 'mtls@example.com')")
        .await?;
    let (changes, _) = next_transaction(&mut stream).await;
    let [LogicalMessage::Insert(Insert { new, .. })] = changes.as_slice() else {
        panic!("expected one Insert, got {changes:?}");
    };
    assert_eq!(new, &tuple(&[Some("7"), Some("mtls@example.com")]));
    let mut client = stream.stop().await?;
    client.drop_slot("walcache_mtls").await?;
    client.close().await?;

    // The key=value form and the builder, with SEC1 and PKCS#1 (RSA) keys.
    for format in [ClientKeyFormat::Sec1, ClientKeyFormat::Pkcs1] {
        let (cert, key) = certs.client_cert_with("cdc_cert", format)?;
        let pem = std::fs::read_to_string(&key)?;
        let header = match format {
            ClientKeyFormat::Sec1 => "-----BEGIN EC PRIVATE KEY-----",
            _ => "-----BEGIN RSA PRIVATE KEY-----",
        };
        assert!(
            pem.starts_with(header),
            "{format:?}: {}",
            pem.lines().next().unwrap_or("")
        );
        let kv = format!(
            "host=127.0.0.1 port={} user=cdc_cert dbname={db} sslmode=verify-ca \
             sslrootcert='{}' sslcert='{}' sslkey='{}'",
            pg.port(),
            ca.display(),
            cert.display(),
            key.display()
        );
        let mut client = ReplicationClient::connect(&kv.parse()?).await?;
        assert_eq!(
            client_dn(&mut client).await?.as_deref(),
            Some("/CN=cdc_cert"),
            "{format:?}"
        );
        let built = ReplicationConfig::new("127.0.0.1", pg.port(), "cdc_cert", &db)
            .ssl_mode(SslMode::Require)
            .client_cert(&cert, &key);
        let mut client = ReplicationClient::connect(&built).await?;
        assert!(client.identify_system().await.is_ok(), "{format:?}");
    }

    // Without a certificate the server refuses the role (pg_hba.conf `cert`).
    let without = ReplicationConfig::new("127.0.0.1", pg.port(), "cdc_cert", &db)
        .ssl_mode(SslMode::VerifyFull)
        .root_cert(ca);
    let error = ReplicationClient::connect(&without).await.unwrap_err();
    assert_eq!(error.code(), Some("28000"), "{error:?}");
    assert!(!error.is_retryable(), "{error:?}");
    // Nor over plain TCP.
    let error = ReplicationClient::connect(&without.clone().ssl_mode(SslMode::Disable))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("28000"), "{error:?}");

    // A certificate for another role does not authenticate this one.
    let (other_cert, other_key) = certs.client_cert("someone_else")?;
    let error = ReplicationClient::connect(&without.clone().client_cert(&other_cert, &other_key))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("28000"), "{error:?}");

    // A certificate from a CA the server does not trust: the server rejects the handshake.
    let elsewhere = tempfile::tempdir()?;
    let wrong_ca = TestCerts::generate(elsewhere.path())?;
    let (foreign_cert, foreign_key) = wrong_ca.client_cert("cdc_cert")?;
    let error =
        ReplicationClient::connect(&without.clone().client_cert(&foreign_cert, &foreign_key))
            .await
            .unwrap_err();
    assert!(matches!(error, Error::Tls(_)), "{error:?}");
    assert!(
        error_chain(&error).contains("UnknownCA"),
        "{}",
        error_chain(&error)
    );
    assert!(!error.is_retryable(), "{error:?}");

    // Files that cannot be used: typed errors naming the file, before any network I/O.
    let missing = elsewhere.path().join("missing.key");
    let unusable = |config: ReplicationConfig| async move {
        match ReplicationClient::connect(&config).await {
            Err(Error::ClientCert { path, reason, .. }) => (path, reason),
            other => panic!("expected Error::ClientCert, got {:?}", other.map(|_| ())),
        }
    };
    let (path, reason) = unusable(without.clone().client_cert(&cert, &missing)).await;
    assert_eq!(
        (path.as_path(), reason),
        (missing.as_path(), "cannot read the file")
    );
    let (path, reason) = unusable(without.clone().client_cert(&key, &key)).await;
    assert_eq!(path, key);
    assert!(reason.contains("no CERTIFICATE block"), "{reason}");
    let (path, reason) = unusable(without.clone().client_cert(&cert, &cert)).await;
    assert_eq!(path, cert);
    assert!(reason.contains("no private key"), "{reason}");
    let (path, reason) = unusable(without.clone().client_cert(&cert, &other_key)).await;
    assert_eq!(path, other_key);
    assert!(
        reason.contains("does not belong to the certificate"),
        "{reason}"
    );
    let encrypted = elsewhere.path().join("encrypted.key");
    std::fs::write(
        &encrypted,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )?;
    let (path, reason) = unusable(without.clone().client_cert(&cert, &encrypted)).await;
    assert_eq!(path, encrypted);
    assert!(reason.contains("encrypted"), "{reason}");
    // The message names the file, never the key's content.
    let error = ReplicationClient::connect(&without.clone().client_cert(&cert, &other_key))
        .await
        .unwrap_err();
    let key_body = std::fs::read_to_string(&other_key)?;
    let secret_line = key_body.lines().nth(1).expect("a base64 line");
    let text = format!("{} {error:?}", error_chain(&error));
    assert!(text.contains(&other_key.display().to_string()), "{text}");
    assert!(!text.contains(secret_line), "{text}");
    Ok(())
}

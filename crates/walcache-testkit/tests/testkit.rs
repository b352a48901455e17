//! The testkit against real servers.

use std::process::Command;
use std::time::{Duration, Instant};

use walcache_testkit::{
    unique_prefix, wait_until, wait_until_blocking, Error, PgOptions, PgServer, RedisServer,
    WaitError,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn redis_serves_stops_and_comes_back_on_the_same_port() -> TestResult {
    let mut redis = RedisServer::start()?;
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/"));
    assert!(redis.is_running());

    let mut conn = redis.client().get_multiplexed_async_connection().await?;
    let key = format!("{}:k", unique_prefix());
    redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .exec_async(&mut conn)
        .await?;
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    assert_eq!(value, "v");

    redis.stop();
    redis.stop(); // idempotent
    assert!(!redis.is_running());
    assert!(redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .is_err());

    redis.start_again()?;
    assert_eq!(redis.port(), port);
    assert!(redis.is_running());
    let mut conn = redis.client().get_multiplexed_async_connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    // No persistence: the server comes back empty.
    let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    assert_eq!(value, None);
    Ok(())
}

#[tokio::test]
async fn redis_servers_are_independent() -> TestResult {
    let a = RedisServer::start()?;
    let b = RedisServer::start()?;
    assert_ne!(a.port(), b.port());
    Ok(())
}

#[tokio::test]
async fn pg_runs_with_logical_wal_and_the_requested_settings() -> TestResult {
    let pg = PgServer::start()?;
    assert_eq!(pg.superuser(), "postgres");
    assert_eq!(
        pg.url("db"),
        format!("postgres://postgres@127.0.0.1:{}/db", pg.port())
    );
    assert_eq!(
        pg.conn_string("db"),
        format!("host=127.0.0.1 port={} user=postgres dbname=db", pg.port())
    );
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    assert!(pg.psql_path().is_file());

    let client = pg.connect("postgres").await?;
    for (setting, expected) in [
        ("wal_level", "logical"),
        ("max_replication_slots", "16"),
        ("max_wal_senders", "16"),
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("listen_addresses", "127.0.0.1"),
        ("server_encoding", "UTF8"),
    ] {
        let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
        assert_eq!(row.get::<_, String>(0), expected, "{setting}");
    }
    Ok(())
}

#[tokio::test]
async fn pg_creates_distinct_databases() -> TestResult {
    let pg = PgServer::start()?;
    let first = pg.create_database("testkit").await?;
    let second = pg.create_database("testkit").await?;
    assert_ne!(first, second);
    assert!(first.starts_with("testkit"));

    let client = pg.connect(&first).await?;
    let row = client.query_one("SELECT current_database()", &[]).await?;
    assert_eq!(row.get::<_, String>(0), first);
    client
        .batch_execute("CREATE TABLE only_in_first (id int)")
        .await?;
    let other = pg.connect(&second).await?;
    let row = other
        .query_one("SELECT to_regclass('only_in_first') IS NULL", &[])
        .await?;
    assert!(row.get::<_, bool>(0));
    Ok(())
}

#[tokio::test]
async fn pg_supports_logical_replication() -> TestResult {
    let pg = PgServer::start()?;
    let db = pg.create_database("replication").await?;
    let client = pg.connect(&db).await?;
    // One statement per call: a multi-statement batch is one transaction, and a slot cannot
    // be created in a transaction that has written.
    for statement in [
        "CREATE TABLE items (id int PRIMARY KEY, name text)",
        "CREATE PUBLICATION p FOR TABLE items",
        "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')",
        "INSERT INTO items VALUES (1, 'one')",
    ] {
        client.batch_execute(statement).await?;
    }
    let row = client
        .query_one(
            "SELECT plugin, slot_type FROM pg_replication_slots WHERE slot_name = 's1'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "pgoutput");
    assert_eq!(row.get::<_, String>(1), "logical");
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s1', NULL, NULL, \
             'proto_version', '1', 'publication_names', 'p')",
            &[],
        )
        .await?;
    assert!(row.get::<_, i64>(0) >= 3, "expected BEGIN, INSERT, COMMIT");

    // pg_hba.conf admits replication connections over TCP.
    let output = Command::new(pg.psql_path())
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "IDENTIFY_SYSTEM",
            "-d",
        ])
        .arg(pg.replication_conn_string(&db))
        .output()?;
    assert!(
        output.status.success(),
        "psql IDENTIFY_SYSTEM failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with(&format!("|{db}\n")), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn pg_keeps_data_across_restarts_and_crashes() -> TestResult {
    let mut pg = PgServer::start()?;
    let port = pg.port();
    let db = pg.create_database("restart").await?;
    let client = pg.connect(&db).await?;
    client
        .batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (1);")
        .await?;

    pg.restart()?;
    assert_eq!(pg.port(), port);
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    let client = pg.connect(&db).await?;
    client.batch_execute("INSERT INTO kept VALUES (2)").await?;

    pg.stop();
    pg.stop(); // idempotent
    assert!(!pg.is_running());
    assert!(pg.connect(&db).await.is_err());
    pg.start_again()?;
    assert_eq!(pg.port(), port);
    let client = pg.connect(&db).await?;
    let row = client
        .query_one("SELECT sum(v)::int FROM kept", &[])
        .await?;
    assert_eq!(row.get::<_, i32>(0), 3);
    Ok(())
}

#[tokio::test]
async fn wait_until_succeeds_once_the_condition_holds() -> TestResult {
    let start = Instant::now();
    wait_until("50 ms to pass", Duration::from_secs(5), || async move {
        start.elapsed() >= Duration::from_millis(50)
    })
    .await?;
    let mut polls = 0;
    wait_until_blocking("three polls", Duration::from_secs(5), || {
        polls += 1;
        polls == 3
    })?;
    assert_eq!(polls, 3);
    Ok(())
}

#[tokio::test]
async fn wait_until_times_out_on_a_false_condition() {
    let start = Instant::now();
    let err: WaitError = wait_until("the impossible", Duration::from_millis(50), || async {
        false
    })
    .await
    .unwrap_err();
    assert_eq!(err.what, "the impossible");
    assert!(err.waited >= Duration::from_millis(50));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().starts_with("timed out after "));
    assert!(err.to_string().ends_with(" waiting for the impossible"));

    let err = wait_until_blocking("never", Duration::from_millis(20), || false).unwrap_err();
    assert_eq!(err.what, "never");
}

#[test]
fn unique_prefixes_differ() {
    let a = unique_prefix();
    let b = unique_prefix();
    assert_ne!(a, b);
    assert!(a.starts_with(&format!("t{}x", std::process::id())));
}

#[test]
fn missing_binary_names_the_install_command() {
    let err = Error::MissingBinary {
        binary: "redis-server".into(),
        package: "redis-server".into(),
    };
    assert_eq!(
        err.to_string(),
        "redis-server not found: install it with `apt-get install -y redis-server`"
    );
}

#[tokio::test]
async fn tls_redis_accepts_a_client_trusting_the_test_ca() -> TestResult {
    let redis = RedisServer::start_with_tls()?;
    let url = redis.tls_url().expect("a TLS server has a rediss:// URL");
    assert_eq!(url, format!("rediss://127.0.0.1:{}/", redis.port()));
    assert_eq!(redis.url(), url);
    let ca = std::fs::read(redis.ca_cert_path().expect("a TLS server has a CA"))?;

    // What walcache and walcached do with a CA file: redis-rs builds its rustls configuration
    // with the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = format!("{}:tls", unique_prefix());
    redis::cmd("SET")
        .arg(&key)
        .arg("over tls")
        .exec_async(&mut conn)
        .await?;
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    assert_eq!(value, "over tls");

    // The testkit's own client trusts the test CA too (a blocking connection here).
    let mut blocking = redis.client().get_connection()?;
    let value: String = redis::cmd("GET").arg(&key).query(&mut blocking)?;
    assert_eq!(value, "over tls");

    // Neither the system roots (plain `Client::open`) nor another CA trust the server, and
    // there is no plaintext port.
    let system_roots = redis::Client::open(url.as_str())?;
    assert!(system_roots
        .get_multiplexed_async_connection()
        .await
        .is_err());
    let other = tempfile::tempdir()?;
    let wrong = walcache_testkit::TestCerts::generate(other.path())?;
    let wrong_ca = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(wrong.ca_pem()?),
        },
    )?;
    assert!(wrong_ca.get_multiplexed_async_connection().await.is_err());
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port()))?;
    assert!(plain
        .get_connection_with_timeout(Duration::from_secs(5))
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
        .is_err());
    Ok(())
}

#[tokio::test]
async fn tls_pg_serves_tls_with_its_ca_and_plain_connections() -> TestResult {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    let pg = PgServer::start_with_tls()?;
    let ca = pg.ca_cert_path().expect("a TLS server has a CA");
    let certs = pg.tls_certs().expect("a TLS server has certificates");
    let key = std::fs::metadata(certs.server_key_path())?;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(key.uid(), std::fs::metadata(pg.data_dir())?.uid());
    let hba = std::fs::read_to_string(pg.data_dir().join("pg_hba.conf"))?;
    assert!(hba.contains("hostssl replication     all             127.0.0.1/32"));

    // Plain connections, for the tests' own setup, still work.
    let client = pg.connect("postgres").await?;
    let ssl: String = client.query_one("SHOW ssl", &[]).await?.get(0);
    assert_eq!(ssl, "on");

    // libpq verifies the certificate against the CA, by IP address and by host name (libpq 14
    // matches the address against the certificate's DNS names only: with
    // WALCACHE_TESTKIT_PG_BINDIR at a PostgreSQL 14, this checks the DNS:127.0.0.1 entry).
    for host in ["127.0.0.1", "localhost"] {
        let output = Command::new(pg.psql_path())
            .arg(format!(
                "host={host} port={} user=postgres dbname=postgres sslmode=verify-full \
                 sslrootcert={}",
                pg.port(),
                ca.display()
            ))
            .args([
                "-Atc",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ])
            .output()?;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "t");
    }
    Ok(())
}

/// The current transaction's xid8 (epoch × 2^32 + xid), in a transaction of its own.
async fn current_xid8(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[tokio::test]
async fn pg_starts_in_the_chosen_xid_epoch() -> TestResult {
    let pg = PgServer::start_with(PgOptions::new().xid_epoch(1))?;
    let client = pg.connect("postgres").await?;
    let xid8 = current_xid8(&client).await?;
    assert_eq!(xid8 >> 32, 1, "xid8 {xid8} is in epoch 1");
    let snapshot: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    let xmax: u64 = snapshot.split(':').nth(1).unwrap().parse()?;
    assert_eq!(xmax >> 32, 1, "snapshot {snapshot}");

    // The cluster works as usual: a new database (a copy of template1), writes, reads.
    let db = pg.create_database("epoch").await?;
    let client = pg.connect(&db).await?;
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1);")
        .await?;
    let row = client.query_one("SELECT count(*) FROM t", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 1);
    Ok(())
}

#[tokio::test]
async fn pg_started_near_the_wrap_crosses_into_the_next_epoch() -> TestResult {
    let start = u32::MAX - 1000;
    let pg = PgServer::start_with(PgOptions::new().next_xid(start))?;
    let db = pg.create_database("wrap").await?;
    let client = pg.connect(&db).await?;
    let first = current_xid8(&client).await?;
    assert!(
        (u64::from(start)..u64::from(start) + 100).contains(&first),
        "the first xids are the chosen ones: {first}"
    );
    client
        .batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1);")
        .await?;

    let next = pg.consume_xids(2000).await?;
    assert_eq!(
        next >> 32,
        1,
        "2000 xids later the epoch is 1: next xid8 {next}"
    );
    let after = current_xid8(&client).await?;
    assert!(after >= next && after >> 32 == 1, "xid8 {after}");
    // Rows written before the wrap are still visible after it, and new ones too; new
    // databases still copy template1 (whose rows predate the reset).
    client.batch_execute("INSERT INTO t VALUES (2)").await?;
    let row = client.query_one("SELECT sum(v)::int FROM t", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 3);
    let other = pg.create_database("wrap").await?;
    let other = pg.connect(&other).await?;
    let row = other
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'pg_class'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 1);
    Ok(())
}

#[test]
fn pg_rejects_xids_a_cluster_cannot_start_at() {
    for options in [
        PgOptions::new().next_xid(2),
        PgOptions::new().xid_epoch(u32::MAX),
    ] {
        let result = PgServer::start_with(options.clone());
        assert!(
            matches!(result, Err(Error::InvalidOption { .. })),
            "{options:?}: {result:?}"
        );
    }
}

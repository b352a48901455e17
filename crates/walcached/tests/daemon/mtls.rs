//! Client certificates (mutual TLS) to PostgreSQL and Redis.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use walcache_testkit::{PgOptions, PgServer, RedisServer};
use walcached::config::Config;

use crate::support::{users_db, Daemon, Listener, TestLog, USERS_RULE};

/// The role PostgreSQL authenticates by certificate (pg_hba.conf `cert`).
const ROLE: &str = "walcached_cert";

/// PostgreSQL requiring a certificate for [`ROLE`] (a superuser, so that the daemon may create
/// its publication), a Redis requiring client certificates, and the `users` database.
async fn mtls_stack() -> (PgServer, RedisServer, String, tokio_postgres::Client) {
    let pg = PgServer::start_with(PgOptions::new().cert_auth_user(ROLE)).expect("postgres");
    let redis = RedisServer::start_with_tls_client_auth().expect("redis with client auth");
    let (dbname, db) = users_db(&pg).await;
    db.batch_execute(&format!("CREATE ROLE {ROLE} LOGIN SUPERUSER REPLICATION"))
        .await
        .expect("role");
    (pg, redis, dbname, db)
}

/// The daemon's configuration: `postgres_tls` appended to the URL's query, `redis_tls` lines
/// in `[redis]`.
fn mtls_config(
    pg: &PgServer,
    dbname: &str,
    redis: &RedisServer,
    postgres_tls: &str,
    redis_tls: &str,
) -> String {
    format!(
        r#"
[postgres]
url = "postgres://{ROLE}@localhost:{port}/{dbname}?sslmode=verify-full&sslrootcert={pg_ca}{postgres_tls}"

[redis]
url = "{redis_url}"
ca_file = "{redis_ca}"
{redis_tls}

[stream]
heartbeat_interval_ms = 50
status_interval_ms = 200

[http]
listen = ""

{USERS_RULE}
"#,
        port = pg.port(),
        pg_ca = pg.ca_cert_path().expect("CA").display(),
        redis_url = redis.tls_url().expect("rediss URL"),
        redis_ca = redis.ca_cert_path().expect("CA").display(),
    )
}

/// The error and its sources, joined.
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

/// `sslcert`/`sslkey` in `postgres.url` for a role PostgreSQL authenticates by certificate,
/// and `client_cert_file`/`client_key_file` for a Redis with `tls-auth-clients yes`: the
/// daemon streams and publishes, both its PostgreSQL sessions presenting the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_authenticates_with_client_certificates() {
    let (pg, redis, dbname, db) = mtls_stack().await;
    let (pg_cert, pg_key) = pg
        .tls_certs()
        .expect("TLS")
        .client_cert(ROLE)
        .expect("client certificate");
    let (redis_cert, redis_key) = redis
        .tls_certs()
        .expect("TLS")
        .client_cert("walcached")
        .expect("client certificate");
    let listener = Listener::start(&redis).await;
    let toml = mtls_config(
        &pg,
        &dbname,
        &redis,
        &format!("&sslcert={}&sslkey={}", pg_cert.display(), pg_key.display()),
        &format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            redis_cert.display(),
            redis_key.display()
        ),
    );
    let daemon = Daemon::start(&toml).await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', NULL)", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    let sessions: Vec<(String, Option<String>)> = db
        .query(
            "SELECT a.application_name, s.client_dn FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name IN ('walcached', 'walcached-control') \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let dn = Some(format!("/CN={ROLE}"));
    assert_eq!(
        sessions,
        [
            ("walcached".to_owned(), dn.clone()),
            ("walcached-control".to_owned(), dn)
        ],
        "the replication and the control session both present the certificate"
    );
    daemon.stop().await;
}

/// Without client certificates the daemon does not start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_certificates_the_daemon_fails_clearly() {
    let (pg, redis, dbname, _db) = mtls_stack().await;
    let (pg_cert, pg_key) = pg
        .tls_certs()
        .expect("TLS")
        .client_cert(ROLE)
        .expect("client certificate");
    let (redis_cert, redis_key) = redis
        .tls_certs()
        .expect("TLS")
        .client_cert("walcached")
        .expect("client certificate");
    let redis_tls = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        redis_cert.display(),
        redis_key.display()
    );
    let pg_tls = format!("&sslcert={}&sslkey={}", pg_cert.display(), pg_key.display());

    // PostgreSQL refuses the role without its certificate.
    let daemon = Daemon::spawn(&mtls_config(&pg, &dbname, &redis, "", &redis_tls));
    let error = daemon
        .join(Duration::from_secs(30))
        .await
        .expect_err("no certificate for a cert-auth role");
    let text = error_chain(&error);
    assert!(
        matches!(error, walcached::pipeline::RunError::Postgres { .. }),
        "{text}"
    );
    assert!(
        text.contains("connection requires a valid client certificate"),
        "{text}"
    );
    eprintln!("without a PostgreSQL client certificate: {text}");

    // Redis refuses the TLS handshake without a client certificate.
    let daemon = Daemon::spawn(&mtls_config(&pg, &dbname, &redis, &pg_tls, ""));
    let error = daemon
        .join(Duration::from_secs(30))
        .await
        .expect_err("no client certificate for Redis");
    let text = error_chain(&error);
    assert!(
        matches!(error, walcached::pipeline::RunError::Redis { .. }),
        "{text}"
    );
    assert!(text.contains("CertificateRequired"), "{text}");
    eprintln!("without a Redis client certificate: {text}");
}

/// A key file open to its group or others is a warning naming the file and the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readable_client_key_is_warned_about() {
    let (pg, redis, dbname, _db) = mtls_stack().await;
    let (pg_cert, pg_key) = pg
        .tls_certs()
        .expect("TLS")
        .client_cert(ROLE)
        .expect("client certificate");
    std::fs::set_permissions(&pg_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (redis_cert, redis_key) = redis
        .tls_certs()
        .expect("TLS")
        .client_cert("walcached")
        .expect("client certificate");
    std::fs::set_permissions(&redis_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let toml = mtls_config(
        &pg,
        &dbname,
        &redis,
        &format!("&sslcert={}&sslkey={}", pg_cert.display(), pg_key.display()),
        &format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            redis_cert.display(),
            redis_key.display()
        ),
    );
    let log = TestLog::default();
    let config = tracing::dispatcher::with_default(&log.dispatch(), || {
        Config::parse(&toml, &HashMap::<String, String>::new())
    });
    config.expect("a readable key is a warning, not an error");
    let text = log.text();
    for key in [&pg_key, &redis_key] {
        assert!(
            text.lines().any(|l| l.contains("WARN")
                && l.contains(&key.display().to_string())
                && l.contains("chmod 600")),
            "no warning for {}: {text}",
            key.display()
        );
    }
}

//! Connections to PostgreSQL and Redis made from the configuration, with TLS when the URLs ask
//! for it: `sslmode`/`sslrootcert` in `postgres.url` (libpq's meanings, up to `verify-full`),
//! and `sslcert`/`sslkey` for a client certificate (mutual TLS), for both the replication
//! connection and the SQL sessions; and `rediss://` (with `redis.ca_file` for a private CA,
//! `redis.client_cert_file`/`redis.client_key_file` for a client certificate) for Redis.
//!
//! # No silent sockets
//!
//! A peer that vanishes without a FIN or RST must not leave a socket waiting forever. Every
//! socket, PostgreSQL's and Redis's, gets TCP keepalives after 10 s idle, every 5 s, 3 probes,
//! and a 20 s `TCP_USER_TIMEOUT` on Linux (walcache-cdc's `DEFAULT_KEEPALIVES_*` and
//! `DEFAULT_TCP_USER_TIMEOUT`, where the reasons are): a dead peer is noticed within about
//! 25 s. `postgres.url` may set `keepalives`, `keepalives_idle`, `keepalives_interval`,
//! `keepalives_retries` and `tcp_user_timeout` (in seconds, as tokio-postgres reads it) for
//! both kinds of PostgreSQL connection. The SQL sessions also run every statement under
//! [`STATEMENT_TIMEOUT`].

use std::path::PathBuf;
use std::time::Duration;

use redis::io::tcp::socket2::TcpKeepalive;
use redis::IntoConnectionInfo;
use walcache_cdc::client::{
    parse_connection_string, tls_client_config_with_cert, ClientCert, ReplicationConfig, SslMode,
    DEFAULT_KEEPALIVES_IDLE, DEFAULT_KEEPALIVES_INTERVAL, DEFAULT_KEEPALIVES_RETRIES,
    DEFAULT_TCP_USER_TIMEOUT,
};

use crate::config::{redact_url, Config, ConfigError};

/// The `statement_timeout` of the SQL sessions opened by [`Postgres::connect`] (the daemon's
/// control session, `walcached check`'s): 5 s. It is not set on the replication connection.
///
/// Everything they run is a catalog read or a cheap function call that answers in
/// milliseconds: the rules' tables and the publication, `SHOW`, the replication slot's row,
/// the visibility check of a few transaction ids, the sampled WAL position. Some of these sit
/// on the invalidation path (heartbeats wait for the sampler, confirmations for the
/// visibility check), so a statement stuck on a server in trouble would stall it without an
/// error to act on; under this timeout it fails with SQLSTATE 57014, is reported, and is
/// retried. The exception that can wait longer is DDL at start-up (`CREATE PUBLICATION`,
/// `ALTER PUBLICATION ... ADD TABLE`), which queues behind a conflicting lock (a running
/// `VACUUM`, `CREATE INDEX CONCURRENTLY` or `ALTER TABLE` on a rule's table): it then fails
/// after 5 s and the daemon exits rather than hanging; create the publication beforehand to
/// avoid it.
///
/// The server enforces it, so it covers a slow or blocked server, not one that has vanished
/// (the server never hears the query): that is what the TCP keepalives and user timeout are
/// for. It is appended to the `options` of `postgres.url`, so it overrides a
/// `statement_timeout` set there.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// `postgres.url`, parsed, with the password from the environment or file applied.
#[derive(Debug, Clone)]
pub struct Postgres {
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<ClientCert>,
    max_frame_len: usize,
}

/// A PostgreSQL session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings cannot be used (root certificate unreadable, client certificate or
    /// key unusable, ...).
    #[error("TLS settings of postgres.url")]
    Tls(#[source] walcache_cdc::Error),
    /// Connecting or authenticating failed.
    #[error("connecting to PostgreSQL")]
    Postgres(#[source] tokio_postgres::Error),
}

impl Postgres {
    /// Parse `postgres.url` (either libpq form, including `sslmode=verify-ca|verify-full`,
    /// `sslrootcert`, and `sslcert` with `sslkey`). A client certificate and key are read and
    /// checked now (they are read again at each connect).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on `postgres.url`: it does not parse, `sslcert` comes without
    /// `sslkey` (or the reverse), or the certificate or key file cannot be used (the error
    /// names the file and the problem).
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let url = config.postgres.url.expose();
        let parsed = parse_connection_string(url).map_err(|e| {
            ConfigError::new(
                "postgres.url",
                format!(
                    "{:?} is not a PostgreSQL connection string ({e}); expected \
                     postgres://user@host:5432/dbname[?sslmode=verify-full&sslrootcert=/ca.pem]",
                    redact_url(url)
                ),
            )
        })?;
        if let Some(client_cert) = &parsed.client_cert {
            if parsed.ssl_mode == SslMode::Disable {
                return Err(ConfigError::new(
                    "postgres.url",
                    "sslcert and sslkey are set but sslmode=disable: the certificate would never \
                     be sent; use sslmode=verify-full (or require) or drop sslcert and sslkey",
                ));
            }
            client_cert.check().map_err(|e| {
                ConfigError::new(
                    "postgres.url",
                    format!(
                        "{e}; sslcert is the client certificate (PEM, signed by a CA in the \
                         server's ssl_ca_file, CN = the role), sslkey its unencrypted private key \
                         (PEM, mode 0600)"
                    ),
                )
            })?;
        }
        let mut pg = parsed.pg;
        if let Some(p) = &config.postgres.password {
            pg.password(p.expose());
        }
        pg.connect_timeout(Duration::from_secs(10));
        let statement_timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options = match pg.get_options() {
            Some(options) if !options.trim().is_empty() => {
                format!("{options} {statement_timeout}")
            }
            _ => statement_timeout,
        };
        pg.options(options);
        Ok(Postgres {
            pg,
            ssl_mode: parsed.ssl_mode,
            root_cert: parsed.root_cert,
            client_cert: parsed.client_cert,
            max_frame_len: config.stream.max_frame_bytes,
        })
    }

    /// The parsed settings (for checks that read them).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// Open an SQL session named `application_name`, with [`STATEMENT_TIMEOUT`] and the TCP
    /// keepalive and user-timeout settings; its connection task runs on the current runtime.
    ///
    /// # Errors
    ///
    /// TLS settings that cannot be used, or the connection failing.
    pub async fn connect(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, ConnectError> {
        let mut pg = self.pg.clone();
        pg.application_name(application_name);
        if self.ssl_mode == SslMode::Disable {
            let (client, connection) = pg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(ConnectError::Postgres)?;
            spawn_connection(connection);
            return Ok(client);
        }
        let tls = tls_client_config_with_cert(
            self.ssl_mode,
            self.root_cert.as_deref(),
            self.client_cert.as_ref(),
        )
        .map_err(ConnectError::Tls)?;
        let (client, connection) = pg
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map_err(ConnectError::Postgres)?;
        spawn_connection(connection);
        Ok(client)
    }

    /// The replication connection's settings (same host, user, password, TLS, TCP keepalive
    /// and user timeout; not the `options`, so no [`STATEMENT_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on `postgres.url` when it cannot be used for replication (a Unix
    /// socket host, for one).
    pub fn replication(&self) -> Result<ReplicationConfig, ConfigError> {
        let mut r = ReplicationConfig::from_pg_config(&self.pg)
            .map_err(|e| {
                ConfigError::new(
                    "postgres.url",
                    format!("cannot be used for replication: {e}"),
                )
            })?
            .ssl_mode(self.ssl_mode)
            .max_frame_len(self.max_frame_len);
        if let Some(path) = &self.root_cert {
            r = r.root_cert(path.clone());
        }
        if let Some(c) = &self.client_cert {
            r = r.client_cert(c.cert_path(), c.key_path());
        }
        Ok(r)
    }
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "SQL session ended");
        }
    });
}

/// `info` with TCP keepalives and `TCP_USER_TIMEOUT` (Linux and Android) on every connection
/// made from it: the same values as PostgreSQL's connections (see the module docs).
fn with_dead_peer_detection(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let keepalive = TcpKeepalive::new().with_time(DEFAULT_KEEPALIVES_IDLE);
    // The systems where socket2 can set both TCP_KEEPINTVL and TCP_KEEPCNT.
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "windows",
    ))]
    let keepalive = keepalive
        .with_interval(DEFAULT_KEEPALIVES_INTERVAL)
        .with_retries(DEFAULT_KEEPALIVES_RETRIES);
    let tcp = info.tcp_settings().clone().set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let tcp = tcp.set_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    info.set_tcp_settings(tcp)
}

/// The Redis client for `redis.url`: `rediss://` verifies against the system roots, or only
/// against `redis.ca_file` when set, and presents `redis.client_cert_file` with
/// `redis.client_key_file` when set (for a Redis with `tls-auth-clients yes`). Its connections
/// have TCP keepalives and `TCP_USER_TIMEOUT`, as PostgreSQL's do.
///
/// # Errors
///
/// A [`ConfigError`] on `redis.url`, `redis.ca_file`, `redis.client_cert_file` or
/// `redis.client_key_file`: a CA or client certificate without `rediss://`, one of the client
/// certificate and key without the other, a file that cannot be read or used.
pub fn redis_client(config: &Config) -> Result<redis::Client, ConfigError> {
    let url = config.redis.url.expose();
    let bad_url = |e: redis::RedisError| {
        ConfigError::new(
            "redis.url",
            format!(
                "{:?} is not a Redis URL ({e}); expected redis://host:6379/0 or rediss://…",
                redact_url(url)
            ),
        )
    };
    if url.starts_with("rediss://") {
        // redis-rs builds its TLS configuration with the process-wide rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = with_dead_peer_detection(url.into_connection_info().map_err(bad_url)?);
    let client_tls = redis_client_tls(config, url)?;
    let root_cert = match &config.redis.ca_file {
        None => None,
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "redis.ca_file",
                    format!("{} is set but redis.url is not rediss://; use a rediss:// URL or drop ca_file", path.display()),
                ));
            }
            Some(std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    "redis.ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?)
        }
    };
    if client_tls.is_none() && root_cert.is_none() {
        return redis::Client::open(info).map_err(bad_url);
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(bad_url)
}

/// `redis.client_cert_file` and `redis.client_key_file`, read and checked (both or neither,
/// only with `rediss://`, a key that belongs to the certificate).
fn redis_client_tls(
    config: &Config,
    url: &str,
) -> Result<Option<redis::ClientTlsConfig>, ConfigError> {
    let (cert, key) = match (
        &config.redis.client_cert_file,
        &config.redis.client_key_file,
    ) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) | (None, Some(_)) => {
            let (set, missing) = if config.redis.client_cert_file.is_some() {
                ("redis.client_cert_file", "redis.client_key_file")
            } else {
                ("redis.client_key_file", "redis.client_cert_file")
            };
            return Err(ConfigError::new(
                missing,
                format!(
                    "not set, but {set} is: redis.client_cert_file and redis.client_key_file go \
                     together; set both (the client certificate and its private key, PEM) or \
                     neither"
                ),
            ));
        }
    };
    if !url.starts_with("rediss://") {
        return Err(ConfigError::new(
            "redis.client_cert_file",
            format!(
                "{} is set but redis.url is not rediss://; a client certificate needs TLS: use a \
                 rediss:// URL or drop client_cert_file and client_key_file",
                cert.display()
            ),
        ));
    }
    let pem = ClientCert::new(cert, key).read_pem().map_err(|e| {
        let field = match &e {
            walcache_cdc::Error::ClientCert {
                what: "private key",
                ..
            } => "redis.client_key_file",
            _ => "redis.client_cert_file",
        };
        ConfigError::new(
            field,
            format!(
                "{e}; give the client certificate (PEM, signed by the CA in Redis's \
                 tls-ca-cert-file) and its unencrypted private key (PEM, mode 0600)"
            ),
        )
    })?;
    Ok(Some(redis::ClientTlsConfig {
        client_cert: pem.cert,
        client_key: pem.key,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    fn config(pg_url: &str, redis_url: &str) -> Config {
        let text = format!(
            r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{{id}}"]
"#
        );
        Config::parse(&text, &HashMap::new()).expect("valid")
    }

    #[test]
    fn sql_sessions_get_the_statement_timeout_and_keepalives() {
        let pg = Postgres::from_config(&config(
            "postgres://walcached@127.0.0.1:5432/app",
            "redis://127.0.0.1:6379/",
        ))
        .unwrap();
        let c = pg.config();
        assert_eq!(c.get_options(), Some("-c statement_timeout=5000"));
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(20)));

        // The URL's own options are kept, the timeout appended (so it wins); its TCP settings
        // are kept too, and reach the replication connection, which gets no options.
        let pg = Postgres::from_config(&config(
            "postgres://walcached@127.0.0.1:5432/app?options=-c%20work_mem%3D8MB&keepalives_idle=30&tcp_user_timeout=40",
            "redis://127.0.0.1:6379/",
        ))
        .unwrap();
        assert_eq!(
            pg.config().get_options(),
            Some("-c work_mem=8MB -c statement_timeout=5000")
        );
        let r = pg.replication().unwrap();
        assert_eq!(r.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(r.get_keepalives_interval(), Duration::from_secs(5));
        assert_eq!(r.get_keepalives_retries(), 3);
        assert_eq!(r.get_tcp_user_timeout(), Duration::from_secs(40));
    }

    /// A configuration with extra `[redis]` lines and environment.
    fn parse_with(
        pg_url: &str,
        redis_url: &str,
        redis_extra: &str,
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"
{redis_extra}

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{{id}}"]
"#
        );
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse(&text, &env)
    }

    #[test]
    fn client_certificates_are_checked_with_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let certs = walcache_testkit::TestCerts::generate(dir.path()).unwrap();
        let (cert, key) = certs.client_cert("walcached").unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let pg = "postgres://w@127.0.0.1/app";

        // Redis: both files, rediss://, from the file or the environment.
        let both = format!("client_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"");
        let c = parse_with(pg, "rediss://127.0.0.1:6379/", &both, &[]).expect("valid");
        assert_eq!(c.redis.client_cert_file.as_deref(), Some(Path::new(&cert)));
        let c = parse_with(
            pg,
            "rediss://127.0.0.1:6379/",
            "",
            &[
                ("WALCACHED_REDIS_CLIENT_CERT_FILE", &cert),
                ("WALCACHED_REDIS_CLIENT_KEY_FILE", &key),
            ],
        )
        .expect("valid");
        assert_eq!(c.redis.client_key_file.as_deref(), Some(Path::new(&key)));

        // One without the other, either way.
        let e = parse_with(
            pg,
            "rediss://127.0.0.1:6379/",
            &format!("client_cert_file = \"{cert}\""),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "redis.client_key_file", "{e}");
        assert!(
            e.problem.contains("go together; set both") && e.problem.contains("or neither"),
            "{e}"
        );
        let e = parse_with(
            pg,
            "rediss://127.0.0.1:6379/",
            "",
            &[("WALCACHED_REDIS_CLIENT_KEY_FILE", &key)],
        )
        .unwrap_err();
        assert_eq!(e.field, "redis.client_cert_file", "{e}");
        // Without TLS.
        let e = parse_with(pg, "redis://127.0.0.1:6379/", &both, &[]).unwrap_err();
        assert_eq!(e.field, "redis.client_cert_file", "{e}");
        assert!(
            e.problem.contains("not rediss://") && e.problem.contains("use a rediss:// URL"),
            "{e}"
        );
        // A file that cannot be used: the field and the file are named.
        let missing = dir.path().join("missing.key").display().to_string();
        let e = parse_with(
            pg,
            "rediss://127.0.0.1:6379/",
            &format!("client_cert_file = \"{cert}\"\nclient_key_file = \"{missing}\""),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "redis.client_key_file", "{e}");
        assert!(e.problem.contains(&missing), "{e}");
        let e = parse_with(
            pg,
            "rediss://127.0.0.1:6379/",
            &format!("client_cert_file = \"{key}\"\nclient_key_file = \"{key}\""),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field, "redis.client_cert_file", "{e}");
        assert!(e.problem.contains("no CERTIFICATE block"), "{e}");

        // PostgreSQL: sslcert and sslkey in the URL, both or neither, the files checked.
        let url = format!("{pg}?sslmode=require&sslcert={cert}&sslkey={key}");
        let c = parse_with(&url, "redis://127.0.0.1:6379/", "", &[]).expect("valid");
        let r = Postgres::from_config(&c).unwrap().replication().unwrap();
        let client_cert = r.get_client_cert().expect("carried to replication");
        assert_eq!(client_cert.cert_path(), Path::new(&cert));
        assert_eq!(client_cert.key_path(), Path::new(&key));
        for url in [
            format!("{pg}?sslcert={cert}"),
            format!("host=127.0.0.1 user=w sslkey={key}"),
        ] {
            let e = parse_with(&url, "redis://127.0.0.1:6379/", "", &[]).unwrap_err();
            assert_eq!(e.field, "postgres.url", "{e}");
            assert!(e.problem.contains("sslcert and sslkey go together"), "{e}");
        }
        let url = format!("{pg}?sslcert={cert}&sslkey={missing}");
        let e = parse_with(&url, "redis://127.0.0.1:6379/", "", &[]).unwrap_err();
        assert_eq!(e.field, "postgres.url", "{e}");
        assert!(
            e.problem.contains(&missing) && e.problem.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn redis_connections_get_keepalives_and_a_user_timeout() {
        for url in ["redis://127.0.0.1:6379/", "rediss://127.0.0.1:6379/"] {
            let client = redis_client(&config("postgres://w@127.0.0.1/app", url)).unwrap();
            let tcp = client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}");
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(tcp.user_timeout(), Some(Duration::from_secs(20)), "{url}");
        }
    }
}

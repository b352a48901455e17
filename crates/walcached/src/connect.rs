//! Connections to PostgreSQL and Redis made from the configuration, with TLS when the URLs ask
//! for it: `sslmode`/`sslrootcert` in `postgres.url` (libpq's meanings, up to `verify-full`)
//! for both the replication connection and the SQL sessions, and `rediss://` (with
//! `redis.ca_file` for a private CA) for Redis.

use std::path::PathBuf;
use std::time::Duration;

use walcache_cdc::client::{
    parse_connection_string, tls_client_config, ReplicationConfig, SslMode,
};

use crate::config::{redact_url, Config, ConfigError};

/// `postgres.url`, parsed, with the password from the environment or file applied.
#[derive(Debug, Clone)]
pub struct Postgres {
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    root_cert: Option<PathBuf>,
}

/// A PostgreSQL session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings cannot be used (root certificate unreadable, ...).
    #[error("TLS settings of postgres.url")]
    Tls(#[source] walcache_cdc::Error),
    /// Connecting or authenticating failed.
    #[error("connecting to PostgreSQL")]
    Postgres(#[source] tokio_postgres::Error),
}

impl Postgres {
    /// Parse `postgres.url` (either libpq form, including `sslmode=verify-ca|verify-full`
    /// and `sslrootcert`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on `postgres.url`.
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
        let mut pg = parsed.pg;
        if let Some(p) = &config.postgres.password {
            pg.password(p.expose());
        }
        pg.connect_timeout(Duration::from_secs(10));
        Ok(Postgres {
            pg,
            ssl_mode: parsed.ssl_mode,
            root_cert: parsed.root_cert,
        })
    }

    /// The parsed settings (for checks that read them).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    /// Open an SQL session named `application_name`; its connection task runs on the current
    /// runtime.
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
        let tls = tls_client_config(self.ssl_mode, self.root_cert.as_deref())
            .map_err(ConnectError::Tls)?;
        let (client, connection) = pg
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map_err(ConnectError::Postgres)?;
        spawn_connection(connection);
        Ok(client)
    }

    /// The replication connection's settings (same host, user, password and TLS).
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
            .ssl_mode(self.ssl_mode);
        if let Some(path) = &self.root_cert {
            r = r.root_cert(path.clone());
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

/// The Redis client for `redis.url`: `rediss://` verifies against the system roots, or only
/// against `redis.ca_file` when set.
///
/// # Errors
///
/// A [`ConfigError`] on `redis.url` or `redis.ca_file`.
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
    match &config.redis.ca_file {
        None => redis::Client::open(url).map_err(bad_url),
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    "redis.ca_file",
                    format!("{} is set but redis.url is not rediss://; use a rediss:// URL or drop ca_file", path.display()),
                ));
            }
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    "redis.ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad_url)
        }
    }
}

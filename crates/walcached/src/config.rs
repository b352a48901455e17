//! Configuration: parse the TOML file, apply environment overrides, then validate. Every error
//! names the field, the value and the fix.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use walcache_protocol::Naming;

/// A configuration problem: which field, what was wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    /// The field, as written in the file (`postgres.url`, `rules[2].keys[0]`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A secret: never printed.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Wrap a value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The database to follow.
    pub postgres: PostgresConfig,
    /// The Redis holding L2 and the invalidation channels.
    pub redis: RedisConfig,
    /// Batching, heartbeats and limits of the invalidation stream.
    #[serde(default)]
    pub stream: StreamConfig,
    /// The HTTP endpoint for metrics and health.
    #[serde(default)]
    pub http: HttpConfig,
    /// Table → namespace, keys and tags.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The periodic full refresh of L2.
    #[serde(default)]
    pub refresh: crate::refresh::RefreshConfig,
    /// Signing of the published messages.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// `[security]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// A file of signing keys, `id:hexsecret` separated by commas, whitespace or newlines
    /// (`#` starts a comment); the first key signs every message. Read again when its content
    /// changes (checked at most once per heartbeat interval), so keys rotate without a
    /// restart. Not together with `WALCACHED_SIGNING_KEYS`. Env:
    /// `WALCACHED_SIGNING_KEYS_FILE`.
    #[serde(default)]
    pub signing_keys_file: Option<PathBuf>,
    /// The keys, loaded with the configuration from `WALCACHED_SIGNING_KEYS` (the environment
    /// only) or from [`signing_keys_file`](Self::signing_keys_file); `None`: messages are
    /// published unsigned.
    #[serde(skip)]
    pub signing_keys: Option<crate::signing::SigningKeys>,
}

/// `[postgres]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/db` (a password in the URL works, but prefer
    /// `WALCACHED_POSTGRES_PASSWORD` or `password_file`). Env: `WALCACHED_POSTGRES_URL`.
    pub url: Secret,
    /// A file whose first line is the password. Env: `WALCACHED_POSTGRES_PASSWORD_FILE`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password (from the environment only: `WALCACHED_POSTGRES_PASSWORD`).
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Replication slot name. Default `walcached`. Env: `WALCACHED_POSTGRES_SLOT`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication name. Default `walcached`. Env: `WALCACHED_POSTGRES_PUBLICATION`.
    #[serde(default = "default_slot")]
    pub publication: String,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("password_file", &self.password_file)
            .field("password", &self.password)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

/// `[redis]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port/db` or `rediss://`. Env: `WALCACHED_REDIS_URL`.
    pub url: Secret,
    /// With a `rediss://` URL: a PEM file of the CA to trust instead of the system roots.
    /// Env: `WALCACHED_REDIS_CA_FILE`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// With a `rediss://` URL, for a Redis that requires client certificates
    /// (`tls-auth-clients yes`): the client certificate (PEM, the certificate first, then any
    /// intermediates). Only together with `client_key_file`.
    /// Env: `WALCACHED_REDIS_CLIENT_CERT_FILE`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (unencrypted PEM: PKCS#8, PKCS#1 or SEC1; mode
    /// 0600, a warning otherwise). Only together with `client_cert_file`.
    /// Env: `WALCACHED_REDIS_CLIENT_KEY_FILE`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Prefix of keys and channels; must match the library's. Default `wc`.
    /// Env: `WALCACHED_REDIS_KEY_PREFIX`.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// `[stream]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Publish a batch once it holds this many keys. Default 1000.
    #[serde(default = "default_batch_keys")]
    pub batch_max_keys: usize,
    /// ...or once its oldest change waited this long. Default 1 ms.
    #[serde(default = "default_batch_delay")]
    pub batch_max_delay_ms: u64,
    /// Heartbeat interval while caught up; keep it well below the library's heartbeat timeout
    /// (default 3 s). Default 250 ms.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// Standby status update interval; must stay well inside the server's
    /// `wal_sender_timeout`. Default 1000 ms.
    #[serde(default = "default_status")]
    pub status_interval_ms: u64,
    /// A transaction that changes more keys than this in one namespace flushes the namespace
    /// instead of listing them. Default 10000.
    #[serde(default = "default_large_txn")]
    pub large_transaction_keys: usize,
    /// Largest message published, in bytes; batches are split below it so no subscriber nears
    /// Redis's pub/sub output buffer limits. Default 256 KiB.
    #[serde(default = "default_message_bytes")]
    pub max_message_bytes: usize,
    /// How often the catalog is checked for drift the stream does not carry (a mapped table
    /// re-created, truncated or rewritten without a row event, a partition detached, the
    /// publication altered): the bound of that drift. Default 10000 ms.
    #[serde(default = "default_catalog_interval")]
    pub catalog_interval_ms: u64,
    /// Longest replication message held in memory, in bytes (1 MiB to 1 GiB). A longer row
    /// change (a wide row under `REPLICA IDENTITY FULL`) is read past without being kept and
    /// flushes its table's namespace; longer WAL data of another kind of ours flushes every
    /// namespace; a longer protocol message that is not WAL data ends the connection.
    /// Default 64 MiB.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            batch_max_keys: default_batch_keys(),
            batch_max_delay_ms: default_batch_delay(),
            heartbeat_interval_ms: default_heartbeat(),
            status_interval_ms: default_status(),
            large_transaction_keys: default_large_txn(),
            max_message_bytes: default_message_bytes(),
            catalog_interval_ms: default_catalog_interval(),
            max_frame_bytes: default_max_frame_bytes(),
        }
    }
}

impl StreamConfig {
    /// [`batch_max_delay_ms`](Self::batch_max_delay_ms) as a duration.
    pub fn batch_max_delay(&self) -> Duration {
        Duration::from_millis(self.batch_max_delay_ms)
    }
    /// [`heartbeat_interval_ms`](Self::heartbeat_interval_ms) as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    /// [`catalog_interval_ms`](Self::catalog_interval_ms) as a duration.
    pub fn catalog_interval(&self) -> Duration {
        Duration::from_millis(self.catalog_interval_ms)
    }
    /// [`status_interval_ms`](Self::status_interval_ms) as a duration.
    pub fn status_interval(&self) -> Duration {
        Duration::from_millis(self.status_interval_ms)
    }
}

mod environment;
mod http;
#[cfg(test)]
mod tests;
mod validate;

pub use environment::{Environment, ProcessEnv};
pub use http::HttpConfig;

/// `[[rules]]`: one table's mapping to cache keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `schema.table` (or `table` for `public`).
    pub table: String,
    /// The namespace, as the library's caches name it.
    pub namespace: String,
    /// Key templates over column names, e.g. `"{id}"`, `"by_email:{email}"`.
    pub keys: Vec<String>,
    /// Tags invalidated by every change of the table, in the rule's own namespace and in each
    /// of [`tag_namespaces`](Self::tag_namespaces). Tags are scoped to a namespace: a value
    /// cached in `orders` under the tag `users` is dropped only by a bump of `users` in
    /// `orders`. Static strings (see `validate_tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Other namespaces in which [`tags`](Self::tags) are bumped too (default none). The main
    /// use: values in another namespace that embed this table's rows, e.g. orders cached with
    /// their user, tagged `users` in `orders`:
    ///
    /// ```toml
    /// [[rules]]
    /// table = "public.users"
    /// namespace = "users"
    /// keys = ["{id}"]
    /// tags = ["users"]
    /// tag_namespaces = ["orders"]   # bump `users` in `orders` as well as in `users`
    /// ```
    ///
    /// Each namespace listed has a marker of its own ([`crate::marker`]) and is walked by the
    /// full refresh, like the rules' namespaces.
    #[serde(default)]
    pub tag_namespaces: Vec<String>,
}

impl Rule {
    /// `(schema, table)`, with `public` when no schema is given.
    pub fn qualified_table(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((s, t)) => (s.to_owned(), t.to_owned()),
            None => ("public".to_owned(), self.table.clone()),
        }
    }
}

fn default_slot() -> String {
    "walcached".to_owned()
}
fn default_prefix() -> String {
    "wc".to_owned()
}
fn default_batch_keys() -> usize {
    1000
}
fn default_batch_delay() -> u64 {
    1
}
fn default_heartbeat() -> u64 {
    250
}
fn default_status() -> u64 {
    1000
}
fn default_catalog_interval() -> u64 {
    10_000
}
fn default_large_txn() -> usize {
    10_000
}

fn default_message_bytes() -> usize {
    256 * 1024
}
fn default_max_frame_bytes() -> usize {
    walcache_cdc::client::DEFAULT_MAX_FRAME_LEN
}
fn default_listen() -> String {
    "127.0.0.1:9187".to_owned()
}

/// A connection string without its secrets, for logs and errors: the user info's password,
/// `password=` and `sslpassword=` parameters, in URLs and in libpq's key/value form
/// ([`walcache_protocol::redact`] says how).
pub fn redact_url(url: &str) -> String {
    walcache_protocol::redact::redact_connection_string(url)
}

/// The field a TOML error at byte `at` is about, as `section.key`: the key of that line and
/// the last `[section]` (or `[[section]]`) header above it; `None` on a line without a key.
fn field_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or_default();
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('#') || key.starts_with('[') {
        return None;
    }
    let section = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_owned(),
    })
}

impl Config {
    /// Read, override from the environment, and validate.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field and the fix.
    pub fn load(path: &Path, env: &impl Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "--config",
                format!(
                    "cannot read {}: {e}; pass the path of a TOML file",
                    path.display()
                ),
            )
        })?;
        Config::parse(&text, env)
    }

    /// Parse TOML text, override from the environment, and validate.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the field and the fix.
    pub fn parse(text: &str, env: &impl Environment) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let line = text[..span.start].lines().count().max(1);
                let field = field_at(text, span.start)
                    .map_or_else(|| format!("line {line}"), |f| format!("{f} (line {line})"));
                ConfigError::new(field, e.message().to_owned())
            }
            None => ConfigError::new("config", e.message().to_owned()),
        })?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// The key and channel naming shared with the library.
    pub fn naming(&self) -> Naming {
        // Validated in `validate`.
        Naming::new(self.redis.key_prefix.clone()).unwrap_or_default()
    }
}

//! Configuration: parse the TOML file, apply environment overrides, then validate. Every error
//! names the field, the value and the fix.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use walcache_protocol::{validate_namespace, validate_tag, KeyTemplate, Naming};

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
    /// flushes its table's namespace; a longer message of another kind ends the connection.
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

mod http;
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
/// The smallest `stream.max_frame_bytes`: 1 MiB, above the largest Relation message (1,600
/// columns of 63-byte names: about 120 KiB), which must be read whole.
const MIN_FRAME_BYTES: usize = 1 << 20;
/// The largest useful `stream.max_frame_bytes`: PostgreSQL builds no message over 1 GiB.
const MAX_FRAME_BYTES: usize = 1 << 30;

fn default_message_bytes() -> usize {
    256 * 1024
}
fn default_max_frame_bytes() -> usize {
    walcache_cdc::client::DEFAULT_MAX_FRAME_LEN
}
fn default_listen() -> String {
    "127.0.0.1:9187".to_owned()
}

/// The signing keys from `WALCACHED_SIGNING_KEYS` (`env_keys`) or from the key file: one or
/// the other, or none (unsigned).
fn load_signing_keys(
    env_keys: Option<String>,
    file: Option<&Path>,
) -> Result<Option<crate::signing::SigningKeys>, ConfigError> {
    use crate::signing::{read_key_file, KeySource, SigningKeys, KEYS_ENV};
    match (env_keys, file) {
        (Some(_), Some(path)) => Err(ConfigError::new(
            KEYS_ENV,
            format!(
                "set, and so is security.signing_keys_file ({}): give the keys in one place, \
                 the file (read again when it changes, so keys rotate without a restart) or \
                 this variable (read once at start)",
                path.display()
            ),
        )),
        (Some(text), None) => walcache_protocol::Keyring::parse(&text)
            .map(|keyring| {
                Some(SigningKeys {
                    keyring,
                    source: KeySource::Env,
                })
            })
            .map_err(|e| {
                ConfigError::new(
                    KEYS_ENV,
                    format!(
                        "{e}; give `id:hexsecret` entries separated by commas or whitespace, \
                         the signing key first, or unset it to publish unsigned messages"
                    ),
                )
            }),
        (None, Some(path)) => read_key_file(path)
            .map(|keyring| {
                Some(SigningKeys {
                    keyring,
                    source: KeySource::File(path.to_owned()),
                })
            })
            .map_err(|e| {
                ConfigError::new(
                    "security.signing_keys_file",
                    format!(
                        "{e}; write one `id:hexsecret` entry per line (`#` starts a comment), \
                         the signing key first"
                    ),
                )
            }),
        (None, None) => Ok(None),
    }
}

/// A connection string without its secrets, for logs and errors: the user info's password,
/// `password=` and `sslpassword=` parameters, in URLs and in libpq's key/value form
/// ([`walcache_protocol::redact`] says how).
pub fn redact_url(url: &str) -> String {
    walcache_protocol::redact::redact_connection_string(url)
}

/// Where environment values come from (the process environment, or a map in tests).
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Environment for std::collections::HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
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
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| format!("line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_else(|| "config".to_owned());
            ConfigError::new(field, e.message().to_owned())
        })?;
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &impl Environment) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(
            env: &impl Environment,
            name: &str,
            target: &mut T,
        ) -> Result<(), ConfigError> {
            if let Some(v) = env.var(name) {
                *target = v
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::new(name, format!("{v:?} is not a valid number")))?;
            }
            Ok(())
        }
        if let Some(v) = env.var("WALCACHED_POSTGRES_URL") {
            self.postgres.url = Secret(v);
        }
        if let Some(v) = env.var("WALCACHED_POSTGRES_PASSWORD") {
            self.postgres.password = Some(Secret(v));
        }
        if let Some(v) = env.var("WALCACHED_POSTGRES_PASSWORD_FILE") {
            self.postgres.password_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.var("WALCACHED_POSTGRES_SLOT") {
            self.postgres.slot = v;
        }
        if let Some(v) = env.var("WALCACHED_POSTGRES_PUBLICATION") {
            self.postgres.publication = v;
        }
        if let Some(v) = env.var("WALCACHED_REDIS_URL") {
            self.redis.url = Secret(v);
        }
        if let Some(v) = env.var("WALCACHED_REDIS_CA_FILE") {
            self.redis.ca_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.var("WALCACHED_REDIS_CLIENT_CERT_FILE") {
            self.redis.client_cert_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.var("WALCACHED_REDIS_CLIENT_KEY_FILE") {
            self.redis.client_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env.var("WALCACHED_REDIS_KEY_PREFIX") {
            self.redis.key_prefix = v;
        }
        self.http.apply_env(env)?;
        let s = &mut self.stream;
        num(
            env,
            "WALCACHED_STREAM_BATCH_MAX_KEYS",
            &mut s.batch_max_keys,
        )?;
        num(
            env,
            "WALCACHED_STREAM_BATCH_MAX_DELAY_MS",
            &mut s.batch_max_delay_ms,
        )?;
        num(
            env,
            "WALCACHED_STREAM_HEARTBEAT_INTERVAL_MS",
            &mut s.heartbeat_interval_ms,
        )?;
        num(
            env,
            "WALCACHED_STREAM_STATUS_INTERVAL_MS",
            &mut s.status_interval_ms,
        )?;
        num(
            env,
            "WALCACHED_STREAM_CATALOG_INTERVAL_MS",
            &mut s.catalog_interval_ms,
        )?;
        num(
            env,
            "WALCACHED_STREAM_LARGE_TRANSACTION_KEYS",
            &mut s.large_transaction_keys,
        )?;
        num(
            env,
            "WALCACHED_STREAM_MAX_MESSAGE_BYTES",
            &mut s.max_message_bytes,
        )?;
        num(
            env,
            "WALCACHED_STREAM_MAX_FRAME_BYTES",
            &mut s.max_frame_bytes,
        )?;
        let r = &mut self.refresh;
        num(env, "WALCACHED_REFRESH_INTERVAL_SECS", &mut r.interval_secs)?;
        num(
            env,
            "WALCACHED_REFRESH_MAX_DELETES_PER_SECOND",
            &mut r.max_deletes_per_second,
        )?;
        if let Some(v) = env.var(crate::signing::KEYS_FILE_ENV) {
            self.security.signing_keys_file =
                Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        }
        self.security.signing_keys = load_signing_keys(
            env.var(crate::signing::KEYS_ENV),
            self.security.signing_keys_file.as_deref(),
        )?;
        if let (None, Some(path)) = (&self.postgres.password, &self.postgres.password_file) {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "postgres.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if let Some(mode) = crate::signing::loose_permissions(path) {
                tracing::warn!(
                    file = %path.display(),
                    mode = %format_args!("{mode:04o}"),
                    "postgres.password_file is open to its group or to others: `chmod 600` it \
                     (owned by the daemon's user)"
                );
            }
            let first = text.lines().next().unwrap_or_default().to_owned();
            self.postgres.password = Some(Secret(first));
        }
        Ok(())
    }

    /// Check every field on its own (the database and Redis are checked at start-up and by
    /// `walcached check`).
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::connect::Postgres::from_config(self)?;
        crate::connect::redis_client(self)?;
        Naming::new(self.redis.key_prefix.clone()).map_err(|e| {
            ConfigError::new(
                "redis.key_prefix",
                format!("{e}; use the library's prefix (default \"wc\")"),
            )
        })?;
        for (field, name) in [
            ("postgres.slot", &self.postgres.slot),
            ("postgres.publication", &self.postgres.publication),
        ] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(ConfigError::new(
                    field,
                    format!("{name:?}: use 1-63 characters of [a-z0-9_]"),
                ));
            }
        }
        let s = &self.stream;
        for (field, v) in [
            ("stream.batch_max_keys", s.batch_max_keys as u64),
            ("stream.heartbeat_interval_ms", s.heartbeat_interval_ms),
            ("stream.status_interval_ms", s.status_interval_ms),
            ("stream.catalog_interval_ms", s.catalog_interval_ms),
            (
                "stream.large_transaction_keys",
                s.large_transaction_keys as u64,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::new(field, "0: must be at least 1"));
            }
        }
        if s.status_interval_ms > 10_000 {
            return Err(ConfigError::new(
                "stream.status_interval_ms",
                format!(
                    "{}: must stay well inside wal_sender_timeout (60 s by default); use at most 10000",
                    s.status_interval_ms
                ),
            ));
        }
        if !(4096..=8 * 1024 * 1024).contains(&s.max_message_bytes) {
            return Err(ConfigError::new(
                "stream.max_message_bytes",
                format!(
                    "{}: use between 4096 and 8388608 (Redis disconnects subscribers whose output \
                     buffer passes 8 MB)",
                    s.max_message_bytes
                ),
            ));
        }
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&s.max_frame_bytes) {
            return Err(ConfigError::new(
                "stream.max_frame_bytes",
                format!(
                    "{}: use between {MIN_FRAME_BYTES} (1 MiB: every Relation message fits) and \
                     {MAX_FRAME_BYTES} (1 GiB, the largest message PostgreSQL builds)",
                    s.max_frame_bytes
                ),
            ));
        }
        self.refresh.validate()?;
        self.http.validate()?;
        if self.rules.is_empty() {
            return Err(ConfigError::new(
                "rules",
                "no [[rules]]: add one per table, e.g. table = \"public.users\", namespace = \
                 \"users\", keys = [\"{id}\"]",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            let (schema, table) = rule.qualified_table();
            if schema.is_empty() || table.is_empty() || table.contains('.') {
                return Err(ConfigError::new(
                    at("table"),
                    format!("{:?}: write schema.table, e.g. public.users", rule.table),
                ));
            }
            if !seen.insert((schema.clone(), table.clone())) {
                return Err(ConfigError::new(
                    at("table"),
                    format!("{schema}.{table} has two rules: put all its keys in one rule"),
                ));
            }
            validate_namespace(&rule.namespace).map_err(|e| {
                ConfigError::new(at("namespace"), format!("{:?}: {e}", rule.namespace))
            })?;
            if rule.keys.is_empty() && rule.tags.is_empty() {
                return Err(ConfigError::new(
                    at("keys"),
                    "empty, and no tags: a rule must invalidate something, e.g. keys = [\"{id}\"]",
                ));
            }
            for (j, k) in rule.keys.iter().enumerate() {
                KeyTemplate::parse(k).map_err(|e| {
                    ConfigError::new(format!("rules[{i}].keys[{j}]"), format!("{k:?}: {e}"))
                })?;
            }
            for (j, t) in rule.tags.iter().enumerate() {
                validate_tag(t).map_err(|e| {
                    ConfigError::new(format!("rules[{i}].tags[{j}]"), format!("{t:?}: {e}"))
                })?;
            }
            for (j, ns) in rule.tag_namespaces.iter().enumerate() {
                validate_namespace(ns).map_err(|e| {
                    ConfigError::new(
                        format!("rules[{i}].tag_namespaces[{j}]"),
                        format!(
                            "{ns:?}: {e}; list namespaces as the library's caches name them, \
                             e.g. tag_namespaces = [\"orders\"]"
                        ),
                    )
                })?;
            }
            if !rule.tag_namespaces.is_empty() && rule.tags.is_empty() {
                return Err(ConfigError::new(
                    at("tag_namespaces"),
                    format!(
                        "{:?} but no tags: tag_namespaces says where the rule's tags are bumped; \
                         add tags = [\"...\"] or remove tag_namespaces",
                        rule.tag_namespaces
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The key and channel naming shared with the library.
    pub fn naming(&self) -> Naming {
        // Validated in `validate`.
        Naming::new(self.redis.key_prefix.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[postgres]
url = "postgres://walcached@127.0.0.1:5432/app"

[redis]
url = "redis://127.0.0.1:6379/"

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}", "by_email:{email}"]
tags = ["users"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &HashMap::new())
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.postgres.slot, "walcached");
        assert_eq!(c.stream.batch_max_keys, 1000);
        assert_eq!(
            c.rules[0].qualified_table(),
            ("public".into(), "users".into())
        );
    }

    #[test]
    fn environment_overrides_fields() {
        let env: HashMap<String, String> = [
            ("WALCACHED_REDIS_URL", "redis://10.0.0.1:6380/"),
            ("WALCACHED_STREAM_BATCH_MAX_KEYS", "50"),
            ("WALCACHED_POSTGRES_PASSWORD", "hunter2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let c = Config::parse(GOOD, &env).expect("valid");
        assert_eq!(c.redis.url.expose(), "redis://10.0.0.1:6380/");
        assert_eq!(c.stream.batch_max_keys, 50);
        assert!(!format!("{c:?}").contains("hunter2"), "secrets never print");
        let bad: HashMap<String, String> = [(
            "WALCACHED_STREAM_BATCH_MAX_KEYS".to_owned(),
            "many".to_owned(),
        )]
        .into();
        let e = Config::parse(GOOD, &bad).expect_err("not a number");
        assert_eq!(e.field, "WALCACHED_STREAM_BATCH_MAX_KEYS");
    }

    #[test]
    fn errors_name_the_field_the_value_and_the_fix() {
        let cases = [
            (
                GOOD.replace("namespace = \"users\"", "namespace = \"Users!\""),
                "rules[0].namespace",
            ),
            (GOOD.replace("\"{id}\"", "\"{id\""), "rules[0].keys[0]"),
            (
                GOOD.replace("redis://127.0.0.1:6379/", "http://x"),
                "redis.url",
            ),
            (
                GOOD.replace("postgres://walcached@127.0.0.1:5432/app", "nonsense://"),
                "postgres.url",
            ),
            (
                GOOD.replace("tags = [\"users\"]", "tags = [\"has space\"]"),
                "rules[0].tags[0]",
            ),
            (GOOD.replace("public.users", "a.b.c"), "rules[0].table"),
            (
                format!("{GOOD}\n[stream]\nmax_frame_bytes = 65536\n"),
                "stream.max_frame_bytes",
            ),
            (
                GOOD.replace(
                    "tags = [\"users\"]",
                    "tags = [\"users\"]\ntag_namespaces = [\"orders\", \"Bad Name\"]",
                ),
                "rules[0].tag_namespaces[1]",
            ),
            (
                GOOD.replace("tags = [\"users\"]", "tag_namespaces = [\"orders\"]"),
                "rules[0].tag_namespaces",
            ),
            (
                format!("{GOOD}\n[stream]\nmax_message_bytes = 10\n"),
                "stream.max_message_bytes",
            ),
        ];
        for (text, field) in cases {
            let e = parse(&text).expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let e = parse(&GOOD.replace("keys = [", "kees = [")).expect_err("unknown field");
        assert!(e.to_string().contains("kees"), "{e}");
        let secret = GOOD
            .replace("walcached@", "walcached:pw123@")
            .replace("5432/app", "5432/app?x=");
        let c = parse(&secret);
        if let Err(e) = &c {
            assert!(!e.to_string().contains("pw123"), "{e}");
        }
    }

    #[test]
    fn tag_namespaces_are_optional_and_parsed() {
        let c = parse(GOOD).expect("valid");
        assert!(c.rules[0].tag_namespaces.is_empty(), "default: none");
        let c = parse(&GOOD.replace(
            "tags = [\"users\"]",
            "tags = [\"users\"]\ntag_namespaces = [\"orders\", \"carts\"]",
        ))
        .expect("valid");
        assert_eq!(c.rules[0].tag_namespaces, ["orders", "carts"]);
        let e = parse(&GOOD.replace(
            "tags = [\"users\"]",
            "tags = [\"users\"]\ntag_namespaces = [\"Bad Name\"]",
        ))
        .expect_err("invalid namespace");
        assert!(e.problem.contains("\"Bad Name\""), "names the value: {e}");
        assert!(
            e.problem.contains("tag_namespaces = ["),
            "says the fix: {e}"
        );
    }

    const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn with_key_file(path: &Path) -> String {
        format!(
            "{GOOD}\n[security]\nsigning_keys_file = {:?}\n",
            path.to_str().unwrap()
        )
    }

    #[test]
    fn signing_keys_come_from_the_file_or_the_environment() {
        use crate::signing::KeySource;
        let c = parse(GOOD).expect("valid");
        assert!(c.security.signing_keys.is_none(), "default: unsigned");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# rotation\n{K2}\n{K1}\n")).unwrap();
        let c = parse(&with_key_file(&path)).expect("valid");
        let keys = c.security.signing_keys.as_ref().expect("keys");
        assert_eq!(keys.keyring.ids(), ["k2", "k1"]);
        assert_eq!(keys.source, KeySource::File(path.clone()));
        assert!(!format!("{c:?}").contains("1f1e1d"), "secrets never print");

        let c = Config::parse(
            GOOD,
            &env(&[("WALCACHED_SIGNING_KEYS", &format!("{K1}, {K2}"))]),
        )
        .expect("valid");
        let keys = c.security.signing_keys.as_ref().expect("keys");
        assert_eq!(keys.keyring.signer().id(), "k1");
        assert_eq!(keys.source, KeySource::Env);

        let c = Config::parse(
            GOOD,
            &env(&[("WALCACHED_SIGNING_KEYS_FILE", path.to_str().unwrap())]),
        )
        .expect("valid");
        assert_eq!(
            c.security.signing_keys.expect("keys").source,
            KeySource::File(path.clone())
        );
    }

    #[test]
    fn bad_signing_keys_are_errors_naming_the_field_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        for (text, needle) in [
            ("k1:0011\n", "at least 32"),
            ("k1:zz\n", "hexadecimal"),
            (&format!("{K1}\n{K1}\n") as &str, "twice"),
            ("# nothing yet\n", "no signing key"),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
                "id:hexsecret",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = parse(&with_key_file(&path)).expect_err(text);
            assert_eq!(e.field, "security.signing_keys_file", "{e}");
            assert!(e.problem.contains(needle), "{text}: {e}");
            assert!(e.problem.contains("keys"), "names the file: {e}");
            assert!(!e.to_string().contains("0102030405"), "a secret in {e}");
        }
        let e = parse(&with_key_file(&dir.path().join("missing"))).expect_err("missing");
        assert_eq!(e.field, "security.signing_keys_file", "{e}");
        assert!(e.problem.contains("cannot read"), "{e}");

        let e =
            Config::parse(GOOD, &env(&[("WALCACHED_SIGNING_KEYS", "k1:00")])).expect_err("short");
        assert_eq!(e.field, "WALCACHED_SIGNING_KEYS", "{e}");
        assert!(e.problem.contains("at least 32"), "{e}");

        std::fs::write(&path, K1).unwrap();
        let e = Config::parse(
            &with_key_file(&path),
            &env(&[("WALCACHED_SIGNING_KEYS", K2)]),
        )
        .expect_err("both");
        assert_eq!(e.field, "WALCACHED_SIGNING_KEYS", "{e}");
        assert!(e.problem.contains("security.signing_keys_file"), "{e}");
        assert!(!e.to_string().contains("1f1e1d"), "a secret in {e}");
    }

    #[test]
    fn the_shipped_configurations_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        // The ConfigMap's walcached.toml: the block indented under `walcached.toml: |`.
        let k8s = read("deploy/k8s/walcached.yaml");
        let (_, block) = k8s
            .split_once("walcached.toml: |\n")
            .expect("the ConfigMap");
        let configmap: String = block
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
            .collect();
        // Secrets are mounted at run time: the key file's path is taken away here.
        let env: HashMap<String, String> =
            [("WALCACHED_SIGNING_KEYS_FILE".to_owned(), String::new())].into();
        for (name, text) in [
            (
                "deploy/compose/walcached.toml",
                read("deploy/compose/walcached.toml"),
            ),
            ("examples/walcached.toml", read("examples/walcached.toml")),
            ("deploy/k8s/walcached.yaml ConfigMap", configmap),
        ] {
            let config = Config::parse(&text, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!config.rules.is_empty(), "{name}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/d"),
            "postgres://u:<redacted>@h:5432/d"
        );
        assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
        // Passwords holding '@', in the query, and in libpq's key/value form: the
        // configuration's Debug (and so every log of it) shows none of them.
        for (pg, redis) in [
            (
                "postgres://walcached:p@ss/w0rd@127.0.0.1:5432/app",
                "redis://:r3d@is@127.0.0.1:6379/",
            ),
            (
                "postgres://walcached@127.0.0.1:5432/app?password=p@ss/w0rd",
                "redis://127.0.0.1:6379/?password=r3d@is",
            ),
            (
                "host=127.0.0.1 user=walcached password='p@ss/w0rd' dbname=app",
                "redis://127.0.0.1:6379/",
            ),
        ] {
            let text = GOOD
                .replace("postgres://walcached@127.0.0.1:5432/app", pg)
                .replace("redis://127.0.0.1:6379/", redis);
            let config = Config::parse(&text, &HashMap::<String, String>::new())
                .unwrap_or_else(|e| panic!("{pg}: {e}"));
            let debug = format!("{config:?}");
            assert!(
                !debug.contains("p@ss/w0rd") && !debug.contains("r3d@is"),
                "{debug}"
            );
            assert!(debug.contains("<redacted>"), "{debug}");
        }
    }
}

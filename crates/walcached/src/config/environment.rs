//! Environment overrides (`WALCACHED_*`) of the configuration file, and the signing keys,
//! which come from the environment or a file.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Secret};

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
    pub(super) fn apply_env(&mut self, env: &impl Environment) -> Result<(), ConfigError> {
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
            crate::signing::warn_if_loose(
                path,
                "postgres.password_file",
                "whoever reads it can log in as the daemon's role",
            );
            let first = text.lines().next().unwrap_or_default().to_owned();
            self.postgres.password = Some(Secret(first));
        }
        Ok(())
    }
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

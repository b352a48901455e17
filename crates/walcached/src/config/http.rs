//! `[http]`: the HTTP endpoint's listen address, the admin token and the manual refresh
//! limit (part of [`Config`](super::Config)).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{default_listen, ConfigError, Environment, Secret};

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the admin API (`/api/v1/`); empty to
    /// disable. Default `127.0.0.1:9187`. Env: `WALCACHED_HTTP_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file whose first line is the admin API's bearer token. Without a token (this file or
    /// `WALCACHED_HTTP_ADMIN_TOKEN`) the mutating endpoints are disabled. Env:
    /// `WALCACHED_HTTP_ADMIN_TOKEN_FILE`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The admin token, loaded with the configuration from `WALCACHED_HTTP_ADMIN_TOKEN` (the
    /// environment only; it wins over the file) or from
    /// [`admin_token_file`](Self::admin_token_file).
    #[serde(skip)]
    pub admin_token: Option<Secret>,
    /// Whether [`admin_token`](Self::admin_token) came from `WALCACHED_HTTP_ADMIN_TOKEN` (it
    /// wins over the file), for errors that name where it came from.
    #[serde(skip)]
    pub admin_token_from_env: bool,
    /// At most one manual refresh cycle (`POST /api/v1/refresh`) per this many seconds; 0 for
    /// no limit. Default 300. Env: `WALCACHED_HTTP_MANUAL_REFRESH_MIN_INTERVAL_SECS`.
    #[serde(default = "default_manual_refresh_interval")]
    pub manual_refresh_min_interval_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            admin_token_file: None,
            admin_token: None,
            admin_token_from_env: false,
            manual_refresh_min_interval_secs: default_manual_refresh_interval(),
        }
    }
}

fn default_manual_refresh_interval() -> u64 {
    300
}

impl HttpConfig {
    /// Shortest admin token accepted.
    pub const MIN_TOKEN_LEN: usize = 16;

    /// [`manual_refresh_min_interval_secs`](Self::manual_refresh_min_interval_secs) as a
    /// duration.
    pub fn manual_refresh_min_interval(&self) -> Duration {
        Duration::from_secs(self.manual_refresh_min_interval_secs)
    }

    /// The `WALCACHED_HTTP_*` overrides, then the token (from the environment, else the file).
    pub(crate) fn apply_env(&mut self, env: &impl Environment) -> Result<(), ConfigError> {
        if let Some(v) = env.var("WALCACHED_HTTP_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env.var("WALCACHED_HTTP_ADMIN_TOKEN_FILE") {
            self.admin_token_file = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty());
        }
        if let Some(v) = env.var("WALCACHED_HTTP_MANUAL_REFRESH_MIN_INTERVAL_SECS") {
            self.manual_refresh_min_interval_secs = v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "WALCACHED_HTTP_MANUAL_REFRESH_MIN_INTERVAL_SECS",
                    format!("{v:?} is not a valid number"),
                )
            })?;
        }
        // An empty variable counts as unset (as for the key file), and the token is trimmed
        // like the file's: a Secret made from a file with a trailing newline is still usable.
        let from_env = env
            .var("WALCACHED_HTTP_ADMIN_TOKEN")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        self.admin_token_from_env = from_env.is_some();
        self.admin_token = match (from_env, &self.admin_token_file) {
            (Some(v), _) => Some(Secret::new(v)),
            (None, Some(path)) => {
                crate::signing::warn_if_loose(
                    path,
                    "http.admin_token_file",
                    "whoever reads it can call the admin API",
                );
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(
                        "http.admin_token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(Secret::new(text.lines().next().unwrap_or_default().trim()))
            }
            (None, None) => None,
        };
        Ok(())
    }

    /// Check the token's length (never printing it).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.admin_token {
            if token.expose().len() < Self::MIN_TOKEN_LEN {
                let field = if self.admin_token_from_env {
                    "WALCACHED_HTTP_ADMIN_TOKEN"
                } else {
                    "http.admin_token_file"
                };
                return Err(ConfigError::new(
                    field,
                    format!(
                        "the admin token has {} characters: use at least {}, e.g. the output \
                         of `openssl rand -hex 32`",
                        token.expose().len(),
                        Self::MIN_TOKEN_LEN
                    ),
                ));
            }
        }
        Ok(())
    }
}

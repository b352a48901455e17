//! Each field checked on its own, with the fix in the error.

use walcache_protocol::{validate_namespace, validate_tag, KeyTemplate, Naming};

use super::{Config, ConfigError};

/// The smallest `stream.max_frame_bytes`: 1 MiB, above the largest Relation message (1,600
/// columns of 63-byte names: about 120 KiB), which must be read whole.
const MIN_FRAME_BYTES: usize = 1 << 20;
/// The largest useful `stream.max_frame_bytes`: PostgreSQL builds no message over 1 GiB.
const MAX_FRAME_BYTES: usize = 1 << 30;

impl Config {
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
}

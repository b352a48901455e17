//! Redis key and channel names shared by the library and the daemon.
//!
//! Every name starts with a configurable prefix (default `wc`). Keys that belong to one namespace
//! carry the namespace in a Redis Cluster hash tag (`wc:{users}:…`), so a namespace's generation,
//! its tags' versions and its values live in one slot. Tags are scoped to a namespace.
//!
//! | what | name |
//! |---|---|
//! | sequenced invalidation channel (daemon) | `wc:inval` |
//! | unsequenced application channel | `wc:app` |
//! | namespace generation | `wc:{users}:gen` |
//! | value | `wc:{users}:g7:s1:<canonical key>` |
//! | value SCAN prefix | `wc:{users}:g` |
//! | the namespace's tag versions (a hash: tag → µs of its last invalidation) | `wc:{users}:tags` |
//! | the daemon's durable marker of a namespace | `wc:{users}:mark` |
//! | the daemon's last view of the namespace's tables in the catalog | `wc:{users}:catalog` |
//! | start of the daemon's last completed full refresh | `wc:refresh:last` |
//!
//! Every key of a namespace starts with `wc:{`; the daemon's refresh bookkeeping
//! (`wc:refresh:`) lies outside that family. The name builders do not validate their arguments: validate namespaces and tags once, when they
//! are configured, with [`validate_namespace`] and [`validate_tag`].

use thiserror::Error;

const MAX_NAMESPACE_BYTES: usize = 64;
const MAX_PREFIX_BYTES: usize = 32;
const MAX_TAG_BYTES: usize = 256;

/// The default key and channel prefix.
pub const DEFAULT_PREFIX: &str = "wc";

/// Validate a namespace: 1..=64 bytes of `[a-z0-9_-]` (so it is safe inside Redis keys, metric
/// labels and config).
///
/// # Errors
///
/// [`NameError::Namespace`] naming the value and the rule it breaks.
pub fn validate_namespace(ns: &str) -> Result<(), NameError> {
    check_ident(ns, MAX_NAMESPACE_BYTES).map_err(|rule| NameError::Namespace {
        value: ns.to_owned(),
        reason: match rule {
            IdentRule::Empty => "must not be empty",
            IdentRule::TooLong => "must be at most 64 bytes long",
            IdentRule::Charset => {
                "may contain only lowercase ASCII letters, digits, '_' and '-' ([a-z0-9_-])"
            }
        },
    })
}

/// Validate a tag: 1..=256 bytes, printable ASCII without whitespace.
///
/// # Errors
///
/// [`NameError::Tag`] naming the value and the rule it breaks.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let reason = if tag.is_empty() {
        "must not be empty"
    } else if tag.len() > MAX_TAG_BYTES {
        "must be at most 256 bytes long"
    } else if !tag.bytes().all(|b| b.is_ascii_graphic()) {
        "may contain only printable ASCII characters, without spaces or other whitespace"
    } else {
        return Ok(());
    };
    Err(NameError::Tag {
        value: tag.to_owned(),
        reason,
    })
}

/// An invalid namespace, tag or prefix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// An invalid namespace (see [`validate_namespace`]).
    #[error("invalid namespace {value:?}: a namespace {reason}")]
    Namespace {
        /// The value refused.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An invalid tag (see [`validate_tag`]).
    #[error("invalid tag {value:?}: a tag {reason}")]
    Tag {
        /// The value refused.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An invalid key prefix (see [`Naming::new`]).
    #[error("invalid key prefix {value:?}: a prefix {reason}")]
    Prefix {
        /// The value refused.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
}

enum IdentRule {
    Empty,
    TooLong,
    Charset,
}

fn check_ident(s: &str, max: usize) -> Result<(), IdentRule> {
    if s.is_empty() {
        Err(IdentRule::Empty)
    } else if s.len() > max {
        Err(IdentRule::TooLong)
    } else if !s
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
    {
        Err(IdentRule::Charset)
    } else {
        Ok(())
    }
}

/// The names of walcache's Redis keys and channels under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    prefix: String,
}

impl Default for Naming {
    /// The prefix [`DEFAULT_PREFIX`] (`"wc"`).
    fn default() -> Self {
        Naming {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Naming {
    /// Names under `prefix`: 1..=32 bytes of `[a-z0-9_-]`.
    ///
    /// # Errors
    ///
    /// [`NameError::Prefix`] naming the value and the rule it breaks.
    pub fn new(prefix: impl Into<String>) -> Result<Naming, NameError> {
        let prefix = prefix.into();
        match check_ident(&prefix, MAX_PREFIX_BYTES) {
            Ok(()) => Ok(Naming { prefix }),
            Err(rule) => Err(NameError::Prefix {
                value: prefix,
                reason: match rule {
                    IdentRule::Empty => "must not be empty",
                    IdentRule::TooLong => "must be at most 32 bytes long",
                    IdentRule::Charset => {
                        "may contain only lowercase ASCII letters, digits, '_' and '-' ([a-z0-9_-])"
                    }
                },
            }),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:inval`: the daemon's sequenced invalidation channel.
    pub fn invalidation_channel(&self) -> String {
        format!("{}:inval", self.prefix)
    }

    /// `{prefix}:app`: the unsequenced channel for application-side invalidations.
    pub fn app_channel(&self) -> String {
        format!("{}:app", self.prefix)
    }

    /// `{prefix}:{ns}:gen` with literal braces, e.g. `wc:{users}:gen`: the namespace's generation
    /// counter. The braces are a Redis Cluster hash tag on the namespace.
    pub fn generation_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:gen", self.prefix)
    }

    /// `{prefix}:{ns}:schemas`, e.g. `wc:{users}:schemas`: the set of value-schema versions in
    /// use in the namespace. Fills add theirs; an invalidation deletes a key under every schema
    /// listed, so old and new deploys are both invalidated. Like the generation, it has no
    /// time-to-live and must not be evicted.
    pub fn schemas_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:schemas", self.prefix)
    }

    /// The Redis key of a value, e.g. `wc:{users}:g7:s1:` followed by the canonical `key`.
    ///
    /// `generation` is the namespace's current generation and `schema` the value-schema version,
    /// so a namespace flush is one generation change and deploys with different value schemas
    /// never overwrite each other's values.
    pub fn value_key(&self, ns: &str, generation: u64, schema: u32, key: &str) -> String {
        let mut out = self.value_key_prefix(ns);
        out.reserve(24 + key.len());
        out.push_str(&generation.to_string());
        out.push_str(":s");
        out.push_str(&schema.to_string());
        out.push(':');
        out.push_str(key);
        out
    }

    /// The prefix of every value key of a namespace, e.g. `wc:{users}:g` (the daemon's full
    /// refresh scans `wc:{*}:g[0-9]*` once and tells value keys by it; namespaces and prefixes
    /// contain no glob characters).
    pub fn value_key_prefix(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:g", self.prefix)
    }

    /// `{prefix}:{ns}:tags`, e.g. `wc:{users}:tags`: the namespace's tag versions, a hash from
    /// each tag to the time of its last invalidation (µs since the Unix epoch on the Redis
    /// server's clock, `TIME`; strictly increasing per tag). A value carrying a tag is current
    /// only if it was leased after that time. No time-to-live (it must not be evicted); the
    /// daemon's full refresh drops fields older than everything a cycle can have left.
    pub fn tags_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:tags", self.prefix)
    }

    /// `{prefix}:{ns}:mark`, e.g. `wc:{users}:mark`: the daemon's durable marker of the
    /// namespace (a hash: the last LSN published for it, the writer's token, a hash of its
    /// rules, the PostgreSQL server, and whether a flush is owed). In the namespace's hash
    /// slot, with no time-to-live: a Redis that lost the marker lost the deletes before it.
    pub fn marker_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:mark", self.prefix)
    }

    /// `{prefix}:{ns}:catalog`, e.g. `wc:{users}:catalog`: the daemon's last view of the
    /// namespace's tables in PostgreSQL's catalog (a hash: per table, its oid and the files of
    /// its partition tree), so drift while the daemon was down is found at its next start.
    pub fn catalog_key(&self, ns: &str) -> String {
        format!("{}:{{{ns}}}:catalog", self.prefix)
    }

    /// `{prefix}:bypass`, e.g. `wc:bypass`: the fleet-wide permits of loads that bypass the
    /// caches (a sorted set from each permit's random token to when it expires, ms on the
    /// Redis server's clock), when services set a fleet-wide cap. Outside the namespace family.
    pub fn bypass_permits_key(&self) -> String {
        format!("{}:bypass", self.prefix)
    }

    /// `{prefix}:refresh:last`, e.g. `wc:refresh:last`: when the daemon's last completed full
    /// refresh started (ms since the Unix epoch, on the Redis server's clock). Outside the
    /// namespace family (`wc:{`), so the full refresh's SCAN of value keys never meets it.
    pub fn refresh_last_key(&self) -> String {
        format!("{}:refresh:last", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = Naming::default();
        assert_eq!(n.prefix(), "wc");
        assert_eq!(n.invalidation_channel(), "wc:inval");
        assert_eq!(n.app_channel(), "wc:app");
        assert_eq!(n.generation_key("users"), "wc:{users}:gen");
        assert_eq!(n.schemas_key("users"), "wc:{users}:schemas");
        assert_eq!(n.value_key("users", 7, 1, "42"), "wc:{users}:g7:s1:42");
        assert_eq!(n.value_key_prefix("users"), "wc:{users}:g");
        assert!(n
            .value_key("users", 7, 1, "42")
            .starts_with(&n.value_key_prefix("users")));
        assert_eq!(n.tags_key("users"), "wc:{users}:tags");
        assert_eq!(n.refresh_last_key(), "wc:refresh:last");
        assert_eq!(n.marker_key("users"), "wc:{users}:mark");
        assert_eq!(n.catalog_key("users"), "wc:{users}:catalog");
        // A marker is never mistaken for a value (the refresh's SCAN of `wc:{*}:g[0-9]*`).
        assert!(!n
            .marker_key("users")
            .starts_with(&n.value_key_prefix("users")));
        assert!(!n
            .refresh_last_key()
            .starts_with(&n.value_key_prefix("refresh")));
        let custom = Naming::new("app-1").unwrap();
        assert_eq!(custom.generation_key("x"), "app-1:{x}:gen");
    }

    #[test]
    fn namespace_rules() {
        assert!(validate_namespace("users").is_ok());
        assert!(validate_namespace("a_b-9").is_ok());
        assert!(validate_namespace(&"a".repeat(64)).is_ok());
        for bad in ["", "Users", "a:b", "a{b", "a b", "ü", &"a".repeat(65)] {
            assert!(
                matches!(validate_namespace(bad), Err(NameError::Namespace { .. })),
                "{bad:?}"
            );
        }
        let err = validate_namespace("a:b").unwrap_err().to_string();
        assert!(
            err.contains("\"a:b\"") && err.contains("[a-z0-9_-]"),
            "{err}"
        );
    }

    #[test]
    fn tag_rules() {
        assert!(validate_tag("users").is_ok());
        assert!(validate_tag("Org:42/x{y}").is_ok());
        assert!(validate_tag(&"t".repeat(256)).is_ok());
        for bad in ["", "a b", "a\tb", "a\nb", "é", "\u{7f}", &"t".repeat(257)] {
            assert!(
                matches!(validate_tag(bad), Err(NameError::Tag { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn prefix_rules() {
        assert!(Naming::new("wc").is_ok());
        assert!(matches!(Naming::new(""), Err(NameError::Prefix { .. })));
        assert!(matches!(Naming::new("WC"), Err(NameError::Prefix { .. })));
        assert!(matches!(
            Naming::new("a".repeat(33)),
            Err(NameError::Prefix { .. })
        ));
        let err = Naming::new("a:b").unwrap_err().to_string();
        assert!(err.contains("prefix") && err.contains("\"a:b\""), "{err}");
    }
}

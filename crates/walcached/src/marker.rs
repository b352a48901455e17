//! Durable markers: how the daemon finds out that Redis forgot deletes it made.
//!
//! Redis loses writes in ordinary operation: a restart from an older RDB or AOF, a failover to
//! a replica that had not received the last writes, `FLUSHALL`, a replica's full resync, an
//! eviction. A lost delete is a stale value served until its TTL, and Redis says nothing.
//!
//! So every namespace the rules serve, and every tag they bump, has a **marker**: a Redis hash
//! with no time-to-live, in the namespace's (or tag's) hash slot ([`Naming::marker_key`],
//! [`Naming::tag_marker_key`]), written by the same script that deletes the target's keys:
//!
//! | field | what |
//! |---|---|
//! | `w` | the token of the script call that wrote it last (`<epoch hex>-<n>`, unique per call) |
//! | `lsn` | a position up to which every change's invalidation is in Redis (`X/X`): the confirmed position at the daemon's last check, or where a flush left it; never decreases |
//! | `rule` | a hash of the namespace's rules ([`rule_hash`]); empty for tags |
//! | `server` | the PostgreSQL server the daemon streamed from (system identifier and timeline) |
//! | `owed` | `1` while a flush of the target is owed, else `0` |
//! | `at` | when it was written, ms since the Unix epoch (for people; never compared) |
//!
//! Redis persists and replicates in order (AOF, RDB snapshot, replication stream), so whatever
//! state a restart or failover returns to is a *prefix* of the writes: a marker that still holds
//! the token this daemon last wrote proves that every delete before that write is still there.
//! Hence:
//!
//! - **While running**, every publish and every heartbeat compares (in the script, atomically)
//!   the markers it covers with the tokens this daemon last wrote. A marker missing, holding
//!   another token, or owing a flush is a loss: the script sets `owed` and publishes no
//!   heartbeat, and the daemon flushes the target before any heartbeat certifies it.
//! - **At start**, the daemon has no tokens of its own; it judges each marker against the slot
//!   instead ([`judge`]): it never confirms a position to PostgreSQL past what every marker has
//!   been written to, so a marker behind the slot's `confirmed_flush_lsn` lost writes. Data
//!   calls renew a marker's token but never move its position (a batch can take several calls,
//!   and a Redis that kept an early one and lost a later one must not show the batch's end);
//!   only a check at the confirmed position, or a flush, moves it.
//! - **Flushes owed are durable**: `owed` is set before the flush is attempted (before creating
//!   a slot, after a rule change, after a detected loss) and cleared by the flush's own script,
//!   so a crash in between repeats the flush.
//!
//! After a loss, generations and tag versions move to at least the current time in
//! microseconds (never back to 1), above any value a process may still hold.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use walcache_cdc::Lsn;
use walcache_protocol::Naming;

use crate::config::Rule;

/// What a marker guards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A namespace: its generation and its values.
    Namespace(String),
    /// A tag the rules bump: its version and its member set.
    Tag(String),
}

impl Target {
    /// The marker's Redis key.
    pub fn marker_key(&self, naming: &Naming) -> String {
        match self {
            Target::Namespace(ns) => naming.marker_key(ns),
            Target::Tag(tag) => naming.tag_marker_key(tag),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Namespace(ns) => write!(f, "namespace {ns}"),
            Target::Tag(tag) => write!(f, "tag {tag}"),
        }
    }
}

/// Every target of `rules`: their namespaces and tags, each once, namespaces first.
pub fn targets(rules: &[Rule]) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for r in rules {
        let t = Target::Namespace(r.namespace.clone());
        if !out.contains(&t) {
            out.push(t);
        }
    }
    for r in rules {
        for tag in &r.tags {
            let t = Target::Tag(tag.clone());
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// A stable hash of the rules that map into `namespace` (SHA-256 over their tables, key
/// templates and tags, in a canonical order; the first 16 hex digits). A rule added, removed or
/// changed changes it, and the namespace is flushed: keys the old rules did not compute were
/// never invalidated.
pub fn rule_hash(rules: &[Rule], namespace: &str) -> String {
    let mut lines: Vec<String> = rules
        .iter()
        .filter(|r| r.namespace == namespace)
        .map(|r| {
            let (schema, table) = r.qualified_table();
            let mut tags = r.tags.clone();
            tags.sort();
            format!("table={schema:?}.{table:?} keys={:?} tags={tags:?}", r.keys)
        })
        .collect();
    lines.sort();
    let digest = Sha256::digest(lines.join("\n").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A marker as read from Redis (`HGETALL`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mark {
    /// `w`.
    pub token: String,
    /// `lsn`, if present and parsable.
    pub lsn: Option<Lsn>,
    /// `rule`.
    pub rule: String,
    /// `server`.
    pub server: String,
    /// `owed == "1"`.
    pub owed: bool,
    /// `at`, ms since the Unix epoch.
    pub at_ms: Option<u64>,
}

impl Mark {
    /// From an `HGETALL` reply; `None` for an empty one (no marker).
    pub fn from_fields(fields: &BTreeMap<String, String>) -> Option<Mark> {
        if fields.is_empty() {
            return None;
        }
        let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
        Some(Mark {
            token: get("w"),
            lsn: fields.get("lsn").and_then(|s| s.parse().ok()),
            rule: get("rule"),
            server: get("server"),
            owed: get("owed") == "1",
            at_ms: fields.get("at").and_then(|s| s.parse().ok()),
        })
    }
}

/// Why a target must be flushed (the `reason` label of
/// `walcached_namespace_flushes_total` and `walcached_redis_losses_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// No marker: never written (a new deployment), or Redis lost it (`FLUSHALL`, a restart
    /// without persistence, an eviction).
    Missing,
    /// The marker's position is behind the slot's: Redis came back from before deletes whose
    /// changes PostgreSQL already counts as consumed.
    Behind,
    /// The marker no longer holds what this daemon last wrote (found while running).
    Mismatch,
    /// A flush was owed and never completed (a crash, or a loss found earlier).
    Owed,
    /// The namespace's rules changed.
    RuleChanged,
    /// The marker was written against another PostgreSQL server or timeline.
    ServerChanged,
    /// The replication slot was created (or recreated): changes before it are unknown.
    SlotCreated,
    /// A namespace's keys could not be deleted one by one (its generation or schema set in
    /// Redis is unreadable).
    ItemFailed,
}

impl Loss {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Loss::Missing => "marker_missing",
            Loss::Behind => "marker_behind",
            Loss::Mismatch => "marker_mismatch",
            Loss::Owed => "flush_owed",
            Loss::RuleChanged => "rule_changed",
            Loss::ServerChanged => "server_changed",
            Loss::SlotCreated => "slot_created",
            Loss::ItemFailed => "item_failed",
        }
    }

    /// Whether Redis itself lost writes (as opposed to a flush the daemon decided on).
    pub fn is_redis_loss(self) -> bool {
        matches!(self, Loss::Missing | Loss::Behind | Loss::Mismatch)
    }
}

/// Judge a marker read at start: `None` if it proves Redis holds every delete up to `slot`
/// (the slot's `confirmed_flush_lsn`) for this server and these rules.
pub fn judge(mark: Option<&Mark>, slot: Lsn, server: &str, rule: &str) -> Option<Loss> {
    let Some(mark) = mark else {
        return Some(Loss::Missing);
    };
    if mark.owed {
        return Some(Loss::Owed);
    }
    if mark.server != server {
        return Some(Loss::ServerChanged);
    }
    if mark.rule != rule {
        return Some(Loss::RuleChanged);
    }
    match mark.lsn {
        Some(lsn) if lsn >= slot && !mark.token.is_empty() => None,
        Some(_) => Some(Loss::Behind),
        None => Some(Loss::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: &str, ns: &str, keys: &[&str], tags: &[&str]) -> Rule {
        Rule {
            table: table.to_owned(),
            namespace: ns.to_owned(),
            keys: keys.iter().map(|s| (*s).to_owned()).collect(),
            tags: tags.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn rule_hashes_follow_the_rules_of_their_namespace_only() {
        let a = rule("users", "users", &["{id}"], &["t1", "t2"]);
        let b = rule("public.users", "users", &["{id}"], &["t2", "t1"]);
        let other = rule("orders", "orders", &["{id}"], &[]);
        // Spelling of the schema and order of tags do not matter; other namespaces do not.
        assert_eq!(
            rule_hash(std::slice::from_ref(&a), "users"),
            rule_hash(&[b, other.clone()], "users")
        );
        assert_eq!(rule_hash(std::slice::from_ref(&a), "users").len(), 16);
        let changed = rule(
            "users",
            "users",
            &["{id}", "by_email:{email}"],
            &["t1", "t2"],
        );
        assert_ne!(
            rule_hash(std::slice::from_ref(&a), "users"),
            rule_hash(&[changed], "users")
        );
        assert_ne!(
            rule_hash(std::slice::from_ref(&a), "users"),
            rule_hash(&[a, other], "orders")
        );
    }

    #[test]
    fn targets_list_each_namespace_and_tag_once() {
        let rules = [
            rule("a", "x", &["{id}"], &["t"]),
            rule("b", "x", &["{id}"], &["t", "u"]),
        ];
        assert_eq!(
            targets(&rules),
            vec![
                Target::Namespace("x".into()),
                Target::Tag("t".into()),
                Target::Tag("u".into())
            ]
        );
    }

    #[test]
    fn a_marker_passes_only_when_it_proves_everything_up_to_the_slot() {
        let good = Mark {
            token: "ab-1".into(),
            lsn: Some(Lsn(100)),
            rule: "r".into(),
            server: "s".into(),
            owed: false,
            at_ms: None,
        };
        assert_eq!(judge(Some(&good), Lsn(100), "s", "r"), None);
        assert_eq!(judge(Some(&good), Lsn(50), "s", "r"), None);
        assert_eq!(judge(Some(&good), Lsn(101), "s", "r"), Some(Loss::Behind));
        assert_eq!(judge(None, Lsn(0), "s", "r"), Some(Loss::Missing));
        assert_eq!(
            judge(Some(&good), Lsn(0), "other", "r"),
            Some(Loss::ServerChanged)
        );
        assert_eq!(
            judge(Some(&good), Lsn(0), "s", "other"),
            Some(Loss::RuleChanged)
        );
        let owed = Mark {
            owed: true,
            ..good.clone()
        };
        assert_eq!(judge(Some(&owed), Lsn(0), "s", "r"), Some(Loss::Owed));
        // Only `owed` set (what a script leaves on a missing marker).
        let mut fields = BTreeMap::new();
        fields.insert("owed".to_owned(), "1".to_owned());
        let bare = Mark::from_fields(&fields).unwrap();
        assert_eq!(judge(Some(&bare), Lsn(0), "s", "r"), Some(Loss::Owed));
        assert_eq!(Mark::from_fields(&BTreeMap::new()), None);
    }
}

//! Durable markers: how the daemon finds out that Redis forgot deletes it made.
//!
//! Redis loses writes in ordinary operation: a restart from an older RDB or AOF, a failover to
//! a replica that had not received the last writes, `FLUSHALL`, a replica's full resync, an
//! eviction. A lost delete is a stale value served until its TTL, and Redis says nothing.
//!
//! So every namespace the rules write to — their own, and those their tags are bumped in
//! (`tag_namespaces`) — has a **marker**: a Redis hash with no time-to-live, in the
//! namespace's hash slot ([`Naming::marker_key`](walcache_protocol::Naming::marker_key)), written by the same script that deletes the
//! namespace's keys or bumps its tags:
//!
//! | field | what |
//! |---|---|
//! | `w` | the token of the script call that wrote it last (`<epoch hex>-<n>`, unique per call) |
//! | `lsn` | a position up to which every change's invalidation is in Redis (`X/X`): the confirmed position at the daemon's last check, or where a flush left it; never decreases |
//! | `rule` | a hash of the rules that write to the namespace ([`rule_hash`]) |
//! | `server` | the PostgreSQL server the daemon streamed from (system identifier and timeline) |
//! | `owed` | `1` while a flush of the namespace is owed, else `0` |
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
//!   heartbeat, and the daemon flushes the namespace before any heartbeat certifies it.
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
//! After a loss, generations move to at least the current time in microseconds (never back
//! to 1), above any value a process may still hold.
//!
//! A namespace's tag versions (`{prefix}:{ns}:tags`) live in its slot and are written by its
//! scripts, so its marker guards them too: a tag bump compares the marker like a key delete
//! does, and a loss (a bump Redis forgot: a tag's version gone back) flushes the namespace, so
//! no value filled under the old generation is read once the flush is heard. Markers are
//! therefore kept per namespace only, and named by it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use walcache_cdc::Lsn;

use crate::config::Rule;

/// Every namespace `rules` write to, each once: their own namespaces in rule order, then the
/// other namespaces their tags are bumped in (`tag_namespaces`). Each has a marker.
pub fn targets(rules: &[Rule]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let own = rules.iter().map(|r| &r.namespace);
    let tagged = rules
        .iter()
        .filter(|r| !r.tags.is_empty())
        .flat_map(|r| &r.tag_namespaces);
    for ns in own.chain(tagged) {
        if !out.contains(ns) {
            out.push(ns.clone());
        }
    }
    out
}

/// A stable hash of what the rules write to `namespace` (SHA-256 over, in a canonical order:
/// the tables, key templates and tags of the rules of the namespace, and the tables and tags
/// of the rules that bump their tags in it through `tag_namespaces`; the first 16 hex
/// digits). A rule added, removed or changed, or one that starts or stops bumping its tags in
/// the namespace, changes it, and the namespace is flushed: keys the old rules did not
/// compute, and tags they did not bump, were never invalidated.
pub fn rule_hash(rules: &[Rule], namespace: &str) -> String {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let mut lines: Vec<String> = rules
        .iter()
        .filter_map(|r| {
            let (schema, table) = r.qualified_table();
            let tags = sorted(&r.tags);
            if r.namespace == namespace {
                // The form of a rule without tag_namespaces is unchanged, so its hash is too.
                Some(format!(
                    "table={schema:?}.{table:?} keys={:?} tags={tags:?}",
                    r.keys
                ))
            } else if !tags.is_empty() && r.tag_namespaces.iter().any(|n| n == namespace) {
                Some(format!("tags of table={schema:?}.{table:?} tags={tags:?}"))
            } else {
                None
            }
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

/// Why a namespace must be flushed (the `reason` label of
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
    /// A namespace's items could not be applied one by one: its keys not deleted (its
    /// generation or schema set in Redis is unreadable), or its tags not bumped (its tags hash
    /// was not a hash of numbers, and was deleted with the versions it held).
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
            tag_namespaces: Vec::new(),
        }
    }

    fn tagging(mut r: Rule, namespaces: &[&str]) -> Rule {
        r.tag_namespaces = namespaces.iter().map(|s| (*s).to_owned()).collect();
        r
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
    fn targets_list_each_namespace_written_to_once() {
        let rules = [
            rule("a", "x", &["{id}"], &["t"]),
            tagging(rule("b", "y", &["{id}"], &["t", "u"]), &["z", "x", "y"]),
            // No tags: its tag_namespaces write nothing (the configuration refuses it anyway).
            tagging(rule("c", "x", &["{id}"], &[]), &["w"]),
        ];
        assert_eq!(targets(&rules), vec!["x", "y", "z"]);
    }

    #[test]
    fn a_rule_that_starts_or_stops_tagging_a_namespace_changes_its_hash_only() {
        let users = rule("users", "users", &["{id}"], &["users"]);
        let orders = rule("orders", "orders", &["{id}"], &[]);
        let plain = [users.clone(), orders.clone()];
        let tagging_orders = [tagging(users.clone(), &["orders"]), orders.clone()];
        // `orders` now has its tags bumped by the users table: its hash changes...
        assert_ne!(
            rule_hash(&plain, "orders"),
            rule_hash(&tagging_orders, "orders")
        );
        // ...the rule's own namespace is written to exactly as before.
        assert_eq!(
            rule_hash(&plain, "users"),
            rule_hash(&tagging_orders, "users")
        );
        // Another tag bumped in `orders` changes it again; spelling and order do not.
        let more = [
            tagging(
                rule("users", "users", &["{id}"], &["users", "people"]),
                &["orders"],
            ),
            orders.clone(),
        ];
        assert_ne!(
            rule_hash(&tagging_orders, "orders"),
            rule_hash(&more, "orders")
        );
        let respelled = [
            tagging(
                rule("public.users", "users", &["{id}"], &["people", "users"]),
                &["orders", "orders"],
            ),
            orders,
        ];
        assert_eq!(rule_hash(&more, "orders"), rule_hash(&respelled, "orders"));
        // A namespace only tagged (no rule of its own) has a hash of its own too.
        assert_ne!(
            rule_hash(&[tagging(users.clone(), &["carts"])], "carts"),
            rule_hash(&[users], "carts")
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

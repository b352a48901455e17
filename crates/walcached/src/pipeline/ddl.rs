//! Announcements of DDL capture (see [`crate::ddl_capture`]) turned into flushes, in commit
//! order: a statement that changed a rule's table (or a partition of it) without row events
//! flushes the rule's namespace and tags in the transaction that ran it.
//!
//! A relation is the rule's when its oid is the table's or a partition's that the daemon knows
//! (from the catalog check, and from earlier announcements of partitions created or
//! attached), or when it or its root has the rule's name (a table re-created, renamed back).
//! An announcement that cannot be read flushes every rule: what it said is unknown.
//!
//! Replication messages longer than `stream.max_frame_bytes` arrive as their first bytes only
//! ([`OversizedXLogData`]): a row change flushes its rule's namespace and tags (its keys are
//! unknown, its relation is not), anything else of ours flushes every rule.

use std::collections::BTreeSet;

use walcache_cdc::pgoutput::Message;
use walcache_cdc::protocol::OversizedXLogData;

use super::Streamer;
use crate::ddl_capture::{Announcement, Object, MESSAGE_PREFIX};
use crate::mapping::Invalidation;
use crate::metrics as m;

/// What one logical decoding message asks of the stream loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reaction {
    /// Flushes due at the message's place in the stream.
    pub(super) flushes: Vec<Invalidation>,
    /// Check the catalog once the transaction has ended: a table may need to be added back to
    /// the publication, an identity re-checked, the publication repaired.
    pub(super) check_catalog: bool,
}

impl Streamer<'_> {
    /// React to one logical decoding message. Another application's prefix is ignored.
    pub(super) fn on_message(&mut self, message: &Message) -> Reaction {
        if message.prefix != MESSAGE_PREFIX {
            return Reaction::default();
        }
        let announcement = match Announcement::decode(&message.content) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, lsn = %message.lsn, "an announcement of DDL capture could not be read: flushing every namespace");
                metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "ddl_unreadable")
                    .increment(u64::try_from(self.mapper.rules().len()).unwrap_or(u64::MAX));
                let all: BTreeSet<usize> = (0..self.mapper.rules().len()).collect();
                return Reaction {
                    flushes: self.flushes_of(&all),
                    check_catalog: true,
                };
            }
        };
        let rules = self.rules_named(&announcement);
        let check_catalog = !rules.is_empty() || announcement.names_publication();
        if announcement.creates_partition_only() {
            // Empty: its rows arrive as row changes. Its oid is learned (above).
            return Reaction {
                flushes: Vec::new(),
                check_catalog,
            };
        }
        for &i in &rules {
            let rule = &self.mapper.rules()[i];
            tracing::info!(namespace = %rule.namespace, statement = %announcement.tag, lsn = %message.lsn, "a statement changed a rule's table without row events: flushing its namespace");
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "ddl").increment(1);
        }
        Reaction {
            flushes: self.flushes_of(&rules),
            check_catalog,
        }
    }

    /// React to a replication message too long to keep (see the module's documentation).
    pub(super) fn on_oversized(&mut self, o: &OversizedXLogData) -> Reaction {
        let limit = self.config.stream.max_frame_bytes;
        match (o.tag(), o.relation_id()) {
            (Some(b'I' | b'U' | b'D'), Some(relation)) => {
                let Some(i) = self.mapper.rule_of(relation) else {
                    return Reaction::default();
                };
                let namespace = &self.mapper.rules()[i].namespace;
                tracing::warn!(%namespace, relation, bytes = o.len, limit, wal_start = %o.wal_start, "a row change longer than stream.max_frame_bytes was read past: flushing its namespace (raise stream.max_frame_bytes to keep such rows' keys)");
                metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "oversized_change")
                    .increment(1);
                Reaction {
                    flushes: self.flushes_of(&BTreeSet::from([i])),
                    check_catalog: false,
                }
            }
            (Some(b'M'), _) if o.message_prefix().is_some_and(|p| p != MESSAGE_PREFIX) => {
                Reaction::default()
            }
            (tag, _) => {
                let kind = tag.map_or_else(|| "empty".to_owned(), |t| (t as char).to_string());
                tracing::error!(kind, bytes = o.len, limit, wal_start = %o.wal_start, "a replication message longer than stream.max_frame_bytes could not be read: flushing every namespace");
                metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "oversized_message")
                    .increment(u64::try_from(self.mapper.rules().len()).unwrap_or(u64::MAX));
                let all: BTreeSet<usize> = (0..self.mapper.rules().len()).collect();
                Reaction {
                    flushes: self.flushes_of(&all),
                    check_catalog: true,
                }
            }
        }
    }

    /// The flushes of rules `rules`: each namespace, each tag.
    fn flushes_of(&self, rules: &BTreeSet<usize>) -> Vec<Invalidation> {
        rules
            .iter()
            .flat_map(|&i| self.mapper.rules()[i].invalidate_all())
            .collect()
    }

    /// The rules whose tables the announcement names; partitions of a rule's table are
    /// learned on the way.
    fn rules_named(&mut self, announcement: &Announcement) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for object in &announcement.objects {
            let Object::Table {
                oid,
                schema,
                name,
                root,
                root_schema,
                root_name,
            } = object
            else {
                continue;
            };
            for (i, rule) in self.mapper.rules().iter().enumerate() {
                let named = |s: &Option<String>, n: &Option<String>| {
                    s.as_deref() == Some(rule.table.0.as_str())
                        && n.as_deref() == Some(rule.table.1.as_str())
                };
                let by_root = root.is_some_and(|r| self.watch.is_member(i, r, rule.oid))
                    || named(root_schema, root_name);
                let own = self.watch.is_member(i, *oid, rule.oid)
                    || (schema == &rule.table.0 && name == &rule.table.1);
                if by_root && !own {
                    self.watch.learn(i, *oid);
                }
                if own || by_root {
                    out.insert(i);
                }
            }
        }
        out
    }
}

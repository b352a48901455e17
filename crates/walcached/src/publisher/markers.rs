//! The publisher's side of the markers ([`crate::marker`]): reading them at start, making a
//! flush owed durably, flushing what was lost, and how far every marker has been written.

use std::collections::BTreeMap;

use walcache_cdc::Lsn;
use walcache_protocol::Body;

use super::{Batch, Held, Publisher};
use crate::marker::{Loss, Mark, Target};
use crate::metrics as m;

impl Publisher {
    /// Markers are written against this PostgreSQL server (its system identifier and
    /// timeline, as text).
    pub fn set_server(&mut self, server: String) {
        self.server = server;
    }

    /// The server markers are written against.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Every target of the rules: their namespaces, then their tags.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The rule hash a target's marker must carry (empty for tags).
    pub fn rule_hash(&self, target: &Target) -> &str {
        match target {
            Target::Namespace(ns) => self.rule_hashes.get(ns).map_or("", String::as_str),
            Target::Tag(_) => "",
        }
    }

    /// Every target's marker, as Redis holds it now (`None`: none).
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn read_marks(&mut self) -> Result<Vec<(Target, Option<Mark>)>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for t in &self.targets {
            pipe.cmd("HGETALL").arg(t.marker_key(&self.naming));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<BTreeMap<String, String>> =
            self.timed(pipe.query_async(&mut conn)).await?;
        Ok(self
            .targets
            .iter()
            .cloned()
            .zip(replies.iter().map(Mark::from_fields))
            .collect())
    }

    /// Take a marker read at start as this daemon's own: later calls expect it to hold
    /// exactly this.
    pub fn accept(&mut self, target: Target, mark: &Mark) {
        self.held.insert(
            target,
            Held {
                token: mark.token.clone(),
                alt: Vec::new(),
                lsn: mark.lsn.unwrap_or(Lsn(0)),
            },
        );
    }

    /// Record durably that `targets` owe a flush (`owed = 1` in their markers), before
    /// anything else is done about them: a crash before the flush is published repeats it.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn mark_owed(&mut self, targets: &[Target]) -> Result<(), redis::RedisError> {
        if targets.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for t in targets {
            pipe.cmd("HSET")
                .arg(t.marker_key(&self.naming))
                .arg("owed")
                .arg("1")
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Flush `targets` (a namespace: a new generation; a tag: a new version, its members
    /// deleted), each to at least the current time in microseconds, writing their markers
    /// anew at `lsn` with the flag owed cleared. Logged and counted per reason. Returns how
    /// many targets were flushed.
    ///
    /// # Errors
    ///
    /// Redis errors (the markers keep `owed` set: the flush is repeated).
    pub async fn repair(
        &mut self,
        targets: Vec<(Target, Loss)>,
        lsn: Lsn,
    ) -> Result<usize, redis::RedisError> {
        let mut flushes: BTreeMap<Target, Loss> = BTreeMap::new();
        for (t, loss) in targets {
            flushes.entry(t).or_insert(loss);
        }
        if flushes.is_empty() {
            return Ok(0);
        }
        let mut namespaces = Vec::new();
        let mut tags = Vec::new();
        for (t, loss) in &flushes {
            if loss.is_redis_loss() {
                tracing::error!(target_name = %t, reason = loss.label(), "Redis lost writes (restart from an older snapshot, failover, FLUSHALL, resync or eviction): flushing");
                metrics::counter!(m::REDIS_LOSSES_TOTAL, "reason" => loss.label()).increment(1);
            } else {
                tracing::warn!(target_name = %t, reason = loss.label(), "flushing");
            }
            match t {
                Target::Namespace(ns) => {
                    metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => loss.label())
                        .increment(1);
                    namespaces.push(ns.clone());
                }
                Target::Tag(tag) => tags.push(tag.clone()),
            }
        }
        let batch = Batch {
            lsn: lsn.0,
            commit_time_micros: 0,
            ..Batch::default()
        };
        if !namespaces.is_empty() {
            self.send_chunks(
                "flush",
                &namespaces,
                |v| Body::Flush(v.to_vec()),
                &batch,
                lsn,
            )
            .await?;
        }
        if !tags.is_empty() {
            self.send_chunks("tags", &tags, |v| Body::Tags(v.to_vec()), &batch, lsn)
                .await?;
        }
        Ok(flushes.len())
    }

    /// The daemon's last view of each `(namespace, table)` in the catalog
    /// ([`Naming::catalog_key`](walcache_protocol::Naming::catalog_key)), `None` where none
    /// was stored.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn read_catalog(
        &mut self,
        tables: &[(String, String)],
    ) -> Result<Vec<Option<String>>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for (ns, table) in tables {
            pipe.cmd("HGET").arg(self.naming.catalog_key(ns)).arg(table);
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async(&mut conn)).await
    }

    /// Store the daemon's view of each `(namespace, table, view)`.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn write_catalog(
        &mut self,
        views: &[(String, String, String)],
    ) -> Result<(), redis::RedisError> {
        if views.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (ns, table, view) in views {
            pipe.cmd("HSET")
                .arg(self.naming.catalog_key(ns))
                .arg(table)
                .arg(view)
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// The position every marker has been written to: the daemon confirms no more than this
    /// to PostgreSQL, so at start a marker behind the slot proves lost writes.
    pub fn marked_through(&self) -> Lsn {
        self.targets
            .iter()
            .map(|t| self.held.get(t).map_or(Lsn(0), |h| h.lsn))
            .min()
            .unwrap_or(Lsn(u64::MAX))
    }
}

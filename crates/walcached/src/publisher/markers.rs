//! The publisher's side of the markers ([`crate::marker`]), one per namespace: reading them at
//! start, making a flush owed durably, flushing what was lost, and how far every marker has
//! been written.

use std::collections::BTreeMap;

use walcache_cdc::Lsn;

use super::{Batch, Held, Publisher};
use crate::marker::{Loss, Mark};
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

    /// Every namespace the rules write to ([`crate::marker::targets`]), each with a marker.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The rule hash a namespace's marker must carry.
    pub fn rule_hash(&self, namespace: &str) -> &str {
        self.rule_hashes.get(namespace).map_or("", String::as_str)
    }

    /// Every namespace's marker, as Redis holds it now (`None`: none).
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn read_marks(&mut self) -> Result<Vec<(String, Option<Mark>)>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for ns in &self.targets {
            pipe.cmd("HGETALL").arg(self.naming.marker_key(ns));
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
    pub fn accept(&mut self, namespace: String, mark: &Mark) {
        self.held.insert(
            namespace,
            Held {
                token: mark.token.clone(),
                alt: Vec::new(),
                lsn: mark.lsn.unwrap_or(Lsn(0)),
            },
        );
    }

    /// Record durably that `namespaces` owe a flush (`owed = 1` in their markers), before
    /// anything else is done about them: a crash before the flush is published repeats it.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn mark_owed(&mut self, namespaces: &[String]) -> Result<(), redis::RedisError> {
        if namespaces.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ns in namespaces {
            pipe.cmd("HSET")
                .arg(self.naming.marker_key(ns))
                .arg("owed")
                .arg("1")
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Flush `namespaces` (each a new generation of at least the current time in
    /// microseconds), writing their markers anew at `lsn` with the flag owed cleared. Logged and counted per reason. Returns how many were flushed.
    ///
    /// # Errors
    ///
    /// Redis errors (the markers keep `owed` set: the flush is repeated).
    pub async fn repair(
        &mut self,
        namespaces: Vec<(String, Loss)>,
        lsn: Lsn,
    ) -> Result<usize, redis::RedisError> {
        let mut flushes: BTreeMap<String, Loss> = BTreeMap::new();
        for (ns, loss) in namespaces {
            flushes.entry(ns).or_insert(loss);
        }
        if flushes.is_empty() {
            return Ok(0);
        }
        for (ns, loss) in &flushes {
            if loss.is_redis_loss() {
                tracing::error!(namespace = %ns, reason = loss.label(), "Redis lost writes (restart from an older snapshot, failover, FLUSHALL, resync or eviction): flushing");
                metrics::counter!(m::REDIS_LOSSES_TOTAL, "reason" => loss.label()).increment(1);
            } else {
                tracing::warn!(namespace = %ns, reason = loss.label(), "flushing");
            }
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => loss.label()).increment(1);
        }
        let batch = Batch {
            lsn: lsn.0,
            commit_time_micros: 0,
            ..Batch::default()
        };
        let namespaces: Vec<String> = flushes.keys().cloned().collect();
        self.send_flushes(&namespaces, &batch, lsn).await?;
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
            .map(|ns| self.held.get(ns).map_or(Lsn(0), |h| h.lsn))
            .min()
            .unwrap_or(Lsn(u64::MAX))
    }
}

//! Catalog drift the stream does not carry as row changes, checked every
//! `stream.catalog_interval_ms` while streaming (the drift bound without DDL capture):
//!
//! - a mapped table dropped and re-created (another oid): its rows changed with no event the
//!   daemon hears, and the new table is not in the publication;
//! - a mapped table or one of its partitions with a new `relfilenode`: a TRUNCATE (which
//!   pgoutput does not send for a partition under `publish_via_partition_root`) or a rewrite;
//! - a partition gone from the tree (detached or dropped): its rows left the table;
//! - the publication altered (actions, tables, row filters, column lists, the partition root).
//!
//! The daemon's view is stored in Redis (`wc:{ns}:catalog`) after each change, so drift while
//! it was down is found by the first check of its next run. Each flushes the rules'
//! namespaces and tags. The daemon's own publication is repaired (a
//! re-created table added back once it has a usable replica identity), and because changes of
//! transactions open at that moment were decoded without it, the namespaces are flushed again
//! once every such transaction has ended.
//!
//! A rule its table no longer fits (the table gone, a template column gone, the replica
//! identity too narrow) is *broken* ([`crate::mapping::Mapper::break_rule`]): every change of
//! the table flushes its namespace instead of naming keys it cannot know. Each check compiles
//! broken rules again; one that fits replaces its stand-in, and changes name keys again. A
//! restart in that state starts with the rule broken (a first start refuses it with the fix).
//!
//! Drift the daemon cannot repair — a rule's table that does not fit it and is not published
//! (`unfit_table`: never added while unfit, since a table without a usable replica identity,
//! once published, makes the application's own UPDATEs and DELETEs fail), or another
//! consumer's publication that no longer publishes what a rule needs (`publication`) — misses
//! every later change of the table, so a flush is not enough: the rule's namespace is *out of
//! service*. Heartbeats stop certifying it and list it as out of service (libraries then
//! bypass every tier for it), `/readyz` says not ready and names it, and the episode is logged
//! and counted once as it begins, and flushed then (what changed since the drift was missed).
//! Other rules' tables are repaired as usual. When a later check finds the publication fine
//! and the table fit again (repaired by the daemon, or fixed by someone), the namespace is
//! flushed — before any heartbeat certifies it again — and once more after the transactions
//! open at that moment have ended, then it is back in service. The daemon never stops because
//! of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;

use super::catalog::{compile_rule, plan_publication, Planned};
use super::Streamer;
use crate::mapping::{quote_ident, CompiledRule, RelationCheck};
use crate::metrics as m;
use crate::publisher::Batch;

/// One rule's table as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableFiles {
    /// The table's oid (`None`: no table by the rule's name).
    oid: Option<u32>,
    /// The `relfilenode` of the table and of every partition in its tree, by oid (0 for a
    /// partitioned table, which has no storage).
    files: BTreeMap<u32, u32>,
    /// The replica identity of each (`d`, `f`, `n`, or `i` and the index's oid), by oid: a
    /// partition's own identity decides what its old rows carry, and its Relation messages
    /// (the root's, under `publish_via_partition_root`) do not show it.
    identities: BTreeMap<u32, String>,
}

impl TableFiles {
    /// As stored in Redis: `oid|relid:file,…|relid:identity,…` (`-` for no table).
    fn to_text(&self) -> String {
        let files: Vec<String> = self.files.iter().map(|(r, f)| format!("{r}:{f}")).collect();
        let identities: Vec<String> = self
            .identities
            .iter()
            .map(|(r, i)| format!("{r}:{i}"))
            .collect();
        format!(
            "{}|{}|{}",
            self.oid.map_or_else(|| "-".to_owned(), |o| o.to_string()),
            files.join(","),
            identities.join(",")
        )
    }

    /// From [`to_text`](Self::to_text); `None` for anything else.
    fn from_text(text: &str) -> Option<TableFiles> {
        let mut parts = text.split('|');
        let (oid, files, identities) = (parts.next()?, parts.next()?, parts.next()?);
        let oid = if oid == "-" {
            None
        } else {
            Some(oid.parse().ok()?)
        };
        let mut map = BTreeMap::new();
        for pair in files.split(',').filter(|p| !p.is_empty()) {
            let (r, f) = pair.split_once(':')?;
            map.insert(r.parse().ok()?, f.parse().ok()?);
        }
        let mut ids = BTreeMap::new();
        for pair in identities.split(',').filter(|p| !p.is_empty()) {
            let (r, i) = pair.split_once(':')?;
            ids.insert(r.parse().ok()?, i.to_owned());
        }
        Some(TableFiles {
            oid,
            files: map,
            identities: ids,
        })
    }
}

/// What the watch remembers between checks.
#[derive(Debug, Default)]
pub(super) struct CatalogWatch {
    /// By rule index; `None` until the first check of the run, which compares with the view
    /// stored in Redis by the run before (drift while the daemon was down).
    tables: Option<HashMap<usize, TableFiles>>,
    /// Flushes due once every transaction running when the publication was repaired has
    /// ended: (the snapshot's xmax then, the rules).
    after_repair: Vec<(i64, Vec<usize>)>,
    /// Rules whose drift the daemon cannot repair, with the reason (`unfit_table`,
    /// `publication`): their namespaces are out of service.
    unrepaired: BTreeMap<usize, &'static str>,
    /// Partitions announced by DDL capture (created or attached), as (oid, rule index), kept
    /// for the run: the stream can be behind the catalog, so a partition already gone from
    /// the catalog may still be dropped later in the stream. (Small: one entry per partition
    /// created while running; an oid reused by another table costs a spurious flush.)
    learned: BTreeSet<(u32, usize)>,
}

impl CatalogWatch {
    /// Start with rules `rules` out of service for `reason` (`publication`: another
    /// consumer's publication does not publish what they need; `unfit_table`: their tables do
    /// not fit them and are not published): their namespaces are not certified from the first
    /// heartbeat on, until a catalog check finds the drift fixed.
    pub(super) fn start_out_of_service(&mut self, rules: &[usize], reason: &'static str) {
        for &i in rules {
            self.unrepaired.insert(i, reason);
        }
    }

    /// A watch that owes the rules `rules` a second flush once every transaction below `xmax`
    /// has ended: start-up repaired the publication for them.
    pub(super) fn after_startup_repair(xmax: i64, rules: Vec<usize>) -> Self {
        CatalogWatch {
            after_repair: vec![(xmax, rules)],
            ..CatalogWatch::default()
        }
    }
}

impl CatalogWatch {
    /// Whether relation `oid` is rule `i`'s table (whose oid at compile time was `rule_oid`)
    /// or a partition of it, as far as the daemon knows.
    pub(super) fn is_member(&self, i: usize, oid: u32, rule_oid: u32) -> bool {
        oid == rule_oid
            || self.learned.contains(&(oid, i))
            || self
                .tables
                .as_ref()
                .and_then(|t| t.get(&i))
                .is_some_and(|t| t.oid == Some(oid) || t.files.contains_key(&oid))
    }

    /// Remember that relation `oid` is a partition of rule `i`'s table.
    pub(super) fn learn(&mut self, i: usize, oid: u32) {
        self.learned.insert((oid, i));
    }

    /// The namespaces out of service: those of the rules with drift the daemon cannot repair.
    pub(super) fn out_of_service(&self, rules: &[CompiledRule]) -> BTreeSet<String> {
        namespaces_of(rules, self.unrepaired.keys())
    }
}

/// The namespaces rules `indexes` write to (their own, and those they bump tags in): a rule
/// whose changes are missed misses its tag bumps too.
fn namespaces_of<'a>(
    rules: &[CompiledRule],
    indexes: impl IntoIterator<Item = &'a usize>,
) -> BTreeSet<String> {
    indexes
        .into_iter()
        .filter_map(|&i| rules.get(i))
        .flat_map(CompiledRule::namespaces)
        .map(str::to_owned)
        .collect()
}

/// Why a namespace back in service is flushed (a `reason` of `walcached_catalog_drifts_total`
/// in [`Streamer::flush_drifted`]).
const BACK_IN_SERVICE: &str =
    "back in service: changes made while it was out of service were missed";
/// Why a namespace going out of service is flushed.
const OUT_OF_SERVICE: &str = "out of service: changes since the drift were missed";

/// The next xid to be assigned (`pg_snapshot_xmax` of a new snapshot).
pub(super) async fn snapshot_xmax(
    control: &tokio_postgres::Client,
) -> Result<i64, tokio_postgres::Error> {
    snapshot_bound(control, "pg_snapshot_xmax").await
}

async fn snapshot_bound(
    control: &tokio_postgres::Client,
    f: &str,
) -> Result<i64, tokio_postgres::Error> {
    Ok(control
        .query_one(
            &format!("SELECT {f}(pg_current_snapshot())::text::int8"),
            &[],
        )
        .await?
        .get(0))
}

/// The field of a table in the namespace's catalog hash: `schema.table`.
fn table_field((schema, table): &(String, String)) -> String {
    format!("{schema}.{table}")
}

/// Why a rule's table drifted, if it did.
fn drift(before: &TableFiles, now: &TableFiles) -> Option<&'static str> {
    if before.oid != now.oid {
        return Some(if now.oid.is_none() {
            "the table was dropped or renamed"
        } else {
            "the table was dropped and re-created"
        });
    }
    for (relid, file) in &before.files {
        match now.files.get(relid) {
            None => return Some("a partition was detached or dropped"),
            Some(f) if f != file => {
                return Some("the table or a partition was truncated or rewritten")
            }
            Some(_) => {}
        }
    }
    for (relid, identity) in &before.identities {
        if now.identities.get(relid).is_some_and(|i| i != identity) {
            return Some(IDENTITY_CHANGED);
        }
    }
    None
}

/// The drift reason of a changed replica identity: the rule is checked again, and broken
/// (every change flushes its namespace) if its templates no longer fit.
const IDENTITY_CHANGED: &str = "the replica identity of the table or a partition changed";

impl Streamer<'_> {
    /// One check of the catalog (see the module docs). Errors are logged and counted, and
    /// `false` returned: the caller tries again soon.
    pub(super) async fn check_catalog(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::debug!("checking the catalog for drift");
        match self.try_check_catalog(stream, shutdown).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "checking the catalog for drift failed; trying again");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "postgres").increment(1);
                false
            }
        }
    }

    async fn try_check_catalog(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let now = self.read_tables().await?;
        let before = match &self.watch.tables {
            Some(before) => before.clone(),
            None => self.stored_tables().await?,
        };
        let mut table_drift: BTreeMap<usize, &'static str> = BTreeMap::new();
        for (i, b) in &before {
            if let Some(reason) = now.get(i).and_then(|n| drift(b, n)) {
                table_drift.insert(*i, reason);
            }
        }
        // The view moves on (in memory, then in Redis) only once the flushes it calls for are
        // published: nothing below can drop them, and a crash before finds the drift again.
        if !table_drift.is_empty() && !self.flush_drifted(&table_drift, stream, shutdown).await {
            return Ok(()); // shutting down
        }
        for (&i, &reason) in &table_drift {
            if reason == IDENTITY_CHANGED {
                self.recheck_identity(i).await?;
            }
        }
        let changed: Vec<(String, String, String)> = now
            .iter()
            .filter(|(i, n)| before.get(i) != Some(n))
            .map(|(i, n)| {
                let rule = &self.mapper.rules()[*i];
                (
                    rule.namespace.clone(),
                    table_field(&rule.table),
                    n.to_text(),
                )
            })
            .collect();
        self.watch.tables = Some(now);
        self.publisher().write_catalog(&changed).await?;

        let mut flush: BTreeMap<usize, &'static str> = BTreeMap::new();
        // Rules that do not fit their tables: compiled again (broken ones, and those whose
        // tables the publication lacks); fit now, they replace their stand-ins. The
        // publication is repaired for the rules that fit; those that do not, and whose
        // changes it does not publish, are out of service until a later check finds them
        // fixed (as are the rules another consumer's publication fails).
        let (planned, unpublished, mut why) = self.plan_catalog().await?;
        let rules = self.mapper.rules().to_vec();
        let mut unrepaired: BTreeMap<usize, &'static str> =
            unpublished.iter().map(|&i| (i, "unfit_table")).collect();
        match planned {
            Planned::Repair(plan) if plan.affected_rules.is_empty() => {}
            Planned::Repair(plan) => {
                plan.apply(&self.control, &self.config.postgres.publication)
                    .await?;
                // Taken after the repair committed: every transaction that could have
                // changed the table before it has an xid below.
                let xmax = snapshot_xmax(&self.control).await?;
                for &i in &plan.affected_rules {
                    flush
                        .entry(i)
                        .or_insert("the publication did not publish it");
                }
                self.watch
                    .after_repair
                    .push((xmax, plan.affected_rules.clone()));
            }
            Planned::Foreign {
                error,
                affected_rules,
            } => {
                for i in affected_rules {
                    unrepaired.entry(i).or_insert("publication");
                }
                why = Some(error.to_string());
            }
        }
        let back = self.enter_out_of_service(&rules, unrepaired, why.as_deref(), &mut flush);
        if !back.is_empty() {
            // Fixed by someone else (or repaired above): transactions open at the fix were
            // decoded without the table, as after a repair.
            let xmax = snapshot_xmax(&self.control).await?;
            self.watch.after_repair.push((xmax, back.clone()));
        }

        // Transactions open at a repair have ended: flush once more.
        if !self.watch.after_repair.is_empty() {
            let xmin = self.snapshot_xmin().await?;
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.watch.after_repair)
                .into_iter()
                .partition(|(xmax, _)| xmin >= *xmax);
            self.watch.after_repair = waiting;
            for (_, rules) in done {
                for i in rules {
                    flush
                        .entry(i)
                        .or_insert("transactions open at the publication's repair ended");
                }
            }
        }
        if !flush.is_empty() && !self.flush_drifted(&flush, stream, shutdown).await {
            return Ok(()); // shutting down: still out of service
        }
        // Flushed: certified again from the next heartbeat on.
        self.leave_out_of_service(&rules, &back);
        Ok(())
    }

    /// Take the namespaces of the rules in `now` out of service (each newly out of service:
    /// one error line, one count, a flush in `flush`), and return the rules whose drift is
    /// gone: their namespaces owe a flush (added to `flush`) before they are back in service
    /// ([`leave_out_of_service`](Self::leave_out_of_service)).
    fn enter_out_of_service(
        &mut self,
        rules: &[CompiledRule],
        now: BTreeMap<usize, &'static str>,
        why: Option<&str>,
        flush: &mut BTreeMap<usize, &'static str>,
    ) -> Vec<usize> {
        let before = self.watch.out_of_service(rules);
        let back: Vec<usize> = self
            .watch
            .unrepaired
            .keys()
            .copied()
            .filter(|i| !now.contains_key(i))
            .collect();
        // Rules still out of service stay so until their flush is published.
        for (i, reason) in now {
            self.watch.unrepaired.insert(i, reason);
        }
        let after = self.watch.out_of_service(rules);
        let mut said: BTreeSet<&str> = BTreeSet::new();
        for (&i, &reason) in &self.watch.unrepaired {
            let Some(rule) = rules.get(i) else { continue };
            if before.contains(&rule.namespace) {
                continue; // an episode already under way
            }
            flush.entry(i).or_insert(OUT_OF_SERVICE);
            if !said.insert(&rule.namespace) {
                continue; // said once per namespace
            }
            tracing::error!(
                namespace = %rule.namespace,
                table = %format!("{}.{}", rule.table.0, rule.table.1),
                %reason,
                error = why.unwrap_or(""),
                "catalog drift walcached cannot repair: the namespace is out of service (not certified in heartbeats, so services bypass their caches for it; /readyz not ready) until it is fixed"
            );
            metrics::counter!(m::CATALOG_DRIFTS_TOTAL, "reason" => reason).increment(1);
        }
        for &i in &back {
            flush.entry(i).or_insert(BACK_IN_SERVICE);
        }
        self.export_out_of_service(&after);
        back
    }

    /// The rules in `back` were flushed: their namespaces are back in service unless another
    /// rule of theirs is still out.
    fn leave_out_of_service(&mut self, rules: &[CompiledRule], back: &[usize]) {
        if back.is_empty() {
            return;
        }
        let before = self.watch.out_of_service(rules);
        for i in back {
            self.watch.unrepaired.remove(i);
        }
        let after = self.watch.out_of_service(rules);
        for namespace in before.difference(&after) {
            tracing::info!(%namespace, "catalog drift fixed: the namespace was flushed and is back in service");
        }
        self.export_out_of_service(&after);
    }

    /// The namespaces out of service, to `/readyz` and the gauge.
    pub(super) fn export_out_of_service(&self, namespaces: &BTreeSet<String>) {
        metrics::gauge!(m::NAMESPACES_OUT_OF_SERVICE).set(namespaces.len() as f64);
        self.status
            .set_out_of_service(namespaces.iter().cloned().collect());
    }

    /// The publication's plan for the rules that fit their tables ([`plan_publication`]), the
    /// unfit rules it does not publish, and why the first of those is unfit. Broken rules and
    /// the rules whose tables the publication lacks are compiled against today's catalog
    /// first: a rule that fits replaces its stand-in (or its compilation of an older table),
    /// one that does not is left out of the repair, which is planned again without it.
    async fn plan_catalog(
        &mut self,
    ) -> Result<(Planned, Vec<usize>, Option<String>), Box<dyn std::error::Error + Send + Sync>>
    {
        let mut unfit: BTreeMap<usize, String> = BTreeMap::new();
        let mut checked: BTreeSet<usize> = BTreeSet::new();
        let mut candidates = self.mapper.broken_rules();
        loop {
            for i in candidates {
                if !checked.insert(i) {
                    continue;
                }
                match compile_rule(&self.control, self.config, i).await? {
                    Ok(rule) if rule == self.mapper.rules()[i] && !self.mapper.is_broken(i) => {}
                    Ok(rule) => self.restore_rule(i, rule),
                    Err(e) => {
                        unfit.insert(i, e.to_string());
                    }
                }
            }
            let skip: BTreeSet<usize> = unfit.keys().copied().collect();
            let rules = self.mapper.rules().to_vec();
            let (planned, unpublished) =
                plan_publication(&self.control, self.config, &rules, &skip).await?;
            // The tables a repair would add back must fit first.
            let unchecked: Vec<usize> = match &planned {
                Planned::Repair(plan) => plan
                    .affected_rules
                    .iter()
                    .copied()
                    .filter(|i| !checked.contains(i))
                    .collect(),
                Planned::Foreign { .. } => Vec::new(),
            };
            if unchecked.is_empty() {
                let why = unpublished.first().and_then(|i| unfit.remove(i));
                return Ok((planned, unpublished, why));
            }
            candidates = unchecked;
        }
    }

    /// Rule `i` compiled against a catalog that fits it: the mapper uses it from the next
    /// change on.
    fn restore_rule(&mut self, i: usize, rule: CompiledRule) {
        let was_broken = self.mapper.is_broken(i);
        let namespace = rule.namespace.clone();
        for check in self.mapper.replace_rule(i, rule) {
            if let RelationCheck::Mismatch { namespace, reason } = check {
                tracing::warn!(%namespace, %reason, "the stream's last description of the table does not fit the rule yet: its changes flush until the stream describes it again");
            }
        }
        if was_broken {
            tracing::info!(%namespace, "the rule fits its table again: changes name their keys again");
        }
    }

    /// Flush the rules in `flush` (their namespaces and tags), saying why. False if shutdown
    /// interrupted it.
    async fn flush_drifted(
        &mut self,
        flush: &BTreeMap<usize, &'static str>,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut batch = Batch::default();
        for (i, reason) in flush {
            let rule = &self.mapper.rules()[*i];
            tracing::warn!(table = %format!("{}.{}", rule.table.0, rule.table.1), namespace = %rule.namespace, %reason, "catalog drift: flushing the namespace");
            metrics::counter!(m::CATALOG_DRIFTS_TOTAL, "reason" => *reason).increment(1);
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "catalog_drift").increment(1);
            batch.extend(rule.invalidate_all());
        }
        batch.lsn = self.published.0;
        self.publish_with_retry(&batch, Some(stream), shutdown)
            .await
    }

    /// The view of every rule's table stored by an earlier run (rules with none are left
    /// out: nothing to compare with).
    async fn stored_tables(
        &mut self,
    ) -> Result<HashMap<usize, TableFiles>, Box<dyn std::error::Error + Send + Sync>> {
        let keys: Vec<(String, String)> = self
            .mapper
            .rules()
            .iter()
            .map(|r| (r.namespace.clone(), table_field(&r.table)))
            .collect();
        let stored = self.publisher().read_catalog(&keys).await?;
        Ok(stored
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, TableFiles::from_text(&v?)?)))
            .collect())
    }

    /// Every rule's table: its oid and the files of its partition tree.
    async fn read_tables(&self) -> Result<HashMap<usize, TableFiles>, tokio_postgres::Error> {
        let names: Vec<String> = self
            .mapper
            .rules()
            .iter()
            .map(|r| format!("{}.{}", quote_ident(&r.table.0), quote_ident(&r.table.1)))
            .collect();
        let rows = self
            .control
            .query(
                "SELECT r.i::int8, to_regclass(r.name)::oid::int8, t.relid::oid::int8, \
                        c.relfilenode::int8, c.relreplident::text || coalesce((SELECT \
                        i.indexrelid::oid::int8::text FROM pg_index i \
                        WHERE i.indrelid = c.oid AND i.indisreplident), '') \
                 FROM unnest($1::text[]) WITH ORDINALITY AS r(name, i) \
                 LEFT JOIN LATERAL pg_partition_tree(to_regclass(r.name)) t ON true \
                 LEFT JOIN pg_class c ON c.oid = t.relid",
                &[&names],
            )
            .await?;
        let mut out: HashMap<usize, TableFiles> = HashMap::new();
        for row in rows {
            let i = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
            let oid = row
                .get::<_, Option<i64>>(1)
                .and_then(|o| u32::try_from(o).ok());
            let entry = out.entry(i).or_insert_with(|| TableFiles {
                oid,
                files: BTreeMap::new(),
                identities: BTreeMap::new(),
            });
            if let (Some(relid), Some(file)) =
                (row.get::<_, Option<i64>>(2), row.get::<_, Option<i64>>(3))
            {
                if let (Ok(relid), Ok(file)) = (u32::try_from(relid), u32::try_from(file)) {
                    entry.files.insert(relid, file);
                    if let Some(identity) = row.get::<_, Option<String>>(4) {
                        entry.identities.insert(relid, identity);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Check rule `i` against its table again after an identity change: if a template column
    /// is no longer carried by every old row (the table's or a partition's identity), the rule
    /// is broken — every change flushes its namespace — and the error says how to fix it.
    async fn recheck_identity(&mut self, i: usize) -> Result<(), tokio_postgres::Error> {
        if let Err(e) = compile_rule(&self.control, self.config, i).await? {
            let namespace = &self.config.rules[i].namespace;
            tracing::error!(error = %e, %namespace, "a replica identity changed under a rule: every change of the table now flushes its namespace until the identity or the rule is fixed (checked with the catalog)");
            metrics::counter!(m::CATALOG_DRIFTS_TOTAL, "reason" => "identity_unfit").increment(1);
            self.mapper.break_rule(i);
        }
        Ok(())
    }

    async fn snapshot_xmin(&self) -> Result<i64, tokio_postgres::Error> {
        snapshot_bound(&self.control, "pg_snapshot_xmin").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(oid: u32, f: &[(u32, u32)]) -> TableFiles {
        TableFiles {
            oid: Some(oid),
            files: f.iter().copied().collect(),
            identities: f.iter().map(|(r, _)| (*r, "d".to_owned())).collect(),
        }
    }

    #[test]
    fn drift_is_a_new_oid_a_new_file_or_a_lost_partition_never_a_new_partition() {
        let before = files(10, &[(10, 0), (11, 111), (12, 121)]);
        assert_eq!(drift(&before, &before), None);
        assert_eq!(
            drift(
                &before,
                &files(10, &[(10, 0), (11, 111), (12, 121), (13, 131)])
            ),
            None,
            "a partition attached: its rows come through the stream"
        );
        assert!(drift(&before, &files(10, &[(10, 0), (11, 112), (12, 121)])).is_some());
        assert!(drift(&before, &files(10, &[(10, 0), (11, 111)])).is_some());
        assert!(drift(&before, &files(20, &[(20, 0)])).is_some());
        let mut narrowed = before.clone();
        narrowed.identities.insert(11, "i4242".to_owned());
        assert_eq!(drift(&before, &narrowed), Some(IDENTITY_CHANGED));
        let gone = TableFiles {
            oid: None,
            files: BTreeMap::new(),
            identities: BTreeMap::new(),
        };
        assert!(drift(&before, &gone).is_some());
        for t in [before, gone] {
            assert_eq!(TableFiles::from_text(&t.to_text()), Some(t));
        }
        assert_eq!(TableFiles::from_text("garbage"), None);
    }
}

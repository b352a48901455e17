//! The publication the daemon streams, as it needs it: every rule's table, every action
//! (`insert, update, delete, truncate`), `publish_via_partition_root`, and no row filter or
//! column list on a mapped table. Each missing piece silently drops changes: a publication
//! without `delete` never streams a DELETE, a row filter drops the rows it filters.
//!
//! The daemon repairs only a publication it created, which it marks with a comment
//! ([`MANAGED_COMMENT`]): another consumer may share any other, and changing what it streams
//! would change that consumer's data. For those, start-up refuses with the SQL that fixes it.

use std::collections::BTreeSet;

use crate::mapping::quote_ident;

/// The comment on a publication the daemon created and may repair.
pub const MANAGED_COMMENT: &str = "managed by walcached: it adds tables and sets options";

/// What is wrong with a publication, as found in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// The comment marks it as the daemon's.
    pub managed: bool,
    /// Publish actions it lacks (`insert`, `update`, `delete`, `truncate`).
    pub missing_actions: Vec<&'static str>,
    /// `publish_via_partition_root` is off.
    pub not_via_root: bool,
    /// Rule tables it does not publish, as `(schema, table)`.
    pub missing_tables: Vec<(String, String)>,
    /// Rule tables published with a row filter or a column list.
    pub filtered_tables: Vec<(String, String)>,
    /// PostgreSQL 18 and later: a rule table has stored generated columns the publication does
    /// not publish (`publish_generated_columns = none`); under `REPLICA IDENTITY FULL` the
    /// application's own UPDATEs and DELETEs then fail.
    pub generated_unpublished: bool,
}

impl Drift {
    /// Nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing_actions.is_empty()
            && !self.not_via_root
            && self.missing_tables.is_empty()
            && self.filtered_tables.is_empty()
            && !self.generated_unpublished
    }

    /// Whether every rule's changes may have gone missing (an action or the partition root),
    /// rather than those of some tables.
    pub fn affects_every_table(&self) -> bool {
        !self.missing_actions.is_empty() || self.not_via_root || self.generated_unpublished
    }

    /// The tables whose changes may have gone missing (all when
    /// [`affects_every_table`](Self::affects_every_table)).
    pub fn affected_tables(&self) -> BTreeSet<(String, String)> {
        self.missing_tables
            .iter()
            .chain(&self.filtered_tables)
            .cloned()
            .collect()
    }

    /// What is wrong, in words (empty when nothing is).
    pub fn describe(&self, name: &str) -> String {
        let mut parts = Vec::new();
        if !self.missing_actions.is_empty() {
            parts.push(format!(
                "publishes no {} (those changes would never be invalidated)",
                self.missing_actions.join(", ")
            ));
        }
        if self.not_via_root {
            parts.push(
                "has publish_via_partition_root = false (rules on a partitioned table would not \
                 see its partitions' changes)"
                    .to_owned(),
            );
        }
        if self.generated_unpublished {
            parts.push(
                "does not publish stored generated columns (publish_generated_columns = none): \
                 a table under REPLICA IDENTITY FULL with one then refuses its own UPDATEs and \
                 DELETEs (\"Replica identity must not contain unpublished generated columns\")"
                    .to_owned(),
            );
        }
        if !self.missing_tables.is_empty() {
            parts.push(format!("does not publish {}", tables(&self.missing_tables)));
        }
        if !self.filtered_tables.is_empty() {
            parts.push(format!(
                "publishes {} with a row filter or a column list (the rows or columns left out \
                 would never be invalidated)",
                tables(&self.filtered_tables)
            ));
        }
        format!("publication {name} {}", parts.join("; "))
    }

    /// The SQL that repairs it, as one transaction.
    pub fn repair_sql(&self, name: &str) -> String {
        let p = quote_ident(name);
        let mut sql = vec!["BEGIN".to_owned()];
        if !self.missing_actions.is_empty() || self.not_via_root {
            sql.push(format!(
                "ALTER PUBLICATION {p} SET (publish = 'insert, update, delete, truncate', \
                 publish_via_partition_root = true)"
            ));
        }
        if self.generated_unpublished {
            sql.push(format!(
                "ALTER PUBLICATION {p} SET (publish_generated_columns = stored)"
            ));
        }
        for t in &self.filtered_tables {
            sql.push(format!("ALTER PUBLICATION {p} DROP TABLE {}", table(t)));
        }
        let add: Vec<String> = self
            .missing_tables
            .iter()
            .chain(&self.filtered_tables)
            .map(table)
            .collect();
        if !add.is_empty() {
            sql.push(format!(
                "ALTER PUBLICATION {p} ADD TABLE {}",
                add.join(", ")
            ));
        }
        sql.push("COMMIT".to_owned());
        sql.join("; ") + ";"
    }
}

fn table((schema, name): &(String, String)) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn tables(list: &[(String, String)]) -> String {
    list.iter().map(table).collect::<Vec<_>>().join(", ")
}

/// Read publication `name` against the rule tables `wanted` (`(schema, table)`); `None` if it
/// does not exist. Works on PostgreSQL 14 to 18 (row filters and column lists, 15+, are read
/// through `to_jsonb`).
///
/// # Errors
///
/// Catalog queries that fail.
pub async fn inspect(
    client: &tokio_postgres::Client,
    name: &str,
    wanted: &[(String, String)],
) -> Result<Option<Drift>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot, \
                    coalesce(obj_description(p.oid, 'pg_publication'), ''), \
                    coalesce(to_jsonb(p) ->> 'pubgencols', 's') \
             FROM pg_publication p WHERE pubname = $1",
            &[&name],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut drift = Drift {
        managed: row.try_get::<_, String>(5)? == MANAGED_COMMENT,
        not_via_root: !row.try_get::<_, bool>(4)?,
        ..Drift::default()
    };
    // 18's `pubgencols` ('n' none, 's' stored); absent before 18, where generated columns are
    // never published and never part of an old row.
    if row.try_get::<_, String>(6)? != "s" {
        let names: Vec<String> = wanted.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        drift.generated_unpublished = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute a \
                   JOIN pg_class c ON c.oid = a.attrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   WHERE n.nspname || '.' || c.relname = ANY($1) \
                     AND a.attgenerated = 's' AND a.attnum > 0 AND NOT a.attisdropped)",
                &[&names],
            )
            .await?
            .try_get(0)?;
    }
    for (i, action) in ["insert", "update", "delete", "truncate"]
        .into_iter()
        .enumerate()
    {
        if !row.try_get::<_, bool>(i)? {
            drift.missing_actions.push(action);
        }
    }
    let published: BTreeSet<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1",
            &[&name],
        )
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let filtered: BTreeSet<(String, String)> = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_publication_rel pr \
             JOIN pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_class c ON c.oid = pr.prrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 \
               AND (to_jsonb(pr) ->> 'prqual' IS NOT NULL \
                    OR to_jsonb(pr) ->> 'prattrs' IS NOT NULL)",
            &[&name],
        )
        .await?
        .into_iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    for t in wanted {
        if !published.contains(t) {
            drift.missing_tables.push(t.clone());
        } else if filtered.contains(t) {
            drift.filtered_tables.push(t.clone());
        }
    }
    Ok(Some(drift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repair_is_one_transaction_naming_every_piece() {
        let t = |s: &str| ("public".to_owned(), s.to_owned());
        let drift = Drift {
            managed: true,
            missing_actions: vec!["delete"],
            not_via_root: false,
            missing_tables: vec![t("a")],
            filtered_tables: vec![t("b")],
            generated_unpublished: false,
        };
        assert!(!drift.is_empty());
        assert_eq!(
            drift.repair_sql("walcached"),
            "BEGIN; ALTER PUBLICATION \"walcached\" SET (publish = 'insert, update, delete, \
             truncate', publish_via_partition_root = true); ALTER PUBLICATION \"walcached\" DROP \
             TABLE \"public\".\"b\"; ALTER PUBLICATION \"walcached\" ADD TABLE \
             \"public\".\"a\", \"public\".\"b\"; COMMIT;"
        );
        let text = drift.describe("walcached");
        assert!(text.contains("publishes no delete"), "{text}");
        assert!(text.contains("does not publish \"public\".\"a\""), "{text}");
        assert!(drift.affects_every_table());
        assert!(Drift::default().is_empty());
    }
}

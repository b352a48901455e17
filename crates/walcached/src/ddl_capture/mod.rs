//! DDL capture: statements that change rows without row events, announced in the WAL in
//! commit order (docs/adr/0010-ddl-capture.md).
//!
//! `walcached ddl-capture install` (as a superuser) installs, in the schema `walcache`:
//!
//! - two event triggers, `walcache_ddl_command_end` and `walcache_sql_drop`, that announce
//!   every table and publication a command created, altered or dropped;
//! - a statement-level `AFTER TRUNCATE` trigger, `walcache_truncate`, on every partition of
//!   every rule's table (pgoutput sends no TRUNCATE of a partition when the publication
//!   publishes via the root), added to later partitions by the event trigger.
//!
//! All are enabled `ALWAYS`, so they fire under `session_replication_role = replica` too
//! (restores and migration tools), and none ever raises: a failure is a `WARNING` and the
//! application's statement goes through. Each announcement is one transactional logical
//! decoding message, prefix [`MESSAGE_PREFIX`], content JSON ([`Announcement`]), which the
//! daemon decodes at its transaction's commit and turns into namespace flushes.
//!
//! Without them, the catalog check (`stream.catalog_interval_ms`) is the bound on drift.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::config::Config;
use crate::mapping::quote_ident;

/// The prefix of walcache's logical decoding messages; messages with any other prefix are
/// another application's and are ignored.
pub const MESSAGE_PREFIX: &str = "walcache";

/// The largest announcement decoded, in bytes of content (a `DROP SCHEMA … CASCADE` of
/// thousands of tables fits). A larger one is not read: every namespace is flushed instead.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The announcement format's version this daemon reads (`"v"`).
pub const VERSION: u32 = 1;

/// The install script (idempotent; run in one transaction).
const INSTALL_SQL: &str = include_str!("install.sql");

/// The names of the event triggers.
const EVENT_TRIGGERS: [&str; 2] = ["walcache_ddl_command_end", "walcache_sql_drop"];

/// One announcement: what a statement did to which relations.
///
/// As written by the triggers: `{"v": 1, "event": "ddl" | "drop" | "truncate", "tag":
/// "ALTER TABLE", "objects": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Announcement {
    /// The format's version ([`VERSION`]).
    pub v: u32,
    /// `ddl` (a command ended), `drop` (objects dropped) or `truncate` (a partition was
    /// truncated).
    pub event: String,
    /// The command tag (`CREATE TABLE`, `ALTER TABLE`, `DROP TABLE`, `TRUNCATE`, …).
    pub tag: String,
    /// The relations and publications concerned.
    pub objects: Vec<Object>,
}

/// A relation or publication named by an [`Announcement`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Object {
    /// A table (partitioned or not, or a partition).
    Table {
        /// Its oid.
        oid: u32,
        /// Its schema.
        schema: String,
        /// Its name.
        name: String,
        /// The oid of its partition tree's root (itself when not a partition); absent for a
        /// dropped table.
        #[serde(default)]
        root: Option<u32>,
        /// The root's schema.
        #[serde(default)]
        root_schema: Option<String>,
        /// The root's name.
        #[serde(default)]
        root_name: Option<String>,
    },
    /// A publication, or a table or schema added to or dropped from one.
    Publication {
        /// Its identity as PostgreSQL names it (`walcached`, `public.t in publication p`).
        name: String,
    },
    /// Anything newer this version does not know.
    #[serde(other)]
    Other,
}

/// Why an announcement could not be read. Every namespace is flushed instead: what it said
/// is unknown.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("the announcement is {0} bytes, over the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    /// Not the JSON this version writes.
    #[error("the announcement is not readable: {0}")]
    Json(#[from] serde_json::Error),
    /// A format version this daemon does not know.
    #[error("the announcement has format version {0}; this walcached reads version {VERSION}")]
    Version(u32),
}

impl Announcement {
    /// Read a message's content.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`]: too large, not JSON of this shape, or another version.
    pub fn decode(content: &[u8]) -> Result<Announcement, DecodeError> {
        if content.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(content.len()));
        }
        let a: Announcement = serde_json::from_slice(content)?;
        if a.v != VERSION {
            return Err(DecodeError::Version(a.v));
        }
        Ok(a)
    }

    /// A partition created empty: nothing cached can be wrong, only its oid is worth
    /// learning.
    pub fn creates_partition_only(&self) -> bool {
        self.tag == "CREATE TABLE"
            && self
                .objects
                .iter()
                .all(|o| matches!(o, Object::Table { oid, root: Some(root), .. } if root != oid))
    }

    /// Whether a publication is named (the daemon then checks its own at once).
    pub fn names_publication(&self) -> bool {
        self.objects
            .iter()
            .any(|o| matches!(o, Object::Publication { .. }))
    }
}

/// What `install` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The rules' tables recorded for partition coverage, `schema.table`.
    pub tables: Vec<String>,
    /// Partitions that carry the TRUNCATE trigger now.
    pub partitions: u64,
}

/// Why install or uninstall failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The role is not a superuser: only one may create event triggers.
    #[error(
        "role {0} is not a superuser, and only a superuser may create or drop event triggers; \
         run the command with --admin-url naming a superuser (the daemon itself needs no \
         superuser)"
    )]
    NotSuperuser(String),
    /// PostgreSQL refused a statement.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

async fn require_superuser(client: &tokio_postgres::Client) -> Result<(), InstallError> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    if row.get::<_, bool>(1) {
        Ok(())
    } else {
        Err(InstallError::NotSuperuser(row.get(0)))
    }
}

/// Install (or update) DDL capture for `config`'s rules, in one transaction: the functions,
/// the event triggers, the list of the rules' tables, and the TRUNCATE trigger on every
/// partition of them. Run again after adding a rule.
///
/// # Errors
///
/// [`InstallError::NotSuperuser`], or what PostgreSQL refused.
pub async fn install(
    client: &mut tokio_postgres::Client,
    config: &Config,
) -> Result<Installed, InstallError> {
    require_superuser(client).await?;
    let tables: BTreeSet<(String, String)> =
        config.rules.iter().map(|r| r.qualified_table()).collect();
    let tx = client.transaction().await?;
    tx.batch_execute(INSTALL_SQL).await?;
    tx.execute("DELETE FROM walcache.capture_tables", &[])
        .await?;
    for (schema, table) in &tables {
        tx.execute(
            "INSERT INTO walcache.capture_tables VALUES ($1, $2)",
            &[schema, table],
        )
        .await?;
    }
    tx.execute("SELECT walcache.cover_partitions()", &[])
        .await?;
    let partitions: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'walcache_truncate'",
            &[],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(Installed {
        tables: tables.iter().map(|(s, t)| format!("{s}.{t}")).collect(),
        partitions: u64::try_from(partitions).unwrap_or(0),
    })
}

/// Remove DDL capture: the event triggers, then the schema `walcache` with its functions and
/// every TRUNCATE trigger that uses them.
///
/// # Errors
///
/// [`InstallError::NotSuperuser`], or what PostgreSQL refused.
pub async fn uninstall(client: &mut tokio_postgres::Client) -> Result<(), InstallError> {
    require_superuser(client).await?;
    let tx = client.transaction().await?;
    for name in EVENT_TRIGGERS {
        tx.batch_execute(&format!(
            "DROP EVENT TRIGGER IF EXISTS {}",
            quote_ident(name)
        ))
        .await?;
    }
    tx.batch_execute("DROP SCHEMA IF EXISTS walcache CASCADE")
        .await?;
    tx.commit().await?;
    Ok(())
}

/// What the catalog shows of DDL capture, for `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presence {
    /// The event triggers present, with `evtenabled` (`A` is always, `O` origin/local only,
    /// `R` replica only, `D` disabled).
    pub event_triggers: Vec<(String, String)>,
    /// Rules' tables not in the capture list (rules added since install), `schema.table`.
    pub tables_not_listed: Vec<String>,
    /// Partitions of the rules' tables without an always-enabled TRUNCATE trigger.
    pub partitions_uncovered: Vec<String>,
}

impl Presence {
    /// Nothing installed.
    pub fn is_absent(&self) -> bool {
        self.event_triggers.is_empty()
    }

    /// Everything in place for these rules.
    pub fn is_complete(&self) -> bool {
        EVENT_TRIGGERS
            .iter()
            .all(|n| self.event_triggers.iter().any(|(e, s)| e == n && s == "A"))
            && self.tables_not_listed.is_empty()
            && self.partitions_uncovered.is_empty()
    }
}

/// Read what of DDL capture is installed for `config`'s rules. Reads only.
///
/// # Errors
///
/// What PostgreSQL refused.
pub async fn inspect(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Presence, tokio_postgres::Error> {
    let event_triggers = client
        .query(
            "SELECT evtname::text, evtenabled::text FROM pg_event_trigger \
             WHERE evtname = ANY($1) ORDER BY evtname",
            &[&EVENT_TRIGGERS.to_vec()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tables: BTreeSet<(String, String)> =
        config.rules.iter().map(|r| r.qualified_table()).collect();
    let names: Vec<String> = tables
        .iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect();
    let listed: bool = client
        .query_one(
            "SELECT to_regclass('walcache.capture_tables') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let mut tables_not_listed = Vec::new();
    if listed {
        for (schema, table) in &tables {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM walcache.capture_tables \
                     WHERE schema_name = $1 AND table_name = $2",
                    &[schema, table],
                )
                .await?
                .get(0);
            if n == 0 {
                tables_not_listed.push(format!("{schema}.{table}"));
            }
        }
    } else {
        tables_not_listed = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    }
    let partitions_uncovered = client
        .query(
            "SELECT t.relid::regclass::text FROM unnest($1::text[]) AS r(name) \
             CROSS JOIN LATERAL pg_partition_tree(to_regclass(r.name)) t \
             WHERE t.level > 0 AND NOT EXISTS (SELECT 1 FROM pg_trigger g \
                 WHERE g.tgrelid = t.relid AND g.tgname = 'walcache_truncate' \
                 AND g.tgenabled = 'A') \
             ORDER BY 1",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Presence {
        event_triggers,
        tables_not_listed,
        partitions_uncovered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_decode_as_the_triggers_write_them() {
        let a = Announcement::decode(
            br#"{"v": 1, "tag": "CREATE TABLE", "event": "ddl", "objects": [{"oid": 16437,
                "name": "ev_27", "root": 16384, "type": "table", "schema": "public",
                "root_name": "ev", "root_schema": "public"}]}"#,
        )
        .unwrap();
        assert!(a.creates_partition_only());
        assert!(!a.names_publication());
        let d = Announcement::decode(
            br#"{"v": 1, "tag": "DROP TABLE", "event": "drop", "objects": [{"oid": 16437,
                "name": "ev_27", "type": "table", "schema": "public"},
                {"type": "publication", "name": "walcached"}, {"type": "sequence"}]}"#,
        )
        .unwrap();
        assert!(!d.creates_partition_only());
        assert!(d.names_publication());
        assert_eq!(d.objects[2], Object::Other);
        let root = Announcement::decode(
            br#"{"v": 1, "tag": "CREATE TABLE", "event": "ddl", "objects": [{"oid": 7,
                "name": "t", "root": 7, "type": "table", "schema": "public"}]}"#,
        )
        .unwrap();
        assert!(!root.creates_partition_only(), "a table, not a partition");
    }

    #[test]
    fn hostile_or_foreign_content_is_an_error_never_a_panic() {
        assert!(matches!(
            Announcement::decode(b"\x00garbage"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            Announcement::decode(br#"{"v": 2, "event": "ddl", "tag": "x", "objects": []}"#),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            Announcement::decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(Announcement::decode(
            br#"{"v": 1, "event": "ddl", "tag": "x", "objects": [{"type": "table", "oid": -1}]}"#
        )
        .is_err());
    }
}

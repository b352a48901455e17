//! The control session's catalog work at start-up: rules against tables, the publication,
//! the slot's state, and the synchronous-standby guard.

use std::collections::{BTreeMap, BTreeSet};

use super::RunError;
use crate::config::{redact_url, Config, ConfigError};
use crate::connect::Postgres;
use crate::mapping::{self, CompiledRule, TableInfo};
use crate::publication;

/// Connect the control session (catalog reads, slot/publication management, visibility
/// checks), with the same TLS settings as the replication connection.
pub(super) async fn sql_client(
    postgres: &Postgres,
    config: &Config,
) -> Result<tokio_postgres::Client, RunError> {
    postgres.connect("walcached-control").await.map_err(|e| {
        RunError::postgres(
            format!("connecting to {}", redact_url(config.postgres.url.expose())),
            e,
        )
    })
}

/// Every rule checked against the catalog at start-up ([`compile_rules`]).
#[derive(Debug)]
pub struct Compiled {
    /// One per rule, in configuration order: compiled, or the rule's
    /// [`uncompiled`](CompiledRule::uncompiled) stand-in where its table does not fit it.
    pub rules: Vec<CompiledRule>,
    /// Why each rule with a stand-in does not fit its table, by rule index.
    pub unfit: BTreeMap<usize, ConfigError>,
}

/// Check every rule against the catalog. A rule its table does not fit (gone, a template
/// column missing, the replica identity too narrow) gets a stand-in and its reason: a first
/// start refuses it, a restart runs with it broken ([`super::run_with`]).
///
/// # Errors
///
/// Catalog queries that fail.
pub async fn compile_rules(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Compiled, RunError> {
    let mut compiled = Compiled {
        rules: Vec::new(),
        unfit: BTreeMap::new(),
    };
    for i in 0..config.rules.len() {
        match compile_rule(client, config, i)
            .await
            .map_err(|e| RunError::postgres("reading the catalog", e))?
        {
            Ok(rule) => compiled.rules.push(rule),
            Err(e) => {
                compiled
                    .rules
                    .push(CompiledRule::uncompiled(&config.rules[i]));
                compiled.unfit.insert(i, e);
            }
        }
    }
    Ok(compiled)
}

/// Rule `i` checked against its table as the catalog shows it now: compiled, or why the
/// table does not fit it (the error names the field and the fix).
///
/// # Errors
///
/// Catalog queries that fail.
pub(super) async fn compile_rule(
    client: &tokio_postgres::Client,
    config: &Config,
    i: usize,
) -> Result<Result<CompiledRule, ConfigError>, tokio_postgres::Error> {
    let rule = &config.rules[i];
    let (schema, table) = rule.qualified_table();
    let Some(info) = TableInfo::load(client, &schema, &table).await? else {
        return Ok(Err(ConfigError::new(
            format!("rules[{i}].table"),
            format!(
                "table {schema}.{table} does not exist (or is not a table) in the database of \
                 postgres.url"
            ),
        )));
    };
    Ok(mapping::compile(rule, i, &info))
}

/// A logical consumer matched by `synchronous_standby_names` becomes a synchronous standby:
/// every commit in the database would then wait on the daemon. Refuse to start.
pub(super) async fn refuse_synchronous_standby(
    client: &tokio_postgres::Client,
) -> Result<(), RunError> {
    let setting: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .map_err(|e| RunError::postgres("reading synchronous_standby_names", e))?
        .get(0);
    if crate::check::standby_names_match(&setting, walcache_cdc::client::APPLICATION_NAME) {
        return Err(RunError::Config(ConfigError::new(
            "synchronous_standby_names",
            format!(
                "the server's setting {setting:?} matches the daemon's application_name \"{}\": \
                 it would become a synchronous standby and every commit would wait on it; name \
                 the real standbys instead of '*' (ALTER SYSTEM SET synchronous_standby_names = \
                 ...; SELECT pg_reload_conf();)",
                walcache_cdc::client::APPLICATION_NAME
            ),
        )));
    }
    Ok(())
}

/// What start-up does to the publication: the SQL to run (none when it is as the daemon needs
/// it) and the rules whose changes it may have dropped until now (their namespaces and tags
/// owe a flush, recorded before the SQL runs).
pub(super) struct PublicationPlan {
    sql: Option<String>,
    /// Indexes into the rules.
    pub(super) affected_rules: Vec<usize>,
}

impl PublicationPlan {
    /// Nothing to do.
    pub(super) fn none() -> Self {
        PublicationPlan {
            sql: None,
            affected_rules: Vec::new(),
        }
    }

    /// Run the SQL.
    pub(super) async fn apply(
        &self,
        client: &tokio_postgres::Client,
        name: &str,
    ) -> Result<(), RunError> {
        if let Some(sql) = &self.sql {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| RunError::postgres(format!("setting up publication {name}"), e))?;
            tracing::warn!(publication = %name, %sql, "set up the publication; the rules whose changes it may have dropped are flushed");
        }
        Ok(())
    }
}

/// What the publication needs, as [`plan_publication`] found it.
pub(super) enum Planned {
    /// Nothing, or SQL the daemon may run: the publication is missing or the daemon's own.
    Repair(PublicationPlan),
    /// Another consumer's publication does not publish what the rules need: the daemon must
    /// not change it.
    Foreign {
        /// What is wrong and the SQL that fixes it, for the operator.
        error: ConfigError,
        /// Indexes of the rules whose changes it drops.
        affected_rules: Vec<usize>,
    },
}

impl Planned {
    /// The rules whose changes the publication drops, by index.
    pub(super) fn affected_rules(&self) -> &[usize] {
        match self {
            Planned::Repair(plan) => &plan.affected_rules,
            Planned::Foreign { affected_rules, .. } => affected_rules,
        }
    }
}

/// What the publication needs for the rules that fit their tables, and the rules that do not
/// fit whose changes it does not publish (`unfit` by index: their tables are never added — a
/// table without a usable replica identity, once published, makes the application's own
/// UPDATEs and DELETEs fail — so their changes are missed and their namespaces go out of
/// service).
///
/// # Errors
///
/// Catalog queries that fail.
pub(super) async fn plan_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    rules: &[CompiledRule],
    unfit: &BTreeSet<usize>,
) -> Result<(Planned, Vec<usize>), RunError> {
    let all = inspect_publication(client, config, rules, &BTreeSet::new()).await?;
    let unpublished: Vec<usize> = all
        .affected_rules()
        .iter()
        .copied()
        .filter(|i| unfit.contains(i))
        .collect();
    if unpublished.is_empty() {
        return Ok((all, unpublished));
    }
    let fit = inspect_publication(client, config, rules, unfit).await?;
    Ok((fit, unpublished))
}

/// Decide what the publication needs ([`crate::publication`]) for the rules not in `skip`:
/// created if missing (marked as the daemon's, `publish_via_partition_root`); repaired if it is
/// the daemon's. Another consumer's publication that does not fit is an answer naming the
/// rules it fails: their namespaces go out of service (at start-up, only once the daemon has
/// streamed from this database: a first start refuses it with the fix).
async fn inspect_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    rules: &[CompiledRule],
    skip: &BTreeSet<usize>,
) -> Result<Planned, RunError> {
    let name = &config.postgres.publication;
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (_, r) in rules.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        if !wanted.contains(&r.table) {
            wanted.push(r.table.clone());
        }
    }
    let drift = publication::inspect(client, name, &wanted)
        .await
        .map_err(|e| RunError::postgres("reading the publication", e))?;
    let quoted = mapping::quote_ident(name);
    let Some(drift) = drift else {
        let list: Vec<String> = wanted
            .iter()
            .map(|(s, t)| format!("{}.{}", mapping::quote_ident(s), mapping::quote_ident(t)))
            .collect();
        // PostgreSQL 18 publishes no generated column by default, and a table under REPLICA
        // IDENTITY FULL with a stored one then refuses its own UPDATEs once published.
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| RunError::postgres("reading the server version", e))?
            .get(0);
        let generated = if version >= 180_000 {
            ", publish_generated_columns = stored"
        } else {
            ""
        };
        // With every rule's table unfit, a publication of no table for now (the repair adds
        // them once they fit).
        let tables = if list.is_empty() {
            String::new()
        } else {
            format!(" FOR TABLE {}", list.join(", "))
        };
        return Ok(Planned::Repair(PublicationPlan {
            sql: Some(format!(
                "BEGIN; CREATE PUBLICATION {quoted}{tables} WITH \
                 (publish_via_partition_root = true{generated}); COMMENT ON PUBLICATION \
                 {quoted} IS {}; COMMIT;",
                crate::check::quote_literal(publication::MANAGED_COMMENT)
            )),
            // A slot that already existed streamed nothing of these tables before.
            affected_rules: (0..rules.len()).filter(|i| !skip.contains(i)).collect(),
        }));
    };
    if drift.is_empty() {
        return Ok(Planned::Repair(PublicationPlan {
            sql: None,
            affected_rules: Vec::new(),
        }));
    }
    let affected = drift.affected_tables();
    let affected_rules = rules
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            !skip.contains(i) && (drift.affects_every_table() || affected.contains(&r.table))
        })
        .map(|(i, _)| i)
        .collect();
    if !drift.managed {
        return Ok(Planned::Foreign {
            error: ConfigError::new(
                "postgres.publication",
                format!(
                    "{}. walcached repairs only a publication it created (another consumer may \
                 share this one): run {} or let walcached manage it (COMMENT ON PUBLICATION \
                 {quoted} IS {};), or set postgres.publication to a new name",
                    drift.describe(name),
                    drift.repair_sql(name),
                    crate::check::quote_literal(publication::MANAGED_COMMENT)
                ),
            ),
            affected_rules,
        });
    }
    Ok(Planned::Repair(PublicationPlan {
        sql: Some(drift.repair_sql(name)),
        affected_rules,
    }))
}

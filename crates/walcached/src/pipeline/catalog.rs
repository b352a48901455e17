//! The control session's catalog work at start-up: rules against tables, the publication,
//! the slot's state, and the synchronous-standby guard.

use super::RunError;
use crate::config::{redact_url, Config, ConfigError};
use crate::connect::Postgres;
use crate::mapping::{self, CompiledRule, TableInfo};

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

/// Check every rule against the catalog.
///
/// # Errors
///
/// The first rule that does not fit its table.
pub async fn compile_rules(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Vec<CompiledRule>, RunError> {
    let mut compiled = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let (schema, table) = rule.qualified_table();
        let info = TableInfo::load(client, &schema, &table)
            .await
            .map_err(|e| RunError::postgres("reading the catalog", e))?
            .ok_or_else(|| {
                ConfigError::new(
                    format!("rules[{i}].table"),
                    format!(
                        "table {schema}.{table} does not exist (or is not a table) in the \
                         database of postgres.url"
                    ),
                )
            })?;
        compiled.push(mapping::compile(rule, i, &info)?);
    }
    Ok(compiled)
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
                "the server's setting {setting:?} matches the daemon's application_name                  \"{}\": it would become a synchronous standby and every commit would wait on                  it; name the real standbys instead of '*' (ALTER SYSTEM SET                  synchronous_standby_names = ...; SELECT pg_reload_conf();)",
                walcache_cdc::client::APPLICATION_NAME
            ),
        )));
    }
    Ok(())
}

/// Create the publication if missing (publish_via_partition_root, so rules on a partitioned
/// parent see its partitions' changes), and add rule tables it lacks.
pub(super) async fn ensure_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    rules: &[CompiledRule],
) -> Result<(), RunError> {
    let name = &config.postgres.publication;
    let tables: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                mapping::quote_ident(&r.table.0),
                mapping::quote_ident(&r.table.1)
            )
        })
        .collect();
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(|e| RunError::postgres("reading publications", e))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                mapping::quote_ident(name),
                tables.join(", ")
            ))
            .await
            .map_err(|e| RunError::postgres(format!("creating publication {name}"), e))?;
        tracing::info!(publication = %name, "created the publication");
        return Ok(());
    }
    for (rule, quoted) in rules.iter().zip(&tables) {
        let covered = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[name, &rule.table.0, &rule.table.1],
            )
            .await
            .map_err(|e| RunError::postgres("reading publication tables", e))?
            .is_some();
        if !covered {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {quoted}",
                    mapping::quote_ident(name)
                ))
                .await
                .map_err(|e| {
                    RunError::postgres(format!("adding {quoted} to publication {name}"), e)
                })?;
            tracing::info!(publication = %name, table = %quoted, "added a table to the publication");
        }
    }
    Ok(())
}

//! `walcached check`: the prerequisites the daemon needs from PostgreSQL and Redis, each
//! reported with what was found and, where something is wrong, the fix.
//!
//! The checks only read: they never create the slot or the publication, change a setting or
//! write to Redis. A check that cannot run because an earlier one failed (no connection) is
//! left out rather than reported as a second problem.

mod redis;

use std::fmt;
use std::time::Duration;

use walcache_cdc::client::{ReplicationClient, APPLICATION_NAME};

use crate::config::{redact_url, Config};
use crate::mapping::{self, quote_ident, TableInfo};

/// How long each connection attempt and each Redis command may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Severity {
    /// The prerequisite holds.
    Ok,
    /// Worth knowing, but the daemon can run.
    Warning,
    /// The daemon would refuse to start, or would run incorrectly.
    Problem,
}

/// One line of a [`Report`].
#[derive(Debug, Clone)]
pub struct Finding {
    /// How it counts.
    pub severity: Severity,
    /// The configuration field or the server setting concerned (`postgres.url`,
    /// `rules[0].keys[1]`, `wal_level`, `redis maxmemory-policy`).
    pub subject: String,
    /// What was found.
    pub message: String,
    /// How to fix it, for warnings and problems.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Problem => "problem",
        };
        write!(f, "{label:<8} {}: {}", self.subject, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Everything `check` found, in the order checked.
#[derive(Debug, Clone, Default)]
pub struct Report {
    findings: Vec<Finding>,
}

impl Report {
    /// No finding is a [`Severity::Problem`] (warnings are allowed).
    pub fn is_ok(&self) -> bool {
        self.findings
            .iter()
            .all(|f| f.severity != Severity::Problem)
    }

    /// The findings, in the order checked.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    fn ok(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Ok, subject, message, None);
    }

    fn warn(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Warning, subject, message, Some(fix.into()));
    }

    fn problem(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.push(Severity::Problem, subject, message, fix);
    }

    fn push(
        &mut self,
        severity: Severity,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.findings.push(Finding {
            severity,
            subject: subject.into(),
            message: message.into(),
            fix,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Check every prerequisite of `config` against the servers it names.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    check_postgres(config, &mut report).await;
    redis::check_redis(config, &mut report).await;
    redis::check_redis_memory(config, &mut report).await;
    check_signing(config, &mut report);
    report
}

/// Whether messages are signed, with which key, and whether the key file is private.
fn check_signing(config: &Config, report: &mut Report) {
    use crate::signing::{loose_permissions, KeySource, KEYS_ENV};
    let Some(keys) = &config.security.signing_keys else {
        report.warn(
            "security.signing_keys_file",
            format!(
                "not set, nor {KEYS_ENV}: messages are published unsigned, so every service \
                 must accept them explicitly (allow_unsigned()) and anyone who can PUBLISH on \
                 the invalidation channel can forge invalidations and heartbeats"
            ),
            "generate a key (`echo \"k1:$(openssl rand -hex 32)\" > FILE; chmod 600 FILE`), \
             give the same file to the services, and set security.signing_keys_file = \"FILE\"",
        );
        return;
    };
    let ids = keys.keyring.ids().join(", ");
    let signer = keys.keyring.signer().id();
    match &keys.source {
        KeySource::Env => report.ok(
            KEYS_ENV,
            format!(
                "messages are signed with key {signer} (keys {ids}); keys from the environment \
                 rotate only with a restart (security.signing_keys_file rotates without one)"
            ),
        ),
        KeySource::File(path) => {
            report.ok(
                "security.signing_keys_file",
                format!(
                    "{}: messages are signed with key {signer} (keys {ids}); the file is read \
                     again when it changes",
                    path.display()
                ),
            );
            match loose_permissions(path) {
                Some(mode) => report.warn(
                    "signing key file permissions",
                    format!(
                        "{} has mode {mode:04o}: its group or others may read it, and whoever \
                         reads it can forge invalidations",
                        path.display()
                    ),
                    format!("chmod 600 {} (owned by the daemon's user)", path.display()),
                ),
                None => report.ok(
                    "signing key file permissions",
                    format!("{} is readable by its owner only", path.display()),
                ),
            }
        }
    }
}

/// An error and its sources, `outer: inner: innermost`, skipping a source whose text the
/// outer message already contains.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// A string literal for SQL.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn check_postgres(config: &Config, report: &mut Report) {
    let url = redact_url(config.postgres.url.expose());
    let postgres = match crate::connect::Postgres::from_config(config) {
        Ok(p) => p,
        Err(e) => {
            report.problem("postgres.url", e.problem, None);
            return;
        }
    };
    let client = match postgres.connect(&format!("{APPLICATION_NAME}-check")).await {
        Ok(client) => client,
        Err(e) => {
            report.problem(
                "postgres.url",
                format!("cannot connect to {url}: {}", chain(&e)),
                Some(
                    "check the host, port, user and database, and pg_hba.conf; set the password \
                     with WALCACHED_POSTGRES_PASSWORD or postgres.password_file"
                        .to_owned(),
                ),
            );
            return;
        }
    };
    if let Err(e) = check_database(config, &postgres, &client, report).await {
        report.problem(
            "postgres.url",
            format!("a catalog query failed: {}", chain(&e)),
            None,
        );
    }
}

async fn show(
    client: &tokio_postgres::Client,
    setting: &str,
) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
    row.try_get(0)
}

async fn check_database(
    config: &Config,
    pg: &crate::connect::Postgres,
    client: &tokio_postgres::Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, \
                    current_setting('server_version')",
            &[],
        )
        .await?;
    let (user, database, version): (String, String, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    report.ok(
        "postgres.url",
        format!(
            "connected to PostgreSQL {version} at {} as {user}",
            redact_url(config.postgres.url.expose())
        ),
    );

    let wal_level = show(client, "wal_level").await?;
    if wal_level == "logical" {
        report.ok("wal_level", "logical");
    } else {
        report.problem(
            "wal_level",
            format!("is {wal_level:?}; logical decoding needs \"logical\""),
            Some("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL".to_owned()),
        );
    }

    let can_replicate: bool = client
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .try_get(0)?;
    let role = quote_ident(&user);
    if can_replicate {
        report.ok(
            "postgres role",
            format!("{user} may open replication connections"),
        );
        check_replication_connection(pg, report).await;
    } else {
        report.problem(
            "postgres role",
            format!("{user} has neither REPLICATION nor SUPERUSER"),
            Some(format!("ALTER ROLE {role} REPLICATION;")),
        );
    }

    for setting in ["max_replication_slots", "max_wal_senders"] {
        let value = show(client, setting).await?;
        if value.trim().parse::<u64>().unwrap_or(0) > 0 {
            report.ok(setting, value);
        } else {
            report.problem(
                setting,
                format!("is {value}; the daemon needs one"),
                Some(format!(
                    "ALTER SYSTEM SET {setting} = 10; then restart PostgreSQL"
                )),
            );
        }
    }

    let standbys = show(client, "synchronous_standby_names").await?;
    if standby_names_match(&standbys, APPLICATION_NAME) {
        report.problem(
            "synchronous_standby_names",
            format!(
                "{standbys:?} matches the daemon's application_name {APPLICATION_NAME:?}: \
                 a logical consumer would become a synchronous standby and every commit in the \
                 database would wait on the daemon"
            ),
            Some(format!(
                "remove {APPLICATION_NAME} (or '*') from synchronous_standby_names, e.g. list \
                 the physical standbys by name, then SELECT pg_reload_conf();"
            )),
        );
    } else {
        report.ok(
            "synchronous_standby_names",
            format!("{standbys:?} does not match {APPLICATION_NAME:?}"),
        );
    }

    let tables = check_rules(config, client, &role, report).await?;
    check_publication(config, client, (&database, &role), &tables, report).await?;
    check_slot(config, client, &database, report).await?;
    check_ddl_capture(config, client, report).await?;
    Ok(())
}

/// DDL capture (optional): present and complete, or the drift bound it leaves.
async fn check_ddl_capture(
    config: &Config,
    client: &tokio_postgres::Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let presence = crate::ddl_capture::inspect(client, config).await?;
    let interval = config.stream.catalog_interval_ms;
    const INSTALL: &str =
        "walcached ddl-capture install --config FILE --admin-url postgres://SUPERUSER@HOST/DB";
    if presence.is_complete() {
        report.ok(
            "ddl capture",
            "installed: DDL and partition TRUNCATEs on the rules' tables are flushed in commit \
             order",
        );
    } else if presence.is_absent() {
        report.warn(
            "ddl capture",
            format!(
                "not installed: DDL and partition TRUNCATEs that change rows without row events \
                 are caught by the catalog check, up to {interval} ms later"
            ),
            format!("to flush them in commit order, run {INSTALL}"),
        );
    } else {
        let mut gaps = Vec::new();
        for (name, enabled) in &presence.event_triggers {
            if enabled != "A" {
                gaps.push(format!(
                    "event trigger {name} is enabled {enabled:?}, not ALWAYS (it stays silent \
                     under some session_replication_role)"
                ));
            }
        }
        if presence.event_triggers.len() < 2 {
            gaps.push("an event trigger is missing".to_owned());
        }
        if !presence.tables_not_listed.is_empty() {
            gaps.push(format!(
                "tables added since it was installed: {}",
                presence.tables_not_listed.join(", ")
            ));
        }
        if !presence.partitions_uncovered.is_empty() {
            gaps.push(format!(
                "partitions without the TRUNCATE trigger: {}",
                presence.partitions_uncovered.join(", ")
            ));
        }
        report.warn(
            "ddl capture",
            format!(
                "incomplete: {}; what it misses is caught by the catalog check, up to \
                 {interval} ms later",
                gaps.join("; ")
            ),
            format!("run {INSTALL} again"),
        );
    }
    Ok(())
}

/// Open (and close) a replication connection, as the daemon will: catches a `pg_hba.conf`
/// without a `replication` line.
async fn check_replication_connection(postgres: &crate::connect::Postgres, report: &mut Report) {
    let config = match postgres.replication() {
        Ok(c) => c,
        Err(e) => {
            report.problem("postgres.url", e.problem, None);
            return;
        }
    };
    match ReplicationClient::connect(&config).await {
        Ok(mut client) => {
            match client.identify_system().await {
                Ok(system) => report.ok(
                    "replication connection",
                    format!("opened (timeline {})", system.timeline),
                ),
                Err(e) => report.problem("replication connection", chain(&e), None),
            }
            if let Err(e) = client.close().await {
                tracing::debug!(error = %e, "check: closing the replication connection");
            }
        }
        Err(e) => report.problem(
            "replication connection",
            format!("cannot open one: {}", chain(&e)),
            Some(
                "allow it in pg_hba.conf with a line for the \"replication\" database, e.g. \
                 host replication <user> <address> scram-sha-256, then SELECT pg_reload_conf();"
                    .to_owned(),
            ),
        ),
    }
}

/// Check each rule against its table; return the tables found, each with the field that
/// names it.
async fn check_rules(
    config: &Config,
    client: &tokio_postgres::Client,
    role: &str,
    report: &mut Report,
) -> Result<Vec<(String, TableInfo)>, tokio_postgres::Error> {
    let mut tables = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let field = format!("rules[{i}].table");
        let (schema, table) = rule.qualified_table();
        let Some(info) = TableInfo::load(client, &schema, &table).await? else {
            report.problem(
                field,
                format!("table {schema}.{table} does not exist (or is not a table)"),
                Some("create it, or correct the name (schema.table)".to_owned()),
            );
            continue;
        };
        match mapping::compile(rule, i, &info) {
            Ok(_) => report.ok(
                &field,
                format!(
                    "{} maps to namespace {:?} with {} key template(s)",
                    info.quoted(),
                    rule.namespace,
                    rule.keys.len()
                ),
            ),
            Err(e) => report.problem(e.field, e.problem, None),
        }
        let can_select: bool = client
            .query_one(
                "SELECT has_table_privilege(current_user, $1::int8::oid, 'SELECT')",
                &[&i64::from(info.oid)],
            )
            .await?
            .try_get(0)?;
        if !can_select {
            report.problem(
                &field,
                format!("the role cannot SELECT from {}", info.quoted()),
                Some(format!("GRANT SELECT ON {} TO {role};", info.quoted())),
            );
        }
        tables.push((field, info));
    }
    Ok(tables)
}

async fn check_publication(
    config: &Config,
    client: &tokio_postgres::Client,
    (database, role): (&str, &str),
    tables: &[(String, TableInfo)],
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let name = &config.postgres.publication;
    let quoted = quote_ident(name);
    let wanted: Vec<(String, String)> = tables
        .iter()
        .map(|(_, t)| (t.schema.clone(), t.name.clone()))
        .collect();
    let Some(drift) = crate::publication::inspect(client, name, &wanted).await? else {
        let can_create: bool = client
            .query_one(
                "SELECT has_database_privilege(current_user, current_database(), 'CREATE')",
                &[],
            )
            .await?
            .try_get(0)?;
        if can_create {
            report.ok(
                "postgres.publication",
                format!("{name} does not exist yet; it will be created at start-up"),
            );
        } else {
            report.problem(
                "postgres.publication",
                format!(
                    "{name} does not exist, and the role may not create it (no CREATE privilege \
                     on database {database})"
                ),
                Some(format!(
                    "GRANT CREATE ON DATABASE {} TO {role}; or create it as an \
                     owner of the tables: CREATE PUBLICATION {quoted} FOR TABLE {} WITH \
                     (publish_via_partition_root = true);",
                    quote_ident(database),
                    table_list(tables.iter().map(|(_, t)| t))
                )),
            );
        }
        return Ok(());
    };
    if drift.is_empty() {
        report.ok(
            "postgres.publication",
            format!(
                "{name} publishes every rule's table, every action, via the partition root, \
                 without row filters or column lists"
            ),
        );
    } else if drift.managed {
        report.ok(
            "postgres.publication",
            format!(
                "{}; walcached created it and repairs it at start-up, flushing the rules whose \
                 changes it dropped",
                drift.describe(name)
            ),
        );
    } else {
        report.problem(
            "postgres.publication",
            format!(
                "{}; walcached repairs only a publication it created (another consumer may \
                 share this one), so it will not start",
                drift.describe(name)
            ),
            Some(format!(
                "{} or let walcached manage it: COMMENT ON PUBLICATION {quoted} IS {};",
                drift.repair_sql(name),
                quote_literal(crate::publication::MANAGED_COMMENT)
            )),
        );
    }
    Ok(())
}

fn table_list<'a>(tables: impl Iterator<Item = &'a TableInfo>) -> String {
    tables.map(TableInfo::quoted).collect::<Vec<_>>().join(", ")
}

async fn check_slot(
    config: &Config,
    client: &tokio_postgres::Client,
    database: &str,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let name = &config.postgres.slot;
    let Some(row) = client
        .query_opt(
            "SELECT slot_type::text, plugin::text, wal_status::text, database::text, \
                    slot_type = 'logical' AND confirmed_flush_lsn IS NULL, active_pid \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[name],
        )
        .await?
    else {
        report.ok(
            "postgres.slot",
            format!("{name} does not exist yet; it will be created at start-up"),
        );
        check_slot_blockers(name, client, None, report).await?;
        return Ok(());
    };
    let slot_type: Option<String> = row.try_get(0)?;
    let plugin: Option<String> = row.try_get(1)?;
    let wal_status: Option<String> = row.try_get(2)?;
    let slot_db: Option<String> = row.try_get(3)?;
    let creating: Option<bool> = row.try_get(4)?;
    let creator: Option<i32> = row.try_get(5)?;
    if creating == Some(true) {
        // A logical slot without a confirmed position is still being created (a daemon's
        // CREATE_REPLICATION_SLOT waiting for running transactions): it does not exist yet.
        report.ok(
            "postgres.slot",
            format!(
                "{name} is being created (by server process {})",
                creator.map_or_else(|| "?".to_owned(), |p| p.to_string())
            ),
        );
        check_slot_blockers(name, client, creator, report).await?;
        return Ok(());
    }
    let drop = format!(
        "SELECT pg_drop_replication_slot({}); (the daemon creates a new one and flushes the \
         namespaces it serves), or set postgres.slot to another name",
        quote_literal(name)
    );
    if slot_type.as_deref() != Some("logical") || plugin.as_deref() != Some("pgoutput") {
        report.problem(
            "postgres.slot",
            format!(
                "{name} exists but is a {} slot with plugin {}; the daemon needs a logical slot \
                 with pgoutput",
                slot_type.as_deref().unwrap_or("?"),
                plugin.as_deref().unwrap_or("(none)")
            ),
            Some(drop),
        );
    } else if slot_db.as_deref() != Some(database) {
        report.problem(
            "postgres.slot",
            format!(
                "{name} belongs to database {}, not {database}",
                slot_db.as_deref().unwrap_or("?")
            ),
            Some("set postgres.slot to another name".to_owned()),
        );
    } else if wal_status.as_deref() == Some("lost") {
        report.problem(
            "postgres.slot",
            format!("{name} has lost WAL it needed (wal_status = lost); it cannot stream"),
            Some(format!(
                "{drop}; raise max_slot_wal_keep_size so it does not happen again"
            )),
        );
    } else if wal_status.as_deref() == Some("unreserved") {
        report.warn(
            "postgres.slot",
            format!("{name} is about to lose WAL it needs (wal_status = unreserved)"),
            "start the daemon soon, or raise max_slot_wal_keep_size",
        );
    } else {
        report.ok(
            "postgres.slot",
            format!(
                "{name} is a pgoutput slot (wal_status = {})",
                wal_status.as_deref().unwrap_or("?")
            ),
        );
    }
    Ok(())
}

/// One warning per transaction that creating the slot waits for (none when nothing would
/// hold it up). `creator` is the walsender creating it, if one is.
async fn check_slot_blockers(
    name: &str,
    client: &tokio_postgres::Client,
    creator: Option<i32>,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let exclude: Vec<i32> = creator.into_iter().collect();
    for blocker in crate::slot::blockers(client, &exclude).await? {
        report.warn(
            "postgres.slot",
            format!(
                "creating {name} will wait for {blocker} to end (the daemon gives up after {} s \
                 and exits 1)",
                crate::slot::MAX_WAIT.as_secs()
            ),
            blocker.fix(),
        );
    }
    Ok(())
}

/// Whether `synchronous_standby_names` names `application_name` (or `*`), in any of its
/// forms: `a, b`, `FIRST n (a, b)`, `n (a, b)`, `ANY n (a, b)`. PostgreSQL compares standby
/// names case-insensitively, double-quoted or not.
pub fn standby_names_match(setting: &str, application_name: &str) -> bool {
    let mut list = setting.trim();
    if let Some(open) = list.find('(') {
        // `[FIRST|ANY] n (names)`: keep what is inside the parentheses.
        let inner = &list[open + 1..];
        list = inner.rsplit_once(')').map_or(inner, |(names, _)| names);
    }
    list.split(',').map(str::trim).any(|name| {
        if name == "*" {
            true
        } else if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            quoted
                .replace("\"\"", "\"")
                .eq_ignore_ascii_case(application_name)
        } else {
            name.eq_ignore_ascii_case(application_name)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names_are_parsed_in_every_form() {
        let matching = [
            "*",
            "walcached",
            "WALCACHED",
            "a, walcached",
            "FIRST 1 (a, walcached)",
            "first 2 (a,walcached)",
            "ANY 1 (\"walcached\", b)",
            "\"WALCACHED\"",
            "2 (b, *)",
            " walcached ",
        ];
        for s in matching {
            assert!(standby_names_match(s, "walcached"), "{s}");
        }
        let other = [
            "",
            "ghost",
            "a, b",
            "FIRST 1 (a, b)",
            "ANY 2 (walcached2, x)",
            "walcache",
        ];
        for s in other {
            assert!(!standby_names_match(s, "walcached"), "{s}");
        }
    }

    #[test]
    fn findings_print_one_line_with_the_fix() {
        let mut r = Report::default();
        r.ok("wal_level", "logical");
        r.problem(
            "postgres role",
            "no",
            Some("ALTER ROLE x REPLICATION;".into()),
        );
        let text = r.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("problem  postgres role: no; fix: ALTER ROLE x REPLICATION;"));
        assert!(!r.is_ok());
    }
}

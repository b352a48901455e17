//! The `ddl` fault: statements that change `audit_parts`' rows without row events the
//! stream carries (issue "Schema drift"), each injection one of four, in turn:
//!
//! 0. `TRUNCATE` of one partition (pgoutput sends nothing for it under
//!    `publish_via_partition_root`), then the partition refilled;
//! 1. `DETACH PARTITION` (its rows leave the table), then re-`ATTACH` with every row updated
//!    in the same transaction;
//! 2. a partition's replica identity set to `FULL` and back to `DEFAULT`, each with an
//!    `UPDATE` of every row;
//! 3. `DROP TABLE` and re-create with new rows in one transaction (the new table is not in the
//!    publication until the daemon adds it back), then, once it is published again, an
//!    `UPDATE` of every row.
//!
//! The auditor installs DDL capture (`walcached ddl-capture install`), so each is flushed in
//! commit order and the bound is the base one. Only this fault writes `audit_parts`; every
//! statement's rows go into the history with the statement's send and return times.

use std::time::Duration;

use walcache_audit::{now_ns, row_key, Commit};

use crate::faults::{Injected, Injector};
use crate::workload::{parts_schema, PARTS};
use crate::BoxError;

/// How long the table stays in the intermediate state (a partition truncated or detached)
/// before it is restored: long enough for readers to see it.
const DDL_HOLD: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(30);

/// Which rows a statement changed.
#[derive(Clone, Copy)]
enum Rows {
    All,
    /// The rows of partition `part` (`id % 2 == part`).
    Part(i64),
}

impl Injector<'_> {
    /// One `ddl` injection (see the module docs).
    pub(crate) async fn ddl(&mut self) -> Result<Injected, BoxError> {
        let step = self.ddl_injections % 4;
        self.ddl_injections += 1;
        let rows = self.rows;
        let v1 = self.parts_version + 1;
        let v2 = v1 + 1;
        let detail = match step {
            0 => {
                self.parts_commit("TRUNCATE audit_parts_0", Rows::Part(0), v1, true)
                    .await?;
                tokio::time::sleep(DDL_HOLD).await;
                self.parts_commit(
                    &format!(
                        "INSERT INTO audit_parts SELECT g, 0, {v2} \
                         FROM generate_series(2, {rows}, 2) g"
                    ),
                    Rows::Part(0),
                    v2,
                    false,
                )
                .await?;
                "TRUNCATE of partition audit_parts_0, refilled after 1 s"
            }
            1 => {
                self.parts_commit(
                    "ALTER TABLE audit_parts DETACH PARTITION audit_parts_1",
                    Rows::Part(1),
                    v1,
                    true,
                )
                .await?;
                tokio::time::sleep(DDL_HOLD).await;
                self.parts_commit(
                    &format!(
                        "BEGIN;
                         ALTER TABLE audit_parts ATTACH PARTITION audit_parts_1 FOR VALUES IN (1);
                         UPDATE audit_parts SET version = {v2} WHERE part = 1;
                         COMMIT;"
                    ),
                    Rows::Part(1),
                    v2,
                    false,
                )
                .await?;
                "DETACH of partition audit_parts_1, re-ATTACHed (rows updated) after 1 s"
            }
            2 => {
                self.parts_commit(
                    &format!(
                        "ALTER TABLE audit_parts_0 REPLICA IDENTITY FULL;
                         UPDATE audit_parts SET version = {v1};"
                    ),
                    Rows::All,
                    v1,
                    false,
                )
                .await?;
                tokio::time::sleep(DDL_HOLD).await;
                self.parts_commit(
                    &format!(
                        "ALTER TABLE audit_parts_0 REPLICA IDENTITY DEFAULT;
                         UPDATE audit_parts SET version = {v2};"
                    ),
                    Rows::All,
                    v2,
                    false,
                )
                .await?;
                "replica identity of audit_parts_0 FULL then DEFAULT, every row updated each time"
            }
            _ => {
                self.parts_commit(
                    &format!(
                        "BEGIN; DROP TABLE audit_parts; {} COMMIT;",
                        parts_schema(rows, v1)
                    ),
                    Rows::All,
                    v1,
                    false,
                )
                .await?;
                // The daemon adds the new table back to its publication; changes before that
                // are not streamed (its flushes cover them).
                let until = now_ns() + DEADLINE.as_nanos() as u64;
                loop {
                    let published: i64 = self
                        .admin
                        .client_within(DEADLINE)
                        .await?
                        .query_one(
                            "SELECT count(*) FROM pg_publication_tables \
                             WHERE tablename = 'audit_parts'",
                            &[],
                        )
                        .await?
                        .get(0);
                    if published > 0 {
                        break;
                    }
                    if now_ns() > until {
                        return Err(format!(
                            "the re-created audit_parts was not published again within \
                             {DEADLINE:?}"
                        )
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                self.parts_commit(
                    &format!("UPDATE audit_parts SET version = {v2}"),
                    Rows::All,
                    v2,
                    false,
                )
                .await?;
                "DROP TABLE and re-create with new rows; updated once published again"
            }
        };
        self.parts_version = v2;
        Ok(detail.to_owned().into())
    }

    /// Run `sql` (one transaction) and record `rows` at `version` (absent or not) in the
    /// history, between the send and the return.
    async fn parts_commit(
        &mut self,
        sql: &str,
        rows: Rows,
        version: i64,
        absent: bool,
    ) -> Result<(), BoxError> {
        let client = self.admin.client_within(DEADLINE).await?;
        let t_start_ns = now_ns();
        client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("ddl fault: {sql}: {e}"))?;
        let t_ns = now_ns();
        let ids = (1..=self.rows as i64).filter(|id| match rows {
            Rows::All => true,
            Rows::Part(p) => id % 2 == p,
        });
        self.commits.extend(ids.map(|id| Commit {
            id: row_key(PARTS, id),
            version,
            absent,
            t_start_ns,
            t_ns,
        }));
        Ok(())
    }
}

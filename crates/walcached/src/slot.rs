//! Creating the replication slot without hanging silently.
//!
//! `CREATE_REPLICATION_SLOT ... LOGICAL` does not return until every transaction that held a
//! transaction id when it started has ended (PostgreSQL's snapshot builder waits for them, in
//! every database of the cluster, prepared transactions included). An open `BEGIN;` that wrote
//! something, or an orphaned `PREPARE TRANSACTION`, therefore stalls a daemon starting on a
//! database without its slot. [`create_slot`] bounds that wait, says what it waits for, and
//! stays stoppable; [`blockers`] lists the transactions concerned, for the daemon's log and for
//! `walcached check`.
//!
//! Stopping the wait needs care: the server-side command does not notice a closed client
//! socket while it waits on a transaction lock, and would create the slot as soon as the
//! blocker ends. So the command is cancelled on the server (`pg_cancel_backend` from the
//! control session) and its error reply is read before returning: by then the walsender has
//! dropped the half-created (`RS_EPHEMERAL`) slot and the replication connection is idle and
//! consistent again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationClient;

pub use walcache_cdc::client::CreatedSlot;

/// How long the daemon lets slot creation wait for running transactions before it gives up
/// (and exits 1, for its supervisor to restart it with backoff): 60 s.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The first report of what the creation waits for comes after this long (a creation on an
/// idle server takes milliseconds).
const FIRST_REPORT: Duration = Duration::from_secs(1);

/// Later reports, while the wait lasts.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long a blocker query may take while waiting (it only delays the next report).
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to wait for the error reply after asking the server to cancel the command:
/// well inside the 2 s a shutdown may take.
const CANCEL_GRACE: Duration = Duration::from_millis(1500);

/// A cancel that reaches the walsender before it runs the command is ignored: repeat it this
/// often until the reply comes.
const CANCEL_RETRY: Duration = Duration::from_millis(100);

/// SQLSTATE `query_canceled`: the reply to a cancelled command.
const QUERY_CANCELED: &str = "57014";

/// A transaction that slot creation waits for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Blocker {
    /// A session with a transaction id (`pg_stat_activity.backend_xid`): a transaction that
    /// wrote, or called `txid_current()`.
    Backend {
        /// Its server process id.
        pid: i32,
        /// Its transaction id.
        xid: u32,
        /// `application_name`, if visible to this role.
        application_name: Option<String>,
        /// `state` (`active`, `idle in transaction`...), if visible to this role.
        state: Option<String>,
        /// How long its transaction has been open (from `xact_start`), if visible.
        age: Option<Duration>,
        /// The database it is connected to.
        database: Option<String>,
        /// The role it runs as.
        user: Option<String>,
    },
    /// A prepared transaction (`pg_prepared_xacts`), which holds its transaction id until
    /// `COMMIT PREPARED` or `ROLLBACK PREPARED`; `pg_blocking_pids` does not show these.
    Prepared {
        /// Its global identifier.
        gid: String,
        /// Its transaction id.
        xid: u32,
        /// How long ago it was prepared.
        age: Option<Duration>,
        /// The role that prepared it.
        owner: Option<String>,
        /// The database it was prepared in.
        database: Option<String>,
    },
}

impl Blocker {
    /// What ends it, as a sentence fragment: `commit or roll it back, or ...`.
    pub fn fix(&self) -> String {
        match self {
            Blocker::Backend { pid, .. } => format!(
                "commit or roll back that transaction, or end its session: \
                 SELECT pg_terminate_backend({pid});"
            ),
            Blocker::Prepared { gid, database, .. } => {
                let gid = quote_literal(gid);
                match database {
                    Some(db) => format!(
                        "COMMIT PREPARED {gid}; or ROLLBACK PREPARED {gid}; in database {db}"
                    ),
                    None => format!("COMMIT PREPARED {gid}; or ROLLBACK PREPARED {gid};"),
                }
            }
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown = "?";
        match self {
            Blocker::Backend {
                pid,
                xid,
                application_name,
                state,
                age,
                database,
                user,
            } => write!(
                f,
                "pid {pid} (xid {xid}, application_name {:?}, {}, transaction open {}, \
                 database {}, user {})",
                application_name.as_deref().unwrap_or(unknown),
                state.as_deref().unwrap_or("state unknown"),
                seconds(*age),
                database.as_deref().unwrap_or(unknown),
                user.as_deref().unwrap_or(unknown),
            ),
            Blocker::Prepared {
                gid,
                xid,
                age,
                owner,
                database,
            } => write!(
                f,
                "prepared transaction {} (xid {xid}, prepared {} ago, owner {}, database {})",
                quote_literal(gid),
                seconds(*age),
                owner.as_deref().unwrap_or(unknown),
                database.as_deref().unwrap_or(unknown),
            ),
        }
    }
}

fn seconds(age: Option<Duration>) -> String {
    match age {
        Some(d) => format!("{} s", d.as_secs()),
        None => "for an unknown time".to_owned(),
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `a [fix]; b [fix]`, or a note that nothing holds a transaction id now.
fn list(blockers: &[Blocker]) -> String {
    if blockers.is_empty() {
        return "no transaction holds a transaction id right now".to_owned();
    }
    blockers
        .iter()
        .map(|b| format!("{b} [{}]", b.fix()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The transactions that creating a logical slot now would wait for: every session of the
/// cluster that holds a transaction id (`pg_stat_activity.backend_xid IS NOT NULL`), except
/// the caller's own session and the `exclude`d process ids (the daemon's other connections),
/// and every prepared transaction (`pg_prepared_xacts`). Oldest first within each kind.
///
/// A role without `pg_read_all_stats` still sees other roles' process ids and transaction ids,
/// but not their application name, state or age (`None`).
///
/// # Errors
///
/// The query's error (a closed connection, for instance).
pub async fn blockers(
    control: &tokio_postgres::Client,
    exclude: &[i32],
) -> Result<Vec<Blocker>, tokio_postgres::Error> {
    let mut out = Vec::new();
    let backends = control
        .query(
            "SELECT pid, backend_xid::text, application_name, state, \
                    EXTRACT(EPOCH FROM clock_timestamp() - xact_start)::float8, \
                    datname::text, usename::text \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
               AND pid <> ALL($1::int4[]) \
             ORDER BY xact_start NULLS LAST, pid",
            &[&exclude],
        )
        .await?;
    for row in backends {
        let xid: Option<String> = row.try_get(1)?;
        out.push(Blocker::Backend {
            pid: row.try_get(0)?,
            xid: parse_xid(xid.as_deref()),
            application_name: row.try_get(2)?,
            state: row.try_get(3)?,
            age: age(row.try_get(4)?),
            database: row.try_get(5)?,
            user: row.try_get(6)?,
        });
    }
    let prepared = control
        .query(
            "SELECT gid, transaction::text, \
                    EXTRACT(EPOCH FROM clock_timestamp() - prepared)::float8, \
                    owner::text, database::text \
             FROM pg_prepared_xacts ORDER BY prepared, gid",
            &[],
        )
        .await?;
    for row in prepared {
        let xid: Option<String> = row.try_get(1)?;
        out.push(Blocker::Prepared {
            gid: row.try_get(0)?,
            xid: parse_xid(xid.as_deref()),
            age: age(row.try_get(2)?),
            owner: row.try_get(3)?,
            database: row.try_get(4)?,
        });
    }
    Ok(out)
}

fn parse_xid(text: Option<&str>) -> u32 {
    text.and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn age(seconds: Option<f64>) -> Option<Duration> {
    seconds.and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok())
}

/// Why [`create_slot`] did not create the slot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// Running transactions kept the creation waiting longer than allowed. The server-side
    /// command was cancelled: no slot was left behind.
    #[error(
        "creating replication slot {slot:?} waited {} s for transactions that were running \
         when it started, and gave up (nothing was created): {}. The daemon exits 1 on this \
         error; a supervisor restarts it with backoff, and it starts once they have ended \
         (`walcached check` lists them)",
        .waited.as_secs(),
        list(.blockers)
    )]
    TimedOut {
        /// The slot's name.
        slot: String,
        /// How long the creation waited.
        waited: Duration,
        /// What it was waiting for when it gave up.
        blockers: Vec<Blocker>,
    },
    /// `shutdown` was cancelled during the wait. The server-side command was cancelled: no
    /// slot was left behind.
    #[error(
        "creating replication slot {slot:?} was interrupted by shutdown (nothing was created)"
    )]
    Shutdown {
        /// The slot's name.
        slot: String,
    },
    /// The server refused the command (`42710` when the slot exists already), or the
    /// replication connection failed.
    #[error("creating replication slot {slot:?}: {source}")]
    Replication {
        /// The slot's name.
        slot: String,
        /// The cause.
        #[source]
        source: walcache_cdc::Error,
    },
}

/// Why the wait ended without the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    TimedOut,
}

/// `CREATE_REPLICATION_SLOT slot LOGICAL pgoutput` on `replication`, waiting at most
/// `max_wait` (the daemon passes [`MAX_WAIT`]) for the transactions it needs to end.
///
/// While it waits it logs the [`blockers`] (a warning after about 1 s, then every 10 s),
/// read through `control`, a plain SQL session of a role allowed to signal the replication
/// connection's backend (the same role). On `shutdown` or at `max_wait` it cancels the
/// server-side command (`pg_cancel_backend` from `control`) and reads its error reply, so the
/// half-created slot is gone and `replication` stays usable (if the server does not answer the
/// cancel within 1.5 s, the backend is terminated instead and `replication` is unusable).
/// A shutdown returns within about 1.5 s.
///
/// # Errors
///
/// [`SlotError::TimedOut`] after `max_wait`, naming the blockers; [`SlotError::Shutdown`] when
/// `shutdown` was cancelled; [`SlotError::Replication`] when the server refused the command
/// or the connection failed. If the server created the slot just as the wait ended, the slot
/// is returned instead.
pub async fn create_slot(
    replication: &mut ReplicationClient,
    control: &tokio_postgres::Client,
    slot: &str,
    max_wait: Duration,
    shutdown: &CancellationToken,
) -> Result<CreatedSlot, SlotError> {
    let pid = replication.backend_pid();
    let ours: Vec<i32> = pid.into_iter().collect();
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + max_wait);
    let mut next_report = tokio::time::Instant::from_std(started + FIRST_REPORT);
    if shutdown.is_cancelled() {
        return Err(SlotError::Shutdown {
            slot: slot.to_owned(),
        });
    }
    tracing::info!(slot = %slot, "creating the replication slot");
    // The command's future is never dropped before its reply is read (or the backend is
    // gone): dropping it mid-reply would leave the connection out of step, and a closed socket
    // alone does not stop the server-side wait.
    let mut create: Pin<Box<_>> = Box::pin(replication.create_logical_slot(slot, false));
    let stop = loop {
        tokio::select! {
            biased;
            result = &mut create => {
                return result.map_err(|source| SlotError::Replication {
                    slot: slot.to_owned(),
                    source,
                });
            }
            () = shutdown.cancelled() => break Stop::Shutdown,
            () = tokio::time::sleep_until(deadline) => break Stop::TimedOut,
            () = tokio::time::sleep_until(next_report) => {
                next_report += REPORT_EVERY;
                let listed = tokio::select! {
                    listed = tokio::time::timeout(QUERY_TIMEOUT, blockers(control, &ours)) => listed,
                    () = shutdown.cancelled() => break Stop::Shutdown,
                };
                match listed {
                    Ok(Ok(found)) => tracing::warn!(
                        slot = %slot,
                        waited_s = started.elapsed().as_secs(),
                        gives_up_after_s = max_wait.as_secs(),
                        blockers = %list(&found),
                        "creating the replication slot is waiting for transactions that were \
                         running when it started to end"
                    ),
                    Ok(Err(e)) => tracing::warn!(
                        slot = %slot,
                        waited_s = started.elapsed().as_secs(),
                        error = %e,
                        "creating the replication slot is waiting for running transactions \
                         (could not list them)"
                    ),
                    Err(_) => tracing::warn!(
                        slot = %slot,
                        waited_s = started.elapsed().as_secs(),
                        "creating the replication slot is waiting for running transactions \
                         (listing them timed out)"
                    ),
                }
            }
        }
    };
    let waited = started.elapsed();
    let found = if stop == Stop::TimedOut {
        match tokio::time::timeout(QUERY_TIMEOUT, blockers(control, &ours)).await {
            Ok(Ok(found)) => found,
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    if let Some(created) = cancel(create.as_mut(), control, pid, slot).await {
        // The server finished before the cancel took effect: the slot exists and is usable.
        return Ok(created);
    }
    Err(match stop {
        Stop::Shutdown => SlotError::Shutdown {
            slot: slot.to_owned(),
        },
        Stop::TimedOut => SlotError::TimedOut {
            slot: slot.to_owned(),
            waited,
            blockers: found,
        },
    })
}

/// Cancel the server-side command and read its reply. `Some` if the slot got created anyway.
async fn cancel<F>(
    mut create: Pin<&mut F>,
    control: &tokio_postgres::Client,
    pid: Option<i32>,
    slot: &str,
) -> Option<CreatedSlot>
where
    F: Future<Output = Result<CreatedSlot, walcache_cdc::Error>>,
{
    let Some(pid) = pid else {
        tracing::error!(slot = %slot, "no backend pid for the replication connection: cannot cancel slot creation on the server");
        return None;
    };
    let give_up = tokio::time::Instant::now() + CANCEL_GRACE;
    loop {
        let asked = tokio::time::timeout_at(
            give_up,
            control.query_one("SELECT pg_cancel_backend($1)", &[&pid]),
        )
        .await;
        if let Ok(Err(e)) = asked {
            tracing::warn!(slot = %slot, pid, error = %e, "asking the server to cancel slot creation failed");
        }
        let retry = (tokio::time::Instant::now() + CANCEL_RETRY).min(give_up);
        match tokio::time::timeout_at(retry, create.as_mut()).await {
            Ok(Ok(created)) => return Some(created),
            Ok(Err(e)) => {
                if e.code() == Some(QUERY_CANCELED) {
                    tracing::info!(slot = %slot, "slot creation cancelled on the server; no slot was created");
                } else {
                    tracing::warn!(slot = %slot, error = %e, "slot creation ended with an error after the cancel");
                }
                return None;
            }
            Err(_) if retry < give_up => {}
            Err(_) => break,
        }
    }
    // The walsender did not react to the cancel: end it, which drops a half-created slot too.
    tracing::error!(slot = %slot, pid, "slot creation did not stop on cancel: terminating its backend");
    let terminated = tokio::time::timeout(
        QUERY_TIMEOUT,
        control.query_one("SELECT pg_terminate_backend($1)", &[&pid]),
    )
    .await;
    if !matches!(terminated, Ok(Ok(_))) {
        tracing::error!(slot = %slot, pid, "terminating the replication backend failed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blockers_print_what_identifies_them_and_how_to_end_them() {
        let backend = Blocker::Backend {
            pid: 42,
            xid: 731,
            application_name: Some("psql".into()),
            state: Some("idle in transaction".into()),
            age: Some(Duration::from_millis(8_900)),
            database: Some("app".into()),
            user: Some("bob".into()),
        };
        assert_eq!(
            backend.to_string(),
            "pid 42 (xid 731, application_name \"psql\", idle in transaction, transaction open \
             8 s, database app, user bob)"
        );
        assert!(backend.fix().contains("pg_terminate_backend(42)"));
        let prepared = Blocker::Prepared {
            gid: "it's".into(),
            xid: 9,
            age: None,
            owner: None,
            database: Some("app".into()),
        };
        assert_eq!(
            prepared.to_string(),
            "prepared transaction 'it''s' (xid 9, prepared for an unknown time ago, owner ?, \
             database app)"
        );
        assert!(prepared.fix().contains("ROLLBACK PREPARED 'it''s';"));
        let both = list(&[backend, prepared]);
        assert_eq!(both.matches(" [").count(), 2, "{both}");
        assert!(list(&[]).contains("no transaction"));
    }
}

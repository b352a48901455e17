//! The server we talk to is the server we think: both connections reach the same cluster and
//! timeline, and that cluster is the one the previous session streamed from; the slot is
//! usable; a slot held by a walsender whose daemon is gone is taken over.

use std::time::{Duration, Instant};

use walcache_cdc::client::ReplicationClient;
use walcache_cdc::Lsn;

use super::{RunError, SessionError, Streamer};
use crate::metrics as m;

/// Which cluster, and which history of it, a connection reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerIdentity {
    /// `pg_control_system().system_identifier`: set by initdb, kept by physical replicas and
    /// restores of a base backup.
    pub(crate) system_id: String,
    /// The WAL timeline: a promotion or a point-in-time restore starts a new one.
    pub(crate) timeline: u32,
}

impl std::fmt::Display for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "system {} timeline {}", self.system_id, self.timeline)
    }
}

/// The identity as the control session sees it. The timeline is read from the name of the WAL
/// file being written (`pg_walfile_name` uses the insertion timeline), not from
/// `pg_control_checkpoint()`, whose timeline lags a promotion until the next checkpoint.
pub(crate) async fn control_identity(
    control: &tokio_postgres::Client,
) -> Result<ServerIdentity, tokio_postgres::Error> {
    let row = control
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await?;
    let timeline: String = row.get(1);
    Ok(ServerIdentity {
        system_id: row.get(0),
        timeline: u32::from_str_radix(&timeline, 16).unwrap_or(0),
    })
}

/// The replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SlotState {
    /// No such slot.
    Missing,
    /// PostgreSQL invalidated it (the reason as reported): it can never stream again.
    Invalidated(String),
    /// Usable.
    Usable,
}

/// The slot's state. Every invalidation PostgreSQL reports counts: `wal_status = 'lost'`
/// (13+), `conflicting` (16+, a logical slot on a standby), and `invalidation_reason` (17+:
/// `wal_removed`, `rows_removed`, `wal_level_insufficient`, 18's `idle_timeout`, and any
/// reason a later version adds). The columns are read through `to_jsonb`, so one query
/// serves every version.
pub(super) async fn slot_state(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<SlotState, RunError> {
    let row = client
        .query_opt(
            "SELECT s.wal_status, to_jsonb(s) ->> 'invalidation_reason', \
                    coalesce((to_jsonb(s) ->> 'conflicting')::bool, false) \
             FROM pg_replication_slots s WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| RunError::postgres("reading replication slots", e))?;
    let Some(row) = row else {
        return Ok(SlotState::Missing);
    };
    let wal_status: Option<String> = row.get(0);
    let reason: Option<String> = row.get(1);
    let conflicting: bool = row.get(2);
    Ok(match (reason, wal_status.as_deref(), conflicting) {
        (Some(reason), _, _) => SlotState::Invalidated(reason),
        (None, Some("lost"), _) => SlotState::Invalidated("wal_status = lost".to_owned()),
        (None, _, true) => SlotState::Invalidated("conflicting with recovery".to_owned()),
        _ => SlotState::Usable,
    })
}

/// The slot's `confirmed_flush_lsn`: where streaming resumes (0 if the slot has none yet).
pub(super) async fn slot_confirmed(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Lsn, RunError> {
    let row = client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| RunError::postgres("reading the slot's confirmed position", e))?;
    let lsn: Option<i64> = row.and_then(|r| r.get(0));
    Ok(Lsn(lsn.and_then(|l| u64::try_from(l).ok()).unwrap_or(0)))
}

/// SQLSTATE object_not_in_prerequisite_state: START_REPLICATION on a slot PostgreSQL
/// invalidated ("can no longer get changes from replication slot" up to 17, "can no longer
/// access replication slot" from 18).
const SLOT_INVALIDATED: &str = "55000";

/// Whether START_REPLICATION refused because the slot was invalidated (a reason the catalog
/// check did not know, or an invalidation between the check and the start).
pub(super) fn is_invalidated_slot_error(e: &walcache_cdc::Error) -> bool {
    e.code() == Some(SLOT_INVALIDATED)
        && e.as_db_error().is_some_and(|db| {
            db.message.starts_with("can no longer") && db.message.contains("replication slot")
        })
}

/// How long a walsender of ours may go without a status update from its daemon before a
/// standby daemon terminates it. A live daemon sends one every `stream.status_interval_ms`
/// (1 s by default), also while Redis is away or it is catching up; a daemon whose host froze
/// or was cut off sends none, and its walsender would otherwise hold the slot until
/// `wal_sender_timeout` (60 s by default).
pub(super) fn orphan_after(status_interval: Duration) -> Duration {
    (status_interval * 5).max(super::stream::RECEIVE_TIMEOUT)
}

/// How long a terminated walsender may take to let go of the slot before the takeover is
/// retried with the standby's backoff.
const RELEASE_DEADLINE: Duration = Duration::from_secs(5);

/// Wait until walsender `pid` no longer holds `slot` (at most [`RELEASE_DEADLINE`]).
async fn released(control: &tokio_postgres::Client, slot: &str, pid: i32) -> bool {
    let deadline = Instant::now() + RELEASE_DEADLINE;
    loop {
        let holder = control
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<i32>>(0));
        if holder != Some(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // a catalog poll, not a handshake
    }
}

impl Streamer<'_> {
    /// Both connections reach the same cluster and timeline, and it is the one the previous
    /// session streamed from. A different one (a failover, a restore, a DNS change) is an
    /// unknown gap: every namespace is flushed before streaming.
    pub(super) async fn check_server(
        &mut self,
        client: &mut ReplicationClient,
    ) -> Result<(), SessionError> {
        let replication = client.identify_system().await?;
        let replication = ServerIdentity {
            system_id: replication.system_id,
            timeline: replication.timeline,
        };
        let control = match control_identity(&self.control).await {
            Ok(identity) => identity,
            Err(e) if self.control.is_closed() => return Err(SessionError::ControlLost(e.into())),
            Err(e) => {
                return Err(SessionError::Setup(RunError::postgres(
                    "reading the server's identity",
                    e,
                )))
            }
        };
        if control != replication {
            return Err(SessionError::ServerMismatch {
                control: control.to_string(),
                replication: replication.to_string(),
            });
        }
        match &self.server {
            Some(previous) if *previous != replication => {
                tracing::error!(
                    previous = %previous,
                    now = %replication,
                    "the PostgreSQL server changed (failover or restore): changes in between are unknown, flushing every namespace"
                );
                metrics::counter!(m::SERVER_CHANGES_TOTAL).increment(1);
                // Every marker was written against the old server: the audit at the start of
                // the session flushes every target (reason `server_changed`).
                // Transactions awaiting their visibility re-check belong to the old server.
                self.pending.clear();
            }
            _ => {}
        }
        self.publisher().set_server(replication.to_string());
        self.server = Some(replication);
        Ok(())
    }

    /// The slot is in use. If the walsender holding it is one of ours, streaming, and this
    /// daemon has seen no new status update from its client for [`orphan_after`], terminate
    /// it and wait (at most 5 s) for it to let go of the slot. Returns whether the slot was
    /// freed.
    ///
    /// "No new status update" is judged on this daemon's clock: the walsender's `reply_time`
    /// is the *other* daemon's clock, so it is compared only with itself (unchanged since
    /// first seen), never with `now()`: a skewed clock can neither make a live daemon look
    /// gone nor a frozen one look alive. A walsender still creating the slot (no
    /// `confirmed_flush_lsn` yet, state `startup`) sends no status updates by design and is
    /// never taken for an orphan: two daemons would otherwise cancel each other's creation.
    pub(super) async fn take_over_orphan(&mut self) -> bool {
        let threshold = orphan_after(self.config.stream.status_interval());
        let row = self
            .control
            .query_opt(
                "SELECT r.pid, r.reply_time::text FROM pg_replication_slots s \
                 JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1 AND r.application_name = $2 \
                   AND r.state IN ('streaming', 'catchup') AND s.confirmed_flush_lsn IS NOT NULL",
                &[
                    &self.config.postgres.slot,
                    &walcache_cdc::client::APPLICATION_NAME,
                ],
            )
            .await;
        let Ok(Some(row)) = row else {
            self.orphan_watch = None;
            return false;
        };
        let seen = (row.get::<_, i32>(0), row.get::<_, Option<String>>(1));
        let silent_for = match &self.orphan_watch {
            Some((watched, since)) if *watched == seen => since.elapsed(),
            _ => {
                self.orphan_watch = Some((seen, Instant::now()));
                return false;
            }
        };
        if silent_for < threshold {
            return false;
        }
        self.orphan_watch = None;
        let pid = seen.0;
        let signalled = self
            .control
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .is_ok_and(|r| r.get::<_, bool>(0));
        if !signalled {
            return false;
        }
        tracing::warn!(
            pid,
            silent_secs = silent_for.as_secs_f64(),
            "the walsender holding the slot has heard nothing from its daemon: terminated it to take over"
        );
        metrics::counter!(m::SLOT_TAKEOVERS_TOTAL).increment(1);
        // The signal is sent, not obeyed yet (a stopped or stuck backend holds on): retry
        // with the usual backoff rather than at once until it lets go.
        released(&self.control, &self.config.postgres.slot, pid).await
    }
}

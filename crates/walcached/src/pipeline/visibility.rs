//! DESIGN contract 3: a transaction streamed before new snapshots see it gets a second
//! invalidation once they do, and the confirmed position waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;
use walcache_cdc::Lsn;

use super::{SessionError, Streamer};
use crate::metrics as m;
use crate::publisher::Batch;

/// The oldest snapshot whose xmax the check widens 32-bit xids against, and whose verdict it
/// reuses (see [`Checker::invisible`]).
pub(super) const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(60);

/// How often transactions waiting to become visible are rechecked.
pub(super) const VISIBILITY_POLL: Duration = Duration::from_millis(2);

/// One round trip: the control session's current snapshot, as xid8s (as text: xid8 is
/// unsigned), its in-progress list sorted.
const SNAPSHOT_SQL: &str =
    "SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8, \
            array(SELECT x::text::int8 FROM pg_snapshot_xip(s) AS x ORDER BY 1) \
     FROM pg_current_snapshot() AS t(s)";

/// A committed transaction's invalidations, kept for the visibility re-check.
#[derive(Debug, Clone)]
pub(super) struct TxnRecord {
    pub(super) xid: u32,
    pub(super) commit_lsn: Lsn,
    pub(super) items: Batch,
}

/// A snapshot of the server's transactions, `pg_current_snapshot()` of the control session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(super) xmin: u64,
    pub(super) xmax: u64,
    /// In progress when it was taken, sorted.
    pub(super) xip: Vec<u64>,
}

impl Snapshot {
    /// Whether the snapshot sees the committed transaction `xid`: `pg_visible_in_snapshot`
    /// of the xid8 that `xid` widens to against the snapshot's own xmax
    /// ([`crate::xid::widen`], which looks both ways: a transaction waiting for a synchronous
    /// standby is in the stream while its xid is still at or above xmax). Exact for any xid
    /// within 2^31 of xmax: every transaction in the stream is (wraparound protection), and
    /// any xid of it read up to [`SNAPSHOT_MAX_AGE`] after the snapshot still is (PostgreSQL
    /// would need over 35 million xids a second to move 2^31 in that time).
    pub(super) fn sees(&self, xid: u32) -> bool {
        let wide = crate::xid::widen(xid, self.xmax);
        wide < self.xmin || (wide < self.xmax && self.xip.binary_search(&wide).is_err())
    }
}

/// Judges whether transactions are visible to new snapshots, on the control session: the
/// statement that reads a snapshot, prepared once per session, and the last snapshot read.
#[derive(Debug, Default)]
pub(super) struct Checker {
    /// The prepared statement, with the session it was prepared on (held, so that a new
    /// session can never be mistaken for it).
    statement: Option<(Arc<tokio_postgres::Client>, tokio_postgres::Statement)>,
    /// The last snapshot read, and when (before the query was sent).
    last: Option<(Snapshot, Instant)>,
}

impl Checker {
    /// Which of these committed transactions are not yet visible to a new snapshot. On a query
    /// error, all of them (the check is retried); if the control connection has closed,
    /// [`SessionError::ControlLost`].
    ///
    /// Visibility only moves forward: a transaction an earlier snapshot saw committed, every
    /// later snapshot sees too. So when the last snapshot read (at most [`SNAPSHOT_MAX_AGE`]
    /// old) sees every one of them — a backlog being read, whose transactions ended long
    /// before they arrive — no query is sent. Otherwise one round trip reads a new snapshot
    /// and [`Snapshot::sees`] judges each transaction in it, as `pg_visible_in_snapshot`
    /// would.
    pub(super) async fn invisible(
        &mut self,
        control: &Arc<tokio_postgres::Client>,
        xids: &[u32],
    ) -> Result<Vec<u32>, SessionError> {
        if xids.is_empty() {
            return Ok(Vec::new());
        }
        if let Some((snapshot, read)) = &self.last {
            if read.elapsed() < SNAPSHOT_MAX_AGE && xids.iter().all(|&x| snapshot.sees(x)) {
                return Ok(Vec::new());
            }
        }
        match self.read(control).await {
            Ok(snapshot) => {
                let invisible = xids
                    .iter()
                    .copied()
                    .filter(|&x| !snapshot.sees(x))
                    .collect();
                Ok(invisible)
            }
            Err(e) if control.is_closed() => Err(SessionError::ControlLost(e.into())),
            Err(e) => {
                // Prepared again next time: the statement may be what failed.
                self.statement = None;
                tracing::warn!(error = %e, "visibility check failed; rechecking");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "postgres").increment(1);
                Ok(xids.to_vec())
            }
        }
    }

    /// Read the control session's current snapshot (and keep it as the last one).
    async fn read(
        &mut self,
        control: &Arc<tokio_postgres::Client>,
    ) -> Result<&Snapshot, tokio_postgres::Error> {
        let statement = match &self.statement {
            Some((on, statement)) if Arc::ptr_eq(on, control) => statement.clone(),
            _ => {
                let statement = control.prepare(SNAPSHOT_SQL).await?;
                self.statement = Some((Arc::clone(control), statement.clone()));
                statement
            }
        };
        let sent = Instant::now();
        let row = control.query_one(&statement, &[]).await?;
        // Non-negative: int8 holds xid8s up to 2^63 - 1, which no cluster reaches.
        let snapshot = Snapshot {
            xmin: row.try_get::<_, i64>(0)? as u64,
            xmax: row.try_get::<_, i64>(1)? as u64,
            xip: row
                .try_get::<_, Vec<i64>>(2)?
                .into_iter()
                .map(|x| x as u64)
                .collect(),
        };
        Ok(&self.last.insert((snapshot, sent)).0)
    }
}

impl Streamer<'_> {
    /// Move the confirmed position forward to `candidate`, but never past a transaction still
    /// waiting for its second invalidation: a crash must replay it.
    pub(super) fn advance_confirmed(&mut self, candidate: Lsn) {
        let cap = self.pending.iter().map(|t| t.commit_lsn).min();
        let target = match cap {
            Some(cap) => candidate.min(cap),
            None => candidate,
        };
        self.confirmed = self.confirmed.max(target);
    }

    /// [`Checker::invisible`] on this session's control connection.
    pub(super) async fn invisible(&mut self, xids: &[u32]) -> Result<Vec<u32>, SessionError> {
        self.checker.invisible(&self.control, xids).await
    }

    /// Republish the transactions that became visible, then let the position move on.
    pub(super) async fn recheck_pending(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let xids: Vec<u32> = self.pending.iter().map(|t| t.xid).collect();
        let invisible = self.invisible(&xids).await?;
        if invisible.len() == xids.len() {
            return Ok(());
        }
        let mut again = Batch::default();
        let mut still = Vec::new();
        for t in std::mem::take(&mut self.pending) {
            if invisible.contains(&t.xid) {
                still.push(t);
            } else {
                again.extend_from(&t.items);
                again.lsn = again.lsn.max(t.items.lsn);
            }
        }
        // Keep them pending until the second invalidation is out.
        let visible_now = again.clone();
        self.pending.extend(still.iter().cloned());
        if !self
            .publish_with_retry(&visible_now, Some(stream), shutdown)
            .await
        {
            return Ok(());
        }
        self.pending = still;
        metrics::gauge!(m::VISIBILITY_PENDING).set(self.pending.len() as f64);
        metrics::counter!(m::VISIBILITY_REINVALIDATIONS_TOTAL).increment(1);
        self.advance_confirmed(Lsn(visible_now.lsn));
        self.send_status(stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::Snapshot;

    const EPOCH: u64 = 1 << 32;

    fn snapshot(xmin: u64, xmax: u64, xip: &[u64]) -> Snapshot {
        Snapshot {
            xmin,
            xmax,
            xip: xip.to_vec(),
        }
    }

    #[test]
    fn a_snapshot_sees_what_ended_before_it_and_nothing_in_progress_or_later() {
        for base in [0, EPOCH, 7 * EPOCH] {
            let s = snapshot(base + 100, base + 110, &[base + 100, base + 105]);
            let sees = |x: u64| s.sees(x as u32);
            assert!(sees(base + 99), "below xmin");
            assert!(!sees(base + 100), "in progress, at xmin");
            assert!(sees(base + 101), "ended between xmin and xmax");
            assert!(!sees(base + 105), "in progress");
            assert!(sees(base + 109));
            assert!(!sees(base + 110), "at xmax: not yet ended when taken");
            assert!(
                !sees(base + 111),
                "above xmax (waiting for a synchronous standby)"
            );
        }
    }

    #[test]
    fn xids_are_widened_against_the_snapshots_own_xmax_across_the_wrap() {
        // xmax just past a wrap into epoch 1: xids just below 2^32 are epoch 0's.
        let s = snapshot(EPOCH - 10, EPOCH + 5, &[EPOCH - 3, EPOCH + 2]);
        assert!(s.sees((EPOCH - 11) as u32), "epoch 0, below xmin");
        assert!(s.sees((EPOCH - 4) as u32), "epoch 0, ended");
        assert!(!s.sees((EPOCH - 3) as u32), "epoch 0, in progress");
        assert!(s.sees(1), "epoch 1, ended");
        assert!(!s.sees(2), "epoch 1, in progress");
        assert!(!s.sees(5), "epoch 1, at xmax");
        // xmax just before the wrap: small xids are above it, in epoch 1, not yet seen.
        let s = snapshot(EPOCH - 20, EPOCH - 2, &[]);
        assert!(s.sees((EPOCH - 3) as u32));
        assert!(
            !s.sees(3),
            "a waiting transaction past the wrap is not seen"
        );
    }
}

//! DESIGN contract 3: a transaction streamed before new snapshots see it gets a second
//! invalidation once they do, and the confirmed position waits for it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;
use walcache_cdc::Lsn;

use super::{SessionError, Streamer};
use crate::metrics as m;
use crate::publisher::Batch;

/// The oldest xmax a visibility check widens xids against without reading a new one.
pub(super) const XMAX_REFERENCE_MAX_AGE: Duration = Duration::from_secs(60);

/// How often transactions waiting to become visible are rechecked.
pub(super) const VISIBILITY_POLL: Duration = Duration::from_millis(2);

/// A committed transaction's invalidations, kept for the visibility re-check.
#[derive(Debug, Clone)]
pub(super) struct TxnRecord {
    pub(super) xid: u32,
    pub(super) commit_lsn: Lsn,
    pub(super) items: Batch,
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

    /// Which of these transactions are not yet visible to a new snapshot. On a query error,
    /// all of them (the check is retried); if the control connection has closed,
    /// [`SessionError::ControlLost`].
    ///
    /// One round trip: each 32-bit xid is widened to the xid8 nearest to a reference xmax
    /// ([`crate::xid::widen`]), and `pg_visible_in_snapshot` judges the widened xids in a
    /// fresh snapshot, whose xmax comes back as the next reference. Any reference within
    /// 2^31 xids of the transactions widens them exactly; one at most
    /// [`XMAX_REFERENCE_MAX_AGE`] old is (PostgreSQL would need over 35 million xids a second
    /// to move 2^31 in that time), an older one is read first. A transaction waiting for a
    /// synchronous standby is in the stream while its xid is still at or above xmax: the
    /// widening looks both ways.
    pub(super) async fn invisible(&mut self, xids: &[u32]) -> Result<Vec<u32>, SessionError> {
        if xids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.invisible_query(xids).await;
        match rows {
            Ok(rows) => Ok(rows
                .into_iter()
                .filter_map(|x| u32::try_from(x).ok())
                .collect()),
            Err(e) if self.control.is_closed() => Err(SessionError::ControlLost(e.into())),
            Err(e) => {
                tracing::warn!(error = %e, "visibility check failed; rechecking");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "postgres").increment(1);
                Ok(xids.to_vec())
            }
        }
    }

    async fn invisible_query(&mut self, xids: &[u32]) -> Result<Vec<i64>, tokio_postgres::Error> {
        let xmax = match self.xmax_reference {
            Some((xmax, at)) if at.elapsed() < XMAX_REFERENCE_MAX_AGE => xmax,
            // Non-negative: int8 holds xid8s up to 2^63 - 1, which no cluster reaches.
            _ => super::catalog_watch::snapshot_xmax(&self.control).await? as u64,
        };
        let xs: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
        let widened: Vec<String> = xids
            .iter()
            .map(|x| crate::xid::widen(*x, xmax).to_string())
            .collect();
        // The widened xids as text: xid8 is unsigned.
        let row = self
            .control
            .query_one(
                "SELECT pg_snapshot_xmax(s)::text::int8, \
                        array(SELECT x FROM unnest($1::int8[], $2::text[]) AS u(x, wide) \
                              WHERE NOT pg_visible_in_snapshot(wide::xid8, s)) \
                 FROM pg_current_snapshot() AS t(s)",
                &[&xs, &widened],
            )
            .await?;
        self.xmax_reference = Some((row.get::<_, i64>(0) as u64, Instant::now()));
        Ok(row.get(1))
    }

    pub(super) async fn hold_invisible(
        &mut self,
        txns: Vec<TxnRecord>,
    ) -> Result<(), SessionError> {
        let xids: Vec<u32> = txns.iter().map(|t| t.xid).collect();
        let invisible = self.invisible(&xids).await?;
        if invisible.is_empty() {
            return Ok(());
        }
        for t in txns {
            if invisible.contains(&t.xid) {
                tracing::debug!(
                    xid = t.xid,
                    "committed but not yet visible: will invalidate again"
                );
                self.pending.push(t);
            }
        }
        metrics::gauge!(m::VISIBILITY_PENDING).set(self.pending.len() as f64);
        Ok(())
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

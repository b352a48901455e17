//! Publishing a batch to Redis: retries while Redis is away, then confirmation; and the check
//! that Redis is still the server it was.

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;
use walcache_cdc::Lsn;

use super::stages::record_since;
use super::{Backoff, SessionError, Streamer};
use crate::metrics as m;
use crate::publisher::Batch;

impl Streamer<'_> {
    pub(super) async fn flush_batch(
        &mut self,
        batch: &mut Batch,
        started: &mut Option<Instant>,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        if batch.is_empty() {
            *started = None;
            return Ok(());
        }
        let first = started.take().unwrap_or_else(Instant::now);
        // Visibility is checked *before* publishing: a transaction seen visible here is
        // visible to every fill that takes its lease after the publish (fills read the
        // database after taking the lease), and one not yet visible gets a second
        // invalidation once it is. Checked after publishing instead, a commit that became
        // visible between the publish and the check would let a fill that read the old row in
        // that gap survive.
        let txns = std::mem::take(&mut self.batch_txns);
        self.stages.batch_transactions.record(txns.len() as f64);
        let t = Instant::now();
        let held = self.hold_invisible(txns).await;
        record_since(&self.stages.visibility, t);
        let t = Instant::now();
        if !self.publish_with_retry(batch, Some(stream), shutdown).await {
            // Shutting down with the batch unpublished: do not confirm it; the next run
            // replays it from the slot.
            return Ok(());
        }
        record_since(&self.stages.publish, t);
        // Published either way (the sooner the better); without a visibility verdict it is
        // not confirmed: the session ends and the next one replays it.
        held?;
        metrics::histogram!(m::PUBLISH_LATENCY_SECONDS).record(first.elapsed());
        tracing::debug!(seq = self.publisher.seq(), lsn = %Lsn(batch.lsn), items = batch.len(), "published a batch");
        self.published = self.published.max(Lsn(batch.lsn));
        self.status.set_published_seq(self.publisher.seq());
        if std::mem::take(&mut self.redis_reconnected) {
            self.check_redis_identity().await;
        }
        // Only now is the position safe to confirm (held at the oldest pending recheck).
        self.advance_confirmed(Lsn(batch.lsn));
        *batch = Batch::default();
        let t = Instant::now();
        let sent = self.send_status(stream).await;
        record_since(&self.stages.status, t);
        sent
    }

    /// Publish, retrying with backoff while Redis is away; the stream keeps hearing status
    /// updates (with the old position) so PostgreSQL does not time the connection out.
    /// Returns false only if shutdown interrupted it.
    pub(super) async fn publish_with_retry(
        &mut self,
        batch: &Batch,
        mut stream: Option<&mut ReplicationStream>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::redis();
        loop {
            match self.publisher.publish(batch).await {
                Ok(()) => return true,
                Err(e) => {
                    self.status.set_caught_up(false);
                    metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                    let pause = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?pause, next_seq = self.publisher.seq() + 1, lsn = %Lsn(batch.lsn), "publishing failed; nothing is confirmed until it succeeds");
                    if let Some(s) = stream.as_deref_mut() {
                        let lsn = self.reportable();
                        if let Err(e) = s.send_status(lsn, lsn, lsn, false).await {
                            tracing::debug!(error = %e, "status update during redis outage failed");
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(pause) => {}
                    }
                    self.reconnect_redis().await;
                }
            }
        }
    }

    pub(super) async fn reconnect_redis(&mut self) {
        metrics::counter!(m::RECONNECTS_TOTAL, "to" => "redis").increment(1);
        match self.publisher.reconnect(&self.redis_client).await {
            // A new connection may be to a restarted Redis: check its run_id at once rather
            // than at the next periodic check.
            Ok(()) => self.redis_reconnected = true,
            Err(e) => tracing::debug!(error = %e, "redis reconnect failed"),
        }
    }

    /// A Redis whose run_id changed restarted or failed over and may have lost recent
    /// deletes: every marker is checked at once (rather than at the next heartbeat), and what
    /// was lost is flushed.
    pub(super) async fn check_redis_identity(&mut self) {
        let Ok(run_id) = self.publisher.run_id().await else {
            return;
        };
        if run_id != self.run_id {
            tracing::warn!("redis run_id changed (restart or failover): checking every marker");
            if self.verify_markers().await {
                if let Some(mut identity) = self.status.redis() {
                    identity.run_id.clone_from(&run_id);
                    self.status.set_redis(identity);
                }
                self.run_id = run_id;
            }
        }
    }

    /// Compare every marker with what this daemon wrote (flushing what was lost), advancing
    /// them to the confirmed position. False if Redis could not be reached.
    pub(super) async fn verify_markers(&mut self) -> bool {
        match self.publisher.verify(self.confirmed).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "checking the markers failed");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                self.reconnect_redis().await;
                false
            }
        }
    }
}

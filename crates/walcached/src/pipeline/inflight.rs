//! The batch in flight: while its visibility is checked and its invalidation script runs,
//! the stream loop goes on reading and decoding the next batch.
//!
//! - **One at a time, in commit order.** At most one batch is in flight, besides the one being
//!   built; a batch is launched only once the one before it has landed. When the one being
//!   built is full (`batch_max_keys`), the loop stops reading until the flight lands: memory
//!   stays bounded.
//! - **A flight owns the publisher and the visibility checker**, and gives them back when it
//!   lands: nothing else talks to Redis meanwhile (heartbeats, visibility rechecks, catalog
//!   checks, flushes asked for and marker checks wait for the landing).
//! - **Visibility before the script**, within the flight, as before (see [`launch`]).
//! - **The position moves on only when a flight lands**: its transactions not yet visible are
//!   held for their second invalidation first, and the confirmed position never passes the
//!   flight while it is in the air (a commit or keepalive read meanwhile is confirmed on
//!   landing, not before).
//!
//! [`launch`]: Streamer::launch

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::Instrument;
use walcache_cdc::Lsn;

use super::publish::publish_with_retry;
use super::visibility::{Checker, TxnRecord};
use super::{SessionError, Streamer};
use crate::metrics as m;
use crate::publisher::{Batch, Publisher};

/// A batch in flight (see the module's documentation): a task of its own, so that its work
/// (building the scripts' arguments, encoding messages) can run beside the stream loop's on
/// another thread; aborted if dropped (the daemon's run dropped mid-flight).
#[derive(Debug)]
pub(super) struct Flight(tokio::task::JoinHandle<Landed>);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Flight {
    async fn landed(&mut self) -> Landed {
        match (&mut self.0).await {
            Ok(landed) => landed,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a drop aborts the task, and a dropped flight is not awaited.
            Err(e) => unreachable!("a flight's task ended without landing: {e}"),
        }
    }
}

/// What a flight comes back with.
#[derive(Debug)]
pub(super) struct Landed {
    publisher: Publisher,
    checker: Checker,
    /// The end of the batch's last transaction, and how many items it had.
    lsn: Lsn,
    items: usize,
    /// The batch's transactions that new snapshots did not see yet, or why visibility could
    /// not be judged.
    invisible: Result<Vec<TxnRecord>, SessionError>,
    published: bool,
    reconnected: bool,
    /// When the batch's first change was read.
    first_change: Instant,
    /// How long the visibility check and the publish took.
    visibility: Duration,
    publish: Duration,
}

/// The next flight to land, or never when none is in the air (for `tokio::select!`).
pub(super) async fn next_landing(flight: &mut Option<Flight>) -> Landed {
    match flight {
        Some(flight) => flight.landed().await,
        None => std::future::pending().await,
    }
}

impl Streamer<'_> {
    /// Launch `batch` (leaving an empty one), unless it is empty. Called only with nothing in
    /// flight; if a flight is in the air after all, the batch stays where it is, to be
    /// launched after the landing.
    ///
    /// Visibility is checked *before* publishing: a transaction seen visible here is visible
    /// to every fill that takes its lease after the publish (fills read the database after
    /// taking the lease), and one not yet visible gets a second invalidation once it is.
    /// Checked after publishing instead, a commit that became visible between the publish and
    /// the check would let a fill that read the old row in that gap survive.
    pub(super) fn launch(
        &mut self,
        batch: &mut Batch,
        started: &mut Option<Instant>,
        shutdown: &CancellationToken,
    ) {
        if batch.is_empty() {
            *started = None;
            return;
        }
        let Some(mut publisher) = self.publisher.take() else {
            debug_assert!(false, "a batch launched while another is in flight");
            return;
        };
        let batch = std::mem::take(batch);
        let first_change = started.take().unwrap_or_else(Instant::now);
        let txns = std::mem::take(&mut self.batch_txns);
        self.stages.batch_transactions.record(txns.len() as f64);
        self.marked_when_lent = publisher.marked_through();
        let mut checker = std::mem::take(&mut self.checker);
        let control = Arc::clone(&self.control);
        let redis_client = Arc::clone(&self.redis_client);
        let status = Arc::clone(&self.status);
        let shutdown = shutdown.clone();
        let flight = async move {
            let t = Instant::now();
            let xids: Vec<u32> = txns.iter().map(|t| t.xid).collect();
            let invisible = checker.invisible(&control, &xids).await.map(|invisible| {
                txns.into_iter()
                    .filter(|t| invisible.contains(&t.xid))
                    .collect()
            });
            let visibility = t.elapsed();
            let t = Instant::now();
            // Published either way (the sooner the better); without a visibility verdict it
            // is not confirmed: the session ends and the next one replays it.
            let mut retried = publish_with_retry(
                &mut publisher,
                &redis_client,
                &status,
                &batch,
                None,
                &shutdown,
            )
            .await;
            if !retried.published {
                // Shutdown came while Redis was away: one last attempt, as with the batch
                // being built.
                retried.published = publisher.publish(&batch).await.is_ok();
            }
            Landed {
                publisher,
                checker,
                lsn: Lsn(batch.lsn),
                items: batch.len(),
                invisible,
                published: retried.published,
                reconnected: retried.reconnected,
                first_change,
                visibility,
                publish: t.elapsed(),
            }
        };
        // In the session's span, logging where the stream loop logs.
        let flight = flight
            .instrument(tracing::Span::current())
            .with_current_subscriber();
        self.flight = Some(Flight(tokio::spawn(flight)));
    }

    /// Wait for the flight in the air, if any, and take its outcome in ([`take_in`]): whether
    /// its batch was confirmed (true with nothing in flight).
    ///
    /// [`take_in`]: Self::take_in
    pub(super) async fn land(&mut self) -> Result<bool, SessionError> {
        match self.flight.take() {
            Some(mut flight) => {
                let landed = flight.landed().await;
                self.take_in(landed).await
            }
            None => Ok(true),
        }
    }

    /// A flight landed: the publisher and the checker are back, transactions not yet visible
    /// are held for their second invalidation, and only then does the position move on to the
    /// batch's end. Returns whether it did: not when shutdown interrupted the publish (the next
    /// run replays the batch from the slot). An error (the control session lost while judging
    /// visibility) ends the session: the batch is not confirmed, and the next session replays
    /// it. Either way nothing read after the batch may be confirmed in this session.
    pub(super) async fn take_in(&mut self, landed: Landed) -> Result<bool, SessionError> {
        let Landed {
            publisher,
            checker,
            lsn,
            items,
            invisible,
            published,
            reconnected,
            first_change,
            visibility,
            publish,
        } = landed;
        self.publisher = Some(publisher);
        self.checker = checker;
        self.redis_reconnected |= reconnected;
        self.stages.visibility.record(visibility);
        invisible.map(|txns| {
            if !txns.is_empty() {
                for t in txns {
                    tracing::debug!(
                        xid = t.xid,
                        "committed but not yet visible: will invalidate again"
                    );
                    self.pending.push(t);
                }
                metrics::gauge!(m::VISIBILITY_PENDING).set(self.pending.len() as f64);
            }
        })?;
        if !published {
            return Ok(false);
        }
        self.stages.publish.record(publish);
        metrics::histogram!(m::PUBLISH_LATENCY_SECONDS).record(first_change.elapsed());
        let seq = self.publisher().seq();
        tracing::debug!(seq, lsn = %lsn, items, "published a batch");
        self.published = self.published.max(lsn);
        self.status.set_published_seq(seq);
        if std::mem::take(&mut self.redis_reconnected) {
            self.check_redis_identity().await;
        }
        // Only now is the position safe to confirm (held at the oldest pending recheck).
        self.advance_confirmed(lsn);
        Ok(true)
    }
}

//! Publishing to Redis: retries while Redis is away, and the check that Redis is still the
//! server it was.

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;
use walcache_cdc::Lsn;

use super::{Backoff, Streamer};
use crate::metrics as m;
use crate::publisher::{Batch, Publisher};
use crate::status::Status;

/// What [`publish_with_retry`] came to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retried {
    /// Published; false only if shutdown interrupted the retries.
    pub(super) published: bool,
    /// The connection to Redis was replaced on the way (it may reach a restarted Redis).
    pub(super) reconnected: bool,
}

/// Publish, retrying with backoff (and a new connection) while Redis is away. `stream`, when
/// given, keeps hearing status updates with `position` (the old one) so PostgreSQL does not
/// time the connection out; a batch in flight has none to give, and the stream loop sends
/// them meanwhile.
pub(super) async fn publish_with_retry(
    publisher: &mut Publisher,
    redis_client: &redis::Client,
    status: &Status,
    batch: &Batch,
    mut stream: Option<(&mut ReplicationStream, Lsn)>,
    shutdown: &CancellationToken,
) -> Retried {
    let mut backoff = Backoff::redis();
    let mut reconnected = false;
    loop {
        match publisher.publish(batch).await {
            Ok(()) => {
                return Retried {
                    published: true,
                    reconnected,
                }
            }
            Err(e) => {
                status.set_caught_up(false);
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                let pause = backoff.next();
                tracing::warn!(error = %e, retry_in = ?pause, next_seq = publisher.seq() + 1, lsn = %Lsn(batch.lsn), "publishing failed; nothing is confirmed until it succeeds");
                if let Some((s, position)) = stream.as_mut() {
                    let lsn = *position;
                    if let Err(e) = s.send_status(lsn, lsn, lsn, false).await {
                        tracing::debug!(error = %e, "status update during redis outage failed");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Retried { published: false, reconnected },
                    () = tokio::time::sleep(pause) => {}
                }
                reconnected |= reconnect(publisher, redis_client).await;
            }
        }
    }
}

/// A new connection for `publisher`; whether it was made.
pub(super) async fn reconnect(publisher: &mut Publisher, redis_client: &redis::Client) -> bool {
    metrics::counter!(m::RECONNECTS_TOTAL, "to" => "redis").increment(1);
    match publisher.reconnect(redis_client).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "redis reconnect failed");
            false
        }
    }
}

impl Streamer<'_> {
    /// [`publish_with_retry`] with this daemon's publisher, the stream hearing the position
    /// it may report. Returns false only if shutdown interrupted it.
    pub(super) async fn publish_with_retry(
        &mut self,
        batch: &Batch,
        stream: Option<&mut ReplicationStream>,
        shutdown: &CancellationToken,
    ) -> bool {
        let position = self.reportable();
        let publisher = self.publisher.as_mut().expect(super::LENT);
        let retried = publish_with_retry(
            publisher,
            &self.redis_client,
            &self.status,
            batch,
            stream.map(|s| (s, position)),
            shutdown,
        )
        .await;
        self.redis_reconnected |= retried.reconnected;
        retried.published
    }

    pub(super) async fn reconnect_redis(&mut self) {
        let publisher = self.publisher.as_mut().expect(super::LENT);
        // A new connection may be to a restarted Redis: check its run_id at once rather
        // than at the next periodic check.
        if reconnect(publisher, &self.redis_client).await {
            self.redis_reconnected = true;
        }
    }

    /// A Redis whose run_id changed restarted or failed over and may have lost recent
    /// deletes: every marker is checked at once (rather than at the next heartbeat), and what
    /// was lost is flushed.
    pub(super) async fn check_redis_identity(&mut self) {
        let Ok(run_id) = self.publisher().run_id().await else {
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
        let confirmed = self.confirmed;
        match self.publisher().verify(confirmed).await {
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

//! The markers at the start of a session ([`crate::marker`]): flushes owed are recorded before
//! anything else, every marker is judged against the slot, and what Redis lost is flushed
//! before streaming (so before any heartbeat).

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use walcache_cdc::Lsn;

use super::{Backoff, Streamer};
use crate::marker::{self, Loss};
use crate::metrics as m;
use crate::publisher::Publisher;

impl Streamer<'_> {
    /// Run `op` on the publisher until it succeeds, with backoff and a new connection between
    /// attempts while Redis is away. `None` if shutdown interrupted it.
    pub(super) async fn retry_redis<T>(
        &mut self,
        what: &str,
        shutdown: &CancellationToken,
        mut op: impl for<'p> FnMut(&'p mut Publisher) -> BoxFuture<'p, redis::RedisResult<T>>,
    ) -> Option<T> {
        let mut backoff = Backoff::redis();
        loop {
            match op(self.publisher()).await {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.status.set_caught_up(false);
                    metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                    let pause = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?pause, "{what} failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                    self.reconnect_redis().await;
                }
            }
        }
    }

    /// Record durably that every namespace owes a flush (`reason` is what the audit reports it
    /// as). Done before the slot is created or the server change acted on: a crash after this
    /// repeats the flush. False if shutdown interrupted it.
    pub(super) async fn owe_every_flush(
        &mut self,
        reason: Loss,
        shutdown: &CancellationToken,
    ) -> bool {
        self.owed_reason = Some(reason);
        let targets = self.publisher().targets().to_vec();
        self.retry_redis("recording the flushes owed", shutdown, |p| {
            let targets = targets.clone();
            Box::pin(async move { p.mark_owed(&targets).await })
        })
        .await
        .is_some()
    }

    /// Judge every marker against the slot's position `slot`; flush what was lost (recording
    /// the flush as owed first) and take the rest as this daemon's own. False if shutdown
    /// interrupted it.
    pub(super) async fn audit_markers(&mut self, slot: Lsn, shutdown: &CancellationToken) -> bool {
        let Some(marks) = self
            .retry_redis("reading the markers", shutdown, |p| {
                Box::pin(p.read_marks())
            })
            .await
        else {
            return false;
        };
        let server = self.publisher().server().to_owned();
        let mut losses: Vec<(String, Loss)> = Vec::new();
        for (namespace, mark) in marks {
            let rule = self.publisher().rule_hash(&namespace).to_owned();
            match marker::judge(mark.as_ref(), slot, &server, &rule) {
                None => {
                    if let Some(mark) = &mark {
                        self.publisher().accept(namespace, mark);
                    }
                }
                Some(loss) => {
                    // A flush this daemon owed itself is reported as what caused it.
                    let loss = match (loss, self.owed_reason) {
                        (Loss::Owed, Some(reason)) => reason,
                        _ => loss,
                    };
                    losses.push((namespace, loss));
                }
            }
        }
        if !losses.is_empty() {
            let namespaces: Vec<String> = losses.iter().map(|(ns, _)| ns.clone()).collect();
            let recorded = self
                .retry_redis("recording the flushes owed", shutdown, |p| {
                    let namespaces = namespaces.clone();
                    Box::pin(async move { p.mark_owed(&namespaces).await })
                })
                .await;
            if recorded.is_none() {
                return false;
            }
            let flushed = self
                .retry_redis("flushing what Redis lost", shutdown, |p| {
                    let losses = losses.clone();
                    Box::pin(async move { p.repair(losses, slot).await })
                })
                .await;
            if flushed.is_none() {
                return false;
            }
        }
        self.owed_reason = None;
        true
    }
}

//! Namespace flushes asked for from outside the stream (`POST /api/v1/namespaces/{ns}/flush`).
//!
//! They go the way every other flush goes: the stream loop publishes them between two
//! transactions, through the publisher, as a message of the sequenced channel (so every
//! subscriber hears of it, in order) whose script bumps the namespace's generation and
//! writes its marker. Only a streaming daemon flushes: one cut off from PostgreSQL or Redis
//! answers nothing, and the caller gives up after its deadline; a request whose caller has
//! given up is dropped rather than applied late.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;

use super::Streamer;
use crate::mapping::Invalidation;
use crate::metrics as m;
use crate::publisher::Batch;

/// Requests waiting for the stream loop, at most.
const QUEUE: usize = 16;

/// A flush published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// The sequence number of the last message published once it was (its own).
    pub seq: u64,
    /// The epoch it was published in.
    pub epoch: u64,
}

/// Why a flush was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Not streaming (connecting, waiting as a standby, or cut off), or busy past the
    /// deadline: nothing was published; ask again.
    #[error("the daemon did not publish the flush within {0:?}: it is not streaming, or busy")]
    NotPublished(Duration),
    /// The daemon is shutting down, or its pipeline has stopped.
    #[error("the daemon's pipeline has stopped")]
    Stopped,
}

/// One request: the namespace, and where to say it was published.
#[derive(Debug)]
pub(crate) struct FlushRequest {
    namespace: String,
    reply: oneshot::Sender<Flushed>,
}

/// The sending side, for the admin API.
#[derive(Debug, Clone)]
pub struct FlushSender(mpsc::Sender<FlushRequest>);

/// The receiving side, handed to the pipeline in [`RunOptions`](super::RunOptions) (which
/// is `Clone`: the first run to start takes it).
#[derive(Debug, Clone)]
pub struct FlushRequests(Arc<Mutex<Option<mpsc::Receiver<FlushRequest>>>>);

/// A channel of flush requests.
pub fn flush_channel() -> (FlushSender, FlushRequests) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        FlushSender(tx),
        FlushRequests(Arc::new(Mutex::new(Some(rx)))),
    )
}

impl FlushRequests {
    pub(super) fn take(&self) -> Option<mpsc::Receiver<FlushRequest>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl FlushSender {
    /// Ask the stream loop to flush `namespace` (one the rules write to: the caller checks),
    /// and wait at most `deadline` for it to be published.
    ///
    /// # Errors
    ///
    /// [`FlushError`]: not published within the deadline (then it never will be), or the
    /// pipeline has stopped.
    pub async fn flush(&self, namespace: &str, deadline: Duration) -> Result<Flushed, FlushError> {
        let (reply, published) = oneshot::channel();
        let request = FlushRequest {
            namespace: namespace.to_owned(),
            reply,
        };
        let asked = tokio::time::timeout(deadline, async {
            self.0
                .send(request)
                .await
                .map_err(|_| FlushError::Stopped)?;
            published.await.map_err(|_| FlushError::Stopped)
        });
        asked
            .await
            .unwrap_or(Err(FlushError::NotPublished(deadline)))
    }
}

/// The next request, or never when there is no channel.
pub(super) async fn next(requests: &mut Option<mpsc::Receiver<FlushRequest>>) -> FlushRequest {
    match requests {
        Some(rx) => match rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

impl Streamer<'_> {
    /// Publish the flush of `request`'s namespace (unless its caller gave up). Between two
    /// transactions, with the position published so far: it confirms nothing new.
    pub(super) async fn flush_requested(
        &mut self,
        request: FlushRequest,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) {
        if request.reply.is_closed() {
            return;
        }
        let mut batch = Batch::default();
        batch.extend([Invalidation::Flush(request.namespace.clone())]);
        batch.lsn = self.published.0;
        tracing::info!(namespace = %request.namespace, "flushing the namespace as asked through the admin API");
        metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "admin").increment(1);
        if self
            .publish_with_retry(&batch, Some(stream), shutdown)
            .await
        {
            let seq = self.publisher().seq();
            self.status.set_published_seq(seq);
            // The caller may have gone meanwhile: the flush stands either way.
            let _ = request.reply.send(Flushed {
                seq,
                epoch: self.status.epoch(),
            });
        }
    }
}

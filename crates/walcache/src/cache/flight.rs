//! Single-flight: one in-process load per key that concurrent callers share, and the guard
//! that gives a Redis fill lease back when a fill does not complete.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use walcache_protocol::ToKey;

use super::Cache;
use crate::codec::Codec;
use crate::error::Error;
use crate::generation::Snapshot;
use crate::handle::Shared;
use crate::l2::Lease;

pub(super) type FlightResult<V> = Result<Option<V>, Error>;

/// One in-process load that concurrent callers of the same key share.
pub(super) struct Flight<V> {
    tx: tokio::sync::watch::Sender<Option<FlightResult<V>>>,
    /// The key's generations when the flight started: its leader fills under them, and only
    /// a caller that still sees them may share its result.
    snap: Snapshot,
}

/// Give a lease back if the fill did not complete (error, or the caller dropped its future).
pub(super) struct LeaseGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) lease: Option<Lease>,
}

impl LeaseGuard {
    pub(super) fn disarm(&mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        // On the handle's runtime, which drives the Redis connection: the caller's may be the
        // one shutting down.
        self.shared.runtime.spawn(async move {
            if let Some(l2) = shared.l2.as_ref() {
                if let Err(e) = l2.release(&lease).await {
                    tracing::debug!(error = %e, "could not release a fill lease; it expires");
                }
            }
        });
    }
}

/// Leader's side of a flight: completes it, or abandons it on drop so a waiter takes over.
pub(super) struct FlightGuard<'a, V> {
    flights: &'a Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>,
    key: Arc<str>,
    flight: Arc<Flight<V>>,
}

impl<V> FlightGuard<'_, V> {
    /// The generations the flight started under, taken before any of its I/O.
    pub(super) fn snapshot(&self) -> Snapshot {
        self.flight.snap
    }

    pub(super) fn complete(self, result: &FlightResult<V>)
    where
        V: Clone,
    {
        self.flight.tx.send_replace(Some(result.clone()));
        // Drop removes the map entry.
    }
}

impl<V> Drop for FlightGuard<'_, V> {
    fn drop(&mut self) {
        let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}

pub(super) enum Joined<'a, V> {
    Leader(FlightGuard<'a, V>),
    Follower(tokio::sync::watch::Receiver<Option<FlightResult<V>>>),
}

impl<K, V, C> Cache<K, V, C>
where
    K: ToKey + ?Sized,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    /// Join the load of `k` in flight, or lead a new one.
    ///
    /// A flight is joined only if no invalidation touched the key since it started: its load
    /// may have read the row before that invalidation, and a caller arriving after the
    /// invalidation completed must not be handed it. Such a caller starts a flight of its own,
    /// which replaces the old one for everyone arriving later (the old one's callers still get
    /// its result: their reads overlapped the invalidation).
    pub(super) fn join(&self, k: &Arc<str>) -> Joined<'_, V> {
        let mut map = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.snapshot(k);
        if let Some(f) = map.get(k) {
            if f.snap == snap {
                return Joined::Follower(f.tx.subscribe());
            }
        }
        let (tx, _rx) = tokio::sync::watch::channel(None);
        let flight = Arc::new(Flight { tx, snap });
        map.insert(Arc::clone(k), Arc::clone(&flight));
        Joined::Leader(FlightGuard {
            flights: &self.inner.flights,
            key: Arc::clone(k),
            flight,
        })
    }
}

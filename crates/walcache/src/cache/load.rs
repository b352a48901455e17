//! The miss path: L2, the fill lease, the loader, and the fills of both tiers.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;
use walcache_protocol::ToKey;

use super::flight::{FlightResult, Joined, LeaseGuard};
use super::{jittered, key_string, Cache, CacheInner};
use crate::codec::Codec;
use crate::error::{Error, ErrorKind};
use crate::generation::{Snapshot, UNKNOWN_GENERATION};
use crate::handle::Freshness;
use crate::hooks::HookPoint;
use crate::l2::{self, FillOutcome, Found, Lease, LeaseOutcome, Names, L2};

/// Longest wait between two polls of a key another process is loading.
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);

impl<K, V, C> Cache<K, V, C>
where
    K: ToKey + ?Sized,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    pub(super) async fn load_through<F, E>(
        &self,
        key: &K,
        tags: Vec<String>,
        init: F,
        accept_negative: bool,
    ) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        inner.metrics.l1_misses.increment(1);
        let k = key_string(key);
        let shared = &inner.shared;
        if inner.ns.is_out_of_service() {
            // The daemon misses this namespace's changes: neither tier is fresh, and nothing
            // loaded now may be cached (each caller loads: no single flight to join).
            return self.bypass_load(&k, init, "out_of_service").await;
        }
        if shared.config.freshness == Freshness::Strict
            && !shared.live.load(Ordering::Acquire)
            && shared.l2.is_some()
        {
            return self.bypass_load(&k, init, "strict_not_live").await;
        }
        let mut init = Some(init);
        loop {
            match self.join(&k) {
                Joined::Follower(mut rx) => {
                    inner.shared.hooks.pass(HookPoint::JoinedFlight).await;
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(r) => r.clone(),
                        // The leader was dropped before it finished: take over.
                        Err(_) => continue,
                    };
                    match outcome {
                        Some(Ok(None)) if !accept_negative => {
                            // "Not found" for a caller that needs a value: load unshared.
                            let Some(init) = init.take() else { continue };
                            return self.bypass_load(&k, init, "negative_mismatch").await;
                        }
                        Some(result) => return result,
                        None => continue,
                    }
                }
                Joined::Leader(guard) => {
                    let Some(init) = init.take() else {
                        return Err(
                            Error::new(ErrorKind::Loader).with_message("loader already used")
                        );
                    };
                    let snap = guard.snapshot();
                    let result = self.lead(&k, &tags, init, snap, accept_negative).await;
                    guard.complete(&result);
                    return result;
                }
            }
        }
    }

    /// The single-flight leader's work: one script that reads the key or takes its fill lease,
    /// then the load and the fills, all checked against `snap`, the flight's generations taken
    /// before any I/O.
    async fn lead<F, E>(
        &self,
        k: &Arc<str>,
        tags: &[String],
        init: F,
        snap: Snapshot,
        accept_negative: bool,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) else {
            // L1-only: load, then fill L1 under the generation check.
            let v = match self.run_loader(k, init).await? {
                Loaded::Fresh(v) => v,
                Loaded::Stale(v) => return Ok(Some(v)),
            };
            let size = self.weigh(v.as_ref());
            if v.is_some() || inner.negative_ttl.is_some() {
                self.fill_l1(k, v.clone(), snap, tags, size, 0);
            }
            return Ok(v);
        };
        let live = inner.shared.live.load(Ordering::Acquire);
        let known = inner.ns.generations.l2_generation();
        let mut replace: Option<Vec<u8>> = None;
        for _attempt in 0..3 {
            // Armed before the script runs: if this caller is dropped while Redis is taking
            // the lease, the guard still gives it back.
            let prepared = Lease::prepare(names, k);
            let mut guard = LeaseGuard {
                shared: Arc::clone(&inner.shared),
                lease: Some(prepared.clone()),
            };
            let outcome = l2
                .read_or_lease(
                    names,
                    k,
                    &prepared,
                    replace.as_deref(),
                    (!tags.is_empty()).then_some(inner.l2_ttl),
                    tags,
                )
                .await;
            let (generation, outcome) = match outcome {
                Ok(x) => x,
                // The lease may or may not have been taken: the guard gives it back.
                Err(_) => return self.bypass_load(k, init, "redis_unavailable").await,
            };
            self.note_generation(live, known, &snap, generation);
            inner.shared.hooks.pass(HookPoint::AfterL2Read).await;
            match outcome {
                LeaseOutcome::Won(lease) => {
                    if replace.is_none() {
                        inner.metrics.l2_misses.increment(1);
                    }
                    guard.lease = Some(lease);
                    return self.fill_with_lease(k, guard, tags, init, snap).await;
                }
                LeaseOutcome::Present(found) => {
                    guard.disarm(); // not ours: nothing to give back
                    match self.accept_found(found, k, snap, accept_negative) {
                        Accepted::Answer(v) => return Ok(v),
                        Accepted::Replace(bytes) => replace = Some(bytes),
                        // The script reports an empty key as a won lease, never as found.
                        Accepted::Miss => {}
                        Accepted::Leased => {
                            return self
                                .wait_for_lease(
                                    l2,
                                    names,
                                    k,
                                    generation,
                                    init,
                                    snap,
                                    accept_negative,
                                )
                                .await
                        }
                    }
                }
            }
        }
        self.bypass_load(k, init, "redis_unavailable").await
    }

    /// What the miss path's script said of the namespace's generation in Redis: learned if the
    /// process did not know it (unless a flush happened since `snap`), taken if the process
    /// still holds the one it knew and Redis has another (a flush whose message is still on
    /// its way, or a Redis that went backwards).
    fn note_generation(&self, live: bool, known: u64, snap: &Snapshot, generation: u64) {
        let generations = &self.inner.ns.generations;
        if known == UNKNOWN_GENERATION {
            if live {
                generations.learn_l2_generation(
                    &self.inner.shared.global_generation,
                    snap,
                    generation,
                );
            }
        } else if known != generation {
            generations.correct_l2_generation(known, generation);
        }
    }

    /// Interpret what L2 holds for a key.
    pub(super) fn accept_found(
        &self,
        found: Found,
        k: &Arc<str>,
        snap: Snapshot,
        accept_negative: bool,
    ) -> Accepted<V> {
        let inner = &self.inner;
        match found {
            Found::Miss => Accepted::Miss,
            Found::Lease => Accepted::Leased,
            Found::Value(bytes) => {
                match l2::split_value(&bytes)
                    .ok_or(None)
                    .and_then(|(tags, payload)| {
                        inner
                            .codec
                            .decode::<V>(payload)
                            .map(|v| (tags, v))
                            .map_err(Some)
                    }) {
                    Ok((tags, v)) => {
                        inner.metrics.l2_hits.increment(1);
                        // The tags stored with the value, so a tag invalidation finds this L1 entry.
                        self.fill_l1(k, Some(v.clone()), snap, &tags, bytes.len(), 0);
                        Accepted::Answer(Some(v))
                    }
                    Err(e) => {
                        inner.metrics.undecodable.increment(1);
                        if let Some(e) = e {
                            tracing::debug!(namespace = %inner.ns.name, error = %e, "undecodable L2 value: treated as a miss");
                        }
                        Accepted::Replace(bytes)
                    }
                }
            }
            Found::Superseded(bytes) => {
                // One of its tags was invalidated after its stamp: a miss, and the fill may
                // replace exactly these bytes.
                inner.metrics.l2_misses.increment(1);
                Accepted::Replace(bytes)
            }
            Found::Negative(bytes) => {
                if accept_negative {
                    inner.metrics.l2_hits.increment(1);
                    self.fill_l1(k, None, snap, &[], 0, 0);
                    Accepted::Answer(None)
                } else {
                    Accepted::Replace(bytes)
                }
            }
            Found::Undecodable(bytes) => {
                inner.metrics.undecodable.increment(1);
                Accepted::Replace(bytes)
            }
        }
    }

    /// Another process holds the lease: poll for its value (bounded), then load ourselves —
    /// without writing L2.
    #[allow(clippy::too_many_arguments)]
    async fn wait_for_lease<F, E>(
        &self,
        l2: &L2,
        names: &Names,
        k: &Arc<str>,
        generation: u64,
        init: F,
        snap: Snapshot,
        accept_negative: bool,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.shared.config.lease_wait;
        let value_key = names.value_key(generation, k);
        let mut pause = Duration::from_millis(1);
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            // Backoff between polls of the holder's progress (not a synchronisation sleep).
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(LEASE_POLL_MAX);
            match l2.get(names, &value_key).await {
                Ok(Found::Lease) => continue,
                Ok(found @ (Found::Value(_) | Found::Negative(_))) => {
                    if let Accepted::Answer(v) = self.accept_found(found, k, snap, accept_negative)
                    {
                        inner.metrics.lease_value.increment(1);
                        return Ok(v);
                    }
                    break;
                }
                // The holder gave up or an invalidation removed its lease; do not queue again.
                Ok(Found::Miss | Found::Undecodable(_) | Found::Superseded(_)) | Err(_) => break,
            }
        }
        inner.metrics.lease_timeout.increment(1);
        self.bypass_load(k, init, "lease_wait_timeout").await
    }

    /// Load under a won lease. The caller has its answer as soon as the loader has: the value
    /// goes into L1 under the flight's snapshot (as any fill), and the compare-and-set that
    /// stores it in L2 runs on its own task (on the handle's runtime). Should that find an
    /// invalidation raced the load (or fail), the entry this fill put in L1 is taken out again:
    /// in the meantime it was exactly as fresh as an entry filled just before that
    /// invalidation, which its announcement removes. The stale-if-error copy is kept only once
    /// stored.
    async fn fill_with_lease<F, E>(
        &self,
        k: &Arc<str>,
        guard: LeaseGuard,
        tags: &[String],
        init: F,
        snap: Snapshot,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let v = match self.run_loader(k, init).await? {
            Loaded::Fresh(v) => v,
            // An answer, not a fill: the guard gives the lease back.
            Loaded::Stale(v) => return Ok(Some(v)),
        };
        let Some(stamp) = guard.lease.as_ref().map(|l| l.stamp) else {
            return Ok(v);
        };
        let (envelope, ttl) = match &v {
            Some(value) => {
                let payload = inner
                    .codec
                    .encode(value)
                    .map_err(|e| Error::new(ErrorKind::Codec).with_source(e))?;
                (
                    l2::value_envelope(&payload, tags, stamp),
                    jittered(inner.l2_ttl, inner.jitter),
                )
            }
            None => match inner.negative_ttl {
                Some(n) => (l2::negative_envelope(stamp), jittered(n, inner.jitter)),
                // Nothing to cache: the guard gives the lease back.
                None => return Ok(None),
            },
        };
        let id = inner.next_fill.fetch_add(1, Ordering::Relaxed);
        self.fill_l1(k, v.clone(), snap, tags, envelope.len(), id);
        inner.pending_fills.send_modify(|n| *n += 1);
        let fill = PendingFill {
            inner: Arc::clone(inner),
            key: Arc::clone(k),
            tags: tags.to_vec(),
            guard,
            id,
            snap,
            value: v.clone(),
            settled: false,
        };
        if inner.shared.runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            // A current-thread runtime runs a spawned task only while someone drives it: once
            // the caller's `block_on` returns, the compare-and-set would wait (and other
            // processes on its lease) until the next call. So the caller awaits it here.
            fill.run(envelope, ttl).await;
        } else {
            // On the handle's runtime (it drives the Redis connection), not the caller's,
            // which may stop before the compare-and-set lands.
            inner.shared.runtime.spawn(fill.run(envelope, ttl));
        }
        Ok(v)
    }

    /// A load that reads and writes no cache tier, under the process-wide cap.
    async fn bypass_load<F, E>(
        &self,
        k: &Arc<str>,
        init: F,
        reason: &'static str,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let shared = &self.inner.shared;
        self.inner.metrics.bypass(reason);
        let waiting = Instant::now();
        let _permit =
            shared.bypass.acquire().await.map_err(|_| {
                Error::new(ErrorKind::Loader).with_message("bypass semaphore closed")
            })?;
        // The fleet's cap too, unless Redis is why the load bypasses (it cannot be asked).
        let _fleet = match (&shared.fleet_bypass, &shared.l2) {
            (Some(cap), Some(l2)) if reason != "redis_unavailable" => cap.permit(shared, l2).await,
            _ => None,
        };
        self.inner.metrics.bypass_wait.record(waiting.elapsed());
        let _in_flight = InFlight::new(&self.inner.metrics.bypass_in_flight);
        Ok(self.run_loader(k, init).await?.into_value())
    }

    /// Call the loader with a span and metrics; on failure, answer with a stale copy if
    /// allowed. A stale answer is marked so that no tier is filled with it: written back as
    /// if just loaded, it would outlive the outage and its `max_age` by a whole time-to-live.
    async fn run_loader<F, E>(&self, k: &Arc<str>, init: F) -> Result<Loaded<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let span = tracing::debug_span!("walcache.load", namespace = %inner.ns.name);
        let start = Instant::now();
        let result = init.instrument(span).await;
        inner.metrics.load_seconds.record(start.elapsed());
        match result {
            Ok(v) => {
                inner.metrics.loads_ok.increment(1);
                Ok(Loaded::Fresh(v))
            }
            Err(e) => {
                if let Some(v) = inner
                    .stale
                    .as_ref()
                    .and_then(|s| s.get(&**k))
                    .map(|c| c.value)
                {
                    inner.metrics.loads_stale.increment(1);
                    tracing::warn!(namespace = %inner.ns.name, error = %e, "loader failed: serving a stale value");
                    return Ok(Loaded::Stale(v));
                }
                inner.metrics.loads_error.increment(1);
                Err(Error::loader(e))
            }
        }
    }
}

/// A fill's compare-and-set, on its own task once the caller has its answer. Counted in
/// `pending_fills` from just before its creation to its drop (also when the task is aborted
/// with its runtime).
struct PendingFill<V: Clone + Send + Sync + 'static, C> {
    inner: Arc<CacheInner<V, C>>,
    key: Arc<str>,
    tags: Vec<String>,
    /// Gives the lease back unless the compare-and-set settled it.
    guard: LeaseGuard,
    /// Its id in L1 (`L1Entry::fill`): what it takes out again if it does not store.
    id: u64,
    /// The flight's snapshot, for the stale-if-error copy kept once stored.
    snap: Snapshot,
    value: Option<V>,
    /// The compare-and-set ran (whatever it answered).
    settled: bool,
}

impl<V, C> PendingFill<V, C>
where
    V: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    async fn run(mut self, envelope: Vec<u8>, ttl: Duration) {
        let Some(l2) = self.inner.shared.l2.as_ref() else {
            return;
        };
        let Some(lease) = self.guard.lease.clone() else {
            return;
        };
        let outcome = l2.fill(&lease, &envelope, ttl, &self.tags).await;
        self.settled = true;
        match outcome {
            Ok(FillOutcome::Stored) => {
                self.guard.disarm();
                if let Some(v) = &self.value {
                    self.inner
                        .fill_stale(&self.key, v, self.snap, super::shared_tags(&self.tags));
                }
            }
            Ok(FillOutcome::LeaseLost | FillOutcome::Raced) => {
                // An invalidation won the race: the value loaded may predate it.
                self.guard.disarm();
                self.inner.metrics.discarded_l2.increment(1);
                self.inner.forget_fill(&self.key, self.id);
            }
            // Unknown whether an invalidation raced it. The lease is given back here, not by the
            // guard's own task, so that `wait_for_l2_fills` waits for that too.
            Err(_) => {
                self.inner.forget_fill(&self.key, self.id);
                if let Some(lease) = self.guard.lease.take() {
                    if let Err(e) = l2.release(&lease).await {
                        tracing::debug!(error = %e, "could not release a fill lease; it expires");
                    }
                }
            }
        }
    }
}

impl<V: Clone + Send + Sync + 'static, C> Drop for PendingFill<V, C> {
    fn drop(&mut self) {
        if !self.settled {
            // Never ran (its runtime shut down): nothing checked the value against the
            // invalidations that raced its load.
            self.inner.forget_fill(&self.key, self.id);
        }
        self.inner
            .pending_fills
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One bypassing load counted in [`BYPASS_LOADS_IN_FLIGHT`](crate::metrics::BYPASS_LOADS_IN_FLIGHT)
/// while it runs, also when its caller drops it.
struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// What a load produced.
enum Loaded<V> {
    /// From the loader: may fill the tiers.
    Fresh(Option<V>),
    /// The stale-if-error copy: an answer for the caller only.
    Stale(V),
}

impl<V> Loaded<V> {
    fn into_value(self) -> Option<V> {
        match self {
            Loaded::Fresh(v) => v,
            Loaded::Stale(v) => Some(v),
        }
    }
}

pub(super) enum Accepted<V> {
    Answer(Option<V>),
    Replace(Vec<u8>),
    Miss,
    Leased,
}

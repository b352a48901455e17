//! `Cache<K, V>`: the read path (L1 → L2 → loader), fills, and application-side invalidation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use walcache_protocol::{validate_tag, Body, KeyBuilder, KeyRef, Message, TagRef, ToKey};

use crate::codec::{Codec, Postcard};
use crate::counter::StripedCounter;
use crate::error::{Error, ErrorKind};
use crate::generation::{handshake_fence, key_hash, Snapshot, UNKNOWN_GENERATION};
use crate::handle::{Freshness, KeyMarker, L1Target, Namespace, Shared, Walcache};
use crate::hooks::HookPoint;
use crate::l2::{self, Found, Names, L2};
use crate::metrics as m;

mod builder;
mod flight;
mod load;

pub use builder::CacheBuilder;
use flight::Flight;
use load::Accepted;

/// Per-entry overhead added to the weight of an entry in byte-bounded mode.
const ENTRY_OVERHEAD_BYTES: u32 = 64;

/// The counters an L1 entry records at fill.
struct Stamps {
    flushes: u64,
    tags: Option<Arc<[u64]>>,
}

/// A stale-if-error copy: the value and the tags it carries, so that this process's own
/// [`Cache::invalidate_tag`] drops it as [`Cache::invalidate`] drops a key's.
#[derive(Clone)]
struct StaleCopy<V> {
    value: V,
    tags: Option<Arc<[String]>>,
}

/// What L1 holds for a key.
#[derive(Clone)]
struct L1Entry<V> {
    /// `None` is a cached "not found".
    value: Option<V>,
    /// When a "not found" stops counting (its own, shorter time-to-live); `None` for values.
    /// When the entry stops counting before L1's time-to-live: a "not found" after its own,
    /// shorter time-to-live, or any entry after the daemon's full-refresh interval where that
    /// is shorter than L1's (the cap the daemon's heartbeats set). `None` for most entries, so
    /// most hits never read the clock.
    until: Option<Instant>,
    tags: Option<Arc<[String]>>,
    /// The tags' counters when the entry was filled (same order as `tags`): a hit whose tag
    /// moved since is a miss (see `generation::TagStamps`).
    stamps: Option<Arc<[u64]>>,
    /// The namespace's counter when the entry was filled: a hit after a flush is a miss (see
    /// the `generation` module docs).
    flushes: u64,
    /// The lease fill that inserted it (0: any other fill): its compare-and-set, should it
    /// fail, takes out this entry and no other.
    fill: u64,
    weight: u32,
}

/// `ttl` shortened by a random fraction below `jitter`, so entries filled together do not all
/// expire together.
fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let cut: f64 = rand::rng().random_range(0.0..jitter);
    ttl.mul_f64(1.0 - cut).max(Duration::from_millis(1))
}

/// L1's hasher: fast on short string keys, seeded per process.
type L1Hasher = foldhash::fast::RandomState;

/// Metric handles, resolved once per cache.
struct CacheMetrics {
    l1_hits: Counter,
    l1_misses: Counter,
    l2_hits: Counter,
    l2_misses: Counter,
    loads_ok: Counter,
    loads_error: Counter,
    loads_stale: Counter,
    load_seconds: metrics::Histogram,
    undecodable: Counter,
    discarded_l1: Counter,
    discarded_l2: Counter,
    lease_value: Counter,
    lease_timeout: Counter,
    bypass_wait: metrics::Histogram,
    bypass_in_flight: metrics::Gauge,
    namespace: String,
}

impl CacheMetrics {
    fn new(ns: &str) -> Self {
        let n = ns.to_owned();
        CacheMetrics {
            l1_hits: metrics::counter!(m::HITS_TOTAL, "namespace" => n.clone(), "tier" => "l1"),
            l1_misses: metrics::counter!(m::MISSES_TOTAL, "namespace" => n.clone(), "tier" => "l1"),
            l2_hits: metrics::counter!(m::HITS_TOTAL, "namespace" => n.clone(), "tier" => "l2"),
            l2_misses: metrics::counter!(m::MISSES_TOTAL, "namespace" => n.clone(), "tier" => "l2"),
            loads_ok: metrics::counter!(m::LOADS_TOTAL, "namespace" => n.clone(), "outcome" => "ok"),
            loads_error: metrics::counter!(m::LOADS_TOTAL, "namespace" => n.clone(), "outcome" => "error"),
            loads_stale: metrics::counter!(m::LOADS_TOTAL, "namespace" => n.clone(), "outcome" => "stale_served"),
            load_seconds: metrics::histogram!(m::LOAD_DURATION_SECONDS, "namespace" => n.clone()),
            undecodable: metrics::counter!(m::L2_UNDECODABLE_TOTAL, "namespace" => n.clone()),
            discarded_l1: metrics::counter!(m::FILLS_DISCARDED_TOTAL, "namespace" => n.clone(), "tier" => "l1"),
            discarded_l2: metrics::counter!(m::FILLS_DISCARDED_TOTAL, "namespace" => n.clone(), "tier" => "l2"),
            lease_value: metrics::counter!(m::LEASE_WAITS_TOTAL, "namespace" => n.clone(), "outcome" => "value"),
            lease_timeout: metrics::counter!(m::LEASE_WAITS_TOTAL, "namespace" => n.clone(), "outcome" => "timeout"),
            bypass_wait: metrics::histogram!(m::BYPASS_WAIT_SECONDS, "namespace" => n.clone()),
            bypass_in_flight: metrics::gauge!(m::BYPASS_LOADS_IN_FLIGHT, "namespace" => n.clone()),
            namespace: n,
        }
    }

    fn bypass(&self, reason: &'static str) {
        metrics::counter!(m::BYPASS_LOADS_TOTAL, "namespace" => self.namespace.clone(), "reason" => reason)
            .increment(1);
    }
}

struct CacheInner<V, C> {
    /// The configured L1 time-to-live (before any cap).
    l1_ttl: Duration,
    handle: Walcache,
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
    /// Redis names; `None` in L1-only mode.
    names: Option<Arc<Names>>,
    l1: moka::sync::Cache<Arc<str>, L1Entry<V>, L1Hasher>,
    weighted: bool,
    codec: C,
    l2_ttl: Duration,
    jitter: f64,
    negative_ttl: Option<Duration>,
    stale: Option<moka::sync::Cache<Arc<str>, StaleCopy<V>>>,
    flights: Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>,
    /// L2 fills whose compare-and-set is still running, after their callers had their answer
    /// (see [`Cache::wait_for_l2_fills`]).
    pending_fills: tokio::sync::watch::Sender<usize>,
    /// Ids of lease fills (see `L1Entry::fill`).
    next_fill: std::sync::atomic::AtomicU64,
    l1_hits: StripedCounter,
    metrics: CacheMetrics,
}

impl<V, C> CacheInner<V, C>
where
    V: Clone + Send + Sync + 'static,
{
    fn snapshot(&self, k: &str) -> Snapshot {
        self.ns
            .generations
            .snapshot(&self.shared.global_generation, key_hash(k))
    }

    /// Keep `v` (carrying `tags`, from [`shared_tags`]) as the key's stale-if-error copy if no
    /// invalidation touched the key since `snap` (and take it out again if one lands during
    /// the insert).
    fn fill_stale(&self, k: &Arc<str>, v: &V, snap: Snapshot, tags: Option<Arc<[String]>>) {
        let Some(stale) = &self.stale else { return };
        // A value an invalidation raced may predate it, and may be older than the copy
        // already held (or come back after an explicit `invalidate` dropped the copies).
        let tagged = tags.is_some();
        if snap.holds(&self.snapshot(k), tagged) {
            let copy = StaleCopy {
                value: v.clone(),
                tags,
            };
            stale.insert(Arc::clone(k), copy);
            handshake_fence(); // insert, then re-read: see generation.rs
            if !snap.holds(&self.snapshot(k), tagged) {
                stale.invalidate(&**k);
            }
        }
    }

    /// Take out of L1 the entry lease fill `fill` inserted, if it is still there: an entry a
    /// later fill inserted is none of its business.
    fn forget_fill(&self, k: &Arc<str>, fill: u64) {
        let _ = self.l1.entry(Arc::clone(k)).and_compute_with(|e| match e {
            Some(e) if e.value().fill == fill => moka::ops::compute::Op::Remove,
            _ => moka::ops::compute::Op::Nop,
        });
    }
}

impl<V, C> L1Target for CacheInner<V, C>
where
    V: Clone + Send + Sync + 'static,
    C: Send + Sync,
{
    fn invalidate_keys(&self, keys: &[&str]) {
        for k in keys {
            self.l1.invalidate(*k);
        }
    }

    fn invalidate_all(&self) {
        self.l1.invalidate_all();
    }

    fn publish_metrics(&self) {
        let hits = self.l1_hits.take_unpublished();
        if hits > 0 {
            self.metrics.l1_hits.increment(hits);
        }
    }

    fn cap_time_to_live(&self, cap: Option<Duration>) {
        if let Some(cap) = cap.filter(|cap| *cap < self.l1_ttl) {
            tracing::info!(
                namespace = %self.ns.name,
                configured = ?self.l1_ttl,
                cap = ?cap,
                "L1 time-to-live of namespace {} cut from {:?} to {:?}, the daemon's full-refresh interval",
                self.ns.name,
                self.l1_ttl,
                cap
            );
        }
    }
}

/// A two-tier cache of `V` values by `K` keys in one namespace: L1 in process (moka), L2 in
/// Redis, read through to your loader. Cheap to clone; clones share everything.
///
/// See the [crate documentation](crate) for the consistency contract and failure behaviour.
pub struct Cache<K: ?Sized, V, C = Postcard> {
    inner: Arc<CacheInner<V, C>>,
    _marker: KeyMarker<K>,
}

impl<K: ?Sized, V, C> Clone for Cache<K, V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<K: ?Sized, V, C> std::fmt::Debug for Cache<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.ns.name)
            .field("l1_entries", &self.inner.l1.entry_count())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The hit path's per-thread state: a reused key buffer and the hit counter's stripe.
    static KEY_BUF: RefCell<HitLocal> = RefCell::new(HitLocal {
        key: KeyBuilder::new(),
        stripe: crate::counter::new_stripe(),
    });
}

struct HitLocal {
    key: KeyBuilder,
    stripe: usize,
}

fn key_string<K: ToKey + ?Sized>(key: &K) -> Arc<str> {
    KEY_BUF.with(|local| {
        let b = &mut local.borrow_mut().key;
        b.clear();
        key.write_key(b);
        Arc::from(b.as_str())
    })
}

impl<K, V, C> Cache<K, V, C>
where
    K: ToKey + ?Sized,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    /// The cache's namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.ns.name
    }

    /// The handle this cache was made from.
    pub fn handle(&self) -> &Walcache {
        &self.inner.handle
    }

    /// Approximate number of entries in L1.
    pub fn entry_count(&self) -> u64 {
        self.inner.l1.entry_count()
    }

    /// Run L1's pending maintenance (expiry, eviction) now; mostly for tests.
    pub fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks();
    }

    /// Whether L1 holds `key` right now and a read would be served from it (not past its
    /// deadline, filled after the last flush and tag invalidation that concern it), without
    /// touching L2 or counting a hit.
    pub fn contains_in_l1(&self, key: &K) -> bool {
        KEY_BUF.with(|local| {
            let b = &mut local.borrow_mut().key;
            b.clear();
            key.write_key(b);
            self.inner
                .l1
                .get(b.as_str())
                .is_some_and(|e| self.servable(&e))
        })
    }

    /// Wait until every write to L2 that this cache's reads have started has ended: stored,
    /// refused by its compare-and-set (an invalidation raced the load: the value then leaves
    /// L1 too), or failed.
    ///
    /// A read that misses both tiers returns as soon as its loader has answered, with the
    /// value already in L1; the compare-and-set that stores it in L2 finishes on its own task
    /// (one Redis round trip later; on a handle built on a current-thread runtime the call
    /// awaits it instead, since nothing would run that task once the caller stops driving the
    /// runtime). Until then a reader in another process (or one in this
    /// process whose L1 fill was refused) finds the fill lease and waits for the value (at
    /// most [`lease_wait`](crate::WalcacheBuilder::lease_wait)). A fill that fails gives its
    /// lease back before it counts as ended.
    ///
    /// It waits until no fill is pending, including fills started while it waits: call it
    /// once the reads have stopped (before shutting down), or in a test that reads L2 right
    /// after a load.
    pub async fn wait_for_l2_fills(&self) {
        let mut pending = self.inner.pending_fills.subscribe();
        // The sender lives in `inner`, which `self` holds: the channel cannot close.
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Whether an L1 entry may be served: within its own deadline (only "not found" entries
    /// and entries capped by the daemon's refresh interval have one, so most hits never read
    /// the clock), filled after the namespace's last flush, and after the last invalidation of
    /// each of its tags (only tagged entries carry stamps).
    #[inline]
    fn servable(&self, e: &L1Entry<V>) -> bool {
        if e.until.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if e.flushes != self.inner.ns.generations.stamp() {
            return false;
        }
        if let (Some(tags), Some(stamps)) = (&e.tags, &e.stamps) {
            let now = &self.inner.ns.generations.tag_stamps;
            return tags
                .iter()
                .zip(stamps.iter())
                .all(|(t, s)| now.stamp(t) == *s);
        }
        true
    }

    #[inline]
    fn l1_get(&self, key: &K) -> Option<L1Entry<V>> {
        // The hit path: two atomic loads (liveness, the namespace's counter), moka's lookup,
        // one uncontended increment; a tagged entry one more load per tag.
        if !self.inner.shared.live.load(Ordering::Acquire) {
            return None;
        }
        KEY_BUF.with(|local| {
            let mut local = local.borrow_mut();
            let HitLocal { key: buf, stripe } = &mut *local;
            buf.clear();
            key.write_key(buf);
            let hit = self.inner.l1.get(buf.as_str())?;
            if !self.servable(&hit) {
                self.inner.l1.invalidate(buf.as_str());
                return None;
            }
            self.inner.l1_hits.increment_at(*stripe);
            Some(hit)
        })
    }

    /// Read `key` from L1, else L2. Never calls a loader and never writes L2; an L2 hit fills
    /// L1. Redis trouble reads as a miss (and is counted). An L2 read is one `GET`, and one
    /// `HMGET` more for a value that carries tags (its tags' versions, to tell whether one was
    /// invalidated after it was loaded; a tagged read names them up front and costs one
    /// script).
    pub async fn get(&self, key: &K) -> Option<V> {
        if let Some(e) = self.l1_get(key) {
            return e.value;
        }
        // Boxed so the future a hit builds and moves stays small.
        Box::pin(self.get_from_l2(key)).await
    }

    async fn get_from_l2(&self, key: &K) -> Option<V> {
        let inner = &self.inner;
        inner.metrics.l1_misses.increment(1);
        let k = key_string(key);
        let (l2, names) = (inner.shared.l2.as_ref()?, inner.names.as_ref()?);
        if inner.ns.is_out_of_service()
            || (!inner.shared.live.load(Ordering::Acquire)
                && inner.shared.config.freshness == Freshness::Strict)
        {
            return None;
        }
        let snap = self.snapshot(&k);
        let (_, found) = self.read_l2(l2, names, &k, &snap, &[]).await.ok()?;
        inner.shared.hooks.pass(HookPoint::AfterL2Read).await;
        match self.accept_found(found, &k, snap, true) {
            Accepted::Answer(v) => v,
            Accepted::Miss => {
                inner.metrics.l2_misses.increment(1);
                None
            }
            Accepted::Replace(_) | Accepted::Leased => None,
        }
    }

    /// Read `key` through both tiers, calling `init` on a miss — at most once per key across
    /// every process sharing the Redis (single-flight in the process, a lease in Redis).
    ///
    /// One Redis round trip finds the value in L2 or takes the fill lease (see [the read
    /// path](crate#the-read-path)); on a miss the call returns once `init` has answered, with
    /// the value in L1. It is stored in L2 by a compare-and-set that runs after the call
    /// returns and fails if an invalidation arrived during the load (the value then leaves L1
    /// too; [`wait_for_l2_fills`](Self::wait_for_l2_fills) waits for it), and in L1 only if no
    /// invalidation touched the key meanwhile. `init` must read the primary with a fresh
    /// snapshot (autocommit or READ COMMITTED).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Loader`] when `init` fails (and no stale value may be served); get the
    /// loader's own error back with [`Error::loader_error`]. Redis trouble is not an error: the
    /// loader serves.
    pub async fn try_get_with<F, E>(&self, key: &K, init: F) -> Result<V, Error>
    where
        F: Future<Output = Result<V, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        self.try_get_tagged_with(key, &[], init).await
    }

    /// [`try_get_with`](Self::try_get_with) with a closure that makes the loader future.
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](Self::try_get_with).
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, load: F) -> Result<V, Error>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<V, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        self.try_get_with(key, async move { load().await }).await
    }

    /// [`try_get_with`](Self::try_get_with) for a value derived from several rows: it is
    /// dropped whenever one of `tags` is invalidated (by the daemon's rules or by
    /// [`invalidate_tag`](Self::invalidate_tag)), including while it is being loaded.
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](Self::try_get_with), and [`ErrorKind::InvalidName`] for a bad tag.
    pub async fn try_get_tagged_with<F, E>(
        &self,
        key: &K,
        tags: &[&str],
        init: F,
    ) -> Result<V, Error>
    where
        F: Future<Output = Result<V, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        if let Some(e) = self.l1_get(key) {
            if let Some(v) = e.value {
                return Ok(v);
            }
        }
        let tags = owned_tags(tags)?;
        let loaded =
            Box::pin(self.load_through(key, tags, async move { init.await.map(Some) }, false))
                .await?;
        loaded.ok_or_else(|| Error::new(ErrorKind::Loader).with_message("loader returned no value"))
    }

    /// Like [`try_get_with`](Self::try_get_with) for loaders that may find nothing: `Ok(None)`
    /// is cached as "not found" for [`negative_ttl`](CacheBuilder::negative_ttl) if set.
    ///
    /// # Errors
    ///
    /// As [`try_get_with`](Self::try_get_with).
    pub async fn try_get_optional_with<F, E>(&self, key: &K, init: F) -> Result<Option<V>, Error>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        if let Some(e) = self.l1_get(key) {
            return Ok(e.value);
        }
        Box::pin(self.load_through(key, Vec::new(), init, true)).await
    }

    /// Store a value you know to be current, in L1 and L2 (unconditionally).
    ///
    /// Deprecated: a write-through cannot be ordered against other writers. "UPDATE the row,
    /// then `insert` the new value" loses to a concurrent writer whose `insert` lands first
    /// with an older value, and walcached's invalidation of the UPDATE (which arrives after
    /// the commit) may land before either: L2 can keep the older value until its
    /// time-to-live or the next full refresh. A version carried with the value does not
    /// help either, because the invalidation deletes the key and the version with it. With
    /// walcached following the database, the invalidation after your commit is what keeps
    /// the caches right: call [`invalidate`](Self::invalidate) after the commit if this
    /// process must read its own write at once, and let the next read load the row through
    /// [`try_get_with`](Self::try_get_with), whose fill cannot race an invalidation.
    ///
    /// # Errors
    ///
    /// Codec errors, and Redis errors (L1 is written anyway).
    #[deprecated(
        since = "0.1.0",
        note = "a write-through races concurrent writers; call `invalidate` after the commit \
                and let `try_get_with` load the row"
    )]
    pub async fn insert(&self, key: &K, value: V) -> Result<(), Error> {
        #[allow(deprecated)]
        self.insert_tagged(key, value, &[]).await
    }

    /// [`insert`](Self::insert) with tags (see [`try_get_tagged_with`](Self::try_get_tagged_with)).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), and [`ErrorKind::InvalidName`] for a bad tag.
    #[deprecated(
        since = "0.1.0",
        note = "a write-through races concurrent writers; call `invalidate` after the commit \
                and let `try_get_tagged_with` load the value"
    )]
    pub async fn insert_tagged(&self, key: &K, value: V, tags: &[&str]) -> Result<(), Error> {
        let inner = &self.inner;
        let tags = owned_tags(tags)?;
        let k = key_string(key);
        // Fills that started before this write must not overwrite it in L1.
        inner.ns.generations.bump_key(key_hash(&k));
        let encoded = if inner.names.is_some() || inner.weighted {
            Some(
                inner
                    .codec
                    .encode(&value)
                    .map_err(|e| Error::new(ErrorKind::Codec).with_source(e))?,
            )
        } else {
            None
        };
        let size = encoded.as_ref().map_or(0, Vec::len);
        if inner.shared.live.load(Ordering::Acquire) && !inner.ns.is_out_of_service() {
            let stamps = self.stamps(&tags);
            self.put_l1(&k, Some(value), shared_tags(&tags), stamps, size, 0);
        }
        if let (Some(l2), Some(names), Some(payload)) =
            (inner.shared.l2.as_ref(), inner.names.as_ref(), encoded)
        {
            // Stamped by the script, from the Redis server's clock.
            let envelope = l2::value_envelope(&payload, &tags, 0);
            let ttl = jittered(inner.l2_ttl, inner.jitter);
            l2.insert(names, &k, &envelope, ttl, !tags.is_empty())
                .await?;
        }
        Ok(())
    }

    /// Drop `key` here, in L2 and in every other process's L1 (over the application channel,
    /// which does not disturb the daemon's sequence). Call it after your transaction commits:
    /// once it returns, this process reads its own write.
    ///
    /// # Errors
    ///
    /// Redis errors: the key is gone from this process's L1, but L2 and the other processes
    /// keep it until the daemon's invalidation or the time-to-live.
    pub async fn invalidate(&self, key: &K) -> Result<(), Error> {
        let inner = &self.inner;
        let k = key_string(key);
        let forget = || {
            inner.shared.apply_keys(&inner.ns, &[&k]);
            if let Some(stale) = &inner.stale {
                stale.invalidate(&*k);
            }
        };
        forget();
        if let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) {
            // Until the delete has run, a local read can refill L1 from L2's old value, and
            // this process skips its own message: drop the key locally again once the delete
            // is over, however it ends (an error, or this future dropped).
            let _again = OnDrop::new(forget);
            let message = self.app_message(Body::Keys(vec![KeyRef {
                namespace: inner.ns.name.clone(),
                key: k.to_string(),
            }]));
            inner.shared.hooks.pass(HookPoint::BeforeL2Invalidate).await;
            l2.invalidate_keys(names, &[&k], &message).await?;
        }
        Ok(())
    }

    /// Drop every entry of this namespace carrying `tag`, in every tier and process (tags are
    /// scoped to their namespace). Once it returns, this process reads nothing filled with
    /// the tag before it. In Redis it costs one `HSET`, whatever the number of values
    /// carrying the tag: a value's tags are checked when it is read.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`] for a bad tag; Redis errors as for
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        owned_tags(&[tag])?;
        let inner = &self.inner;
        let tags = [TagRef::new(inner.ns.name.clone(), tag)];
        let forget = || {
            inner.shared.apply_tags(&tags);
            if let Some(stale) = &inner.stale {
                let tag = tag.to_owned();
                let carries = move |_: &Arc<str>, c: &StaleCopy<V>| {
                    c.tags.as_ref().is_some_and(|t| t.contains(&tag))
                };
                if stale.invalidate_entries_if(carries).is_err() {
                    // Closures are enabled at build; if moka ever refuses, drop every copy.
                    stale.invalidate_all();
                }
            }
        };
        forget();
        if let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) {
            // As in `invalidate`: drop the tag locally again once the L2 script is over.
            let _again = OnDrop::new(forget);
            let message = self.app_message(Body::Tags(tags.to_vec()));
            inner.shared.hooks.pass(HookPoint::BeforeL2Invalidate).await;
            l2.invalidate_tag(names, tag, &message).await?;
        }
        Ok(())
    }

    /// Drop the whole namespace, in every tier and process: one generation change in Redis.
    /// Once it returns, this process reads nothing filled before it.
    ///
    /// # Errors
    ///
    /// Redis errors as for [`invalidate`](Self::invalidate).
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let forget = || {
            inner.shared.apply_flush(&inner.ns, None);
            if let Some(stale) = &inner.stale {
                stale.invalidate_all();
            }
        };
        forget();
        if let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) {
            // Until the script has run, a local read can still learn the old generation or
            // fill L1 from it, and this process skips its own message: apply the flush again
            // once the script is over, however it ends (an error, or this future dropped).
            let mut again = OnDrop::new(forget);
            let message = self.app_message(Body::Flush(vec![inner.ns.name.clone()]));
            inner.shared.hooks.pass(HookPoint::BeforeL2Flush).await;
            let g = l2.flush(names, &message).await?;
            again.disarm();
            inner.shared.apply_flush(&inner.ns, Some(g));
            if let Some(stale) = &inner.stale {
                stale.invalidate_all();
            }
        }
        Ok(())
    }

    /// An application-channel message: signed when the handle has signing keys.
    fn app_message(&self, body: Body) -> Vec<u8> {
        let shared = &self.inner.shared;
        let mut message = Message::new(shared.process_epoch, 0, body);
        message.sent_at_micros = crate::auth::now_micros();
        shared.auth.encode(&message, &shared.naming.app_channel())
    }

    fn snapshot(&self, k: &str) -> Snapshot {
        self.inner
            .ns
            .generations
            .snapshot(&self.inner.shared.global_generation, key_hash(k))
    }

    /// Read `k` from L2 at the namespace's generation, with the versions of `tags` (the tags
    /// the caller expects the value to carry). `snap` must have been taken before: a
    /// generation learned from this read is kept only if no flush happened since.
    async fn read_l2(
        &self,
        l2: &L2,
        names: &Names,
        k: &str,
        snap: &Snapshot,
        tags: &[String],
    ) -> Result<(u64, Found), Error> {
        let shared = &self.inner.shared;
        let live = shared.live.load(Ordering::Acquire);
        let generation = self.inner.ns.generations.l2_generation();
        if live && generation != UNKNOWN_GENERATION {
            // Live: the subscriber keeps the generation current. Exactly one GET (a script
            // with the tag versions, for a tagged read).
            l2.read(names, Some(generation), k, tags).await
        } else {
            let (generation, found) = l2.read(names, None, k, tags).await?;
            if live {
                self.inner.ns.generations.learn_l2_generation(
                    &shared.global_generation,
                    snap,
                    generation,
                );
            }
            Ok((generation, found))
        }
    }

    /// The counters an entry records: its namespace's and its tags' (`None` for an untagged
    /// entry), read before the caller checks that no invalidation raced the fill (see
    /// `generation::TagStamps` and the `generation` module docs).
    fn stamps(&self, tags: &[String]) -> Stamps {
        Stamps {
            flushes: self.inner.ns.generations.stamp(),
            tags: (!tags.is_empty()).then(|| {
                tags.iter()
                    .map(|t| self.inner.ns.generations.tag_stamps.stamp(t))
                    .collect()
            }),
        }
    }

    /// Insert into L1 with `stamps`, read before the caller's check.
    fn put_l1(
        &self,
        k: &Arc<str>,
        value: Option<V>,
        tags: Option<Arc<[String]>>,
        stamps: Stamps,
        size: usize,
        fill: u64,
    ) {
        let inner = &self.inner;
        let weight = if inner.weighted {
            u32::try_from(k.len() + size)
                .unwrap_or(u32::MAX)
                .saturating_add(ENTRY_OVERHEAD_BYTES)
        } else {
            1
        };
        let negative = match (&value, inner.negative_ttl) {
            (None, Some(ttl)) => Some(ttl),
            _ => None,
        };
        let capped = inner.ns.l1_ttl_cap().filter(|cap| *cap < inner.l1_ttl);
        let until = match (negative, capped) {
            (Some(a), Some(b)) => Some(Instant::now() + a.min(b)),
            (a, b) => a.or(b).map(|d| Instant::now() + d),
        };
        inner.l1.insert(
            Arc::clone(k),
            L1Entry {
                value,
                until,
                tags,
                stamps: stamps.tags,
                flushes: stamps.flushes,
                fill,
                weight,
            },
        );
    }

    /// Insert into L1 only if the stream is live and no invalidation touched the key since
    /// `snap`; if one lands during the insert, take the entry out again. The same for the
    /// stale-if-error copy, live or not.
    ///
    /// `fill` is a lease fill's id (0 for any other fill): its stale-if-error copy is kept
    /// only once its compare-and-set has stored it (`PendingFill`).
    fn fill_l1(
        &self,
        k: &Arc<str>,
        value: Option<V>,
        snap: Snapshot,
        tags: &[String],
        size: usize,
        fill: u64,
    ) {
        let inner = &self.inner;
        let tagged = !tags.is_empty();
        // One shared list for the stale-if-error copy and the L1 entry.
        let shared = shared_tags(tags);
        if let (0, Some(v)) = (fill, &value) {
            inner.fill_stale(k, v, snap, shared.clone());
        }
        // Out of service: the counter moves after the state (`Shared::apply_view`), so a fill
        // that misses the state below finds its snapshot moved.
        if !inner.shared.live.load(Ordering::Acquire) || inner.ns.is_out_of_service() {
            return;
        }
        // The stamps before the check: a tag invalidation bumps the namespace's tag counter
        // before the tag's, so a check that misses the first bump proves the stamps were read
        // before the second, and the entry is refused on hit. Read after the check, they could
        // carry the new counter into an entry filled before an invalidation that has already
        // returned, served until the re-read below takes it out.
        let stamps = self.stamps(tags);
        if !snap.holds(&self.snapshot(k), tagged) {
            inner.metrics.discarded_l1.increment(1);
            return;
        }
        inner.shared.hooks.pass_blocking(HookPoint::BeforeL1Insert);
        self.put_l1(k, value, shared, stamps, size, fill);
        inner.shared.hooks.pass_blocking(HookPoint::AfterL1Insert);
        handshake_fence(); // insert, then re-read: see generation.rs
        if !snap.holds(&self.snapshot(k), tagged) {
            inner.l1.invalidate(&**k);
            inner.metrics.discarded_l1.increment(1);
        }
    }

    fn weigh(&self, v: Option<&V>) -> usize {
        match v {
            Some(v) if self.inner.weighted => self.inner.codec.encode(v).map_or(0, |b| b.len()),
            _ => 0,
        }
    }
}

/// Runs a closure when dropped unless disarmed: the second half of an invalidation must run
/// even when the caller drops the future between the halves.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn new(f: F) -> Self {
        OnDrop(Some(f))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A value's tags as an entry holds them: `None` for an untagged value.
fn shared_tags(tags: &[String]) -> Option<Arc<[String]>> {
    (!tags.is_empty()).then(|| tags.into())
}

fn owned_tags(tags: &[&str]) -> Result<Vec<String>, Error> {
    tags.iter()
        .map(|t| {
            validate_tag(t)
                .map(|()| (*t).to_owned())
                .map_err(|e| Error::new(ErrorKind::InvalidName).with_message(e.to_string()))
        })
        .collect()
}

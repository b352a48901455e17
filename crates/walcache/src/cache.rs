//! `Cache<K, V>`: the read path (L1 → L2 → loader), fills, and application-side invalidation.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Counter;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;
use walcache_protocol::{
    validate_namespace, validate_tag, Body, KeyBuilder, KeyRef, Message, ToKey,
};

use crate::codec::{Codec, Postcard};
use crate::counter::StripedCounter;
use crate::error::{Error, ErrorKind};
use crate::generation::{key_hash, Snapshot, UNKNOWN_GENERATION};
use crate::handle::{Freshness, KeyMarker, L1Target, Namespace, Shared, Walcache};
use crate::l2::{self, FillOutcome, Found, Lease, LeaseOutcome, Names, L2};
use crate::metrics as m;

/// How L1 is bounded.
#[derive(Debug, Clone, Copy)]
enum Capacity {
    Entries(u64),
    Bytes(u64),
}

/// Per-entry overhead added to the weight of an entry in byte-bounded mode.
const ENTRY_OVERHEAD_BYTES: u32 = 64;
/// Longest wait between two polls of a key another process is loading.
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);

/// Configures a [`Cache`]; made by [`Walcache::cache`]. Every setter documents its default.
pub struct CacheBuilder<K: ?Sized, V, C = Postcard> {
    handle: Walcache,
    namespace: String,
    capacity: Capacity,
    l1_ttl: Duration,
    l2_ttl: Duration,
    jitter: f64,
    schema: u32,
    codec: C,
    negative_ttl: Option<Duration>,
    stale_if_error: Option<Duration>,
    _marker: KeyMarker<K>,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<K: ?Sized, V, C: std::fmt::Debug> std::fmt::Debug for CacheBuilder<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("namespace", &self.namespace)
            .field("capacity", &self.capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("l2_ttl", &self.l2_ttl)
            .field("jitter", &self.jitter)
            .field("schema", &self.schema)
            .field("codec", &self.codec)
            .field("negative_ttl", &self.negative_ttl)
            .field("stale_if_error", &self.stale_if_error)
            .finish()
    }
}

impl<K, V> CacheBuilder<K, V, Postcard>
where
    K: ?Sized,
{
    pub(crate) fn new(handle: Walcache, namespace: &str) -> Self {
        CacheBuilder {
            handle,
            namespace: namespace.to_owned(),
            capacity: Capacity::Entries(10_000),
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(3600),
            jitter: 0.1,
            schema: 1,
            codec: Postcard,
            negative_ttl: None,
            stale_if_error: None,
            _marker: std::marker::PhantomData,
            _value: std::marker::PhantomData,
        }
    }
}

impl<K: ?Sized, V, C> CacheBuilder<K, V, C> {
    /// Bound L1 by number of entries. Default 10,000 entries.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.capacity = Capacity::Entries(entries);
        self
    }

    /// Bound L1 by approximate bytes instead: each entry weighs its key, its encoded value and a
    /// fixed overhead. (Without Redis, values are encoded once on insert just to be weighed.)
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity = Capacity::Bytes(bytes);
        self
    }

    /// L1 time-to-live. With the daemon it bounds how long an entry can outlive a lost
    /// invalidation; keep it at or below the daemon's full-refresh interval. Without a stream
    /// it *is* the staleness bound. Default 60 s.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// L2 (Redis) time-to-live. Default 1 h.
    pub fn l2_time_to_live(mut self, ttl: Duration) -> Self {
        self.l2_ttl = ttl;
        self
    }

    /// Random spread of the L2 time-to-live (and of the negative one), as a fraction
    /// (0.0–0.5): each entry lives `ttl × (1 − U(0, jitter))`, so entries filled together do
    /// not expire together and reach the database together. L1 entries use the exact
    /// [`time_to_live`](Self::time_to_live): an L1 expiry only sends a read to L2, and a
    /// per-entry expiry would put a clock read on every L1 hit. Default 0.1.
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Version of the value's encoding, part of every L2 key: bump it when `V` changes shape, so
    /// old and new deploys never read each other's bytes. Default 1.
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema = version;
        self
    }

    /// The codec for L2 values. Default [`Postcard`]; [`Json`](crate::Json) is available.
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<K, V, C2> {
        CacheBuilder {
            handle: self.handle,
            namespace: self.namespace,
            capacity: self.capacity,
            l1_ttl: self.l1_ttl,
            l2_ttl: self.l2_ttl,
            jitter: self.jitter,
            schema: self.schema,
            codec,
            negative_ttl: self.negative_ttl,
            stale_if_error: self.stale_if_error,
            _marker: std::marker::PhantomData,
            _value: std::marker::PhantomData,
        }
    }

    /// Cache "not found" (a loader returning `Ok(None)` through
    /// [`Cache::try_get_optional_with`]) for this long, in both tiers. Default: not cached.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// When the loader fails, answer with the last value this process saw for the key if it was
    /// seen at most `max_age` ago — even if it was invalidated since. Never older than
    /// `max_age`. Costs a second, bounded copy of recently used values. Default: off.
    pub fn stale_if_error(mut self, max_age: Duration) -> Self {
        self.stale_if_error = Some(max_age);
        self
    }
}

impl<K, V, C> CacheBuilder<K, V, C>
where
    K: ToKey + ?Sized,
    V: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    C: Codec,
{
    /// Validate the settings and create the cache.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] naming the setting, its value and the fix.
    pub fn build(self) -> Result<Cache<K, V, C>, Error> {
        validate_namespace(&self.namespace).map_err(|e| {
            Error::config(format!(
                "namespace {:?}: {e}; use the namespace of the daemon's rule for this table",
                self.namespace
            ))
        })?;
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(Error::config(format!(
                "ttl_jitter = {}: must be between 0.0 and 0.5",
                self.jitter
            )));
        }
        for (name, d) in [
            ("time_to_live", self.l1_ttl),
            ("l2_time_to_live", self.l2_ttl),
        ] {
            if d < Duration::from_millis(1) {
                return Err(Error::config(format!(
                    "{name} = {d:?}: must be at least 1 ms"
                )));
            }
        }
        if self
            .negative_ttl
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(Error::config("negative_ttl = 0: must be at least 1 ms"));
        }
        let shared = Arc::clone(self.handle.shared());
        let names = shared
            .l2
            .as_ref()
            .map(|_| Names::new(&shared.naming, &self.namespace, self.schema));
        // One time-to-live for all of L1 (moka's cheapest expiry on the hit path); jitter
        // spreads L2's, where synchronized expiry would reach the database.
        let mut l1 = moka::sync::Cache::builder()
            .time_to_live(self.l1_ttl)
            .support_invalidation_closures();
        let weighted = match self.capacity {
            Capacity::Entries(n) => {
                l1 = l1.max_capacity(n);
                false
            }
            Capacity::Bytes(n) => {
                l1 = l1
                    .max_capacity(n)
                    .weigher(|_k: &Arc<str>, e: &L1Entry<V>| e.weight);
                true
            }
        };
        let l1 = l1.build_with_hasher(L1Hasher::default());
        let stale = self.stale_if_error.map(|age| {
            moka::sync::Cache::builder()
                .max_capacity(match self.capacity {
                    Capacity::Entries(n) => n,
                    Capacity::Bytes(n) => n / 256,
                })
                .time_to_live(age)
                .build()
        });
        let namespace = self.namespace.clone();
        let ns_label = self.namespace.clone();
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<CacheInner<V, C>>| {
            let target: std::sync::Weak<dyn L1Target> =
                std::sync::Weak::<CacheInner<V, C>>::clone(weak);
            let ns = self.handle.register(&namespace, target);
            CacheInner {
                handle: self.handle.clone(),
                shared: Arc::clone(&shared),
                ns,
                names,
                l1,
                weighted,
                has_tags: AtomicBool::new(false),
                codec: self.codec,
                l2_ttl: self.l2_ttl,
                jitter: self.jitter,
                negative_ttl: self.negative_ttl,
                stale,
                flights: Mutex::new(HashMap::new()),
                l1_hits: StripedCounter::default(),
                metrics: CacheMetrics::new(&ns_label),
            }
        });
        Ok(Cache {
            inner,
            _marker: std::marker::PhantomData,
        })
    }
}

/// What L1 holds for a key.
#[derive(Clone)]
struct L1Entry<V> {
    /// `None` is a cached "not found".
    value: Option<V>,
    /// When a "not found" stops counting (its own, shorter time-to-live); `None` for values.
    negative_until: Option<Instant>,
    tags: Option<Arc<[String]>>,
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
            namespace: n,
        }
    }

    fn bypass(&self, reason: &'static str) {
        metrics::counter!(m::BYPASS_LOADS_TOTAL, "namespace" => self.namespace.clone(), "reason" => reason)
            .increment(1);
    }
}

type FlightResult<V> = Result<Option<V>, Error>;

/// One in-process load that concurrent callers of the same key share.
struct Flight<V> {
    tx: tokio::sync::watch::Sender<Option<FlightResult<V>>>,
}

struct CacheInner<V, C> {
    handle: Walcache,
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
    /// Redis names; `None` in L1-only mode.
    names: Option<Names>,
    l1: moka::sync::Cache<Arc<str>, L1Entry<V>, L1Hasher>,
    weighted: bool,
    has_tags: AtomicBool,
    codec: C,
    l2_ttl: Duration,
    jitter: f64,
    negative_ttl: Option<Duration>,
    stale: Option<moka::sync::Cache<Arc<str>, V>>,
    flights: Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>,
    l1_hits: StripedCounter,
    metrics: CacheMetrics,
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

    fn invalidate_tags(&self, tags: &[String]) {
        if !self.has_tags.load(Ordering::Acquire) {
            return;
        }
        let tags: Vec<String> = tags.to_vec();
        let result = self.l1.invalidate_entries_if(move |_, e: &L1Entry<V>| {
            e.tags
                .as_ref()
                .is_some_and(|t| t.iter().any(|x| tags.contains(x)))
        });
        if result.is_err() {
            // Closures are enabled at build; if moka ever refuses, drop everything instead.
            self.l1.invalidate_all();
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

/// Give a lease back if the fill did not complete (error, or the caller dropped its future).
struct LeaseGuard {
    shared: Arc<Shared>,
    lease: Option<Lease>,
}

impl LeaseGuard {
    fn disarm(&mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(l2) = shared.l2.as_ref() {
                    if let Err(e) = l2.release(&lease).await {
                        tracing::debug!(error = %e, "could not release a fill lease; it expires");
                    }
                }
            });
        }
    }
}

/// Leader's side of a flight: completes it, or abandons it on drop so a waiter takes over.
struct FlightGuard<'a, V> {
    flights: &'a Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>,
    key: Arc<str>,
    flight: Arc<Flight<V>>,
}

impl<V> FlightGuard<'_, V> {
    fn complete(self, result: &FlightResult<V>)
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

enum Joined<'a, V> {
    Leader(FlightGuard<'a, V>),
    Follower(tokio::sync::watch::Receiver<Option<FlightResult<V>>>),
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

    /// Whether L1 holds `key` right now, without touching L2 or counting a hit.
    pub fn contains_in_l1(&self, key: &K) -> bool {
        KEY_BUF.with(|local| {
            let b = &mut local.borrow_mut().key;
            b.clear();
            key.write_key(b);
            self.inner.l1.contains_key(b.as_str())
        })
    }

    #[inline]
    fn l1_get(&self, key: &K) -> Option<L1Entry<V>> {
        // The hit path: one atomic load (liveness), moka's lookup, one uncontended increment.
        if !self.inner.shared.live.load(Ordering::Acquire) {
            return None;
        }
        KEY_BUF.with(|local| {
            let mut local = local.borrow_mut();
            let HitLocal { key: buf, stripe } = &mut *local;
            buf.clear();
            key.write_key(buf);
            let hit = self.inner.l1.get(buf.as_str())?;
            // Only "not found" entries carry a deadline: values never read the clock here.
            if hit.negative_until.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            self.inner.l1_hits.increment_at(*stripe);
            Some(hit)
        })
    }

    /// Read `key` from L1, else L2. Never calls a loader and never writes L2; an L2 hit fills
    /// L1. Redis trouble reads as a miss (and is counted).
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
        if !inner.shared.live.load(Ordering::Acquire)
            && inner.shared.config.freshness == Freshness::Strict
        {
            return None;
        }
        let snap = self.snapshot(&k);
        let (_, found) = self.read_l2(l2, names, &k).await.ok()?;
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
    /// The value is stored in L2 only by a compare-and-set that fails if an invalidation
    /// arrived during the load, and in L1 only if no invalidation touched the key meanwhile.
    /// `init` must read the primary with a fresh snapshot (autocommit or READ COMMITTED).
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

    /// Store a value you know to be current, in L1 and L2 (unconditionally). Prefer
    /// [`try_get_with`](Self::try_get_with), whose fills cannot race an invalidation.
    ///
    /// # Errors
    ///
    /// Codec errors, and Redis errors (L1 is written anyway).
    pub async fn insert(&self, key: &K, value: V) -> Result<(), Error> {
        self.insert_tagged(key, value, &[]).await
    }

    /// [`insert`](Self::insert) with tags (see [`try_get_tagged_with`](Self::try_get_tagged_with)).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), and [`ErrorKind::InvalidName`] for a bad tag.
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
        if inner.shared.live.load(Ordering::Acquire) {
            self.put_l1(&k, Some(value), &tags, size);
        }
        if let (Some(l2), Some(names), Some(payload)) =
            (inner.shared.l2.as_ref(), inner.names.as_ref(), encoded)
        {
            let envelope = l2::value_envelope(&payload, &tags);
            let ttl = jittered(inner.l2_ttl, inner.jitter);
            l2.insert(names, &k, &envelope, ttl, &tags, self.bookkeeping_ttl())
                .await?;
        }
        Ok(())
    }

    /// Drop `key` here, in L2 and in every other process's L1 (over the application channel,
    /// which does not disturb the daemon's sequence). Call it after your transaction commits:
    /// this process then reads its own write.
    ///
    /// # Errors
    ///
    /// Redis errors: the key is gone from this process's L1, but L2 and the other processes
    /// keep it until the daemon's invalidation or the time-to-live.
    pub async fn invalidate(&self, key: &K) -> Result<(), Error> {
        let inner = &self.inner;
        let k = key_string(key);
        inner.shared.apply_keys(&inner.ns, &[&k]);
        if let Some(stale) = &inner.stale {
            stale.invalidate(&*k);
        }
        if let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) {
            let message = self.app_message(Body::Keys(vec![KeyRef {
                namespace: inner.ns.name.clone(),
                key: k.to_string(),
            }]));
            l2.invalidate_keys(names, &[&k], &message).await?;
        }
        Ok(())
    }

    /// Drop every entry carrying `tag`, in every namespace and process.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`] for a bad tag; Redis errors as for
    /// [`invalidate`](Self::invalidate).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        let tags = owned_tags(&[tag])?;
        let inner = &self.inner;
        inner.shared.apply_tags(&tags);
        if let Some(l2) = inner.shared.l2.as_ref() {
            let message = self.app_message(Body::Tags(tags.clone()));
            l2.invalidate_tag(&tags[0], &message, self.bookkeeping_ttl())
                .await?;
        }
        Ok(())
    }

    /// Drop the whole namespace, in every tier and process: one generation change in Redis.
    ///
    /// # Errors
    ///
    /// Redis errors as for [`invalidate`](Self::invalidate).
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        let inner = &self.inner;
        inner.shared.apply_flush(&inner.ns, None);
        if let Some(stale) = &inner.stale {
            stale.invalidate_all();
        }
        if let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) {
            let message = self.app_message(Body::Flush(vec![inner.ns.name.clone()]));
            let g = l2.flush(names, &message).await?;
            inner.ns.generations.learn_l2_generation(g);
        }
        Ok(())
    }

    fn app_message(&self, body: Body) -> Vec<u8> {
        Message::new(self.inner.shared.process_epoch, 0, body).encode()
    }

    fn bookkeeping_ttl(&self) -> Duration {
        // Tag versions must outlive any lease; tag member sets must outlive their members.
        self.inner
            .l2_ttl
            .max(self.inner.shared.config.lease_ttl * 2)
    }

    fn snapshot(&self, k: &str) -> Snapshot {
        self.inner
            .ns
            .generations
            .snapshot(&self.inner.shared.global_generation, key_hash(k))
    }

    async fn read_l2(&self, l2: &L2, names: &Names, k: &str) -> Result<(u64, Found), Error> {
        let live = self.inner.shared.live.load(Ordering::Acquire);
        let generation = self.inner.ns.generations.l2_generation();
        if live && generation != UNKNOWN_GENERATION {
            // Live: the subscriber keeps the generation current. Exactly one GET.
            let found = l2.get(&names.value_key(generation, k)).await?;
            Ok((generation, found))
        } else {
            let (generation, found) = l2.get_with_generation(names, k).await?;
            if live {
                self.inner.ns.generations.learn_l2_generation(generation);
            }
            Ok((generation, found))
        }
    }

    fn put_l1(&self, k: &Arc<str>, value: Option<V>, tags: &[String], size: usize) {
        let inner = &self.inner;
        let tags: Option<Arc<[String]>> = if tags.is_empty() {
            None
        } else {
            inner.has_tags.store(true, Ordering::Release);
            Some(tags.into())
        };
        let weight = if inner.weighted {
            u32::try_from(k.len() + size)
                .unwrap_or(u32::MAX)
                .saturating_add(ENTRY_OVERHEAD_BYTES)
        } else {
            1
        };
        let negative_until = match (&value, inner.negative_ttl) {
            (None, Some(ttl)) => Some(Instant::now() + ttl),
            _ => None,
        };
        inner.l1.insert(
            Arc::clone(k),
            L1Entry {
                value,
                negative_until,
                tags,
                weight,
            },
        );
    }

    /// Insert into L1 only if the stream is live and no invalidation touched the key since
    /// `snap`; if one lands during the insert, take the entry out again.
    fn fill_l1(
        &self,
        k: &Arc<str>,
        value: Option<V>,
        snap: Snapshot,
        tags: &[String],
        size: usize,
    ) {
        let inner = &self.inner;
        if let (Some(stale), Some(v)) = (&inner.stale, &value) {
            stale.insert(Arc::clone(k), v.clone());
        }
        if !inner.shared.live.load(Ordering::Acquire) {
            return;
        }
        if self.snapshot(k) != snap {
            inner.metrics.discarded_l1.increment(1);
            return;
        }
        self.put_l1(k, value, tags, size);
        if self.snapshot(k) != snap {
            inner.l1.invalidate(&**k);
            inner.metrics.discarded_l1.increment(1);
        }
    }

    fn join(&self, k: &Arc<str>) -> Joined<'_, V> {
        let mut map = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(k) {
            return Joined::Follower(f.tx.subscribe());
        }
        let (tx, _rx) = tokio::sync::watch::channel(None);
        let flight = Arc::new(Flight { tx });
        map.insert(Arc::clone(k), Arc::clone(&flight));
        Joined::Leader(FlightGuard {
            flights: &self.inner.flights,
            key: Arc::clone(k),
            flight,
        })
    }

    async fn load_through<F, E>(
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
                    let result = self.lead(&k, &tags, init, accept_negative).await;
                    guard.complete(&result);
                    return result;
                }
            }
        }
    }

    /// The single-flight leader's work: L2, then the lease, then the load and the fills.
    async fn lead<F, E>(
        &self,
        k: &Arc<str>,
        tags: &[String],
        init: F,
        accept_negative: bool,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let snap = self.snapshot(k);
        let (Some(l2), Some(names)) = (inner.shared.l2.as_ref(), inner.names.as_ref()) else {
            // L1-only: load, then fill L1 under the generation check.
            let v = self.run_loader(k, init).await?;
            let size = self.weigh(v.as_ref());
            if v.is_some() || inner.negative_ttl.is_some() {
                self.fill_l1(k, v.clone(), snap, tags, size);
            }
            return Ok(v);
        };
        let (mut generation, found) = match self.read_l2(l2, names, k).await {
            Ok(x) => x,
            Err(_) => return self.bypass_load(k, init, "redis_unavailable").await,
        };
        let mut replace: Option<Vec<u8>> = None;
        match self.accept_found(found, k, snap, accept_negative) {
            Accepted::Answer(v) => return Ok(v),
            Accepted::Replace(bytes) => replace = Some(bytes),
            Accepted::Miss => inner.metrics.l2_misses.increment(1),
            Accepted::Leased => {
                return self
                    .wait_for_lease(l2, names, k, generation, init, snap, accept_negative)
                    .await
            }
        }
        let mut init = Some(init);
        for _attempt in 0..3 {
            // Armed before the script runs: if this caller is dropped while Redis is taking
            // the lease, the guard still gives it back.
            let prepared = Lease::prepare(names, k, generation);
            let mut guard = LeaseGuard {
                shared: Arc::clone(&inner.shared),
                lease: Some(prepared.clone()),
            };
            let outcome = l2
                .lease(
                    names,
                    k,
                    &prepared,
                    replace.as_deref(),
                    tags,
                    self.bookkeeping_ttl(),
                )
                .await;
            if !matches!(outcome, Ok((_, LeaseOutcome::Won(_))) | Err(_)) {
                guard.disarm(); // not ours: nothing to give back
            }
            let Some(init_now) = init.take() else { break };
            match outcome {
                // The lease may or may not have been taken: the guard gives it back.
                Err(_) => return self.bypass_load(k, init_now, "redis_unavailable").await,
                Ok((_, LeaseOutcome::Won(lease))) => {
                    guard.lease = Some(lease);
                    return self
                        .fill_with_lease(l2, names, k, guard, tags, init_now, snap)
                        .await;
                }
                Ok((g, LeaseOutcome::Present(Found::Miss))) => {
                    // The namespace moved to a new generation under us: retry there.
                    generation = g;
                    init = Some(init_now);
                }
                Ok((g, LeaseOutcome::Present(found))) => {
                    match self.accept_found(found, k, snap, accept_negative) {
                        Accepted::Answer(v) => return Ok(v),
                        Accepted::Replace(bytes) => {
                            replace = Some(bytes);
                            init = Some(init_now);
                        }
                        Accepted::Miss => init = Some(init_now),
                        Accepted::Leased => {
                            return self
                                .wait_for_lease(l2, names, k, g, init_now, snap, accept_negative)
                                .await
                        }
                    }
                }
            }
        }
        match init {
            Some(init) => self.bypass_load(k, init, "redis_unavailable").await,
            None => Err(Error::new(ErrorKind::Redis).with_message("could not take a fill lease")),
        }
    }

    /// Interpret what L2 holds for a key.
    fn accept_found(
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
                        self.fill_l1(k, Some(v.clone()), snap, &tags, bytes.len());
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
            Found::Negative(bytes) => {
                if accept_negative {
                    inner.metrics.l2_hits.increment(1);
                    self.fill_l1(k, None, snap, &[], 0);
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
            match l2.get(&value_key).await {
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
                Ok(Found::Miss | Found::Undecodable(_)) | Err(_) => break,
            }
        }
        inner.metrics.lease_timeout.increment(1);
        self.bypass_load(k, init, "lease_wait_timeout").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fill_with_lease<F, E>(
        &self,
        l2: &L2,
        names: &Names,
        k: &Arc<str>,
        mut guard: LeaseGuard,
        tags: &[String],
        init: F,
        snap: Snapshot,
    ) -> FlightResult<V>
    where
        F: Future<Output = Result<Option<V>, E>> + Send,
        E: StdError + Send + Sync + 'static,
    {
        let inner = &self.inner;
        let v = self.run_loader(k, init).await?;
        let (envelope, ttl) = match &v {
            Some(value) => {
                let payload = inner
                    .codec
                    .encode(value)
                    .map_err(|e| Error::new(ErrorKind::Codec).with_source(e))?;
                (
                    l2::value_envelope(&payload, tags),
                    jittered(inner.l2_ttl, inner.jitter),
                )
            }
            None => match inner.negative_ttl {
                Some(n) => (l2::negative_envelope(), jittered(n, inner.jitter)),
                // Nothing to cache: the guard gives the lease back.
                None => return Ok(None),
            },
        };
        let Some(lease) = guard.lease.as_ref() else {
            return Ok(v);
        };
        match l2
            .fill(names, lease, &envelope, ttl, tags, self.bookkeeping_ttl())
            .await
        {
            Ok(FillOutcome::Stored) => {
                guard.disarm();
                self.fill_l1(k, v.clone(), snap, tags, envelope.len());
            }
            Ok(FillOutcome::LeaseLost | FillOutcome::Raced) => {
                // An invalidation won the race: the value we loaded may predate it. Keep it out
                // of both tiers (the caller still gets it: it was current when read).
                guard.disarm();
                inner.metrics.discarded_l2.increment(1);
            }
            Err(_) => {} // the guard tries to give the lease back
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
        self.inner.metrics.bypass(reason);
        let _permit =
            self.inner.shared.bypass.acquire().await.map_err(|_| {
                Error::new(ErrorKind::Loader).with_message("bypass semaphore closed")
            })?;
        self.run_loader(k, init).await
    }

    /// Call the loader with a span and metrics; on failure, serve a stale copy if allowed.
    async fn run_loader<F, E>(&self, k: &Arc<str>, init: F) -> FlightResult<V>
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
                Ok(v)
            }
            Err(e) => {
                if let Some(v) = inner.stale.as_ref().and_then(|s| s.get(&**k)) {
                    inner.metrics.loads_stale.increment(1);
                    tracing::warn!(namespace = %inner.ns.name, error = %e, "loader failed: serving a stale value");
                    return Ok(Some(v));
                }
                inner.metrics.loads_error.increment(1);
                Err(Error::loader(e))
            }
        }
    }

    fn weigh(&self, v: Option<&V>) -> usize {
        match v {
            Some(v) if self.inner.weighted => self.inner.codec.encode(v).map_or(0, |b| b.len()),
            _ => 0,
        }
    }
}

enum Accepted<V> {
    Answer(Option<V>),
    Replace(Vec<u8>),
    Miss,
    Leased,
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

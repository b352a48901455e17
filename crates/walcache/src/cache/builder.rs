//! `CacheBuilder`: a cache's settings, validated by `build()`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use walcache_protocol::{validate_namespace, ToKey};

use super::{Cache, CacheInner, CacheMetrics, L1Entry, L1Hasher};
use crate::codec::{Codec, Postcard};
use crate::counter::StripedCounter;
use crate::error::Error;
use crate::handle::{KeyMarker, L1Target, Walcache};
use crate::l2::Names;

/// How L1 is bounded.
#[derive(Debug, Clone, Copy)]
enum Capacity {
    Entries(u64),
    Bytes(u64),
}

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
    /// invalidation. For a namespace the daemon certifies, entries never outlive the daemon's
    /// full-refresh interval (from its heartbeats): a longer setting is cut to it, and a log
    /// line says so. Without a stream it *is* the staleness bound. Default 60 s.
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
    /// seen at most `max_age` ago — even if the daemon or another process invalidated it since.
    /// This process's own [`Cache::invalidate`], [`Cache::invalidate_tag`] and
    /// [`Cache::invalidate_all`] drop the copies they cover: it never falls back to what it
    /// invalidated itself. Never older than `max_age`. Costs a second, bounded copy of
    /// recently used values. Default: off.
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
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the setting, its value and the fix.
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
            .map(|_| Arc::new(Names::new(&shared.naming, &self.namespace, self.schema)));
        // One time-to-live for all of L1 (an entry filled while the daemon's refresh interval
        // is shorter carries that deadline itself: see `L1Entry::until`, checked on hit without
        // moka's per-entry expiry, which costs every hit). Jitter spreads L2's, where
        // synchronized expiry would reach the database. No invalidation closures: a tag
        // invalidation is enforced by the entries' stamps (see `TagStamps`), and moka checks
        // registered closures on every hit once they are supported.
        let mut l1 = moka::sync::Cache::<Arc<str>, L1Entry<V>>::builder().time_to_live(self.l1_ttl);
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
                // This process's own `invalidate_tag` drops the copies carrying the tag; the
                // closures cost only stale reads, which happen when a loader fails.
                .support_invalidation_closures()
                .build()
        });
        let namespace = self.namespace.clone();
        let ns_label = self.namespace.clone();
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<CacheInner<V, C>>| {
            let target: std::sync::Weak<dyn L1Target> =
                std::sync::Weak::<CacheInner<V, C>>::clone(weak);
            let ns = self.handle.register(&namespace, target);
            CacheInner {
                l1_ttl: self.l1_ttl,
                handle: self.handle.clone(),
                shared: Arc::clone(&shared),
                ns,
                names,
                l1,
                weighted,
                codec: self.codec,
                l2_ttl: self.l2_ttl,
                jitter: self.jitter,
                negative_ttl: self.negative_ttl,
                stale,
                flights: Mutex::new(HashMap::new()),
                pending_fills: tokio::sync::watch::Sender::new(0),
                next_fill: std::sync::atomic::AtomicU64::new(1),
                l1_hits: StripedCounter::default(),
                metrics: CacheMetrics::new(&ns_label),
            }
        });
        // A cap the daemon's heartbeats set before this cache existed.
        if let Some(cap) = inner.ns.l1_ttl_cap() {
            inner.cap_time_to_live(Some(cap));
        }
        Ok(Cache {
            inner,
            _marker: std::marker::PhantomData,
        })
    }
}

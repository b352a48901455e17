//! The process-wide handle: Redis connections, the one invalidation subscription, and the state
//! every cache of the process shares (liveness, generations, the breaker, the bypass cap).

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use walcache_protocol::{HeartbeatDetails, Naming, TagRef, ToKey};

use crate::breaker::{Breaker, BreakerState};
use crate::bypass::FleetCap;
use crate::cache::CacheBuilder;
use crate::codec::Postcard;
use crate::error::Error;
use crate::generation::{handshake_fence, key_hash, NamespaceGenerations};
use crate::hooks::{HookEvent, HookPoint, Hooks};
use crate::l2::L2;
use crate::metrics as m;
use crate::subscriber::{self, FlushReason};

mod builder;
pub use builder::WalcacheBuilder;

/// What the cache does while the invalidation stream is not live (DESIGN contract 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Freshness {
    /// Skip L1, keep using L2 and the loader. L2 is still kept fresh by the daemon's deletes, so
    /// a read is stale only if the daemon itself is behind. The default.
    #[default]
    Available,
    /// Skip both tiers and read through to the loader (capped by
    /// [`max_bypass_loads`](WalcacheBuilder::max_bypass_loads)): the staleness bound holds
    /// through every fault, at the database's expense.
    Strict,
}

/// Where invalidations come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalidation {
    /// The daemon's sequenced stream, with liveness tracking.
    Stream { heartbeat_timeout: Duration },
    /// No daemon: L1 relies on its time-to-live (and best-effort application-side messages).
    TtlOnly,
}

#[derive(Debug, Clone)]
pub(crate) struct HandleConfig {
    pub(crate) freshness: Freshness,
    pub(crate) invalidation: Invalidation,
    pub(crate) lease_wait: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

/// One cache's L1, as the invalidation side sees it.
pub(crate) trait L1Target: Send + Sync {
    fn invalidate_keys(&self, keys: &[&str]);
    fn invalidate_all(&self);
    fn publish_metrics(&self);
    /// The daemon's full-refresh interval now caps this namespace's L1 entries (`None`: no
    /// cap): say so if it cuts the configured time-to-live.
    fn cap_time_to_live(&self, cap: Option<Duration>);
}

/// What the daemon's last heartbeat says of a namespace (see [`DaemonView`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Coverage {
    /// No heartbeat with details yet (or a v1.0 daemon, which sends none): as before details
    /// existed.
    Unknown = 0,
    /// Certified: a rule of the daemon covers it and keeps it fresh.
    Certified = 1,
    /// A rule covers it but the daemon cannot keep it fresh (catalog drift it cannot repair):
    /// every tier is bypassed.
    OutOfService = 2,
    /// No rule of the daemon covers it: only application invalidations and time-to-live keep
    /// it fresh.
    Uncovered = 3,
}

impl Coverage {
    fn from_u8(v: u8) -> Coverage {
        match v {
            1 => Coverage::Certified,
            2 => Coverage::OutOfService,
            3 => Coverage::Uncovered,
            _ => Coverage::Unknown,
        }
    }
}

/// What the daemon's last heartbeat said about the namespaces.
#[derive(Debug, Default)]
pub(crate) struct DaemonView {
    /// The heartbeat had details (v1.1 and later).
    known: bool,
    /// The daemon's full-refresh interval; `None`: no schedule, or unknown.
    refresh_interval: Option<Duration>,
    certified: HashSet<String>,
    out_of_service: HashSet<String>,
}

impl DaemonView {
    fn from_details(details: Option<&HeartbeatDetails>) -> DaemonView {
        match details {
            None => DaemonView::default(),
            Some(d) => DaemonView {
                known: true,
                refresh_interval: (d.refresh_interval_ms > 0)
                    .then_some(Duration::from_millis(d.refresh_interval_ms)),
                certified: d.namespaces.iter().cloned().collect(),
                out_of_service: d.out_of_service.iter().cloned().collect(),
            },
        }
    }

    /// Listed in both lists (no daemon sends that): out of service wins.
    fn coverage_of(&self, namespace: &str) -> Coverage {
        if !self.known {
            Coverage::Unknown
        } else if self.out_of_service.contains(namespace) {
            Coverage::OutOfService
        } else if self.certified.contains(namespace) {
            Coverage::Certified
        } else {
            Coverage::Uncovered
        }
    }
}

/// A namespace's shared state: generations, what the daemon says of it, and the L1s that hold
/// its entries.
pub(crate) struct Namespace {
    pub(crate) name: String,
    pub(crate) generations: NamespaceGenerations,
    /// A [`Coverage`].
    coverage: AtomicU8,
    /// The cap on L1 entries' time-to-live, in milliseconds: the daemon's full-refresh
    /// interval while it certifies the namespace; 0: none.
    l1_ttl_cap_ms: AtomicU64,
    /// "No rule of the daemon covers it" was said (once per namespace and process).
    uncovered_warned: AtomicBool,
    targets: Mutex<Vec<Weak<dyn L1Target>>>,
}

impl Namespace {
    fn targets(&self) -> Vec<Arc<dyn L1Target>> {
        let mut guard = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        guard.retain(|w| w.strong_count() > 0);
        guard.iter().filter_map(Weak::upgrade).collect()
    }

    /// The daemon says it cannot keep this namespace fresh: bypass every tier.
    pub(crate) fn is_out_of_service(&self) -> bool {
        self.coverage() == Coverage::OutOfService
    }

    pub(crate) fn coverage(&self) -> Coverage {
        Coverage::from_u8(self.coverage.load(Ordering::SeqCst))
    }

    /// The cap on L1 entries' time-to-live, if the daemon certifies the namespace and has a
    /// full-refresh schedule.
    pub(crate) fn l1_ttl_cap(&self) -> Option<Duration> {
        match self.l1_ttl_cap_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// State shared by the handle, its caches and the subscriber thread.
pub(crate) struct Shared {
    pub(crate) live: AtomicBool,
    pub(crate) global_generation: AtomicU64,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    pub(crate) l2: Option<L2>,
    pub(crate) config: HandleConfig,
    pub(crate) bypass: Semaphore,
    /// The fleet-wide cap on bypassing loads, if the handle was given one.
    pub(crate) fleet_bypass: Option<FleetCap>,
    /// This process's id on the application channel, so it skips its own messages.
    pub(crate) process_epoch: u64,
    pub(crate) naming: Naming,
    /// The signing keys, and the checks every received message passes.
    pub(crate) auth: crate::auth::Authenticator,
    /// Test-only pause points (a zero-sized no-op without the `test-hooks` feature).
    pub(crate) hooks: Hooks,
    /// The runtime the handle was built on, which drives its Redis connection: fills'
    /// compare-and-sets run there, not on a caller's runtime that may stop before they land.
    pub(crate) runtime: tokio::runtime::Handle,
    /// What the daemon's last heartbeat said of the namespaces; held while it is applied, so
    /// a namespace registered meanwhile starts from the newest view.
    daemon_view: Mutex<DaemonView>,
}

impl Shared {
    pub(crate) fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn all_namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The namespace `name`, registered if new (then set from the daemon's last view).
    pub(crate) fn namespace_or_insert(&self, name: &str) -> Arc<Namespace> {
        let (ns, new) = {
            let mut map = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
            let mut new = false;
            let ns = map.entry(name.to_owned()).or_insert_with(|| {
                new = true;
                Arc::new(Namespace {
                    name: name.to_owned(),
                    generations: NamespaceGenerations::new(),
                    coverage: AtomicU8::new(Coverage::Unknown as u8),
                    l1_ttl_cap_ms: AtomicU64::new(0),
                    uncovered_warned: AtomicBool::new(false),
                    targets: Mutex::new(Vec::new()),
                })
            });
            (Arc::clone(ns), new)
        };
        if new {
            let view = self.daemon_view.lock().unwrap_or_else(|p| p.into_inner());
            self.apply_view(&ns, &view);
        }
        ns
    }

    fn register(&self, name: &str, target: Weak<dyn L1Target>) -> Arc<Namespace> {
        let ns = self.namespace_or_insert(name);
        ns.targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(target);
        ns
    }

    /// A heartbeat arrived: what it says of the namespaces (v1.1 details; v1.2 out of
    /// service) replaces what the previous one said. Applied before the heartbeat makes the
    /// stream live, so L1 is never filled before its cap is known.
    pub(crate) fn apply_heartbeat(&self, details: Option<&HeartbeatDetails>) {
        let mut view = self.daemon_view.lock().unwrap_or_else(|p| p.into_inner());
        *view = DaemonView::from_details(details);
        for ns in self.all_namespaces() {
            self.apply_view(&ns, &view);
        }
    }

    fn apply_view(&self, ns: &Namespace, view: &DaemonView) {
        let coverage = view.coverage_of(&ns.name);
        let cap = match (coverage, view.refresh_interval) {
            (Coverage::Certified, Some(d)) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            _ => 0,
        };
        let was = Coverage::from_u8(ns.coverage.swap(coverage as u8, Ordering::SeqCst));
        if coverage == Coverage::OutOfService && was != Coverage::OutOfService {
            tracing::warn!(namespace = %ns.name, "the daemon reports namespace {} out of service (catalog drift it cannot repair: it misses changes): its reads bypass L1 and L2 and go to the loader until it is back in service", ns.name);
            // Its entries may predate changes the daemon missed: drop them, and every fill in
            // flight (the counter moves after the state, so a fill that did not see the state
            // sees the counter move).
            self.apply_flush(ns, None);
        } else if was == Coverage::OutOfService && coverage != Coverage::OutOfService {
            tracing::info!(namespace = %ns.name, "namespace {} is back in service: cached again", ns.name);
        }
        if coverage == Coverage::Uncovered && !ns.uncovered_warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(namespace = %ns.name, "no rule of the daemon covers namespace {}: only application invalidations and TTLs keep it fresh", ns.name);
        }
        if ns.l1_ttl_cap_ms.swap(cap, Ordering::AcqRel) != cap {
            let cap = ns.l1_ttl_cap();
            for t in ns.targets() {
                t.cap_time_to_live(cap);
            }
        }
    }

    /// Keys changed: bump their stripes first, then drop them from L1.
    pub(crate) fn apply_keys(&self, ns: &Namespace, keys: &[&str]) {
        for k in keys {
            ns.generations.bump_key(key_hash(k));
        }
        handshake_fence(); // bump, then remove: see generation.rs
        for t in ns.targets() {
            t.invalidate_keys(keys);
        }
    }

    /// Tags changed: each in its namespace (in every namespace for a tag without one, from a
    /// sender older than tag scoping). The namespace's tag counter and the tag's stamp move
    /// (see `TagStamps`): L1 entries carrying the tag are refused from their next hit on.
    pub(crate) fn apply_tags(&self, tags: &[TagRef]) {
        for ns in self.all_namespaces() {
            let mine: Vec<String> = tags
                .iter()
                .filter(|t| t.namespace.as_deref().is_none_or(|n| n == ns.name))
                .map(|t| t.tag.clone())
                .collect();
            if mine.is_empty() {
                continue;
            }
            for t in &mine {
                ns.generations.bump_tag(t);
            }
            // Nothing is removed from L1 now: an entry carrying the tag holds its old stamp,
            // is refused on its next hit and removed then, or ages out unread (time-to-live,
            // capacity). Removing such entries eagerly would need moka's invalidation
            // closures, which cost every hit of every cache.
            handshake_fence();
        }
    }

    /// A namespace moved to a new generation: forget what we knew of it. `new_generation`,
    /// when known, is learned (generations only move forward); `None` leaves it unknown until
    /// relearned from Redis. The generation changes before the namespace counter moves (see
    /// `generation.rs`), and both before L1 is swept.
    pub(crate) fn apply_flush(&self, ns: &Namespace, new_generation: Option<u64>) {
        ns.generations.flush(new_generation);
        handshake_fence();
        self.hooks.pass_blocking(HookPoint::InsideApplyFlush);
        for t in ns.targets() {
            t.invalidate_all();
        }
    }

    /// Invalidations may have been lost (a gap, an epoch change, a message that does not
    /// decode): any of them may have been a namespace flush, so forget every namespace's
    /// generation (to be relearned from Redis) as well as dropping L1 and every fill in
    /// flight. Returns the namespaces to relearn.
    pub(crate) fn lose_track(&self, reason: FlushReason) -> Vec<String> {
        let namespaces = self.all_namespaces();
        for ns in &namespaces {
            ns.generations.flush(None);
        }
        self.flush_l1(reason);
        namespaces.iter().map(|ns| ns.name.clone()).collect()
    }

    /// Drop every L1 entry of the process, and every fill in flight.
    pub(crate) fn flush_l1(&self, reason: FlushReason) {
        self.global_generation.fetch_add(1, Ordering::SeqCst);
        let namespaces = self.all_namespaces();
        for ns in &namespaces {
            ns.generations.bump_namespace();
        }
        handshake_fence();
        for ns in namespaces {
            for t in ns.targets() {
                t.invalidate_all();
            }
        }
        metrics::counter!(m::L1_FLUSHES_TOTAL, "reason" => reason.label()).increment(1);
        self.hooks.record(HookEvent::L1Flush(reason.label()));
    }

    pub(crate) fn set_live(&self, live: bool) {
        let was = self.live.swap(live, Ordering::AcqRel);
        if was != live {
            metrics::gauge!(m::STREAM_LIVE).set(if live { 1.0 } else { 0.0 });
            if live {
                tracing::info!("invalidation stream live: L1 in use");
            } else {
                tracing::warn!("invalidation stream not live: L1 bypassed");
            }
        }
    }

    pub(crate) fn publish_metrics(&self) {
        for ns in self.all_namespaces() {
            for t in ns.targets() {
                t.publish_metrics();
            }
        }
    }
}

pub(crate) struct HandleInner {
    pub(crate) shared: Arc<Shared>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        // The subscriber thread sees this and exits; nothing to join from a possibly-async drop.
        let _ = self.shutdown.send(true);
    }
}

/// The process-wide walcache handle: build one per process and create every cache from it.
///
/// It owns the Redis command connection, the single pub/sub subscription all caches share (on
/// its own thread, so a busy application cannot delay invalidations), the circuit breaker and
/// the cap on loads that bypass the caches. Cheap to clone; the subscription stops when the
/// last clone and the last cache made from it are dropped.
#[derive(Clone)]
pub struct Walcache {
    pub(crate) inner: Arc<HandleInner>,
}

impl std::fmt::Debug for Walcache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walcache")
            .field("live", &self.is_live())
            .field("redis", &self.inner.shared.l2.is_some())
            .finish_non_exhaustive()
    }
}

impl Walcache {
    /// The ids of the signing keys this handle accepts now, the one it signs with first
    /// (empty when it accepts unsigned messages). With
    /// [`signing_keys_file`](WalcacheBuilder::signing_keys_file), what the file said when it
    /// was last read.
    pub fn signing_key_ids(&self) -> Vec<String> {
        self.inner
            .shared
            .auth
            .keyring()
            .map(|k| k.ids().into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// Start configuring a handle.
    pub fn builder() -> WalcacheBuilder {
        WalcacheBuilder::default()
    }

    /// Start configuring a cache of `V` values under `namespace` (1–64 of `[a-z0-9_-]`; the
    /// name the daemon's rules use).
    pub fn cache<K, V>(&self, namespace: &str) -> CacheBuilder<K, V, Postcard>
    where
        K: ToKey + ?Sized,
        V: Clone + Send + Sync + 'static,
    {
        CacheBuilder::new(self.clone(), namespace)
    }

    /// Whether the invalidation stream is live, i.e. L1 is being used. Always true without a
    /// stream ([`WalcacheBuilder::without_invalidation_stream`]).
    pub fn is_live(&self) -> bool {
        self.inner.shared.live.load(Ordering::Acquire)
    }

    /// The state of the circuit breaker around Redis (`Closed` without Redis).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner
            .shared
            .l2
            .as_ref()
            .map_or(BreakerState::Closed, |l2| l2.breaker.state())
    }

    /// This handle's pause points, for the crate's deterministic race tests.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_hooks(&self) -> &Hooks {
        &self.inner.shared.hooks
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    pub(crate) fn register(&self, namespace: &str, target: Weak<dyn L1Target>) -> Arc<Namespace> {
        self.inner.shared.register(namespace, target)
    }
}

/// Marker so `PhantomData` of unsized keys is Send + Sync regardless of `K`.
pub(crate) type KeyMarker<K> = PhantomData<fn(&K)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_says_of_each_namespace_whether_it_is_certified_out_of_service_or_uncovered() {
        let details = HeartbeatDetails {
            lag_bytes: 0,
            refresh_interval_ms: 60_000,
            namespaces: vec!["users".into(), "both".into()],
            out_of_service: vec!["orgs".into(), "both".into()],
        };
        let view = DaemonView::from_details(Some(&details));
        assert_eq!(view.coverage_of("users"), Coverage::Certified);
        assert_eq!(view.coverage_of("orgs"), Coverage::OutOfService);
        assert_eq!(
            view.coverage_of("both"),
            Coverage::OutOfService,
            "out of service wins"
        );
        assert_eq!(view.coverage_of("app"), Coverage::Uncovered);
        assert_eq!(view.refresh_interval, Some(Duration::from_secs(60)));
        // A v1.0 heartbeat (no details) says nothing: no namespace out of service, no cap.
        let v1_0 = DaemonView::from_details(None);
        assert_eq!(v1_0.coverage_of("orgs"), Coverage::Unknown);
        assert_eq!(v1_0.refresh_interval, None);
        let no_schedule = DaemonView::from_details(Some(&HeartbeatDetails::default()));
        assert_eq!(no_schedule.refresh_interval, None);
        for c in [
            Coverage::Unknown,
            Coverage::Certified,
            Coverage::OutOfService,
            Coverage::Uncovered,
        ] {
            assert_eq!(Coverage::from_u8(c as u8), c);
        }
        assert_eq!(Coverage::from_u8(200), Coverage::Unknown);
    }
}

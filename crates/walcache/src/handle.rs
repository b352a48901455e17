//! The process-wide handle: Redis connections, the one invalidation subscription, and the state
//! every cache of the process shares (liveness, generations, the breaker, the bypass cap).

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::io::tcp::socket2::TcpKeepalive;
use redis::IntoConnectionInfo;
use tokio::sync::Semaphore;
use walcache_protocol::{HeartbeatDetails, Naming, ToKey};

use crate::breaker::{Breaker, BreakerState};
use crate::cache::CacheBuilder;
use crate::codec::Postcard;
use crate::error::Error;
use crate::generation::{handshake_fence, key_hash, NamespaceGenerations};
use crate::hooks::{HookPoint, Hooks};
use crate::l2::L2;
use crate::metrics as m;
use crate::subscriber::{self, FlushReason};

/// Idle time before the first TCP keepalive probe on every Redis connection: 10 s.
///
/// A Redis that vanishes without a FIN or RST (a pulled cable, a firewall that drops packets, a
/// frozen VM) must not leave a socket waiting forever: the pub/sub subscription in particular
/// only ever reads, and would otherwise wait for the system's keepalive defaults (2 h 11 min)
/// before reconnecting. With [`TCP_KEEPALIVE_INTERVAL`] and [`TCP_KEEPALIVE_RETRIES`], an idle
/// connection to a vanished peer is dropped within 10 + 3 × 5 = 25 s; probes are answered by the
/// peer's kernel, so a busy but healthy Redis never trips them. The same values as the daemon's.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Interval between unanswered keepalive probes: 5 s. See [`TCP_KEEPALIVE_IDLE`].
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered keepalive probes before the connection is dropped: 3, so one or two lost probes
/// do not end a healthy connection. See [`TCP_KEEPALIVE_IDLE`].
const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// `TCP_USER_TIMEOUT` of every Redis connection (Linux and Android): 20 s. Keepalives only probe
/// idle connections; with a command in flight to a vanished peer the kernel retransmits for
/// about 15 minutes by default. This drops the connection once sent data has stayed
/// unacknowledged for 20 s (several retransmissions over a lossy link), so a dead peer is
/// noticed within about 25 s, data in flight or not. Calls time out much sooner
/// ([`redis_timeout`](WalcacheBuilder::redis_timeout)); this is what then replaces the
/// connection the calls gave up on.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

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
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_wait: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

/// One cache's L1, as the invalidation side sees it.
pub(crate) trait L1Target: Send + Sync {
    fn invalidate_keys(&self, keys: &[&str]);
    fn invalidate_tags(&self, tags: &[String]);
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
    /// Per-tag counters that tagged L1 entries record and check on every hit.
    pub(crate) tag_stamps: crate::generation::TagStamps,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    pub(crate) l2: Option<L2>,
    pub(crate) config: HandleConfig,
    pub(crate) bypass: Semaphore,
    /// This process's id on the application channel, so it skips its own messages.
    pub(crate) process_epoch: u64,
    pub(crate) naming: Naming,
    /// Test-only pause points (a zero-sized no-op without the `test-hooks` feature).
    pub(crate) hooks: Hooks,
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

    /// Tags changed: any entry of any namespace may carry them.
    pub(crate) fn apply_tags(&self, tags: &[String]) {
        // The process-wide counter first, then the tags' (see `TagStamps` for why).
        self.global_generation.fetch_add(1, Ordering::SeqCst);
        handshake_fence();
        for t in tags {
            self.tag_stamps.bump(t);
        }
        handshake_fence();
        // moka's lazy removal frees the memory; correctness rests on the stamps.
        for ns in self.all_namespaces() {
            for t in ns.targets() {
                t.invalidate_tags(tags);
            }
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

/// Configures a [`Walcache`] handle. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct WalcacheBuilder {
    redis_url: Option<String>,
    redis_ca_file: Option<std::path::PathBuf>,
    prefix: String,
    stream: Option<bool>,
    heartbeat_timeout: Duration,
    freshness: Freshness,
    redis_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_open_for: Duration,
    max_bypass_loads: usize,
    lease_ttl: Duration,
    lease_wait: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl Default for WalcacheBuilder {
    fn default() -> Self {
        WalcacheBuilder {
            redis_url: None,
            redis_ca_file: None,
            prefix: "wc".to_owned(),
            stream: None,
            heartbeat_timeout: Duration::from_secs(3),
            freshness: Freshness::Available,
            redis_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(1),
            max_bypass_loads: 64,
            lease_ttl: Duration::from_secs(5),
            lease_wait: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

impl WalcacheBuilder {
    /// The shared Redis (L2, leases, invalidation channels): `redis://[user:pass@]host:port/db`
    /// or `rediss://` for TLS (verified against the system roots, or see
    /// [`redis_ca_file`](Self::redis_ca_file)). Without it the caches are L1-only. Default: none.
    ///
    /// With `rediss://`, TLS needs a process-wide rustls crypto provider: `build()` installs
    /// ring's unless the application installed one first (an application that wants another
    /// provider installs it before building the handle).
    ///
    /// Every connection (commands and the pub/sub subscription) sends TCP keepalives after 10 s
    /// idle, every 5 s, 3 probes, and on Linux sets a 20 s `TCP_USER_TIMEOUT`: a Redis that
    /// vanishes without closing its connections is noticed within about 25 s, then the
    /// connections are replaced.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// With a `rediss://` URL: trust only the CA certificate(s) in this PEM file instead of the
    /// system roots. Default: the system roots.
    pub fn redis_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.redis_ca_file = Some(path.into());
        self
    }

    /// Prefix of every Redis key and channel; must match the daemon's. Default `"wc"`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Follow the daemon's invalidation stream (the default when a Redis URL is set). L1 is used
    /// only while the stream is *live*: subscribed, flushed, and hearing in-sequence heartbeats
    /// at least every `heartbeat_timeout` (default 3 s; the daemon's heartbeat interval must be
    /// well below it). After `heartbeat_timeout` of silence the subscriber also PINGs Redis on
    /// its connection and, if no reply comes within another `heartbeat_timeout`, replaces the
    /// connection: a half-open socket is noticed within twice the timeout.
    pub fn heartbeat_timeout(mut self, heartbeat_timeout: Duration) -> Self {
        self.heartbeat_timeout = heartbeat_timeout;
        self.stream = Some(true);
        self
    }

    /// Run without the daemon's stream. L1 then relies on its time-to-live alone: a row changed
    /// in PostgreSQL stays visible in every process's L1 for up to the L1 time-to-live, and in
    /// L2 for up to the L2 time-to-live. Application-side `invalidate` calls still reach the
    /// other processes (best effort, over Redis pub/sub). Required when no Redis URL is set.
    pub fn without_invalidation_stream(mut self) -> Self {
        self.stream = Some(false);
        self
    }

    /// What to do while the stream is not live. Default [`Freshness::Available`].
    pub fn freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = freshness;
        self
    }

    /// Timeout of every Redis call. Default 250 ms.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Timeout of establishing a Redis connection. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The breaker opens after `failures` consecutive failed Redis calls and stays open for
    /// `open_for` before one probe is let through. Default 5 failures, 1 s.
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_open_for = open_for;
        self
    }

    /// At most this many loads at once that bypass the caches (Redis down, strict mode while not
    /// live, lease waits that timed out), so a cache outage cannot stampede the database.
    /// Default 64.
    pub fn max_bypass_loads(mut self, n: usize) -> Self {
        self.max_bypass_loads = n;
        self
    }

    /// How long a fill lease lasts in Redis; should exceed your slowest load. Default 5 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How long a caller waits for another process's load before loading itself (without
    /// writing L2). Default 2 s.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Subscriber reconnect backoff: exponential from `min` to `max`, with full jitter. Default
    /// 50 ms to 5 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    fn validate(&self) -> Result<(Naming, bool), Error> {
        let naming = Naming::new(self.prefix.clone()).map_err(|e| {
            Error::config(format!(
                "key_prefix = {:?}: {e}; use the same prefix as the daemon (default \"wc\")",
                self.prefix
            ))
        })?;
        let stream =
            match (self.stream, &self.redis_url) {
                (Some(true), None) => {
                    return Err(Error::config(
                        "heartbeat_timeout is set but redis_url is not: the invalidation stream \
                     arrives over Redis; set redis_url(..) or call without_invalidation_stream()",
                    ))
                }
                (None, None) => return Err(Error::config(
                    "no invalidation source: set redis_url(..) to follow the daemon's stream, or \
                     call without_invalidation_stream() to rely on time-to-live alone",
                )),
                (Some(s), _) => s,
                (None, Some(_)) => true,
            };
        let nonzero = [
            ("redis_timeout", self.redis_timeout),
            ("connect_timeout", self.connect_timeout),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("lease_ttl", self.lease_ttl),
            ("reconnect_backoff min", self.reconnect_min),
        ];
        for (name, d) in nonzero {
            if d.is_zero() {
                return Err(Error::config(format!(
                    "{name} = 0: must be positive; use a few milliseconds at least"
                )));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(Error::config(format!(
                "reconnect_backoff max ({:?}) < min ({:?}): max must be at least min",
                self.reconnect_max, self.reconnect_min
            )));
        }
        if self.max_bypass_loads == 0 {
            return Err(Error::config(
                "max_bypass_loads = 0: no load could ever bypass the caches; use at least 1",
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(Error::config(
                "circuit_breaker failures = 0: must be at least 1",
            ));
        }
        Ok((naming, stream))
    }

    /// Connect and start the subscriber.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an invalid setting (the message names
    /// it and the fix); a Redis error when a Redis URL is set but Redis cannot be reached now —
    /// a wrong URL fails at start-up rather than hiding in a retry loop. Once running, lost
    /// connections are retried with backoff.
    pub async fn build(self) -> Result<Walcache, Error> {
        let (naming, stream) = self.validate()?;
        let (l2, client) = match &self.redis_url {
            Some(url) => {
                let client = redis_client(url, self.redis_ca_file.as_deref())?;
                let breaker = Breaker::new(self.breaker_threshold, self.breaker_open_for);
                let l2 = L2::connect(
                    client.clone(),
                    self.redis_timeout,
                    self.connect_timeout,
                    self.lease_ttl,
                    breaker,
                    naming.clone(),
                )
                .await?;
                (Some(l2), Some(client))
            }
            None => (None, None),
        };
        let invalidation = if stream {
            Invalidation::Stream {
                heartbeat_timeout: self.heartbeat_timeout,
            }
        } else {
            Invalidation::TtlOnly
        };
        let shared = Arc::new(Shared {
            // Without a stream there is no liveness to wait for.
            live: AtomicBool::new(!stream),
            global_generation: AtomicU64::new(0),
            tag_stamps: crate::generation::TagStamps::new(),
            namespaces: RwLock::new(HashMap::new()),
            l2,
            config: HandleConfig {
                freshness: self.freshness,
                invalidation,
                lease_ttl: self.lease_ttl,
                lease_wait: self.lease_wait,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            },
            bypass: Semaphore::new(self.max_bypass_loads),
            process_epoch: rand::random(),
            naming,
            hooks: Hooks::new(),
            daemon_view: Mutex::new(DaemonView::default()),
        });
        metrics::gauge!(m::STREAM_LIVE).set(if stream { 0.0 } else { 1.0 });
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        subscriber::spawn(
            Arc::clone(&shared),
            client,
            rx,
            self.connect_timeout,
            ready_tx,
        )?;
        // Let the first subscription's flush happen before any cache is filled. If it does not
        // come in time, the subscriber keeps trying in the background.
        let _ = tokio::time::timeout(self.connect_timeout, ready_rx).await;
        Ok(Walcache {
            inner: Arc::new(HandleInner {
                shared,
                shutdown: tx,
            }),
        })
    }
}

/// `info` with TCP keepalives and `TCP_USER_TIMEOUT` (Linux and Android) on every connection
/// made from it ([`TCP_KEEPALIVE_IDLE`], [`TCP_USER_TIMEOUT`]).
fn with_dead_peer_detection(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let keepalive = TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE);
    // The systems where socket2 can set both TCP_KEEPINTVL and TCP_KEEPCNT.
    #[cfg(any(
        target_os = "android",
        target_os = "freebsd",
        target_os = "ios",
        target_os = "linux",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "windows",
    ))]
    let keepalive = keepalive
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    let tcp = info.tcp_settings().clone().set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    info.set_tcp_settings(tcp)
}

/// A Redis client for `url`, with TCP dead-peer detection; `rediss://` verifies the server
/// against the system roots, or only against the CA in `ca_file`.
fn redis_client(url: &str, ca_file: Option<&std::path::Path>) -> Result<redis::Client, Error> {
    let bad_url = |e: redis::RedisError| {
        Error::config(format!(
            "redis_url is not a valid Redis URL ({e}); expected redis://host:port/db or \
             rediss://host:port/db"
        ))
    };
    if url.starts_with("rediss://") {
        // redis-rs builds its TLS configuration with the process-wide rustls provider; install
        // ring's unless the application installed one (then this is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let info = with_dead_peer_detection(url.into_connection_info().map_err(bad_url)?);
    match ca_file {
        None => redis::Client::open(info).map_err(bad_url),
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(Error::config(format!(
                    "redis_ca_file = {}: set, but redis_url is not rediss://; use a rediss:// URL \
                     or drop redis_ca_file",
                    path.display()
                )));
            }
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "redis_ca_file = {}: cannot be read ({e}); give the PEM file of the CA that \
                     signed the Redis server's certificate",
                    path.display()
                ))
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(bad_url)
        }
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

    #[test]
    fn redis_connections_get_keepalives_and_a_user_timeout() {
        for url in ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0"] {
            let client = redis_client(url, None).unwrap();
            let tcp = client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}");
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(tcp.user_timeout(), Some(Duration::from_secs(20)), "{url}");
        }
    }
}

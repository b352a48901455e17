//! [`WalcacheBuilder`]: the handle's settings, and the Redis connections it opens (with
//! dead-peer detection on every socket).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::io::tcp::socket2::TcpKeepalive;
use redis::IntoConnectionInfo;
use tokio::sync::Semaphore;

use super::*;

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

/// Configures a [`Walcache`] handle. Every setter documents its default.
#[derive(Debug, Clone)]
pub struct WalcacheBuilder {
    redis_url: Option<RedisUrl>,
    redis_ca_file: Option<std::path::PathBuf>,
    redis_client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    prefix: String,
    stream: Option<bool>,
    heartbeat_timeout: Duration,
    freshness: Freshness,
    redis_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_open_for: Duration,
    max_bypass_loads: usize,
    fleet_bypass_loads: Option<usize>,
    lease_ttl: Duration,
    lease_wait: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    keys: Keys,
    allow_unsigned: bool,
    max_clock_skew: Duration,
}

/// `redis_url`, whose password `Debug` does not show.
#[derive(Clone)]
struct RedisUrl(String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = walcache_protocol::redact::redact_connection_string(&self.0);
        std::fmt::Debug::fmt(&redacted, f)
    }
}

/// Where the signing keys come from, as configured.
#[derive(Debug, Clone, Default)]
enum Keys {
    #[default]
    None,
    Fixed(walcache_protocol::Keyring),
    File(std::path::PathBuf),
    Env(String),
}

impl Default for WalcacheBuilder {
    fn default() -> Self {
        WalcacheBuilder {
            redis_url: None,
            redis_ca_file: None,
            redis_client_cert: None,
            prefix: "wc".to_owned(),
            stream: None,
            heartbeat_timeout: Duration::from_secs(3),
            freshness: Freshness::Available,
            redis_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(1),
            max_bypass_loads: 64,
            fleet_bypass_loads: None,
            lease_ttl: Duration::from_secs(5),
            lease_wait: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            keys: Keys::None,
            allow_unsigned: false,
            max_clock_skew: Duration::from_secs(5),
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
        self.redis_url = Some(RedisUrl(url.into()));
        self
    }

    /// With a `rediss://` URL: trust only the CA certificate(s) in this PEM file instead of the
    /// system roots. Default: the system roots.
    pub fn redis_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.redis_ca_file = Some(path.into());
        self
    }

    /// With a `rediss://` URL, for a Redis that requires client certificates
    /// (`tls-auth-clients yes`): the client certificate and its private key, presented on every
    /// connection (commands and the subscription). Default: none.
    ///
    /// Both are PEM files, read once at [`build`](Self::build):
    ///
    /// - `cert_path`: the client certificate, then any intermediate CA certificates
    ///   (`-----BEGIN CERTIFICATE-----` blocks), signed by a CA in Redis's `tls-ca-cert-file`;
    /// - `key_path`: its unencrypted private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`),
    ///   PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`);
    ///   RSA, ECDSA P-256/P-384 or Ed25519. A key file readable by its group or others is
    ///   logged as a warning (`chmod 600` it).
    ///
    /// # Errors (at `build()`)
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), naming the setting, the file and the
    /// fix, when the URL is not `rediss://`, a file cannot be read, holds no certificate or no
    /// key, the key is encrypted or of an unusable kind, or it does not belong to the
    /// certificate.
    ///
    /// Without this setting, a Redis that requires client certificates refuses the TLS
    /// handshake: `build()` fails with a Redis error (an I/O error whose message includes
    /// `received fatal alert: CertificateRequired`), as for any Redis it cannot reach.
    pub fn redis_client_cert(
        mut self,
        cert_path: impl Into<std::path::PathBuf>,
        key_path: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.redis_client_cert = Some((cert_path.into(), key_path.into()));
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
    /// live, a namespace out of service, lease waits that timed out), so a cache outage cannot
    /// stampede the database. Callers beyond it wait their turn. Default 64.
    ///
    /// The cap is per handle, so per process: while Redis is down every process bypasses at
    /// once, and the database sees up to `processes × min(max_bypass_loads, callers, your
    /// loader's pool size)` concurrent queries (measured with 8 processes in `BENCHMARKS.md`).
    /// Size it so that this fits what the database can spare:
    /// `max_bypass_loads ≤ (max_connections − reserved − the fleet's usual connections) /
    /// processes`. [`BYPASS_LOADS_IN_FLIGHT`](crate::metrics::BYPASS_LOADS_IN_FLIGHT) shows how
    /// many run now; [`BYPASS_WAIT_SECONDS`](crate::metrics::BYPASS_WAIT_SECONDS) shows callers
    /// waiting at the cap.
    pub fn max_bypass_loads(mut self, n: usize) -> Self {
        self.max_bypass_loads = n;
        self
    }

    /// At most this many loads that bypass the caches at once across every process sharing
    /// this Redis (and key prefix), on top of each process's
    /// [`max_bypass_loads`](Self::max_bypass_loads). Off by default. Give every process the
    /// same number.
    ///
    /// It protects the database when the daemon cannot certify freshness while Redis is fine:
    /// in [`Freshness::Strict`] while the stream is not live (a daemon restart, a lagging
    /// daemon), for a namespace out of service, after lease waits that timed out. Each such
    /// load first takes a permit held in Redis (one script, and one more to give it back); a
    /// process that dies holding one loses it after [`lease_ttl`](Self::lease_ttl). While the
    /// fleet is at the cap, callers wait and ask again (up to every 50 ms). When Redis itself
    /// is the trouble (down, slow, breaker open) nothing can be asked: only `max_bypass_loads`
    /// applies, which is what bounds the database in a Redis outage.
    pub fn fleet_bypass_loads(mut self, n: usize) -> Self {
        self.fleet_bypass_loads = Some(n);
        self
    }

    /// How long a fill lease lasts in Redis; should exceed your slowest load. Default 5 s, at
    /// most [`MAX_LEASE_TTL`](walcache_protocol::MAX_LEASE_TTL) (60 s): `build` refuses more.
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

    /// Accept only invalidation messages signed with one of `keys` (HMAC-SHA256, wire v1.4),
    /// and sign this process's application messages with the first. Whoever can `PUBLISH` on
    /// the invalidation channels could otherwise keep stale L1 entries alive with forged
    /// heartbeats or empty every process's caches; a holder of a key can still forge (every
    /// service holds it, as every service can write values into L2), everyone else cannot.
    ///
    /// A message is applied only if it verifies, was sent at most `max_clock_skew +
    /// heartbeat_timeout` ago (and not more than `max_clock_skew` ahead), and on the daemon's
    /// channel was sent after the last one accepted from its epoch; anything else is ignored
    /// whole and counted (`walcache_messages_rejected_total`). Rotate keys in three steps: every
    /// process accepts the old and the new key (the new one second); the daemon signs with the
    /// new one (first in its list); the old one is removed. Upgrading to signed messages: the
    /// daemon signs first (unsigned readers ignore signatures), then services add the keys.
    pub fn signing_keys(mut self, keys: walcache_protocol::Keyring) -> Self {
        self.keys = Keys::Fixed(keys);
        self
    }

    /// [`signing_keys`](Self::signing_keys) read from a file of `id:hexsecret` entries
    /// (separated by commas, spaces or lines; `#` comments; the first signs) when the handle
    /// is built, and re-read whenever it changes (checked at most once a second as messages
    /// arrive), so a rotation needs no restart. A file that later does not parse keeps the keys
    /// in force (logged, `walcache_signing_key_reloads_total{outcome="error"}`). A file other
    /// users can read is warned about.
    pub fn signing_keys_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.keys = Keys::File(path.into());
        self
    }

    /// [`signing_keys`](Self::signing_keys) from the environment variable `var` (e.g.
    /// `WALCACHE_SIGNING_KEYS`), in the same format as a key file, read when the handle is built.
    pub fn signing_keys_env(mut self, var: impl Into<String>) -> Self {
        self.keys = Keys::Env(var.into());
        self
    }

    /// Accept unsigned invalidation messages: anyone who can `PUBLISH` on the channels can
    /// then move this process's caches. Without it, a handle that follows the stream needs
    /// signing keys, or `build()` fails. (Application-channel messages that do not decode are
    /// ignored either way: they never flush or end liveness.)
    pub fn allow_unsigned(mut self) -> Self {
        self.allow_unsigned = true;
        self
    }

    /// How far this process's clock may be from the daemon's and the other services', for the
    /// freshness check of signed messages. Default 5 s.
    pub fn max_clock_skew(mut self, skew: Duration) -> Self {
        self.max_clock_skew = skew;
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
        if self.lease_ttl > walcache_protocol::MAX_LEASE_TTL {
            return Err(Error::config(format!(
                "lease_ttl = {:?}: at most {:?} (the daemon's full refresh prunes tag versions \
                 older than a cycle's start minus this); a load that takes longer loses its \
                 lease and is simply not cached",
                self.lease_ttl,
                walcache_protocol::MAX_LEASE_TTL
            )));
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
        if self.fleet_bypass_loads == Some(0) {
            return Err(Error::config(
                "fleet_bypass_loads = 0: no load could ever bypass the caches; use at least 1",
            ));
        }
        if self.fleet_bypass_loads.is_some() && self.redis_url.is_none() {
            return Err(Error::config(
                "fleet_bypass_loads needs Redis, which holds the permits: set redis_url, or drop fleet_bypass_loads",
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(Error::config(
                "circuit_breaker failures = 0: must be at least 1",
            ));
        }
        if stream && matches!(self.keys, Keys::None) && !self.allow_unsigned {
            return Err(Error::config(format!(
                "the invalidation stream is not authenticated: anyone who can PUBLISH on {} \
                 could keep stale L1 entries alive or flush every cache. Give the daemon's \
                 signing keys (signing_keys_file(..), signing_keys_env(\"WALCACHE_SIGNING_KEYS\") \
                 or signing_keys(..)), or call allow_unsigned() to accept unsigned messages",
                naming.invalidation_channel()
            )));
        }
        Ok((naming, stream))
    }

    /// The handle's authenticator: its keys, and the freshness window of signed messages.
    fn authenticator(&self, stream: bool) -> Result<crate::auth::Authenticator, Error> {
        use crate::auth::KeySource;
        let source = match &self.keys {
            Keys::None => KeySource::None,
            Keys::Fixed(k) => KeySource::Fixed(k.clone()),
            Keys::File(path) => KeySource::File(path.clone()),
            Keys::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    Error::config(format!(
                        "signing_keys_env({var:?}): the variable is not set (or not UTF-8); set \
                         it to the daemon's keys as `id:hexsecret`, or use signing_keys_file(..)"
                    ))
                })?;
                KeySource::Fixed(
                    walcache_protocol::Keyring::parse(&text)
                        .map_err(|e| Error::config(format!("signing_keys_env({var:?}): {e}")))?,
                )
            }
        };
        let max_age = stream.then(|| self.max_clock_skew + self.heartbeat_timeout);
        crate::auth::Authenticator::new(source, max_age, self.max_clock_skew)
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
        crate::metrics::register_at_zero();
        let auth = self.authenticator(stream)?;
        let (l2, client) = match &self.redis_url {
            Some(url) => {
                let client = redis_client(
                    &url.0,
                    self.redis_ca_file.as_deref(),
                    self.redis_client_cert.as_ref(),
                )?;
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
            namespaces: RwLock::new(HashMap::new()),
            l2,
            config: HandleConfig {
                freshness: self.freshness,
                invalidation,
                lease_wait: self.lease_wait,
                reconnect_min: self.reconnect_min,
                reconnect_max: self.reconnect_max,
            },
            bypass: Semaphore::new(self.max_bypass_loads),
            fleet_bypass: self
                .fleet_bypass_loads
                .map(|n| FleetCap::new(n, &naming, self.lease_ttl)),
            process_epoch: rand::random(),
            naming,
            auth,
            hooks: Hooks::new(),
            runtime: tokio::runtime::Handle::current(),
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
/// against the system roots, or only against the CA in `ca_file`, and presents `client_cert`
/// (certificate and key files) when set.
fn redis_client(
    url: &str,
    ca_file: Option<&std::path::Path>,
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<redis::Client, Error> {
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
    let client_tls = match client_cert {
        None => None,
        Some((cert, key)) => {
            if !url.starts_with("rediss://") {
                return Err(Error::config(format!(
                    "redis_client_cert = {}: set, but redis_url is not rediss://; a client \
                     certificate needs TLS: use a rediss:// URL or drop redis_client_cert",
                    cert.display()
                )));
            }
            Some(read_client_cert(cert, key)?)
        }
    };
    let root_cert = match ca_file {
        None => None,
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(Error::config(format!(
                    "redis_ca_file = {}: set, but redis_url is not rediss://; use a rediss:// URL \
                     or drop redis_ca_file",
                    path.display()
                )));
            }
            Some(std::fs::read(path).map_err(|e| {
                Error::config(format!(
                    "redis_ca_file = {}: cannot be read ({e}); give the PEM file of the CA that \
                     signed the Redis server's certificate",
                    path.display()
                ))
            })?)
        }
    };
    if client_tls.is_none() && root_cert.is_none() {
        return redis::Client::open(info).map_err(bad_url);
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(bad_url)
}

/// Reads and checks a client certificate and its key, as redis-rs will use them: every
/// problem is a configuration error at `build()` naming the file, never one at the first
/// connection (and never quoting the key).
fn read_client_cert(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<redis::ClientTlsConfig, Error> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fix = "give redis_client_cert the client certificate (PEM, signed by the CA in Redis's \
               tls-ca-cert-file) and its unencrypted private key (PEM: PKCS#8, PKCS#1 or SEC1)";
    let cert_error = |problem: String| {
        Error::config(format!(
            "redis_client_cert: certificate {}: {problem}; {fix}",
            cert.display()
        ))
    };
    let key_error = |problem: &str| {
        Error::config(format!(
            "redis_client_cert: private key {}: {problem}; {fix}",
            key.display()
        ))
    };
    let cert_pem = std::fs::read(cert).map_err(|e| cert_error(format!("cannot be read ({e})")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("invalid PEM ({e})")))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".to_owned()));
    }
    let key_pem = std::fs::read(key).map_err(|e| key_error(&format!("cannot be read ({e})")))?;
    warn_if_readable_by_others(key);
    let parsed = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(parsed) => parsed,
        Err(_) if key_pem.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") => {
            return Err(key_error(
                "encrypted, which is not supported: store it unencrypted with mode 0600",
            ))
        }
        Err(pem::Error::NoItemsFound) => return Err(key_error("no private key in the file")),
        // The parser's message could quote the key: not shown.
        Err(_) => return Err(key_error("invalid PEM")),
    };
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, parsed, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_error("does not belong to the certificate"),
        rustls::Error::InvalidCertificate(e) => {
            cert_error(format!("the first certificate does not parse ({e:?})"))
        }
        _ => key_error("unusable: expected an RSA, ECDSA (P-256, P-384) or Ed25519 key"),
    })?;
    Ok(redis::ClientTlsConfig {
        client_cert: cert_pem,
        client_key: key_pem,
    })
}

/// Warns when the key file is open to its group or others.
fn warn_if_readable_by_others(key: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(key) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %key.display(),
                    mode = %format_args!("{mode:04o}"),
                    "the Redis client certificate's private key file is open to its group or to \
                     others: `chmod 600` it (owned by this process's user)"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = key;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_redis_password() {
        for url in [
            "redis://app:s3cr@t@127.0.0.1:6379/0",
            "rediss://127.0.0.1:6379/0?password=s3cr@t",
        ] {
            let debug = format!("{:?}", crate::Walcache::builder().redis_url(url));
            assert!(!debug.contains("s3cr") && !debug.contains("@t"), "{debug}");
            assert!(debug.contains("127.0.0.1:6379"), "{debug}");
        }
    }

    #[test]
    fn redis_connections_get_keepalives_and_a_user_timeout() {
        for url in ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0"] {
            let client = redis_client(url, None, None).unwrap();
            let tcp = client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}");
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(tcp.user_timeout(), Some(Duration::from_secs(20)), "{url}");
        }
    }
}

//! The faults the auditor injects, and what each one's staleness bound is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use walcache::Walcache;
use walcache_audit::daemon::Daemon;
use walcache_audit::now_ns;
use walcache_testkit::{wait_until, PgServer, RedisServer, TcpProxy};

use crate::workload::Db;
use crate::BoxError;

/// How long Redis stays down in a `redis-restart`.
pub(crate) const REDIS_DOWN: Duration = Duration::from_millis(250);
/// The extra delay, each way, of `proxy-latency`, and how long it lasts.
pub(crate) const PROXY_LATENCY: Duration = Duration::from_millis(30);
pub(crate) const PROXY_LATENCY_FOR: Duration = Duration::from_secs(3);
/// How long `proxy-partition` forwards nothing before it resets the connections.
pub(crate) const PARTITION_FOR: Duration = Duration::from_millis(1500);
/// How long `pubsub-loss` drops pub/sub messages.
pub(crate) const PUBSUB_LOSS_FOR: Duration = Duration::from_millis(600);
const DEADLINE: Duration = Duration::from_secs(30);

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// Redis stopped and started again on its port, empty (no persistence).
    RedisRestart,
    /// `CLIENT KILL TYPE pubsub`: every subscriber's connection closed by Redis.
    PubsubKill,
    /// `walcached` killed with SIGKILL and started again.
    DaemonKill,
    /// PostgreSQL stopped and started again: alternately a fast shutdown (sessions killed
    /// mid-statement) and a crash (immediate shutdown, recovery at start).
    PgRestart,
    /// The library's Redis link (through the proxy) delayed by 30 ms each way for 3 s.
    ProxyLatency,
    /// The library's Redis link forwards nothing for 1.5 s (a network partition), then its
    /// connections are reset.
    ProxyPartition,
    /// Every connection of the library's Redis link reset at once.
    ProxyReset,
    /// Pub/sub messages to the library dropped for 600 ms (heartbeats too), other traffic
    /// untouched.
    PubsubLoss,
}

impl FaultKind {
    /// Every kind, in the order the schedule injects them.
    pub(crate) const ALL: [FaultKind; 8] = [
        FaultKind::RedisRestart,
        FaultKind::PubsubKill,
        FaultKind::DaemonKill,
        FaultKind::PgRestart,
        FaultKind::ProxyLatency,
        FaultKind::ProxyPartition,
        FaultKind::ProxyReset,
        FaultKind::PubsubLoss,
    ];

    /// The name in reports and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::PubsubKill => "pubsub-kill",
            FaultKind::DaemonKill => "daemon-kill",
            FaultKind::PgRestart => "pg-restart",
            FaultKind::ProxyLatency => "proxy-latency",
            FaultKind::ProxyPartition => "proxy-partition",
            FaultKind::ProxyReset => "proxy-reset",
            FaultKind::PubsubLoss => "pubsub-loss",
        }
    }

    /// Parse a name.
    pub(crate) fn parse(name: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {name:?}: use one of {}", names.join(", "))
            })
    }
}

/// The bounds a run applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BoundSet {
    /// Outside faults, and for faults that leave L2 fresh and end L1's liveness at once.
    pub(crate) base: Duration,
    /// For faults that silence the stream or delay the daemon: heartbeat timeout + 1 s.
    pub(crate) stream: Duration,
    /// For `pg-restart` in `available` mode: the daemon's reconnect backoff after PostgreSQL
    /// is back, during which L2 keeps what the loader filled before the commits.
    pub(crate) pg: Duration,
    /// In `strict` mode, the one bound of every fault.
    pub(crate) strict: Option<Duration>,
}

impl BoundSet {
    /// The bound of reads in `kind`'s window.
    pub(crate) fn of(&self, kind: FaultKind) -> Duration {
        if let Some(strict) = self.strict {
            return strict;
        }
        match kind {
            FaultKind::PubsubKill | FaultKind::ProxyReset => self.base,
            FaultKind::ProxyLatency => self.base + 2 * PROXY_LATENCY,
            FaultKind::RedisRestart
            | FaultKind::DaemonKill
            | FaultKind::ProxyPartition
            | FaultKind::PubsubLoss => self.stream,
            FaultKind::PgRestart => self.pg,
        }
    }
}

/// What the injector needs.
pub(crate) struct Injector<'a> {
    pub(crate) redis: &'a Arc<Mutex<RedisServer>>,
    pub(crate) pg: &'a Arc<Mutex<PgServer>>,
    pub(crate) proxy: &'a TcpProxy,
    pub(crate) daemon: &'a mut Daemon,
    /// A handle whose liveness shows the system has recovered.
    pub(crate) probe: &'a Walcache,
    pub(crate) admin: &'a mut Db,
    pub(crate) heartbeat_timeout: Duration,
    /// PostgreSQL restarts so far (they alternate between fast and immediate shutdowns).
    pub(crate) pg_restarts: u32,
}

/// Wait until `h` has noticed the fault (not live, for up to `notice`), then until it is live
/// again (up to 30 s).
pub(crate) async fn wait_relive(h: &Walcache, notice: Duration) -> Result<(), BoxError> {
    // Not noticing within `notice` is no error: some faults pass without ending liveness.
    let _ = wait_until("the fault to end liveness", notice, || async {
        !h.is_live()
    })
    .await;
    wait_until("the cache's stream to be live again", DEADLINE, || async {
        h.is_live()
    })
    .await?;
    Ok(())
}

/// The pid of the walsender streaming to walcached, if any.
async fn walsender_pid(admin: &mut Db) -> Result<Option<i32>, BoxError> {
    let client = admin.client_within(DEADLINE).await?;
    Ok(client
        .query_opt(
            "SELECT pid FROM pg_stat_replication \
             WHERE application_name = 'walcached' AND state = 'streaming'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Wait until a walsender other than `before` streams to walcached.
async fn wait_new_walsender(admin: &mut Db, before: Option<i32>) -> Result<(), BoxError> {
    let until = now_ns() + DEADLINE.as_nanos() as u64;
    loop {
        // A query can fail while PostgreSQL restarts: the deadline decides.
        let now = walsender_pid(admin).await.ok().flatten();
        if now.is_some() && now != before {
            return Ok(());
        }
        if now_ns() > until {
            return Err("walcached did not stream again within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Hold for `d`: a fault's duration (the schedule, not synchronisation).
async fn hold(d: Duration) {
    tokio::time::sleep(d).await;
}

impl Injector<'_> {
    /// Inject `kind` and wait until the system has recovered from it. Returns a description.
    pub(crate) async fn inject(&mut self, kind: FaultKind) -> Result<String, BoxError> {
        let hb = self.heartbeat_timeout;
        let detail = match kind {
            FaultKind::RedisRestart => {
                let redis = Arc::clone(self.redis);
                tokio::task::spawn_blocking(move || {
                    let mut r = redis.lock().map_err(|_| "redis lock poisoned")?;
                    r.stop();
                    std::thread::sleep(REDIS_DOWN);
                    r.start_again().map_err(|e| e.to_string())
                })
                .await??;
                wait_relive(self.probe, hb * 2).await?;
                format!("down {} ms", REDIS_DOWN.as_millis())
            }
            FaultKind::PubsubKill => {
                let client = self
                    .redis
                    .lock()
                    .map_err(|_| "redis lock poisoned")?
                    .client();
                let mut conn = client.get_multiplexed_async_connection().await?;
                let killed: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await?;
                wait_relive(self.probe, hb * 2).await?;
                format!("{killed} pub/sub connections killed")
            }
            FaultKind::DaemonKill => {
                let before = walsender_pid(self.admin).await?;
                self.daemon.sigkill().await?;
                self.daemon.spawn()?;
                // Recovered when the new daemon streams. The caches may never be seen not
                // live: the new epoch's first heartbeat flushes and revives them at once.
                wait_new_walsender(self.admin, before).await?;
                wait_relive(self.probe, Duration::ZERO).await?;
                "SIGKILL, restarted at once".to_owned()
            }
            FaultKind::PgRestart => {
                // Alternately a fast shutdown (sessions killed, in-flight transactions rolled
                // back) and a crash (immediate shutdown: a COMMIT already flushed survives
                // though its client never heard back — the unknown outcomes writers resolve).
                self.pg_restarts += 1;
                let crash = self.pg_restarts % 2 == 0;
                let before = walsender_pid(self.admin).await?;
                let pg = Arc::clone(self.pg);
                let t0 = now_ns();
                tokio::task::spawn_blocking(move || {
                    let mut pg = pg.lock().map_err(|_| "pg lock poisoned")?;
                    if crash {
                        pg.stop();
                        pg.start_again()
                    } else {
                        pg.restart()
                    }
                    .map_err(|e| e.to_string())
                })
                .await??;
                let down_ms = (now_ns() - t0) as f64 / 1e6;
                wait_new_walsender(self.admin, before).await?;
                wait_relive(self.probe, Duration::ZERO).await?;
                if crash {
                    format!("crash (immediate shutdown) and start: {down_ms:.0} ms")
                } else {
                    format!("fast shutdown and start: {down_ms:.0} ms")
                }
            }
            FaultKind::ProxyLatency => {
                self.proxy.set_latency(PROXY_LATENCY);
                hold(PROXY_LATENCY_FOR).await;
                self.proxy.set_latency(Duration::ZERO);
                format!(
                    "+{} ms each way for {} s",
                    PROXY_LATENCY.as_millis(),
                    PROXY_LATENCY_FOR.as_secs()
                )
            }
            FaultKind::ProxyPartition => {
                self.proxy.set_blackhole(true);
                hold(PARTITION_FOR).await;
                self.proxy.set_blackhole(false);
                let reset = self.proxy.reset_all();
                wait_relive(self.probe, hb * 2).await?;
                format!(
                    "nothing forwarded for {} ms, then {reset} connections reset",
                    PARTITION_FOR.as_millis()
                )
            }
            FaultKind::ProxyReset => {
                let reset = self.proxy.reset_all();
                wait_relive(self.probe, hb * 2).await?;
                format!("{reset} connections reset")
            }
            FaultKind::PubsubLoss => {
                let before = self.proxy.stats().pubsub_messages_dropped;
                self.proxy.set_drop_pubsub_messages(true);
                hold(PUBSUB_LOSS_FOR).await;
                self.proxy.set_drop_pubsub_messages(false);
                let dropped = self.proxy.stats().pubsub_messages_dropped - before;
                wait_relive(self.probe, hb * 2).await?;
                format!(
                    "{dropped} pub/sub messages dropped in {} ms",
                    PUBSUB_LOSS_FOR.as_millis()
                )
            }
        };
        Ok(detail)
    }
}

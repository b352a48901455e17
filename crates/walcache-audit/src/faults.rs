//! The faults the auditor injects, and what each one's staleness bound is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use walcache::Walcache;
use walcache_audit::daemon::Daemon;
use walcache_audit::now_ns;
use walcache_testkit::{wait_until, PgServer, RedisServer, TcpProxy};

use crate::workload::{burst_writer, Db};
use crate::{next_xid8, BoxError};

/// How long Redis stays down in a `redis-restart`.
pub(crate) const REDIS_DOWN: Duration = Duration::from_millis(250);
/// The extra delay, each way, of `proxy-latency`, and how long it lasts.
pub(crate) const PROXY_LATENCY: Duration = Duration::from_millis(30);
pub(crate) const PROXY_LATENCY_FOR: Duration = Duration::from_secs(3);
/// How long `proxy-partition` forwards nothing before it resets the connections.
pub(crate) const PARTITION_FOR: Duration = Duration::from_millis(1500);
/// How long `pubsub-loss` drops pub/sub messages.
pub(crate) const PUBSUB_LOSS_FOR: Duration = Duration::from_millis(600);
/// How long `daemon-backlog` keeps walcached stopped (from its exit to its restart).
pub(crate) const BACKLOG_STOP: Duration = Duration::from_secs(5);
/// The burst writers `daemon-backlog` adds while walcached is stopped: connections, commits
/// per second over all of them (rows per commit: `--backlog-rows-per-commit`).
pub(crate) const BURST_WRITERS: i64 = 4;
pub(crate) const BURST_RATE: f64 = 1_000.0;
/// How long `replication-silent` keeps the walsender stopped: within the daemon's 10 s receive
/// deadline, so the session survives and resumes.
pub(crate) const SILENT_HOLD: Duration = Duration::from_secs(3);
/// In long mode every second `replication-silent` holds this long instead: past the receive
/// deadline (the daemon ends the session and reconnects) and past the 10 s after which it
/// terminates the orphaned walsender still holding its slot, which cannot die until continued.
pub(crate) const SILENT_HOLD_LONG: Duration = Duration::from_secs(13);
/// How old the snapshot `redis-snapshot` restarts Redis from: the workload's commits (and the
/// daemon's deletes) go on this long after the `SAVE`.
pub(crate) const SNAPSHOT_AGE: Duration = Duration::from_secs(1);
/// The daemon's heartbeat interval (see `main.rs`).
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(crate::DAEMON_HEARTBEAT_MS);
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
    /// `walcached` stopped cleanly (SIGTERM) for 5 s while burst writers add 1,000 commits/s
    /// to a mapped table, then started again over the backlog.
    DaemonBacklog,
    /// The walsender streaming to `walcached` stopped (SIGSTOP) for 3 s while writers commit,
    /// then continued (SIGCONT): a replication link silent without a word. In long mode every
    /// second one lasts 13 s, past the daemon's receive deadline.
    ReplicationSilent,
    /// Redis `SAVE`d, then restarted 1 s later from that snapshot while the workload commits:
    /// values the daemon deleted since come back, with the namespace's older marker.
    RedisSnapshot,
    /// As `redis-snapshot`, with `walcached` stopped (SIGTERM) before the restart and started
    /// after it.
    RedisSnapshotDaemonDown,
    /// Statements that change `audit_parts`' rows without row events: a partition truncated,
    /// detached and re-attached, identities changed, the table dropped and re-created (see
    /// `ddl_fault.rs`).
    Ddl,
}

impl FaultKind {
    /// Every kind, in the order the schedule injects them.
    pub(crate) const ALL: [FaultKind; 13] = [
        FaultKind::RedisRestart,
        FaultKind::PubsubKill,
        FaultKind::DaemonKill,
        FaultKind::PgRestart,
        FaultKind::ProxyLatency,
        FaultKind::ProxyPartition,
        FaultKind::ProxyReset,
        FaultKind::PubsubLoss,
        FaultKind::DaemonBacklog,
        FaultKind::ReplicationSilent,
        FaultKind::RedisSnapshot,
        FaultKind::RedisSnapshotDaemonDown,
        FaultKind::Ddl,
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
            FaultKind::DaemonBacklog => "daemon-backlog",
            FaultKind::ReplicationSilent => "replication-silent",
            FaultKind::RedisSnapshot => "redis-snapshot",
            FaultKind::RedisSnapshotDaemonDown => "redis-snapshot-daemon-down",
            FaultKind::Ddl => "ddl",
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
    /// The bound of reads in the window of one injection of `kind`. `outage` is how long that
    /// injection kept invalidations from being published, as measured (see
    /// [`Injected::outage`]); the kinds whose bound depends on it use it in `available` mode.
    pub(crate) fn of(&self, kind: FaultKind, outage: Option<Duration>) -> Duration {
        if let Some(strict) = self.strict {
            return strict;
        }
        match kind {
            // DDL capture flushes in commit order: the publish path.
            FaultKind::PubsubKill | FaultKind::ProxyReset | FaultKind::Ddl => self.base,
            FaultKind::ProxyLatency => self.base + 2 * PROXY_LATENCY,
            FaultKind::RedisRestart
            | FaultKind::DaemonKill
            | FaultKind::ProxyPartition
            | FaultKind::PubsubLoss => self.stream,
            FaultKind::PgRestart => self.pg,
            // L2 is stale for as long as nothing is published, whatever that was; after a
            // restart from a snapshot, from the SAVE until the lost namespaces are flushed.
            FaultKind::DaemonBacklog
            | FaultKind::ReplicationSilent
            | FaultKind::RedisSnapshot
            | FaultKind::RedisSnapshotDaemonDown => self.base + outage.unwrap_or(self.stream),
        }
    }

    /// The bound of `kind` as the report states it: milliseconds, or for the kinds measured
    /// per injection, the formula.
    pub(crate) fn describe(&self, kind: FaultKind) -> serde_json::Value {
        let ms = |d: Duration| serde_json::json!(d.as_secs_f64() * 1e3);
        match kind {
            _ if self.strict.is_some() => ms(self.of(kind, None)),
            FaultKind::DaemonBacklog => serde_json::json!(format!(
                "stop + catch-up (measured per injection) + {} ms",
                self.base.as_millis()
            )),
            FaultKind::ReplicationSilent => serde_json::json!(format!(
                "3 s hold: the hold + {0} ms; 13 s hold (long mode): until the probe is live \
                 again + {0} ms (measured per injection)",
                self.base.as_millis()
            )),
            FaultKind::RedisSnapshot | FaultKind::RedisSnapshotDaemonDown => {
                serde_json::json!(format!(
                    "from the SAVE until the probe is live again (measured per injection) + {} ms",
                    self.base.as_millis()
                ))
            }
            _ => ms(self.of(kind, None)),
        }
    }
}

/// What one injection did.
#[derive(Debug)]
pub(crate) struct Injected {
    /// A description for the report.
    pub(crate) detail: String,
    /// For the kinds that stop invalidations at the source: how long they were stopped, from
    /// the injection until the daemon published again (`daemon-backlog`: SIGTERM to the first
    /// heartbeat of the new daemon; `replication-silent`: SIGSTOP to SIGCONT, or for a hold
    /// past the receive deadline, SIGSTOP to the first heartbeat after the reconnection).
    pub(crate) outage: Option<Duration>,
}

impl From<String> for Injected {
    fn from(detail: String) -> Self {
        Injected {
            detail,
            outage: None,
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
    /// The audited database, for the burst writers' connections.
    pub(crate) pg_conn: &'a str,
    /// Long mode: every second `replication-silent` holds [`SILENT_HOLD_LONG`].
    pub(crate) long_silences: bool,
    /// Rows per burst commit of `daemon-backlog` (`--backlog-rows-per-commit`).
    pub(crate) backlog_rows_per_commit: i64,
    /// `replication-silent` injections so far.
    pub(crate) silences: u32,
    /// Rows of the audited tables (`--rows`).
    pub(crate) rows: usize,
    /// `ddl` injections so far (they take turns among four statements).
    pub(crate) ddl_injections: u32,
    /// The version of `audit_parts`' rows the last `ddl` injection left.
    pub(crate) parts_version: i64,
    /// The commits the faults made (`ddl`), for the history.
    pub(crate) commits: Vec<walcache_audit::Commit>,
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

/// Hold for `d` (the schedule), watching `h`: returns when, if at all, it was first seen not
/// live, in nanoseconds on [`now_ns`].
async fn hold_watching(h: &Walcache, d: Duration) -> Option<u64> {
    let until = now_ns() + d.as_nanos() as u64;
    let mut not_live = None;
    loop {
        let now = now_ns();
        if not_live.is_none() && !h.is_live() {
            not_live = Some(now);
        }
        if now >= until {
            return not_live;
        }
        tokio::time::sleep(Duration::from_nanos(until - now).min(Duration::from_millis(2))).await;
    }
}

/// A process stopped with SIGSTOP: continued (SIGCONT) when dropped, so no path out of the
/// fault — an error, a panic — leaves it stopped.
struct Stopped(Pid);

impl Stopped {
    fn stop(pid: i32) -> Result<Stopped, BoxError> {
        let pid = Pid::from_raw(pid).ok_or("not a process id")?;
        kill_process(pid, Signal::STOP)
            .map_err(|e| format!("SIGSTOP to walsender {}: {e}", pid.as_raw_pid()))?;
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Err(e) = kill_process(self.0, Signal::CONT) {
            eprintln!(
                "walcache-audit: SIGCONT to walsender {}: {e}",
                self.0.as_raw_pid()
            );
        }
    }
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
    /// Inject `kind` and wait until the system has recovered from it.
    pub(crate) async fn inject(&mut self, kind: FaultKind) -> Result<Injected, BoxError> {
        let hb = self.heartbeat_timeout;
        let detail = match kind {
            FaultKind::DaemonBacklog => return self.daemon_backlog().await,
            FaultKind::ReplicationSilent => return self.replication_silent().await,
            FaultKind::RedisSnapshot => return self.redis_snapshot(false).await,
            FaultKind::RedisSnapshotDaemonDown => return self.redis_snapshot(true).await,
            FaultKind::Ddl => return self.ddl().await,
            FaultKind::RedisRestart => {
                self.restart_redis(REDIS_DOWN, false).await?;
                wait_relive(self.probe, hb * 2).await?;
                format!("down {} ms", REDIS_DOWN.as_millis())
            }
            FaultKind::PubsubKill => {
                let mut conn = self.redis_conn().await?;
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
        Ok(detail.into())
    }

    /// `daemon-backlog`: SIGTERM, burst writers for [`BACKLOG_STOP`] after the exit, restart,
    /// and the catch-up timed until the probe is live again: its first heartbeat certifies
    /// everything committed before it as published.
    async fn daemon_backlog(&mut self) -> Result<Injected, BoxError> {
        // The burst's connections first, so connecting is not part of the fault.
        let mut burst_dbs = Vec::new();
        for _ in 0..BURST_WRITERS {
            burst_dbs.push(Db::connect(self.pg_conn).await?);
        }
        let xid_before = next_xid8(self.admin.client_within(DEADLINE).await?).await?;
        let t0 = now_ns();
        let stop_burst = Arc::new(AtomicBool::new(false));
        let burst: Vec<_> = burst_dbs
            .into_iter()
            .enumerate()
            .map(|(part, db)| {
                tokio::spawn(burst_writer(
                    db,
                    part as i64,
                    BURST_WRITERS,
                    self.backlog_rows_per_commit,
                    BURST_RATE / BURST_WRITERS as f64,
                    Arc::clone(&stop_burst),
                ))
            })
            .collect();
        let stopped = self.daemon.sigterm(DEADLINE).await;
        let t_exit = now_ns();
        // Held in full even if the stop failed: the burst writers must be stopped and joined.
        let not_live = hold_watching(self.probe, BACKLOG_STOP).await;
        stop_burst.store(true, Ordering::Relaxed);
        let mut burst_commits = 0;
        for task in burst {
            burst_commits += task.await??;
        }
        stopped?;
        let xid_after = next_xid8(self.admin.client_within(DEADLINE).await?).await?;
        let before = walsender_pid(self.admin).await?;
        let t_restart = now_ns();
        self.daemon.spawn()?;
        wait_new_walsender(self.admin, before).await?;
        wait_relive(self.probe, Duration::ZERO).await?;
        let t_live = now_ns();
        let stopped_s = (t_restart - t0) as f64 / 1e9;
        let commits = xid_after - xid_before;
        let ms = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e6;
        Ok(Injected {
            detail: format!(
                "SIGTERM, exited after {:.0} ms, stopped {stopped_s:.2} s; {commits} commits \
                 while stopped ({:.0}/s, {burst_commits} of them the burst's); catch-up {:.0} ms \
                 (restart to the probe live again); probe not live {}",
                ms(t0, t_exit),
                commits as f64 / stopped_s,
                ms(t_restart, t_live),
                not_live.map_or("never (!)".to_owned(), |t| format!(
                    "{:.0} ms after SIGTERM",
                    ms(t0, t)
                )),
            ),
            outage: Some(Duration::from_nanos(t_live - t0)),
        })
    }

    /// A connection to the audited Redis (not through the library's proxy).
    async fn redis_conn(&self) -> Result<redis::aio::MultiplexedConnection, BoxError> {
        let client = self
            .redis
            .lock()
            .map_err(|_| "redis lock poisoned")?
            .client();
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Kill Redis, keep it down for `down`, start it again (from its snapshot, if a `SAVE`
    /// wrote one), and remove the snapshot if `forget_snapshot`.
    async fn restart_redis(&self, down: Duration, forget_snapshot: bool) -> Result<(), BoxError> {
        let redis = Arc::clone(self.redis);
        tokio::task::spawn_blocking(move || {
            let mut r = redis.lock().map_err(|_| "redis lock poisoned")?;
            r.stop();
            std::thread::sleep(down); // the outage's length, not a wait
            r.start_again().map_err(|e| e.to_string())?;
            if forget_snapshot {
                std::fs::remove_file(r.dir().join("dump.rdb")).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
        .await??;
        Ok(())
    }

    /// `redis-snapshot`: `SAVE`, [`SNAPSHOT_AGE`] of commits, then Redis killed and started
    /// from the snapshot (with the daemon stopped around the restart if `daemon_down`).
    /// Values deleted after the `SAVE` come back; the daemon must find the loss through the
    /// markers and flush before certifying anything. The outage runs from the `SAVE` until
    /// the probe is live again.
    async fn redis_snapshot(&mut self, daemon_down: bool) -> Result<Injected, BoxError> {
        let mut conn = self.redis_conn().await?;
        let t0 = now_ns();
        redis::cmd("SAVE").query_async::<()>(&mut conn).await?;
        hold(SNAPSHOT_AGE).await;
        let before = walsender_pid(self.admin).await?;
        if daemon_down {
            self.daemon.sigterm(DEADLINE).await?;
        }
        // Loaded, the snapshot is removed: later `redis-restart`s start empty, as they say.
        self.restart_redis(Duration::ZERO, true).await?;
        let t_restarted = now_ns();
        if daemon_down {
            self.daemon.spawn()?;
            wait_new_walsender(self.admin, before).await?;
        }
        wait_relive(self.probe, self.heartbeat_timeout * 2).await?;
        let t_live = now_ns();
        let ms = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e6;
        Ok(Injected {
            detail: format!(
                "restarted from a snapshot {:.0} ms old{}; live again {:.0} ms after the restart",
                ms(t0, t_restarted),
                if daemon_down {
                    ", walcached stopped around it"
                } else {
                    ""
                },
                ms(t_restarted, t_live)
            ),
            outage: Some(Duration::from_nanos(t_live - t0)),
        })
    }

    /// `replication-silent`: the walsender serving walcached stopped for [`SILENT_HOLD`]: the
    /// daemon receives nothing and sends no error, so only its liveness rule (no heartbeat
    /// unless a recent sample of the server's flush position is reached) ends the caches'
    /// liveness. A [`SILENT_HOLD_LONG`] also crosses the receive deadline and the orphan
    /// take-over: the daemon terminates the stopped walsender, which dies once continued.
    async fn replication_silent(&mut self) -> Result<Injected, BoxError> {
        self.silences += 1;
        let long = self.long_silences && self.silences % 2 == 0;
        let hold = if long { SILENT_HOLD_LONG } else { SILENT_HOLD };
        let until = now_ns() + DEADLINE.as_nanos() as u64;
        let pid = loop {
            // A previous fault may have left the daemon reconnecting: wait for its walsender.
            if let Some(pid) = walsender_pid(self.admin).await? {
                break pid;
            }
            if now_ns() > until {
                return Err("no walsender streams to walcached".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let t0 = now_ns();
        let stopped = Stopped::stop(pid)?;
        let not_live = hold_watching(self.probe, hold).await;
        drop(stopped);
        let t1 = now_ns();
        if long {
            // The daemon ended the session: recovered once a new walsender streams.
            wait_new_walsender(self.admin, Some(pid)).await?;
        }
        wait_relive(self.probe, Duration::ZERO).await?;
        let t_live = now_ns();
        let ms = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e6;
        // Heartbeats stop within two intervals of the silence; the caches then wait out their
        // timeout.
        let expected = self.heartbeat_timeout + 2 * HEARTBEAT_INTERVAL;
        Ok(Injected {
            detail: format!(
                "walsender {pid} stopped {:.0} ms; probe not live {}; live again {:.0} ms after \
                 SIGCONT",
                ms(t0, t1),
                not_live.map_or("never (!)".to_owned(), |t| format!(
                    "{:.0} ms after SIGSTOP (expected within {} ms)",
                    ms(t0, t),
                    expected.as_millis()
                )),
                ms(t1, t_live),
            ),
            // Within the receive deadline the session resumes where it stopped: L2 is stale
            // for the hold. Past it, the daemon reconnects after SIGCONT and replays.
            outage: Some(Duration::from_nanos(if long { t_live } else { t1 } - t0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(strict: bool) -> BoundSet {
        BoundSet {
            base: Duration::from_millis(100),
            stream: Duration::from_secs(2),
            pg: Duration::from_secs(4),
            strict: strict.then(|| Duration::from_millis(1100)),
        }
    }

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for kind in FaultKind::ALL {
            assert_eq!(FaultKind::parse(kind.name()), Ok(kind));
        }
        assert!(FaultKind::parse("daemon-stop").is_err());
    }

    #[test]
    fn measured_kinds_are_bounded_by_their_outage_in_available_mode() {
        let b = bounds(false);
        let outage = Some(Duration::from_millis(7_300));
        for kind in [FaultKind::DaemonBacklog, FaultKind::ReplicationSilent] {
            assert_eq!(b.of(kind, outage), Duration::from_millis(7_400));
            assert!(b.describe(kind).is_string());
        }
        // The others ignore it.
        assert_eq!(b.of(FaultKind::DaemonKill, outage), Duration::from_secs(2));
    }

    #[test]
    fn strict_mode_has_one_bound_whatever_the_outage() {
        let b = bounds(true);
        for kind in FaultKind::ALL {
            assert_eq!(
                b.of(kind, Some(Duration::from_secs(30))),
                Duration::from_millis(1100)
            );
            assert_eq!(b.describe(kind), serde_json::json!(1100.0));
        }
    }
}

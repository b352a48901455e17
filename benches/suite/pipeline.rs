//! The daemon's pipeline against the raw tools (the suite's pipeline section):
//!
//! 1. **Drain**: one publication and four pgoutput slots created before N row changes, so
//!    every slot holds the same WAL; drained in the order A B B A by `pg_recvlogical` (output
//!    to `/dev/null`, spawn to exit) and by walcached (in this process, on a runtime of its
//!    own, Redis invalidation on; from its start until a plain subscriber hears the last row's
//!    key). The headline is the ratio of the drain rates.
//! 2. **Commit → L1 eviction** at several commit rates (paced by a timer, and unthrottled): a
//!    reader *process* (this binary, `--latency-reader`) holds a live `walcache` handle whose
//!    L1 holds every key and records when each key leaves it; the writers here record when
//!    each `COMMIT` returned; a plain redis-rs subscriber here records when the invalidation
//!    message naming the key arrived. All three read `CLOCK_MONOTONIC`, one clock per machine.
//!    A separate pass at each rate, without the daemon, follows the same commits with
//!    `pg_recvlogical` (`test_decoding`, to a pipe): PostgreSQL's own decode-and-send time.
//! 3. **Peak RSS** (`VmHWM`) of a `walcached run` process through one large transaction.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use walcache::Walcache;
use walcache_benches::Servers;
use walcache_protocol::{Body, Message, Naming};
use walcache_testkit::{PgServer, RedisServer};
use walcached::config::Config;
use walcached::status::Status;

use crate::Mode;

/// The hidden subcommand of the latency benchmark's reader process.
pub(crate) const READER_COMMAND: &str = "--latency-reader";
/// The reader's signing keys, when the pass is signed (unset: it accepts unsigned messages).
const READER_KEYS_ENV: &str = "WALCACHE_BENCH_SIGNING_KEYS";
/// The namespace (and table) of the latency benchmark.
pub(crate) const LATENCY_NS: &str = "lat";
/// How long the reader sleeps between two sweeps over the keys it watches.
pub(crate) const READER_POLL: Duration = Duration::from_micros(20);
/// How many keys, in update order, the reader checks per sweep (split between the writers).
pub(crate) const READER_WINDOW: usize = 256;
/// How long the reader keeps watching for stragglers once the daemon has confirmed the last
/// commit.
const READER_GRACE: Duration = Duration::from_secs(1);
/// Writer connections of the latency benchmark (commit `i` goes to writer `i % WRITERS`).
pub(crate) const WRITERS: usize = 4;
/// Longest wait for anything (a daemon to catch up, a drain to finish).
const DEADLINE: Duration = Duration::from_secs(600);

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything the report shows of the pipeline.
pub(crate) struct PipelineResults {
    pub(crate) drain: DrainResult,
    pub(crate) latency: Vec<RateResult>,
    /// `Err(why)` when the measurement was skipped (no `walcached` binary).
    pub(crate) rss: Result<RssResult, String>,
}

pub(crate) struct DrainResult {
    pub(crate) rows: u64,
    pub(crate) rows_per_txn: u64,
    pub(crate) wal_mib: f64,
    /// Seconds of each `pg_recvlogical` drain (A1, A2: spawn to exit) and each walcached
    /// drain (B1, B2: start to the last row's invalidation heard).
    pub(crate) pg_s: Vec<f64>,
    pub(crate) walcached_s: Vec<f64>,
    /// Data messages walcached published per drain, and its start-up until streaming.
    pub(crate) messages: Vec<u64>,
    pub(crate) startup_s: Vec<f64>,
    /// The daemon's stage totals over its drains, and their wall time (seconds: each from its
    /// start until it confirmed the end LSN, the untimed wait included, as its stages are).
    pub(crate) stages: crate::stages::Totals,
    pub(crate) stages_wall_s: f64,
}

impl DrainResult {
    fn rate(&self, secs: &[f64]) -> f64 {
        self.rows as f64 / (secs.iter().sum::<f64>() / secs.len().max(1) as f64)
    }
    pub(crate) fn pg_rate(&self) -> f64 {
        self.rate(&self.pg_s)
    }
    pub(crate) fn walcached_rate(&self) -> f64 {
        self.rate(&self.walcached_s)
    }
}

/// One commit rate: sorted latencies in nanoseconds (negative values kept).
pub(crate) struct RateResult {
    /// Target commits per second; `None` = unthrottled.
    pub(crate) target: Option<f64>,
    /// The daemon signed its messages (wire v1.4) and the reader verified them.
    pub(crate) signed: bool,
    /// The daemon's stage totals over the run, and the run's wall time (seconds).
    pub(crate) stages: crate::stages::Totals,
    pub(crate) stages_wall_s: f64,
    pub(crate) commits: usize,
    /// Commits per second achieved in the daemon pass and in the floor pass.
    pub(crate) achieved: f64,
    pub(crate) floor_achieved: f64,
    /// COMMIT returned → gone from the reader's L1.
    pub(crate) total: Vec<i64>,
    /// COMMIT returned → message heard by a plain subscriber.
    pub(crate) to_heard: Vec<i64>,
    /// Message heard → gone from the reader's L1.
    pub(crate) heard_to_evicted: Vec<i64>,
    /// COMMIT returned → the row's line read from `pg_recvlogical` (floor pass).
    pub(crate) floor: Vec<i64>,
    /// UPDATE sent → COMMIT returned (daemon pass).
    pub(crate) commit_rtt: Vec<i64>,
    pub(crate) missing: usize,
    pub(crate) flushed: usize,
    pub(crate) floor_missing: usize,
    pub(crate) messages: u64,
    pub(crate) reader_stats: String,
}

impl RateResult {
    pub(crate) fn label(&self) -> String {
        let rate = match self.target {
            Some(r) => format!("{r:.0}/s"),
            None => "unthrottled".to_owned(),
        };
        if self.signed {
            format!("{rate}, signed")
        } else {
            rate
        }
    }
}

pub(crate) struct RssResult {
    pub(crate) rows: u64,
    pub(crate) idle_hwm_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) follow_s: f64,
    pub(crate) generation: String,
}

/// Nearest-rank percentile of a sorted, non-empty vector (`q` in 0..=1).
pub(crate) fn pct(v: &[i64], q: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `CLOCK_MONOTONIC` in nanoseconds: one system-wide clock on Linux, so timestamps taken in
/// two processes on the same machine can be subtracted (std's `Instant` reads the same clock
/// but cannot be sent to another process).
fn mono_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// Run the pipeline section on the suite's servers (a database of its own).
pub(crate) fn run(mode: Mode, rt: &Runtime, servers: &Servers) -> PipelineResults {
    match try_run(mode, rt, servers) {
        Ok(r) => r,
        Err(e) => {
            let mut message = format!("suite: pipeline: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            panic!("{message}");
        }
    }
}

fn try_run(mode: Mode, rt: &Runtime, servers: &Servers) -> Result<PipelineResults, BoxError> {
    // The daemon's stage histograms need a recorder (the tier benchmarks ran without one).
    crate::stages::install();
    // The in-process daemon gets a runtime of its own, as it would in its own process.
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("walcached")
        .enable_all()
        .build()?;
    let (dbname, db) = rt.block_on(async {
        let name = servers.pg.create_database("pipeline").await?;
        let db = servers.pg.connect(&name).await?;
        Ok::<_, BoxError>((name, db))
    })?;
    let env = Env {
        rt,
        daemon_rt: &daemon_rt,
        redis: &servers.redis,
        pg: &servers.pg,
        dbname: &dbname,
        db: &db,
    };
    eprintln!("suite: pipeline drain");
    let drain = drain(&env, mode.drain_rows, 100)?;
    eprintln!("suite: pipeline latency");
    let latency = latency(&env, mode.latency_rates)?;
    eprintln!("suite: pipeline rss");
    let rss = match walcached_binary() {
        Ok(bin) => Ok(rss(&env, &bin, mode.rss_rows)?),
        Err(why) => {
            eprintln!("suite: pipeline rss skipped: {why}");
            Err(why)
        }
    };
    Ok(PipelineResults {
        drain,
        latency,
        rss,
    })
}

/// What every pipeline measurement works with.
pub(crate) struct Env<'a> {
    pub(crate) rt: &'a Runtime,
    pub(crate) daemon_rt: &'a Runtime,
    pub(crate) redis: &'a RedisServer,
    pub(crate) pg: &'a PgServer,
    pub(crate) dbname: &'a str,
    pub(crate) db: &'a tokio_postgres::Client,
}

impl Env<'_> {
    pub(crate) fn sql(&self, sql: &str) -> Result<(), BoxError> {
        Ok(self.rt.block_on(self.db.batch_execute(sql))?)
    }

    /// The server's current WAL position.
    pub(crate) fn current_lsn(&self) -> Result<u64, BoxError> {
        let row = self.rt.block_on(
            self.db
                .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[]),
        )?;
        Ok(u64::try_from(row.get::<_, i64>(0))?)
    }

    pub(crate) fn create_slot(&self, slot: &str, plugin: &str) -> Result<(), BoxError> {
        self.rt.block_on(self.db.execute(
            "SELECT pg_create_logical_replication_slot($1, $2)",
            &[&slot, &plugin],
        ))?;
        Ok(())
    }

    /// Drop `slot` once its consumer's walsender has let go of it (it exits a moment after
    /// the consumer disconnects).
    pub(crate) fn drop_slot(&self, slot: &str) -> Result<(), BoxError> {
        self.wait_slot(slot, false)?;
        self.rt.block_on(
            self.db
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot]),
        )?;
        Ok(())
    }

    /// Poll (every millisecond, up to 30 s) until `slot` is in use by a consumer (`active`)
    /// or by none.
    fn wait_slot(&self, slot: &str, active: bool) -> Result<(), BoxError> {
        let t = Instant::now();
        loop {
            let now: bool = self
                .rt
                .block_on(self.db.query_one(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                ))?
                .get(0);
            if now == active {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(30) {
                let state = if active { "in use" } else { "free" };
                return Err(format!("slot {slot} was not {state} within 30 s").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A daemon configuration over one table (`{id}` keys), without the HTTP endpoint.
    pub(crate) fn daemon_toml(&self, slot: &str, publication: &str, table: &str) -> String {
        format!(
            r#"
[postgres]
url = "{pg}"
slot = "{slot}"
publication = "{publication}"

[redis]
url = "{redis}"

[http]
listen = ""

[[rules]]
table = "public.{table}"
namespace = "{table}"
keys = ["{{id}}"]
"#,
            pg = self.pg.url(self.dbname),
            redis = self.redis.url(),
        )
    }
}

/// A data message that named the listened-for key, as a plain subscriber heard it.
#[derive(Clone, Copy)]
pub(crate) struct Heard {
    /// When it arrived.
    pub(crate) at: Instant,
    /// Its sender's epoch and its sequence number in that epoch.
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
}

/// A plain redis-rs subscriber on the invalidation channel, on the suite's runtime, that notes
/// the first data message naming one key of one namespace since it was last [`reset`](
/// Self::reset). It stops when dropped.
pub(crate) struct KeyListener {
    heard: Arc<std::sync::Mutex<Option<Heard>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyListener {
    /// Subscribed (the SUBSCRIBE acknowledged) when this returns.
    pub(crate) fn start(env: &Env<'_>, namespace: &str, key: i64) -> Result<KeyListener, BoxError> {
        let heard: Arc<std::sync::Mutex<Option<Heard>>> = Arc::default();
        let (namespace, key) = (namespace.to_owned(), walcache::key_of(&key));
        let mut pubsub = env.rt.block_on(env.redis.client().get_async_pubsub())?;
        env.rt
            .block_on(pubsub.subscribe(Naming::default().invalidation_channel()))?;
        let task = {
            let heard = Arc::clone(&heard);
            env.rt.spawn(async move {
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    let at = Instant::now();
                    if let Ok(Message {
                        epoch,
                        seq,
                        body: Body::Keys(keys),
                        ..
                    }) = Message::decode(m.get_payload_bytes())
                    {
                        if keys
                            .iter()
                            .any(|k| k.namespace == namespace && k.key == key)
                        {
                            heard.lock().expect("not poisoned").get_or_insert(Heard {
                                at,
                                epoch,
                                seq,
                            });
                        }
                    }
                }
            })
        };
        Ok(KeyListener { heard, task })
    }

    /// Forget what was heard.
    pub(crate) fn reset(&self) {
        *self.heard.lock().expect("not poisoned") = None;
    }

    /// The first message naming the key since the last reset.
    pub(crate) fn heard(&self) -> Option<Heard> {
        *self.heard.lock().expect("not poisoned")
    }
}

impl Drop for KeyListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `X/Y`, PostgreSQL's text form of an LSN.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A walcached pipeline running in this process, on its own runtime.
pub(crate) struct InProcessDaemon<'a> {
    rt: &'a Runtime,
    pub(crate) status: Arc<Status>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), walcached::pipeline::RunError>>>,
}

impl<'a> InProcessDaemon<'a> {
    pub(crate) fn start(rt: &'a Runtime, toml: &str) -> Result<InProcessDaemon<'a>, BoxError> {
        InProcessDaemon::start_with_env(rt, toml, &HashMap::new())
    }

    /// As [`start`](Self::start), with `env` as the daemon's environment (`WALCACHED_*`).
    fn start_with_env(
        rt: &'a Runtime,
        toml: &str,
        env: &HashMap<String, String>,
    ) -> Result<InProcessDaemon<'a>, BoxError> {
        let config = Config::parse(toml, env)?;
        let status = Arc::new(Status::default());
        let shutdown = CancellationToken::new();
        let task = rt.spawn(Box::pin(walcached::pipeline::run(
            config,
            shutdown.clone(),
            Arc::clone(&status),
        )));
        Ok(InProcessDaemon {
            rt,
            status,
            shutdown,
            task: Some(task),
        })
    }

    /// Poll (every 50 µs) until `done(status)` holds; fails if the daemon stopped.
    pub(crate) fn wait(
        &mut self,
        what: &str,
        done: impl Fn(&Status) -> bool,
    ) -> Result<(), BoxError> {
        let start = Instant::now();
        loop {
            if done(&self.status) {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(|t| t.is_finished()) {
                let result = self.rt.block_on(self.task.take().expect("task"))?;
                return Err(
                    format!("the daemon stopped while waiting for {what}: {result:?}").into(),
                );
            }
            if start.elapsed() > DEADLINE {
                return Err(format!("timed out waiting for {what}").into());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    pub(crate) fn stop(mut self) -> Result<(), BoxError> {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            self.rt.block_on(t)??;
        }
        Ok(())
    }
}

impl Drop for InProcessDaemon<'_> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Drain rate
// ---------------------------------------------------------------------------------------------
//
// - A: `pg_recvlogical` (output to `/dev/null`, `--endpos` the end LSN), from spawn to exit.
// - B: walcached in this process (on a runtime of its own, Redis invalidation on), from the
//   call that starts it until a plain subscriber here hears the data message that names the
//   last row's key (N). The daemon publishes in commit order and a batch never splits a
//   transaction, so that message is the last one of the drain: checked afterwards against the
//   daemon's own count of messages. The daemon's confirmed LSN is not the end: it moves with
//   its status reports and marker checks, after the invalidation work is done. It is waited
//   for after the timing, so that the daemon stops with the slot confirmed to the end.
//
// Why not the library handle's L1 as the end (key N filled before the start, the end when it
// leaves L1): a handle flushes its whole L1 at the first message of a new daemon epoch (every
// start is one), and is not live again until the daemon's first heartbeat, which goes out
// only once the backlog is drained. Key N would leave L1 at the first batch, not at its own
// invalidation. The handle stays subscribed all the same, so that the daemon's messages have
// the subscriber a service would be.

fn drain(env: &Env<'_>, n: u64, per: u64) -> Result<DrainResult, BoxError> {
    // Ids 1..=n in commits of `per`: the last commit holds id n only if `per` divides n.
    if n == 0 || per == 0 || n % per != 0 {
        return Err(format!("drain: {n} rows are not whole transactions of {per}").into());
    }
    // The publication and all four slots exist before the rows, so every slot holds them all.
    env.sql(
        "CREATE TABLE drain (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         CREATE PUBLICATION drain_pub FOR TABLE drain WITH (publish_via_partition_root = true);",
    )?;
    let order = ["drain_a1", "drain_b1", "drain_b2", "drain_a2"];
    for slot in order {
        env.create_slot(slot, "pgoutput")?;
    }
    env.sql(&format!(
        "DO $$ BEGIN
           FOR i IN 0..{last} LOOP
             INSERT INTO drain SELECT g, 0 FROM generate_series(i * {per} + 1, (i + 1) * {per}) g;
             COMMIT;
           END LOOP;
         END $$;",
        last = n / per - 1
    ))?;
    let end = env.current_lsn()?;
    let start_lsn: i64 = env
        .rt
        .block_on(env.db.query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots \
             WHERE slot_name = 'drain_a1'",
            &[],
        ))?
        .get(0);
    let wal_mib = end.saturating_sub(u64::try_from(start_lsn)?) as f64 / (1 << 20) as f64;

    // A live library handle on the same Redis, so the daemon's messages have a subscriber, and
    // one value in the namespace so the delete script finds a schema version to delete under.
    let handle = env.rt.block_on(
        Walcache::builder()
            .allow_unsigned()
            .redis_url(env.redis.url())
            .build(),
    )?;
    let cache = handle.cache::<i64, i64>("drain").build()?;
    env.rt.block_on(walcache_benches::fill(&cache, &0, 0))?;
    // The end of each walcached drain: the last row's key heard on the channel.
    let last = KeyListener::start(env, "drain", i64::try_from(n)?)?;

    let mut r = DrainResult {
        rows: n,
        rows_per_txn: per,
        wal_mib,
        pg_s: Vec::new(),
        walcached_s: Vec::new(),
        messages: Vec::new(),
        startup_s: Vec::new(),
        stages: crate::stages::Totals::default(),
        stages_wall_s: 0.0,
    };
    let stages_before = crate::stages::Totals::now();
    for slot in order {
        if slot.starts_with("drain_a") {
            r.pg_s
                .push(drain_pg_recvlogical(env, slot, end)?.as_secs_f64());
        } else {
            let toml = env.daemon_toml(slot, "drain_pub", "drain");
            last.reset();
            let t = Instant::now();
            let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
            let streaming = std::cell::Cell::new(None);
            daemon.wait("the last row's invalidation", |s| {
                if streaming.get().is_none() && s.is_streaming() {
                    streaming.set(Some(t.elapsed()));
                }
                last.heard().is_some()
            })?;
            let heard = last.heard().ok_or("the last row's invalidation")?;
            r.walcached_s
                .push(heard.at.saturating_duration_since(t).as_secs_f64());
            r.startup_s
                .push(streaming.get().unwrap_or_default().as_secs_f64());
            // Untimed: the slot confirmed to the end, so the daemon stops on a clean slot.
            daemon.wait("the drain's end LSN to be confirmed", |s| {
                s.confirmed_lsn() >= end
            })?;
            r.stages_wall_s += t.elapsed().as_secs_f64();
            let messages = daemon.status.published_seq();
            // The end heard was this daemon's, and its last data message: nothing of the
            // drain was published after it.
            if heard.epoch != daemon.status.epoch() || heard.seq != messages {
                return Err(format!(
                    "drain {slot}: the last row's key was heard in message {} of epoch {:x}, \
                     but the daemon (epoch {:x}) published {messages} messages",
                    heard.seq,
                    heard.epoch,
                    daemon.status.epoch()
                )
                .into());
            }
            r.messages.push(messages);
            daemon.stop()?;
        }
    }
    r.stages = crate::stages::Totals::now().since(&stages_before);
    for slot in order {
        env.drop_slot(slot)?;
    }
    drop(last);
    drop(cache);
    drop(handle);
    eprintln!(
        "suite: drain {n} rows: pg_recvlogical {:.0} rows/s, walcached {:.0} rows/s ({:.2}×){}",
        r.pg_rate(),
        r.walcached_rate(),
        r.walcached_rate() / r.pg_rate(),
        crate::caveat::figure_label()
    );
    Ok(r)
}

/// Drain `slot` up to `end` with `pg_recvlogical` into /dev/null; the time from spawn to exit.
fn drain_pg_recvlogical(env: &Env<'_>, slot: &str, end: u64) -> Result<Duration, BoxError> {
    let bin = env.pg.bin_dir().join("pg_recvlogical");
    let t = Instant::now();
    let status = Command::new(&bin)
        .arg("--dbname")
        .arg(env.pg.conn_string(env.dbname))
        .args(["--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=drain_pub"])
        .args(["--file", "/dev/null", "--endpos"])
        .arg(lsn_text(end))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let elapsed = t.elapsed();
    if !status.success() {
        return Err(format!("{} {slot} exited with {status}", bin.display()).into());
    }
    Ok(elapsed)
}

// ---------------------------------------------------------------------------------------------
// 2. Commit → L1 eviction latency
// ---------------------------------------------------------------------------------------------

/// The writers' connections and their prepared `UPDATE`.
pub(crate) type Writers = Vec<(tokio_postgres::Client, tokio_postgres::Statement)>;

fn latency(env: &Env<'_>, rates: &[(Option<f64>, usize)]) -> Result<Vec<RateResult>, BoxError> {
    let rows = rates.iter().map(|r| r.1).max().unwrap_or(1);
    env.sql(&format!(
        "CREATE TABLE {LATENCY_NS} (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         INSERT INTO {LATENCY_NS} SELECT g, 0 FROM generate_series(0, {last}) g;",
        last = rows - 1
    ))?;
    env.sql(&format!("VACUUM ANALYZE {LATENCY_NS}"))?;
    // The publication must exist before the first change the daemon's slot decodes: pgoutput
    // looks it up in the catalog as of each change.
    env.sql(&format!(
        "CREATE PUBLICATION lat_pub FOR TABLE {LATENCY_NS} WITH (publish_via_partition_root = true)"
    ))?;
    let writers: Writers = env.rt.block_on(async {
        let mut w = Vec::new();
        for _ in 0..WRITERS {
            let db = env.pg.connect(env.dbname).await?;
            let update = db
                .prepare(&format!("UPDATE {LATENCY_NS} SET v = v + 1 WHERE id = $1"))
                .await?;
            w.push((db, update));
        }
        Ok::<_, BoxError>(w)
    })?;

    // Floor passes first, with no daemon slot yet: nothing else decodes the WAL meanwhile.
    let floors = latency_floor(env, &writers, rates)?;
    // Then the daemon's slot, from here on, and one daemon for all rates.
    env.create_slot("lat", "pgoutput")?;
    let toml = env.daemon_toml("lat", "lat_pub", LATENCY_NS);
    let mut results = Vec::new();
    // Unsigned at every rate, then signed (wire v1.4: the daemon signs each message, the
    // reader verifies it) at the rates of the goals, on the same slot and the same floors.
    let signing_env: HashMap<String, String> =
        [("WALCACHED_SIGNING_KEYS".to_owned(), SIGNING_KEYS.to_owned())].into();
    for signed in [false, true] {
        let daemon_env = if signed {
            signing_env.clone()
        } else {
            HashMap::new()
        };
        let mut daemon = InProcessDaemon::start_with_env(env.daemon_rt, &toml, &daemon_env)?;
        for (&(target, n), (floor, floor_achieved, floor_missing)) in rates.iter().zip(&floors) {
            if signed && !SIGNED_RATES.contains(&target) {
                continue;
            }
            let now = env.current_lsn()?;
            daemon.wait("the daemon to catch up", |s| {
                s.is_caught_up() && s.confirmed_lsn() >= now
            })?;
            let keys = signed.then_some(SIGNING_KEYS);
            let (before, started) = (crate::stages::Totals::now(), Instant::now());
            let mut r = latency_run(env, &mut daemon, &writers, target, n, keys)?;
            r.stages = crate::stages::Totals::now().since(&before);
            r.stages_wall_s = started.elapsed().as_secs_f64();
            r.floor = floor.clone();
            r.floor_achieved = *floor_achieved;
            r.floor_missing = *floor_missing;
            eprintln!(
                "suite: latency {}: achieved {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms \
             ({} samples, {} missing); floor p50 {:.3} ms; reader {}{}",
                r.label(),
                r.achieved,
                pct(&r.total, 0.5) as f64 / 1e6,
                pct(&r.total, 0.99) as f64 / 1e6,
                pct(&r.total, 0.999) as f64 / 1e6,
                r.total.len(),
                r.missing,
                pct(&r.floor, 0.5) as f64 / 1e6,
                r.reader_stats,
                crate::caveat::figure_label()
            );
            results.push(r);
        }
        daemon.stop()?;
    }
    env.drop_slot("lat")?;
    Ok(results)
}

/// The signing key of the signed latency pass (the daemon's and the reader's).
const SIGNING_KEYS: &str = "bench:8f1c2a9d0e4b7f6a5c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

/// The rates measured signed as well: those of the pipeline goals.
const SIGNED_RATES: &[Option<f64>] = &[Some(1000.0), Some(4000.0)];

/// When each commit was sent and when its `COMMIT` returned (indexed by key), and how long
/// the whole run took from the first send to the last return.
struct Commits {
    sent: Vec<i64>,
    acked: Vec<i64>,
    span_s: f64,
}

/// `n` autocommit UPDATEs of keys `0..n`, key `i` on writer `i % WRITERS`; at `rate`, key `i`
/// is sent no earlier than `i / rate` seconds after the start (a tokio timer, so bursts within
/// its 1 ms resolution); unthrottled, each writer sends its next as soon as the last returned.
fn write_commits(
    env: &Env<'_>,
    writers: &Writers,
    n: usize,
    rate: Option<f64>,
) -> Result<Commits, BoxError> {
    env.rt.block_on(async {
        let start = tokio::time::Instant::now();
        let per_writer = writers
            .iter()
            .enumerate()
            .map(|(w, (db, update))| async move {
                let mut out = Vec::with_capacity(n / WRITERS + 1);
                for i in (w..n).step_by(WRITERS) {
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate))
                            .await;
                    }
                    let id = i64::try_from(i)?;
                    let sent = mono_ns();
                    let changed = db.execute(update, &[&id]).await?;
                    let acked = mono_ns();
                    if changed != 1 {
                        return Err(format!("UPDATE of id {id} changed {changed} rows").into());
                    }
                    out.push((i, sent, acked));
                }
                Ok::<_, BoxError>(out)
            });
        let all = futures_util::future::try_join_all(per_writer).await?;
        let mut sent = vec![0; n];
        let mut acked = vec![0; n];
        for (i, s, a) in all.into_iter().flatten() {
            sent[i] = s;
            acked[i] = a;
        }
        let first = sent.iter().copied().min().unwrap_or(0);
        let last = acked.iter().copied().max().unwrap_or(0);
        Ok(Commits {
            sent,
            acked,
            span_s: (last - first) as f64 / 1e9,
        })
    })
}

/// The floor at every rate: the same commits followed by `pg_recvlogical` with
/// `test_decoding` writing to a pipe this process reads; for each row, the time its line
/// arrived after its `COMMIT` returned. Returns (sorted latencies, achieved rate, missing).
fn latency_floor(
    env: &Env<'_>,
    writers: &Writers,
    rates: &[(Option<f64>, usize)],
) -> Result<Vec<(Vec<i64>, f64, usize)>, BoxError> {
    env.create_slot("lat_raw", "test_decoding")?;
    let bin = env.pg.bin_dir().join("pg_recvlogical");
    let mut child = Command::new(&bin)
        .arg("--dbname")
        .arg(env.pg.conn_string(env.dbname))
        .args(["--slot", "lat_raw", "--start", "--no-loop", "--file", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let out = child.stdout.take().ok_or("pg_recvlogical stdout")?;
    let (tx, rx) = mpsc::channel::<(usize, i64)>();
    let lines = std::thread::spawn(move || {
        let prefix = format!("table public.{LATENCY_NS}: UPDATE: id[bigint]:");
        for line in BufReader::new(out).lines() {
            let at = mono_ns();
            let Ok(line) = line else { break };
            let id = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse::<usize>().ok());
            if let Some(id) = id {
                if tx.send((id, at)).is_err() {
                    break;
                }
            }
        }
    });
    let result = (|| {
        env.wait_slot("lat_raw", true)?;
        let mut floors = Vec::new();
        for &(rate, n) in rates {
            let commits = write_commits(env, writers, n, rate)?;
            // Every row's line, or whatever arrived within 10 s of the last commit.
            let mut seen = vec![None::<i64>; n];
            let mut count = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while count < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok((id, at)) => {
                        if let Some(s) = seen.get_mut(id).filter(|s| s.is_none()) {
                            *s = Some(at);
                            count += 1;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut v: Vec<i64> = seen
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| s - commits.acked[i]))
                .collect();
            v.sort_unstable();
            eprintln!(
                "suite: floor {}: {:.0}/s achieved, p50 {:.3} ms{}",
                rate.map_or("unthrottled".to_owned(), |r| format!("{r:.0}/s")),
                n as f64 / commits.span_s,
                pct(&v, 0.5) as f64 / 1e6,
                crate::caveat::figure_label()
            );
            floors.push((v, n as f64 / commits.span_s, n - count));
        }
        Ok::<_, BoxError>(floors)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = lines.join();
    drop(rx);
    env.drop_slot("lat_raw")?;
    result
}

pub(crate) fn latency_run(
    env: &Env<'_>,
    daemon: &mut InProcessDaemon<'_>,
    writers: &Writers,
    rate: Option<f64>,
    n: usize,
    signing_keys: Option<&str>,
) -> Result<RateResult, BoxError> {
    let exe = std::env::current_exe()?;
    let mut reader = Command::new(&exe);
    match signing_keys {
        Some(keys) => reader.env(READER_KEYS_ENV, keys),
        None => reader.env_remove(READER_KEYS_ENV),
    };
    let mut reader = reader
        .arg(READER_COMMAND)
        .arg(env.redis.url())
        .arg(n.to_string())
        .arg(WRITERS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = BufReader::new(reader.stdout.take().ok_or("reader stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "READY" {
        let _ = reader.kill();
        let _ = reader.wait();
        return Err(format!("the reader did not get ready: {line:?}").into());
    }

    // A plain pub/sub listener in this process, to split the latency into the daemon's part
    // (commit → message received) and the fan-out (message → L1 eviction in the reader).
    let heard = Arc::new(std::sync::Mutex::new(vec![None::<i64>; n]));
    let listener = {
        let index: HashMap<String, usize> =
            (0..n).map(|k| (walcache::key_of(&(k as i64)), k)).collect();
        let heard = Arc::clone(&heard);
        let mut pubsub = env.rt.block_on(env.redis.client().get_async_pubsub())?;
        env.rt
            .block_on(pubsub.subscribe(Naming::default().invalidation_channel()))?;
        env.rt.spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let at = mono_ns();
                if let Ok(Message {
                    body: Body::Keys(keys),
                    ..
                }) = Message::decode(m.get_payload_bytes())
                {
                    let mut heard = heard.lock().expect("not poisoned");
                    for k in keys.iter().filter(|k| k.namespace == LATENCY_NS) {
                        if let Some(&i) = index.get(&k.key) {
                            heard[i].get_or_insert(at);
                        }
                    }
                }
            }
        })
    };

    let messages_before = daemon.status.published_seq();
    let commits = write_commits(env, writers, n, rate);
    // Once the daemon has confirmed the last commit (it confirms only what it has published;
    // a saturated daemon can be seconds behind the writers), closing the reader's stdin tells
    // it to stop watching after a short grace for the stragglers of pub/sub.
    let caught_up = commits.as_ref().map_err(|e| e.to_string()).and_then(|_| {
        let end = env.current_lsn().map_err(|e| e.to_string())?;
        daemon
            .wait("the daemon to confirm the last commit", |s| {
                s.confirmed_lsn() >= end
            })
            .map_err(|e| e.to_string())
    });
    drop(reader.stdin.take());
    let commits = commits?;
    caught_up?;
    let mut evicted: Vec<Option<i64>> = vec![None; n];
    let mut reader_stats = String::new();
    let mut not_live_at: Option<i64> = None;
    for line in out.lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("E") => {
                let k: usize = parts.next().ok_or("E key")?.parse()?;
                let t: i64 = parts.next().ok_or("E time")?.parse()?;
                evicted[k] = Some(t);
            }
            Some("S") => reader_stats = parts.collect::<Vec<_>>().join(" "),
            Some("N") => not_live_at = Some(parts.next().ok_or("N time")?.parse::<i64>()?),
            _ => return Err(format!("unexpected reader output {line:?}").into()),
        }
    }
    let status = reader.wait()?;
    if !status.success() {
        return Err(format!("the reader exited with {status}").into());
    }
    let messages = daemon.status.published_seq() - messages_before;
    listener.abort();
    let heard = std::mem::take(&mut *heard.lock().expect("not poisoned"));
    let (sent, acked) = (&commits.sent, &commits.acked);

    // A key gone from L1 before its UPDATE was even sent was not evicted by its invalidation
    // but by an L1 flush (the reader's stream stopped being live): not a latency sample.
    let flushed: Vec<usize> = (0..n)
        .filter(|&i| evicted[i].is_some_and(|e| e < sent[i]))
        .collect();
    if let Some(t) = not_live_at {
        eprintln!(
            "suite: !! the reader's handle stopped being live at {:+.3} s (writers' start = 0); \
             {} keys gone before their UPDATE was sent are left out",
            (t - sent[0]) as f64 / 1e9,
            flushed.len()
        );
    }
    for &i in &flushed {
        evicted[i] = None;
    }
    let mut to_heard = Vec::with_capacity(n);
    let mut heard_to_evicted = Vec::with_capacity(n);
    for (i, h) in heard.iter().enumerate() {
        if let Some(h) = h {
            to_heard.push(h - acked[i]);
            if let Some(e) = evicted[i] {
                heard_to_evicted.push(e - h);
            }
        }
    }
    let mut total = Vec::with_capacity(n);
    let mut commit_rtt = Vec::with_capacity(n);
    for (i, e) in evicted.iter().enumerate() {
        commit_rtt.push(acked[i] - sent[i]);
        if let Some(e) = e {
            total.push(e - acked[i]);
        }
    }
    for v in [
        &mut total,
        &mut to_heard,
        &mut heard_to_evicted,
        &mut commit_rtt,
    ] {
        v.sort_unstable();
    }
    let missing = evicted.iter().filter(|e| e.is_none()).count() - flushed.len();
    Ok(RateResult {
        target: rate,
        signed: signing_keys.is_some(),
        stages: crate::stages::Totals::default(),
        stages_wall_s: 0.0,
        commits: n,
        achieved: n as f64 / commits.span_s,
        floor_achieved: 0.0,
        total,
        to_heard,
        heard_to_evicted,
        floor: Vec::new(),
        commit_rtt,
        missing,
        flushed: flushed.len(),
        floor_missing: 0,
        messages,
        reader_stats,
    })
}

/// The reader process: a live walcache handle whose L1 holds keys `0..n` of namespace `lat`;
/// prints `READY`, then watches the keys in each writer's update order and, once stdin is closed (and
/// [`READER_GRACE`] has passed) or every key is gone, prints `E key monotonic_ns` per eviction,
/// `N monotonic_ns` if the handle was ever not live, and one `S …` line of statistics.
pub(crate) fn latency_reader(args: &[String]) -> Result<(), BoxError> {
    let [redis_url, n, writers] = args else {
        return Err("usage: --latency-reader REDIS_URL N WRITERS".into());
    };
    let n: usize = n.parse()?;
    let writers: usize = writers.parse::<usize>()?.max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let builder = Walcache::builder().redis_url(redis_url.as_str());
    let builder = if std::env::var_os(READER_KEYS_ENV).is_some() {
        builder.signing_keys_env(READER_KEYS_ENV)
    } else {
        builder.allow_unsigned()
    };
    let handle = rt.block_on(builder.build())?;
    let start = Instant::now();
    while !handle.is_live() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the invalidation stream did not become live".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let cache = handle
        .cache::<i64, i64>(LATENCY_NS)
        .max_capacity(2 * n as u64 + 100)
        .time_to_live(Duration::from_secs(3600))
        .ttl_jitter(0.0)
        .build()?;
    rt.block_on(async {
        for k in 0..n as i64 {
            walcache_benches::fill(&cache, &k, k).await?;
        }
        Ok::<_, BoxError>(())
    })?;
    for k in 0..n as i64 {
        if !cache.contains_in_l1(&k) {
            return Err(format!("key {k} is not in L1 after the fill").into());
        }
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY")?;
    stdout.flush()?;

    let writer_done = Arc::new(AtomicBool::new(false));
    {
        let done = Arc::clone(&writer_done);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            done.store(true, Ordering::Release);
        });
    }
    let mut evicted: Vec<Option<i64>> = vec![None; n];
    // Writer w commits keys w, w + writers, … in order, but the writers drift apart: one
    // window per writer, over the keys that writer has not yet been seen to invalidate.
    let per_writer_window = (READER_WINDOW / writers).max(1);
    let mut los: Vec<usize> = (0..writers).collect();
    let mut sweeps: u64 = 0;
    let mut not_live_sweeps: u64 = 0;
    let mut first_not_live: Option<i64> = None;
    let mut done_at: Option<Instant> = None;
    let watch_start = mono_ns();
    let mut last_sweep = watch_start;
    let mut max_gap: i64 = 0;
    while los.iter().any(|&lo| lo < n) {
        let now = mono_ns();
        max_gap = max_gap.max(now - last_sweep);
        last_sweep = now;
        for lo in &mut los {
            for k in (*lo..n).step_by(writers).take(per_writer_window) {
                if evicted[k].is_none() && !cache.contains_in_l1(&(k as i64)) {
                    evicted[k] = Some(mono_ns());
                }
            }
            while *lo < n && evicted[*lo].is_some() {
                *lo += writers;
            }
        }
        sweeps += 1;
        if !handle.is_live() {
            // Evictions seen now may be a liveness flush, not the key's invalidation.
            not_live_sweeps += 1;
            first_not_live.get_or_insert_with(mono_ns);
        }
        if writer_done.load(Ordering::Acquire) {
            let at = *done_at.get_or_insert_with(Instant::now);
            if at.elapsed() > READER_GRACE {
                break;
            }
        }
        std::thread::sleep(READER_POLL);
    }
    let watched_ns = mono_ns() - watch_start;
    for (k, e) in evicted.iter().enumerate() {
        if let Some(t) = e {
            writeln!(stdout, "E {k} {t}")?;
        }
    }
    if let Some(t) = first_not_live {
        writeln!(stdout, "N {t}")?;
    }
    writeln!(
        stdout,
        "S sweep={:.0}µs max_gap={:.1}ms not_live_sweeps={not_live_sweeps}",
        watched_ns as f64 / 1e3 / sweeps.max(1) as f64,
        max_gap as f64 / 1e6
    )?;
    stdout.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Peak RSS of the daemon process through one large transaction
// ---------------------------------------------------------------------------------------------

/// `$WALCACHED_BIN`, else `walcached` next to this binary (`cargo build [--release] -p
/// walcached` puts it there).
fn walcached_binary() -> Result<PathBuf, String> {
    let path = match std::env::var_os("WALCACHED_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("walcached"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no walcached binary at {} (build it with `cargo build --release -p walcached`, or \
             set WALCACHED_BIN)",
            path.display()
        ))
    }
}

/// `VmHWM` and `VmRSS` of process `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64), BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64, BoxError> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/status has no {name}").into())
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

fn rss(env: &Env<'_>, bin: &Path, n: u64) -> Result<RssResult, BoxError> {
    env.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL) \
         WITH (autovacuum_enabled = false);",
    )?;
    // The slot exists beforehand, so the daemon's start is not a new slot's namespace flush.
    env.create_slot("rss", "pgoutput")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walcached.toml");
    std::fs::write(&config, env.daemon_toml("rss", "rss_pub", "big"))?;
    let log = dir.path().join("walcached.log");
    let mut child = Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let result = rss_measure(env, n, pid, &mut child, &log);
    // SIGTERM: the daemon's clean shutdown path.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let t = Instant::now();
    loop {
        match child.try_wait()? {
            Some(status) => {
                if !status.success() {
                    eprintln!("suite: walcached exited with {status} after SIGTERM");
                }
                break;
            }
            None if t.elapsed() > Duration::from_secs(10) => {
                eprintln!("suite: walcached did not stop within 10 s of SIGTERM: killed");
                child.kill()?;
                child.wait()?;
                break;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    result
}

fn rss_measure(
    env: &Env<'_>,
    n: u64,
    pid: u32,
    child: &mut std::process::Child,
    log: &Path,
) -> Result<RssResult, BoxError> {
    let log_tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    // Streaming: the slot is in use.
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("walcached exited with {status}:\n{}", log_tail()).into());
        }
        let active: bool = env
            .rt
            .block_on(env.db.query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'rss'",
                &[],
            ))?
            .get(0);
        if active {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!("walcached did not start streaming:\n{}", log_tail()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (idle_hwm, _) = memory_kib(pid)?;
    env.sql(&format!(
        "INSERT INTO big SELECT g, 0 FROM generate_series(1, {n}) g"
    ))?;
    let end = env.current_lsn()?;
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("walcached exited with {status}:\n{}", log_tail()).into());
        }
        let confirmed: i64 = env
            .rt
            .block_on(env.db.query_one(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots \
                 WHERE slot_name = 'rss'",
                &[],
            ))?
            .get(0);
        if u64::try_from(confirmed)? >= end {
            break;
        }
        if t.elapsed() > DEADLINE {
            return Err(
                format!("walcached did not confirm the transaction:\n{}", log_tail()).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let follow_s = t.elapsed().as_secs_f64();
    let (hwm, _) = memory_kib(pid)?;
    let generation: Option<String> = env.rt.block_on(async {
        let mut conn = env
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("GET")
            .arg("wc:{big}:gen")
            .query_async::<Option<String>>(&mut conn)
            .await
    })?;
    eprintln!(
        "suite: rss: VmHWM {idle_hwm} kB idle, {hwm} kB after {n} rows ({follow_s:.2} s){}",
        crate::caveat::figure_label()
    );
    Ok(RssResult {
        rows: n,
        idle_hwm_kib: idle_hwm,
        hwm_kib: hwm,
        follow_s,
        generation: generation.unwrap_or_else(|| "(none)".to_owned()),
    })
}

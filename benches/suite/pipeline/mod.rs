//! The daemon's pipeline against the raw tools (the suite's pipeline section), and what its
//! measurements share with the costs at scale: the section's database and daemon runtime
//! ([`Section`], [`Env`]), a daemon in this process ([`InProcessDaemon`]), the writers, a
//! subscribed handle and a plain subscriber listening for one key.
//!
//! 1. **Drain** ([`drain`]): one publication and four pgoutput slots created before N row
//!    changes, so every slot holds the same WAL; drained in the order A B B A by
//!    `pg_recvlogical` (output to `/dev/null`) and by walcached (in this process, on a runtime
//!    of its own, Redis invalidation on). The headline is the ratio of the drain rates.
//! 2. **Commit → L1 eviction** ([`latency`], its reader process in [`reader`]) at several commit
//!    rates (paced by a timer, and unthrottled): a reader *process* (this binary,
//!    `--latency-reader`) holds a live `walcache` handle whose L1 holds every key and records
//!    when each key leaves it; the writers here record when each `COMMIT` returned; a plain
//!    redis-rs subscriber here records when the invalidation message naming the key arrived.
//!    All three read `CLOCK_MONOTONIC`, one clock per machine. A separate pass at each rate,
//!    without the daemon, follows the same commits with `pg_recvlogical` (`test_decoding`, to a
//!    pipe): PostgreSQL's own decode-and-send time.
//! 3. **Peak RSS** ([`rss`]): `VmHWM` of a `walcached run` process through one large
//!    transaction.

mod drain;
mod latency;
mod reader;
mod rss;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use walcache::{Cache, Walcache};
use walcache_benches::Servers;
use walcache_protocol::{Body, Message, Naming};
use walcache_testkit::{PgServer, RedisServer};
use walcached::config::Config;
use walcached::status::Status;

use crate::Mode;

pub(crate) use drain::DrainResult;
pub(crate) use latency::{
    latency_run, RateResult, Writers, LATENCY_NS, READER_POLL, READER_WINDOW, WRITERS,
};
pub(crate) use reader::{filled_latency_cache, latency_reader, READER_COMMAND};
pub(crate) use rss::RssResult;

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
    or_panic("pipeline", try_run(mode, rt, servers))
}

/// A section's result, or a panic that stops the suite with the chain of causes.
pub(crate) fn or_panic<T>(section: &str, result: Result<T, BoxError>) -> T {
    match result {
        Ok(r) => r,
        Err(e) => {
            let mut message = format!("suite: {section}: {e}");
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
    let section = Section::new(rt, servers, "pipeline")?;
    let env = section.env(rt, servers);
    eprintln!("suite: pipeline drain");
    let drain = drain::drain(&env, mode.drain_rows, 100)?;
    eprintln!("suite: pipeline latency");
    let latency = latency::latency(&env, mode.latency_rates)?;
    eprintln!("suite: pipeline rss");
    let rss = match rss::walcached_binary() {
        Ok(bin) => Ok(rss::rss(&env, &bin, mode.rss_rows)?),
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

/// What a section of daemon measurements owns: a database of its own on the suite's servers,
/// and a runtime of its own for the in-process daemon (2 workers, as it would have in its own
/// process).
pub(crate) struct Section {
    daemon_rt: Runtime,
    dbname: String,
    db: tokio_postgres::Client,
}

impl Section {
    /// A new database named after `name` and a new daemon runtime.
    pub(crate) fn new(rt: &Runtime, servers: &Servers, name: &str) -> Result<Section, BoxError> {
        let daemon_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walcached")
            .enable_all()
            .build()?;
        let (dbname, db) = rt.block_on(async {
            let name = servers.pg.create_database(name).await?;
            let db = servers.pg.connect(&name).await?;
            Ok::<_, BoxError>((name, db))
        })?;
        Ok(Section {
            daemon_rt,
            dbname,
            db,
        })
    }

    /// The section's measurements' view of it, with `rt` for the suite's own work.
    pub(crate) fn env<'a>(&'a self, rt: &'a Runtime, servers: &'a Servers) -> Env<'a> {
        Env {
            rt,
            daemon_rt: &self.daemon_rt,
            redis: &servers.redis,
            pg: &servers.pg,
            dbname: &self.dbname,
            db: &self.db,
        }
    }
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

    /// A pub/sub connection subscribed to the daemon's invalidation channel (the SUBSCRIBE
    /// acknowledged when this returns).
    pub(crate) fn invalidation_pubsub(&self) -> Result<redis::aio::PubSub, BoxError> {
        let mut pubsub = self.rt.block_on(self.redis.client().get_async_pubsub())?;
        self.rt
            .block_on(pubsub.subscribe(Naming::default().invalidation_channel()))?;
        Ok(pubsub)
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
        self.daemon_toml_tables(slot, publication, &[table])
    }

    /// A daemon configuration with one rule per table (`{id}` keys, the namespace named after
    /// the table), without the HTTP endpoint. Sections such as `[stream]` may be appended.
    pub(crate) fn daemon_toml_tables(
        &self,
        slot: &str,
        publication: &str,
        tables: &[&str],
    ) -> String {
        let mut toml = format!(
            r#"
[postgres]
url = "{pg}"
slot = "{slot}"
publication = "{publication}"

[redis]
url = "{redis}"

[http]
listen = ""
"#,
            pg = self.pg.url(self.dbname),
            redis = self.redis.url(),
        );
        for table in tables {
            let _ = write!(
                toml,
                "\n[[rules]]\ntable = \"public.{table}\"\nnamespace = \"{table}\"\nkeys = [\"{{id}}\"]\n"
            );
        }
        toml
    }

    /// The `confirmed_flush_lsn` of `slot`.
    /// The pid of the walsender streaming `slot`, once one is (`None`: the slot is idle).
    pub(crate) fn walsender_pid(&self, slot: &str) -> Result<Option<u32>, BoxError> {
        let pid: Option<i32> = self
            .rt
            .block_on(self.db.query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            ))?
            .get(0);
        Ok(pid.map(u32::try_from).transpose()?)
    }

    pub(crate) fn confirmed_flush_lsn(&self, slot: &str) -> Result<u64, BoxError> {
        let lsn: i64 = self
            .rt
            .block_on(self.db.query_one(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            ))?
            .get(0);
        Ok(u64::try_from(lsn)?)
    }

    /// An empty table `table (id bigint PRIMARY KEY, v int NOT NULL)` to drain, and
    /// `{table}_pub` publishing it.
    pub(crate) fn create_published_table(&self, table: &str) -> Result<(), BoxError> {
        self.sql(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, v int NOT NULL) \
                 WITH (autovacuum_enabled = false);
             CREATE PUBLICATION {table}_pub FOR TABLE {table} \
                 WITH (publish_via_partition_root = true);"
        ))
    }

    /// [`WRITERS`] connections, each with `UPDATE {table} SET v = v + 1 WHERE id = $1`
    /// prepared.
    pub(crate) fn writers(&self, table: &str) -> Result<Writers, BoxError> {
        self.rt.block_on(async {
            let mut w = Vec::new();
            for _ in 0..WRITERS {
                let db = self.pg.connect(self.dbname).await?;
                let update = db
                    .prepare(&format!("UPDATE {table} SET v = v + 1 WHERE id = $1"))
                    .await?;
                w.push((db, update));
            }
            Ok::<_, BoxError>(w)
        })
    }

    /// A live library handle on the suite's Redis, so the daemon's messages have a subscriber,
    /// and its cache of `namespace` holding key 0, so the daemon's delete script finds a schema
    /// version to delete under.
    pub(crate) fn subscribed_cache(
        &self,
        namespace: &str,
    ) -> Result<(Walcache, Cache<i64, i64>), BoxError> {
        let handle = self.rt.block_on(
            Walcache::builder()
                .allow_unsigned()
                .redis_url(self.redis.url())
                .build(),
        )?;
        let cache = handle.cache::<i64, i64>(namespace).build()?;
        self.rt.block_on(walcache_benches::fill(&cache, &0, 0))?;
        Ok((handle, cache))
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
    heard: Arc<Mutex<Option<Heard>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyListener {
    /// Subscribed (the SUBSCRIBE acknowledged) when this returns.
    pub(crate) fn start(env: &Env<'_>, namespace: &str, key: i64) -> Result<KeyListener, BoxError> {
        let heard: Arc<Mutex<Option<Heard>>> = Arc::default();
        let (namespace, key) = (namespace.to_owned(), walcache::key_of(&key));
        let pubsub = env.invalidation_pubsub()?;
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

    /// As [`wait`](Self::wait); also returns how long after `since` the daemon was first seen
    /// streaming (zero if it never was).
    pub(crate) fn wait_noting_streaming(
        &mut self,
        what: &str,
        since: Instant,
        done: impl Fn(&Status) -> bool,
    ) -> Result<Duration, BoxError> {
        let streaming = std::cell::Cell::new(None);
        self.wait(what, |s| {
            if streaming.get().is_none() && s.is_streaming() {
                streaming.set(Some(since.elapsed()));
            }
            done(s)
        })?;
        Ok(streaming.get().unwrap_or_default())
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

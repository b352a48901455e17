//! `pipeline-bench`: the daemon's pipeline against the raw tools, on private servers that
//! `walcache-testkit` starts (loopback TCP, no Docker). Results and methodology: the
//! "Pipeline" section of `BENCHMARKS.md`.
//!
//! 1. **drain**: a slot holding N row changes, drained by `pg_recvlogical` (pgoutput, output to
//!    `/dev/null`) and by walcached (in this process, Redis invalidation on), each from its own
//!    slot of identical contents, in the order A B B A. Rows per second, and the ratio.
//! 2. **latency**: commit → L1 eviction at 1,000 commits/s. A reader *process* (this binary,
//!    hidden subcommand) holds a `walcache` handle whose L1 holds every key; this process
//!    commits one `UPDATE` per millisecond and records when each `COMMIT` returned; the reader
//!    records when each key left its L1. Both read `CLOCK_MONOTONIC`, one clock per machine.
//! 3. **rss**: peak RSS (`VmHWM`) of a `walcached run` process while it follows one
//!    transaction of 1M inserted rows.
//!
//! ```sh
//! cargo build --release -p walcached
//! cargo run --release -p walcache-benches --bin pipeline-bench -- [--quick]
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use walcache::Walcache;
use walcache_protocol::{Body, Message, Naming};
use walcache_testkit::{PgServer, RedisServer};
use walcached::config::Config;
use walcached::status::Status;

/// The hidden subcommand that runs the latency benchmark's reader process.
const READER_COMMAND: &str = "__latency-reader";
/// The namespace (and table) of the latency benchmark.
const LATENCY_NS: &str = "lat";
/// How long the reader sleeps between two sweeps over the keys it watches.
const READER_POLL: Duration = Duration::from_micros(20);
/// How many keys, in update order, the reader checks per sweep.
const READER_WINDOW: usize = 128;
/// How long the reader keeps watching after the writer is done.
const READER_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for anything (a daemon to catch up, a drain to finish).
const DEADLINE: Duration = Duration::from_secs(600);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    /// Row changes in each drained slot.
    drain_rows: u64,
    /// Rows per transaction in the drained slots.
    rows_per_txn: u64,
    /// Commits (one per key) per latency run.
    latency_commits: u64,
    /// Rows in the one large transaction of the RSS benchmark.
    rss_rows: u64,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            drain_rows: 300_000,
            rows_per_txn: 100,
            latency_commits: 10_000,
            rss_rows: 1_000_000,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            drain_rows: 30_000,
            rows_per_txn: 100,
            latency_commits: 2_000,
            rss_rows: 100_000,
        }
    }
}

#[derive(Debug)]
struct Options {
    quick: bool,
    sizes: Sizes,
    walcached: Option<PathBuf>,
    only: Vec<String>,
}

const USAGE: &str = "\
pipeline-bench [--quick] [--only drain,latency,rss] [--walcached PATH]
               [--drain-rows N] [--rows-per-txn N] [--latency-commits N] [--rss-rows N]

  --quick            small sizes (whole run < 30 s after the build); the default is the full run
  --only LIST        run only these benchmarks (drain, latency, rss)
  --walcached PATH   the daemon binary for `rss` (default: $WALCACHED_BIN, else `walcached`
                     next to this binary: build it with `cargo build --release -p walcached`)";

fn parse_options(args: &[String]) -> Result<Options, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        sizes: if quick { Sizes::quick() } else { Sizes::full() },
        walcached: std::env::var_os("WALCACHED_BIN").map(PathBuf::from),
        only: vec!["drain".into(), "latency".into(), "rss".into()],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n\n{USAGE}"))
        };
        let number = |v: String| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{a}: {v:?} is not a positive number"))
        };
        match a.as_str() {
            "--quick" => {}
            "--walcached" => o.walcached = Some(PathBuf::from(value()?)),
            "--only" => o.only = value()?.split(',').map(str::to_owned).collect(),
            "--drain-rows" => o.sizes.drain_rows = number(value()?)?,
            "--rows-per-txn" => o.sizes.rows_per_txn = number(value()?)?,
            "--latency-commits" => o.sizes.latency_commits = number(value()?)?,
            "--rss-rows" => o.sizes.rss_rows = number(value()?)?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    for b in &o.only {
        if !["drain", "latency", "rss"].contains(&b.as_str()) {
            return Err(format!("--only: unknown benchmark {b:?}\n\n{USAGE}"));
        }
    }
    if o.sizes.drain_rows % o.sizes.rows_per_txn != 0 {
        return Err("--drain-rows must be a multiple of --rows-per-txn".to_owned());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(READER_COMMAND) {
        return match latency_reader(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("latency reader: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("pipeline-bench: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: one system-wide clock on Linux, so timestamps taken in
/// two processes on the same machine can be subtracted (std's `Instant` reads the same clock
/// but cannot be sent to another process).
fn mono_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

fn run(o: &Options) -> Result<(), BoxError> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The in-process daemon gets a runtime of its own, as it would in its own process.
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("walcached")
        .enable_all()
        .build()?;
    let redis = RedisServer::start()?;
    let pg = PgServer::start()?;
    let (dbname, db) = rt.block_on(async {
        let name = pg.create_database("pipeline").await?;
        let db = pg.connect(&name).await?;
        Ok::<_, BoxError>((name, db))
    })?;
    let server_version: String = rt
        .block_on(db.query_one("SHOW server_version", &[]))?
        .get(0);
    println!(
        "pipeline-bench ({} mode): PostgreSQL {server_version}, servers started in {:.1} s",
        if o.quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64()
    );
    let env = Env {
        rt: &rt,
        daemon_rt: &daemon_rt,
        redis: &redis,
        pg: &pg,
        dbname: &dbname,
        db: &db,
    };
    if o.only.iter().any(|b| b == "drain") {
        drain(&env, &o.sizes)?;
    }
    if o.only.iter().any(|b| b == "latency") {
        latency(&env, &o.sizes)?;
    }
    if o.only.iter().any(|b| b == "rss") {
        rss(&env, o)?;
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What every benchmark works with.
struct Env<'a> {
    rt: &'a Runtime,
    daemon_rt: &'a Runtime,
    redis: &'a RedisServer,
    pg: &'a PgServer,
    dbname: &'a str,
    db: &'a tokio_postgres::Client,
}

impl Env<'_> {
    fn sql(&self, sql: &str) -> Result<(), BoxError> {
        Ok(self.rt.block_on(self.db.batch_execute(sql))?)
    }

    /// The server's current WAL position.
    fn current_lsn(&self) -> Result<u64, BoxError> {
        let row = self.rt.block_on(
            self.db
                .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8", &[]),
        )?;
        Ok(u64::try_from(row.get::<_, i64>(0))?)
    }

    fn create_slot(&self, slot: &str) -> Result<(), BoxError> {
        self.rt.block_on(self.db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        ))?;
        Ok(())
    }

    /// A daemon configuration over one table (`{id}` keys), without the HTTP endpoint.
    fn daemon_toml(&self, slot: &str, publication: &str, table: &str, stream: &str) -> String {
        format!(
            r#"
[postgres]
url = "{pg}"
slot = "{slot}"
publication = "{publication}"

[redis]
url = "{redis}"

[stream]
{stream}

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

/// `X/Y`, PostgreSQL's text form of an LSN.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A walcached pipeline running in this process, on its own runtime.
struct InProcessDaemon<'a> {
    rt: &'a Runtime,
    status: Arc<Status>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), walcached::pipeline::RunError>>>,
}

impl<'a> InProcessDaemon<'a> {
    fn start(rt: &'a Runtime, toml: &str) -> Result<InProcessDaemon<'a>, BoxError> {
        let config = Config::parse(toml, &HashMap::<String, String>::new())?;
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
    fn wait(&mut self, what: &str, done: impl Fn(&Status) -> bool) -> Result<(), BoxError> {
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

    fn stop(mut self) -> Result<(), BoxError> {
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

fn drain(env: &Env<'_>, sizes: &Sizes) -> Result<(), BoxError> {
    let n = sizes.drain_rows;
    let per = sizes.rows_per_txn;
    println!(
        "\n## drain: {n} row changes ({} transactions of {per} INSERTed rows) per slot",
        n / per
    );
    // The publication and all four slots exist before the rows, so every slot holds them all.
    env.sql(
        "CREATE TABLE drain (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         CREATE PUBLICATION drain_pub FOR TABLE drain WITH (publish_via_partition_root = true);",
    )?;
    let order = ["drain_a1", "drain_b1", "drain_b2", "drain_a2"];
    for slot in order {
        env.create_slot(slot)?;
    }
    let t = Instant::now();
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
    println!(
        "prepared in {:.1} s: end LSN {}, {wal_mib:.1} MiB of WAL per slot",
        t.elapsed().as_secs_f64(),
        lsn_text(end)
    );

    // A live library handle on the same Redis, so the daemon's messages have a subscriber, and
    // one value in the namespace so the delete script finds a schema version to delete under.
    let handle = env
        .rt
        .block_on(Walcache::builder().redis_url(env.redis.url()).build())?;
    let cache = handle.cache::<i64, i64>("drain").build()?;
    env.rt.block_on(cache.insert(&0, 0))?;

    let mut results: Vec<(&str, Duration, String)> = Vec::new();
    for slot in order {
        if slot.starts_with("drain_a") {
            let elapsed = drain_pg_recvlogical(env, slot, end)?;
            results.push(("pg_recvlogical", elapsed, String::new()));
        } else {
            let toml = env.daemon_toml(slot, "drain_pub", "drain", "");
            let t = Instant::now();
            let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
            let streaming = std::cell::Cell::new(None);
            daemon.wait("the drain", |s| {
                if streaming.get().is_none() && s.is_streaming() {
                    streaming.set(Some(t.elapsed()));
                }
                s.confirmed_lsn() >= end
            })?;
            let elapsed = t.elapsed();
            let startup = streaming.get().unwrap_or_default();
            let confirmed = daemon.status.confirmed_lsn();
            let messages = daemon.status.published_seq();
            daemon.stop()?;
            results.push((
                "walcached",
                elapsed,
                format!(
                    "({:.3} s of it start-up until streaming) {messages} messages published, \
                     confirmed {}",
                    startup.as_secs_f64(),
                    lsn_text(confirmed)
                ),
            ));
        }
        let (who, elapsed, note) = results.last().expect("pushed");
        println!(
            "{slot}: {who:<14} {:>7.3} s  {:>9.0} rows/s  {note}",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64()
        );
    }
    let rate = |who: &str| {
        let (sum, count) = results
            .iter()
            .filter(|r| r.0 == who)
            .fold((0.0, 0.0), |(s, c), r| (s + r.1.as_secs_f64(), c + 1.0));
        n as f64 / (sum / count)
    };
    let (pg_rate, wc_rate) = (rate("pg_recvlogical"), rate("walcached"));
    println!(
        "drain: pg_recvlogical {pg_rate:.0} rows/s, walcached {wc_rate:.0} rows/s (mean time of two \
         drains each): walcached / pg_recvlogical = {:.2}x (goal >= 0.8x)",
        wc_rate / pg_rate
    );
    for slot in order {
        env.rt.block_on(
            env.db
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot]),
        )?;
    }
    drop(cache);
    drop(handle);
    Ok(())
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

fn latency(env: &Env<'_>, sizes: &Sizes) -> Result<(), BoxError> {
    let n = sizes.latency_commits;
    println!("\n## latency: commit -> L1 eviction in another process, 1000 commits/s, {n} commits per run");
    env.sql(&format!(
        "CREATE TABLE {LATENCY_NS} (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         INSERT INTO {LATENCY_NS} SELECT g, 0 FROM generate_series(0, {last}) g;",
        last = n - 1
    ))?;
    env.sql(&format!("VACUUM ANALYZE {LATENCY_NS}"))?;
    // The publication must exist before the first change the daemon's slot decodes: pgoutput
    // looks it up in the catalog as of each change.
    env.sql(&format!(
        "CREATE PUBLICATION lat_pub FOR TABLE {LATENCY_NS} WITH (publish_via_partition_root = true)"
    ))?;
    env.create_slot("lat")?;
    env.rt.block_on(env.db.execute(
        "SELECT pg_create_logical_replication_slot('lat_raw', 'test_decoding')",
        &[],
    ))?;
    println!("\n### floor: pg_recvlogical (test_decoding) to a pipe, no cache");
    latency_raw(env, n)?;
    for (label, stream) in [
        ("default config (batch_max_delay_ms = 1)", ""),
        ("batch_max_delay_ms = 0", "batch_max_delay_ms = 0"),
    ] {
        println!("\n### {label}");
        latency_run(env, n, stream)?;
    }
    Ok(())
}

fn latency_run(env: &Env<'_>, n: u64, stream: &str) -> Result<(), BoxError> {
    let toml = env.daemon_toml("lat", "lat_pub", LATENCY_NS, stream);
    let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
    let now = env.current_lsn()?;
    daemon.wait("the daemon to catch up", |s| {
        s.is_caught_up() && s.confirmed_lsn() >= now
    })?;

    let exe = std::env::current_exe()?;
    let mut reader = Command::new(&exe)
        .arg(READER_COMMAND)
        .arg(env.redis.url())
        .arg(n.to_string())
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
    // (commit → message received) and the library's (message → L1 eviction).
    let heard = Arc::new(std::sync::Mutex::new(vec![None::<i64>; n as usize]));
    let listener = {
        let index: HashMap<String, usize> = (0..n as usize)
            .map(|k| (walcache::key_of(&(k as i64)), k))
            .collect();
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

    let Commits {
        sent,
        acked,
        elapsed,
    } = write_commits(env, n)?;
    // Closing the reader's stdin tells it the writer is done.
    drop(reader.stdin.take());
    let mut evicted: Vec<Option<i64>> = vec![None; n as usize];
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
    let messages = daemon.status.published_seq();
    daemon.stop()?;
    listener.abort();
    let heard = std::mem::take(&mut *heard.lock().expect("not poisoned"));

    // A key gone from L1 before its UPDATE was even sent was not evicted by its invalidation
    // but by an L1 flush (the reader's stream stopped being live): not a latency sample.
    let flushed: Vec<usize> = (0..n as usize)
        .filter(|&i| evicted[i].is_some_and(|e| e < sent[i]))
        .collect();
    if not_live_at.is_some() || !flushed.is_empty() {
        println!(
            "!! the reader's handle stopped being live at {} s (writer start = 0), so L1 was \
             flushed; {} keys gone before their UPDATE was sent are left out of the samples",
            not_live_at.map_or("?".to_owned(), |t| format!(
                "{:+.3}",
                (t - sent[0]) as f64 / 1e9
            )),
            flushed.len()
        );
    }
    for &i in &flushed {
        evicted[i] = None;
    }
    let mut to_heard: Vec<i64> = Vec::with_capacity(n as usize);
    let mut heard_to_evicted: Vec<i64> = Vec::with_capacity(n as usize);
    for (i, h) in heard.iter().enumerate() {
        if let Some(h) = h {
            to_heard.push(h - acked[i]);
            if let Some(e) = evicted[i] {
                heard_to_evicted.push(e - h);
            }
        }
    }
    let mut from_ack: Vec<i64> = Vec::with_capacity(n as usize);
    let mut from_send: Vec<i64> = Vec::with_capacity(n as usize);
    let mut commit_rtt: Vec<i64> = Vec::with_capacity(n as usize);
    for (i, e) in evicted.iter().enumerate() {
        commit_rtt.push(acked[i] - sent[i]);
        if let Some(e) = e {
            from_ack.push(e - acked[i]);
            from_send.push(e - sent[i]);
        }
    }
    let missing = evicted.iter().filter(|e| e.is_none()).count() - flushed.len();
    println!(
        "writer: {n} commits in {:.2} s ({:.0} commits/s); daemon: {messages} data messages; \
         reader: {reader_stats}; evictions missing: {missing}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    let slow: Vec<usize> = evicted
        .iter()
        .enumerate()
        .filter(|(i, e)| e.is_some_and(|e| e - acked[*i] > 10_000_000))
        .map(|(i, _)| i)
        .collect();
    if let (Some(first), Some(last)) = (slow.first(), slow.last()) {
        println!(
            "{} evictions took > 10 ms, commits #{first}..=#{last} (at {:.3}..={:.3} s)",
            slow.len(),
            (acked[*first] - acked[0]) as f64 / 1e9,
            (acked[*last] - acked[0]) as f64 / 1e9,
        );
    }
    print_percentiles("COMMIT returned -> evicted from L1", &mut from_ack);
    print_percentiles(
        "COMMIT returned -> message heard by a plain subscriber",
        &mut to_heard,
    );
    print_percentiles(
        "message heard -> evicted from L1 (other process)",
        &mut heard_to_evicted,
    );
    print_percentiles("UPDATE sent -> evicted from L1", &mut from_send);
    print_percentiles(
        "UPDATE round trip (sent -> COMMIT returned)",
        &mut commit_rtt,
    );
    Ok(())
}

/// When each of the latency benchmark's commits was sent and when its `COMMIT` returned.
struct Commits {
    sent: Vec<i64>,
    acked: Vec<i64>,
    elapsed: Duration,
}

/// The writer: one autocommit `UPDATE` per millisecond (a tokio interval), key `i` at the
/// `i`-th tick, on a connection of its own.
fn write_commits(env: &Env<'_>, n: u64) -> Result<Commits, BoxError> {
    env.rt.block_on(async {
        let db = env.pg.connect(env.dbname).await?;
        let update = db
            .prepare(&format!("UPDATE {LATENCY_NS} SET v = v + 1 WHERE id = $1"))
            .await?;
        let mut sent = Vec::with_capacity(n as usize);
        let mut acked = Vec::with_capacity(n as usize);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let start = Instant::now();
        for id in 0..n {
            tick.tick().await;
            let id = i64::try_from(id)?;
            sent.push(mono_ns());
            let changed = db.execute(&update, &[&id]).await?;
            acked.push(mono_ns());
            if changed != 1 {
                return Err(format!("UPDATE of id {id} changed {changed} rows").into());
            }
        }
        Ok(Commits {
            sent,
            acked,
            elapsed: start.elapsed(),
        })
    })
}

/// The floor: the same commits followed by `pg_recvlogical` with `test_decoding` writing to a
/// pipe this process reads; the time each row's line arrives, after its `COMMIT` returned.
fn latency_raw(env: &Env<'_>, n: u64) -> Result<(), BoxError> {
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
    let seen = std::thread::spawn(move || {
        let prefix = format!("table public.{LATENCY_NS}: UPDATE: id[bigint]:");
        let mut seen = vec![None::<i64>; n as usize];
        for line in BufReader::new(out).lines() {
            let at = mono_ns();
            let Ok(line) = line else { break };
            let id = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse::<usize>().ok());
            if let Some(slot) = id.and_then(|id| seen.get_mut(id)) {
                slot.get_or_insert(at);
            }
        }
        seen
    });
    let t = Instant::now();
    loop {
        let active: bool = env
            .rt
            .block_on(env.db.query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'lat_raw'",
                &[],
            ))?
            .get(0);
        if active {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("pg_recvlogical did not start streaming".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let commits = write_commits(env, n);
    // Let the last rows arrive (poll the slot's position), then stop our pg_recvlogical.
    let end = env.current_lsn()?;
    let t = Instant::now();
    while t.elapsed() < READER_GRACE {
        let confirmed: Option<i64> = env
            .rt
            .block_on(env.db.query_one(
                "SELECT (sent_lsn - '0/0'::pg_lsn)::int8 FROM pg_stat_replication \
                 WHERE application_name = 'pg_recvlogical'",
                &[],
            ))
            .ok()
            .and_then(|r| r.get(0));
        if confirmed.is_some_and(|c| u64::try_from(c).unwrap_or(0) >= end) {
            std::thread::sleep(Duration::from_millis(50));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill()?;
    child.wait()?;
    let seen = seen
        .join()
        .map_err(|_| "the pg_recvlogical reader panicked")?;
    let commits = commits?;
    let mut v: Vec<i64> = seen
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| s - commits.acked[i]))
        .collect();
    println!(
        "writer: {n} commits in {:.2} s; rows seen by pg_recvlogical: {}",
        commits.elapsed.as_secs_f64(),
        v.len()
    );
    print_percentiles(
        "COMMIT returned -> row line read from pg_recvlogical",
        &mut v,
    );
    Ok(())
}

/// p50, p90, p99 and max, in ms (negative values as they are).
fn print_percentiles(what: &str, v: &mut [i64]) {
    if v.is_empty() {
        println!("{what}: no samples");
        return;
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e6
    };
    let negative = v.iter().filter(|x| **x < 0).count();
    println!(
        "{what}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, min {:.3} ms \
         ({} samples, {negative} negative)",
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0),
        v[0] as f64 / 1e6,
        v.len()
    );
}

/// The reader process: a live walcache handle whose L1 holds keys `0..n` of namespace `lat`;
/// prints `READY`, then watches the keys in update order and, once stdin is closed (and
/// [`READER_GRACE`] has passed) or every key is gone, prints `E key monotonic_ns` per eviction
/// and one `S …` line of statistics.
fn latency_reader(args: &[String]) -> Result<(), BoxError> {
    let [redis_url, n] = args else {
        return Err("usage: __latency-reader REDIS_URL N".into());
    };
    let n: usize = n.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let handle = rt.block_on(Walcache::builder().redis_url(redis_url.as_str()).build())?;
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
            cache.insert(&k, k).await?;
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
    let mut lo = 0;
    let mut sweeps: u64 = 0;
    let mut not_live_sweeps: u64 = 0;
    let mut first_not_live: Option<i64> = None;
    let mut done_at: Option<Instant> = None;
    let watch_start = mono_ns();
    let mut last_sweep = watch_start;
    let mut max_gap: i64 = 0;
    while lo < n {
        let now = mono_ns();
        max_gap = max_gap.max(now - last_sweep);
        last_sweep = now;
        let window = (lo + READER_WINDOW).min(n);
        for (k, slot) in evicted.iter_mut().enumerate().take(window).skip(lo) {
            if slot.is_none() && !cache.contains_in_l1(&(k as i64)) {
                *slot = Some(mono_ns());
            }
        }
        while lo < n && evicted[lo].is_some() {
            lo += 1;
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
        "S sweeps={sweeps} mean_sweep_us={:.1} max_sweep_gap_ms={:.3} not_live_sweeps={not_live_sweeps}",
        watched_ns as f64 / 1e3 / sweeps.max(1) as f64,
        max_gap as f64 / 1e6
    )?;
    stdout.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Peak RSS of the daemon process through one large transaction
// ---------------------------------------------------------------------------------------------

fn walcached_binary(o: &Options) -> Result<PathBuf, BoxError> {
    let path = match &o.walcached {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("the bench binary has no directory")?
            .join("walcached"),
    };
    if !path.is_file() {
        return Err(format!(
            "no walcached binary at {}: build it with `cargo build --release -p walcached`, or \
             pass --walcached PATH (or set WALCACHED_BIN)",
            path.display()
        )
        .into());
    }
    Ok(path)
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

fn rss(env: &Env<'_>, o: &Options) -> Result<(), BoxError> {
    let n = o.sizes.rss_rows;
    println!("\n## rss: walcached process following one transaction of {n} INSERTed rows");
    let bin = walcached_binary(o)?;
    env.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL) \
         WITH (autovacuum_enabled = false);",
    )?;
    // The slot exists beforehand, so the daemon's start is not a new slot's namespace flush.
    env.create_slot("rss")?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walcached.toml");
    std::fs::write(&config, env.daemon_toml("rss", "rss_pub", "big", ""))?;
    let log = dir.path().join("walcached.log");
    let mut child = Command::new(&bin)
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
                    println!("walcached exited with {status} after SIGTERM");
                }
                break;
            }
            None if t.elapsed() > Duration::from_secs(10) => {
                println!("walcached did not stop within 10 s of SIGTERM: killed");
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
) -> Result<(), BoxError> {
    let log_tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    // Streaming: the slot is in use and the daemon has confirmed a position (a status update
    // it sends once it is reading the stream).
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
    let (idle_hwm, idle_rss) = memory_kib(pid)?;
    let t = Instant::now();
    env.sql(&format!(
        "INSERT INTO big SELECT g, 0 FROM generate_series(1, {n}) g"
    ))?;
    let insert_time = t.elapsed();
    let end = env.current_lsn()?;
    let t = Instant::now();
    let mut max_rss = idle_rss;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("walcached exited with {status}:\n{}", log_tail()).into());
        }
        max_rss = max_rss.max(memory_kib(pid)?.1);
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
    let follow_time = t.elapsed();
    let (hwm, rss_now) = memory_kib(pid)?;
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
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "INSERT of {n} rows (one transaction) took {:.2} s; walcached confirmed its end {:.2} s \
         after the COMMIT returned ({:.0} rows/s)",
        insert_time.as_secs_f64(),
        follow_time.as_secs_f64(),
        n as f64 / follow_time.as_secs_f64()
    );
    println!(
        "walcached VmHWM: {:.1} MiB streaming idle before, {:.1} MiB after (goal <= 64 MiB); \
         VmRSS now {:.1} MiB, largest sampled {:.1} MiB; namespace generation wc:{{big}}:gen = {}",
        mib(idle_hwm),
        mib(hwm),
        mib(rss_now),
        mib(max_rss),
        generation.as_deref().unwrap_or("(none)")
    );
    Ok(())
}

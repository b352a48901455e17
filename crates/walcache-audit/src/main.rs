//! `walcache-audit`: the staleness auditor (phase 1).
//!
//! Runs, on this machine, a private PostgreSQL and Redis (walcache-testkit), a real
//! `walcached` process, writers that bump `audit_rows.version`, and readers in several
//! independent `Walcache` handles — one of them in a child process (this binary's hidden
//! `__reader` subcommand, streaming its observations back over stdout) — while it injects
//! faults on a schedule. Then it checks every read against the committed versions
//! (`walcache_audit::check`), prints a summary, writes a JSON report, and exits 1 if any read
//! was stale beyond its bound.
//!
//! Prerequisite: the daemon binary, `cargo build -p walcached` (found through `WALCACHED_BIN`,
//! else next to this executable).
//!
//! ```text
//! cargo build -p walcached
//! cargo run -p walcache-audit -- --ci --report target/audit-ci.json   # ~50 s
//! cargo run --release -p walcache-audit -- --duration 10m               # long mode
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rand::SeedableRng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use walcache::{Cache, Walcache};
use walcache_audit::{check, now_ns, parse_duration, Bounds, Commit, Fault, Read, Summary, Zipf};
use walcache_testkit::{PgServer, RedisServer};

use walcache_audit::daemon::{daemon_config, walcached_bin, Daemon, RuleSpec};

pub(crate) const NAMESPACE: &str = "audit_rows";
pub(crate) const KEY_PREFIX: &str = "audit";
/// How long after each fault's injection the report counts its reads, and how long after its
/// recovery the fault's bound still applies.
const FAULT_WINDOW: Duration = Duration::from_secs(5);
/// How long Redis stays down in a `redis-restart` fault.
const REDIS_DOWN: Duration = Duration::from_millis(250);
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// The daemon's heartbeat interval: well below the library's heartbeat timeout.
pub(crate) const DAEMON_HEARTBEAT_MS: u64 = 100;

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// The staleness auditor: real PostgreSQL, Redis and walcached, writers, readers in several
/// cache handles (one in a child process), injected faults, and a checker.
#[derive(Parser, Debug)]
#[command(name = "walcache-audit", version)]
struct Args {
    /// CI mode: a 40 s workload (about 50 s in all) with every fault kind at least once.
    /// Explicit flags still override its values.
    #[arg(long)]
    ci: bool,
    /// How long the workload runs (e.g. 40s, 10m). Default 40s with --ci, else 10m.
    #[arg(long, value_parser = duration_arg)]
    duration: Option<Duration>,
    /// Writes per second, over all writers.
    #[arg(long, default_value_t = 200.0)]
    write_rate: f64,
    /// Writer tasks, each on its own PostgreSQL connection.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Readers, each an independent `Walcache` handle; the first runs in a child process.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Reads per second per reader.
    #[arg(long, default_value_t = 2000.0)]
    read_rate: f64,
    /// Rows in `audit_rows`.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Zipf exponent of the key distribution (readers and writers).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Staleness bound outside the windows of stream-killing faults, and for `pubsub-kill`
    /// (L2 stays fresh: the daemon's publish path bounds it).
    #[arg(long, default_value = "100ms", value_parser = duration_arg)]
    bound: Duration,
    /// Staleness bound within the windows of `redis-restart` and `daemon-kill` (injection to
    /// recovery + 5 s). Default: heartbeat timeout + 1 s.
    #[arg(long, value_parser = duration_arg)]
    fault_bound: Option<Duration>,
    /// The library's heartbeat timeout (the daemon sends a heartbeat every 100 ms).
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    heartbeat_timeout: Duration,
    /// Time between faults (kinds in turn: redis-restart, pubsub-kill, daemon-kill).
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    fault_interval: Duration,
    /// When the first fault is injected, after the workload starts.
    #[arg(long, default_value = "5s", value_parser = duration_arg)]
    first_fault: Duration,
    /// No faults (a baseline run).
    #[arg(long)]
    no_faults: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/audit-report.json")]
    report: PathBuf,
}

/// The hidden `__reader` subcommand: one reader in its own process.
#[derive(Parser, Debug)]
struct ChildArgs {
    #[arg(long)]
    redis_url: String,
    #[arg(long)]
    pg: String,
    #[arg(long)]
    rows: usize,
    #[arg(long)]
    zipf: f64,
    #[arg(long)]
    read_rate: f64,
    #[arg(long)]
    heartbeat_timeout_ms: u64,
    #[arg(long)]
    reader: u32,
}

use walcache_audit::BoxError;

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if argv.get(1).map(String::as_str) == Some("__reader") {
        argv.remove(1);
        let args = ChildArgs::parse_from(argv);
        if let Err(e) = runtime.block_on(child_main(args)) {
            eprintln!("walcache-audit reader: {e}");
            std::process::exit(2);
        }
        return;
    }
    let args = Args::parse_from(argv);
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            if summary.stale_beyond > 0 {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("walcache-audit: {e}");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Readers

async fn pg_client(conn: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn handle(redis_url: &str, heartbeat_timeout: Duration) -> Result<Walcache, BoxError> {
    Ok(Walcache::builder()
        .redis_url(redis_url)
        .key_prefix(KEY_PREFIX)
        .heartbeat_timeout(heartbeat_timeout)
        .build()
        .await?)
}

/// One read through the cache: the loader reads the primary in autocommit.
async fn read_once(
    cache: &Cache<i64, i64>,
    db: &tokio_postgres::Client,
    id: i64,
) -> Result<i64, walcache::Error> {
    cache
        .try_get_with(&id, async move {
            db.query_one("SELECT version FROM audit_rows WHERE id = $1", &[&id])
                .await
                .map(|r| r.get::<_, i64>(0))
        })
        .await
}

/// Reads at `rate` per second (in 10 ms ticks) until `stop`, calling `sink` per read.
async fn read_loop(
    cache: Cache<i64, i64>,
    db: tokio_postgres::Client,
    zipf: Zipf,
    rate: f64,
    reader: u32,
    stop: Arc<AtomicBool>,
    mut sink: impl FnMut(Result<Read, String>),
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ u64::from(reader) ^ now_ns());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut owed = 0.0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        owed += rate / 100.0;
        while owed >= 1.0 && !stop.load(Ordering::Relaxed) {
            owed -= 1.0;
            let id = zipf.sample(&mut rng);
            let t_ns = now_ns();
            match read_once(&cache, &db, id).await {
                Ok(version) => sink(Ok(Read {
                    id,
                    version,
                    t_ns,
                    reader,
                })),
                Err(e) => sink(Err(e.to_string())),
            }
        }
    }
}

async fn child_main(args: ChildArgs) -> Result<(), BoxError> {
    let db = pg_client(&args.pg).await?;
    let h = handle(
        &args.redis_url,
        Duration::from_millis(args.heartbeat_timeout_ms),
    )
    .await?;
    let cache = h.cache::<i64, i64>(NAMESPACE).build()?;
    let mut out = tokio::io::stdout();
    let deadline = now_ns() + SETUP_DEADLINE.as_nanos() as u64;
    while !h.is_live() {
        if now_ns() > deadline {
            return Err("the invalidation stream did not become live".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.write_all(b"ready\n").await?;
    out.flush().await?;

    // Stop when the parent closes our stdin.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_eof = Arc::clone(&stop);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        while matches!(stdin.read_line(&mut line).await, Ok(n) if n > 0) {
            line.clear();
        }
        stop_on_eof.store(true, Ordering::Relaxed);
    });

    // Lines are buffered here and written by a separate task, so a slow pipe never sits in
    // the middle of a read.
    let buffer = Arc::new(Mutex::new(String::new()));
    let writer_buffer = Arc::clone(&buffer);
    let writer_stop = Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        loop {
            let done = writer_stop.load(Ordering::Relaxed);
            let chunk = std::mem::take(&mut *writer_buffer.lock().expect("buffer"));
            if !chunk.is_empty() {
                out.write_all(chunk.as_bytes()).await?;
                out.flush().await?;
            }
            if done {
                return Ok::<_, std::io::Error>(out);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let zipf = Zipf::new(args.rows, args.zipf);
    let sink_buffer = Arc::clone(&buffer);
    read_loop(
        cache,
        db,
        zipf,
        args.read_rate,
        args.reader,
        Arc::clone(&stop),
        move |r| {
            let mut b = sink_buffer.lock().expect("buffer");
            match r {
                Ok(r) => {
                    use std::fmt::Write as _;
                    let _ = writeln!(b, "r {} {} {}", r.id, r.version, r.t_ns);
                }
                Err(e) => {
                    b.push_str("e ");
                    b.push_str(&e.replace('\n', " "));
                    b.push('\n');
                }
            }
        },
    )
    .await;
    let mut out = writer.await??;
    out.write_all(b"done\n").await?;
    out.flush().await?;
    Ok(())
}

/// What a reader reports back.
#[derive(Default)]
struct ReaderResult {
    reads: Vec<Read>,
    errors: u64,
    first_error: Option<String>,
}

struct ChildReader {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    collector: tokio::task::JoinHandle<Result<ReaderResult, BoxError>>,
}

async fn spawn_child_reader(
    args: &Args,
    redis_url: &str,
    pg_conn: &str,
    reader: u32,
) -> Result<ChildReader, BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("__reader")
        .args(["--redis-url", redis_url, "--pg", pg_conn])
        .args(["--rows", &args.rows.to_string()])
        .args(["--zipf", &args.zipf.to_string()])
        .args(["--read-rate", &args.read_rate.to_string()])
        .args([
            "--heartbeat-timeout-ms",
            &args.heartbeat_timeout.as_millis().to_string(),
        ])
        .args(["--reader", &reader.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready_tx = Some(ready_tx);
        let mut result = ReaderResult::default();
        let mut done = false;
        while let Some(line) = lines.next_line().await? {
            let mut parts = line.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some("ready"), None) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                (Some("r"), Some(rest)) => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    let [id, version, t] = f[..] else {
                        return Err(format!("bad line from the reader: {line:?}").into());
                    };
                    result.reads.push(Read {
                        id: id.parse()?,
                        version: version.parse()?,
                        t_ns: t.parse()?,
                        reader,
                    });
                }
                (Some("e"), msg) => {
                    result.errors += 1;
                    if result.first_error.is_none() {
                        result.first_error = msg.map(str::to_owned);
                    }
                }
                (Some("done"), None) => done = true,
                _ => return Err(format!("bad line from the reader: {line:?}").into()),
            }
        }
        if !done {
            return Err("the child reader exited without finishing".into());
        }
        Ok(result)
    });
    tokio::time::timeout(SETUP_DEADLINE, ready_rx)
        .await
        .map_err(|_| "the child reader did not become live in time")?
        .map_err(|_| "the child reader exited before becoming live")?;
    Ok(ChildReader {
        child,
        stdin,
        collector,
    })
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, Debug)]
enum FaultKind {
    RedisRestart,
    PubsubKill,
    DaemonKill,
}

impl FaultKind {
    const ALL: [FaultKind; 3] = [
        FaultKind::RedisRestart,
        FaultKind::PubsubKill,
        FaultKind::DaemonKill,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::RedisRestart => "redis-restart",
            FaultKind::PubsubKill => "pubsub-kill",
            FaultKind::DaemonKill => "daemon-kill",
        }
    }
}

/// Wait until `h` has noticed the fault (not live, for up to `notice`), then until it is live
/// again (up to 30 s).
async fn wait_relive(h: &Walcache, notice: Duration) -> Result<(), BoxError> {
    let until = now_ns() + notice.as_nanos() as u64;
    while h.is_live() && now_ns() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let until = now_ns() + SETUP_DEADLINE.as_nanos() as u64;
    while !h.is_live() {
        if now_ns() > until {
            return Err("the cache's stream did not become live again within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// The pid of the walsender streaming to walcached, if any.
async fn walsender_pid(admin: &tokio_postgres::Client) -> Result<Option<i32>, BoxError> {
    Ok(admin
        .query_opt(
            "SELECT pid FROM pg_stat_replication \
             WHERE application_name = 'walcached' AND state = 'streaming'",
            &[],
        )
        .await?
        .map(|r| r.get(0)))
}

async fn inject(
    kind: FaultKind,
    redis: &Arc<Mutex<RedisServer>>,
    daemon: &mut Daemon,
    probe: &Walcache,
    admin: &tokio_postgres::Client,
    heartbeat_timeout: Duration,
) -> Result<String, BoxError> {
    let detail = match kind {
        FaultKind::RedisRestart => {
            let redis = Arc::clone(redis);
            tokio::task::spawn_blocking(move || {
                let mut r = redis.lock().expect("redis");
                r.stop();
                std::thread::sleep(REDIS_DOWN);
                r.start_again()
            })
            .await??;
            format!("down {} ms", REDIS_DOWN.as_millis())
        }
        FaultKind::PubsubKill => {
            let client = redis.lock().expect("redis").client();
            let mut conn = client.get_multiplexed_async_connection().await?;
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut conn)
                .await?;
            format!("{killed} pub/sub connections killed")
        }
        FaultKind::DaemonKill => {
            let before = walsender_pid(admin).await?;
            daemon.sigkill().await?;
            daemon.spawn()?;
            // Recovered when the new daemon streams (a new walsender). The caches may never
            // be seen not live: the new epoch's first heartbeat flushes and revives them at
            // once, often before the old one's silence reaches the heartbeat timeout.
            let until = now_ns() + SETUP_DEADLINE.as_nanos() as u64;
            loop {
                let now = walsender_pid(admin).await?;
                if now.is_some() && now != before {
                    break;
                }
                if now_ns() > until {
                    return Err("the restarted daemon did not stream within 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            wait_relive(probe, Duration::ZERO).await?;
            return Ok("SIGKILL, restarted at once".to_owned());
        }
    };
    wait_relive(probe, heartbeat_timeout * 2).await?;
    Ok(detail)
}

// ---------------------------------------------------------------------------------------------
// The run

fn print_summary(s: &Summary, meta: &serde_json::Value) {
    println!("\n== walcache-audit report ==");
    println!("{}", serde_json::to_string_pretty(meta).unwrap_or_default());
    let pct = |n: u64| {
        if s.reads == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.reads as f64
        }
    };
    println!("reads:         {}", s.reads);
    println!("fresh:         {} ({:.4}%)", s.fresh, pct(s.fresh));
    println!(
        "stale within:  {} ({:.4}%)",
        s.stale_within,
        pct(s.stale_within)
    );
    println!(
        "stale beyond:  {} ({:.4}%)",
        s.stale_beyond,
        pct(s.stale_beyond)
    );
    if let Some(p) = &s.stale_within_staleness {
        println!(
            "staleness of stale-within reads: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, \
             p99.9 {:.2} ms, max {:.2} ms",
            p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
        );
    }
    for n in &s.nines {
        match n.nines {
            Some(k) => println!(
                "{k} nines of reads fresh within {} ms ({:.5}%, {} of {})",
                n.within_ms,
                100.0 * n.fraction,
                n.reads_within,
                s.reads
            ),
            None => println!(
                "all {} reads fresh within {} ms (at least {} nines measurable)",
                s.reads,
                n.within_ms,
                (s.reads as f64).log10().floor()
            ),
        }
    }
    for f in &s.faults {
        println!(
            "fault {:<13} at {:>6.2} s: recovered after {:>7.1} ms; next 5 s: {} reads, {} stale, \
             {} beyond (bound {} ms), worst {:.1} ms",
            f.kind,
            f.at_s,
            f.recovered_after_ms,
            f.reads_after,
            f.stale_after,
            f.beyond_after,
            f.bound_ms,
            f.worst_staleness_ms
        );
    }
    for v in s.violations.iter().take(10) {
        println!(
            "STALE BEYOND: id {} reader {} saw v{} at {:.3} s; v{} committed at {:.3} s: {:.1} ms \
             (bound {} ms); last fault: {}",
            v.id,
            v.reader,
            v.version_seen,
            v.read_at_s,
            v.newer_version,
            v.commit_at_s,
            v.staleness_ms,
            v.bound_ms,
            v.last_fault.as_deref().unwrap_or("none")
        );
    }
}

async fn run(mut args: Args) -> Result<Summary, BoxError> {
    let started = now_ns();
    let duration = args.duration.unwrap_or(if args.ci {
        Duration::from_secs(40)
    } else {
        Duration::from_secs(600)
    });
    args.readers = args.readers.max(2);
    args.writers = args.writers.max(1);
    let fault_bound = args
        .fault_bound
        .unwrap_or(args.heartbeat_timeout + Duration::from_secs(1));
    let bin = walcached_bin()?;

    // Servers, schema, daemon.
    eprintln!("walcache-audit: starting PostgreSQL and Redis");
    let pg = tokio::task::spawn_blocking(PgServer::start).await??;
    let redis_server = tokio::task::spawn_blocking(RedisServer::start).await??;
    let redis_url = redis_server.url();
    let redis = Arc::new(Mutex::new(redis_server));
    let dbname = pg.create_database("audit").await?;
    let admin = pg.connect(&dbname).await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE audit_rows (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO audit_rows SELECT g, 0 FROM generate_series(1, {}) g;",
            args.rows
        ))
        .await?;
    let initial_ns = now_ns();
    let dir = tempfile::Builder::new()
        .prefix("walcache-audit")
        .tempdir()?;
    let config = dir.path().join("walcached.toml");
    std::fs::write(
        &config,
        daemon_config(
            &pg.url(&dbname),
            &redis_url,
            KEY_PREFIX,
            DAEMON_HEARTBEAT_MS,
            &[RuleSpec {
                table: "public.audit_rows".into(),
                namespace: NAMESPACE.into(),
                keys: vec!["{id}".into()],
                tags: vec![],
            }],
        ),
    )?;
    let mut daemon = Daemon {
        bin,
        config,
        log: dir.path().join("walcached.log"),
        child: None,
    };
    daemon.spawn()?;
    eprintln!(
        "walcache-audit: walcached {} started (log {})",
        daemon.bin.display(),
        daemon.log.display()
    );

    // Readers: handles in this process, then one child process.
    let pg_conn = pg.conn_string(&dbname);
    let mut local = Vec::new();
    for reader in 1..args.readers as u32 {
        let h = handle(&redis_url, args.heartbeat_timeout).await?;
        let cache = h.cache::<i64, i64>(NAMESPACE).build()?;
        local.push((reader, h, cache, pg_client(&pg_conn).await?));
    }
    let probe = local[0].1.clone();
    if let Err(e) = wait_relive(&probe, Duration::ZERO).await {
        return Err(format!("{e}; walcached log:\n{}", daemon.log_tail()).into());
    }
    let mut child = spawn_child_reader(&args, &redis_url, &pg_conn, 0).await?;

    // Every row starts at version 0, committed before anything started.
    let commits = Arc::new(Mutex::new(
        (1..=args.rows as i64)
            .map(|id| Commit {
                id,
                version: 0,
                t_ns: initial_ns,
            })
            .collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let write_errors = Arc::new(AtomicU64::new(0));
    let zipf = Zipf::new(args.rows, args.zipf);
    let origin = now_ns();
    eprintln!(
        "walcache-audit: workload running for {:?} ({} writes/s, {} readers x {} reads/s)",
        duration, args.write_rate, args.readers, args.read_rate
    );

    let mut writers = Vec::new();
    for w in 0..args.writers {
        let db = pg_client(&pg_conn).await?;
        let (stop, commits, errors, zipf) = (
            Arc::clone(&stop),
            Arc::clone(&commits),
            Arc::clone(&write_errors),
            zipf.clone(),
        );
        let period = Duration::from_secs_f64(args.writers as f64 / args.write_rate);
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 ^ now_ns());
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = zipf.sample(&mut rng);
                let r = db
                    .query_one(
                        "UPDATE audit_rows SET version = version + 1 WHERE id = $1 \
                         RETURNING version",
                        &[&id],
                    )
                    .await;
                let t_ns = now_ns();
                match r {
                    Ok(row) => commits.lock().expect("commits").push(Commit {
                        id,
                        version: row.get(0),
                        t_ns,
                    }),
                    // An unknown outcome: no PostgreSQL fault in phase 1, so counted only.
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut readers = Vec::new();
    for (reader, h, cache, db) in local {
        let (stop, zipf, rate) = (Arc::clone(&stop), zipf.clone(), args.read_rate);
        readers.push(tokio::spawn(async move {
            let mut result = ReaderResult::default();
            read_loop(cache, db, zipf, rate, reader, stop, |r| match r {
                Ok(r) => result.reads.push(r),
                Err(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert(e);
                }
            })
            .await;
            drop(h);
            result
        }));
    }

    // Faults on schedule, while the workload runs.
    let mut faults = Vec::new();
    let mut fault_log = Vec::new();
    let end = origin + duration.as_nanos() as u64;
    if !args.no_faults {
        let mut at = origin + args.first_fault.as_nanos() as u64;
        let mut i = 0;
        // Leave each fault its observation window before the end.
        while at + FAULT_WINDOW.as_nanos() as u64 <= end {
            let kind = FaultKind::ALL[i % FaultKind::ALL.len()];
            tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
            let start_ns = now_ns();
            let detail = inject(
                kind,
                &redis,
                &mut daemon,
                &probe,
                &admin,
                args.heartbeat_timeout,
            )
            .await
            .map_err(|e| {
                format!(
                    "{}: {e}; walcached log:\n{}",
                    kind.name(),
                    daemon.log_tail()
                )
            })?;
            let end_ns = now_ns();
            eprintln!(
                "walcache-audit: {:>6.2} s {} ({detail}), live again after {:.1} ms",
                (start_ns - origin) as f64 / 1e9,
                kind.name(),
                (end_ns - start_ns) as f64 / 1e6
            );
            fault_log.push(serde_json::json!({"kind": kind.name(), "detail": detail}));
            faults.push(Fault {
                kind: kind.name().to_owned(),
                start_ns,
                end_ns,
                bound_ns: match kind {
                    FaultKind::PubsubKill => args.bound.as_nanos() as u64,
                    FaultKind::RedisRestart | FaultKind::DaemonKill => {
                        fault_bound.as_nanos() as u64
                    }
                },
            });
            i += 1;
            at += args.fault_interval.as_nanos() as u64;
        }
    }
    tokio::time::sleep(Duration::from_nanos(end.saturating_sub(now_ns()))).await;
    stop.store(true, Ordering::Relaxed);

    // Collect.
    for w in writers {
        w.await?;
    }
    let mut reads = Vec::new();
    let mut read_errors = 0;
    let mut first_error = None;
    let mut per_reader = Vec::new();
    for r in readers {
        let r = r.await?;
        per_reader.push(r.reads.len());
        read_errors += r.errors;
        first_error = first_error.or(r.first_error);
        reads.extend(r.reads);
    }
    drop(child.stdin.take());
    let r = tokio::time::timeout(SETUP_DEADLINE, child.collector)
        .await
        .map_err(|_| "the child reader did not finish")???;
    child.child.wait().await?;
    per_reader.insert(0, r.reads.len());
    read_errors += r.errors;
    first_error = first_error.or(r.first_error);
    reads.extend(r.reads);
    daemon.sigkill().await?;
    let commits = std::mem::take(&mut *commits.lock().expect("commits"));

    let bounds = Bounds {
        base_ns: args.bound.as_nanos() as u64,
        grace_ns: FAULT_WINDOW.as_nanos() as u64,
        faults,
    };
    let bound_ms = args.bound.as_secs_f64() * 1e3;
    let mut nines_ms = vec![1.0, 5.0, 10.0, 50.0, bound_ms, 1000.0];
    nines_ms.sort_by(f64::total_cmp);
    nines_ms.dedup();
    let summary = check(
        &commits,
        &reads,
        &bounds,
        origin,
        FAULT_WINDOW.as_nanos() as u64,
        &nines_ms,
    );
    let meta = serde_json::json!({
        "mode": if args.ci { "ci" } else { "long" },
        "freshness": "available",
        "workload_s": duration.as_secs_f64(),
        "total_s": (now_ns() - started) as f64 / 1e9,
        "rows": args.rows,
        "zipf": args.zipf,
        "write_rate": args.write_rate,
        "writers": args.writers,
        "commits": commits.len() - args.rows,
        "write_errors": write_errors.load(Ordering::Relaxed),
        "readers": args.readers,
        "reader_processes": "reader 0 in a child process, the others in this one",
        "reads_per_reader": per_reader,
        "read_errors": read_errors,
        "first_read_error": first_error,
        "bound_ms": bound_ms,
        "fault_bound_ms": fault_bound.as_secs_f64() * 1e3,
        "heartbeat_timeout_ms": args.heartbeat_timeout.as_secs_f64() * 1e3,
        "daemon_heartbeat_interval_ms": DAEMON_HEARTBEAT_MS,
        "fault_details": fault_log,
    });
    print_summary(&summary, &meta);
    let report = serde_json::json!({ "run": meta, "summary": summary });
    write_report(&args.report, &report)?;
    println!("report: {}", args.report.display());
    if summary.stale_beyond > 0 {
        // Keep the daemon's log as evidence: the temporary directory goes away.
        let kept = args.report.with_extension("walcached.log");
        let _ = std::fs::copy(&daemon.log, &kept);
        println!(
            "FAILED: {} reads stale beyond their bound (walcached log kept in {})",
            summary.stale_beyond,
            kept.display()
        );
    }
    Ok(summary)
}

fn write_report(path: &Path, report: &serde_json::Value) -> Result<(), BoxError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(&mut f, report)?;
    writeln!(f)?;
    Ok(())
}

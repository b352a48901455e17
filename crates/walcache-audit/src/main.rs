//! `walcache-audit`: the staleness auditor.
//!
//! Runs, on this machine, a private PostgreSQL and Redis (walcache-testkit), a real
//! `walcached` process, writers that UPDATE, INSERT and DELETE rows of three tables (one read
//! through a tag), and readers in several independent `Walcache` handles — one of them in a
//! child process — whose Redis link goes through a fault-injecting proxy, while it injects
//! faults on a schedule. Then it checks every read against the committed versions
//! (`walcache_audit::check`), prints a summary, writes a JSON report, and exits 1 if any read
//! was stale beyond its bound. Optionally it ends with the full-refresh proof.
//!
//! Prerequisite: the daemon binary, `cargo build -p walcached` (found through `WALCACHED_BIN`,
//! else next to this executable).
//!
//! ```text
//! cargo build -p walcached
//! cargo run -p walcache-audit -- --ci --report target/audit-ci.json   # ~65 s
//! cargo run --release -p walcache-audit -- --duration 10m               # long mode
//! ```

mod child;
mod ddl_fault;
mod faults;
mod summary;
mod workload;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use walcache::Freshness;
use walcache_audit::daemon::{daemon_config, walcached_bin, Daemon};
use walcache_audit::refresh_proof::{self, ProofSetup};
use walcache_audit::BoxError;
use walcache_audit::{check, now_ns, parse_duration, Bounds, Fault, Zipf};
use walcache_testkit::{PgOptions, PgServer, RedisServer, TcpProxy};

use crate::child::{ChildArgs, ChildReader, ChildSpec, ReaderResult};
use crate::faults::{BoundSet, FaultKind, Injector};
use crate::workload::{Db, Reader, ReaderConfig, KEY_PREFIX};

/// How long after each fault's injection the report counts its reads, and how long after its
/// recovery the fault's bound still applies.
const FAULT_WINDOW: Duration = Duration::from_secs(5);
const SETUP_DEADLINE: Duration = Duration::from_secs(30);
/// The daemon's heartbeat interval: well below the library's heartbeat timeout.
pub(crate) const DAEMON_HEARTBEAT_MS: u64 = 100;

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// The `--faults` list (a newtype: clap would take a `Vec` for a repeated flag).
#[derive(Clone, Debug)]
struct FaultList(Vec<FaultKind>);

fn faults_arg(s: &str) -> Result<FaultList, String> {
    match s {
        "all" => Ok(FaultList(FaultKind::ALL.to_vec())),
        "none" => Ok(FaultList(Vec::new())),
        _ => s
            .split(',')
            .map(|n| FaultKind::parse(n.trim()))
            .collect::<Result<_, _>>()
            .map(FaultList),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Available,
    Strict,
}

/// The staleness auditor: real PostgreSQL, Redis and walcached, writers, readers in several
/// cache handles (one in a child process), injected faults, and a checker.
#[derive(Parser, Debug)]
#[command(name = "walcache-audit", version)]
struct Args {
    /// CI mode: a 60 s workload, a fault every 5 s, every fault kind at least once (the
    /// workload runs longer if the schedule leaves a kind out). Explicit flags still override
    /// its values.
    #[arg(long)]
    ci: bool,
    /// How long the workload runs (e.g. 60s, 10m). Default 60s with --ci, else 10m.
    #[arg(long, value_parser = duration_arg)]
    duration: Option<Duration>,
    /// The library's freshness mode while the stream is not live.
    #[arg(long, value_enum, default_value_t = Mode::Available)]
    freshness: Mode,
    /// Writes per second, over all row writers (the counters' writer adds a tenth of it).
    #[arg(long, default_value_t = 200.0)]
    write_rate: f64,
    /// Row writers, each on its own PostgreSQL connection, each owning a share of the ids.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Readers, each an independent `Walcache` handle; the first runs in a child process.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Reads per second per reader. Default 2000 with --ci, else 4500 (10 M reads in 10 min).
    #[arg(long)]
    read_rate: Option<f64>,
    /// Ids in `audit_rows` and in `audit_items`.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Zipf exponent of the key distribution (readers and writers).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Staleness bound outside fault windows, and for the faults that leave L2 fresh and end
    /// L1's liveness at once (pubsub-kill, proxy-reset; proxy-latency adds twice its delay).
    #[arg(long, default_value = "100ms", value_parser = duration_arg)]
    bound: Duration,
    /// Bound for faults that silence the stream or hold the daemon back (redis-restart,
    /// daemon-kill, proxy-partition, pubsub-loss). Default: heartbeat timeout + 1 s.
    #[arg(long, value_parser = duration_arg)]
    fault_bound: Option<Duration>,
    /// Bound for pg-restart in available mode. Default: fault bound + 2 s.
    #[arg(long, value_parser = duration_arg)]
    pg_bound: Option<Duration>,
    /// The one bound of every fault in strict mode. Default: heartbeat timeout + --bound.
    #[arg(long, value_parser = duration_arg)]
    strict_bound: Option<Duration>,
    /// The library's heartbeat timeout (the daemon sends a heartbeat every 100 ms).
    #[arg(long, default_value = "1s", value_parser = duration_arg)]
    heartbeat_timeout: Duration,
    /// Faults to inject in turn: `all`, `none`, or a comma-separated list of redis-restart,
    /// pubsub-kill, daemon-kill, pg-restart, proxy-latency, proxy-partition, proxy-reset,
    /// pubsub-loss, daemon-backlog, replication-silent.
    #[arg(long, default_value = "all", value_parser = faults_arg)]
    faults: FaultList,
    /// Time between faults (a fault that lasts longer delays the next). Default 5s with --ci,
    /// else 20s.
    #[arg(long, value_parser = duration_arg)]
    fault_interval: Option<Duration>,
    /// When the first fault is injected, after the workload starts.
    #[arg(long, default_value = "3s", value_parser = duration_arg)]
    first_fault: Duration,
    /// After the workload: corrupt the caches behind the daemon's back, run one full-refresh
    /// cycle, and show nothing stale survives (about 15 s).
    #[arg(long)]
    refresh_proof: bool,
    /// Start PostgreSQL in this transaction-id epoch (`pg_resetwal -e`): every xid8 the daemon
    /// widens a 32-bit xid to is then at least 2^32 × N.
    #[arg(long, default_value_t = 0)]
    xid_epoch: u32,
    /// Rows each of `daemon-backlog`'s burst commits changes (1,000 commits/s for 5 s). The
    /// default gives a catch-up of 2-6 s in a debug build; a release build publishes about ten
    /// times faster, so long runs use 64 for a catch-up of 2 s or more.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=1000))]
    backlog_rows_per_commit: i64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/audit-report.json")]
    report: PathBuf,
}

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walcache-audit: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    if argv.get(1).map(String::as_str) == Some("__reader") {
        argv.remove(1);
        let args = ChildArgs::parse_from(argv);
        if let Err(e) = runtime.block_on(child::child_main(args)) {
            eprintln!("walcache-audit reader: {e}");
            std::process::exit(2);
        }
        return;
    }
    let args = Args::parse_from(argv);
    match runtime.block_on(run(args)) {
        Ok(failed) => {
            if failed {
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
// The run

/// When faults are injected: every `interval` from the first, each delayed until the one
/// before has recovered, as long as a fault's observation window fits before `end` — or, for
/// the first `cover` injections (CI mode: one per kind listed), regardless, `end` moving out
/// to fit their windows. Times in nanoseconds on [`now_ns`].
#[derive(Debug)]
struct Schedule {
    /// When the next fault is due.
    at: u64,
    /// When the workload ends.
    end: u64,
    interval: u64,
    window: u64,
    /// Injections owed whatever the duration.
    cover: usize,
    /// Injections so far.
    injected: usize,
}

impl Schedule {
    /// When to inject the next fault, or `None` if the schedule is over.
    fn next(&mut self) -> Option<u64> {
        if self.at + self.window > self.end && self.injected >= self.cover {
            return None;
        }
        self.end = self.end.max(self.at + self.window);
        Some(self.at)
    }

    /// The fault `next` returned has recovered at `now`.
    fn done(&mut self, now: u64) {
        self.injected += 1;
        self.at = (self.at + self.interval).max(now);
    }
}

/// Everything the workload set up.
struct Setup {
    pg: Arc<Mutex<PgServer>>,
    redis: Arc<Mutex<RedisServer>>,
    proxy: TcpProxy,
    daemon: Daemon,
    pg_conn: String,
    _dir: tempfile::TempDir,
}

/// Returns whether the audit failed (a read beyond its bound, or the refresh proof).
async fn run(args: Args) -> Result<bool, BoxError> {
    let started = now_ns();
    let duration = args.duration.unwrap_or(if args.ci {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(600)
    });
    let read_rate = args
        .read_rate
        .unwrap_or(if args.ci { 2000.0 } else { 4500.0 });
    let fault_interval = args.fault_interval.unwrap_or(if args.ci {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(20)
    });
    let readers = args.readers.max(2);
    let writers = args.writers.max(1);
    let stream_bound = args
        .fault_bound
        .unwrap_or(args.heartbeat_timeout + Duration::from_secs(1));
    let strict = args.freshness == Mode::Strict;
    let bounds = BoundSet {
        base: args.bound,
        stream: stream_bound,
        pg: args
            .pg_bound
            .unwrap_or(stream_bound + Duration::from_secs(2)),
        strict: strict.then(|| {
            args.strict_bound
                .unwrap_or(args.heartbeat_timeout + args.bound)
        }),
    };
    let bin = walcached_bin()?;

    // Servers, schema, daemon, proxy.
    eprintln!("walcache-audit: starting PostgreSQL and Redis");
    let xid_epoch = args.xid_epoch;
    let pg = tokio::task::spawn_blocking(move || match xid_epoch {
        0 => PgServer::start(),
        n => PgServer::start_with(PgOptions::new().xid_epoch(n)),
    })
    .await??;
    let redis_server = tokio::task::spawn_blocking(RedisServer::start).await??;
    let redis_url = redis_server.url();
    let proxy = TcpProxy::start(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        redis_server.port(),
    )))?;
    let dbname = pg.create_database("audit").await?;
    let pg_conn = pg.conn_string(&dbname);
    let pg_url = pg.url(&dbname);
    let mut admin = Db::connect(&pg_conn).await?;
    let first_xid8 = next_xid8(admin.client_within(SETUP_DEADLINE).await?).await?;
    if first_xid8 >> 32 != u64::from(args.xid_epoch) {
        return Err(format!(
            "PostgreSQL's next xid8 is {first_xid8} (epoch {}), not in epoch {}",
            first_xid8 >> 32,
            args.xid_epoch
        )
        .into());
    }
    let initial_ns = now_ns();
    let mut initial = workload::create_tables(
        admin.client_within(SETUP_DEADLINE).await?,
        args.rows,
        initial_ns,
    )
    .await?;
    let dir = tempfile::Builder::new()
        .prefix("walcache-audit")
        .tempdir()?;
    let config = dir.path().join("walcached.toml");
    std::fs::write(
        &config,
        daemon_config(
            &pg_url,
            &redis_url,
            KEY_PREFIX,
            DAEMON_HEARTBEAT_MS,
            &workload::rules(),
        ),
    )?;
    let mut setup = Setup {
        pg: Arc::new(Mutex::new(pg)),
        redis: Arc::new(Mutex::new(redis_server)),
        proxy,
        daemon: Daemon {
            bin,
            config,
            log: dir.path().join("walcached.log"),
            child: None,
        },
        pg_conn,
        _dir: dir,
    };
    // DDL capture, as a superuser (the audit's PostgreSQL role is one): the `ddl` fault's
    // statements are flushed in commit order.
    setup.daemon.ddl_capture_install().await?;
    setup.daemon.spawn()?;
    eprintln!(
        "walcache-audit: walcached {} started (log {})",
        setup.daemon.bin.display(),
        setup.daemon.log.display()
    );

    // Readers: handles in this process, then one child process; all through the proxy.
    let reader_config = ReaderConfig {
        redis_url: setup.proxy.redis_url(),
        heartbeat_timeout: args.heartbeat_timeout,
        freshness: if strict {
            Freshness::Strict
        } else {
            Freshness::Available
        },
    };
    let mut local = Vec::new();
    for number in 1..readers as u32 {
        let reader = Reader::new(&reader_config).await?;
        local.push((number, reader, Db::connect(&setup.pg_conn).await?));
    }
    let probe = local[0].1.handle.clone();
    if let Err(e) = local[0].1.wait_live(SETUP_DEADLINE).await {
        return Err(format!("{e}; walcached log:\n{}", setup.daemon.log_tail()).into());
    }
    let child = ChildReader::spawn(ChildSpec {
        redis_url: &reader_config.redis_url,
        pg_conn: &setup.pg_conn,
        rows: args.rows,
        zipf: args.zipf,
        read_rate,
        heartbeat_timeout: args.heartbeat_timeout,
        strict,
        reader: 0,
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let write_errors = Arc::new(AtomicU64::new(0));
    let zipf = Zipf::new(args.rows, args.zipf);
    let origin = now_ns();
    eprintln!(
        "walcache-audit: workload running for {duration:?} ({} writes/s, {readers} readers x \
         {read_rate} reads/s, {} mode)",
        args.write_rate,
        if strict { "strict" } else { "available" }
    );

    let mut writer_tasks = Vec::new();
    for w in 0..writers {
        writer_tasks.push(tokio::spawn(workload::row_writer(
            Db::connect(&setup.pg_conn).await?,
            w,
            writers,
            args.rows,
            zipf.clone(),
            args.write_rate / writers as f64,
            Arc::clone(&stop),
            Arc::clone(&write_errors),
        )));
    }
    writer_tasks.push(tokio::spawn(workload::counter_writer(
        Db::connect(&setup.pg_conn).await?,
        args.write_rate / 10.0,
        Arc::clone(&stop),
        Arc::clone(&write_errors),
    )));

    let mut reader_tasks = Vec::new();
    for (number, reader, db) in local {
        let (stop, zipf) = (Arc::clone(&stop), zipf.clone());
        reader_tasks.push(tokio::spawn(async move {
            let mut result = ReaderResult::default();
            workload::read_loop(reader, db, zipf, read_rate, number, stop, |r| {
                result.record(r)
            })
            .await;
            result
        }));
    }

    // Faults on schedule, while the workload runs.
    let mut faults = Vec::new();
    let mut fault_log = Vec::new();
    let mut end = origin + duration.as_nanos() as u64;
    let mut fault_commits = Vec::new();
    if !args.faults.0.is_empty() {
        let mut injector = Injector {
            redis: &setup.redis,
            pg: &setup.pg,
            proxy: &setup.proxy,
            daemon: &mut setup.daemon,
            probe: &probe,
            admin: &mut admin,
            heartbeat_timeout: args.heartbeat_timeout,
            pg_restarts: 0,
            pg_conn: &setup.pg_conn,
            long_silences: !args.ci,
            backlog_rows_per_commit: args.backlog_rows_per_commit,
            silences: 0,
            rows: args.rows,
            ddl_injections: 0,
            parts_version: 0,
            commits: Vec::new(),
        };
        let mut schedule = Schedule {
            at: origin + args.first_fault.as_nanos() as u64,
            end,
            interval: fault_interval.as_nanos() as u64,
            window: FAULT_WINDOW.as_nanos() as u64,
            cover: if args.ci { args.faults.0.len() } else { 0 },
            injected: 0,
        };
        while let Some(at) = schedule.next() {
            let kind = args.faults.0[schedule.injected % args.faults.0.len()];
            tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
            let start_ns = now_ns();
            let injected = match injector.inject(kind).await {
                Ok(i) => i,
                Err(e) => {
                    return Err(format!(
                        "{}: {e}; walcached log:\n{}",
                        kind.name(),
                        injector.daemon.log_tail()
                    )
                    .into())
                }
            };
            let end_ns = now_ns();
            let bound = bounds.of(kind, injected.outage);
            eprintln!(
                "walcache-audit: {:>7.2} s {} ({}), recovered after {:.1} ms, bound {} ms",
                (start_ns - origin) as f64 / 1e9,
                kind.name(),
                injected.detail,
                (end_ns - start_ns) as f64 / 1e6,
                bound.as_millis()
            );
            fault_log.push(serde_json::json!({
                "kind": kind.name(),
                "at_s": (start_ns - origin) as f64 / 1e9,
                "detail": injected.detail,
                "bound_ms": bound.as_secs_f64() * 1e3,
            }));
            faults.push(Fault {
                kind: kind.name().to_owned(),
                start_ns,
                end_ns,
                bound_ns: bound.as_nanos() as u64,
            });
            schedule.done(now_ns());
        }
        end = schedule.end;
        fault_commits = std::mem::take(&mut injector.commits);
    }
    tokio::time::sleep(Duration::from_nanos(end.saturating_sub(now_ns()))).await;
    stop.store(true, Ordering::Relaxed);

    // Collect.
    let mut commits = std::mem::take(&mut initial);
    commits.append(&mut fault_commits);
    let (mut unknown_committed, mut unknown_rolled_back) = (0, 0);
    for w in writer_tasks {
        let r = w.await??;
        unknown_committed += r.unknown_committed;
        unknown_rolled_back += r.unknown_rolled_back;
        commits.extend(r.commits);
    }
    let mut all = ReaderResult::default();
    let mut per_reader = Vec::new();
    let mut collect = |r: ReaderResult| {
        per_reader.push(r.reads.len());
        all.errors += r.errors;
        if all.first_error.is_none() {
            all.first_error = r.first_error;
        }
        all.reads.extend(r.reads);
    };
    collect(child.finish().await?);
    for r in reader_tasks {
        collect(r.await?);
    }
    let proxy_stats = setup.proxy.stats();

    let check_bounds = Bounds {
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
        &all.reads,
        &check_bounds,
        origin,
        FAULT_WINDOW.as_nanos() as u64,
        &nines_ms,
    );
    let initial_rows = 2 * args.rows + 1;
    let per_kind: serde_json::Map<String, serde_json::Value> = args
        .faults
        .0
        .iter()
        .map(|k| (k.name().to_owned(), bounds.describe(*k)))
        .collect();
    let workload = Duration::from_nanos(end - origin);
    let mut meta = serde_json::json!({
        "mode": if args.ci { "ci" } else { "long" },
        "freshness": if strict { "strict" } else { "available" },
        "xid_epoch": args.xid_epoch,
        "backlog_rows_per_commit": args.backlog_rows_per_commit,
        "first_xid8": first_xid8,
        "workload_s": workload.as_secs_f64(),
        "workload_extended_s": workload.saturating_sub(duration).as_secs_f64(),
        "rows": args.rows,
        "tables": ["audit_rows (UPDATE)", "audit_items (INSERT/UPDATE/DELETE, cached not-found)", "sum(audit_counters) (tagged)", "audit_filler (daemon-backlog's burst, not read)"],
        "zipf": args.zipf,
        "write_rate": args.write_rate,
        "writers": writers + 1,
        "commits": commits.len() - initial_rows,
        "write_errors": write_errors.load(Ordering::Relaxed),
        "unknown_outcomes_committed": unknown_committed,
        "unknown_outcomes_rolled_back": unknown_rolled_back,
        "readers": readers,
        "reader_processes": "reader 0 in a child process, the others in this one",
        "reads_per_reader": per_reader,
        "read_errors": all.errors,
        "first_read_error": all.first_error,
        "bound_ms": bound_ms,
        "fault_bounds_ms": per_kind,
        "heartbeat_timeout_ms": args.heartbeat_timeout.as_secs_f64() * 1e3,
        "daemon_heartbeat_interval_ms": DAEMON_HEARTBEAT_MS,
        "fault_details": fault_log,
        "proxy": {
            "connections": proxy_stats.connections_accepted,
            "pubsub_messages_dropped": proxy_stats.pubsub_messages_dropped,
        },
    });
    let mut failed = summary.stale_beyond > 0;
    if args.refresh_proof {
        eprintln!("walcache-audit: the full-refresh proof");
        let redis_url = setup.redis.lock().map_err(|_| "redis lock poisoned")?.url();
        let proof = refresh_proof::prove(ProofSetup {
            admin: admin.client_within(SETUP_DEADLINE).await?,
            pg_conn: &setup.pg_conn,
            redis_url: &redis_url,
            key_prefix: KEY_PREFIX,
            daemon: &mut setup.daemon,
            slot: refresh_proof::DEFAULT_SLOT,
            table: "audit_rows",
            namespace: workload::NS_ROWS,
            rows: args.rows.min(600) as i64,
            handles: 3,
            l1_ttl: Duration::from_secs(2),
            heartbeat_timeout: args.heartbeat_timeout,
        })
        .await?;
        failed |= !proof.passed;
        meta["refresh_proof"] = serde_json::to_value(&proof)?;
    }
    setup.daemon.sigkill().await?;
    meta["total_s"] = serde_json::json!((now_ns() - started) as f64 / 1e9);
    let report = serde_json::json!({ "run": &meta, "summary": &summary });
    write_report(&args.report, &report)?;
    summary::print(&summary, &meta, &args.report);
    if failed {
        // Keep the daemon's log as evidence: the temporary directory goes away.
        let kept = args.report.with_extension("walcached.log");
        let _ = std::fs::copy(&setup.daemon.log, &kept);
        println!(
            "FAILED: {} reads stale beyond their bound{} (walcached log kept in {})",
            summary.stale_beyond,
            if meta
                .get("refresh_proof")
                .is_some_and(|p| p["passed"] == false)
            {
                ", and the refresh proof failed"
            } else {
                ""
            },
            kept.display()
        );
    }
    Ok(failed)
}

/// The next transaction id the server will assign, as an xid8. Assigns none.
pub(crate) async fn next_xid8(client: &tokio_postgres::Client) -> Result<u64, BoxError> {
    Ok(walcache_testkit::next_xid8(client).await?)
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

#[cfg(test)]
mod tests {
    use super::Schedule;

    const S: u64 = 1_000_000_000;

    /// Runs a schedule whose faults take `took` seconds each, in turn; returns the injection
    /// times and the end, in seconds.
    fn simulate(duration: u64, interval: u64, cover: usize, took: &[f64]) -> (Vec<f64>, f64) {
        let mut s = Schedule {
            at: 3 * S,
            end: duration * S,
            interval: interval * S,
            window: 5 * S,
            cover,
            injected: 0,
        };
        let mut at = Vec::new();
        while let Some(t) = s.next() {
            at.push(t as f64 / S as f64);
            let d = took[s.injected % took.len()];
            s.done(t + (d * S as f64) as u64);
        }
        (at, s.end as f64 / S as f64)
    }

    /// Recovery times of the ten kinds in CI (debug build), in the order of `FaultKind::ALL`,
    /// rounded up: daemon-backlog is a 5 s stop plus a catch-up of several seconds.
    const CI_TOOK: [f64; 10] = [1.0, 0.2, 0.5, 1.0, 3.0, 2.0, 0.2, 0.7, 12.0, 3.3];

    #[test]
    fn without_cover_a_short_run_leaves_kinds_out() {
        // The strict CI run's old shape, 40 s with a fault every 4 s: daemon-backlog is the
        // ninth, at 35 s, and replication-silent does not fit after it.
        let (at, end) = simulate(40, 4, 0, &CI_TOOK);
        assert_eq!(at.len(), 9, "{at:?}");
        assert_eq!(end, 40.0);
    }

    #[test]
    fn cover_injects_every_kind_and_extends_the_run() {
        let (at, end) = simulate(40, 4, 10, &CI_TOOK);
        assert_eq!(at.len(), 10, "{at:?}");
        // The tenth waits for daemon-backlog to recover, then gets its 5 s window.
        assert!((at[9] - (35.0 + 12.0)).abs() < 1e-6, "{at:?}");
        assert!((end - (at[9] + 5.0)).abs() < 1e-6, "{end}");
    }

    #[test]
    fn cover_does_not_shorten_a_long_run() {
        let (at, end) = simulate(60, 5, 10, &CI_TOOK);
        assert!(at.len() >= 10, "{at:?}");
        assert!(end >= 60.0);
        for w in at.windows(2) {
            assert!(w[1] - w[0] >= 5.0 - 1e-9, "{at:?}");
        }
    }
}

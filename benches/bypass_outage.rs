//! What the database sees while Redis is down: [`PROCESSES`] service processes (children of
//! this binary), each with [`READERS`] callers reading keys that miss L1, all bypassing the
//! caches to the loader, under `max_bypass_loads` of 64 (the default) and of 4.
//!
//! `cargo run --release -p walcache-benches --bin bypass-outage`
//!
//! The loader is a `SELECT` that takes 2 ms (`pg_sleep`), on a connection per caller (a pool as
//! large as the callers). Redis goes away behind the test kit's proxy (nothing forwarded,
//! connections reset); once every process has said its breaker is open and a load that started
//! after it opened has returned (the callers bypass), the parent samples PostgreSQL's
//! `pg_stat_activity` every 5 ms for [`WINDOW`] and counts the client backends running a query.
//! The formula the docs give: the database sees up to
//! `processes × min(max_bypass_loads, callers, pool)` concurrent queries.
//!
//! The hidden subcommand `--child PROXY_URL PG_CONNINFO CAP` is one service process; it says
//! `READY`, runs its callers on `GO`, says `BYPASSING` once its breaker is open and a load
//! started after that has returned, and answers `STOP` with `LOADS n`.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::{BreakerState, Walcache};
use walcache_testkit::{PgServer, RedisServer, TcpProxy};

/// Service processes.
const PROCESSES: usize = 8;
/// Callers per process, each with its own PostgreSQL connection.
const READERS: usize = 10;
/// Rows the callers read (a key that misses L1 every time: each read takes the next id).
const ROWS: i64 = 10_000;
/// How long the database is sampled during the outage.
const WINDOW: Duration = Duration::from_secs(3);
/// Longest wait for a process to say it bypasses (its breaker opens after two Redis timeouts
/// of 100 ms; the breaker stays open 5 s, longer than the wait and the window together).
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
const CAPS: [usize; 2] = [64, 4];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("--child") {
        let cap = args[4].parse()?;
        return rt.block_on(child(&args[2], &args[3], cap));
    }
    rt.block_on(parent())
}

async fn parent() -> Result<(), BoxError> {
    let pg = PgServer::start()?;
    let redis = RedisServer::start()?;
    let database = pg.create_database("outage").await?;
    let db = pg.connect(&database).await?;
    db.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL);
         INSERT INTO items SELECT i, repeat('x', 64) FROM generate_series(0, {ROWS}) i;"
    ))
    .await?;
    println!(
        "{PROCESSES} processes × {READERS} callers, a 2 ms SELECT per load, Redis down (breakers open); \
         PostgreSQL's active client backends sampled every 5 ms for {} s\n",
        WINDOW.as_secs()
    );
    println!("| max_bypass_loads | concurrent queries (max) | (mean) | formula: processes × min(cap, callers) | loads/s | GO → all bypassing (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for cap in CAPS {
        let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into())?;
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for _ in 0..PROCESSES {
            let mut child = Command::new(&exe)
                .args([
                    "--child",
                    &proxy.redis_url(),
                    &pg.conn_string(&database),
                    &cap.to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdin = child.stdin.take().ok_or("child stdin")?;
            let mut stdout = BufReader::new(child.stdout.take().ok_or("child stdout")?);
            expect(&mut stdout, "READY")?;
            children.push((child, stdin, stdout));
        }
        // Redis goes away: nothing forwarded, every open connection reset.
        proxy.set_blackhole(true);
        proxy.reset_all();
        let go = Instant::now();
        for (_, stdin, _) in &mut children {
            writeln!(stdin, "GO")?;
            stdin.flush()?;
        }
        // The window starts once every process bypasses (each says so, within its deadline).
        for (_, _, stdout) in &mut children {
            expect(stdout, "BYPASSING")?;
        }
        let settled = go.elapsed();
        let (mut max, mut sum, mut samples) = (0_i64, 0_i64, 0_i64);
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while start.elapsed() < WINDOW {
            tick.tick().await;
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND backend_type = 'client backend'
                       AND pid <> pg_backend_pid() AND datname = current_database()",
                    &[],
                )
                .await?;
            let active: i64 = row.get(0);
            max = max.max(active);
            sum += active;
            samples += 1;
        }
        let elapsed = go.elapsed();
        let mut loads = 0_u64;
        for (mut child, mut stdin, mut stdout) in children {
            writeln!(stdin, "STOP")?;
            stdin.flush()?;
            loads += expect(&mut stdout, "LOADS")?.parse::<u64>()?;
            child.wait()?;
        }
        println!(
            "| {cap} | {max} | {:.1} | {} | {:.0} | {:.0} |",
            sum as f64 / samples as f64,
            PROCESSES * cap.min(READERS),
            loads as f64 / elapsed.as_secs_f64(),
            settled.as_secs_f64() * 1e3
        );
    }
    println!(
        "\n(loads/s counts from GO, including the time until every process bypassed (last \
         column); the machine's 2 cores run all {PROCESSES} processes and PostgreSQL)"
    );
    Ok(())
}

/// Read one line, which must start with `word`; returns the rest.
fn expect(stdout: &mut impl BufRead, word: &str) -> Result<String, BoxError> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let rest = line
        .trim()
        .strip_prefix(word)
        .ok_or_else(|| format!("expected {word}, got {line:?}"))?;
    Ok(rest.trim().to_owned())
}

async fn child(redis_url: &str, conninfo: &str, cap: usize) -> Result<(), BoxError> {
    let handle = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis_url)
        .redis_timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_secs(5))
        .max_bypass_loads(cap)
        .build()
        .await?;
    let cache = handle.cache::<i64, String>("items").build()?;
    let mut clients = Vec::new();
    for _ in 0..READERS {
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        clients.push(Arc::new(client));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Loads started, and loads returned.
    let loads = Arc::new(AtomicU64::new(0));
    let returned = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    println!("READY");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let mut tasks = Vec::new();
    for client in clients {
        let (cache, stop, loads, returned, next) = (
            cache.clone(),
            Arc::clone(&stop),
            Arc::clone(&loads),
            Arc::clone(&returned),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = (next.fetch_add(1, Ordering::Relaxed) % ROWS as u64) as i64;
                let client = Arc::clone(&client);
                let (loads, returned) = (&loads, &returned);
                let _ = cache
                    .try_get_with(&id, async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        let row = client
                            .query_one(
                                "SELECT body FROM items, pg_sleep(0.002) WHERE id = $1",
                                &[&id],
                            )
                            .await
                            .map(|r| r.get::<_, String>(0));
                        returned.fetch_add(1, Ordering::Relaxed);
                        row
                    })
                    .await;
            }
        }));
    }
    // Bypassing: the breaker is open and, of the loads, more have returned than had started
    // when it was seen open, so at least one that started with the breaker open is done.
    let start = Instant::now();
    let mut started_before_open: Option<u64> = None;
    loop {
        if started_before_open.is_none() && handle.breaker_state() == BreakerState::Open {
            started_before_open = Some(loads.load(Ordering::Relaxed));
        }
        if started_before_open.is_some_and(|n| returned.load(Ordering::Relaxed) > n) {
            break;
        }
        if start.elapsed() > SETTLE_DEADLINE {
            return Err(format!(
                "not bypassing within {SETTLE_DEADLINE:?} of GO (breaker {:?}, {} loads \
                 returned)",
                handle.breaker_state(),
                returned.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("BYPASSING");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!("LOADS {}", loads.load(Ordering::Relaxed));
    std::io::stdout().flush()?;
    Ok(())
}

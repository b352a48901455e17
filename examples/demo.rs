//! The walcache demo: private PostgreSQL (wal_level=logical) and Redis, the `walcached` daemon
//! and two embedded handles (as two service processes would each have one); it writes rows,
//! reads them through both caches, and prints which tier answered each read (L1, L2 or
//! PostgreSQL) and how long each commit took to evict the cached entry from both.
//! Ctrl-C stops everything (the servers are private and stop with it).
//!
//! Run with: `./scripts/demo.sh` (installs PostgreSQL and Redis if missing), or
//! `cargo run --release -p walcache-examples --bin demo [-- --rounds N]`.
//!
//! The demo runs on servers of its own even when `DATABASE_URL` or `REDIS_URL` is set: it
//! creates a replication slot (which retains WAL while nobody consumes it), a publication, and
//! a daemon announcing on the invalidation channel, and none of these belong on a server that
//! other services use. `examples/walcached.toml` and the README's "Preparing PostgreSQL" set
//! the daemon up on yours.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache::{Cache, Walcache};
use walcache_examples::{exit_code, Context};
use walcache_testkit::{wait_until, PgServer, RedisServer};

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError(#[from] tokio_postgres::Error);

const IDS: [i64; 3] = [1, 2, 3];

/// How long the demo waits for the daemon, the stream or an eviction.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    exit_code(run().await)
}

/// `--rounds N`: stop after N rounds (default: until Ctrl-C).
fn rounds() -> Result<Option<u32>, String> {
    let mut args = std::env::args().skip(1);
    let mut rounds = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                let n = args
                    .next()
                    .ok_or("--rounds needs a number, e.g. --rounds 3")?;
                rounds = Some(n.parse().map_err(|_| {
                    format!("--rounds {n}: not a number of rounds (e.g. --rounds 3)")
                })?);
            }
            other => return Err(format!("unknown argument {other:?}: try --rounds 3")),
        }
    }
    Ok(rounds)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let rounds = rounds()?;
    if std::env::var_os("DATABASE_URL").is_some() || std::env::var_os("REDIS_URL").is_some() {
        println!(
            "note: the demo does not use DATABASE_URL or REDIS_URL: it creates a replication \
             slot and runs a daemon, which it does only on servers of its own (see the top of \
             examples/demo.rs)"
        );
    }
    println!("starting private PostgreSQL (wal_level=logical) and Redis…");
    let pg = PgServer::start().context(|| "starting a private PostgreSQL")?;
    let redis = RedisServer::start().context(|| "starting a private Redis")?;
    let dbname = pg
        .create_database("demo")
        .await
        .context(|| "creating the demo database")?;
    println!("PostgreSQL: {} (private)", pg.url(&dbname));
    println!("Redis:      {} (private)", redis.url());
    let db = Arc::new(
        pg.connect(&dbname)
            .await
            .context(|| "connecting to the private PostgreSQL")?,
    );
    // `version` counts the updates of a row: names stay readable however long the demo runs.
    db.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, version int NOT NULL);
         INSERT INTO users VALUES (1, 'ada', 1), (2, 'grace', 1), (3, 'edsger', 1);",
    )
    .await
    .context(|| "creating the users table")?;

    // The daemon, in this process for the demo (in production: `walcached run --config …`).
    let config = walcached::config::Config::parse(
        &format!(
            r#"
[postgres]
url = "{pg}"
[redis]
url = "{redis}"
[stream]
heartbeat_interval_ms = 100
[http]
listen = ""
[[rules]]
table = "public.users"
namespace = "users"
keys = ["{{id}}"]
"#,
            pg = pg.url(&dbname),
            redis = redis.url()
        ),
        &walcached::config::ProcessEnv,
    )?;
    let status = Arc::new(walcached::status::Status::default());
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(walcached::pipeline::run(
        config,
        stop.clone(),
        Arc::clone(&status),
    ));
    wait_until("walcached to stream", DEADLINE, || async {
        status.is_caught_up()
    })
    .await?;
    println!("walcached is streaming");

    // Two embedded handles, as two processes of a service would each build one: each has its
    // own L1 and shares L2. A row one of them loaded is an L2 hit for the other.
    let a_users = service_cache(&redis).await?;
    let b_users = service_cache(&redis).await?;
    println!("services A and B: one embedded cache each, both live on the daemon's stream");

    let mut round = 0u32;
    loop {
        round += 1;
        println!("\n— round {round}");
        for id in IDS {
            let (name, tier_a, took_a) = read(&a_users, &db, id).await?;
            let (_, tier_b, took_b) = read(&b_users, &db, id).await?;
            println!(
                "  user {id} = {name:<10}  A: {tier_a:<10} {:>9}   B: {tier_b:<10} {:>9}",
                human(took_a),
                human(took_b),
            );
        }
        // A write: the daemon sees the commit in the WAL and evicts the entry from L2 and
        // from every L1.
        let id = IDS[(round as usize - 1) % IDS.len()];
        db.execute(
            "UPDATE users SET version = version + 1 WHERE id = $1",
            &[&id],
        )
        .await?;
        let committed = Instant::now();
        wait_until("the eviction", DEADLINE, || async {
            !a_users.contains_in_l1(&id) && !b_users.contains_in_l1(&id)
        })
        .await?;
        println!(
            "  UPDATE user {id} committed → evicted from L2 and both L1s after {}",
            human(committed.elapsed())
        );
        if rounds.is_some_and(|n| round >= n) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    println!("\nstopping walcached and the servers");
    stop.cancel();
    daemon.await??;
    Ok(())
}

/// A new handle's `users` cache, once the handle's invalidation stream is live (the cache
/// keeps the handle).
async fn service_cache(
    redis: &RedisServer,
) -> Result<Cache<i64, String>, Box<dyn std::error::Error>> {
    // The demo's daemon runs without signing keys; in production give both the same keys
    // (`signing_keys_env("WALCACHE_SIGNING_KEYS")`) instead of accepting unsigned messages.
    let walcache = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .build()
        .await
        .context(|| format!("connecting to Redis at {}", redis.url()))?;
    wait_until("the invalidation stream to be live", DEADLINE, || async {
        walcache.is_live()
    })
    .await?;
    Ok(walcache.cache::<i64, String>("users").build()?)
}

/// Read user `id` through `users`: the name, the tier that answered, and how long it took.
async fn read(
    users: &Cache<i64, String>,
    db: &tokio_postgres::Client,
    id: i64,
) -> Result<(String, &'static str, Duration), walcache::Error> {
    let in_l1 = users.contains_in_l1(&id);
    let loaded = AtomicBool::new(false);
    let start = Instant::now();
    let name = users
        .try_get_with(&id, async {
            loaded.store(true, Ordering::Relaxed);
            let row = db
                .query_one(
                    "SELECT name || ' v' || version FROM users WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok::<_, DbError>(row.get::<_, String>(0))
        })
        .await?;
    let took = start.elapsed();
    // The fill's write to L2 finishes after the answer: let it land before the next process
    // reads, so the demo shows that read as an L2 hit rather than a wait on the fill lease.
    users.wait_for_l2_fills().await;
    let tier = match (in_l1, loaded.load(Ordering::Relaxed)) {
        (true, _) => "L1",
        (false, true) => "PostgreSQL",
        (false, false) => "L2 (Redis)",
    };
    Ok((name, tier, took))
}

/// A duration for people: `412 µs` below a millisecond, `2.48 ms` above.
fn human(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

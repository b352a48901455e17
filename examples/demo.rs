//! The walcache demo: private PostgreSQL (wal_level=logical) and Redis, the `walcached` daemon
//! and a cache embedded in this process; it writes rows, reads them through the cache, and
//! prints which tier answered and how long each commit took to evict the cached entry.
//! Ctrl-C stops everything (the servers are private and stop with it).
//!
//! Run with: `./scripts/demo.sh` (installs PostgreSQL and Redis if missing), or
//! `cargo run --release -p walcache-examples --bin demo [-- --rounds N]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache::Walcache;
use walcache_testkit::{PgServer, RedisServer};

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError(#[from] tokio_postgres::Error);

const IDS: [i64; 3] = [1, 2, 3];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: Option<u32> = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok());
    println!("starting private PostgreSQL (wal_level=logical) and Redis…");
    let pg = PgServer::start()?;
    let redis = RedisServer::start()?;
    let dbname = pg.create_database("demo").await?;
    let db = Arc::new(pg.connect(&dbname).await?);
    db.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);
         INSERT INTO users VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger');",
    )
    .await?;

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
    wait_for("walcached to stream", || status.is_caught_up()).await?;
    println!("walcached is streaming");

    // The embedded cache, as a service would build it.
    let walcache = Walcache::builder().redis_url(redis.url()).build().await?;
    wait_for("the invalidation stream to be live", || walcache.is_live()).await?;
    let users = walcache.cache::<i64, String>("users").build()?;

    let mut round = 0u32;
    loop {
        round += 1;
        println!("\n— round {round}");
        for id in IDS {
            let in_l1 = users.contains_in_l1(&id);
            let loaded = AtomicBool::new(false);
            let start = Instant::now();
            let name = users
                .try_get_with(&id, async {
                    loaded.store(true, Ordering::Relaxed);
                    let row = db
                        .query_one("SELECT name FROM users WHERE id = $1", &[&id])
                        .await?;
                    Ok::<_, DbError>(row.get::<_, String>(0))
                })
                .await?;
            let tier = match (in_l1, loaded.load(Ordering::Relaxed)) {
                (true, _) => "L1 (in process)",
                (false, true) => "PostgreSQL (loader)",
                (false, false) => "L2 (Redis)",
            };
            println!(
                "  read user {id} = {name:<12} from {tier:<20} in {:?}",
                start.elapsed()
            );
        }
        // A write: the daemon sees the commit in the WAL and evicts the entry everywhere.
        let id = IDS[(round as usize - 1) % IDS.len()];
        db.execute("UPDATE users SET name = name || '+' WHERE id = $1", &[&id])
            .await?;
        let committed = Instant::now();
        wait_for("the eviction", || !users.contains_in_l1(&id)).await?;
        println!(
            "  UPDATE user {id} committed → evicted from L1 after {:?}",
            committed.elapsed()
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

/// Poll `done` until it holds (for up to 30 s).
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    Ok(())
}

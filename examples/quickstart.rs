//! The smallest useful embedding of walcache: a `users` table in PostgreSQL, cached in L1
//! (moka) and L2 (Redis), read through to the database.
//!
//! Run with: `cargo run -p walcache-examples --bin quickstart`
//!
//! `DATABASE_URL` and `REDIS_URL` each name a server to use; for one that is not set it starts
//! a private one for the run (PostgreSQL and Redis must then be installed:
//! `apt-get install -y postgresql redis-server`). It prints which servers it uses.
//! No daemon runs here, so the cache is built `without_invalidation_stream()` and the example
//! invalidates its own writes; with `walcached` running, drop that line and the daemon does it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::Walcache;
use walcache_examples::{exit_code, Context, Servers};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    email: String,
}

#[derive(Debug, thiserror::Error)]
#[error("database error")]
struct DbError(#[from] tokio_postgres::Error);

/// The loader: reads the primary in autocommit, so every load sees the latest commit.
async fn load_user(db: &tokio_postgres::Client, id: i64) -> Result<User, DbError> {
    let row = db
        .query_one("SELECT id, email FROM users WHERE id = $1", &[&id])
        .await?;
    Ok(User {
        id: row.get(0),
        email: row.get(1),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Servers: yours (DATABASE_URL, REDIS_URL), or private ones for the run.
    let servers = Servers::from_env("quickstart").await?;
    let db = Arc::new(servers.connect_postgres().await?);
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users VALUES (1, 'ada@example.com') ON CONFLICT (id) DO NOTHING;",
    )
    .await
    .context(|| "creating the users table")?;

    // One handle per process; one cache per namespace.
    let walcache = Walcache::builder()
        .redis_url(servers.redis.url())
        .without_invalidation_stream()
        .build()
        .await
        .context(|| format!("connecting to Redis at {}", servers.redis))?;
    let users = walcache
        .cache::<i64, User>("users")
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(30))
        .build()?;

    for round in 1..=3 {
        let start = Instant::now();
        let user = users.try_get_with(&1, load_user(&db, 1)).await?;
        println!("read {round}: {} in {:?}", user.email, start.elapsed());
    }

    // Write, then invalidate after the commit: this process reads its own write, and every
    // other process's L1 drops the key too.
    db.execute(
        "UPDATE users SET email = 'ada@lovelace.dev' WHERE id = 1",
        &[],
    )
    .await?;
    users.invalidate(&1).await?;
    let start = Instant::now();
    let user = users.try_get_with(&1, load_user(&db, 1)).await?;
    println!("after update: {} in {:?}", user.email, start.elapsed());
    Ok(())
}

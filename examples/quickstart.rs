//! The smallest useful embedding of walcache: a `users` table in PostgreSQL, cached in L1
//! (moka) and L2 (Redis), read through to the database.
//!
//! Run with: `cargo run -p walcache-examples --bin quickstart`
//!
//! With `DATABASE_URL` and `REDIS_URL` set it uses those servers; otherwise it starts private
//! ones (PostgreSQL and Redis must be installed: `apt-get install -y postgresql redis-server`).
//! No daemon runs here, so the cache is built `without_invalidation_stream()` and the example
//! invalidates its own writes; with `walcached` running, drop that line and the daemon does it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::Walcache;

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
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Servers: yours, or private ones for the demo.
    let (_servers, database_url, redis_url) = servers().await?;
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let db = Arc::new(db);
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users VALUES (1, 'ada@example.com') ON CONFLICT (id) DO NOTHING;",
    )
    .await?;

    // One handle per process; one cache per namespace.
    let walcache = Walcache::builder()
        .redis_url(redis_url)
        .without_invalidation_stream()
        .build()
        .await?;
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

/// Private servers, kept alive for the example's lifetime.
struct Servers {
    _pg: walcache_testkit::PgServer,
    _redis: walcache_testkit::RedisServer,
}

async fn servers() -> Result<(Option<Servers>, String, String), Box<dyn std::error::Error>> {
    if let (Ok(db), Ok(redis)) = (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
        return Ok((None, db, redis));
    }
    println!("DATABASE_URL and REDIS_URL not set: starting private PostgreSQL and Redis");
    let pg = walcache_testkit::PgServer::start()?;
    let dbname = pg.create_database("quickstart").await?;
    let redis = walcache_testkit::RedisServer::start()?;
    let (db, redis_url) = (pg.url(&dbname), redis.url());
    Ok((
        Some(Servers {
            _pg: pg,
            _redis: redis,
        }),
        db,
        redis_url,
    ))
}

//! walcache in one file: one handle, one cache, one loader.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/ cargo run -p walcache-examples --bin minimal`
//!
//! It needs both variables (the quickstart starts private servers for one that is not set)
//! and a `users (id bigint PRIMARY KEY, email text)` table with a row `id = 1` (the quickstart
//! makes one). With `walcached` running (`examples/walcached.toml`) L1 is used as soon as the
//! daemon's stream is live; without it, reads go to Redis and the database.

use std::process::ExitCode;

use walcache::Walcache;
use walcache_examples::{exit_code, redact, Context, Failed};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    email: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code(run().await)
}

fn required_env(name: &str) -> Result<String, Failed> {
    std::env::var(name).context(|| format!("reading {name} (see the top of examples/minimal.rs)"))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (database_url, redis_url) = (required_env("DATABASE_URL")?, required_env("REDIS_URL")?);
    println!("PostgreSQL: {} (from DATABASE_URL)", redact(&database_url));
    println!("Redis:      {} (from REDIS_URL)", redact(&redis_url));
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .context(|| format!("connecting to PostgreSQL at {}", redact(&database_url)))?;
    tokio::spawn(connection);

    // The daemon's signing keys (`id:hexsecret`, the same as walcached's), so that only it
    // (and services holding the keys) can move this process's caches; without them, this
    // example accepts unsigned messages, as a daemon without keys sends.
    let builder = Walcache::builder().redis_url(&redis_url);
    let builder = if std::env::var_os("WALCACHE_SIGNING_KEYS").is_some() {
        builder.signing_keys_env("WALCACHE_SIGNING_KEYS")
    } else {
        builder.allow_unsigned()
    };
    let walcache = builder
        .build()
        .await
        .context(|| format!("connecting to Redis at {}", redact(&redis_url)))?;
    let users = walcache.cache::<i64, User>("users").build()?;

    // The loader reads the primary in autocommit: a fresh snapshot for every load.
    let load = |id: i64| {
        let db = &db;
        async move {
            let row = db
                .query_one("SELECT id, email FROM users WHERE id = $1", &[&id])
                .await?;
            Ok::<_, tokio_postgres::Error>(User {
                id: row.get(0),
                email: row.get(1),
            })
        }
    };
    for _ in 0..2 {
        let user = users.try_get_with(&1, load(1)).await?;
        println!("{user:?} (L1 in use: {})", walcache.is_live());
    }
    Ok(())
}

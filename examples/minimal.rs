//! walcache in one file: one handle, one cache, one loader.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/ cargo run -p walcache-examples --bin minimal`
//!
//! It needs a `users (id bigint PRIMARY KEY, email text)` table with a row `id = 1` (the
//! quickstart makes one). With `walcached` running (`examples/walcached.toml`) L1 is used as
//! soon as the daemon's stream is live; without it, reads go to Redis and the database.

use walcache::Walcache;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    email: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (db, connection) =
        tokio_postgres::connect(&std::env::var("DATABASE_URL")?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    let walcache = Walcache::builder()
        .redis_url(std::env::var("REDIS_URL")?)
        .build()
        .await?;
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

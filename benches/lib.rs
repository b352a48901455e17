//! Shared set-up for walcache's criterion benchmarks (`benches/tiers.rs`).
//!
//! Every benchmark binary starts one private Redis and one private PostgreSQL through
//! [`walcache_testkit`] (loopback TCP, no Docker), once, and compares each walcache tier with
//! the raw tool beneath it on the same servers and the same bytes. See `BENCHMARKS.md` at the
//! repository root for what each benchmark measures and the latest results.
//!
//! Set `WALCACHE_BENCH_QUICK=1` for the CI mode: tiny warm-up and measurement times, so the
//! whole suite runs in well under a minute and only proves that the benchmarks still build and
//! work. Its numbers are not worth reading.

use std::time::Duration;

use criterion::Criterion;
use walcache::Walcache;
use walcache_testkit::{PgServer, RedisServer};

/// The environment variable that selects the quick (CI) mode when set to `1`.
pub const QUICK_ENV: &str = "WALCACHE_BENCH_QUICK";

/// Value sizes measured, in bytes.
pub const VALUE_SIZES: [usize; 2] = [64, 1024];

/// Number of distinct keys each benchmark cycles through.
pub const KEYS: i64 = 1000;

/// Fill `key` with `value` in both tiers the way a service does: a read through a loader that
/// answers `value` (a no-op if the key is already cached).
///
/// # Errors
///
/// What the read returns: Redis trouble is not an error (the loader serves).
pub async fn fill<K, V>(
    cache: &walcache::Cache<K, V>,
    key: &K,
    value: V,
) -> Result<V, walcache::Error>
where
    K: walcache_protocol::ToKey + ?Sized,
    V: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    cache
        .try_get_with(key, async move { Ok::<V, std::convert::Infallible>(value) })
        .await
}

/// Whether the quick (CI) mode is on: `WALCACHE_BENCH_QUICK=1`.
pub fn quick() -> bool {
    std::env::var(QUICK_ENV).is_ok_and(|v| v == "1")
}

/// The criterion configuration: criterion's defaults (3 s warm-up, 5 s measurement, 100
/// samples), or in quick mode 100 ms warm-up, 300 ms measurement, 10 samples and no plots.
/// Command-line flags (`cargo bench -p walcache-benches -- --help`) override both.
pub fn criterion() -> Criterion {
    let c = Criterion::default();
    let c = if quick() {
        c.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_millis(300))
            .sample_size(10)
            .without_plots()
    } else {
        c
    };
    c.configure_from_args()
}

/// The runtime every benchmark's async code runs on: a current-thread tokio runtime with I/O
/// and timers, so walcache and the raw clients see the same scheduling (no cross-thread
/// wake-ups on either side).
///
/// # Panics
///
/// When the runtime cannot be built.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the benchmark's tokio runtime")
}

/// A deterministic value of exactly `size` ASCII bytes for key `id`.
pub fn value_of(size: usize, id: i64) -> String {
    let mut s = format!("{size}-{id}-");
    let fill = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut i = 0;
    while s.len() < size {
        s.push(char::from(fill[i % fill.len()]));
        i += 1;
    }
    s.truncate(size);
    s
}

/// The private servers of one benchmark binary, stopped when dropped.
pub struct Servers {
    /// The private Redis.
    pub redis: RedisServer,
    /// The private PostgreSQL.
    pub pg: PgServer,
    /// The database created for the benchmarks in `pg`.
    pub database: String,
    /// A connection to `database`, driven by the runtime the servers were started on.
    pub db: tokio_postgres::Client,
}

impl Servers {
    /// Start Redis and PostgreSQL, create a database, and in it one table per value size,
    /// `items_{size}(id bigint PRIMARY KEY, body text NOT NULL)`, holding rows `0..KEYS` with
    /// [`value_of`] bodies. Call from inside the benchmark's runtime.
    ///
    /// # Panics
    ///
    /// When a server cannot be started or the set-up SQL fails: a benchmark cannot run without.
    pub async fn start() -> Servers {
        let redis = RedisServer::start().expect("start a private redis-server");
        let pg = PgServer::start().expect("start a private PostgreSQL");
        let database = pg
            .create_database("bench")
            .await
            .expect("create the benchmark database");
        let db = pg
            .connect(&database)
            .await
            .expect("connect to the benchmark database");
        for size in VALUE_SIZES {
            let table = table(size);
            db.batch_execute(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, body text NOT NULL);"
            ))
            .await
            .expect("create a benchmark table");
            let insert = db
                .prepare(&format!("INSERT INTO {table} (id, body) VALUES ($1, $2)"))
                .await
                .expect("prepare the insert");
            for id in 0..KEYS {
                db.execute(&insert, &[&id, &value_of(size, id)])
                    .await
                    .expect("insert a benchmark row");
            }
            db.batch_execute(&format!("VACUUM ANALYZE {table};"))
                .await
                .expect("vacuum a benchmark table");
        }
        Servers {
            redis,
            pg,
            database,
            db,
        }
    }

    /// A walcache handle on the private Redis, without the daemon's stream (so L1 is in use
    /// from the start), under its own key prefix.
    ///
    /// # Panics
    ///
    /// When the handle cannot connect.
    pub async fn walcache(&self, prefix: &str) -> Walcache {
        Walcache::builder()
            .allow_unsigned()
            .redis_url(self.redis.url())
            .key_prefix(prefix)
            .without_invalidation_stream()
            .build()
            .await
            .expect("build the walcache handle")
    }

    /// A connection of its own to the benchmark database (its own backend).
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn connect_db(&self) -> tokio_postgres::Client {
        self.pg
            .connect(&self.database)
            .await
            .expect("connect to the benchmark database")
    }

    /// A raw multiplexed redis-rs connection to the private Redis.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn redis_connection(&self) -> redis::aio::MultiplexedConnection {
        self.redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis")
    }
}

/// A walcache handle with no Redis and no stream: L1 only.
///
/// # Panics
///
/// When the handle cannot be built.
pub async fn l1_only_handle() -> Walcache {
    Walcache::builder()
        .allow_unsigned()
        .without_invalidation_stream()
        .build()
        .await
        .expect("an L1-only handle")
}

/// The table holding the rows of values of `size` bytes.
pub fn table(size: usize) -> String {
    format!("items_{size}")
}

/// The Redis key walcache stores `key` under, for a handle with key prefix `prefix`, in
/// namespace `ns` at generation 0 and schema version 1 (`{prefix}:{ns}:g0:s1:{key}`, literal
/// braces). Benchmarks check that the key holds a value before using it.
pub fn redis_value_key(prefix: &str, ns: &str, key: i64) -> String {
    format!("{prefix}:{{{ns}}}:g0:s1:{}", walcache::key_of(&key))
}

/// Redis' `keyspace_hits` and `keyspace_misses` counters (from `INFO stats`).
///
/// # Panics
///
/// When `INFO` fails or lacks the counters.
pub async fn keyspace_counters(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(conn)
        .await
        .expect("INFO stats");
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO stats has no {name}"))
    };
    (field("keyspace_hits"), field("keyspace_misses"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_exact_size() {
        for size in VALUE_SIZES {
            assert_eq!(value_of(size, 999).len(), size);
            assert_ne!(value_of(size, 1), value_of(size, 2));
        }
    }
}

//! Private PostgreSQL and Redis servers for walcache's tests and benchmarks.
//!
//! - [`RedisServer`]: a `redis-server` on a free loopback port, without persistence, that can
//!   be stopped and started again on the same port to simulate an outage.
//! - [`PgServer`]: a PostgreSQL cluster with `wal_level = logical`, copied from an `initdb`
//!   template cached once per machine, with [`PgServer::create_database`] for a database per
//!   test.
//! - [`PgServer::start_with_tls`] and [`RedisServer::start_with_tls`]: the same with TLS, with
//!   certificates made by `openssl` ([`TestCerts`]); [`TestCerts::client_cert`] for client
//!   certificates, [`PgOptions::cert_auth_user`] for a role that authenticates with one and
//!   [`RedisServer::start_with_tls_client_auth`] for a Redis that requires one.
//! - [`PgServer::start_with`] and [`PgOptions`]: a cluster in a chosen transaction-id epoch or
//!   just before an xid wrap (`pg_resetwal -e`/`-x`), and [`PgServer::consume_xids`] to get
//!   there.
//! - [`wait_until`] and [`wait_until_blocking`]: poll a condition with a deadline instead of
//!   sleeping.
//! - [`TcpProxy`]: a TCP proxy on a free loopback port that injects faults between a client
//!   and a server: latency, connection resets, a blackhole, and dropped Redis pub/sub messages.
//! - [`Zipf`]: a skewed key distribution for workloads.
//! - [`unique_prefix`]: a key prefix that isolates a test's Redis keys on a shared server.
//!
//! Servers are stopped when dropped. They run as children of the test process, in its process
//! group, so a test runner that kills the group also kills them.
//!
//! # Requirements
//!
//! `redis-server` and PostgreSQL (found with `pg_config --bindir`), and `openssl` for the TLS
//! servers; on Debian `apt-get install -y redis-server postgresql openssl`, or run
//! `scripts/test.sh`, which installs them.
//! When the tests run as root, PostgreSQL runs as the `postgres` user.
//!
//! # Environment
//!
//! - `WALCACHE_TESTKIT_REDIS_SERVER`: the `redis-server` binary to use.
//! - `WALCACHE_TESTKIT_PG_BINDIR`: PostgreSQL's binary directory, instead of `pg_config --bindir`.
//! - `WALCACHE_TESTKIT_PG_USER`: the user PostgreSQL runs as when the tests run as root.
//! - `WALCACHE_TESTKIT_DIR`: where the `initdb` template is cached (default
//!   `$TMPDIR/walcache-testkit-UID`; delete it to force a fresh `initdb`).
//! - `WALCACHE_TESTKIT_SERVER_DIR`: where servers' temporary directories go (default `/dev/shm`
//!   when it has 1 GiB free, else `$TMPDIR`).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use walcache_testkit::{wait_until, PgServer, RedisServer};
//!
//! #[tokio::test]
//! async fn invalidates() -> Result<(), Box<dyn std::error::Error>> {
//!     let pg = PgServer::start()?;
//!     let redis = RedisServer::start()?;
//!     let db = pg.create_database("invalidates").await?;
//!     let client = pg.connect(&db).await?;
//!     // ... start walcache against pg.url(&db) and redis.url() ...
//!     wait_until("the row to be cached", Duration::from_secs(5), || async { true }).await?;
//!     Ok(())
//! }
//! ```

mod error;
pub mod hostile;
mod pg_server;
mod privilege;
mod process;
mod proxy;
mod redis_server;
mod tls;
mod wait;
mod zipf;

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::error::{Error, Result};
pub use crate::pg_server::{next_xid8, PgOptions, PgServer};
pub use crate::proxy::{ProxyStats, TcpProxy};
pub use crate::redis_server::{RedisServer, TESTKIT_CLIENT_USER};
pub use crate::tls::{ClientKeyFormat, TestCerts};
pub use crate::wait::{wait_until, wait_until_blocking, WaitError};
pub use crate::zipf::Zipf;

/// A prefix for a test's Redis keys, unique per call within the machine's running processes:
/// `t{pid}x{counter}`.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

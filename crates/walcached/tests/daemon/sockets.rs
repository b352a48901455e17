//! No silent sockets: a control-session statement that runs too long is cancelled by the
//! server (`statement_timeout`), and a Redis call into a network that swallows everything
//! fails within the daemon's Redis timeout, connecting included.
//!
//! The proxy's blackhole reads and discards (its kernel still acknowledges every byte), so
//! these are the application-level timeouts; TCP keepalives and `TCP_USER_TIMEOUT`, which
//! need packets to go unacknowledged, are checked on the sockets themselves (walcache-cdc's
//! tests) and on the connection settings (`connect`'s unit tests).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use walcache_protocol::{HeartbeatDetails, Naming};
use walcache_testkit::{PgServer, RedisServer, TcpProxy};
use walcached::config::Config;
use walcached::connect::{redis_client, Postgres, STATEMENT_TIMEOUT};
use walcached::publisher::{Publisher, REDIS_TIMEOUT};
use walcached::refresh::{run_cycle, RefreshConfig, RefreshProgress};

/// Slack for a timeout to be noticed and reported on a busy machine.
const SLACK: Duration = Duration::from_secs(2);

fn config(pg_url: &str, redis_url: &str) -> Config {
    let text = format!(
        r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"

[http]
listen = ""

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{{id}}"]
"#
    );
    Config::parse(&text, &HashMap::new()).expect("config")
}

/// Asserts that `elapsed` is the timeout `limit` firing: not before it, and not much after.
fn assert_fired_at(elapsed: Duration, limit: Duration, what: &str) {
    assert!(
        elapsed >= limit - Duration::from_millis(100) && elapsed < limit + SLACK,
        "{what} ended after {elapsed:?}, expected about {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_session_statements_time_out_after_5_seconds() {
    let pg = PgServer::start().expect("postgres");
    // Redis is not contacted here.
    let postgres =
        Postgres::from_config(&config(&pg.url("postgres"), "redis://127.0.0.1:1/")).unwrap();
    let control = postgres.connect("walcached-test").await.expect("connect");
    let row = control
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "5s");

    let started = Instant::now();
    let err = control
        .batch_execute("SELECT pg_sleep(10)")
        .await
        .expect_err("a 10 s statement outlives the timeout");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert_fired_at(started.elapsed(), STATEMENT_TIMEOUT, "pg_sleep(10)");
    // The session survives the cancelled statement.
    control
        .batch_execute("SELECT 1")
        .await
        .expect("still usable");
}

/// A publisher connected through a proxy to a fresh Redis.
async fn publisher_through(proxy: &TcpProxy) -> (redis::Client, Publisher) {
    let client =
        redis_client(&config("postgres://w@127.0.0.1/app", &proxy.redis_url())).expect("client");
    let publisher = Publisher::connect(
        &client,
        Naming::default(),
        rand::random(),
        256 * 1024,
        REDIS_TIMEOUT,
        &[],
    )
    .await
    .expect("connect");
    (client, publisher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_calls_into_a_blackhole_time_out() {
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let (_client, mut publisher) = publisher_through(&proxy).await;
    publisher
        .heartbeat(HeartbeatDetails::default(), walcache_cdc::Lsn(0))
        .await
        .expect("healthy");

    proxy.set_blackhole(true);
    let started = Instant::now();
    let err = publisher
        .heartbeat(HeartbeatDetails::default(), walcache_cdc::Lsn(0))
        .await
        .expect_err("no reply through a blackhole");
    assert!(err.is_timeout(), "{err}");
    assert_fired_at(started.elapsed(), REDIS_TIMEOUT, "a heartbeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_reconnects_into_a_blackhole_time_out() {
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let (client, mut publisher) = publisher_through(&proxy).await;

    proxy.set_blackhole(true);
    let started = Instant::now();
    let err = publisher
        .reconnect(&client)
        .await
        .expect_err("no handshake through a blackhole");
    assert!(err.is_timeout(), "{err}");
    assert_fired_at(started.elapsed(), REDIS_TIMEOUT, "a reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_into_a_blackhole_times_out() {
    let redis = RedisServer::start().expect("redis");
    let proxy = TcpProxy::start(([127, 0, 0, 1], redis.port()).into()).expect("proxy");
    let client =
        redis_client(&config("postgres://w@127.0.0.1/app", &proxy.redis_url())).expect("client");
    let progress = RefreshProgress::default();
    run_cycle(
        &client,
        &Naming::default(),
        &["users".to_owned()],
        &RefreshConfig::default(),
        &progress,
    )
    .await
    .expect("healthy");

    proxy.set_blackhole(true);
    let started = Instant::now();
    let err = run_cycle(
        &client,
        &Naming::default(),
        &["users".to_owned()],
        &RefreshConfig::default(),
        &progress,
    )
    .await
    .expect_err("no reply through a blackhole");
    assert!(err.is_timeout(), "{err}");
    assert_fired_at(started.elapsed(), REDIS_TIMEOUT, "a refresh cycle");
}

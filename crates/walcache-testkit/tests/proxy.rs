//! The fault-injecting TCP proxy in front of a real Redis.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use walcache_testkit::{unique_prefix, wait_until, wait_until_blocking, RedisServer, TcpProxy};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const DEADLINE: Duration = Duration::from_secs(5);

fn addr(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port()))
}

fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

#[test]
fn forwards_commands_and_closes_connections_when_dropped() -> TestResult {
    fn shareable<T: Send + Sync>() {}
    shareable::<TcpProxy>();
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    assert_eq!(proxy.addr().port(), proxy.port());
    assert_eq!(
        proxy.redis_url(),
        format!("redis://127.0.0.1:{}/", proxy.port())
    );

    let mut conn = redis::Client::open(proxy.redis_url())?.get_connection()?;
    let key = format!("{}:k", unique_prefix());
    redis::cmd("SET").arg(&key).arg("through").exec(&mut conn)?;
    let value: String = redis::cmd("GET").arg(&key).query(&mut conn)?;
    assert_eq!(value, "through");
    // The write went to the real server.
    let direct: String = redis::cmd("GET")
        .arg(&key)
        .query(&mut redis.client().get_connection()?)?;
    assert_eq!(direct, "through");

    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_open, 1);
    assert!(stats.bytes_forwarded > 0);
    assert_eq!(stats.resp_parse_errors, 0);

    drop(proxy);
    assert!(
        ping(&mut conn).is_err(),
        "the proxy's connections close with it"
    );
    Ok(())
}

#[tokio::test]
async fn latency_delays_both_directions() -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let mut conn = redis::Client::open(proxy.redis_url())?
        .get_multiplexed_async_connection()
        .await?;
    let latency = Duration::from_millis(50);
    proxy.set_latency(latency);
    let start = Instant::now();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    let elapsed = start.elapsed();
    assert_eq!(pong, "PONG");
    assert!(elapsed >= 2 * latency, "round trip took {elapsed:?}");

    proxy.set_latency(Duration::ZERO);
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    Ok(())
}

#[test]
fn reset_all_breaks_open_connections_only() -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let client = redis::Client::open(proxy.redis_url())?;
    let mut conn = client.get_connection()?;
    assert_eq!(ping(&mut conn)?, "PONG");

    assert_eq!(proxy.reset_all(), 1);
    assert!(ping(&mut conn).is_err(), "a reset connection fails");
    wait_until_blocking("the reset connection to close", DEADLINE, || {
        proxy.stats().connections_open == 0
    })?;

    let mut fresh = client.get_connection()?;
    assert_eq!(ping(&mut fresh)?, "PONG");
    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!(stats.connections_reset, 1);
    assert_eq!(stats.connections_open, 1);
    Ok(())
}

#[test]
fn blackhole_swallows_traffic_until_turned_off() -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let client = redis::Client::open(proxy.redis_url())?;
    let mut conn = client.get_connection()?;
    assert_eq!(ping(&mut conn)?, "PONG");

    proxy.set_blackhole(true);
    conn.set_read_timeout(Some(Duration::from_millis(300)))?;
    let err = ping(&mut conn).expect_err("no reply through a blackhole");
    assert!(err.is_timeout(), "{err}");
    wait_until_blocking("the PING to be discarded", DEADLINE, || {
        proxy.stats().bytes_discarded > 0
    })?;
    assert_eq!(
        proxy.stats().connections_open,
        1,
        "the connection stays open"
    );

    proxy.set_blackhole(false);
    assert_eq!(proxy.reset_all(), 1);
    let mut fresh = client.get_connection()?;
    assert_eq!(ping(&mut fresh)?, "PONG");
    Ok(())
}

/// Subscribes through the proxy, drops 5 messages, then lets one through.
fn drops_pubsub_messages(protocol: &str) -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let client = redis::Client::open(format!("{}?protocol={protocol}", proxy.redis_url()))?;
    let mut direct = redis.client().get_connection()?;
    let prefix = unique_prefix();
    let (channel, other) = (format!("{prefix}:a"), format!("{prefix}:b"));
    let publish = |conn: &mut redis::Connection, channel: &str, payload: &str| {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query::<i64>(conn)
    };

    let mut subscriber = client.get_connection()?;
    let mut pubsub = subscriber.as_pubsub();
    pubsub.set_read_timeout(Some(DEADLINE))?;
    pubsub.subscribe(&channel)?;
    let mut commands = client.get_connection()?;
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut commands)?;
    let expected = format!("resp={}", &protocol[4..]);
    assert!(info.contains(&expected), "{protocol}: {info}");

    proxy.set_drop_pubsub_messages(true);
    for i in 0..5 {
        assert_eq!(publish(&mut direct, &channel, &format!("lost {i}"))?, 1);
    }
    wait_until_blocking("5 messages to be dropped", DEADLINE, || {
        proxy.stats().pubsub_messages_dropped == 5
    })?;
    // Other connections are untouched, even when their replies look like messages.
    let key = format!("{prefix}:list");
    redis::cmd("RPUSH")
        .arg(&key)
        .arg(&["message", "ch", "x"])
        .exec(&mut commands)?;
    let list: Vec<String> = redis::cmd("LRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut commands)?;
    assert_eq!(list, ["message", "ch", "x"]);

    proxy.set_drop_pubsub_messages(false);
    assert_eq!(publish(&mut direct, &channel, "kept")?, 1);
    let message = pubsub.get_message()?;
    assert_eq!(message.get_channel_name(), channel);
    assert_eq!(
        message.get_payload::<String>()?,
        "kept",
        "the first to arrive"
    );

    // The subscription is still in step: a new subscription is confirmed and delivers.
    pubsub.subscribe(&other)?;
    assert_eq!(publish(&mut direct, &other, "other")?, 1);
    let message = pubsub.get_message()?;
    assert_eq!(message.get_channel_name(), other);
    assert_eq!(message.get_payload::<String>()?, "other");

    let stats = proxy.stats();
    assert_eq!(stats.pubsub_messages_dropped, 5);
    assert_eq!(stats.resp_parse_errors, 0);
    Ok(())
}

#[test]
fn drops_pubsub_messages_resp2() -> TestResult {
    drops_pubsub_messages("resp2")
}

#[test]
fn drops_pubsub_messages_resp3() -> TestResult {
    drops_pubsub_messages("resp3")
}

#[tokio::test]
async fn works_from_an_async_caller_and_counts_connections() -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let client = redis::Client::open(proxy.redis_url())?;
    let mut a = client.get_multiplexed_async_connection().await?;
    let _b = client.get_multiplexed_async_connection().await?;
    wait_until("2 open connections", DEADLINE, || async {
        proxy.stats().connections_open == 2
    })
    .await?;
    assert_eq!(proxy.reset_all(), 2);
    assert!(redis::cmd("PING")
        .query_async::<String>(&mut a)
        .await
        .is_err());
    wait_until("the connections to close", DEADLINE, || async {
        proxy.stats().connections_open == 0
    })
    .await?;
    Ok(())
}

#[test]
fn reset_all_sends_an_rst() -> TestResult {
    let redis = RedisServer::start()?;
    let proxy = TcpProxy::start(addr(&redis))?;
    let mut socket = TcpStream::connect(proxy.addr())?;
    socket.set_read_timeout(Some(DEADLINE))?;
    socket.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = [0; 7];
    socket.read_exact(&mut reply)?;
    assert_eq!(&reply, b"+PONG\r\n");

    assert_eq!(proxy.reset_all(), 1);
    let mut buf = [0; 16];
    let err = socket
        .read(&mut buf)
        .expect_err("an RST, not an end of stream");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    Ok(())
}

/// Bytes that are not RESP, in both directions, pass through unchanged and in order.
#[test]
fn forwards_other_protocols_as_they_are() -> TestResult {
    let upstream = TcpListener::bind("127.0.0.1:0")?;
    let proxy = TcpProxy::start(upstream.local_addr()?)?;
    proxy.set_drop_pubsub_messages(true);
    let mut client = TcpStream::connect(proxy.addr())?;
    client.set_read_timeout(Some(DEADLINE))?;
    let (mut server, _) = upstream.accept()?;
    server.set_read_timeout(Some(DEADLINE))?;

    // Looks like RESP from the server, but the client did not speak RESP first.
    let hello = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n";
    server.write_all(hello)?;
    let mut got = vec![0; hello.len()];
    client.read_exact(&mut got)?;
    assert_eq!(got, hello);

    let request: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    client.write_all(&request)?;
    let mut got = vec![0; request.len()];
    server.read_exact(&mut got)?;
    assert_eq!(got, request);

    // Half-close propagates: the server sees the end of the client's stream.
    client.shutdown(std::net::Shutdown::Write)?;
    assert_eq!(server.read(&mut [0; 1])?, 0);
    let stats = proxy.stats();
    assert_eq!(stats.pubsub_messages_dropped, 0);
    assert_eq!(stats.resp_parse_errors, 0);
    Ok(())
}

/// A RESP connection on which the server sends something that is not RESP: forwarded raw.
#[test]
fn invalid_replies_are_forwarded_raw() -> TestResult {
    let upstream = TcpListener::bind("127.0.0.1:0")?;
    let proxy = TcpProxy::start(upstream.local_addr()?)?;
    let mut client = TcpStream::connect(proxy.addr())?;
    client.set_read_timeout(Some(DEADLINE))?;
    let subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n";
    client.write_all(subscribe)?;
    let (mut server, _) = upstream.accept()?;
    server.set_read_timeout(Some(DEADLINE))?;
    server.read_exact(&mut vec![0; subscribe.len()])?;

    let reply = b"+OK\r\n\x00not resp\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n";
    proxy.set_drop_pubsub_messages(true);
    server.write_all(reply)?;
    let mut got = vec![0; reply.len()];
    client.read_exact(&mut got)?;
    assert_eq!(got, reply);
    assert_eq!(proxy.stats().resp_parse_errors, 1);
    Ok(())
}

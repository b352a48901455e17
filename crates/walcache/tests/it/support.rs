//! Shared test support: a metrics recorder the tests can read, a stand-in for the daemon's
//! publisher (the real daemon is its own crate), and handle constructors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use walcache::Walcache;
use walcache_protocol::{Body, HeartbeatDetails, KeyRef, Message, Naming};
use walcache_testkit::{wait_until, RedisServer};

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A global recorder whose counters can be read without resetting them.
#[derive(Default)]
pub(crate) struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Gauges as `f64` bits (how `metrics` stores a gauge in an `AtomicU64`).
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().unwrap();
        let c = Arc::clone(map.entry(render(key)).or_default());
        Counter::from_arc(c)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut map = self.gauges.lock().unwrap();
        let g = Arc::clone(map.entry(render(key)).or_default());
        Gauge::from_arc(g)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();

/// Install the recorder (once per process) before any cache is built.
pub(crate) fn recorder() -> &'static TestRecorder {
    RECORDER.get_or_init(|| {
        let r: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).expect("no other recorder in the test binary");
        r
    })
}

impl TestRecorder {
    /// The value of counter `name` with exactly these labels (0 if never registered).
    ///
    /// The recorder is process-wide, and plain `cargo test` runs every test of the binary in
    /// one process: read only counters labelled with a namespace of the test's own
    /// ([`namespace`]). For counters without one (L1 flushes, undecodable messages), count on
    /// the handle instead (`Walcache::test_hooks().count`).
    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(&series(name, labels))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// The value of gauge `name` with exactly these labels (0 if never registered); the same
    /// caveat as [`counter`](Self::counter).
    pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.gauges
            .lock()
            .unwrap()
            .get(&series(name, labels))
            .map_or(0.0, |g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

static NS: AtomicUsize = AtomicUsize::new(0);

/// A namespace unique within the process (tests share a Redis only within one test).
pub(crate) fn namespace(base: &str) -> String {
    format!("{base}-{}", NS.fetch_add(1, Ordering::Relaxed))
}

/// A handle with no Redis and no invalidation stream: L1 only, always live.
pub(crate) async fn l1_only_handle() -> Walcache {
    Walcache::builder()
        .allow_unsigned()
        .without_invalidation_stream()
        .build()
        .await
        .expect("an L1-only handle")
}

/// Builder defaults for tests: short timeouts so failure paths finish quickly.
pub(crate) fn builder(redis: &RedisServer) -> walcache::WalcacheBuilder {
    Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .redis_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .heartbeat_timeout(Duration::from_secs(30))
}

/// Stand-in for walcached's publisher: same wire format, same "delete, then announce in one
/// script" order, sequence numbers and heartbeats under the test's control.
pub(crate) struct Publisher {
    conn: redis::aio::MultiplexedConnection,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    naming: Naming,
    /// Signs every message with the first key, as a daemon with signing keys does.
    pub(crate) keys: Option<walcache_protocol::Keyring>,
    /// The last send time used (µs): the daemon's send times strictly increase in an epoch.
    last_sent: i64,
}

impl Publisher {
    pub(crate) async fn new(redis: &RedisServer) -> Publisher {
        let conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("publisher connection");
        Publisher {
            conn,
            epoch: rand::random(),
            seq: 0,
            naming: Naming::default(),
            keys: None,
            last_sent: 0,
        }
    }

    /// `m` with the next send time, encoded (and signed, with keys) for the daemon's channel.
    pub(crate) fn seal(&mut self, mut m: Message) -> Vec<u8> {
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap();
        self.last_sent = now.max(self.last_sent + 1);
        m.sent_at_micros = self.last_sent;
        match &self.keys {
            Some(k) => k.sign(&m, &self.naming.invalidation_channel()),
            None => m.encode(),
        }
    }

    /// The bytes of the next heartbeat, without publishing them.
    pub(crate) fn heartbeat_bytes(&mut self) -> Vec<u8> {
        let m = Message::new(
            self.epoch,
            self.seq,
            Body::Heartbeat {
                last_data_seq: self.seq,
                details: None,
            },
        );
        self.seal(m)
    }

    pub(crate) async fn publish_raw(&mut self, bytes: &[u8]) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.naming.invalidation_channel())
            .arg(bytes)
            .query_async(&mut self.conn)
            .await
            .expect("publish");
    }

    pub(crate) async fn heartbeat(&mut self) {
        let bytes = self.heartbeat_bytes();
        self.publish_raw(&bytes).await;
    }

    /// A heartbeat with details (wire v1.2): what the daemon certifies, what it reports out
    /// of service, and its full-refresh interval.
    pub(crate) async fn heartbeat_with(&mut self, details: HeartbeatDetails) {
        let m = Message::new(
            self.epoch,
            self.seq,
            Body::Heartbeat {
                last_data_seq: self.seq,
                details: Some(details),
            },
        );
        let bytes = self.seal(m);
        self.publish_raw(&bytes).await;
    }

    /// Delete the keys under every schema of the namespace's current generation, then
    /// announce them with the next sequence number — atomically, as the daemon does.
    pub(crate) async fn invalidate(&mut self, namespace: &str, keys: &[&str]) {
        self.seq += 1;
        let m = Message::new(
            self.epoch,
            self.seq,
            Body::Keys(
                keys.iter()
                    .map(|k| KeyRef {
                        namespace: namespace.to_owned(),
                        key: (*k).to_owned(),
                    })
                    .collect(),
            ),
        );
        let script = redis::Script::new(
            r"local g = redis.call('GET', KEYS[1]) or '0'
local schemas = redis.call('SMEMBERS', KEYS[2])
for i = 3, #ARGV do
  for _, s in ipairs(schemas) do redis.call('DEL', ARGV[1] .. g .. ':s' .. s .. ':' .. ARGV[i]) end
end
return redis.call('PUBLISH', ARGV[2], ARGV[3])",
        );
        let bytes = self.seal(m);
        let mut inv = script.prepare_invoke();
        inv.key(self.naming.generation_key(namespace))
            .key(self.naming.schemas_key(namespace))
            .arg(self.naming.value_key_prefix(namespace))
            .arg(self.naming.invalidation_channel())
            .arg(bytes);
        for k in keys {
            inv.arg(*k);
        }
        let _: i64 = inv.invoke_async(&mut self.conn).await.expect("invalidate");
    }

    /// Skip a sequence number, as if a message was lost.
    pub(crate) fn lose_one(&mut self) {
        self.seq += 1;
    }
}

/// Make the handle live: heartbeat until it says so.
pub(crate) async fn make_live(handle: &Walcache, publisher: &mut Publisher) {
    for _ in 0..1000 {
        publisher.heartbeat().await;
        if wait_until("stream live", Duration::from_millis(20), || async {
            handle.is_live()
        })
        .await
        .is_ok()
        {
            return;
        }
    }
    panic!("the handle never became live");
}

/// A plain connection for looking behind the cache's back.
async fn raw_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// The value key of `key` under the namespace's current generation and schema 1.
async fn raw_key(
    conn: &mut redis::aio::MultiplexedConnection,
    namespace: &str,
    key: &str,
) -> String {
    let naming = Naming::default();
    let g: Option<u64> = redis::cmd("GET")
        .arg(naming.generation_key(namespace))
        .query_async(conn)
        .await
        .expect("GET generation");
    naming.value_key(namespace, g.unwrap_or(0), 1, key)
}

/// What Redis holds for a cache key.
pub(crate) async fn raw_get(redis: &RedisServer, namespace: &str, key: &str) -> Option<Vec<u8>> {
    let mut conn = raw_conn(redis).await;
    let k = raw_key(&mut conn, namespace, key).await;
    redis::cmd("GET")
        .arg(k)
        .query_async(&mut conn)
        .await
        .expect("GET value")
}

/// Write bytes under a cache key, as something other than walcache might.
pub(crate) async fn raw_set(redis: &RedisServer, namespace: &str, key: &str, bytes: &[u8]) {
    let mut conn = raw_conn(redis).await;
    let k = raw_key(&mut conn, namespace, key).await;
    let _: () = redis::cmd("SET")
        .arg(k)
        .arg(bytes)
        .query_async(&mut conn)
        .await
        .expect("SET");
}

/// A bare `DEL` of a cache key; returns how many keys it removed.
pub(crate) async fn raw_del(redis: &RedisServer, namespace: &str, key: &str) -> i64 {
    let mut conn = raw_conn(redis).await;
    let k = raw_key(&mut conn, namespace, key).await;
    redis::cmd("DEL")
        .arg(k)
        .query_async(&mut conn)
        .await
        .expect("DEL")
}

/// `n` handles on one Redis, each with its own connections (as separate processes), all live.
pub(crate) async fn live_handles(redis: &RedisServer, n: usize) -> (Publisher, Vec<Walcache>) {
    let mut publisher = Publisher::new(redis).await;
    let mut handles = Vec::new();
    for _ in 0..n {
        let h = builder(redis).build().await.expect("handle");
        make_live(&h, &mut publisher).await;
        handles.push(h);
    }
    (publisher, handles)
}

/// A loader error for tests.
#[derive(Debug, thiserror::Error)]
#[error("test loader failed")]
pub(crate) struct LoadError;

/// A loader that answers `v`.
pub(crate) fn value(
    v: &str,
) -> impl std::future::Future<Output = Result<String, LoadError>> + Send + 'static {
    let v = v.to_owned();
    async move { Ok(v) }
}

/// A loader that fails (the database is down).
pub(crate) async fn failing() -> Result<String, LoadError> {
    Err(LoadError)
}

/// A handle made live by `publisher`'s heartbeats.
pub(crate) async fn live_handle(redis: &RedisServer, publisher: &mut Publisher) -> Walcache {
    let h = builder(redis).build().await.expect("handle");
    make_live(&h, publisher).await;
    h
}

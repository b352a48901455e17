//! L2: the shared Redis tier. Every call has a timeout and goes through the circuit breaker.
//!
//! What a value key holds, as bytes (the *envelope*):
//!
//! | first byte | meaning | rest |
//! |---|---|---|
//! | `0x01` | a value | stamp (µs since the Unix epoch, u64 LE), tags length (u16 LE), the value's tags joined by `\n`, then the codec's bytes |
//! | `0x02` | a cached "not found" | stamp |
//! | `0x00` | a lease | `L` and the holder's random token |
//!
//! Anything else is *undecodable*: counted, treated as a miss, and overwritten by the next fill.
//!
//! The *stamp* is when the value's load began: the time the fill lease was taken (or the insert
//! ran), read inside the script from the Redis server's clock (`TIME`), never a service's, so
//! services whose clocks disagree still agree on it. The daemon's full refresh expires
//! everything stamped before a cycle began.
//!
//! **Tags** are scoped to the namespace. Each namespace keeps one hash
//! ([`Naming::tags_key`]) from tag to the time of its last invalidation (µs, `TIME`). A value
//! carrying tags is current only if every one of them was last invalidated *before* its stamp;
//! a read checks that (with the value, in one script, when the caller names the tags), so a tag
//! invalidation is one `HSET` whatever the number of values carrying the tag, and nothing it
//! depends on has a time-to-live that eviction could take. The hash's field `" now"` (a space
//! no tag can contain) is the namespace's clock for tags: every tagged lease and every tag
//! invalidation moves it strictly forward and takes its time from it, so the order of stamps
//! and invalidation times is the order in which Redis ran them even if the server's clock
//! steps back. Its field `" ttl"` is the longest time-to-live (ms) a tagged value of the
//! namespace was given, recorded by each tagged lease and insert before the value exists.
//!
//! A tag's field may go once no value it could make stale can still be read: every such value
//! was stamped before it, landed within [`MAX_LEASE_TTL`](walcache_protocol::MAX_LEASE_TTL)
//! of its stamp (or never: its lease expired) and expired `" ttl"` after that. So each tag
//! invalidation (the library's and the daemon's) also examines a few fields from a cursor
//! kept in `" cursor"` and deletes those older than `now − (" ttl" + MAX_LEASE_TTL)`: the
//! hash holds about the tags invalidated within one time-to-live, whatever tags come and go.
//! A flush of the namespace leaves it alone: a process that has not yet heard of the flush
//! still reads the old generation, whose values the versions must keep judging.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use walcache_protocol::Naming;

use crate::breaker::Breaker;
use crate::error::{Error, ErrorKind};
use crate::metrics as m;

const TAG_VALUE: u8 = 0x01;
const TAG_NEGATIVE: u8 = 0x02;
const TAG_LEASE: u8 = 0x00;
/// Tag byte and stamp: the part every envelope kind shares (the daemon's refresh reads it).
const HEADER_LEN: usize = 9;
/// A value envelope's fixed part: the header and the tags length.
const VALUE_HEADER_LEN: usize = HEADER_LEN + 2;
/// Tags are printable ASCII without whitespace, so a newline separates them unambiguously.
const TAG_SEPARATOR: u8 = b'\n';

/// What a read of a value key found.
#[derive(Debug)]
pub enum Found {
    /// No such key.
    Miss,
    /// A value envelope, whole (see [`split_value`]).
    Value(Vec<u8>),
    /// A value one of whose tags was invalidated after its stamp, whole: a miss, and a fill
    /// may replace exactly these bytes.
    Superseded(Vec<u8>),
    /// A cached "not found", whole.
    Negative(Vec<u8>),
    /// A fill lease: another process is loading the value.
    Lease,
    /// Bytes that are not an envelope; kept so that a fill may replace exactly them.
    Undecodable(Vec<u8>),
}

/// Classifies what a value key holds: a value (well-formed: see [`split_value`]), a cached
/// "not found", a lease, or undecodable bytes. Never [`Found::Miss`] or [`Found::Superseded`],
/// which only a read decides.
pub fn parse_envelope(bytes: Vec<u8>) -> Found {
    match bytes.first() {
        Some(&TAG_VALUE) if split_value(&bytes).is_some() => Found::Value(bytes),
        Some(&TAG_NEGATIVE) if bytes.len() == HEADER_LEN => Found::Negative(bytes),
        Some(&TAG_LEASE) if bytes.get(1) == Some(&b'L') => Found::Lease,
        _ => Found::Undecodable(bytes),
    }
}

/// The tags and the codec's bytes inside a value envelope; `None` if it is malformed.
pub fn split_value(envelope: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let len_bytes = envelope.get(HEADER_LEN..VALUE_HEADER_LEN)?;
    let tags_len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    let tags = envelope.get(VALUE_HEADER_LEN..VALUE_HEADER_LEN + tags_len)?;
    let payload = envelope.get(VALUE_HEADER_LEN + tags_len..)?;
    let tags = if tags.is_empty() {
        Vec::new()
    } else {
        tags.split(|b| *b == TAG_SEPARATOR)
            .map(|t| std::str::from_utf8(t).ok().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?
    };
    Some((tags, payload))
}

/// The stamp of an envelope ([`Found::Value`] or [`Found::Negative`] bytes), µs since the
/// Unix epoch on the Redis server's clock.
pub fn stamp_of(envelope: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = envelope.get(1..HEADER_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Whether a value stamped `stamp` is current: each of its tags was last invalidated before
/// it (`versions`, µs; 0 for a tag never invalidated or pruned).
pub(crate) fn tags_current(stamp: u64, versions: &[u64]) -> bool {
    versions.iter().all(|v| *v < stamp)
}

/// A value envelope stamped `stamp` (µs, from the lease). Tags longer than 64 KiB in total are
/// a caller error, refused earlier (see `MAX_TAG_BYTES` in the cache).
pub fn value_envelope(payload: &[u8], tags: &[String], stamp: u64) -> Vec<u8> {
    let tags_len: usize = tags
        .iter()
        .map(|t| t.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    let tags_len_u16 = u16::try_from(tags_len).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(VALUE_HEADER_LEN + tags_len + payload.len());
    out.push(TAG_VALUE);
    out.extend_from_slice(&stamp.to_le_bytes());
    out.extend_from_slice(&tags_len_u16.to_le_bytes());
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            out.push(TAG_SEPARATOR);
        }
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A cached "not found" stamped `stamp` (µs, from the lease).
pub fn negative_envelope(stamp: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.push(TAG_NEGATIVE);
    out.extend_from_slice(&stamp.to_le_bytes());
    out
}

pub(crate) fn new_lease() -> Vec<u8> {
    let token: u128 = rand::random();
    let mut out = vec![TAG_LEASE, b'L'];
    out.extend_from_slice(format!("{token:032x}").as_bytes());
    out
}

/// The Redis-side names of one cache: its namespace and value-schema version.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    generation_key: String,
    schemas_key: String,
    tags_key: String,
    /// `wc:{ns}:g`: a value key is this + generation + `:s` + schema + `:` + key.
    value_prefix: String,
    /// `:s{schema}:`
    schema_infix: String,
    schema: u32,
}

impl Names {
    pub(crate) fn new(naming: &Naming, namespace: &str, schema: u32) -> Self {
        Names {
            generation_key: naming.generation_key(namespace),
            schemas_key: naming.schemas_key(namespace),
            tags_key: naming.tags_key(namespace),
            value_prefix: naming.value_key_prefix(namespace),
            schema_infix: format!(":s{schema}:"),
            schema,
        }
    }

    /// The same bytes as [`Naming::value_key`], built from the parts resolved once in
    /// [`Names::new`] into one allocation (this runs on every L2 read).
    pub(crate) fn value_key(&self, generation: u64, key: &str) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(
            self.value_prefix.len() + 20 + self.schema_infix.len() + key.len(),
        );
        s.push_str(&self.value_prefix);
        let _ = write!(s, "{generation}");
        s.push_str(&self.schema_infix);
        s.push_str(key);
        s
    }

    fn suffix(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.schema_infix.len() + key.len());
        s.push_str(&self.schema_infix);
        s.push_str(key);
        s
    }
}

/// A fill lease: the key it is on, the random token the fill's compare-and-set must still find
/// there, and the stamp of the value it will store.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    names: Arc<Names>,
    key: Arc<str>,
    /// The generation of the value key it is on: `None` until the script that takes the lease
    /// says which (it uses the namespace's generation in Redis at that moment).
    pub(crate) generation: Option<u64>,
    pub(crate) token: Vec<u8>,
    /// When the lease was taken (µs, the Redis server's clock): the value's stamp.
    pub(crate) stamp: u64,
}

impl Lease {
    /// A lease on `key` with a fresh random token, not yet taken.
    pub(crate) fn prepare(names: &Arc<Names>, key: &Arc<str>) -> Self {
        Lease {
            names: Arc::clone(names),
            key: Arc::clone(key),
            generation: None,
            token: new_lease(),
            stamp: 0,
        }
    }
}

/// What [`L2::read_or_lease`] found or took.
#[derive(Debug)]
pub(crate) enum LeaseOutcome {
    /// The key was free (or held exactly the bytes the caller may replace): the lease is ours.
    Won(Lease),
    /// The key holds something (a value, another's lease, undecodable bytes), validated
    /// against its tags' versions.
    Present(Found),
}

/// How a fill's compare-and-set ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillOutcome {
    Stored,
    /// The key no longer holds our lease: it was invalidated (or the lease expired).
    LeaseLost,
    /// The namespace was flushed, or one of the value's tags invalidated, during the load.
    Raced,
}

/// The operations timed in `walcache_l2_duration_seconds{op}`.
const OPS: [&str; 12] = [
    "get",
    "get_with_generation",
    "tag_versions",
    "lease",
    "fill",
    "release",
    "insert",
    "invalidate",
    "invalidate_tag",
    "flush",
    "bypass_acquire",
    "bypass_release",
];

struct Scripts {
    read: Script,
    lease: Script,
    fill: Script,
    release: Script,
    insert: Script,
    invalidate_keys: Script,
    invalidate_tag: Script,
    flush: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            // KEYS: generation, tags. ARGV: value prefix, key suffix, the generation if known
            // ('' = read it), then tags whose versions to return with the value.
            read: Script::new(
                r"local g = ARGV[3]
if g == '' then g = redis.call('GET', KEYS[1]) or '0' end
local out = {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}
if #ARGV > 3 then
  local v = redis.call('HMGET', KEYS[2], unpack(ARGV, 4))
  for i = 1, #v do out[2 + i] = v[i] or '0' end
end
return out",
            ),
            // The miss path's one round trip. KEYS: generation, schemas, tags. ARGV: value
            // prefix, key suffix, lease, lease ttl (ms), bytes it may replace ('' = none),
            // schema, the value's ttl (ms) if it will carry tags ('0': untagged; a tagged stamp
            // comes from the namespace's tag clock, and the ttl is recorded first), then tags
            // whose versions to return with a value found. At the namespace's generation now:
            // {2, generation, what the key holds, versions...}, or the lease is taken and
            // {1, generation, stamp}.
            lease: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local k = ARGV[1] .. g .. ARGV[2]
local cur = redis.call('GET', k)
if cur and not (ARGV[5] ~= '' and cur == ARGV[5]) then
  local out = {2, g, cur}
  if #ARGV > 7 then
    local v = redis.call('HMGET', KEYS[3], unpack(ARGV, 8))
    for i = 1, #v do out[3 + i] = v[i] or '0' end
  end
  return out
end
redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  local clock = redis.call('HMGET', KEYS[3], ' now', ' ttl')
  now = math.max(now, (tonumber(clock[1]) or 0) + 1)
  redis.call('HSET', KEYS[3], ' now', string.format('%.0f', now), ' ttl', string.format('%.0f', math.max(ttl, tonumber(clock[2]) or 0)))
end
return {1, g, string.format('%.0f', now)}",
            ),
            // KEYS: value, generation, tags. ARGV: lease, envelope, ttl (ms), generation,
            // stamp (µs), then the value's tags.
            fill: Script::new(
                r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then redis.call('DEL', KEYS[1]) return -1 end
if #ARGV > 5 then
  local stamp = tonumber(ARGV[5])
  local v = redis.call('HMGET', KEYS[3], unpack(ARGV, 6))
  for i = 1, #v do
    if v[i] and tonumber(v[i]) >= stamp then redis.call('DEL', KEYS[1]) return -2 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1",
            ),
            // KEYS: generation. ARGV: value prefix, key suffix, lease, the lease's generation
            // ('' = not known: the namespace's generation now).
            release: Script::new(
                r"local g = ARGV[4]
if g == '' then g = redis.call('GET', KEYS[1]) or '0' end
local k = ARGV[1] .. g .. ARGV[2]
if redis.call('GET', k) == ARGV[3] then return redis.call('DEL', k) end
return 0",
            ),
            // KEYS: generation, schemas, tags. ARGV: value prefix, key suffix, envelope (its
            // stamp is written here), ttl (ms), schema, tagged ('1' or '0').
            insert: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[6] == '1' then
  local clock = redis.call('HMGET', KEYS[3], ' now', ' ttl')
  now = math.max(now, (tonumber(clock[1]) or 0) + 1)
  redis.call('HSET', KEYS[3], ' now', string.format('%.0f', now), ' ttl', string.format('%.0f', math.max(tonumber(ARGV[4]), tonumber(clock[2]) or 0)))
end
local stamp, n = '', now
for i = 1, 8 do
  stamp = stamp .. string.char(n % 256)
  n = math.floor(n / 256)
end
local env = ARGV[3]
redis.call('SET', ARGV[1] .. g .. ARGV[2], string.sub(env, 1, 1) .. stamp .. string.sub(env, 10), 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return g",
            ),
            invalidate_keys: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local schemas = redis.call('SMEMBERS', KEYS[2])
for i = 4, #ARGV do
  for _, s in ipairs(schemas) do
    redis.call('DEL', ARGV[1] .. g .. ':s' .. s .. ':' .. ARGV[i])
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1",
            ),
            // KEYS: tags. ARGV: channel, message, tag, max lease ttl (ms). The tag's time moves
            // past the namespace's tag clock (and past its own), so it follows every stamp
            // taken before; then a few fields too old to matter go (see the module docs).
            invalidate_tag: Script::new(
                r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], ' now', ' ttl', ' cursor', ARGV[3])
local v = math.max(now, (tonumber(h[1]) or 0) + 1, (tonumber(h[4]) or 0) + 1)
redis.call('HSET', KEYS[1], ARGV[3], string.format('%.0f', v), ' now', string.format('%.0f', v))
local horizon = now - ((tonumber(h[2]) or 0) + tonumber(ARGV[4])) * 1000
local page = redis.call('HSCAN', KEYS[1], h[3] or '0', 'COUNT', 16)
for i = 1, #page[2], 2 do
  local f = page[2][i]
  if string.byte(f, 1) ~= 32 and (tonumber(page[2][i + 1]) or 0) < horizon then
    redis.call('HDEL', KEYS[1], f)
  end
end
redis.call('HSET', KEYS[1], ' cursor', page[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1",
            ),
            flush: Script::new(
                r"local g = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return g",
            ),
        }
    }
}

/// The Redis tier: one multiplexed, self-reconnecting connection for commands, a timeout on
/// every call, and the circuit breaker.
pub(crate) struct L2 {
    conn: ConnectionManager,
    timeout: Duration,
    lease_ttl: Duration,
    pub(crate) breaker: Breaker,
    scripts: Scripts,
    /// The latency histogram of each operation, resolved once (not a registry lookup per call).
    timers: Vec<(&'static str, metrics::Histogram)>,
    pub(crate) naming: Naming,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn string_of(v: &Value) -> Option<String> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok().map(str::to_owned))
}

fn protocol_error(what: &'static str) -> Error {
    Error::new(ErrorKind::Redis)
        .with_message(format!("unexpected reply from a walcache script: {what}"))
}

fn parse_generation(s: &str) -> Result<u64, Error> {
    s.parse::<u64>()
        .map_err(|_| protocol_error("the namespace generation is not an integer"))
}

impl L2 {
    pub(crate) async fn connect(
        client: redis::Client,
        timeout: Duration,
        connect_timeout: Duration,
        lease_ttl: Duration,
        breaker: Breaker,
        naming: Naming,
    ) -> Result<Self, Error> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            connect_timeout + timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| Error::timeout().with_message("connecting to redis"))?
        .map_err(|e| Error::redis(e).with_message("connecting to redis"))?;
        Ok(L2 {
            conn,
            timeout,
            lease_ttl,
            breaker,
            scripts: Scripts::new(),
            timers: OPS
                .iter()
                .map(|op| {
                    (
                        *op,
                        metrics::histogram!(m::L2_DURATION_SECONDS, "op" => *op),
                    )
                })
                .collect(),
            naming,
        })
    }

    /// Run one Redis call under the breaker and the timeout, with metrics.
    pub(crate) async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T, Error>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let Some(admission) = self.breaker.admit() else {
            metrics::counter!(m::L2_ERRORS_TOTAL, "op" => op, "kind" => "breaker_open")
                .increment(1);
            return Err(Error::new(ErrorKind::BreakerOpen));
        };
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        match self.timers.iter().find(|(o, _)| *o == op) {
            Some((_, h)) => h.record(start.elapsed()),
            None => metrics::histogram!(m::L2_DURATION_SECONDS, "op" => op).record(start.elapsed()),
        }
        match result {
            Ok(Ok(v)) => {
                admission.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                let err = Error::redis(e);
                let kind = if err.kind() == ErrorKind::Timeout {
                    "timeout"
                } else {
                    "error"
                };
                metrics::counter!(m::L2_ERRORS_TOTAL, "op" => op, "kind" => kind).increment(1);
                admission.failure();
                Err(err)
            }
            Err(_) => {
                metrics::counter!(m::L2_ERRORS_TOTAL, "op" => op, "kind" => "timeout").increment(1);
                admission.failure();
                Err(Error::timeout())
            }
        }
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Read a value with a known generation: one GET (and, for a value that carries tags, one
    /// `HMGET` of their versions: see [`validate`](Self::validate)).
    pub(crate) async fn get(&self, names: &Names, value_key: &str) -> Result<Found, Error> {
        let mut conn = self.conn();
        let reply: Option<Vec<u8>> = self
            .call("get", async move {
                redis::cmd("GET")
                    .arg(value_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let found = reply.map_or(Found::Miss, parse_envelope);
        self.validate(names, found, &[]).await
    }

    /// Read the value under `generation` (read it first, atomically, when `None`), with the
    /// versions of `tags` (the tags the caller expects the value to carry), in one round
    /// trip; without tags and with a known generation, exactly one GET. Returns the generation
    /// used and what was found, validated against its tags ([`validate`](Self::validate)).
    pub(crate) async fn read(
        &self,
        names: &Names,
        generation: Option<u64>,
        key: &str,
        tags: &[String],
    ) -> Result<(u64, Found), Error> {
        if let (Some(g), true) = (generation, tags.is_empty()) {
            return Ok((g, self.get(names, &names.value_key(g, key)).await?));
        }
        let mut conn = self.conn();
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(&names.generation_key)
            .key(&names.tags_key)
            .arg(&names.value_prefix)
            .arg(names.suffix(key))
            .arg(generation.map_or_else(String::new, |g| g.to_string()));
        for t in tags {
            inv.arg(t);
        }
        let reply: Vec<Value> = self
            .call("get_with_generation", async move {
                inv.invoke_async(&mut conn).await
            })
            .await?;
        let generation = reply
            .first()
            .and_then(string_of)
            .ok_or_else(|| protocol_error("read: missing generation"))?;
        let generation = parse_generation(&generation)?;
        let found = match reply.get(1).and_then(bytes_of) {
            Some(b) => parse_envelope(b.to_vec()),
            None => Found::Miss,
        };
        let versions = reply
            .get(2..)
            .unwrap_or_default()
            .iter()
            .map(|v| string_of(v).and_then(|s| s.parse::<u64>().ok()))
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| protocol_error("read: tag version"))?;
        if versions.len() != tags.len() {
            return Err(protocol_error("read: tag version count"));
        }
        let known: Vec<(&str, u64)> = tags.iter().map(String::as_str).zip(versions).collect();
        Ok((generation, self.validate(names, found, &known).await?))
    }

    /// A value whose tags were invalidated after its stamp becomes [`Found::Superseded`]. The
    /// versions of its tags come from `known` (read with it), the others from one `HMGET`.
    async fn validate(
        &self,
        names: &Names,
        found: Found,
        known: &[(&str, u64)],
    ) -> Result<Found, Error> {
        let Found::Value(bytes) = found else {
            return Ok(found);
        };
        // Most values carry no tags: one look at the tags length, no parse (this runs on every
        // L2 hit, and the caller splits the value once more to decode it).
        if bytes.get(HEADER_LEN..VALUE_HEADER_LEN) == Some(&[0, 0][..]) {
            return Ok(Found::Value(bytes));
        }
        let Some((tags, _)) = split_value(&bytes) else {
            return Ok(Found::Undecodable(bytes));
        };
        let mut versions = Vec::with_capacity(tags.len());
        let mut missing = Vec::new();
        for t in &tags {
            match known.iter().find(|(k, _)| k == t) {
                Some((_, v)) => versions.push(*v),
                None => missing.push(t.clone()),
            }
        }
        if !missing.is_empty() {
            versions.extend(self.tag_versions(names, &missing).await?);
        }
        let stamp = stamp_of(&bytes).unwrap_or(0);
        Ok(if tags_current(stamp, &versions) {
            Found::Value(bytes)
        } else {
            Found::Superseded(bytes)
        })
    }

    /// The versions of `tags` in the namespace (µs of each one's last invalidation; 0 for a
    /// tag never invalidated): one `HMGET`.
    pub(crate) async fn tag_versions(
        &self,
        names: &Names,
        tags: &[String],
    ) -> Result<Vec<u64>, Error> {
        let mut conn = self.conn();
        let key = names.tags_key.clone();
        let tags = tags.to_vec();
        let reply: Vec<Option<String>> = self
            .call("tag_versions", async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(tags)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        reply
            .into_iter()
            .map(|v| v.map_or(Ok(0), |s| s.parse::<u64>()))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(|_| protocol_error("a tag version is not an integer"))
    }

    /// The miss path's one round trip: what the key holds at the namespace's generation in
    /// Redis, or, when it holds nothing (or exactly the bytes `replace`: undecodable, or a
    /// value a tag invalidation superseded), the fill lease on it. Returns that generation.
    ///
    /// A value found comes validated against its tags: the versions of `tags` (the tags the
    /// caller expects it to carry) come back with it; any other tag it carries costs one
    /// `HMGET` more (see [`validate`](Self::validate)). A won lease carries the generation it
    /// is on and the stamp of the value it will store; for a value that will carry tags
    /// (`tagged_ttl`: the time-to-live it will be given), taken from the namespace's tag
    /// clock.
    ///
    /// `lease` is made by [`Lease::prepare`] before the call, so that a caller dropped while
    /// the script runs can still give it back.
    pub(crate) async fn read_or_lease(
        &self,
        names: &Names,
        key: &str,
        lease: &Lease,
        replace: Option<&[u8]>,
        tagged_ttl: Option<Duration>,
        tags: &[String],
    ) -> Result<(u64, LeaseOutcome), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(&names.generation_key)
            .key(&names.schemas_key)
            .key(&names.tags_key)
            .arg(&names.value_prefix)
            .arg(names.suffix(key))
            .arg(&lease.token)
            .arg(millis(self.lease_ttl))
            .arg(replace.unwrap_or(&[]))
            .arg(names.schema)
            .arg(tagged_ttl.map_or(0, millis));
        for t in tags {
            inv.arg(t);
        }
        let reply: Vec<Value> = self
            .call("lease", async move { inv.invoke_async(&mut conn).await })
            .await?;
        let status = reply
            .first()
            .and_then(int_of)
            .ok_or_else(|| protocol_error("lease: missing status"))?;
        let generation = reply
            .get(1)
            .and_then(string_of)
            .ok_or_else(|| protocol_error("lease: missing generation"))?;
        let generation = parse_generation(&generation)?;
        match status {
            1 => {
                let stamp = reply
                    .get(2)
                    .and_then(string_of)
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| protocol_error("lease: missing stamp"))?;
                Ok((
                    generation,
                    LeaseOutcome::Won(Lease {
                        generation: Some(generation),
                        stamp,
                        ..lease.clone()
                    }),
                ))
            }
            2 => {
                let cur = reply
                    .get(2)
                    .and_then(bytes_of)
                    .ok_or_else(|| protocol_error("lease: missing current value"))?;
                let versions = reply
                    .get(3..)
                    .unwrap_or_default()
                    .iter()
                    .map(|v| string_of(v).and_then(|s| s.parse::<u64>().ok()))
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| protocol_error("lease: tag version"))?;
                if versions.len() != tags.len() {
                    return Err(protocol_error("lease: tag version count"));
                }
                let known: Vec<(&str, u64)> =
                    tags.iter().map(String::as_str).zip(versions).collect();
                let found = self
                    .validate(names, parse_envelope(cur.to_vec()), &known)
                    .await?;
                Ok((generation, LeaseOutcome::Present(found)))
            }
            _ => Err(protocol_error("lease: unknown status")),
        }
    }

    /// The compare-and-set that ends a fill: store `envelope` (stamped with the lease's stamp)
    /// only if the key still holds our lease, the namespace generation is the one the lease
    /// was taken at, and none of `tags` was invalidated since the stamp.
    pub(crate) async fn fill(
        &self,
        lease: &Lease,
        envelope: &[u8],
        ttl: Duration,
        tags: &[String],
    ) -> Result<FillOutcome, Error> {
        let generation = lease
            .generation
            .ok_or_else(|| protocol_error("fill: a lease that was never taken"))?;
        let names = &lease.names;
        let mut conn = self.conn();
        let mut inv = self.scripts.fill.prepare_invoke();
        inv.key(names.value_key(generation, &lease.key))
            .key(&names.generation_key)
            .key(&names.tags_key)
            .arg(&lease.token)
            .arg(envelope)
            .arg(millis(ttl))
            .arg(generation)
            .arg(lease.stamp);
        for t in tags {
            inv.arg(t);
        }
        let reply: i64 = self
            .call("fill", async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(match reply {
            1 => FillOutcome::Stored,
            0 => FillOutcome::LeaseLost,
            _ => FillOutcome::Raced,
        })
    }

    /// Give a lease back: delete the key only if it still holds our token. A lease whose
    /// generation is not known (its caller was dropped while the script taking it ran) is
    /// looked for at the namespace's generation now; should that have moved, the lease sits
    /// on a generation nobody reads and expires.
    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let names = &lease.names;
        let mut conn = self.conn();
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&names.generation_key)
            .arg(&names.value_prefix)
            .arg(names.suffix(&lease.key))
            .arg(&lease.token)
            .arg(lease.generation.map_or_else(String::new, |g| g.to_string()));
        let _: i64 = self
            .call("release", async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Unconditional write of a value the caller knows to be current; `envelope`'s stamp is
    /// replaced by the time the script runs (for a `tagged` value, from the namespace's tag
    /// clock). Returns the generation written under.
    pub(crate) async fn insert(
        &self,
        names: &Names,
        key: &str,
        envelope: &[u8],
        ttl: Duration,
        tagged: bool,
    ) -> Result<u64, Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.insert.prepare_invoke();
        inv.key(&names.generation_key)
            .key(&names.schemas_key)
            .key(&names.tags_key)
            .arg(&names.value_prefix)
            .arg(names.suffix(key))
            .arg(envelope)
            .arg(millis(ttl))
            .arg(names.schema)
            .arg(if tagged { "1" } else { "0" });
        let reply: String = self
            .call("insert", async move { inv.invoke_async(&mut conn).await })
            .await?;
        parse_generation(&reply)
    }

    /// Delete keys (under every value schema in use) and announce it, in one script.
    pub(crate) async fn invalidate_keys(
        &self,
        names: &Names,
        keys: &[&str],
        message: &[u8],
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.invalidate_keys.prepare_invoke();
        inv.key(&names.generation_key)
            .key(&names.schemas_key)
            .arg(&names.value_prefix)
            .arg(self.naming.app_channel())
            .arg(message);
        for k in keys {
            inv.arg(*k);
        }
        let _: i64 = self
            .call(
                "invalidate",
                async move { inv.invoke_async(&mut conn).await },
            )
            .await?;
        Ok(())
    }

    /// Move the tag's version in the namespace past every stamp taken so far, and announce
    /// it, in one script: O(1) whatever the number of values carrying the tag.
    pub(crate) async fn invalidate_tag(
        &self,
        names: &Names,
        tag: &str,
        message: &[u8],
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.invalidate_tag.prepare_invoke();
        inv.key(&names.tags_key)
            .arg(self.naming.app_channel())
            .arg(message)
            .arg(tag)
            .arg(millis(walcache_protocol::MAX_LEASE_TTL));
        let _: i64 = self
            .call("invalidate_tag", async move {
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    /// Move the namespace to a new generation and announce it; returns the new generation.
    pub(crate) async fn flush(&self, names: &Names, message: &[u8]) -> Result<u64, Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.flush.prepare_invoke();
        inv.key(&names.generation_key)
            .arg(self.naming.app_channel())
            .arg(message);
        let g: i64 = self
            .call("flush", async move { inv.invoke_async(&mut conn).await })
            .await?;
        u64::try_from(g).map_err(|_| protocol_error("flush: negative generation"))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_undecodable() {
        match parse_envelope(value_envelope(b"abc", &[], 7)) {
            Found::Value(v) => assert_eq!(split_value(&v), Some((vec![], &b"abc"[..]))),
            other => panic!("unexpected {other:?}"),
        }
        let tags = vec!["users".to_owned(), "orders:7".to_owned()];
        match parse_envelope(value_envelope(b"", &tags, 1_700_000_000_000_000)) {
            Found::Value(v) => {
                assert_eq!(stamp_of(&v), Some(1_700_000_000_000_000));
                assert_eq!(split_value(&v), Some((tags, &b""[..])));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A tags length that runs past the end is not a value.
        let mut bad = value_envelope(b"", &[], 0);
        bad[9] = 200;
        assert!(matches!(parse_envelope(bad), Found::Undecodable(_)));
        assert!(matches!(
            parse_envelope(negative_envelope(5)),
            Found::Negative(_)
        ));
        assert!(matches!(parse_envelope(new_lease()), Found::Lease));
        for garbage in [
            &b""[..],
            b"\x01short",
            b"\x00X",
            b"hello",
            b"\x02123456789extra",
        ] {
            assert!(
                matches!(parse_envelope(garbage.to_vec()), Found::Undecodable(_)),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn a_value_is_current_only_if_every_tag_was_invalidated_before_its_stamp() {
        assert!(tags_current(100, &[]));
        assert!(tags_current(100, &[0, 99]));
        assert!(
            !tags_current(100, &[0, 100]),
            "an invalidation at the stamp wins"
        );
        assert!(!tags_current(100, &[101]));
    }

    #[test]
    fn script_key_layout_matches_the_shared_naming() {
        let naming = Naming::default();
        let names = Names::new(&naming, "users", 3);
        let built = format!("{}{}{}", names.value_prefix, 7, names.suffix("42"));
        assert_eq!(built, naming.value_key("users", 7, 3, "42"));
        // The invalidation script rebuilds the key from the schema number the same way.
        let rebuilt = format!("{}{}:s{}:{}", names.value_prefix, 7, 3, "42");
        assert_eq!(rebuilt, naming.value_key("users", 7, 3, "42"));
        // The read path's one-allocation builder gives exactly the shared naming's bytes.
        for (generation, key) in [(0, "42"), (7, "a:b"), (u64::MAX, "")] {
            assert_eq!(
                names.value_key(generation, key),
                naming.value_key("users", generation, 3, key)
            );
        }
        let prefixed = Naming::new("app").expect("a valid prefix");
        let names = Names::new(&prefixed, "orders", 12);
        assert_eq!(
            names.value_key(5, "9"),
            prefixed.value_key("orders", 5, 12, "9")
        );
    }
}

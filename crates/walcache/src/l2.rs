//! L2: the shared Redis tier. Every call has a timeout and goes through the circuit breaker.
//!
//! What a value key holds, as bytes (the *envelope*):
//!
//! | first byte | meaning | rest |
//! |---|---|---|
//! | `0x01` | a value | fill time (ms since the Unix epoch, u64 LE), tags length (u16 LE), the value's tags joined by `\n`, then the codec's bytes |
//! | `0x02` | a cached "not found" | fill time |
//! | `0x00` | a lease | `L` and the holder's random token |
//!
//! Anything else is *undecodable*: counted, treated as a miss, and overwritten by the next fill.
//! Fill times let the daemon's full refresh expire everything filled before a cycle began.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use walcache_protocol::Naming;

use crate::breaker::Breaker;
use crate::error::{Error, ErrorKind};
use crate::metrics as m;

const TAG_VALUE: u8 = 0x01;
const TAG_NEGATIVE: u8 = 0x02;
const TAG_LEASE: u8 = 0x00;
/// Tag byte and fill time: the part every envelope kind shares (the daemon's refresh reads it).
const HEADER_LEN: usize = 9;
/// A value envelope's fixed part: the header and the tags length.
const VALUE_HEADER_LEN: usize = HEADER_LEN + 2;
/// Tags are printable ASCII without whitespace, so a newline separates them unambiguously.
const TAG_SEPARATOR: u8 = b'\n';

/// What a read of a value key found.
#[derive(Debug)]
pub(crate) enum Found {
    Miss,
    /// A value envelope, whole (see [`payload`]).
    Value(Vec<u8>),
    /// A cached "not found", whole.
    Negative(Vec<u8>),
    Lease,
    /// Bytes that are not an envelope; kept so that a fill may replace exactly them.
    Undecodable(Vec<u8>),
}

pub(crate) fn parse_envelope(bytes: Vec<u8>) -> Found {
    match bytes.first() {
        Some(&TAG_VALUE) if split_value(&bytes).is_some() => Found::Value(bytes),
        Some(&TAG_NEGATIVE) if bytes.len() == HEADER_LEN => Found::Negative(bytes),
        Some(&TAG_LEASE) if bytes.get(1) == Some(&b'L') => Found::Lease,
        _ => Found::Undecodable(bytes),
    }
}

/// The tags and the codec's bytes inside a value envelope; `None` if it is malformed.
pub(crate) fn split_value(envelope: &[u8]) -> Option<(Vec<String>, &[u8])> {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A value envelope. Tags longer than 64 KiB in total are a caller error, refused earlier
/// (see `MAX_TAG_BYTES` in the cache).
pub(crate) fn value_envelope(payload: &[u8], tags: &[String]) -> Vec<u8> {
    let tags_len: usize = tags
        .iter()
        .map(|t| t.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    let tags_len_u16 = u16::try_from(tags_len).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(VALUE_HEADER_LEN + tags_len + payload.len());
    out.push(TAG_VALUE);
    out.extend_from_slice(&now_ms().to_le_bytes());
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

pub(crate) fn negative_envelope() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.push(TAG_NEGATIVE);
    out.extend_from_slice(&now_ms().to_le_bytes());
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

/// A won lease: the key it is on and the values the fill must still see for its CAS to pass.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) value_key: String,
    pub(crate) token: Vec<u8>,
    pub(crate) generation: String,
    pub(crate) tag_versions: Vec<String>,
}

impl Lease {
    /// A lease on `key` at `generation` with a fresh random token, not yet taken.
    pub(crate) fn prepare(names: &Names, key: &str, generation: u64) -> Self {
        Lease {
            value_key: names.value_key(generation, key),
            token: new_lease(),
            generation: generation.to_string(),
            tag_versions: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) enum LeaseOutcome {
    Won(Lease),
    /// The key already holds something (a value, another's lease, undecodable bytes).
    Present(Found),
}

/// How a fill's compare-and-set ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillOutcome {
    Stored,
    /// The key no longer holds our lease: it was invalidated (or the lease expired).
    LeaseLost,
    /// The namespace was flushed or a tag invalidated during the load.
    Raced,
}

/// The operations timed in `walcache_l2_duration_seconds{op}`.
const OPS: [&str; 9] = [
    "get",
    "get_with_generation",
    "lease",
    "fill",
    "release",
    "insert",
    "invalidate",
    "invalidate_tag",
    "flush",
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
            read: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
return {g, redis.call('GET', ARGV[1] .. g .. ARGV[2])}",
            ),
            lease: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
if ARGV[3] ~= '' and g ~= ARGV[3] then return {3, g} end
local k = ARGV[1] .. g .. ARGV[2]
local cur = redis.call('GET', k)
if cur and not (ARGV[6] ~= '' and cur == ARGV[6]) then return {2, g, cur} end
redis.call('SET', k, ARGV[4], 'PX', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[8])
local out = {1, g}
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then redis.call('PEXPIRE', KEYS[i], ARGV[7]) else v = '0' end
  out[#out + 1] = v
end
return out",
            ),
            fill: Script::new(
                r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[4] then redis.call('DEL', KEYS[1]) return -1 end
local n = tonumber(ARGV[5])
for i = 1, n do
  if (redis.call('GET', KEYS[2 + i]) or '0') ~= ARGV[5 + i] then redis.call('DEL', KEYS[1]) return -2 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local bt = tonumber(ARGV[6 + n])
for i = 1, n do
  local mk = KEYS[2 + n + i]
  redis.call('SADD', mk, KEYS[1])
  if redis.call('PTTL', mk) < bt then redis.call('PEXPIRE', mk, bt) end
end
return 1",
            ),
            release: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
            ),
            insert: Script::new(
                r"local g = redis.call('GET', KEYS[1]) or '0'
local k = ARGV[1] .. g .. ARGV[2]
redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[6])
local bt = tonumber(ARGV[5])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], k)
  if redis.call('PTTL', KEYS[i]) < bt then redis.call('PEXPIRE', KEYS[i], bt) end
end
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
            invalidate_tag: Script::new(
                r"redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local members = redis.call('SMEMBERS', KEYS[2])
for i = 1, #members, 500 do
  redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return #members",
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
    async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T, Error>
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

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Read a value with a known generation: exactly one GET.
    pub(crate) async fn get(&self, value_key: &str) -> Result<Found, Error> {
        let mut conn = self.conn();
        let reply: Option<Vec<u8>> = self
            .call("get", async move {
                redis::cmd("GET")
                    .arg(value_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.map_or(Found::Miss, parse_envelope))
    }

    /// Read the namespace's generation and the value under it, atomically (one round trip).
    pub(crate) async fn get_with_generation(
        &self,
        names: &Names,
        key: &str,
    ) -> Result<(u64, Found), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(&names.generation_key)
            .arg(&names.value_prefix)
            .arg(names.suffix(key));
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
        Ok((generation, found))
    }

    /// Take the fill lease on a missing key (or on exactly the undecodable bytes `replace`).
    ///
    /// `lease` is made by [`Lease::prepare`] before the call, so that a caller dropped while
    /// the script runs can still give it back.
    pub(crate) async fn lease(
        &self,
        names: &Names,
        key: &str,
        lease: &Lease,
        replace: Option<&[u8]>,
        tags: &[String],
        bookkeeping_ttl: Duration,
    ) -> Result<(u64, LeaseOutcome), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(&names.generation_key).key(&names.schemas_key);
        for t in tags {
            inv.key(self.naming.tag_version_key(t));
        }
        inv.arg(&names.value_prefix)
            .arg(names.suffix(key))
            .arg(&lease.generation)
            .arg(&lease.token)
            .arg(millis(self.lease_ttl))
            .arg(replace.unwrap_or(&[]))
            .arg(millis(bookkeeping_ttl))
            .arg(names.schema);
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
        let gen_num = parse_generation(&generation)?;
        match status {
            1 => {
                let tag_versions = reply[2..]
                    .iter()
                    .map(|v| string_of(v).ok_or_else(|| protocol_error("lease: tag version")))
                    .collect::<Result<Vec<_>, _>>()?;
                if tag_versions.len() != tags.len() {
                    return Err(protocol_error("lease: tag version count"));
                }
                Ok((
                    gen_num,
                    LeaseOutcome::Won(Lease {
                        tag_versions,
                        ..lease.clone()
                    }),
                ))
            }
            2 => {
                let cur = reply
                    .get(2)
                    .and_then(bytes_of)
                    .ok_or_else(|| protocol_error("lease: missing current value"))?;
                Ok((gen_num, LeaseOutcome::Present(parse_envelope(cur.to_vec()))))
            }
            // The generation moved since we learned it: the caller retries with the new one.
            3 => Ok((gen_num, LeaseOutcome::Present(Found::Miss))),
            _ => Err(protocol_error("lease: unknown status")),
        }
    }

    /// The compare-and-set that ends a fill: store `envelope` only if the key still holds our
    /// lease, the namespace generation and every tag version are what the lease saw.
    pub(crate) async fn fill(
        &self,
        names: &Names,
        lease: &Lease,
        envelope: &[u8],
        ttl: Duration,
        tags: &[String],
        bookkeeping_ttl: Duration,
    ) -> Result<FillOutcome, Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.fill.prepare_invoke();
        inv.key(&lease.value_key).key(&names.generation_key);
        for t in tags {
            inv.key(self.naming.tag_version_key(t));
        }
        for t in tags {
            inv.key(self.naming.tag_members_key(t));
        }
        inv.arg(&lease.token)
            .arg(envelope)
            .arg(millis(ttl))
            .arg(&lease.generation)
            .arg(tags.len());
        for v in &lease.tag_versions {
            inv.arg(v);
        }
        inv.arg(millis(bookkeeping_ttl));
        let reply: i64 = self
            .call("fill", async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(match reply {
            1 => FillOutcome::Stored,
            0 => FillOutcome::LeaseLost,
            _ => FillOutcome::Raced,
        })
    }

    /// Give a lease back (delete the key only if it still holds our token).
    pub(crate) async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(&lease.value_key).arg(&lease.token);
        let _: i64 = self
            .call("release", async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Unconditional write of a value the caller knows to be current.
    pub(crate) async fn insert(
        &self,
        names: &Names,
        key: &str,
        envelope: &[u8],
        ttl: Duration,
        tags: &[String],
        bookkeeping_ttl: Duration,
    ) -> Result<u64, Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.insert.prepare_invoke();
        inv.key(&names.generation_key).key(&names.schemas_key);
        for t in tags {
            inv.key(self.naming.tag_members_key(t));
        }
        inv.arg(&names.value_prefix)
            .arg(names.suffix(key))
            .arg(envelope)
            .arg(millis(ttl))
            .arg(millis(bookkeeping_ttl))
            .arg(names.schema);
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

    /// Bump a tag's version, delete its members and announce it, in one script.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        message: &[u8],
        bookkeeping_ttl: Duration,
    ) -> Result<(), Error> {
        let mut conn = self.conn();
        let mut inv = self.scripts.invalidate_tag.prepare_invoke();
        inv.key(self.naming.tag_version_key(tag))
            .key(self.naming.tag_members_key(tag))
            .arg(self.naming.app_channel())
            .arg(message)
            .arg(millis(bookkeeping_ttl));
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
        match parse_envelope(value_envelope(b"abc", &[])) {
            Found::Value(v) => assert_eq!(split_value(&v), Some((vec![], &b"abc"[..]))),
            other => panic!("unexpected {other:?}"),
        }
        let tags = vec!["users".to_owned(), "orders:7".to_owned()];
        match parse_envelope(value_envelope(b"", &tags)) {
            Found::Value(v) => assert_eq!(split_value(&v), Some((tags, &b""[..]))),
            other => panic!("unexpected {other:?}"),
        }
        // A tags length that runs past the end is not a value.
        let mut bad = value_envelope(b"", &[]);
        bad[9] = 200;
        assert!(matches!(parse_envelope(bad), Found::Undecodable(_)));
        assert!(matches!(
            parse_envelope(negative_envelope()),
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

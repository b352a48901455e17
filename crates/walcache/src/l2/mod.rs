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
use redis::Value;
use walcache_protocol::Naming;

use crate::breaker::Breaker;
use crate::error::{Error, ErrorKind};
use crate::metrics as m;

mod envelope;
mod scripts;

pub use envelope::{
    negative_envelope, parse_envelope, split_value, stamp_of, value_envelope, Found,
};
pub(crate) use envelope::{new_lease, tags_current};
use envelope::{HEADER_LEN, VALUE_HEADER_LEN};
use scripts::Scripts;

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

//! Publishing invalidations: one Lua script per message deletes the keys (under every value
//! schema in use, at the namespace's current generation), bumps tag versions and namespace
//! generations, and PUBLISHes the message — so no subscriber can hear of a key before L2 has
//! dropped it.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use walcache_protocol::{Body, HeartbeatDetails, KeyRef, Message, Naming};

use crate::mapping::Invalidation;
use crate::metrics as m;

/// The oldest Redis the daemon runs against: its scripts declare flags (`#!lua
/// flags=allow-oom`), which Redis 7.0 introduced.
pub const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// How long tag versions live: far longer than any fill lease, refreshed on every bump.
const TAG_VERSION_TTL_MS: u64 = 24 * 3600 * 1000;

/// How long one Redis call of the daemon may take, and connecting too: 5 s. Used by the
/// publisher and the full refresh.
///
/// Every call is a single command or one bounded script (a chunk of keys, a page of a SCAN)
/// that Redis answers in milliseconds; a reply that has not come in 5 s means a Redis that is
/// blocked or a network that drops packets, and waiting longer would only stall the stream
/// (the library's subscribers stop trusting L1 after 3 s without a heartbeat anyway). The call
/// then fails, is retried on a new connection, and a batch is published again: duplicates are
/// harmless, gaps are not. The TCP keepalives and user timeout of
/// [`redis_client`](crate::connect::redis_client) then close the abandoned socket.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// The invalidation script. `allow-oom`: a Redis at `maxmemory` under `noeviction` refuses
/// scripts that write unless they carry this flag, and the stream would stall on the first
/// tag or namespace flush (`INCR`) — the deletes that free memory must always run. Script
/// flags need Redis 7.0 or later ([`MIN_REDIS_VERSION`]).
const SCRIPT: &str = r"#!lua flags=allow-oom
-- ARGV[1] channel, ARGV[2] message, ARGV[3] key prefix, ARGV[4] tag version ttl (ms),
-- ARGV[5] kind: 'keys' | 'tags' | 'flush', then the items:
--   keys:  namespace, key, namespace, key, ...
--   tags:  tag, tag, ...
--   flush: namespace, namespace, ...
local prefix, kind = ARGV[3], ARGV[5]
if kind == 'keys' then
  local gens, schemas = {}, {}
  for i = 6, #ARGV, 2 do
    local ns, key = ARGV[i], ARGV[i + 1]
    if gens[ns] == nil then
      gens[ns] = redis.call('GET', prefix .. ':{' .. ns .. '}:gen') or '0'
      schemas[ns] = redis.call('SMEMBERS', prefix .. ':{' .. ns .. '}:schemas')
    end
    for _, s in ipairs(schemas[ns]) do
      redis.call('DEL', prefix .. ':{' .. ns .. '}:g' .. gens[ns] .. ':s' .. s .. ':' .. key)
    end
  end
elseif kind == 'tags' then
  for i = 6, #ARGV do
    local vk = prefix .. ':tag:{' .. ARGV[i] .. '}:v'
    local mk = prefix .. ':tag:{' .. ARGV[i] .. '}:m'
    redis.call('INCR', vk)
    redis.call('PEXPIRE', vk, ARGV[4])
    local members = redis.call('SMEMBERS', mk)
    for j = 1, #members, 500 do
      redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
    end
    redis.call('DEL', mk)
  end
elseif kind == 'flush' then
  for i = 6, #ARGV do
    redis.call('INCR', prefix .. ':{' .. ARGV[i] .. '}:gen')
  end
end
return redis.call('PUBLISH', ARGV[1], ARGV[2])
";

/// A set of invalidations to publish together, with the position they cover.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Keys, deduplicated.
    pub keys: BTreeSet<(String, String)>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Namespaces to flush.
    pub flushes: BTreeSet<String>,
    /// The end LSN of the last transaction in the batch.
    pub lsn: u64,
    /// Commit time of the last transaction, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
}

impl Batch {
    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.flushes.is_empty()
    }

    /// Add invalidations.
    pub fn extend(&mut self, items: impl IntoIterator<Item = Invalidation>) {
        for i in items {
            match i {
                Invalidation::Key { namespace, key } => {
                    self.keys.insert((namespace, key));
                }
                Invalidation::Tag(t) => {
                    self.tags.insert(t);
                }
                Invalidation::Flush(ns) => {
                    self.flushes.insert(ns);
                }
            }
        }
    }

    /// Add another batch's items (not its position).
    pub fn extend_from(&mut self, other: &Batch) {
        self.keys.extend(other.keys.iter().cloned());
        self.tags.extend(other.tags.iter().cloned());
        self.flushes.extend(other.flushes.iter().cloned());
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len() + self.flushes.len()
    }
}

/// The Redis side of the daemon: one connection, the epoch and the sequence.
pub struct Publisher {
    conn: MultiplexedConnection,
    naming: Naming,
    script: redis::Script,
    epoch: u64,
    seq: u64,
    max_message_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connect. `epoch` is random per daemon run; `seq` starts at 0 (the first message is 1).
    /// `timeout` bounds connecting and every call ([`REDIS_TIMEOUT`] in the daemon).
    ///
    /// # Errors
    ///
    /// Redis connection errors.
    pub async fn connect(
        client: &redis::Client,
        naming: Naming,
        epoch: u64,
        max_message_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let conn = connect(client, timeout).await?;
        Ok(Publisher {
            conn,
            naming,
            script: redis::Script::new(SCRIPT),
            epoch,
            seq: 0,
            max_message_bytes,
            timeout,
        })
    }

    /// Replace a broken connection, keeping epoch and sequence.
    ///
    /// # Errors
    ///
    /// Redis connection errors.
    pub async fn reconnect(&mut self, client: &redis::Client) -> Result<(), redis::RedisError> {
        self.conn = connect(client, self.timeout).await?;
        Ok(())
    }

    /// The last data sequence number published.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Redis's version (`redis_version`, as (major, minor)) and `run_id`, from one
    /// `INFO server`. The `run_id` changes when Redis restarts (and loses recent deletes).
    ///
    /// # Errors
    ///
    /// Redis errors, or an INFO reply without a parsable version or a run_id.
    pub async fn server_info(&mut self) -> Result<((u32, u32), String), redis::RedisError> {
        let info: String = self
            .timed(
                redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut self.conn.clone()),
            )
            .await?;
        let parse_error = |what| redis::RedisError::from((redis::ErrorKind::Parse, what));
        let version = parse_redis_version(&info)
            .ok_or_else(|| parse_error("INFO server has no parsable redis_version"))?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| parse_error("INFO server has no run_id"))?;
        Ok((version, run_id))
    }

    /// Redis's `run_id` (see [`server_info`](Self::server_info)).
    ///
    /// # Errors
    ///
    /// As [`server_info`](Self::server_info).
    pub async fn run_id(&mut self) -> Result<String, redis::RedisError> {
        Ok(self.server_info().await?.1)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| timeout_error())?
    }

    /// Publish a batch: one script (delete + announce) per message, messages split below the
    /// size limit. On error, the sequence numbers of the messages already sent stay used: the
    /// retry republishes everything (duplicates are harmless, gaps are not).
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn publish(&mut self, batch: &Batch) -> Result<(), redis::RedisError> {
        if !batch.flushes.is_empty() {
            let items: Vec<String> = batch.flushes.iter().cloned().collect();
            self.send_chunks("flush", &items, |v| Body::Flush(v.to_vec()), batch)
                .await?;
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "stream")
                .increment(items.len() as u64);
        }
        if !batch.tags.is_empty() {
            let items: Vec<String> = batch.tags.iter().cloned().collect();
            self.send_chunks("tags", &items, |v| Body::Tags(v.to_vec()), batch)
                .await?;
        }
        if !batch.keys.is_empty() {
            let refs: Vec<KeyRef> = batch
                .keys
                .iter()
                .map(|(ns, k)| KeyRef::new(ns.clone(), k.clone()))
                .collect();
            let mut start = 0;
            while start < refs.len() {
                // Grow the chunk while it fits in one message.
                let mut size = 64;
                let mut end = start;
                while end < refs.len()
                    && (end == start || size + refs[end].encoded_len() <= self.max_message_bytes)
                {
                    size += refs[end].encoded_len();
                    end += 1;
                }
                let chunk = &refs[start..end];
                self.seq += 1;
                let mut message = Message::new(self.epoch, self.seq, Body::Keys(chunk.to_vec()));
                message.sent_at_micros = now_micros();
                message.lsn = batch.lsn;
                message.commit_time_micros = batch.commit_time_micros;
                let mut inv = self.script.prepare_invoke();
                self.common_args(&mut inv, &message.encode(), "keys");
                for r in chunk {
                    inv.arg(&r.namespace).arg(&r.key);
                }
                let mut conn = self.conn.clone();
                let _: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
                metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => "keys").increment(1);
                metrics::counter!(m::KEYS_INVALIDATED_TOTAL).increment(chunk.len() as u64);
                start = end;
            }
        }
        Ok(())
    }

    async fn send_chunks(
        &mut self,
        kind: &'static str,
        items: &[String],
        body: impl Fn(&[String]) -> Body,
        batch: &Batch,
    ) -> Result<(), redis::RedisError> {
        let per = (self.max_message_bytes / 300).max(1);
        for chunk in items.chunks(per) {
            self.seq += 1;
            let mut message = Message::new(self.epoch, self.seq, body(chunk));
            message.sent_at_micros = now_micros();
            message.lsn = batch.lsn;
            message.commit_time_micros = batch.commit_time_micros;
            let mut inv = self.script.prepare_invoke();
            self.common_args(&mut inv, &message.encode(), kind);
            for item in chunk {
                inv.arg(item);
            }
            let mut conn = self.conn.clone();
            let _: i64 = self.timed(inv.invoke_async(&mut conn)).await?;
            metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => kind).increment(1);
        }
        Ok(())
    }

    fn common_args(&self, inv: &mut redis::ScriptInvocation<'_>, message: &[u8], kind: &str) {
        inv.arg(self.naming.invalidation_channel())
            .arg(message)
            .arg(self.naming.prefix())
            .arg(TAG_VERSION_TTL_MS)
            .arg(kind);
    }

    /// Announce liveness: carries the last data sequence number, takes none of its own, and
    /// (wire format v1.1) `details`: the lag, the refresh interval and the namespaces this
    /// heartbeat certifies.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn heartbeat(&mut self, details: HeartbeatDetails) -> Result<(), redis::RedisError> {
        let mut message = Message::new(
            self.epoch,
            self.seq,
            Body::Heartbeat {
                last_data_seq: self.seq,
                details: Some(details),
            },
        );
        message.sent_at_micros = now_micros();
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(
                redis::cmd("PUBLISH")
                    .arg(self.naming.invalidation_channel())
                    .arg(message.encode())
                    .query_async(&mut conn),
            )
            .await?;
        metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => "heartbeat").increment(1);
        Ok(())
    }
}

/// `redis_version:7.0.15` in an `INFO server` reply → `(7, 0)`.
pub fn parse_redis_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Microseconds since the Unix epoch on this machine's clock (0 if the clock is before it).
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A multiplexed connection whose connecting and calls time out after `timeout`: set on
/// redis-rs's side too, whose own defaults (1 s to connect, 500 ms per reply) would otherwise
/// cut every call shorter than stated.
async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| timeout_error())?
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis call timed out",
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_versions_parse_from_info_and_compare_with_the_minimum() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(super::parse_redis_version(info), Some((7, 0)));
        assert!(super::parse_redis_version(info).unwrap() >= super::MIN_REDIS_VERSION);
        let old = "redis_version:6.2.14\n";
        assert!(super::parse_redis_version(old).unwrap() < super::MIN_REDIS_VERSION);
        assert_eq!(super::parse_redis_version("redis_version:\n"), None);
        assert_eq!(super::parse_redis_version("run_id:abc\n"), None);
        assert_eq!(super::parse_redis_version("redis_version:x.y\n"), None);
    }

    use super::*;

    #[test]
    fn batches_deduplicate() {
        let mut b = Batch::default();
        b.extend([
            Invalidation::Key {
                namespace: "u".into(),
                key: "1".into(),
            },
            Invalidation::Key {
                namespace: "u".into(),
                key: "1".into(),
            },
            Invalidation::Tag("t".into()),
            Invalidation::Flush("u".into()),
        ]);
        assert_eq!(b.len(), 3);
        assert!(!b.is_empty());
    }

    #[test]
    fn the_script_builds_the_keys_the_library_reads() {
        // The script concatenates names itself; they must equal the shared naming's.
        let n = Naming::default();
        assert_eq!(
            format!("{}:{{{}}}:gen", n.prefix(), "users"),
            n.generation_key("users")
        );
        assert_eq!(
            format!("{}:{{{}}}:schemas", n.prefix(), "users"),
            n.schemas_key("users")
        );
        assert_eq!(
            format!("{}:{{{}}}:g{}:s{}:{}", n.prefix(), "users", 3, 1, "42"),
            n.value_key("users", 3, 1, "42")
        );
        assert_eq!(
            format!("{}:tag:{{{}}}:v", n.prefix(), "t"),
            n.tag_version_key("t")
        );
        assert_eq!(
            format!("{}:tag:{{{}}}:m", n.prefix(), "t"),
            n.tag_members_key("t")
        );
    }
}

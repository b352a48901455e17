//! Publishing invalidations: one Lua script per message deletes the keys (under every value
//! schema in use, at the namespace's current generation), moves tag versions (each in its
//! namespace's tags hash, on Redis's clock) and bumps namespace generations, and PUBLISHes the
//! message — so no subscriber can hear of an invalidation before L2 has it.

mod markers;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use walcache_cdc::Lsn;
use walcache_protocol::{Body, HeartbeatDetails, KeyRef, Message, Naming, TagRef, MAX_LEASE_TTL};

use crate::config::Rule;
use crate::mapping::Invalidation;
use crate::marker::{self, Loss};
use crate::metrics as m;
use crate::signing::{Signer, SIGNATURE_MAX_BYTES};

/// The oldest Redis the daemon runs against: its scripts declare flags (`#!lua
/// flags=allow-oom`), which Redis 7.0 introduced.
pub const MIN_REDIS_VERSION: (u32, u32) = (7, 0);

/// How many tokens of calls whose reply was lost a marker may hold besides the last known
/// one: more lost replies in a row than this, and the next call may take a marker that holds
/// one of the older ones for a loss (a needless flush, never a missed one).
const MAX_UNCERTAIN: usize = 16;

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

/// The invalidation script (`invalidate.lua`, beside this file): deletes
/// and bumps, the markers ([`crate::marker`]) and the announcement in one atomic call.
/// `allow-oom`: a Redis at `maxmemory` under `noeviction` refuses scripts that write unless
/// they carry this flag, and the stream would stall on the first flush — the deletes that free
/// memory must always run. Script flags need Redis 7.0 or later ([`MIN_REDIS_VERSION`]).
const SCRIPT: &str = include_str!("invalidate.lua");

/// A set of invalidations to publish together, with the position they cover.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Keys, deduplicated.
    pub keys: BTreeSet<(String, String)>,
    /// Tags, each in its namespace.
    pub tags: BTreeSet<TagRef>,
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

/// The Redis side of the daemon: one connection, the epoch and the sequence, and the markers
/// this daemon last wrote ([`crate::marker`]).
pub struct Publisher {
    conn: MultiplexedConnection,
    naming: Naming,
    script: redis::Script,
    epoch: u64,
    seq: u64,
    max_message_bytes: usize,
    timeout: Duration,
    /// Every namespace the rules write to ([`marker::targets`]): each has a marker.
    targets: Vec<String>,
    /// Each namespace's marker key, built once (every heartbeat names them all).
    marker_keys: HashMap<String, String>,
    /// The rule hash of each namespace.
    rule_hashes: HashMap<String, String>,
    /// The PostgreSQL server markers are written against.
    server: String,
    /// What this daemon last wrote to (or accepted from) each namespace's marker.
    held: HashMap<String, Held>,
    /// Script calls that wrote markers, for their tokens.
    writes: u64,
    /// Stamps the send time of every message and signs it (when keys are configured).
    signer: Signer,
}

/// What a marker held when this daemon last wrote or accepted it.
#[derive(Debug, Clone, Default)]
struct Held {
    token: String,
    /// A token of a call whose reply was lost (it may or may not have landed).
    /// Tokens of calls whose reply was lost since the last one that arrived (any may have
    /// landed, the last to land wins); at most [`MAX_UNCERTAIN`], oldest dropped first.
    alt: Vec<String>,
    lsn: Lsn,
}

/// One marker entry of a script call.
struct Entry {
    namespace: String,
    key: String,
    rule: String,
    lsn: Lsn,
}

/// What one script call reported.
#[derive(Debug, Default)]
struct Reply {
    published: bool,
    lost: Vec<String>,
    failed: Vec<String>,
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
    /// `timeout` bounds connecting and every call ([`REDIS_TIMEOUT`] in the daemon). Markers
    /// are kept for every namespace `rules` write to ([`marker::targets`]).
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
        rules: &[Rule],
    ) -> Result<Self, redis::RedisError> {
        let conn = connect(client, timeout).await?;
        let targets = marker::targets(rules);
        let rule_hashes = targets
            .iter()
            .map(|ns| (ns.clone(), marker::rule_hash(rules, ns)))
            .collect();
        let marker_keys = targets
            .iter()
            .map(|ns| (ns.clone(), naming.marker_key(ns)))
            .collect();
        let signer = Signer::unsigned(naming.invalidation_channel());
        Ok(Publisher {
            conn,
            signer,
            marker_keys,
            naming,
            script: redis::Script::new(SCRIPT),
            epoch,
            seq: 0,
            max_message_bytes,
            timeout,
            targets,
            rule_hashes,
            server: String::new(),
            held: HashMap::new(),
            writes: 0,
        })
    }

    /// Replace a broken connection, keeping epoch, sequence and markers.
    ///
    /// # Errors
    ///
    /// Redis connection errors.
    pub async fn reconnect(&mut self, client: &redis::Client) -> Result<(), redis::RedisError> {
        self.conn = connect(client, self.timeout).await?;
        Ok(())
    }

    /// Sign every message from now on with `signer` (by default messages are unsigned).
    pub fn set_signer(&mut self, signer: Signer) {
        self.signer = signer;
    }

    /// The id of the key messages are signed with (`None`: unsigned).
    pub fn signing_key_id(&self) -> Option<&str> {
        self.signer.key_id()
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

    /// Publish a batch: one script (delete or bump + announce) per message, messages split
    /// below the size limit; flushes first, then tags, then keys. On error, the sequence
    /// numbers of the messages already sent stay used: the retry republishes everything
    /// (duplicates are harmless, gaps are not).
    ///
    /// A namespace whose marker no longer holds what this daemon wrote (Redis lost writes), or
    /// whose items could not be applied one by one (its generation or schema set is
    /// unreadable, or its tags hash was corrupt and had to be deleted), is then flushed,
    /// before this returns.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn publish(&mut self, batch: &Batch) -> Result<(), redis::RedisError> {
        let lsn = Lsn(batch.lsn);
        let mut lost = Vec::new();
        let mut failed = Vec::new();
        if !batch.flushes.is_empty() {
            let items: Vec<String> = batch.flushes.iter().cloned().collect();
            self.send_flushes(&items, batch, Lsn(0)).await?;
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "stream")
                .increment(items.len() as u64);
        }
        // A tag without a namespace (a v1.2 sender's, "every namespace") is never the
        // daemon's: its rules name the namespace of every tag.
        let tags: Vec<TagRef> = batch
            .tags
            .iter()
            .filter(|t| t.namespace.is_some())
            .cloned()
            .collect();
        let reply = self
            .send_scoped(
                "tags",
                &tags,
                |t| (t.namespace.as_deref().unwrap_or_default(), t.tag.as_str()),
                TagRef::encoded_len,
                Body::Tags,
                batch,
            )
            .await?;
        lost.extend(reply.lost);
        failed.extend(reply.failed);
        let keys: Vec<KeyRef> = batch
            .keys
            .iter()
            .map(|(ns, k)| KeyRef::new(ns.clone(), k.clone()))
            .collect();
        let reply = self
            .send_scoped(
                "keys",
                &keys,
                |k| (k.namespace.as_str(), k.key.as_str()),
                KeyRef::encoded_len,
                Body::Keys,
                batch,
            )
            .await?;
        metrics::counter!(m::KEYS_INVALIDATED_TOTAL).increment(keys.len() as u64);
        lost.extend(reply.lost);
        failed.extend(reply.failed);
        failed.sort();
        failed.dedup();
        for ns in &failed {
            tracing::error!(namespace = %ns, "the namespace's generation, schema set or tag versions in Redis are unreadable: its items cannot be applied one by one, so the namespace is flushed");
            metrics::counter!(m::ITEM_FALLBACKS_TOTAL, "namespace" => ns.clone()).increment(1);
        }
        let mut repair: Vec<(String, Loss)> =
            lost.into_iter().map(|ns| (ns, Loss::Mismatch)).collect();
        repair.extend(failed.into_iter().map(|ns| (ns, Loss::ItemFailed)));
        self.repair(repair, lsn).await?;
        Ok(())
    }

    /// Send `items` (keys or tags, each of one namespace) as `kind` messages of `body`, each
    /// as large as fits below the message limit (`len`: an item's encoded size), one script
    /// per message with `(namespace, name)` pairs (`parts`) as its items; the markers of the
    /// namespaces a message touches are compared. Returns what the calls reported.
    async fn send_scoped<T: Clone>(
        &mut self,
        kind: &'static str,
        items: &[T],
        parts: impl Fn(&T) -> (&str, &str),
        len: impl Fn(&T) -> usize,
        body: impl Fn(Vec<T>) -> Body,
        batch: &Batch,
    ) -> Result<Reply, redis::RedisError> {
        let mut out = Reply::default();
        let mut start = 0;
        while start < items.len() {
            // Grow the chunk while it fits in one message (64 bytes of header and counts, and
            // the signature).
            let mut size = 64 + SIGNATURE_MAX_BYTES;
            let mut end = start;
            while end < items.len()
                && (end == start || size + len(&items[end]) <= self.max_message_bytes)
            {
                size += len(&items[end]);
                end += 1;
            }
            let chunk = &items[start..end];
            let message = self.data_message(body(chunk.to_vec()), batch);
            let mut namespaces: Vec<&str> = chunk.iter().map(|i| parts(i).0).collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            let entries = self.entries(namespaces.into_iter().map(str::to_owned), Lsn(0));
            let args: Vec<&str> = chunk
                .iter()
                .flat_map(|i| {
                    let (ns, name) = parts(i);
                    [ns, name]
                })
                .collect();
            let reply = self.call(kind, &message, &entries, &args).await?;
            out.lost.extend(reply.lost);
            out.failed.extend(reply.failed);
            metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => kind).increment(1);
            start = end;
        }
        Ok(out)
    }

    /// A data message (the next sequence number) for `body`, covering `batch`'s position.
    fn data_message(&mut self, body: Body, batch: &Batch) -> Vec<u8> {
        self.seq += 1;
        let mut message = Message::new(self.epoch, self.seq, body);
        message.lsn = batch.lsn;
        message.commit_time_micros = batch.commit_time_micros;
        self.signer.encode(&mut message)
    }

    /// Flush `namespaces` (a new generation each; their tag versions stay, to judge the old
    /// generation's values for processes that have not heard of the flush yet), writing their
    /// markers anew at `marker_lsn` (or what they hold, if later) with no flush owed.
    async fn send_flushes(
        &mut self,
        namespaces: &[String],
        batch: &Batch,
        marker_lsn: Lsn,
    ) -> Result<(), redis::RedisError> {
        let per = (self.max_message_bytes / 300).max(1);
        for chunk in namespaces.chunks(per) {
            let message = self.data_message(Body::Flush(chunk.to_vec()), batch);
            let entries = self.entries(chunk.iter().cloned(), marker_lsn);
            let items: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.call("flush", &message, &entries, &items).await?;
            metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => "flush").increment(1);
        }
        Ok(())
    }

    /// Marker entries for `namespaces`, each at the later of `lsn` and what it already holds
    /// (a marker's position never goes back).
    ///
    /// Data calls pass `Lsn(0)`: they renew a marker's token but never move its position. A
    /// batch can take several calls, and a Redis that kept an early one and lost a later one
    /// would otherwise show a position the lost call was part of. Positions move only with a
    /// `check` call at the confirmed position (every publish before it completed, visibility
    /// re-checks included) and with a flush, which makes everything before it irrelevant.
    fn entries(&self, namespaces: impl Iterator<Item = String>, lsn: Lsn) -> Vec<Entry> {
        namespaces
            .map(|namespace| {
                let held = self.held.get(&namespace).map_or(Lsn(0), |h| h.lsn);
                Entry {
                    key: self
                        .marker_keys
                        .get(&namespace)
                        .cloned()
                        .unwrap_or_else(|| self.naming.marker_key(&namespace)),
                    rule: self
                        .rule_hashes
                        .get(&namespace)
                        .cloned()
                        .unwrap_or_default(),
                    namespace,
                    lsn: lsn.max(held),
                }
            })
            .collect()
    }

    /// One call of the script. Markers that held (or were repaired) now hold this call's
    /// token; when the reply is lost, the token is remembered as one the marker may hold.
    async fn call(
        &mut self,
        kind: &str,
        message: &[u8],
        entries: &[Entry],
        items: &[&str],
    ) -> Result<Reply, redis::RedisError> {
        self.writes += 1;
        let token = format!("{:016x}-{}", self.epoch, self.writes);
        let mut inv = self.script.prepare_invoke();
        inv.arg(self.naming.invalidation_channel())
            .arg(message)
            .arg(self.naming.prefix())
            .arg(kind)
            .arg(now_micros())
            .arg(&token)
            .arg(&self.server)
            .arg(now_micros() / 1000)
            .arg(u64::try_from(MAX_LEASE_TTL.as_millis()).unwrap_or(u64::MAX))
            .arg(entries.len());
        for e in entries {
            let held = self.held.get(&e.namespace);
            inv.arg(&e.key)
                .arg(held.map_or("", |h| h.token.as_str()))
                .arg(held.map_or_else(String::new, |h| h.alt.join(",")))
                .arg(&e.rule)
                .arg(e.lsn.to_string());
        }
        for item in items {
            inv.arg(*item);
        }
        let mut conn = self.conn.clone();
        let result: Result<(i64, Vec<String>, Vec<String>), _> =
            self.timed(inv.invoke_async(&mut conn)).await;
        let (published, lost_keys, failed) = match result {
            Ok(r) => r,
            Err(e) => {
                for entry in entries {
                    let held = self.held.entry(entry.namespace.clone()).or_default();
                    if held.alt.len() >= MAX_UNCERTAIN {
                        held.alt.remove(0);
                    }
                    held.alt.push(token.clone());
                }
                return Err(e);
            }
        };
        let mut lost = Vec::new();
        for entry in entries {
            if lost_keys.contains(&entry.key) {
                lost.push(entry.namespace.clone());
            } else {
                self.held.insert(
                    entry.namespace.clone(),
                    Held {
                        token: token.clone(),
                        alt: Vec::new(),
                        lsn: entry.lsn,
                    },
                );
            }
        }
        Ok(Reply {
            published: published >= 0,
            lost,
            failed,
        })
    }

    /// Announce liveness at `lsn` (everything received up to it is published), if every
    /// marker still holds what this daemon wrote: carries the last data sequence number, takes
    /// none of its own, and (wire format v1.1) `details`: the lag, the refresh interval and the
    /// namespaces this heartbeat certifies, and (v1.2) those out of service. Markers that do not hold are flushed first, and
    /// the heartbeat follows them. Returns whether a heartbeat was published.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn heartbeat(
        &mut self,
        details: HeartbeatDetails,
        lsn: Lsn,
    ) -> Result<bool, redis::RedisError> {
        let mut message = Message::new(
            self.epoch,
            self.seq,
            Body::Heartbeat {
                last_data_seq: self.seq,
                details: Some(details),
            },
        );
        let bytes = self.signer.encode(&mut message);
        let mut published = self.check(&bytes, lsn).await?.0;
        if !published {
            // Flushed what was lost: the heartbeat (a new one, the flush took sequence numbers)
            // may certify now.
            if let Message {
                body: Body::Heartbeat { details, .. },
                ..
            } = message
            {
                let mut again = Message::new(
                    self.epoch,
                    self.seq,
                    Body::Heartbeat {
                        last_data_seq: self.seq,
                        details,
                    },
                );
                let bytes = self.signer.encode(&mut again);
                published = self.check(&bytes, lsn).await?.0;
            }
        }
        if published {
            metrics::counter!(m::MESSAGES_PUBLISHED_TOTAL, "kind" => "heartbeat").increment(1);
        }
        Ok(published)
    }

    /// Compare every marker with what this daemon wrote, advancing them to `lsn`; flush the
    /// namespaces whose markers do not hold. Nothing is announced. Returns how many were lost.
    ///
    /// # Errors
    ///
    /// Redis errors.
    pub async fn verify(&mut self, lsn: Lsn) -> Result<usize, redis::RedisError> {
        Ok(self.check(&[], lsn).await?.1)
    }

    /// The `check` call with `message` (empty: none): whether it was published, and how many
    /// namespaces were lost (and flushed).
    async fn check(
        &mut self,
        message: &[u8],
        lsn: Lsn,
    ) -> Result<(bool, usize), redis::RedisError> {
        let entries = self.entries(self.targets.clone().into_iter(), lsn);
        let reply = self.call("check", message, &entries, &[]).await?;
        let lost = reply.lost;
        let flushed = self
            .repair(
                lost.into_iter().map(|ns| (ns, Loss::Mismatch)).collect(),
                lsn,
            )
            .await?;
        Ok((reply.published, flushed))
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
pub(crate) fn now_micros() -> i64 {
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
            Invalidation::Tag(TagRef::new("u", "t")),
            Invalidation::Tag(TagRef::new("u", "t")),
            Invalidation::Tag(TagRef::new("v", "t")),
            Invalidation::Flush("u".into()),
        ]);
        assert_eq!(b.len(), 4);
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
            format!("{}:{{{}}}:tags", n.prefix(), "users"),
            n.tags_key("users")
        );
        assert_eq!(
            format!("{}:{{{}}}:mark", n.prefix(), "users"),
            n.marker_key("users")
        );
    }
}

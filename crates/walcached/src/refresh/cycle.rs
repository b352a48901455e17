//! One cycle of the full refresh: the walk over L2's value keys and its paced
//! check-and-delete scripts, then the pruning of old tag versions (see the
//! [module docs](super)).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use walcache_protocol::{Naming, MAX_LEASE_TTL};

use super::{
    connect, duration_micros, duration_ms, server_time_micros, CycleReport, RefreshConfig,
    RefreshProgress,
};
use crate::metrics as m;

/// Stamps further ahead of the Redis server's clock than this are corrupt envelopes, which
/// would otherwise survive every cycle: deleted. Stamps come from that clock (or from a
/// namespace's tag clock, which runs ahead of it only by what it gains in one microsecond
/// steps), so only a step back of the clock or a failover to a server whose clock is behind
/// puts a genuine stamp ahead of it, by less than this.
const MAX_FUTURE_STAMP: Duration = Duration::from_secs(300);
/// How often a long cycle logs its progress.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Fields of a namespace's tags hash that start with this are the library's bookkeeping (the
/// tag clock `" now"`, `" ttl"`, `" cursor"`; no tag contains a space): never pruned.
const BOOKKEEPING_PREFIX: char = ' ';

/// Check and delete, atomically per key list (one namespace, so one Cluster slot).
/// `allow-oom`: the deletes must run on a Redis at `maxmemory` (see the publisher's script).
const SCRIPT: &str = r"#!lua flags=allow-oom
-- KEYS: value keys of one namespace.
-- ARGV[1]: delete envelopes stamped at or before this time (µs since the Unix epoch, the
-- Redis server's clock: the cycle's start);
-- ARGV[2]: ...and those stamped more than this many µs after the server's TIME now (corrupt:
-- implausibly far in the future).
-- Leases are kept; anything that is not an envelope is deleted. Returns how many were deleted.
local cutoff, allowance = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = redis.call('TIME')
local future = tonumber(now[1]) * 1000000 + tonumber(now[2]) + allowance
local deleted = 0
for _, k in ipairs(KEYS) do
  local head = redis.pcall('GETRANGE', k, 0, 8)
  local delete = true
  if type(head) == 'string' then
    local tag = string.byte(head, 1)
    if tag == 0 and string.byte(head, 2) == 76 then
      delete = false
    elseif (tag == 1 or tag == 2) and #head == 9 then
      local len = redis.call('STRLEN', k)
      if (tag == 1 and len >= 11) or (tag == 2 and len == 9) then
        local t = 0
        for i = 9, 2, -1 do t = t * 256 + string.byte(head, i) end
        delete = t <= cutoff or t > future
      end
    end
  end
  if delete then deleted = deleted + redis.call('DEL', k) end
end
return deleted
";

/// Prune tag versions, atomically per list of fields of one namespace's tags hash: delete
/// each field whose time is still below the threshold (one bumped since the HSCAN is kept),
/// never the bookkeeping (fields starting with a space). `allow-oom`: deletes free memory.
const PRUNE_SCRIPT: &str = r"#!lua flags=allow-oom
-- KEYS[1]: a namespace's tags hash. ARGV[1]: delete fields whose time (µs) is below this;
-- ARGV[2..]: the fields to check. Returns how many were deleted.
local threshold = tonumber(ARGV[1])
local deleted = 0
for i = 2, #ARGV do
  local f = ARGV[i]
  if string.byte(f, 1) ~= 32 then
    local v = tonumber(redis.call('HGET', KEYS[1], f) or '')
    if v and v < threshold then deleted = deleted + redis.call('HDEL', KEYS[1], f) end
  end
end
return deleted
";

/// Run one cycle now: walk every namespace's value keys and delete, rate-limited, every value
/// and cached "not found" stamped at or before the cycle's start (the Redis server's `TIME`
/// when it begins), and every key that is not an envelope. Leases and other namespaces' keys
/// are untouched. Duplicate namespaces are walked once. The walk is one SCAN pass over the
/// value keys of every namespace under the prefix, however many namespaces are served: each
/// key is attributed to its namespace by its hash tag. On completion the cycle's start is
/// recorded in Redis for [`run_schedule`](super::run_schedule), and the namespaces' tag
/// versions older than the start minus [`MAX_LEASE_TTL`] are pruned.
///
/// Dropping the future stops the cycle between two scripts; what was deleted stays deleted.
///
/// # Errors
///
/// The first Redis error (the cycle is then incomplete: run another). A failure while pruning
/// does not fail a completed cycle: it is logged, and the next cycle prunes.
pub async fn run_cycle(
    redis: &redis::Client,
    naming: &Naming,
    namespaces: &[String],
    cfg: &RefreshConfig,
    progress: &RefreshProgress,
) -> Result<CycleReport, redis::RedisError> {
    let started = Instant::now();
    let mut conn = connect(redis).await?;
    // The cutoff: Redis's clock, the one every stamp was read from.
    let start_us = server_time_micros(&mut conn).await?;
    let start_ms = start_us / 1000;
    let _running = progress.begin(start_ms);
    let namespaces: BTreeSet<&str> = namespaces.iter().map(String::as_str).collect();
    tracing::info!(
        namespaces = namespaces.len(),
        max_deletes_per_second = cfg.max_deletes_per_second,
        "refresh cycle started"
    );
    let served = CycleNamespaces::new(naming, &namespaces);
    let mut delete = CheckAndDelete {
        script: redis::Script::new(SCRIPT),
        cutoff_us: start_us,
        pacer: Pacer::new(cfg.max_deletes_per_second),
    };
    let mut batches = Batches::new(served.len(), cfg.chunk_len());
    let (mut scanned, mut deleted) = (0_u64, 0_u64);
    let mut last_log = Instant::now();
    // One pass over every namespace's value keys, not one per namespace: the cost of a cycle
    // is the keyspace's size, whatever the number of namespaces.
    let pattern = value_keys_pattern(naming);
    let mut cursor = 0_u64;
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(cfg.scan_count)
            .query_async(&mut conn)
            .await?;
        // The pattern is a superset (any namespace, and a key may have more after
        // `g<digit>`): keep the value keys of the cycle's namespaces, with their namespace.
        let page: Vec<(usize, Vec<u8>)> = page
            .into_iter()
            .filter_map(|k| served.value_key_namespace(&k).map(|ns| (ns, k)))
            .collect();
        let n = page.len() as u64;
        scanned += n;
        progress.scanned(n);
        for (ns, key) in page {
            if let Some(chunk) = batches.push(ns, key) {
                let d = delete.run(&mut conn, &chunk).await?;
                deleted += d;
                progress.deleted(d);
            }
        }
        if batches.held() > MAX_HELD_KEYS {
            // Many namespaces with a few keys each per page: send what is held rather than
            // keep up to a chunk per namespace until the pass ends.
            for chunk in batches.drain() {
                let d = delete.run(&mut conn, &chunk).await?;
                deleted += d;
                progress.deleted(d);
            }
        }
        if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            last_log = Instant::now();
            tracing::info!(
                keys_scanned = scanned,
                keys_deleted = deleted,
                "refresh cycle in progress"
            );
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for chunk in batches.drain() {
        let d = delete.run(&mut conn, &chunk).await?;
        deleted += d;
        progress.deleted(d);
    }
    tracing::debug!(
        keys_scanned = scanned,
        keys_deleted = deleted,
        "refresh: value keys done"
    );
    // Recorded only once the whole pass is done: it is what the schedule resumes from.
    redis::cmd("SET")
        .arg(naming.refresh_last_key())
        .arg(start_ms)
        .query_async::<()>(&mut conn)
        .await?;
    let mut pruned = 0_u64;
    for ns in &namespaces {
        match prune_tags(&mut conn, naming, ns, start_us, cfg, &mut delete.pacer).await {
            Ok(n) => pruned += n,
            Err(e) => {
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                tracing::warn!(namespace = *ns, error = %e, "pruning the namespace's tag versions failed; the next cycle prunes them");
            }
        }
    }
    let elapsed = started.elapsed();
    let report = CycleReport {
        namespaces: namespaces.len(),
        keys_scanned: scanned,
        keys_deleted: deleted,
        tag_versions_pruned: pruned,
        started_at_micros: start_us,
        started_at_ms: start_ms,
        elapsed,
    };
    progress.completed(start_ms.saturating_add(duration_ms(elapsed)));
    Ok(report)
}

/// The check-and-delete [`SCRIPT`] of a cycle, paced.
struct CheckAndDelete {
    script: redis::Script,
    /// The cycle's start, µs on the Redis server's clock.
    cutoff_us: u64,
    pacer: Pacer,
}

impl CheckAndDelete {
    /// Check and delete `keys` — all of one namespace, so of one Redis Cluster slot (their hash
    /// tag): the one script call must not cross slots. Returns how many were deleted.
    async fn run(
        &mut self,
        conn: &mut MultiplexedConnection,
        keys: &[Vec<u8>],
    ) -> Result<u64, redis::RedisError> {
        self.pacer.wait().await;
        let began = Instant::now();
        let mut inv = self.script.prepare_invoke();
        for k in keys {
            inv.key(k.as_slice());
        }
        let d: u64 = inv
            .arg(self.cutoff_us)
            .arg(duration_micros(MAX_FUTURE_STAMP))
            .invoke_async(conn)
            .await?;
        self.pacer.charge(d, began);
        Ok(d)
    }
}

/// `{prefix}:{*}:g[0-9]*`: the SCAN pattern of the value keys of every namespace under the
/// prefix (see [`Naming::value_key_prefix`]). A superset: it matches other namespaces' keys
/// and keys with more after `g<digit>`; [`CycleNamespaces::value_key_namespace`] picks the
/// cycle's value keys out of it.
fn value_keys_pattern(naming: &Naming) -> String {
    format!("{}:{{*}}:g[0-9]*", glob_escape(naming.prefix()))
}

/// The namespaces of one cycle, and which of them a scanned key's value key belongs to.
struct CycleNamespaces<'a> {
    /// `{prefix}:{`: what every key of a namespace starts with, up to its namespace.
    head: Vec<u8>,
    /// Each namespace's index (into the cycle's buffers) and value-key prefix, by name.
    by_name: HashMap<&'a [u8], (usize, Vec<u8>)>,
}

impl<'a> CycleNamespaces<'a> {
    fn new(naming: &Naming, namespaces: &BTreeSet<&'a str>) -> Self {
        CycleNamespaces {
            head: format!("{}:{{", naming.prefix()).into_bytes(),
            by_name: namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (ns.as_bytes(), (i, naming.value_key_prefix(ns).into_bytes())))
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The index of the namespace whose value key `key` is, if that namespace is one of the
    /// cycle's; `None` for anything else (another namespace's key, a namespace's key that is
    /// not a value key, a key outside the namespace family, bytes that are no key of ours).
    ///
    /// The namespace is the key's Redis Cluster hash tag: what lies between the `{` after the
    /// prefix and the first `}` after it (namespaces contain neither brace; a value key's own
    /// part may, after the tag). The whole key must then have the namespace's value-key shape
    /// ([`is_value_key`]), so only a key the namespace's own prefix starts is ever attributed
    /// to it.
    fn value_key_namespace(&self, key: &[u8]) -> Option<usize> {
        let tagged = key.strip_prefix(self.head.as_slice())?;
        let end = tagged.iter().position(|&b| b == b'}')?;
        let (i, prefix) = self.by_name.get(&tagged[..end])?;
        is_value_key(key, prefix).then_some(*i)
    }
}

/// Keys the cycle holds between SCAN pages before it sends every namespace's partial chunk
/// (a few MB of key names at most).
const MAX_HELD_KEYS: usize = 20_000;

/// The cycle's value keys waiting for a script call, one buffer per namespace: a SCAN page
/// mixes namespaces, and each script call holds keys of one namespace only — one hash tag,
/// so one Redis Cluster slot, which a script's keys must share. A namespace's buffer goes to
/// a script once it holds a chunk (`chunk_len` keys); what remains of every buffer goes after
/// the pass, or once more than [`MAX_HELD_KEYS`] are held.
struct Batches {
    buffers: Vec<Vec<Vec<u8>>>,
    chunk_len: usize,
    held: usize,
}

impl Batches {
    fn new(namespaces: usize, chunk_len: usize) -> Self {
        Batches {
            buffers: vec![Vec::new(); namespaces],
            chunk_len: chunk_len.max(1),
            held: 0,
        }
    }

    /// Add `key` of namespace `ns`; returns the namespace's chunk when it is full.
    fn push(&mut self, ns: usize, key: Vec<u8>) -> Option<Vec<Vec<u8>>> {
        let buffer = &mut self.buffers[ns];
        buffer.push(key);
        if buffer.len() < self.chunk_len {
            self.held += 1;
            return None;
        }
        self.held -= buffer.len() - 1;
        Some(std::mem::take(buffer))
    }

    /// Keys held, in every namespace's buffer.
    fn held(&self) -> usize {
        self.held
    }

    /// What is held: each namespace's partial chunk, non-empty, one namespace each.
    fn drain(&mut self) -> impl Iterator<Item = Vec<Vec<u8>>> + '_ {
        self.held = 0;
        self.buffers
            .iter_mut()
            .map(std::mem::take)
            .filter(|b| !b.is_empty())
    }
}

/// After a completed cycle that began at `start_us` (µs, Redis's clock), delete the fields of
/// `namespace`'s tags hash whose time is below `start_us − MAX_LEASE_TTL` — never its
/// bookkeeping (`" now"`, `" ttl"`, `" cursor"`) — in pages of an `HSCAN`, each checked and
/// deleted by one script, paced with the cycle's deletes. Returns how many were deleted.
///
/// Why this is safe: a pruned tag reads as never invalidated (version 0), which matters only
/// for a value carrying it, stamped `s` at or before its time `v`, that would be current again.
/// Such a value's fill landed within `MAX_LEASE_TTL` of `s` (a lease ends by then, and a fill
/// needs its lease) — before `v + MAX_LEASE_TTL < start_us`, so before the cycle began: it was
/// in L2 for the whole of the cycle's one SCAN pass over every namespace's value keys (every
/// generation's), which therefore returned it — SCAN returns every key present for the whole
/// scan at least once (one returned twice is checked twice, harmlessly: the script re-reads
/// it) —, attributed it to this namespace by its hash tag, and checked it in one of the
/// namespace's chunks before the pass ended, all before this pruning began; so the cycle
/// deleted it (`s ≤ v < start_us`), unless it was gone already. A value written later carries
/// a later stamp. (The tag clock can run ahead of
/// `TIME`, never behind: `s` is at least the real time of its lease, so the bound holds.) A
/// field bumped between the `HSCAN` and the delete is above the threshold again, and the
/// script keeps it.
///
/// # Errors
///
/// Redis errors (a tags hash of the wrong type among them: the publisher deletes it at the
/// next bump, and the namespace is flushed).
async fn prune_tags(
    conn: &mut MultiplexedConnection,
    naming: &Naming,
    namespace: &str,
    start_us: u64,
    cfg: &RefreshConfig,
    pacer: &mut Pacer,
) -> Result<u64, redis::RedisError> {
    let key = naming.tags_key(namespace);
    let threshold = start_us.saturating_sub(duration_micros(MAX_LEASE_TTL));
    let script = redis::Script::new(PRUNE_SCRIPT);
    let chunk_len = cfg.chunk_len();
    let mut pruned = 0_u64;
    let mut cursor = 0_u64;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(cfg.scan_count)
            .query_async(conn)
            .await?;
        let old: Vec<String> = page
            .into_iter()
            .filter(|(field, value)| {
                !field.starts_with(BOOKKEEPING_PREFIX)
                    && value.parse::<u64>().is_ok_and(|v| v < threshold)
            })
            .map(|(field, _)| field)
            .collect();
        for chunk in old.chunks(chunk_len) {
            pacer.wait().await;
            let began = Instant::now();
            let mut inv = script.prepare_invoke();
            inv.key(&key).arg(threshold);
            for field in chunk {
                inv.arg(field);
            }
            let d: u64 = inv.invoke_async(conn).await?;
            pacer.charge(d, began);
            pruned += d;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if pruned > 0 {
        metrics::counter!(m::REFRESH_TAG_VERSIONS_PRUNED_TOTAL).increment(pruned);
        tracing::debug!(namespace, pruned, "refresh: old tag versions pruned");
    }
    Ok(pruned)
}

/// Spaces deletes at `rate` per second: a chunk may start once the deletes before it have been
/// paid for, so at most one chunk's deletes run ahead of the rate, and idle time (a page of
/// fresh keys) does not bank credit for a later burst.
struct Pacer {
    rate: f64,
    next: Instant,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        #[allow(clippy::cast_precision_loss)] // validated to be a sane number
        let rate = rate.max(1) as f64;
        Pacer {
            rate,
            next: Instant::now(),
        }
    }

    async fn wait(&self) {
        // Only when ahead of the rate: the timer rounds up to its 1 ms tick even for a
        // deadline already past, a millisecond lost per script call.
        if Instant::now() < self.next {
            tokio::time::sleep_until(self.next).await;
        }
    }

    /// `deleted` keys were deleted by a chunk that began at `began`.
    fn charge(&mut self, deleted: u64, began: Instant) {
        if deleted > 0 {
            #[allow(clippy::cast_precision_loss)]
            let cost = Duration::from_secs_f64(deleted as f64 / self.rate);
            self.next = self.next.max(began) + cost;
        }
    }
}

/// `prefix` followed by `<digits>:s<digits>:`: the shape of a value key (so the generation
/// counter `…:gen`, which the SCAN pattern cannot exclude by itself, is never touched).
fn is_value_key(key: &[u8], prefix: &[u8]) -> bool {
    fn digits(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0).then(|| &s[n..])
    }
    let Some(rest) = key.strip_prefix(prefix) else {
        return false;
    };
    let Some(rest) = digits(rest).and_then(|r| r.strip_prefix(b":s")) else {
        return false;
    };
    digits(rest).is_some_and(|r| r.starts_with(b":"))
}

/// Escape Redis glob characters (prefixes and namespaces have none, but keep it exact).
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_value_keys_have_the_value_key_shape() {
        let p = Naming::default().value_key_prefix("users");
        let p = p.as_bytes();
        for good in [
            "wc:{users}:g0:s1:42",
            "wc:{users}:g17:s3:",
            "wc:{users}:g1:s1:a:b",
        ] {
            assert!(is_value_key(good.as_bytes(), p), "{good}");
        }
        for bad in [
            "wc:{users}:gen",
            "wc:{users}:schemas",
            "wc:{users}:g:s1:42",
            "wc:{users}:g1:s:42",
            "wc:{users}:g1:s1",
            "wc:{users}:g1x:s1:42",
            "wc:{users2}:g1:s1:42",
            "wc:{users}:tags",
        ] {
            assert!(!is_value_key(bad.as_bytes(), p), "{bad}");
        }
    }

    #[test]
    fn globs_are_escaped_and_chunks_follow_the_rate() {
        assert_eq!(glob_escape("wc:{users}:g"), "wc:{users}:g");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let cfg = |rate, scan| RefreshConfig {
            interval_secs: 3600,
            max_deletes_per_second: rate,
            scan_count: scan,
        };
        assert_eq!(cfg(5000, 500).chunk_len(), 500);
        assert_eq!(cfg(200, 500).chunk_len(), 20);
        assert_eq!(cfg(5, 500).chunk_len(), 1);
        assert_eq!(cfg(100_000, 50).chunk_len(), 50);
    }

    #[test]
    fn one_pattern_matches_every_namespaces_value_keys() {
        for naming in [Naming::default(), Naming::new("app_1-x").expect("prefix")] {
            let pattern = value_keys_pattern(&naming);
            assert_eq!(pattern, format!("{}:{{*}}:g[0-9]*", naming.prefix()));
            // What the pattern's literal parts assume of the names it must match.
            let key = naming.value_key("users", 7, 1, "42");
            assert!(
                key.starts_with(&format!("{}:{{users}}:g7", naming.prefix())),
                "{key}"
            );
        }
    }

    #[test]
    fn scanned_keys_are_attributed_to_the_cycles_namespaces_by_their_hash_tag() {
        let naming = Naming::default();
        let set: BTreeSet<&str> = ["users", "posts", "a-b_1"].into_iter().collect();
        let served = CycleNamespaces::new(&naming, &set);
        assert_eq!(served.len(), 3);
        let index = |ns: &str| set.iter().position(|n| *n == ns).expect("served");
        for (key, ns) in [
            ("wc:{users}:g0:s1:42", "users"),
            ("wc:{posts}:g17:s3:", "posts"),
            ("wc:{a-b_1}:g1:s1:k", "a-b_1"),
            // The key's own part may hold braces: the tag is the first `}`'s.
            ("wc:{users}:g1:s1:{posts}:g1:s1:x", "users"),
            ("wc:{users}:g1:s1:}{", "users"),
        ] {
            assert_eq!(
                served.value_key_namespace(key.as_bytes()),
                Some(index(ns)),
                "{key}"
            );
        }
        let mut hostile: Vec<Vec<u8>> = [
            // Not one of the cycle's namespaces.
            "wc:{orders}:g1:s1:42",
            "wc:{user}:g1:s1:42",
            "wc:{users2}:g1:s1:42",
            "wc:{USERS}:g1:s1:42",
            // Not a value key of a served namespace.
            "wc:{users}:gen",
            "wc:{users}:tags",
            "wc:{users}:schemas",
            "wc:{users}:mark",
            "wc:{users}:g7",
            "wc:{users}:g1x:s1:42",
            "wc:{users}x:g1:s1:42",
            "wc:{users}}:g1:s1:42",
            // Broken hash tags.
            "wc:users:g1:s1:42",
            "wc:users}:g1:s1:42",
            "wc:{users:g1:s1:42",
            "wc:{}:g1:s1:42",
            "wc:{}",
            "wc:{",
            "wc:{{users}:g1:s1:42",
            "wc:{ users}:g1:s1:42",
            // Outside the prefix, or no key of ours at all.
            "other:{users}:g1:s1:42",
            "wcx:{users}:g1:s1:42",
            "wc:refresh:last",
            "wc",
            "",
        ]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
        hostile.extend([
            b"wc:{\xff\xfe}:g1:s1:42".to_vec(),
            b"wc:{users\xff}:g1:s1:42".to_vec(),
            b"wc:{\xc3}:g1:s1:42".to_vec(),
            b"\xff\xff\xff".to_vec(),
            b"wc:{users\0}:g1:s1:42".to_vec(),
        ]);
        for key in &hostile {
            assert_eq!(
                served.value_key_namespace(key),
                None,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        // Non-UTF-8 bytes after a served namespace's tag are the key's own part.
        assert_eq!(
            served.value_key_namespace(b"wc:{posts}:g1:s1:\xff\x00"),
            Some(index("posts"))
        );
        // Another prefix: the same keys are another application's.
        let other = CycleNamespaces::new(&Naming::new("app").expect("prefix"), &set);
        assert_eq!(other.value_key_namespace(b"wc:{users}:g1:s1:42"), None);
        assert_eq!(
            other.value_key_namespace(b"app:{users}:g1:s1:42"),
            Some(index("users"))
        );
    }

    #[test]
    fn each_chunk_holds_one_namespaces_keys() {
        let mut batches = Batches::new(3, 2);
        // A page mixing namespaces: 0 fills a chunk at its second key, 1 at its second too.
        let mut chunks = Vec::new();
        for (ns, key) in [(0, "a"), (1, "b"), (0, "c"), (2, "d"), (1, "e"), (0, "f")] {
            if let Some(chunk) = batches.push(ns, key.as_bytes().to_vec()) {
                chunks.push((ns, chunk));
            }
        }
        let as_str = |c: &[Vec<u8>]| {
            c.iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
        };
        let full: Vec<(usize, Vec<String>)> =
            chunks.iter().map(|(ns, c)| (*ns, as_str(c))).collect();
        assert_eq!(
            full,
            [
                (0, vec!["a".to_owned(), "c".to_owned()]),
                (1, vec!["b".to_owned(), "e".to_owned()])
            ]
        );
        // The remainders, one namespace each, once.
        assert_eq!(batches.held(), 2, "f and d");
        let rest: Vec<Vec<String>> = batches.drain().map(|c| as_str(&c)).collect();
        assert_eq!(batches.held(), 0);
        assert_eq!(rest, [vec!["f".to_owned()], vec!["d".to_owned()]]);
        assert_eq!(batches.drain().count(), 0);
        // A chunk length of 0 (never configured: `chunk_len` is at least 1) still sends keys.
        let mut one = Batches::new(1, 0);
        assert!(one.push(0, b"k".to_vec()).is_some());
    }
}

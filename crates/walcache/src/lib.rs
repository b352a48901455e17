//! # walcache
//!
//! A two-tier cache for services whose truth lives in PostgreSQL: an in-process
//! [moka](https://docs.rs/moka) **L1** over a shared Redis **L2**, read through to your own
//! loader, and kept fresh by `walcached`, a daemon that turns PostgreSQL's logical replication
//! stream into invalidations.
//!
//! ```no_run
//! use std::time::Duration;
//! use walcache::Walcache;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { id: i64, email: String }
//!
//! # #[derive(Debug)] struct DbError; impl std::fmt::Display for DbError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("db") } } impl std::error::Error for DbError {}
//! # async fn load_user(id: i64) -> Result<User, DbError> { Ok(User { id, email: String::new() }) }
//! # async fn run() -> Result<(), walcache::Error> {
//! // One handle per process: Redis connections and the single invalidation subscription,
//! // accepting only messages signed with the daemon's keys (`id:hexsecret`).
//! let walcache = Walcache::builder()
//!     .redis_url("redis://127.0.0.1:6379/")
//!     .signing_keys_env("WALCACHE_SIGNING_KEYS")
//!     .build()
//!     .await?;
//!
//! // One cache per namespace; the namespace is the one the daemon's rule names for the table.
//! let users = walcache
//!     .cache::<i64, User>("users")
//!     .max_capacity(100_000)
//!     .time_to_live(Duration::from_secs(60))
//!     .build()?;
//!
//! // L1 → L2 → your loader; the loader runs at most once per key across all processes.
//! let user = users.try_get_with(&42, load_user(42)).await?;
//! # let _ = user;
//! # Ok(()) }
//! ```
//!
//! ## Keys
//!
//! A key is any [`ToKey`] value: integers, strings, booleans, `Option`s and tuples of them.
//! Its canonical form is built by the key builder that the daemon also uses, so the key `42`
//! in namespace `users` is exactly what the daemon computes from the rule
//! `keys = ["{id}"]` for the row with `id = 42`. A tuple `(a, b)` matches the template
//! `"{a}:{b}"`.
//!
//! ## The read path
//!
//! 1. **L1 hit**: the value, while the invalidation stream is live (an atomic load and moka's
//!    lookup).
//! 2. **L1 miss**: the key's invalidation counters are read before any I/O, and concurrent
//!    callers of the key in this process share one load (single-flight).
//! 3. **One script, one round trip**, at the namespace's generation in Redis (read inside it,
//!    so a process that has not heard of a flush yet still reads the current generation),
//!    answers one of three ways: the value, checked against its tags' versions; a fill lease
//!    someone holds (another process loading, or a load of this process whose
//!    compare-and-set has not landed yet); or, the key being empty, the fill lease for this
//!    caller, taken in the same call with a random token and stamped with the Redis server's
//!    time.
//!    [`Cache::get`] never loads: its L2 read is one plain `GET`.
//! 4. **Lease won**: your loader runs. Its answer goes to the caller and into L1 (unless an
//!    invalidation touched the key since step 2), and a compare-and-set on its own task stores
//!    it in L2 only if the key still holds the token, the generation has not moved and none of
//!    its tags was invalidated after the stamp. If it is not stored (or the outcome is
//!    unknown), the value leaves L1 again. [`Cache::wait_for_l2_fills`] waits for these writes.
//! 5. **Another process's lease**: its value is polled for (at most
//!    [`WalcacheBuilder::lease_wait`]); then this caller loads without writing either tier.
//! 6. **Redis slow or down**: the loader answers, capped
//!    ([`WalcacheBuilder::max_bypass_loads`]), and nothing is written to L2.
//!
//! So an L2 hit costs one round trip, and a miss one round trip plus your loader: the
//! compare-and-set's round trip is not waited for. Hand-written cache-aside (`GET`, `SELECT`,
//! `SET`) waits for two.
//!
//! ## The consistency contract
//!
//! What you can rely on, with the daemon running:
//!
//! 1. **Bounded staleness.** After a transaction commits, every cached entry derived from a
//!    changed row is removed from L2 and from every process's L1 within a bound set by the
//!    daemon's decode → Redis → pub/sub path (measured on 2 shared cores at 1,000 commits/s:
//!    p50 0.53 ms, p99 1.2 ms from the writer's COMMIT returning to the entry leaving another
//!    process's L1; see `BENCHMARKS.md`). Where the daemon cannot know what it missed (a lost
//!    slot, another PostgreSQL server, a Redis that came back without some of its deletes —
//!    found through a durable marker per namespace), it flushes the namespaces instead, to a
//!    generation above any a process may hold. Faults stretch the bound as
//!    the table below says.
//! 2. **No stale fill.** A value your loader read before a commit is never stored in L2 or L1
//!    after that commit's invalidation was applied. L2 is written only by a compare-and-set on
//!    the fill's own random lease token (an invalidation — even a plain `DEL` — removes the
//!    token, so the fill fails); L1 is filled only if no invalidation reached this process
//!    while the value was being loaded, and the entry leaves L1 again when the compare-and-set
//!    does not store it. Between the caller's answer and that compare-and-set (one Redis round trip) the
//!    entry is like any filled just before an invalidation: the invalidation's announcement
//!    removes it.
//! 3. **Visibility.** The daemon re-invalidates a change once PostgreSQL makes it visible to
//!    new snapshots, so a fill that read the old row in between does not survive.
//! 4. **Missed messages are detected.** Pub/sub is at-most-once, so every message from the
//!    daemon carries its epoch and a sequence number, and the daemon sends heartbeats only
//!    while it is caught up with the server: each certifies that every change committed
//!    before the daemon's latest sample of PostgreSQL's WAL flush position (at most one
//!    heartbeat interval old) has been invalidated. L1 is used only while the stream is *live*; a gap, a reconnect, an epoch
//!    change, an undecodable message or heartbeat silence flushes L1 and bypasses it until the
//!    next in-sequence heartbeat.
//! 5. **Nothing committed is lost** by the daemon: it confirms its replication position only
//!    after the invalidations are published, so a crash replays rather than skips.
//! 6. **Full refresh.** As a safety net the daemon periodically expires every L2 entry filled
//!    before the cycle began. Its heartbeats carry the refresh interval and the namespaces its
//!    rules certify: L1 entries of those never outlive the interval (a longer
//!    [`CacheBuilder::time_to_live`] is cut to it, with an info line). A namespace no rule
//!    covers keeps its own time-to-live, with one warning: only application invalidations and
//!    time-to-live keep it fresh.
//! 7. **Freshness modes.** With [`Freshness::Available`] (the default), while the stream is not
//!    live reads skip L1 but keep using L2 (still kept fresh by the daemon's deletes) and the
//!    loader. With [`Freshness::Strict`], reads skip both tiers while not live, so the bound
//!    holds through every fault; those loads are capped
//!    ([`WalcacheBuilder::max_bypass_loads`]).
//! 8. **Out of service.** When the daemon cannot keep a namespace fresh (catalog drift it
//!    cannot repair: another consumer's publication that stopped publishing the table, a table
//!    re-created without a usable replica identity), its heartbeats list the namespace as out
//!    of service instead of certifying it. Reads of it then bypass L1 and L2 in both freshness
//!    modes — the loader serves them (capped by [`WalcacheBuilder::max_bypass_loads`]) and
//!    nothing is cached — until a heartbeat certifies it again, after the daemon has flushed
//!    it.
//!
//! Your loader must read the primary with a fresh snapshot (autocommit or `READ COMMITTED`):
//! a read replica or a long `REPEATABLE READ` transaction can return rows older than every
//! invalidation that has already passed, and no cache can detect that.
//!
//! **Application-side invalidation.** [`Cache::invalidate`], [`Cache::invalidate_tag`] and
//! [`Cache::invalidate_all`] remove the entries from L2 and announce them on a separate,
//! unsequenced channel that every process's subscriber applies to its L1; they never disturb
//! the daemon's sequence. Call them after your transaction commits and this process reads its
//! own write.
//!
//! **Signed invalidations.** Whoever can `PUBLISH` on the invalidation channels could keep
//! stale L1 entries alive with forged heartbeats, or empty every process's caches. With the
//! daemon's signing keys ([`WalcacheBuilder::signing_keys_env`], `signing_keys_file`,
//! `signing_keys`), a process applies only messages signed with them (HMAC-SHA256, wire format
//! v1.4), recent, and not replayed, and signs its own application messages; anything else is
//! ignored whole and counted. Every holder of a key can sign: the keys keep out everyone else
//! who can reach Redis, while the services holding them could write values into L2 anyway.
//! A handle that follows the stream without keys must say so ([`WalcacheBuilder::allow_unsigned`]).
//! Application-channel messages that do not open never flush or end liveness, and flushes
//! from it are coalesced (at most one applied per namespace per 100 ms, none dropped).
//!
//! **Without the daemon** ([`WalcacheBuilder::without_invalidation_stream`]) there is no
//! stream: a change made in PostgreSQL stays visible in each L1 for up to the L1 time-to-live
//! and in L2 for up to the L2 time-to-live, unless the application invalidates it itself.
//!
//! ## Failure behaviour
//!
//! | fault | what the cache does |
//! |---|---|
//! | Redis slow or down | every call has a timeout; after repeated failures a circuit breaker skips Redis for a cool-down, then probes. Reads are served by the loader (capped), L1 is bypassed because the stream is not live. No error reaches the caller for Redis trouble. |
//! | pub/sub connection lost | L1 flushed and bypassed; reconnects with capped exponential backoff and jitter; live again after resubscribing, flushing and hearing a heartbeat. |
//! | daemon dead, lagging or cut off | heartbeats stop: after `heartbeat_timeout`, L1 is flushed and bypassed (strict mode: L2 too). |
//! | pub/sub socket half-open (no FIN or RST ever arrives) | as heartbeat silence; then a PING on the connection goes unanswered for another `heartbeat_timeout` and the connection is replaced (as "pub/sub connection lost"). |
//! | loader fails | the error is returned ([`ErrorKind::Loader`]); with [`CacheBuilder::stale_if_error`] the last value seen within the maximum age is served instead. |
//! | undecodable bytes in L2 (a changed value type) | a miss, counted, overwritten by the next fill. Bump [`CacheBuilder::schema_version`] when `V` changes. |
//! | garbage on the invalidation channel | counted, L1 flushed, not live until the next heartbeat. Never a panic. |
//! | a caller drops its future mid-load | its lease in Redis is given back; a waiting caller takes over the load. |
//! | the daemon reports a namespace out of service (catalog drift it cannot repair) | L1 of the namespace dropped; every read of it goes to the loader (capped, counted as `walcache_bypass_loads_total{reason="out_of_service"}`), in both modes, filling neither tier; one warning per episode. Cached again once a heartbeat certifies it. The state follows the last heartbeat: kept through a loss of liveness (which adds its own rules), reset by a heartbeat without details (a v1.0 daemon: nothing out of service). |
//! | a namespace no rule of the daemon covers | as before (it is not in the heartbeats' lists, which is no fault): one warning per process that only application invalidations and time-to-live keep it fresh. |
//!
//! ## Staleness bound per fault
//!
//! How long a read can return a value older than an acknowledged commit, and what the
//! staleness auditor (`crates/walcache-audit`) measured in four runs of 11 M reads (two per
//! mode) with every fault injected four or five times per run, and two more of the final code
//! with two more fault kinds (worst staleness seen;
//! `BENCHMARKS.md`, "Staleness under faults"). The bounds are stated for the defaults:
//! `heartbeat_timeout` 3 s ([`WalcacheBuilder::heartbeat_timeout`]), the daemon's
//! `heartbeat_interval_ms` 250. The auditor's runs used a `heartbeat_timeout` of 1 s, so the
//! measured column of the silent faults is for 1 s. In [`Freshness::Strict`] mode every
//! row's bound is the same: `heartbeat_timeout` plus the publish path.
//!
//! | fault | [`Freshness::Available`]: bounded by | worst seen (available / strict) |
//! |---|---|---|
//! | none | the publish path (about a millisecond) | 42 ms of 8.4 M steady-state reads (p99 2.5–3.6 ms) |
//! | pub/sub connection killed or reset | the publish path: L1 is flushed at once, L2 stays fresh | 6.4 / 5.4 ms |
//! | Redis restart (empty) | the daemon's publish retry (at most 100 ms apart) | 26 / 88 ms |
//! | Redis back from an older snapshot or AOF, a failover to a replica that missed writes, `FLUSHALL` (daemon up or down) | L1: off until a heartbeat, and no heartbeat certifies a namespace until the daemon, finding its durable marker missing, behind the slot or not holding its last write, has flushed it. L2: the age of the state Redis came back with, plus until that flush (the next heartbeat interval; the daemon's start when it was down) | (two new fault kinds, `redis-snapshot` with the daemon up and down, and deterministic tests; see `BENCHMARKS.md`) |
//! | daemon killed | its downtime: L2 is not deleted until it replays from its slot | 271 / 218 ms (restarted at once) |
//! | daemon restarted over a backlog, or falling behind under load | L1: off from `heartbeat_timeout` after the daemon fell more than one heartbeat interval behind until it has caught up (no heartbeat certifies a position it has not published). L2: fresh only as the backlog is published, so its staleness is the daemon's lag (`walcached_replication_lag_seconds`) | 4,971 / 977 ms (5 s stop, 2.5–10 s catch-up of 320,000 keys) |
//! | PostgreSQL restart | the daemon's reconnect backoff once PostgreSQL is back (100 ms doubling to 2 s) | 965 / 466 ms |
//! | replication link silent (a frozen walsender, a blackholed network) | L1: heartbeats stop within two heartbeat intervals once the server writes, so `heartbeat_timeout`. L2: the hold; past the daemon's receive deadline (10 s), until it reconnects and takes over its orphaned walsender | 13.7 s / 977 ms (3 s and 13 s holds) |
//! | PostgreSQL failover or restore (another system or timeline) | every namespace is flushed when the daemon reconnects | (deterministic tests: a promoted copy, an older restore) |
//! | catalog drift without row events: a mapped table dropped and re-created, a partition truncated or detached, a table rewritten, the publication altered | with DDL capture installed (`walcached ddl-capture install`): the publish path, flushed in commit order. Without it: the daemon's `stream.catalog_interval_ms` (10 s), when the check finds it and flushes the namespaces (and repairs the daemon's own publication). Drift it cannot repair takes the namespace out of service at that check: from then on reads bypass both tiers, so the bound is the same interval | (deterministic tests) |
//! | a replica identity narrowed while the daemon runs, or a partition's narrower than its root's | none: a change whose old row lacks a template's columns flushes its namespace instead of naming a wrong key | (deterministic tests) |
//! | a commit waiting for a synchronous standby | a second invalidation once the commit becomes visible: the wait, plus the publish path | (deterministic test) |
//! | latency `d` on the Redis link | the publish path + `d` | 27 / 31 ms (`d` = 30 ms) |
//! | network partition to Redis (silent) | `heartbeat_timeout`: L1 serves until silence ends liveness | 812 / 781 ms |
//! | pub/sub messages lost | the next message's sequence gap, at most `heartbeat_timeout` | 603 / 604 ms (600 ms of loss) |
//!
//! A heartbeat certifies every change committed before the daemon's sample of the server's
//! WAL flush position. With `synchronous_commit = off` a commit is acknowledged before its
//! WAL is flushed, so a heartbeat can certify a position that does not contain it yet: add
//! the WAL writer's flush delay (at most three `wal_writer_delay`s, 600 ms by default) to
//! every bound for such commits.
//!
//! A shorter `heartbeat_timeout` (keep the daemon's `heartbeat_interval_ms` well below it)
//! shortens the silent faults' bound, at the price of more periods without L1 when a process
//! is descheduled, or the daemon falls behind, for that long.
//!
//! ## Metrics and tracing
//!
//! Emitted through the [`metrics`](https://docs.rs/metrics) facade (install any exporter);
//! names are in [`metrics`]. Loads run in a `walcache.load` tracing span.
//! Keys and values never appear in labels or logs.

mod auth;
mod breaker;
mod bypass;
mod cache;
mod codec;
mod counter;
mod error;
mod generation;
mod handle;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod hooks;
#[cfg(not(feature = "test-hooks"))]
mod hooks;
mod l2;
pub mod metrics;
/// The L2 value envelope (what a value key in Redis holds: see the `l2` module), its encoders
/// and decoders, public only for the hostile-input property tests (`tests/it/envelope`) and
/// the fuzz targets (`fuzz/` at the repository root). Not part of the API: it may change in
/// any release.
#[doc(hidden)]
pub mod envelope {
    pub use crate::l2::{
        negative_envelope, parse_envelope, split_value, stamp_of, value_envelope, Found,
    };
}
mod subscriber;

pub use breaker::BreakerState;
pub use cache::{Cache, CacheBuilder};
pub use codec::{Codec, CodecError, Json, Postcard};
pub use error::{Error, ErrorKind};
pub use handle::{Freshness, Walcache, WalcacheBuilder};
pub use walcache_protocol::{key_of, KeyBuilder, KeyPart, Keyring, SigningKey, ToKey};

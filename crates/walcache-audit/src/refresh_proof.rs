//! The full-refresh proof (DESIGN, consistency contract 6): corrupt the caches behind the
//! daemon's back, run one `walcached refresh` cycle, and show that nothing stale survives in
//! either tier.
//!
//! # What the contract promises
//!
//! The daemon cannot recompute values, so its safety net is expiry: a cycle deletes from L2
//! every value stamped at or before the cycle's start (every envelope carries its stamp: when
//! its fill lease was taken, in µs on the Redis server's clock), plus anything that is not an
//! envelope and any stamp implausibly far in the future. L1 is
//! bounded by the library's `time_to_live`, which must be kept at or below the refresh
//! interval. So, whatever was lost: **after one complete cycle, once the L1 time-to-live has
//! passed since the last L1 fill, no read is answered with anything filled before the cycle.**
//! The L1 wait is the contract's deadline, not synchronisation: [`prove`] computes the instant
//! and waits for it.
//!
//! # The procedure
//!
//! 1. `handles` fresh [`Walcache`] handles (each with its own subscriber), each with a cache on
//!    the namespace whose L1 `time_to_live` is [`ProofSetup::l1_ttl`]; every row is read
//!    through every handle (the loader reads `version` in autocommit).
//! 2. **Dropped invalidations.** The daemon is SIGKILLed; rows of the kind
//!    [`Kind::DroppedInvalidation`] get `version = version + 1000` committed; once the
//!    walsender is gone, the slot skips them (`pg_replication_slot_advance(slot,
//!    pg_current_wal_lsn())`), and every marker of the daemon's is moved to the same position,
//!    so that the daemon cannot tell (on its own, a slot advanced past its markers is a loss it
//!    finds and flushes; moved together, they stand for a loss no check can see, which is what
//!    the refresh is for). Every handle is seen not live (L1 flushed), the daemon restarted,
//!    every handle live again (new epoch). L2 still holds the old versions and the daemon will
//!    never delete them.
//! 3. **Corruption**, after the restart (a new epoch flushes L1):
//!    [`Kind::L2OldFill`] and [`Kind::L2FutureFill`]: a raw `SET` of a valid envelope with a
//!    wrong version and a stamp an hour before / a day after the Redis server's clock; [`Kind::Insert`]:
//!    [`Cache::insert`] of a wrong version through one handle (its L1 and L2, unconditionally);
//!    [`Kind::L1Only`]: `insert` of a wrong version through every handle, then the L2 key
//!    deleted (only L1 is wrong).
//! 4. **Before**: every row read through every handle twice, compared with the database. The
//!    tier of each read is known: L1 if [`Cache::contains_in_l1`] held it before the read (the
//!    handles are live throughout), the database if the loader ran, L2 otherwise. The first pass
//!    must see stale values from L2, the second from L1 — else the proof is vacuous (an error).
//!    L2 is also scanned directly: stale envelopes are there.
//! 5. **Control, no cycle**: wait out the L1 time-to-live, check that L1 holds nothing, read
//!    everything again. L2 still serves the stale values (and L1 fills from it again): L1's
//!    expiry alone does not clean up — it has to be the cycle. [`Kind::L1Only`] rows are fresh
//!    here already (the database answers).
//! 6. **The cycle**: `walcached refresh --config <the daemon's>` as a child process, exit 0.
//!    Right after, L2 is scanned: no value key stamped before the cycle (the Redis server's
//!    clock read just before the child started) may remain.
//! 7. **After**: wait until the L1 time-to-live has passed since the last L1 fill (end of the
//!    control pass), check that L1 holds nothing, read every row through every handle: no stale
//!    read, from either tier; L2 scanned again: every value matches the database.
//!
//! Nothing else may write the table or the namespace's keys during the proof: the truth is read
//! from the database once per pass.
//!
//! # Not covered, by design
//!
//! A corrupt stamp *slightly* in the future — up to the daemon's five-minute allowance for the
//! Redis server's clock stepping back — survives one cycle (it is deleted by the first cycle
//! that starts after it). Hosts' clocks do not enter: stamps, the cycle's start and the
//! future bound are all read from the Redis server's clock.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use walcache::{Cache, Codec as _, Postcard, Walcache};
use walcache_protocol::Naming;

use crate::daemon::Daemon;
use crate::BoxError;

/// The daemon's default replication slot (`postgres.slot`).
pub const DEFAULT_SLOT: &str = "walcached";

/// The value-schema version of the proof's caches (part of every L2 key).
const SCHEMA: u32 = 1;
/// Redis time-to-live of the raw corrupt envelopes (far beyond the proof).
const CORRUPT_L2_TTL: Duration = Duration::from_secs(3600);
/// Added to the version of [`Kind::DroppedInvalidation`] rows while the daemon is down.
const DROPPED_BUMP: i64 = 1000;
/// Setup steps (liveness, the walsender going away, the daemon restarting).
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// The `walcached refresh` child process.
const CYCLE_DEADLINE: Duration = Duration::from_secs(300);
/// Connecting to Redis and each command's reply.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);
/// The daemon deletes stamps further ahead of the Redis server's clock than this
/// (`MAX_FUTURE_STAMP`).
const DAEMON_FUTURE_ALLOWANCE: Duration = Duration::from_secs(300);

/// What the proof needs: servers, the running daemon, and a table it serves.
pub struct ProofSetup<'a> {
    /// A superuser connection to the database the daemon replicates (the slot is advanced
    /// through it, so it must be the slot's database).
    pub admin: &'a tokio_postgres::Client,
    /// A tokio-postgres connection string to the same database, for the loaders.
    pub pg_conn: &'a str,
    /// The Redis the daemon and the library share.
    pub redis_url: &'a str,
    /// The daemon's and the library's Redis key prefix.
    pub key_prefix: &'a str,
    /// The running daemon. Its configuration maps `table` to `namespace` with keys `["{id}"]`;
    /// its refresh schedule should be off (`interval_secs = 0`) so that the only cycle is the
    /// proof's. It is SIGKILLed and restarted once, and left running.
    pub daemon: &'a mut Daemon,
    /// The daemon's replication slot ([`DEFAULT_SLOT`] unless `postgres.slot` says otherwise).
    pub slot: &'a str,
    /// The table, optionally schema-qualified (`[A-Za-z0-9_.]` only): `id bigint PRIMARY KEY,
    /// version bigint NOT NULL`.
    pub table: &'a str,
    /// The namespace of the daemon's rule for `table`.
    pub namespace: &'a str,
    /// Ids `1..=rows` exist; at least 6 (one per corruption kind and an untouched one).
    pub rows: i64,
    /// How many independent `Walcache` handles to corrupt; at least 2.
    pub handles: usize,
    /// The caches' L1 `time_to_live` (e.g. 3 s): with the daemon's schedule on, it must be at
    /// or below `refresh.interval_secs`. The proof waits for it twice.
    pub l1_ttl: Duration,
    /// The handles' heartbeat timeout: well above the daemon's heartbeat interval (e.g. 1 s).
    /// The proof waits for it once (every handle must be seen not live after the SIGKILL).
    pub heartbeat_timeout: Duration,
}

/// How a row is corrupted. Rows are assigned by `id % 6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Not touched: must read fresh throughout.
    Untouched,
    /// Updated while the daemon was down, the slot advanced past the update: L2 keeps the old
    /// version and every handle's L1 refills from it.
    DroppedInvalidation,
    /// A raw `SET` of a wrong version stamped an hour ago (the Redis server's clock).
    L2OldFill,
    /// A raw `SET` of a wrong version stamped a day ahead (a corrupt stamp).
    L2FutureFill,
    /// `Cache::insert` of a wrong version through one handle: its L1 and L2.
    Insert,
    /// `Cache::insert` of a wrong version through every handle, then the L2 key deleted: only
    /// L1 is wrong.
    L1Only,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Untouched,
        Kind::DroppedInvalidation,
        Kind::L2OldFill,
        Kind::L2FutureFill,
        Kind::Insert,
        Kind::L1Only,
    ];

    /// The kind of row `id`.
    pub fn of(id: i64) -> Kind {
        Kind::ALL[usize::try_from(id.rem_euclid(6)).unwrap_or(0)]
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Untouched => "untouched",
            Kind::DroppedInvalidation => "dropped_invalidation",
            Kind::L2OldFill => "l2_old_fill",
            Kind::L2FutureFill => "l2_future_fill",
            Kind::Insert => "insert",
            Kind::L1Only => "l1_only",
        }
    }

    /// Whether the corruption reaches L2 (and so survives L1's expiry without a cycle).
    fn in_l2(self) -> bool {
        matches!(
            self,
            Kind::DroppedInvalidation | Kind::L2OldFill | Kind::L2FutureFill | Kind::Insert
        )
    }
}

/// What was corrupted, before any read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Corruption {
    /// Rows updated while the daemon was down, whose invalidations the slot skipped.
    pub dropped_invalidations: u64,
    /// The LSN the slot was advanced to.
    pub slot_advanced_to: String,
    /// L2 keys overwritten with a raw envelope, stamped an hour ago.
    pub l2_old_fill: u64,
    /// L2 keys overwritten with a raw envelope, stamped a day ahead.
    pub l2_future_fill: u64,
    /// Wrong versions written with `Cache::insert` into one handle's L1 and L2.
    pub l2_via_insert: u64,
    /// (handle, row) pairs whose L1 holds a wrong version that L2 does not (insert, then the L2
    /// key deleted).
    pub l1_only: u64,
    /// L2 keys holding a wrong version, by a direct scan after the two passes before the
    /// cycle.
    pub l2_stale_keys: u64,
    /// (handle, row) pairs whose L1 held a wrong version: stale reads from L1 in the second
    /// pass.
    pub l1_stale_entries: u64,
}

/// One pass of reads: every row through every handle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observation {
    /// (handle, row) pairs present in L1 before the pass began.
    pub l1_entries_at_start: u64,
    /// Reads made.
    pub reads: u64,
    /// Answered from L1, L2, the loader (the database).
    pub from_l1: u64,
    /// Answered from L2.
    pub from_l2: u64,
    /// Answered by the loader.
    pub from_db: u64,
    /// Reads whose version differs from the database's.
    pub stale: u64,
    /// Stale reads answered from L1.
    pub stale_from_l1: u64,
    /// Stale reads answered from L2.
    pub stale_from_l2: u64,
    /// Stale reads by corruption kind.
    pub stale_by_kind: BTreeMap<Kind, u64>,
    /// The first stale reads, for the report (at most 5).
    pub examples: Vec<String>,
    /// How long the pass took.
    pub elapsed_ms: f64,
}

/// A direct scan of the namespace's value keys in L2 (every generation and schema).
#[derive(Debug, Clone, Default, Serialize)]
pub struct L2Scan {
    /// Value keys found.
    pub value_keys: u64,
    /// Values (envelopes of a value).
    pub values: u64,
    /// Cached "not found" envelopes.
    pub negatives: u64,
    /// Fill leases.
    pub leases: u64,
    /// Keys that are not envelopes, or values that do not decode.
    pub undecodable: u64,
    /// Values and "not found"s stamped at or before the cutoff (the cycle's start, for the scans
    /// after the cycle; 0 otherwise).
    pub filled_at_or_before_cutoff: u64,
    /// Stamps beyond the daemon's five-minute allowance ahead of the Redis server's clock.
    pub filled_far_in_future: u64,
    /// Values whose version differs from the database's (or whose row does not exist).
    pub stale: u64,
}

/// The `walcached refresh` run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cycle {
    /// The Redis server's clock just before the child process started, µs since the Unix
    /// epoch: the cycle's start (read from the same clock) is at or after it.
    pub started_not_before_micros: u64,
    /// From spawning the child to its exit.
    pub duration_ms: f64,
    /// Parsed from its output.
    pub namespaces: u64,
    /// Parsed from its output.
    pub keys_scanned: u64,
    /// Parsed from its output.
    pub keys_deleted: u64,
    /// Its stdout, trimmed.
    pub output: String,
}

/// How long each step took, ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Handles built, live, every row read through each.
    pub warm_ms: f64,
    /// SIGKILL → updates → slot advanced → handles not live → restart → handles live.
    pub drop_invalidations_ms: f64,
    /// The raw writes and inserts.
    pub corrupt_ms: f64,
    /// Waiting out the L1 time-to-live before the control pass.
    pub control_wait_ms: f64,
    /// Waiting, after the cycle, until the L1 time-to-live had passed since the last L1 fill.
    pub after_wait_ms: f64,
    /// The whole proof.
    pub total_ms: f64,
}

/// The outcome of [`prove`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefreshProof {
    /// The namespace.
    pub namespace: String,
    /// Rows in the table.
    pub rows: i64,
    /// Handles corrupted.
    pub handles: usize,
    /// The caches' L1 time-to-live.
    pub l1_ttl_ms: f64,
    /// What was corrupted.
    pub corrupted: Corruption,
    /// First pass after the corruption: stale values from L2 (and from L1 for inserts).
    pub before: Observation,
    /// Second pass: every stale value now comes from L1.
    pub before_repeat: Observation,
    /// L2 after the first two passes.
    pub l2_before_cycle: L2Scan,
    /// After the L1 time-to-live, without a cycle: L2 still serves stale values.
    pub control_without_cycle: Observation,
    /// The cycle.
    pub cycle: Cycle,
    /// L2 right after the cycle, cutoff at its start: nothing stamped before it may remain.
    pub l2_after_cycle: L2Scan,
    /// The reads after the cycle and the L1 deadline: nothing stale.
    pub after: Observation,
    /// L2 after those reads: every value fresh.
    pub l2_after: L2Scan,
    /// Step durations.
    pub timings: Timings,
    /// Whether nothing stale survived (every check below held).
    pub passed: bool,
    /// The checks that failed: stale values or L1 entries that survived the cycle and the
    /// L1 deadline. Empty when `passed`.
    pub failures: Vec<String>,
}

impl RefreshProof {
    /// `Ok` if the proof passed, else an error listing the failures.
    ///
    /// # Errors
    ///
    /// The failures, joined.
    pub fn ensure_passed(&self) -> Result<(), BoxError> {
        if self.passed {
            Ok(())
        } else {
            Err(format!("full-refresh proof failed: {}", self.failures.join("; ")).into())
        }
    }
}

/// One handle and its cache.
struct Reader {
    handle: Walcache,
    cache: Cache<i64, i64>,
}

/// Run the proof (see the [module documentation](self)).
///
/// # Errors
///
/// A failed step (servers, the daemon, the refresh child process), or a vacuous proof: a
/// corruption kind that was never observed stale before the cycle, or stale values that L1's
/// expiry alone cleaned up. Stale values *after* the cycle are not an error: they are the
/// proof's verdict, in [`RefreshProof::failures`] with [`RefreshProof::passed`] false.
pub async fn prove(setup: ProofSetup<'_>) -> Result<RefreshProof, BoxError> {
    let ProofSetup {
        admin,
        pg_conn,
        redis_url,
        key_prefix,
        daemon,
        slot,
        table,
        namespace,
        rows,
        handles,
        l1_ttl,
        heartbeat_timeout,
    } = setup;
    let total = Instant::now();
    if rows < 6 {
        return Err(format!("rows = {rows}: the proof needs at least 6 (one per kind)").into());
    }
    if handles < 2 {
        return Err(format!("handles = {handles}: the proof needs at least 2").into());
    }
    if table.is_empty()
        || !table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(format!("table {table:?}: use [A-Za-z0-9_.] only").into());
    }
    let naming = Naming::new(key_prefix)?;
    let mut proof = RefreshProof {
        namespace: namespace.to_owned(),
        rows,
        handles,
        l1_ttl_ms: ms(l1_ttl),
        ..RefreshProof::default()
    };
    let ids: Vec<i64> = (1..=rows).collect();
    let loader_db = pg_client(pg_conn).await?;
    let loads = AtomicU64::new(0);
    let select = format!("SELECT version FROM {table} WHERE id = $1");
    let mut redis = redis_connection(redis_url).await?;
    let ctx = Ctx {
        admin,
        table,
        loader_db: &loader_db,
        select: &select,
        loads: &loads,
        ids: &ids,
    };

    // 1. Handles, live, warm.
    let step = Instant::now();
    let mut readers = Vec::with_capacity(handles);
    for _ in 0..handles {
        let handle = Walcache::builder()
            .allow_unsigned()
            .redis_url(redis_url)
            .key_prefix(key_prefix)
            .heartbeat_timeout(heartbeat_timeout)
            .build()
            .await?;
        let cache = handle
            .cache::<i64, i64>(namespace)
            .time_to_live(l1_ttl)
            .schema_version(SCHEMA)
            .build()?;
        readers.push(Reader { handle, cache });
    }
    wait_all_live(&readers, true, STEP_DEADLINE)
        .await
        .map_err(|e| with_log(e, daemon))?;
    for r in &readers {
        for &id in &ids {
            ctx.read(&r.cache, id).await?;
        }
    }
    proof.timings.warm_ms = ms(step.elapsed());

    // 2. Drop invalidations: the daemon is down while the rows change, and the slot skips them.
    let step = Instant::now();
    daemon.sigkill().await?;
    let dropped: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|&id| Kind::of(id) == Kind::DroppedInvalidation)
        .collect();
    // Whatever fails in between, the daemon is started again before the error is returned.
    let skipped = async {
        let (n, lsn) = skip_updates(admin, table, slot, &dropped).await?;
        advance_markers(&mut redis, &naming, &lsn).await?;
        // Every handle not live (its L1 flushed), then live under the new daemon's epoch: the
        // L1 corruption below cannot be undone by that flush.
        wait_all_live(&readers, false, heartbeat_timeout + STEP_DEADLINE).await?;
        Ok::<_, BoxError>((n, lsn))
    }
    .await;
    daemon.spawn()?;
    (
        proof.corrupted.dropped_invalidations,
        proof.corrupted.slot_advanced_to,
    ) = skipped?;
    wait_all_live(&readers, true, STEP_DEADLINE)
        .await
        .map_err(|e| with_log(e, daemon))?;
    proof.timings.drop_invalidations_ms = ms(step.elapsed());

    // 3. Corrupt L2 and L1 behind the daemon's back.
    let step = Instant::now();
    let truth = ctx.truth().await?;
    let generation = current_generation(&mut redis, &naming, namespace).await?;
    for &id in &ids {
        let right = truth.get(&id).copied().ok_or_else(|| missing_row(id))?;
        let wrong = right - 1;
        match Kind::of(id) {
            Kind::Untouched | Kind::DroppedInvalidation => {}
            kind @ (Kind::L2OldFill | Kind::L2FutureFill) => {
                let now = redis_time_micros(&mut redis).await?;
                let stamp = if kind == Kind::L2OldFill {
                    now.saturating_sub(3_600_000_000)
                } else {
                    now + 86_400_000_000
                };
                let key = naming.value_key(namespace, generation, SCHEMA, &walcache::key_of(&id));
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg(value_envelope(stamp, &Postcard.encode(&wrong)?))
                    .arg("PX")
                    .arg(u64::try_from(CORRUPT_L2_TTL.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut redis)
                    .await?;
                if kind == Kind::L2OldFill {
                    proof.corrupted.l2_old_fill += 1;
                } else {
                    proof.corrupted.l2_future_fill += 1;
                }
            }
            // The write-through `insert` is deprecated for applications (it races concurrent
            // writers); here it is the corruption itself: a wrong value in L1 and L2.
            #[allow(deprecated)]
            Kind::Insert => {
                let r = &readers[usize::try_from(id).unwrap_or(0) % readers.len()];
                r.cache.insert(&id, wrong).await?;
                proof.corrupted.l2_via_insert += 1;
            }
            #[allow(deprecated)]
            Kind::L1Only => {
                for r in &readers {
                    r.cache.insert(&id, wrong).await?;
                    if r.cache.contains_in_l1(&id) {
                        proof.corrupted.l1_only += 1;
                    }
                }
                let key = naming.value_key(namespace, generation, SCHEMA, &walcache::key_of(&id));
                let () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await?;
            }
        }
    }
    if generation != current_generation(&mut redis, &naming, namespace).await? {
        return Err(
            "the namespace's generation changed during the corruption (a flush by the \
                    daemon?): the corrupt keys are unreachable"
                .into(),
        );
    }
    proof.timings.corrupt_ms = ms(step.elapsed());

    // 4. Before: stale from L2 on the first pass, from L1 on the second.
    proof.before = ctx.observe(&readers).await?;
    proof.before_repeat = ctx.observe(&readers).await?;
    let mut last_l1_fill = Instant::now();
    proof.l2_before_cycle = scan_l2(&mut redis, &naming, namespace, &ctx.truth().await?, 0).await?;
    proof.corrupted.l2_stale_keys = proof.l2_before_cycle.stale;
    proof.corrupted.l1_stale_entries = proof.before_repeat.stale_from_l1;
    let mut vacuous = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Untouched) {
        let seen = proof.before.stale_by_kind.get(&kind).copied().unwrap_or(0)
            + proof
                .before_repeat
                .stale_by_kind
                .get(&kind)
                .copied()
                .unwrap_or(0);
        if seen == 0 {
            vacuous.push(format!("{} rows never read stale", kind.name()));
        }
    }
    if proof.before.stale_from_l2 == 0 {
        vacuous.push("no stale read from L2 before the cycle".to_owned());
    }
    if proof.before_repeat.stale_from_l1 == 0 {
        vacuous.push("no stale read from L1 before the cycle".to_owned());
    }
    if proof.l2_before_cycle.stale == 0 {
        vacuous.push("no stale value in L2 before the cycle".to_owned());
    }
    if !vacuous.is_empty() {
        return Err(format!(
            "the corruption did not take, the proof would be vacuous: {}; before: {:?}",
            vacuous.join("; "),
            proof.before
        )
        .into());
    }

    // 5. Control: L1's expiry alone does not clean L2.
    let step = Instant::now();
    sleep_until(last_l1_fill + l1_ttl).await;
    proof.timings.control_wait_ms = ms(step.elapsed());
    proof.control_without_cycle = ctx.observe(&readers).await?;
    last_l1_fill = Instant::now();
    let control = &proof.control_without_cycle;
    let l2_kinds_stale = Kind::ALL
        .into_iter()
        .filter(|k| k.in_l2())
        .all(|k| control.stale_by_kind.get(&k).copied().unwrap_or(0) > 0);
    if control.stale == 0 || !l2_kinds_stale {
        return Err(format!(
            "without a cycle, after the L1 time-to-live, L2 no longer served every kind of stale \
             value (something other than the cycle cleaned up: the proof would be vacuous): \
             {control:?}"
        )
        .into());
    }
    if control.l1_entries_at_start > 0 {
        proof.failures.push(format!(
            "{} L1 entries outlived the L1 time-to-live ({} ms) before the control pass",
            control.l1_entries_at_start,
            ms(l1_ttl)
        ));
    }

    // 6. One cycle.
    proof.cycle = run_cycle(daemon, &mut redis).await?;
    proof.l2_after_cycle = scan_l2(
        &mut redis,
        &naming,
        namespace,
        &ctx.truth().await?,
        proof.cycle.started_not_before_micros,
    )
    .await?;
    if proof.cycle.keys_deleted == 0 {
        proof
            .failures
            .push("the cycle reported 0 keys deleted".to_owned());
    }
    let s = &proof.l2_after_cycle;
    if s.filled_at_or_before_cutoff > 0 || s.filled_far_in_future > 0 || s.undecodable > 0 {
        proof.failures.push(format!(
            "right after the cycle, L2 still held {} entries stamped before it, {} stamped far \
             in the future, {} undecodable",
            s.filled_at_or_before_cutoff, s.filled_far_in_future, s.undecodable
        ));
    }

    // 7. After the L1 deadline: nothing stale, in either tier.
    let step = Instant::now();
    sleep_until(last_l1_fill + l1_ttl).await;
    proof.timings.after_wait_ms = ms(step.elapsed());
    proof.after = ctx.observe(&readers).await?;
    proof.l2_after = scan_l2(
        &mut redis,
        &naming,
        namespace,
        &ctx.truth().await?,
        proof.cycle.started_not_before_micros,
    )
    .await?;
    let a = &proof.after;
    if a.l1_entries_at_start > 0 {
        proof.failures.push(format!(
            "{} L1 entries outlived the L1 time-to-live ({} ms) after the cycle",
            a.l1_entries_at_start,
            ms(l1_ttl)
        ));
    }
    if a.stale > 0 {
        proof.failures.push(format!(
            "{} stale reads after the cycle ({} from L1, {} from L2): {}",
            a.stale,
            a.stale_from_l1,
            a.stale_from_l2,
            a.examples.join(", ")
        ));
    }
    let s = &proof.l2_after;
    if s.stale > 0 || s.filled_at_or_before_cutoff > 0 || s.undecodable > 0 {
        proof.failures.push(format!(
            "after the cycle and the reads, L2 held {} stale values, {} entries stamped before \
             the cycle, {} undecodable",
            s.stale, s.filled_at_or_before_cutoff, s.undecodable
        ));
    }
    proof.passed = proof.failures.is_empty();
    proof.timings.total_ms = ms(total.elapsed());
    drop(readers);
    Ok(proof)
}

/// What every pass needs.
struct Ctx<'a> {
    admin: &'a tokio_postgres::Client,
    table: &'a str,
    loader_db: &'a tokio_postgres::Client,
    select: &'a str,
    loads: &'a AtomicU64,
    ids: &'a [i64],
}

impl Ctx<'_> {
    /// Read `id` through `cache`; the loader reads the primary in autocommit.
    async fn read(&self, cache: &Cache<i64, i64>, id: i64) -> Result<i64, BoxError> {
        let (db, select, loads) = (self.loader_db, self.select, self.loads);
        let v = cache
            .try_get_with(&id, async move {
                loads.fetch_add(1, Ordering::Relaxed);
                db.query_one(select, &[&id])
                    .await
                    .and_then(|r| r.try_get::<_, i64>(0))
            })
            .await
            .map_err(|e| format!("reading id {id} through the cache: {e}"))?;
        Ok(v)
    }

    /// Every row's committed version.
    async fn truth(&self) -> Result<HashMap<i64, i64>, BoxError> {
        let rows = self
            .admin
            .query(
                &format!("SELECT id, version FROM {} WHERE id = ANY($1)", self.table),
                &[&self.ids],
            )
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert(r.try_get::<_, i64>(0)?, r.try_get::<_, i64>(1)?);
        }
        Ok(out)
    }

    /// One pass: every row through every handle, compared with the database.
    async fn observe(&self, readers: &[Reader]) -> Result<Observation, BoxError> {
        let started = Instant::now();
        let truth = self.truth().await?;
        let mut o = Observation::default();
        for r in readers {
            for &id in self.ids {
                if r.cache.contains_in_l1(&id) {
                    o.l1_entries_at_start += 1;
                }
            }
        }
        for (h, r) in readers.iter().enumerate() {
            for &id in self.ids {
                let right = truth.get(&id).copied().ok_or_else(|| missing_row(id))?;
                let in_l1 = r.cache.contains_in_l1(&id);
                let loads_before = self.loads.load(Ordering::Relaxed);
                let seen = self.read(&r.cache, id).await?;
                let loaded = self.loads.load(Ordering::Relaxed) != loads_before;
                o.reads += 1;
                let tier = if loaded {
                    o.from_db += 1;
                    "database"
                } else if in_l1 {
                    o.from_l1 += 1;
                    "L1"
                } else {
                    o.from_l2 += 1;
                    "L2"
                };
                if seen != right {
                    o.stale += 1;
                    match tier {
                        "L1" => o.stale_from_l1 += 1,
                        "L2" => o.stale_from_l2 += 1,
                        // The loader reads the database: only a concurrent writer explains it.
                        _ => {
                            return Err(format!(
                                "handle {h} id {id}: the loader returned {seen}, the database \
                                 says {right}: something else writes {}",
                                self.table
                            )
                            .into())
                        }
                    }
                    *o.stale_by_kind.entry(Kind::of(id)).or_default() += 1;
                    if o.examples.len() < 5 {
                        o.examples.push(format!(
                            "handle {h} id {id} ({}): {seen} from {tier}, database {right}",
                            Kind::of(id).name()
                        ));
                    }
                }
            }
        }
        // The tier of a read is known only if L1 was in use throughout.
        if let Some(h) = readers.iter().position(|r| !r.handle.is_live()) {
            return Err(format!(
                "handle {h} was not live at the end of a pass: the tiers of its reads are unknown"
            )
            .into());
        }
        o.elapsed_ms = ms(started.elapsed());
        Ok(o)
    }
}

/// Run `walcached refresh --config <the daemon's>` and parse what it did.
async fn run_cycle(daemon: &Daemon, redis: &mut MultiplexedConnection) -> Result<Cycle, BoxError> {
    let mut cmd = tokio::process::Command::new(&daemon.bin);
    cmd.arg("refresh")
        .arg("--config")
        .arg(&daemon.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WALCACHED_") {
            cmd.env_remove(name);
        }
    }
    let started_not_before_micros = redis_time_micros(redis).await?;
    let started = Instant::now();
    let out = tokio::time::timeout(CYCLE_DEADLINE, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "`{} refresh` did not finish within {} s",
                daemon.bin.display(),
                CYCLE_DEADLINE.as_secs()
            )
        })??;
    let duration_ms = ms(started.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "`{} refresh --config {}` failed ({}): {stdout} {}",
            daemon.bin.display(),
            daemon.config.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let (namespaces, keys_scanned, keys_deleted) = parse_cycle_report(&stdout)
        .ok_or_else(|| format!("unexpected output from `walcached refresh`: {stdout:?}"))?;
    Ok(Cycle {
        started_not_before_micros,
        duration_ms,
        namespaces,
        keys_scanned,
        keys_deleted,
        output: stdout,
    })
}

/// `refresh complete: N namespaces, S keys scanned, D keys deleted, P tag versions pruned, X
/// seconds` (other parts ignored).
fn parse_cycle_report(out: &str) -> Option<(u64, u64, u64)> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("refresh complete: "))?;
    let mut counts = HashMap::new();
    for part in line.split(", ") {
        let (n, what) = part.split_once(' ')?;
        counts.insert(what, n);
    }
    let get = |what: &str| counts.get(what).and_then(|n| n.parse().ok());
    Some((
        get("namespaces")?,
        get("keys scanned")?,
        get("keys deleted")?,
    ))
}

/// Scan every value key of `namespace` and judge each against `truth`; `cutoff_micros` > 0
/// counts the entries stamped at or before it (µs, the Redis server's clock).
async fn scan_l2(
    conn: &mut MultiplexedConnection,
    naming: &Naming,
    namespace: &str,
    truth: &HashMap<i64, i64>,
    cutoff_micros: u64,
) -> Result<L2Scan, BoxError> {
    let prefix = naming.value_key_prefix(namespace);
    let pattern = format!("{prefix}[0-9]*");
    let mut keys = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        keys.extend(
            page.into_iter()
                .filter_map(|k| value_key_id(&k, prefix.as_bytes()).map(|id| (k, id))),
        );
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let future = redis_time_micros(conn).await?
        + u64::try_from(DAEMON_FUTURE_ALLOWANCE.as_micros()).unwrap_or(0);
    let mut s = L2Scan::default();
    for (key, id) in keys {
        let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(conn).await?;
        let Some(bytes) = bytes else { continue }; // expired or deleted since the SCAN
        s.value_keys += 1;
        let stamp = match Envelope::parse(&bytes) {
            Envelope::Lease => {
                s.leases += 1;
                continue;
            }
            Envelope::Undecodable => {
                s.undecodable += 1;
                continue;
            }
            Envelope::Negative { stamp } => {
                s.negatives += 1;
                if id.is_some_and(|id| truth.contains_key(&id)) {
                    s.stale += 1; // "not found" for a row that exists
                }
                stamp
            }
            Envelope::Value { stamp, payload } => {
                s.values += 1;
                match Postcard.decode::<i64>(payload) {
                    Ok(v) => {
                        if id.and_then(|id| truth.get(&id)) != Some(&v) {
                            s.stale += 1;
                        }
                    }
                    Err(_) => s.undecodable += 1,
                }
                stamp
            }
        };
        if cutoff_micros > 0 && stamp <= cutoff_micros {
            s.filled_at_or_before_cutoff += 1;
        }
        if stamp > future {
            s.filled_far_in_future += 1;
        }
    }
    Ok(s)
}

/// A value key's id: `prefix` + digits + `:s` + digits + `:` + the key. `None` (inside `Some`)
/// when the key is not an integer; `None` when the key is not a value key at all.
#[allow(clippy::option_option)]
fn value_key_id(key: &[u8], prefix: &[u8]) -> Option<Option<i64>> {
    fn digits(s: &[u8]) -> Option<&[u8]> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0).then(|| &s[n..])
    }
    let rest = key.strip_prefix(prefix)?;
    let rest = digits(rest)?.strip_prefix(b":s")?;
    let rest = digits(rest)?.strip_prefix(b":")?;
    Some(std::str::from_utf8(rest).ok().and_then(|k| k.parse().ok()))
}

/// What a value key holds (the library's envelope format, `walcache::l2`; stamps in µs on the
/// Redis server's clock).
#[derive(Debug, PartialEq, Eq)]
enum Envelope<'a> {
    Value { stamp: u64, payload: &'a [u8] },
    Negative { stamp: u64 },
    Lease,
    Undecodable,
}

impl Envelope<'_> {
    fn parse(b: &[u8]) -> Envelope<'_> {
        let fill = |b: &[u8]| -> Option<u64> {
            let raw: [u8; 8] = b.get(1..9)?.try_into().ok()?;
            Some(u64::from_le_bytes(raw))
        };
        match b.first() {
            Some(0) if b.get(1) == Some(&b'L') => Envelope::Lease,
            Some(2) if b.len() == 9 => {
                fill(b).map_or(Envelope::Undecodable, |stamp| Envelope::Negative { stamp })
            }
            Some(1) => {
                let parsed = (|| {
                    let stamp = fill(b)?;
                    let len: [u8; 2] = b.get(9..11)?.try_into().ok()?;
                    let tags_len = usize::from(u16::from_le_bytes(len));
                    let payload = b.get(11 + tags_len..)?;
                    Some(Envelope::Value { stamp, payload })
                })();
                parsed.unwrap_or(Envelope::Undecodable)
            }
            _ => Envelope::Undecodable,
        }
    }
}

/// A value envelope without tags, stamped `stamp` (µs).
fn value_envelope(stamp: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + payload.len());
    out.push(1);
    out.extend_from_slice(&stamp.to_le_bytes());
    out.extend_from_slice(&0_u16.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The namespace's generation in Redis (absent: 0, as the library reads it).
async fn current_generation(
    conn: &mut MultiplexedConnection,
    naming: &Naming,
    namespace: &str,
) -> Result<u64, BoxError> {
    let g: Option<String> = redis::cmd("GET")
        .arg(naming.generation_key(namespace))
        .query_async(conn)
        .await?;
    match g {
        None => Ok(0),
        Some(g) => g
            .parse()
            .map_err(|_| format!("the generation of {namespace:?} is not a number: {g:?}").into()),
    }
}

/// Commit `version + 1000` to the `dropped` rows while the daemon is down, then advance its
/// slot past them once its walsender is gone: their invalidations are never sent. Returns the
/// rows updated and the LSN the slot now starts at.
async fn skip_updates(
    admin: &tokio_postgres::Client,
    table: &str,
    slot: &str,
    dropped: &[i64],
) -> Result<(u64, String), BoxError> {
    let n = admin
        .execute(
            &format!("UPDATE {table} SET version = version + {DROPPED_BUMP} WHERE id = ANY($1)"),
            &[&dropped],
        )
        .await?;
    wait_slot_inactive(admin, slot).await?;
    let row = admin
        .query_one(
            "SELECT end_lsn::text FROM pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&slot],
        )
        .await
        .map_err(|e| format!("advancing the replication slot {slot:?}: {e}"))?;
    Ok((n, row.try_get(0)?))
}

/// Move every marker of the daemon's ([`Naming::marker_key`], one per namespace it writes to)
/// to `lsn`, as if the daemon had published up to there.
async fn advance_markers(
    redis: &mut MultiplexedConnection,
    naming: &Naming,
    lsn: &str,
) -> Result<(), BoxError> {
    let pattern = format!("{}:*:mark", naming.prefix());
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(redis).await?;
    if keys.is_empty() {
        return Err(format!("no marker matches {pattern:?}: the daemon never ran").into());
    }
    for key in keys {
        redis::cmd("HSET")
            .arg(&key)
            .arg("lsn")
            .arg(lsn)
            .query_async::<()>(redis)
            .await?;
    }
    Ok(())
}

/// Wait until the slot has no walsender (the SIGKILLed daemon's is gone).
async fn wait_slot_inactive(admin: &tokio_postgres::Client, slot: &str) -> Result<(), BoxError> {
    let until = Instant::now() + STEP_DEADLINE;
    loop {
        let active: Option<bool> = admin
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match active {
            None => {
                return Err(format!(
                    "no replication slot {slot:?}: pass the daemon's postgres.slot"
                )
                .into())
            }
            Some(false) => return Ok(()),
            Some(true) if Instant::now() >= until => {
                return Err(format!(
                    "the replication slot {slot:?} was still active {} s after the daemon was \
                     killed",
                    STEP_DEADLINE.as_secs()
                )
                .into())
            }
            Some(true) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Wait until every handle's liveness is `live`.
async fn wait_all_live(readers: &[Reader], live: bool, deadline: Duration) -> Result<(), BoxError> {
    let what = if live {
        "the handles' streams to become live"
    } else {
        "the handles' streams to end"
    };
    walcache_testkit::wait_until(what, deadline, || async {
        readers.iter().all(|r| r.handle.is_live() == live)
    })
    .await?;
    Ok(())
}

/// Wait for a deadline of the contract (not a synchronisation: the instant is computed).
async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
}

async fn pg_client(conn: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn redis_connection(url: &str) -> Result<MultiplexedConnection, BoxError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn with_log(e: BoxError, daemon: &Daemon) -> BoxError {
    format!("{e}; walcached log:\n{}", daemon.log_tail()).into()
}

fn missing_row(id: i64) -> BoxError {
    format!("row {id} is missing from the table (ids 1..=rows must exist)").into()
}

/// The Redis server's clock (`TIME`), µs since the Unix epoch: the clock of every stamp.
async fn redis_time_micros(conn: &mut MultiplexedConnection) -> Result<u64, BoxError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1_000_000 + micros)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_keys_parse() {
        let payload = Postcard.encode(&-7_i64).expect("encode");
        let e = value_envelope(1234, &payload);
        match Envelope::parse(&e) {
            Envelope::Value { stamp, payload } => {
                assert_eq!(stamp, 1234);
                assert_eq!(Postcard.decode::<i64>(payload).expect("decode"), -7);
            }
            other => panic!("{other:?}"),
        }
        let mut neg = vec![2];
        neg.extend_from_slice(&99_u64.to_le_bytes());
        assert_eq!(Envelope::parse(&neg), Envelope::Negative { stamp: 99 });
        assert_eq!(Envelope::parse(b"\x00Labc"), Envelope::Lease);
        assert_eq!(Envelope::parse(b"\x01abc"), Envelope::Undecodable);
        assert_eq!(Envelope::parse(b""), Envelope::Undecodable);

        let p = b"a:{n}:g";
        assert_eq!(value_key_id(b"a:{n}:g3:s1:42", p), Some(Some(42)));
        assert_eq!(value_key_id(b"a:{n}:g3:s1:x", p), Some(None));
        assert_eq!(value_key_id(b"a:{n}:gen", p), None);
        assert_eq!(value_key_id(b"a:{n}:g3:s1", p), None);
    }

    #[test]
    fn the_cycle_report_parses() {
        let out = "refresh complete: 1 namespaces, 120 keys scanned, 118 keys deleted, 3 tag \
                   versions pruned, 0.012 seconds";
        assert_eq!(parse_cycle_report(out), Some((1, 120, 118)));
        assert_eq!(parse_cycle_report("refresh incomplete: 1 keys"), None);
    }

    #[test]
    fn every_kind_has_rows() {
        let kinds: std::collections::BTreeSet<Kind> = (1..=6).map(Kind::of).collect();
        assert_eq!(kinds.len(), 6);
    }
}

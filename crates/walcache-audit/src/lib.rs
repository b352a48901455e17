//! The staleness auditor's pure parts: the shared clock, the Zipf sampler, and the checker
//! that classifies every observed read against the committed versions.
//!
//! The binary (`walcache-audit`, see `src/main.rs`) runs the workload against real servers
//! and a real `walcached`; everything here is deterministic and tested on hand-made
//! observations (`tests/checker.rs`).
//!
//! # The model
//!
//! Writers run `UPDATE audit_rows SET version = version + 1 WHERE id = $1 RETURNING version`
//! in autocommit and record, for each `(id, version)`, the instant the statement returned
//! (the COMMIT had returned by then). Readers record `(id, version_seen, t_read_start)`. All
//! instants come from [`now_ns`], `CLOCK_MONOTONIC`, which every process on the machine
//! shares (unlike `std::time::Instant`, whose values are opaque outside the process).
//!
//! A read is **stale** if some version newer than the one it saw had its COMMIT return
//! strictly before the read started. Its **staleness** is `t_read_start` minus the earliest
//! such return. Reads are classified as [`Class::Fresh`], [`Class::StaleWithin`] or
//! [`Class::StaleBeyond`] the bound that applies at the read's start ([`Bounds`]).

pub mod daemon;
pub mod refresh_proof;

use std::collections::HashMap;

use serde::Serialize;

/// Errors of the auditor's set-up and fault injection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Nanoseconds on `CLOCK_MONOTONIC`: comparable across every process on this machine.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Monotonic time is never negative.
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Parse a duration such as `250ms`, `45s`, `10m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: not a valid duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A Zipf(s) sampler over ids `1..=n`: id `k` has weight `1 / k^s` (the test kit's ranks,
/// shifted to ids).
#[derive(Debug, Clone)]
pub struct Zipf(walcache_testkit::Zipf);

impl Zipf {
    /// A sampler over `1..=n` with exponent `s` (`s = 0` is uniform).
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn new(n: usize, s: f64) -> Zipf {
        Zipf(walcache_testkit::Zipf::new(n, s))
    }

    /// The id for a uniform sample `u` in `[0, 1)`.
    pub fn id_for(&self, u: f64) -> i64 {
        self.0.rank(u) as i64 + 1
    }

    /// Draw an id.
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        self.id_for(rng.random::<f64>())
    }
}

/// One committed write: `version` of row `id`, whose COMMIT returned at `t_ns`.
///
/// A DELETE commits a version too: the row's state "absent" as of `version`. Versions of a
/// row increase by one with every committed write, whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The row (a [`row_key`] when several tables are audited).
    pub id: i64,
    /// The version written (for a DELETE: the version of the absence).
    pub version: i64,
    /// Whether this version is the row's absence (a DELETE, or a row not yet inserted).
    pub absent: bool,
    /// When the statement was sent: a read that ends after it may already see it.
    pub t_start_ns: u64,
    /// When the statement (and so its COMMIT) had returned to the writer — or, for a commit
    /// whose outcome was unknown (the connection broke), when re-reading the row showed it.
    pub t_ns: u64,
}

impl Commit {
    /// A present version, sent and returned at `t_ns` (initial rows, hand-made histories).
    pub fn at(id: i64, version: i64, t_ns: u64) -> Commit {
        Commit {
            id,
            version,
            absent: false,
            t_start_ns: t_ns,
            t_ns,
        }
    }
}

/// The key of row `id` of audited table number `table` in one `i64`, so one history holds
/// every table: the table in the top 16 bits, the id (below 2^40) in the rest.
pub fn row_key(table: u16, id: i64) -> i64 {
    (i64::from(table) << 40) | id
}

/// `(table, id)` of a [`row_key`].
pub fn split_row_key(key: i64) -> (u16, i64) {
    ((key >> 40) as u16, key & ((1 << 40) - 1))
}

/// One read: reader `reader` saw `version` of row `id` (`None`: "not found"), in a read
/// that started at `t_ns` and ended at `t_end_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// The row.
    pub id: i64,
    /// The version the cache returned; `None` when it answered "not found".
    pub version: Option<i64>,
    /// When the read started.
    pub t_ns: u64,
    /// When it returned.
    pub t_end_ns: u64,
    /// Which reader (cache handle) made it.
    pub reader: u32,
}

/// Every committed version, per row, for the staleness lookup.
#[derive(Debug, Default)]
pub struct History {
    /// Per id: versions ascending, and for each index the earliest commit time (with its
    /// version) among that version and all newer ones.
    rows: HashMap<i64, Row>,
}

#[derive(Debug, Default)]
struct Row {
    versions: Vec<i64>,
    /// `suffix_min[i]` = (time, version) of the earliest return among `versions[i..]`.
    suffix_min: Vec<(u64, i64)>,
    /// The row's absences: (version, when its DELETE was sent), versions ascending.
    absences: Vec<(i64, u64)>,
}

/// Why a read was stale: the newer version whose COMMIT returned first, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Newer {
    /// The newer version.
    pub version: i64,
    /// When its COMMIT returned.
    pub t_ns: u64,
}

impl History {
    /// Index the commits (any order). A version recorded twice keeps its earliest time.
    pub fn new(commits: &[Commit]) -> History {
        let mut by_id: HashMap<i64, Vec<(i64, u64)>> = HashMap::new();
        let mut absences: HashMap<i64, Vec<(i64, u64)>> = HashMap::new();
        for c in commits {
            by_id.entry(c.id).or_default().push((c.version, c.t_ns));
            if c.absent {
                absences
                    .entry(c.id)
                    .or_default()
                    .push((c.version, c.t_start_ns));
            }
        }
        let mut rows = HashMap::with_capacity(by_id.len());
        for (id, mut v) in by_id {
            let mut absences = absences.remove(&id).unwrap_or_default();
            absences.sort_unstable();
            v.sort_unstable();
            v.dedup_by_key(|(version, _)| *version);
            let mut suffix_min = vec![(0, 0); v.len()];
            let mut best = (u64::MAX, 0);
            for (i, &(version, t)) in v.iter().enumerate().rev() {
                if t <= best.0 {
                    best = (t, version);
                }
                suffix_min[i] = best;
            }
            rows.insert(
                id,
                Row {
                    versions: v.into_iter().map(|(version, _)| version).collect(),
                    suffix_min,
                    absences,
                },
            );
        }
        History { rows }
    }

    /// Which version a read of `id` that answered "not found" and ended at `t_end_ns` saw:
    /// the newest absence whose DELETE had been sent by then (the most favourable reading of
    /// an answer that carries no version). `None` if the row was never absent by then — a
    /// "not found" that no committed state explains.
    pub fn absence_seen(&self, id: i64, t_end_ns: u64) -> Option<i64> {
        self.rows
            .get(&id)?
            .absences
            .iter()
            .filter(|&&(_, sent)| sent < t_end_ns)
            .map(|&(version, _)| version)
            .max()
    }

    /// The newer version that makes a read of `version` of `id` starting at `t_ns` stale, if
    /// any: the one whose COMMIT returned earliest among those newer than `version`,
    /// provided it returned strictly before `t_ns`.
    pub fn newer_before(&self, id: i64, version: i64, t_ns: u64) -> Option<Newer> {
        let row = self.rows.get(&id)?;
        let i = row.versions.partition_point(|&v| v <= version);
        let &(t, v) = row.suffix_min.get(i)?;
        (t < t_ns).then_some(Newer {
            version: v,
            t_ns: t,
        })
    }
}

/// A fault, as the run injected it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fault {
    /// `redis-restart`, `pubsub-kill` or `daemon-kill`.
    pub kind: String,
    /// When it was injected.
    pub start_ns: u64,
    /// When the injector saw the system back (server restarted, process respawned).
    pub end_ns: u64,
    /// The staleness bound for reads that start between `start_ns` and `end_ns + grace`.
    pub bound_ns: u64,
}

/// Which staleness bound applies to a read.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Outside any fault's window (and for faults whose bound is lower).
    pub base_ns: u64,
    /// How long after a fault's recovery its bound still applies.
    pub grace_ns: u64,
    /// The faults of the run.
    pub faults: Vec<Fault>,
}

impl Bounds {
    /// The bound for a read starting at `t_ns`: the largest among the base bound and every
    /// fault whose window holds `t_ns`.
    pub fn at(&self, t_ns: u64) -> u64 {
        self.faults
            .iter()
            .filter(|f| t_ns >= f.start_ns && t_ns <= f.end_ns.saturating_add(self.grace_ns))
            .map(|f| f.bound_ns)
            .fold(self.base_ns, u64::max)
    }
}

/// A read's class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// No newer version had returned from COMMIT when the read started.
    Fresh,
    /// Stale, by no more than the bound that applied.
    StaleWithin,
    /// Stale by more than the bound: a contract violation.
    StaleBeyond,
}

/// A read's classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The class.
    pub class: Class,
    /// 0 when fresh.
    pub staleness_ns: u64,
    /// The bound that applied.
    pub bound_ns: u64,
    /// The newer version that made it stale.
    pub newer: Option<Newer>,
}

/// Classify one read. A "not found" that no committed absence explains is stale beyond any
/// bound (`staleness_ns = u64::MAX`, no `newer`).
pub fn classify(history: &History, bounds: &Bounds, read: &Read) -> Verdict {
    let bound_ns = bounds.at(read.t_ns);
    let version = match read.version {
        Some(v) => v,
        None => match history.absence_seen(read.id, read.t_end_ns) {
            Some(v) => v,
            None => {
                return Verdict {
                    class: Class::StaleBeyond,
                    staleness_ns: u64::MAX,
                    bound_ns,
                    newer: None,
                }
            }
        },
    };
    match history.newer_before(read.id, version, read.t_ns) {
        None => Verdict {
            class: Class::Fresh,
            staleness_ns: 0,
            bound_ns,
            newer: None,
        },
        Some(newer) => {
            let staleness_ns = read.t_ns - newer.t_ns;
            Verdict {
                class: if staleness_ns <= bound_ns {
                    Class::StaleWithin
                } else {
                    Class::StaleBeyond
                },
                staleness_ns,
                bound_ns,
                newer: Some(newer),
            }
        }
    }
}

/// Staleness percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// "N nines of reads fresh within M ms".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Nines {
    /// M.
    pub within_ms: f64,
    /// Reads fresh, or stale by at most M.
    pub reads_within: u64,
    /// Their fraction of all reads.
    pub fraction: f64,
    /// `floor(-log10(1 - fraction))`; `None` when every read was within (no upper limit).
    pub nines: Option<u32>,
}

/// What happened around one fault.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultReport {
    /// The fault's kind.
    pub kind: String,
    /// Seconds since the workload started.
    pub at_s: f64,
    /// From injection to the injector seeing the system back.
    pub recovered_after_ms: f64,
    /// The bound its window applied.
    pub bound_ms: f64,
    /// Reads that started in the observation window after the injection.
    pub reads_after: u64,
    /// Of those, stale ones.
    pub stale_after: u64,
    /// Of those, stale beyond their bound.
    pub beyond_after: u64,
    /// The worst staleness among them (0 if none was stale).
    pub worst_staleness_ms: f64,
}

/// The reads of one table (or of the steady state, `table` 0).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableReport {
    /// The table number (0 for the steady state).
    pub table: u16,
    /// Reads checked.
    pub reads: u64,
    /// Stale within the bound.
    pub stale_within: u64,
    /// Stale beyond it.
    pub stale_beyond: u64,
    /// Staleness of its stale-within reads.
    pub stale_within_staleness: Option<Percentiles>,
}

/// One stale-beyond read, with the evidence.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    /// The table number (see [`row_key`]).
    pub table: u16,
    /// The row.
    pub id: i64,
    /// The reader.
    pub reader: u32,
    /// The version it saw (`None`: "not found").
    pub version_seen: Option<i64>,
    /// The newer version whose COMMIT had returned first (`None`: a "not found" that no
    /// committed absence explains).
    pub newer_version: Option<i64>,
    /// When the read started (seconds since the workload started).
    pub read_at_s: f64,
    /// When that newer COMMIT returned (seconds since the workload started).
    pub commit_at_s: Option<f64>,
    /// `read - commit` (`None` when there is no such commit).
    pub staleness_ms: Option<f64>,
    /// The bound that applied.
    pub bound_ms: f64,
    /// The last fault injected before the read, and how long before it.
    pub last_fault: Option<String>,
}

/// The checker's totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Every read checked.
    pub reads: u64,
    /// Fresh reads.
    pub fresh: u64,
    /// Stale within the bound.
    pub stale_within: u64,
    /// Stale beyond the bound.
    pub stale_beyond: u64,
    /// Staleness of the stale-within reads (`None` when there were none).
    pub stale_within_staleness: Option<Percentiles>,
    /// Nines for several values of M.
    pub nines: Vec<Nines>,
    /// Reads outside every fault's window (injection to recovery + grace): the steady state.
    pub steady: TableReport,
    /// Per table (the top 16 bits of the row key, see [`row_key`]).
    pub tables: Vec<TableReport>,
    /// Per fault.
    pub faults: Vec<FaultReport>,
    /// Up to 50 stale-beyond reads, worst first.
    pub violations: Vec<Violation>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Check every read. `origin_ns` is the workload's start (report times are relative to it);
/// `fault_window_ns` is how long after each injection its report counts reads; `nines_ms`
/// the values of M to report.
pub fn check(
    commits: &[Commit],
    reads: &[Read],
    bounds: &Bounds,
    origin_ns: u64,
    fault_window_ns: u64,
    nines_ms: &[f64],
) -> Summary {
    let history = History::new(commits);
    let mut faults: Vec<FaultReport> = bounds
        .faults
        .iter()
        .map(|f| FaultReport {
            kind: f.kind.clone(),
            at_s: f.start_ns.saturating_sub(origin_ns) as f64 / 1e9,
            recovered_after_ms: ms(f.end_ns.saturating_sub(f.start_ns)),
            bound_ms: ms(f.bound_ns),
            reads_after: 0,
            stale_after: 0,
            beyond_after: 0,
            worst_staleness_ms: 0.0,
        })
        .collect();
    let (mut fresh, mut within, mut beyond) = (0u64, 0u64, 0u64);
    let mut within_staleness = Vec::new();
    let mut all_staleness = Vec::with_capacity(reads.len());
    // Per table: (reads, beyond, staleness of the stale-within reads).
    let mut tables: std::collections::BTreeMap<u16, (u64, u64, Vec<u64>)> = Default::default();
    let mut steady: (u64, u64, Vec<u64>) = Default::default();
    let mut violations = Vec::new();
    for read in reads {
        let v = classify(&history, bounds, read);
        all_staleness.push(v.staleness_ns);
        let in_fault = bounds.faults.iter().any(|f| {
            read.t_ns >= f.start_ns && read.t_ns <= f.end_ns.saturating_add(bounds.grace_ns)
        });
        let table = tables.entry(split_row_key(read.id).0).or_default();
        for t in [Some(table), (!in_fault).then_some(&mut steady)]
            .into_iter()
            .flatten()
        {
            t.0 += 1;
            match v.class {
                Class::Fresh => {}
                Class::StaleWithin => t.2.push(v.staleness_ns),
                Class::StaleBeyond => t.1 += 1,
            }
        }
        match v.class {
            Class::Fresh => fresh += 1,
            Class::StaleWithin => {
                within += 1;
                within_staleness.push(v.staleness_ns);
            }
            Class::StaleBeyond => beyond += 1,
        }
        for (f, report) in bounds.faults.iter().zip(faults.iter_mut()) {
            if read.t_ns >= f.start_ns && read.t_ns - f.start_ns <= fault_window_ns {
                report.reads_after += 1;
                if v.class != Class::Fresh {
                    report.stale_after += 1;
                    report.worst_staleness_ms = report.worst_staleness_ms.max(ms(v.staleness_ns));
                }
                if v.class == Class::StaleBeyond {
                    report.beyond_after += 1;
                }
            }
        }
        if v.class == Class::StaleBeyond {
            let last_fault = bounds
                .faults
                .iter()
                .filter(|f| f.start_ns <= read.t_ns)
                .max_by_key(|f| f.start_ns)
                .map(|f| {
                    format!(
                        "{} {:.3} s before the read",
                        f.kind,
                        (read.t_ns - f.start_ns) as f64 / 1e9
                    )
                });
            let (table, id) = split_row_key(read.id);
            violations.push(Violation {
                table,
                id,
                reader: read.reader,
                version_seen: read.version,
                newer_version: v.newer.map(|n| n.version),
                read_at_s: read.t_ns.saturating_sub(origin_ns) as f64 / 1e9,
                commit_at_s: v
                    .newer
                    .map(|n| n.t_ns.saturating_sub(origin_ns) as f64 / 1e9),
                staleness_ms: v.newer.map(|_| ms(v.staleness_ns)),
                bound_ms: ms(v.bound_ns),
                last_fault,
            });
        }
    }
    let worst = |v: &Violation| v.staleness_ms.unwrap_or(f64::INFINITY);
    violations.sort_by(|a, b| worst(b).total_cmp(&worst(a)));
    violations.truncate(50);
    all_staleness.sort_unstable();
    let stale_within_staleness = percentiles(&mut within_staleness);
    let report = |table: u16, (reads, beyond, mut within): (u64, u64, Vec<u64>)| TableReport {
        table,
        reads,
        stale_within: within.len() as u64,
        stale_beyond: beyond,
        stale_within_staleness: percentiles(&mut within),
    };
    let steady = report(0, steady);
    let tables = tables.into_iter().map(|(t, v)| report(t, v)).collect();
    let total = reads.len() as u64;
    let nines = nines_ms
        .iter()
        .map(|&m| {
            let limit = (m * 1e6) as u64;
            let n = all_staleness.partition_point(|&s| s <= limit) as u64;
            let fraction = if total == 0 {
                1.0
            } else {
                n as f64 / total as f64
            };
            Nines {
                within_ms: m,
                reads_within: n,
                fraction,
                nines: (n < total).then(|| {
                    let missing = (total - n) as f64 / total as f64;
                    // A tiny epsilon so 0.999 counts as 3 nines despite rounding.
                    (-missing.log10() + 1e-9).floor().max(0.0) as u32
                }),
            }
        })
        .collect();
    Summary {
        reads: total,
        fresh,
        stale_within: within,
        stale_beyond: beyond,
        stale_within_staleness,
        nines,
        steady,
        tables,
        faults,
        violations,
    }
}

/// Percentiles of staleness values (sorted here); `None` for none.
fn percentiles(values: &mut [u64]) -> Option<Percentiles> {
    values.sort_unstable();
    (!values.is_empty()).then(|| Percentiles {
        p50_ms: ms(percentile(values, 0.5)),
        p90_ms: ms(percentile(values, 0.9)),
        p99_ms: ms(percentile(values, 0.99)),
        p999_ms: ms(percentile(values, 0.999)),
        max_ms: ms(*values.last().unwrap_or(&0)),
    })
}

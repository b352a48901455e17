//! Costs at scale: what walcache costs as its configuration grows, each against the same
//! measurement at the smallest size, on the suite's servers (a database of its own).
//!
//! 1. **Many namespaces** ([`namespaces`]): a daemon with one rule per namespace and a handle
//!    with one cache per namespace: building the caches, the daemon's start, a heartbeat's
//!    size and the daemon's cost per heartbeat, and how long the handle's L1 is off after its
//!    pub/sub connection is killed (it re-subscribes and re-learns every namespace's
//!    generation) and after a gap (a message lost: it re-learns them all again).
//! 2. **Refresh scans** ([`refresh`]): one full-refresh cycle of the daemon
//!    (`walcached::refresh::run_cycle`) over the same number of value keys spread over more
//!    and more namespaces, on a Redis of its own holding nothing else.
//! 3. **Many subscribed handles** ([`fanout`]): commit → L1 eviction at 1,000 commits/s with
//!    one subscribed handle, and with many, each in a process of its own; the daemon's
//!    publish cost and Redis's CPU per commit.
//! 4. **Batch size** ([`batches`]): the daemon's drain rate of single-row commits as
//!    `stream.batch_max_keys` varies.

pub(crate) mod batches;
pub(crate) mod fanout;
pub(crate) mod namespaces;
pub(crate) mod refresh;

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use walcache_benches::Servers;

use crate::pipeline::{BoxError, Section};
use crate::Mode;

/// Everything the report shows of the costs at scale.
pub(crate) struct ScaleResults {
    pub(crate) namespaces: namespaces::NamespacesResult,
    pub(crate) refresh: refresh::RefreshResult,
    pub(crate) fanout: fanout::FanoutResult,
    pub(crate) batches: batches::BatchResult,
}

/// Longest wait for anything of this section.
const DEADLINE: Duration = Duration::from_secs(120);

/// Run the section; a failure stops the suite with the chain of causes.
pub(crate) fn run(mode: Mode, rt: &Runtime, servers: &Servers) -> ScaleResults {
    crate::pipeline::or_panic("scale", try_run(mode, rt, servers))
}

fn try_run(mode: Mode, rt: &Runtime, servers: &Servers) -> Result<ScaleResults, BoxError> {
    // The daemon's stage histograms need the recorder (installed by the pipeline section
    // already, unless it was skipped).
    crate::stages::install();
    let section = Section::new(rt, servers, "scale")?;
    let env = section.env(rt, servers);
    eprintln!("suite: scale: namespaces");
    let namespaces = namespaces::run(&env, mode)?;
    eprintln!("suite: scale: refresh scans");
    let refresh = refresh::run(rt, mode)?;
    eprintln!("suite: scale: subscribed handles");
    let fanout = fanout::run(&env, mode)?;
    eprintln!("suite: scale: batch sizes");
    let batches = batches::run(&env, mode)?;
    Ok(ScaleResults {
        namespaces,
        refresh,
        fanout,
        batches,
    })
}

/// Poll `done` every 50 µs until it holds (returning when it was seen to) or `DEADLINE`
/// passes. The polling is the measurement's resolution, not a guess at how long to wait.
fn poll(what: &str, mut done: impl FnMut() -> Result<bool, BoxError>) -> Result<Instant, BoxError> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(Instant::now());
        }
        if start.elapsed() > DEADLINE {
            return Err(format!("timed out after {DEADLINE:?} waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Sorted copy of `v`.
fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of a sorted, non-empty slice (`q` in 0..=1); 0 when empty.
pub(crate) fn pct_f(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

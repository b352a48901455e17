//! Where the pipeline's time goes: one histogram per stage
//! ([`crate::metrics::STAGE_SECONDS`]), registered once per run so that timing a message
//! costs two clock reads and one record; and the per-namespace change counters, looked up
//! once per relation.
//!
//! `decode`, `status`, `heartbeat`, `recheck` and `wait` are the stream loop's own time, one
//! after another. `visibility` and `publish` are a batch's time in flight: they overlap the
//! loop's (it reads and decodes the next batch meanwhile), so their share of a run is how long
//! a batch was in the air, not time the loop spent; `wait` is what the flights cost the loop,
//! the time it stopped reading because the next batch was full.

use std::time::Instant;

use std::collections::HashMap;

use metrics::{Counter, Histogram};

use crate::metrics as m;

/// The stages' histograms.
pub(super) struct Stages {
    pub(super) decode: Histogram,
    pub(super) visibility: Histogram,
    pub(super) publish: Histogram,
    pub(super) status: Histogram,
    pub(super) heartbeat: Histogram,
    pub(super) recheck: Histogram,
    /// The stream loop not reading: the next batch is full and the flight before it has not
    /// landed.
    pub(super) wait: Histogram,
    pub(super) batch_transactions: Histogram,
    /// `walcached_changes_total` of each mapped relation's namespace, by relation id.
    pub(super) changes: HashMap<u32, Counter>,
}

impl Stages {
    pub(super) fn new() -> Stages {
        let stage = |name: &'static str| metrics::histogram!(m::STAGE_SECONDS, "stage" => name);
        Stages {
            decode: stage("decode"),
            visibility: stage("visibility"),
            publish: stage("publish"),
            status: stage("status"),
            heartbeat: stage("heartbeat"),
            recheck: stage("recheck"),
            wait: stage("wait"),
            batch_transactions: metrics::histogram!(m::BATCH_TRANSACTIONS),
            changes: HashMap::new(),
        }
    }
}

/// Records the time since `start` in `histogram`.
pub(super) fn record_since(histogram: &Histogram, start: Instant) {
    histogram.record(start.elapsed());
}

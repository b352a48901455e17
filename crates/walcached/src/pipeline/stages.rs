//! Where the stream loop's time goes: one histogram per stage
//! ([`crate::metrics::STAGE_SECONDS`]), registered once per run so that timing a message
//! costs two clock reads and one record; and the per-namespace change counters, looked up
//! once per relation.

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
            batch_transactions: metrics::histogram!(m::BATCH_TRANSACTIONS),
            changes: HashMap::new(),
        }
    }
}

/// Records the time since `start` in `histogram`.
pub(super) fn record_since(histogram: &Histogram, start: Instant) {
    histogram.record(start.elapsed());
}

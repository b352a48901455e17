//! Where the stream loop's time goes: one histogram per stage
//! ([`crate::metrics::STAGE_SECONDS`]), registered once per session so that timing a message
//! costs two clock reads and one record.

use std::time::Instant;

use metrics::Histogram;

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
        }
    }
}

/// Records the time since `start` in `histogram`.
pub(super) fn record_since(histogram: &Histogram, start: Instant) {
    histogram.record(start.elapsed());
}

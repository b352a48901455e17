//! Whether this run's figures are measurements: a quick-mode run, or any run of a debug build,
//! only shows that every benchmark runs, and says so beside each figure it prints.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once at start: this run is in quick mode.
static QUICK: AtomicBool = AtomicBool::new(false);

/// Record the mode and, unless this is a full run of a release build, say at once that the
/// figures to come are not measurements.
pub(crate) fn start(quick: bool) {
    QUICK.store(quick, Ordering::Relaxed);
    if let Some(why) = not_measured() {
        eprintln!(
            "suite: {why}: the figures below only show that every benchmark runs; they are not \
             measurements and do not count. The measured run: cargo build --release -p \
             walcached && cargo run --release -p walcache-benches --bin suite"
        );
    }
}

/// Why the figures of this run are not measurements (quick mode, a debug build), or `None`
/// for a full run of a release build.
fn not_measured() -> Option<&'static str> {
    match (QUICK.load(Ordering::Relaxed), cfg!(debug_assertions)) {
        (false, false) => None,
        (true, false) => Some("quick mode"),
        (false, true) => Some("debug build"),
        (true, true) => Some("quick mode, debug build"),
    }
}

/// Appended to every figure printed while the suite runs: empty for a full release run, else
/// a label saying it is not a measurement.
pub(crate) fn figure_label() -> String {
    not_measured().map_or_else(String::new, |why| format!(" [{why}: not a measurement]"))
}

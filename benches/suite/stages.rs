//! Where the daemon's time goes, per commit rate: its own stage histograms
//! (`walcached_stage_seconds{stage}`, `walcached_batch_transactions`), read from a
//! Prometheus recorder installed in the suite's process (the daemon runs in-process) before
//! and after each latency run.
//!
//! The stages run one after another on the daemon's stream task, so a stage's total time
//! against the run's wall time is the share of the task it took; what is left is the task
//! waiting for the next message from PostgreSQL (or a batch's delay).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once; before the daemon's first session, so that its stage
/// histograms are registered with it). The tier benchmarks run before, without one.
pub(crate) fn install() {
    if RECORDER.get().is_none() {
        match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                let _ = RECORDER.set(handle);
            }
            Err(e) => eprintln!("suite: no metrics recorder ({e}): no stage breakdown"),
        }
    }
}

/// Per stage (and `batch_transactions`): total (seconds, or transactions) and count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals(BTreeMap<String, (f64, u64)>);

impl Totals {
    /// The recorder's totals now (empty without a recorder).
    pub(crate) fn now() -> Totals {
        let Some(handle) = RECORDER.get() else {
            return Totals::default();
        };
        let mut out = BTreeMap::<String, (f64, u64)>::new();
        for line in handle.render().lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (series, is_sum) = if let Some(s) = name.strip_suffix_before_labels("_sum") {
                (s, true)
            } else if let Some(s) = name.strip_suffix_before_labels("_count") {
                (s, false)
            } else {
                continue;
            };
            let entry = out.entry(series).or_default();
            if is_sum {
                entry.0 = value;
            } else {
                entry.1 = value as u64;
            }
        }
        Totals(out)
    }

    /// `self - earlier`, series by series.
    pub(crate) fn since(&self, earlier: &Totals) -> Totals {
        Totals(
            self.0
                .iter()
                .map(|(k, &(sum, count))| {
                    let (s0, c0) = earlier.0.get(k).copied().unwrap_or_default();
                    (k.clone(), (sum - s0, count.saturating_sub(c0)))
                })
                .collect(),
        )
    }

    /// `self + other`, series by series.
    pub(crate) fn plus(&self, other: &Totals) -> Totals {
        let mut out = self.0.clone();
        for (k, &(sum, count)) in &other.0 {
            let e = out.entry(k.clone()).or_default();
            e.0 += sum;
            e.1 += count;
        }
        Totals(out)
    }

    /// The total and count of `series` (zeros when absent).
    pub(crate) fn get(&self, series: &str) -> (f64, u64) {
        self.0.get(series).copied().unwrap_or_default()
    }
}

trait SeriesName {
    /// `walcached_stage_seconds_sum{stage="x"}` with suffix `_sum` →
    /// `stage_seconds{stage="x"}`-like key: the metric without the suffix, labels kept.
    fn strip_suffix_before_labels(&self, suffix: &str) -> Option<String>;
}

impl SeriesName for str {
    fn strip_suffix_before_labels(&self, suffix: &str) -> Option<String> {
        let (metric, labels) = match self.find('{') {
            Some(i) => self.split_at(i),
            None => (self, ""),
        };
        let metric = metric.strip_suffix(suffix)?;
        metric
            .starts_with("walcached_")
            .then(|| format!("{metric}{labels}"))
    }
}

/// The stages in the loop's order, with what one unit of each is.
const STAGES: &[(&str, &str)] = &[
    ("decode", "message"),
    ("visibility", "batch"),
    ("publish", "batch"),
    ("status", "batch"),
    ("heartbeat", "heartbeat"),
    ("recheck", "recheck"),
    // Reading stopped: the batch being built is full while the one before is in flight.
    ("wait", "wait"),
];

/// The breakdown's Markdown table: one row per (rate label, totals, wall seconds).
pub(crate) fn table(rows: &[(String, &Totals, f64)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| target rate | batches | transactions per batch | {} | stages' share of the run |",
        STAGES
            .iter()
            .map(|(name, unit)| format!("{name}: µs per {unit} (count, share)"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|---|---:|---:|{}---:|", "---|".repeat(STAGES.len()));
    for (label, totals, wall_s) in rows {
        let (txns, batches) = totals.get("walcached_batch_transactions");
        let mut busy = 0.0;
        let cells: Vec<String> = STAGES
            .iter()
            .map(|(stage, _)| {
                let (sum, count) =
                    totals.get(&format!("walcached_stage_seconds{{stage=\"{stage}\"}}"));
                busy += sum;
                if count == 0 {
                    "—".to_owned()
                } else {
                    format!(
                        "{:.1} ({count}, {:.0}%)",
                        sum / count as f64 * 1e6,
                        100.0 * sum / wall_s
                    )
                }
            })
            .collect();
        let _ = writeln!(
            s,
            "| {label} | {batches} | {} | {} | {:.0}% |",
            if batches == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}", txns / batches as f64)
            },
            cells.join(" | "),
            100.0 * busy / wall_s
        );
    }
    s
}

/// The total (seconds) and count of the daemon's stage `stage` in `totals`.
pub(crate) fn stage(totals: &Totals, stage: &str) -> (f64, u64) {
    totals.get(&format!("walcached_stage_seconds{{stage=\"{stage}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::SeriesName;

    #[test]
    fn series_names_keep_their_labels() {
        assert_eq!(
            "walcached_stage_seconds_sum{stage=\"publish\"}".strip_suffix_before_labels("_sum"),
            Some("walcached_stage_seconds{stage=\"publish\"}".to_owned())
        );
        assert_eq!(
            "walcached_batch_transactions_count".strip_suffix_before_labels("_count"),
            Some("walcached_batch_transactions".to_owned())
        );
        assert_eq!(
            "walcache_hits_total".strip_suffix_before_labels("_sum"),
            None
        );
    }
}

//! The summary printed at the end of a run: at most 15 lines, with the bound applied to each
//! fault kind beside `--bound`. The JSON report (`--report`) holds everything else.

use std::path::Path;

use walcache_audit::Summary;

use crate::workload;

/// At most this many stale-beyond reads are printed (the report lists up to 50).
const PRINTED_VIOLATIONS: usize = 3;

/// The summary: at most 15 lines (the report holds the rest).
pub(crate) fn print(s: &Summary, meta: &serde_json::Value, report: &Path) {
    for line in lines(s, meta, report) {
        println!("{line}");
    }
}

fn lines(s: &Summary, meta: &serde_json::Value, report: &Path) -> Vec<String> {
    let pct = |n: u64| {
        if s.reads == 0 {
            0.0
        } else {
            100.0 * n as f64 / s.reads as f64
        }
    };
    let bound_ms = meta["bound_ms"].as_f64().unwrap_or(0.0);
    let mut out = vec![format!(
        "== walcache-audit: {} mode, {:.1} s of workload, {} reads by {} readers, {} commits ==",
        meta["freshness"].as_str().unwrap_or("?"),
        meta["workload_s"].as_f64().unwrap_or(0.0),
        s.reads,
        meta["readers"],
        meta["commits"],
    )];
    let staleness = s
        .stale_within_staleness
        .as_ref()
        .map_or_else(String::new, |p| {
            format!(
                " (p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms)",
                p.p50_ms, p.p99_ms, p.max_ms
            )
        });
    out.push(format!(
        "reads: {:.4}% fresh, {:.4}% stale within their bound{staleness}, {} stale beyond it",
        pct(s.fresh),
        pct(s.stale_within),
        s.stale_beyond,
    ));
    // The bound each read is held to: --bound outside fault windows, the fault's own inside.
    let mut per_kind: Vec<(&str, f64)> = Vec::new();
    for f in &s.faults {
        match per_kind.iter_mut().find(|(k, _)| *k == f.kind) {
            Some((_, b)) => *b = b.max(f.bound_ms),
            None => per_kind.push((&f.kind, f.bound_ms)),
        }
    }
    if per_kind.is_empty() {
        out.push(format!(
            "bound: {bound_ms:.0} ms for every read (--bound; no faults)"
        ));
    } else {
        let kinds: Vec<String> = per_kind
            .iter()
            .map(|(k, b)| format!("{k} {b:.0}"))
            .collect();
        out.push(format!(
            "bounds: {bound_ms:.0} ms outside fault windows (--bound); inside a fault's window \
             (injection to recovery + {} s) the fault's own bound, in ms: {}",
            crate::FAULT_WINDOW.as_secs(),
            kinds.join(", ")
        ));
    }
    let within: Vec<String> = s
        .nines
        .iter()
        .map(|n| match n.nines {
            Some(_) => format!("{:.0} ms {:.3}%", n.within_ms, 100.0 * n.fraction),
            None => format!("{:.0} ms all", n.within_ms),
        })
        .collect();
    out.push(format!(
        "reads fresh or stale by at most: {}",
        within.join(" | ")
    ));
    let table = |t: &walcache_audit::TableReport| {
        let max = t
            .stale_within_staleness
            .as_ref()
            .map_or_else(String::new, |p| format!(" (max {:.1} ms)", p.max_ms));
        format!(
            "{} reads, {} stale within{max}, {} beyond",
            t.reads, t.stale_within, t.stale_beyond
        )
    };
    out.push(format!(
        "steady state (no fault window, bound {bound_ms:.0} ms): {}",
        table(&s.steady)
    ));
    let tables: Vec<String> = s
        .tables
        .iter()
        .map(|t| format!("{} {}", workload::table_name(t.table), table(t)))
        .collect();
    out.push(format!(
        "per table (each read against its own bound): {}",
        tables.join("; ")
    ));
    if !s.faults.is_empty() {
        // Fault windows may overlap: no sums over them, the totals above count each read once.
        let worst = s
            .faults
            .iter()
            .max_by(|a, b| a.worst_staleness_ms.total_cmp(&b.worst_staleness_ms))
            .filter(|f| f.worst_staleness_ms > 0.0)
            .map_or_else(
                || "; no read in their windows was stale".to_owned(),
                |f| {
                    format!(
                        "; the stalest read in a fault's window: {:.1} ms, after {} at {:.1} s \
                         (its bound {:.0} ms)",
                        f.worst_staleness_ms, f.kind, f.at_s, f.bound_ms
                    )
                },
            );
        out.push(format!(
            "faults: {} injected ({} kinds){worst}",
            s.faults.len(),
            per_kind.len(),
        ));
    }
    out.push(format!(
        "errors: {} reads, {} writes; unknown commit outcomes: {} committed, {} rolled back",
        meta["read_errors"],
        meta["write_errors"],
        meta["unknown_outcomes_committed"],
        meta["unknown_outcomes_rolled_back"],
    ));
    if let Some(proof) = meta.get("refresh_proof") {
        out.push(format!(
            "refresh proof: {} ({} reads stale before the cycle, {} keys deleted by it, {} \
             stale after)",
            if proof["passed"] == true {
                "passed"
            } else {
                "FAILED"
            },
            proof["before"]["stale"],
            proof["cycle"]["keys_deleted"],
            proof["after"]["stale"],
        ));
    }
    for v in s.violations.iter().take(PRINTED_VIOLATIONS) {
        let seen = v
            .version_seen
            .map_or_else(|| "not found".to_owned(), |x| format!("v{x}"));
        let why = match (v.newer_version, v.commit_at_s, v.staleness_ms) {
            (Some(n), Some(at), Some(st)) => {
                format!("v{n} committed at {at:.3} s: {st:.1} ms stale")
            }
            _ => "no committed absence explains it".to_owned(),
        };
        out.push(format!(
            "STALE BEYOND: {} id {} reader {} saw {seen} at {:.3} s; {why} (bound {} ms); \
             last fault: {}",
            workload::table_name(v.table),
            v.id,
            v.reader,
            v.read_at_s,
            v.bound_ms,
            v.last_fault.as_deref().unwrap_or("none")
        ));
    }
    if s.stale_beyond as usize > PRINTED_VIOLATIONS {
        out.push(format!(
            "... {} more stale-beyond reads (up to 50 in the report)",
            s.stale_beyond as usize - PRINTED_VIOLATIONS
        ));
    }
    out.push(format!(
        "report: {} (the run's settings, every fault and its bound, per-table and per-fault \
         figures)",
        report.display()
    ));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_fits_in_15_lines_and_states_the_bounds_per_fault() {
        let ms = 1_000_000u64;
        let faults: Vec<walcache_audit::Fault> = (0..24u64)
            .map(|i| walcache_audit::Fault {
                kind: ["daemon-kill", "pubsub-kill", "pg-restart"][i as usize % 3].to_owned(),
                start_ns: (3_000 + 5_000 * i) * ms,
                end_ns: (3_500 + 5_000 * i) * ms,
                bound_ns: [2_000, 500, 4_000][i as usize % 3] * ms,
            })
            .collect();
        let bounds = walcache_audit::Bounds {
            base_ns: 500 * ms,
            grace_ns: 5_000 * ms,
            faults,
        };
        let mut summary = walcache_audit::check(&[], &[], &bounds, 0, 5_000 * ms, &[1.0, 500.0]);
        let violation = walcache_audit::Violation {
            table: 1,
            id: 7,
            reader: 2,
            version_seen: Some(3),
            newer_version: Some(4),
            read_at_s: 12.0,
            commit_at_s: Some(11.0),
            staleness_ms: Some(1000.0),
            bound_ms: 500.0,
            last_fault: None,
        };
        summary.violations = vec![violation; 50];
        summary.stale_beyond = 60;
        let meta = serde_json::json!({
            "freshness": "available", "workload_s": 71.2, "readers": 4, "commits": 9000,
            "bound_ms": 500.0, "read_errors": 0, "write_errors": 0,
            "unknown_outcomes_committed": 0, "unknown_outcomes_rolled_back": 0,
            "refresh_proof": { "passed": true, "before": { "stale": 300 },
                               "cycle": { "keys_deleted": 1800 }, "after": { "stale": 0 } },
        });
        let lines = super::lines(&summary, &meta, std::path::Path::new("target/a.json"));
        assert!(
            lines.len() <= 15,
            "{} lines:\n{}",
            lines.len(),
            lines.join("\n")
        );
        let bounds = lines
            .iter()
            .find(|l| l.starts_with("bounds:"))
            .expect("a bounds line");
        assert!(
            bounds.contains("500 ms outside fault windows (--bound)"),
            "{bounds}"
        );
        assert!(
            bounds.contains("daemon-kill 2000, pubsub-kill 500, pg-restart 4000"),
            "{bounds}"
        );
        assert!(!lines.iter().any(|l| l.contains("nines")), "{lines:?}");
        assert!(lines.last().unwrap().starts_with("report: target/a.json"));
    }
}

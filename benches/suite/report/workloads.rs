//! The workloads', memory and stampede tables, and the workloads' plot.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{ops, t, PlotResult};
use crate::stampede::{STAMPEDE_LOAD_DELAY, STAMPEDE_PROCESSES, STAMPEDE_READERS};
use crate::{
    Results, MEMORY_ENTRIES, WORKLOAD_CALLERS, WORKLOAD_KEYS, WORKLOAD_L1, WRITES_PER_10K,
};

/// The sections "Workloads", "Memory per L1 entry" and "Stampede".
pub(super) fn markdown(s: &mut String, r: &Results, workload_ops: (u64, u64)) {
    // Workloads.
    let _ = writeln!(s, "### Workloads: Zipf reads with 1% writes\n");
    let _ = writeln!(
        s,
        "{WORKLOAD_CALLERS} tasks; each operation picks a key of {WORKLOAD_KEYS} by Zipf \
         (s = 1.0, own inverse-CDF sampler); {:.0}% of operations are an `UPDATE` followed by \
         `invalidate`, the rest `try_get_with` loading by primary key from PostgreSQL. Every \
         configuration runs {} operations of warm-up, then {} measured; hit ratio = \
         1 − loads / reads of the measured part. L1 only: no Redis, L1 {WORKLOAD_L1} \
         entries. L2 only: L1 `max_capacity(0)` and 1 ms time-to-live. Two tiers: L1 \
         {WORKLOAD_L1} entries over Redis. No daemon (`without_invalidation_stream`). \
         ![hit ratio per configuration](docs/benchmarks/workloads.svg)\n",
        WRITES_PER_10K as f64 / 100.0,
        workload_ops.0,
        workload_ops.1
    );
    let _ = writeln!(
        s,
        "| configuration | hit ratio | mean read | p50 / p99 read | reads/s | reads | writes | loads |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|---:|---:|---:|---:|");
    for w in &r.workloads {
        let _ = writeln!(
            s,
            "| {} | **{:.1}%** | {} | {} / {} | {} | {} | {} | {} |",
            w.config,
            100.0 * (1.0 - w.loads as f64 / w.reads.max(1) as f64),
            t(w.read.mean_ns),
            t(w.read.p50_ns as f64),
            t(w.read.p99_ns as f64),
            ops(w.read.ops_per_s),
            w.reads,
            w.writes,
            w.loads
        );
    }
    s.push('\n');

    // Memory.
    let _ = writeln!(s, "### Memory per L1 entry\n");
    let _ = writeln!(
        s,
        "Measured by resident-set growth, not a counting allocator (the workspace forbids \
         `unsafe`, which a `GlobalAlloc` needs): RSS (`/proc/self/statm`, glibc malloc) of a fresh \
         child process (`suite --memory-child KIND`) while \
         {MEMORY_ENTRIES} entries (`i64` key, 64 B `String` value) go into one cache with room \
         for twice as many, divided by the entry count. Includes the value strings themselves \
         (~80 B each with malloc overhead) and allocator slack; RSS is page-granular.\n"
    );
    let base = r
        .memory
        .iter()
        .find(|(k, _)| k == "moka_i64")
        .map_or(1.0, |(_, b)| *b);
    let _ = writeln!(s, "| L1 | bytes per entry | vs raw moka `<i64, String>` |");
    let _ = writeln!(s, "|---|---:|---:|");
    for (kind, b) in &r.memory {
        let name = match kind.as_str() {
            "walcache" => "walcache `Cache<i64, String>` (L1 only)",
            "moka_i64" => "raw moka `Cache<i64, String>`",
            _ => "raw moka `Cache<Arc<str>, String>`",
        };
        let _ = writeln!(s, "| {name} | {b:.0} | **{:.2}×** |", b / base);
    }
    s.push('\n');

    // Stampede.
    let _ = writeln!(
        s,
        "### Stampede: one cold key, {STAMPEDE_READERS} readers in {STAMPEDE_PROCESSES} processes\n"
    );
    let _ = writeln!(
        s,
        "{STAMPEDE_PROCESSES} child processes of the suite (`suite --stampede-child …`), \
         {} reader tasks each, each process with its own `Walcache` handle, PostgreSQL \
         connection and Redis connection, all reading the same cold key through \
         `Cache::try_get_with` (or by hand). Start barrier over pipes: every child spawns its \
         readers parked on a channel and answers `ARMED`; once all have, the parent writes `GO` \
         to each. Each child counts its loader's runs and reports them over the pipe when all \
         its readers have their value. The loader runs the SELECT and then sleeps {} ms to \
         stand for a slow query. A fresh key per round. Redis lease: the default (one process \
         loads and fills L2, the others wait for the fill; within a process, single-flight). \
         `lease_wait(Duration::ZERO)`: the lease is still taken, but a process that loses it \
         loads at once (without writing L2) instead of waiting. \"cache-aside by hand\": GET → on \
         a miss load → SET PX, on each child's multiplexed connection. \"all served\" = from the \
         first `GO` written until the last child answered `DONE`.\n",
        STAMPEDE_READERS / STAMPEDE_PROCESSES,
        STAMPEDE_LOAD_DELAY.as_millis()
    );
    let _ = writeln!(
        s,
        "| variant | database loads per round | all served (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|");
    for row in &r.stampede {
        let loads: Vec<String> = row.loads.iter().map(u64::to_string).collect();
        let served: Vec<String> = row
            .all_served_ms
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | **{}** | {} |",
            row.variant,
            loads.join(", "),
            served.join(", ")
        );
    }
    s.push('\n');
}

/// Hit ratio (bars) and mean read latency per workload configuration.
pub(super) fn plot(r: &Results, file: &Path) -> PlotResult {
    let root = SVGBackend::new(file, (700, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = r.workloads.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Zipf(1.0) over 100k keys, 1% writes: hit ratio (bar) and mean read latency",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..115f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("hit ratio (%)")
        .draw()?;
    for (i, w) in r.workloads.iter().enumerate() {
        let hit = 100.0 * (1.0 - w.loads as f64 / w.reads.max(1) as f64);
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, hit)],
            RGBColor(31, 119, 180).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{hit:.1}%, mean {}", t(w.read.mean_ns)),
            (x + 0.2, hit + 9.0),
            ("sans-serif", 13),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            w.config.to_owned(),
            (x + 0.2, hit + 15.0),
            ("sans-serif", 15),
        )))?;
    }
    root.present()?;
    Ok(())
}

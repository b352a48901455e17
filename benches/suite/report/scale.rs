//! The costs-at-scale tables and plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::PlotResult;
use crate::pipeline::pct;
use crate::scale::batches::BatchResult;
use crate::scale::fanout::FANOUT_RATE;
use crate::scale::namespaces::HEARTBEAT_MS;
use crate::scale::refresh::RefreshResult;
use crate::scale::{pct_f, ScaleResults};
use crate::stages::stage;

/// The plots' file names under `docs/benchmarks/`.
const REFRESH_SVG: &str = "scale-refresh.svg";
const BATCH_SVG: &str = "scale-batch-size.svg";

/// Write the section's plots into `dir`.
pub(super) fn plots(r: &ScaleResults, dir: &Path) {
    if let Err(e) = refresh_plot(&r.refresh, &dir.join(REFRESH_SVG)) {
        eprintln!("suite: refresh plot: {e}");
    }
    if let Err(e) = batch_plot(&r.batches, &dir.join(BATCH_SVG)) {
        eprintln!("suite: batch-size plot: {e}");
    }
}

/// min / p50 / max of a sorted vector of ms.
fn spread(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".to_owned();
    }
    format!("{:.1} / {:.1} / {:.1}", v[0], pct_f(v, 0.5), v[v.len() - 1])
}

/// The section "Costs at scale".
pub(super) fn markdown(s: &mut String, r: &ScaleResults) {
    let _ = writeln!(s, "### Costs at scale\n");
    let _ = writeln!(
        s,
        "Each measured at the smallest size and at scale in one run, in a database of its own \
         on the same servers (the refresh cycles on a Redis of their own); the daemon runs in \
         the suite's process as in the pipeline section.\n"
    );
    namespaces(s, r);
    refresh(s, &r.refresh);
    fanout(s, r);
    batches(s, &r.batches);
}

fn namespaces(s: &mut String, r: &ScaleResults) {
    let ns = &r.namespaces;
    let _ = writeln!(
        s,
        "**Many namespaces**: a daemon with one rule per namespace (one table each, `keys = \
         [\"{{id}}\"]`) and a handle with one cache per namespace. *Daemon start*: until \
         streaming and until caught up (slot and publication made beforehand). *Heartbeat*: the \
         largest heartbeat heard on the channel (it names every namespace it certifies) and the \
         daemon's `heartbeat` stage per heartbeat (one script checking every namespace's \
         marker, and the PUBLISH), with its share of one core at the default interval (250 ms). \
         *Re-subscribe*: the handle's pub/sub connection killed (`CLIENT KILL ID`) until the \
         handle is live again (reconnect, L1 flush, one GET per namespace's generation, one \
         after another, then the next heartbeat). *Gap*: one data message dropped on its way to \
         the handle by the test kit's TCP proxy (the handle reaches Redis through it, one more \
         loopback hop per round trip); from the handle's loss of liveness (the next heartbeat \
         shows the gap) until it is live again (L1 flush, the same GETs, the next heartbeat). \
         An epoch change (a daemon restart) re-learns the same way, but the handle stays live: \
         the invalidations queued behind the GETs wait instead. The daemon heartbeats every \
         {HEARTBEAT_MS} ms here, so waiting for the next heartbeat adds at most that; \
         {} repetitions, min / p50 / max.\n",
        ns.reps
    );
    let _ = writeln!(
        s,
        "| namespaces | caches built (ms) | daemon start: streaming / caught up (s) | heartbeat bytes | daemon µs per heartbeat (count; share of a core at 250 ms) | re-subscribe: killed → live (ms) | gap: not live (ms) |"
    );
    let _ = writeln!(s, "|---:|---:|---|---:|---|---|---|");
    for row in &ns.rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.2} / {:.2} | {} | **{:.0}** ({}; {:.2}%) | {} | {} |",
            row.namespaces,
            row.caches_ms,
            row.daemon_streaming_s,
            row.daemon_caught_up_s,
            row.heartbeat_bytes,
            row.heartbeat_us(),
            row.heartbeats,
            row.heartbeat_us() / 250_000.0 * 100.0,
            spread(&row.resubscribe_ms),
            spread(&row.gap_ms),
        );
    }
    s.push('\n');
}

fn refresh(s: &mut String, r: &RefreshResult) {
    let _ = writeln!(
        s,
        "**Full refresh over many namespaces**: one cycle of `walcached::refresh::run_cycle` \
         (what the daemon's schedule and `walcached refresh` run) over the same value keys \
         spread evenly over more namespaces, on a Redis holding nothing else, deletes \
         unthrottled (the default `max_deletes_per_second` of 5,000 makes a cycle at least keys \
         / 5,000 s by design). The values are written through a walcache handle before each \
         cycle, which deletes them all. One `SCAN MATCH` pass (`COUNT` {}) over the keyspace \
         serves every namespace, so a cycle's SCANs follow the keyspace's size, not the \
         number of namespaces: SCAN calls from Redis's `INFO commandstats`. \
         ![refresh cycle time against namespaces](docs/benchmarks/{REFRESH_SVG})\n",
        r.scan_count
    );
    let _ = writeln!(
        s,
        "| namespaces | value keys | cycle (s) | SCAN calls | keys scanned | keys deleted | keys per second |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | **{:.3}** | {} | {} | {} | {:.0} |",
            row.namespaces,
            row.keys,
            row.seconds,
            row.scan_calls,
            row.keys_scanned,
            row.keys_deleted,
            row.keys as f64 / row.seconds.max(1e-9)
        );
    }
    s.push('\n');
}

fn fanout(s: &mut String, r: &ScaleResults) {
    let _ = writeln!(
        s,
        "**Many subscribed handles**: commit → L1 eviction at {FANOUT_RATE:.0} commits/s, measured \
         as in the pipeline section (its reader process, writers and plain subscriber), with the \
         reader's handle alone and with more handles subscribed, each in a process of its own \
         (`suite --scale-subscriber`) whose L1 holds the same keys: its own pub/sub connection, \
         subscriber thread and runtime, as each service of a fleet has. The reader is started \
         last, so Redis delivers every message to it after all the others. Here the other \
         handles' own work (a wake-up and an L1 eviction per message each) competes for the same \
         cores as the daemon, Redis and the reader, where a fleet spreads it over its machines: \
         the rows marked *niced* repeat the largest count with the other handles at the lowest \
         CPU priority (`nice -n 19`), leaving mostly the fan-out's own cost. *Publish*: the \
         daemon's `publish` stage per batch (its script PUBLISHes to every subscriber). *Daemon \
         busy*: its stages' total time against the run's (the rest is waiting for PostgreSQL). \
         *Redis CPU*: `used_cpu_sys` + `used_cpu_user` over the run, per commit. *Others \
         complete*: other handles that saw every key evicted and were live at the end. The \
         plain subscriber that times *heard* runs in the suite's process: when that process \
         is short of CPU it hears late, and heard → evicted can come out negative.\n"
    );
    let _ = writeln!(
        s,
        "| subscribed handles | achieved commits/s | COMMIT → L1 evicted p50 / p99 / p99.9 (ms) | COMMIT → PUBLISH heard p50 / p99 (ms) | heard → evicted p50 / p99 (ms) | publish µs per batch (batches) | daemon busy | Redis CPU µs per commit | others complete | missing |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---|---|---:|---:|---:|---:|");
    for row in &r.fanout.rows {
        let rr = &row.rate;
        let ms = |v: &[i64], q: f64| pct(v, q) as f64 / 1e6;
        let _ = writeln!(
            s,
            "| {}{} | {:.0} | **{:.3}** / **{:.3}** / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.0} ({}) | {:.0}% | {:.1} | {} / {} | {} |",
            row.handles,
            if row.niced { ", niced" } else { "" },
            rr.achieved,
            ms(&rr.total, 0.5),
            ms(&rr.total, 0.99),
            ms(&rr.total, 0.999),
            ms(&rr.to_heard, 0.5),
            ms(&rr.to_heard, 0.99),
            ms(&rr.heard_to_evicted, 0.5),
            ms(&rr.heard_to_evicted, 0.99),
            row.publish_s / row.batches.max(1) as f64 * 1e6,
            row.batches,
            100.0 * row.busy_s / row.wall_s.max(1e-9),
            row.redis_cpu_s / rr.commits.max(1) as f64 * 1e6,
            row.others_complete,
            row.handles - 1,
            rr.missing
        );
    }
    s.push('\n');
}

fn batches(s: &mut String, r: &BatchResult) {
    let _ = writeln!(
        s,
        "**Drain rate against `stream.batch_max_keys`**: two slots per batch size, all made \
         before {} single-row commits (a batch never splits a transaction, so larger ones would \
         hide small batch sizes), each drained by a daemon with that batch size and the default \
         `batch_max_delay_ms` (1 ms), from streaming until a plain subscriber heard the last \
         commit's invalidation; the \
         sizes ascending, then descending. A batch closes at `batch_max_keys`, at \
         `batch_max_delay_ms`, or as soon as the replication socket has nothing ready. Stage \
         columns: the daemon's own histograms over both drains, µs per batch. \
         ![changes per second against batch_max_keys](docs/benchmarks/{BATCH_SVG})\n",
        r.changes
    );
    let _ = writeln!(
        s,
        "| batch_max_keys | changes/s (mean time of 2) | drains (s) | start-up (s) | messages per drain | transactions per batch | visibility µs per batch | publish µs per batch | status µs per batch |"
    );
    let _ = writeln!(s, "|---:|---:|---|---|---|---:|---:|---:|---:|");
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for row in &r.rows {
        let (txns, batches) = row.stages.get("walcached_batch_transactions");
        let per = |name: &str| {
            let (sum, count) = stage(&row.stages, name);
            if count == 0 {
                "—".to_owned()
            } else {
                format!("{:.0}", sum / count as f64 * 1e6)
            }
        };
        let _ = writeln!(
            s,
            "| {} | **{:.0}** | {} | {} | {} | {} | {} | {} | {} |",
            row.batch_max_keys,
            r.rate(row),
            list(&row.drain_s),
            list(&row.startup_s),
            row.messages
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if batches == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}", txns / batches as f64)
            },
            per("visibility"),
            per("publish"),
            per("status"),
        );
    }
    s.push('\n');
}

/// Cycle time (s) against namespaces, log-log.
fn refresh_plot(r: &RefreshResult, file: &Path) -> PlotResult {
    let pts: Vec<(f64, f64)> = r
        .rows
        .iter()
        .map(|x| (x.namespaces as f64, x.seconds.max(1e-4)))
        .collect();
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 2.0;
    let y_min = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min) / 2.0;
    let y_max = pts.iter().map(|p| p.1).fold(0.0, f64::max) * 2.0;
    let keys = r.rows.first().map_or(0, |x| x.keys);
    let root = SVGBackend::new(file, (700, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("One full-refresh cycle over {keys} value keys, spread over N namespaces"),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0.8f64..x_max).log_scale(),
            (y_min.min(y_max / 10.0)..y_max).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("namespaces (log)")
        .y_desc("cycle (s, log)")
        .draw()?;
    let color = RGBColor(31, 119, 180);
    chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    chart.draw_series(
        pts.iter()
            .map(|&(x, y)| Text::new(format!("{y:.3} s"), (x * 1.08, y), ("sans-serif", 13))),
    )?;
    root.present()?;
    Ok(())
}

/// Changes per second against `batch_max_keys`, log-log.
fn batch_plot(r: &BatchResult, file: &Path) -> PlotResult {
    let pts: Vec<(f64, f64)> = r
        .rows
        .iter()
        .map(|x| (x.batch_max_keys as f64, r.rate(x).max(1.0)))
        .collect();
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 3.0;
    let y_min = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min) / 2.0;
    let y_max = pts.iter().map(|p| p.1).fold(0.0, f64::max) * 2.0;
    let root = SVGBackend::new(file, (700, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "walcached draining {} single-row commits: changes/s against batch_max_keys",
                r.changes
            ),
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0.5f64..x_max).log_scale(),
            (y_min.min(y_max / 10.0)..y_max).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("stream.batch_max_keys (log)")
        .y_desc("changes per second (log)")
        .draw()?;
    let color = RGBColor(44, 160, 44);
    chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    chart.draw_series(
        pts.iter()
            .map(|&(x, y)| Text::new(format!("{y:.0}/s"), (x * 1.1, y), ("sans-serif", 13))),
    )?;
    root.present()?;
    Ok(())
}

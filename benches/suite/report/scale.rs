//! The costs-at-scale tables and plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::PlotResult;
use crate::scale::namespaces::HEARTBEAT_MS;
use crate::scale::refresh::RefreshResult;
use crate::scale::{pct_f, ScaleResults};

/// The plots' file names under `docs/benchmarks/`.
const REFRESH_SVG: &str = "scale-refresh.svg";

/// Write the section's plots into `dir`.
pub(super) fn plots(r: &ScaleResults, dir: &Path) {
    if let Err(e) = refresh_plot(&r.refresh, &dir.join(REFRESH_SVG)) {
        eprintln!("suite: refresh plot: {e}");
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
         cycle, which deletes them all. Each namespace is walked with its own `SCAN MATCH` \
         (`COUNT` {}) over the whole keyspace: SCAN calls from Redis's `INFO commandstats`. \
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

//! The tiers' tables and latency plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{ops, size_name, t, PlotResult};
use crate::{Results, Stats, TierRow, CONCURRENCY, SIZES, YIELD_EVERY};

/// The tiers, in the report's order.
pub(super) const TIERS: [&str; 3] = ["L1 hit", "L2 hit", "miss to PostgreSQL"];

/// The plot's file name (without `.svg`) of `tier`.
pub(super) fn slug(tier: &str) -> String {
    match tier {
        "L1 hit" => "tiers-l1-hit".into(),
        "L2 hit" => "tiers-l2-hit".into(),
        _ => "tiers-miss".into(),
    }
}

/// Write each tier's latency plot into `dir`.
pub(super) fn plots(r: &Results, dir: &Path) {
    for tier in TIERS {
        let file = dir.join(format!("{}.svg", slug(tier)));
        if let Err(e) = latency_plot(r, tier, &file) {
            eprintln!("suite: plot {}: {e}", file.display());
        }
    }
}

/// `a / b` of two p50s, as a ratio.
fn ratio(a: &Stats, b: &Stats) -> f64 {
    a.p50_ns as f64 / b.p50_ns.max(1) as f64
}

/// p50 / p99 / p99.9.
fn p3(x: &Stats) -> String {
    format!(
        "{} / {} / {}",
        t(x.p50_ns as f64),
        t(x.p99_ns as f64),
        t(x.p999_ns as f64)
    )
}

/// The section "Tiers under concurrency".
pub(super) fn markdown(s: &mut String, r: &Results, nproc: &str) {
    let _ = writeln!(s, "### Tiers under concurrency\n");
    let _ = writeln!(
        s,
        "Each case runs N tokio tasks on a multi-thread runtime ({nproc} workers) for a fixed \
         time, walcache and the raw tool alternating in halves (A B B A; the miss's three variants \
         A B C C B A); every call is timed alone (`Instant` pair ≈ {:.0} ns, included on both sides) and \
         percentiles are nearest-rank over all samples (a sorted vector). Every {YIELD_EVERY} calls a task \
         yields (untimed) so that all N take turns. L1 hit: \
         `Cache::get` on a warm L1 vs `moka::sync::Cache<i64, String>::get`. L2 hit: \
         `Cache::get` with a 1 ms L1 time-to-live vs a raw `GET` of the same key on a \
         multiplexed redis-rs connection. Miss: each read is of a key never read before (no \
         set-up on any side): `try_get_with` whose loader runs the SELECT, vs the same prepared \
         SELECT alone on the same kind of tokio-postgres connection, and vs hand-written \
         cache-aside: `GET` (a miss), the same SELECT, `SET … PX` on one multiplexed redis-rs \
         connection shared by the callers (what a service would write without walcache: no lease, no \
         protection against a stale fill). **Ratio** = walcache p50 / raw p50 (throughput ratio = \
         walcache / raw). On {nproc} shared cores the ratios move by tens of percent between runs; \
         read the p50 ratios at 1 caller first. The µs-scale p99 of L1 hits appears on both sides \
         alike (preemption, and moka's batched housekeeping on reads).\n",
        r.clock_ns
    );
    for tier in ["L1 hit", "L2 hit"] {
        let raw = if tier == "L1 hit" {
            "raw moka"
        } else {
            "raw redis GET"
        };
        let _ = writeln!(
            s,
            "**{tier}** vs {raw} — ![{tier}](docs/benchmarks/{}.svg)\n",
            slug(tier)
        );
        let _ = writeln!(
            s,
            "| size | callers | p50 ratio | throughput ratio | walcache p50 / p99 / p99.9 | {raw} p50 / p99 / p99.9 | walcache ops | {raw} ops |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---|---|---:|---:|");
        for row in r.tiers.iter().filter(|x| x.tier == tier) {
            let w = &row.walcache;
            let x = &row.raw;
            let _ = writeln!(
                s,
                "| {} | {} | **{:.2}×** | {:.2}× | {} / {} / {} | {} / {} / {} | {} | {} |",
                size_name(row.size),
                row.concurrency,
                w.p50_ns as f64 / x.p50_ns.max(1) as f64,
                w.ops_per_s / x.ops_per_s.max(1e-9),
                t(w.p50_ns as f64),
                t(w.p99_ns as f64),
                t(w.p999_ns as f64),
                t(x.p50_ns as f64),
                t(x.p99_ns as f64),
                t(x.p999_ns as f64),
                ops(w.ops_per_s),
                ops(x.ops_per_s),
            );
        }
        s.push('\n');
        if tier == "L2 hit" {
            let list: Vec<String> = r
                .l2_gets_per_op
                .iter()
                .map(|(size, c, g)| format!("{} × {c}: {g:.2}", size_name(*size), c = c))
                .collect();
            let _ = writeln!(
                s,
                "Redis keyspace hits per walcache read during the L2 runs (1.00 = every read \
                 went to L2): {}.\n",
                list.join("; ")
            );
        }
    }
    miss_markdown(s, r);
}

/// The miss to PostgreSQL: walcache against hand-written cache-aside (the goal's baseline) and
/// against the bare SELECT.
fn miss_markdown(s: &mut String, r: &Results) {
    let tier = "miss to PostgreSQL";
    let rows: Vec<&TierRow> = r.tiers.iter().filter(|x| x.tier == tier).collect();
    let _ = writeln!(
        s,
        "**{tier}** vs hand-written cache-aside (GET → SELECT → SET PX) and vs the raw SELECT — \
         ![{tier}](docs/benchmarks/{}.svg)\n",
        slug(tier)
    );
    let _ = writeln!(
        s,
        "| size | callers | p50 ratio to cache-aside | p50 ratio to SELECT | throughput ratio to cache-aside | walcache p50 / p99 / p99.9 | cache-aside p50 / p99 / p99.9 | raw SELECT p50 / p99 / p99.9 | walcache ops | cache-aside ops | raw SELECT ops |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|---|---:|---:|---:|");
    for row in &rows {
        let (w, x) = (&row.walcache, &row.raw);
        let hand = row.by_hand.unwrap_or_default();
        let _ = writeln!(
            s,
            "| {} | {} | **{:.2}×** | {:.2}× | {:.2}× | {} | {} | {} | {} | {} | {} |",
            size_name(row.size),
            row.concurrency,
            ratio(w, &hand),
            ratio(w, x),
            w.ops_per_s / hand.ops_per_s.max(1e-9),
            p3(w),
            p3(&hand),
            p3(x),
            ops(w.ops_per_s),
            ops(hand.ops_per_s),
            ops(x.ops_per_s),
        );
    }
    s.push('\n');
    let goal: Vec<String> = rows
        .iter()
        .filter(|x| x.concurrency <= 8)
        .filter_map(|x| {
            let hand = x.by_hand?;
            let q = ratio(&x.walcache, &hand);
            Some(format!(
                "{} × {}: {q:.2}× ({})",
                size_name(x.size),
                x.concurrency,
                if q <= 1.1 { "met" } else { "missed" }
            ))
        })
        .collect();
    let _ = writeln!(
        s,
        "Miss goal (walcache p50 ≤ 1.1× hand-written cache-aside at 1 and 8 callers): {}. A \
         cache-aside miss is two Redis round trips around the SELECT; the cache-aside column \
         minus the SELECT column is what those cost here.\n",
        goal.join("; ")
    );
    miss_cpu_markdown(s, &rows);
}

/// CPU per miss in each process, beside the hand-written cache-aside's: what bounds the miss
/// once the callers outnumber the cores.
fn miss_cpu_markdown(s: &mut String, rows: &[&TierRow]) {
    let _ = writeln!(
        s,
        "CPU per miss, µs, in this process / the Redis server / the PostgreSQL backend (sampled \
         around each measured half, so walcache's compare-and-set, which runs after the caller \
         has its answer, is counted). With {} cores shared by all three, a case whose callers outnumber the cores \
         is bound by the total: at most cores ÷ total reads per second.\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get)
    );
    let _ = writeln!(
        s,
        "| size | callers | walcache: process / Redis / PostgreSQL = total | cache-aside: process / Redis / PostgreSQL = total | total ratio |"
    );
    let _ = writeln!(s, "|---|---:|---|---|---:|");
    for row in rows {
        let Some((w, h)) = row.cpu else { continue };
        let fmt = |c: &crate::cpu::Cpu| {
            format!(
                "{:.1} / {:.1} / {:.1} = **{:.1}**",
                c.bench_s,
                c.redis_s,
                c.pg_s,
                c.total_s()
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2}× |",
            size_name(row.size),
            row.concurrency,
            fmt(&w),
            fmt(&h),
            w.total_s() / h.total_s().max(1e-9)
        );
    }
    s.push('\n');
}

/// p50 and p99 against concurrency per size: walcache solid, the raw tool dashed, the
/// hand-written cache-aside (the miss only) dotted.
fn latency_plot(r: &Results, tier: &str, file: &Path) -> PlotResult {
    let rows: Vec<&TierRow> = r.tiers.iter().filter(|x| x.tier == tier).collect();
    let raw = if tier == "miss to PostgreSQL" {
        "SELECT"
    } else {
        "raw"
    };
    let max = rows
        .iter()
        .flat_map(|x| [x.walcache.p99_ns, x.raw.p99_ns])
        .max()
        .unwrap_or(1) as f64
        / 1e3;
    let min = rows
        .iter()
        .flat_map(|x| [x.walcache.p50_ns, x.raw.p50_ns])
        .min()
        .unwrap_or(1)
        .max(1) as f64
        / 1e3;
    let root = SVGBackend::new(file, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            if tier == "miss to PostgreSQL" {
                format!("{tier}: latency vs callers (walcache solid, SELECT dashed, cache-aside dotted)")
            } else {
                format!("{tier}: latency vs concurrent callers (walcache solid, raw dashed)")
            },
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-1.1f64..2.2f64, ((min * 0.5)..(max * 2.0)).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(12)
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            CONCURRENCY
                .get(i)
                .filter(|_| *x > -0.5 && (x - x.round()).abs() < 0.01)
                .map_or(String::new(), |c| c.to_string())
        })
        .x_desc("concurrent callers")
        .y_desc("latency (µs, log)")
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    for (si, size) in SIZES.iter().enumerate() {
        let color = colors[si % colors.len()];
        let by_hand: Vec<(f64, f64)> = rows
            .iter()
            .filter(|x| x.size == *size)
            .filter_map(|x| {
                let ci = CONCURRENCY.iter().position(|c| *c == x.concurrency)?;
                Some((ci as f64, x.by_hand?.p50_ns as f64 / 1e3))
            })
            .collect();
        if !by_hand.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(by_hand, 2, 4, color.stroke_width(2)))?
                .label(format!("cache-aside by hand {} p50", size_name(*size)))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        for (pi, pct) in ["p50", "p99"].into_iter().enumerate() {
            let pick =
                |st: &Stats| -> f64 { (if pi == 0 { st.p50_ns } else { st.p99_ns }) as f64 / 1e3 };
            let pts = |raw: bool| -> Vec<(f64, f64)> {
                rows.iter()
                    .filter(|x| x.size == *size)
                    .map(|x| {
                        let ci = CONCURRENCY
                            .iter()
                            .position(|c| *c == x.concurrency)
                            .unwrap_or(0);
                        (ci as f64, pick(if raw { &x.raw } else { &x.walcache }))
                    })
                    .collect()
            };
            let width = if pi == 0 { 3 } else { 1 };
            chart
                .draw_series(LineSeries::new(pts(false), color.stroke_width(width)))?
                .label(format!("walcache {} {pct}", size_name(*size)))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                });
            chart
                .draw_series(DashedLineSeries::new(
                    pts(true),
                    6,
                    4,
                    color.mix(0.8).stroke_width(width),
                ))?
                .label(format!("{raw} {} {pct}", size_name(*size)))
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 20, y)],
                        color.mix(0.5).stroke_width(width),
                    )
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

//! The suite's output: the markdown section of `BENCHMARKS.md` and the SVG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;

use crate::pipeline::{pct, PipelineResults, RateResult, READER_POLL, READER_WINDOW, WRITERS};
use crate::stampede::{STAMPEDE_LOAD_DELAY, STAMPEDE_PROCESSES, STAMPEDE_READERS};
use crate::{
    Results, Stats, TierRow, CONCURRENCY, MEMORY_ENTRIES, SIZES, WORKLOAD_CALLERS, WORKLOAD_KEYS,
    WORKLOAD_L1, WRITES_PER_10K, YIELD_EVERY,
};

const BEGIN: &str = "<!-- suite:begin -->";
const END: &str = "<!-- suite:end -->";

/// Where the report goes: the repository (BENCHMARKS.md, docs/benchmarks/), or the directory
/// in `WALCACHE_SUITE_OUT` (CI runs write there, so a smoke run never overwrites the
/// committed numbers).
fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALCACHE_SUITE_OUT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Human-readable nanoseconds.
fn t(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.0} k/s", x / 1e3)
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn machine() -> (String, String, String) {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    (nproc.to_string(), mem, cpu)
}

/// Versions of the crates compared, from the workspace's `Cargo.lock`.
fn crate_versions() -> String {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap_or_default();
    let mut out = vec![format!("walcache {}", env!("CARGO_PKG_VERSION"))];
    for name in ["moka", "redis", "tokio-postgres", "tokio"] {
        let needle = format!("name = \"{name}\"\nversion = \"");
        if let Some(i) = lock.find(&needle) {
            let rest = &lock[i + needle.len()..];
            let v = rest.split('"').next().unwrap_or("?");
            out.push(format!("{name} {v}"));
        }
    }
    out.join(", ")
}

fn rustc() -> String {
    std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Write the section and the plots.
pub(crate) fn write(r: &Results, quick: bool, workload_ops: (u64, u64), elapsed: Duration) {
    let dir = root().join("docs/benchmarks");
    std::fs::create_dir_all(&dir).expect("create docs/benchmarks");
    for tier in ["L1 hit", "L2 hit", "miss to PostgreSQL"] {
        let file = dir.join(format!("{}.svg", slug(tier)));
        if let Err(e) = latency_plot(r, tier, &file) {
            eprintln!("suite: plot {}: {e}", file.display());
        }
    }
    if let Err(e) = workload_plot(r, &dir.join("workloads.svg")) {
        eprintln!("suite: workload plot: {e}");
    }
    if let Some(p) = &r.pipeline {
        if let Err(e) = cdf_plot(p, &dir.join(CDF_SVG)) {
            eprintln!("suite: pipeline CDF plot: {e}");
        }
    }
    let section = markdown(r, quick, workload_ops, elapsed);
    let path = root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{BEGIN}\n{section}{END}{}",
                &text[..b],
                &text[e + END.len()..]
            )
        }
        _ => {
            let sep = if text.ends_with('\n') { "\n" } else { "\n\n" };
            format!("{text}{sep}{BEGIN}\n{section}{END}\n")
        }
    };
    std::fs::write(&path, new).expect("write BENCHMARKS.md");
    eprintln!("suite: wrote {} and {}", path.display(), dir.display());
}

fn slug(tier: &str) -> String {
    match tier {
        "L1 hit" => "tiers-l1-hit".into(),
        "L2 hit" => "tiers-l2-hit".into(),
        _ => "tiers-miss".into(),
    }
}

fn markdown(r: &Results, quick: bool, workload_ops: (u64, u64), elapsed: Duration) -> String {
    let (nproc, mem, cpu) = machine();
    let mut s = String::new();
    let cmd = if quick {
        "cargo run --release -p walcache-benches --bin suite -- --quick"
    } else {
        "cargo run --release -p walcache-benches --bin suite"
    };
    let _ = writeln!(s, "## The suite (generated)\n");
    let _ = writeln!(
        s,
        "Generated by `{cmd}` ({} mode, {:.0} s); everything between the `suite` markers is \
         rewritten by each run. Machine: {nproc} cores ({cpu}), MemTotal {mem}. Versions: {}, \
         PostgreSQL {}, Redis {}, {}. Private servers from `walcache_testkit` on loopback TCP, \
         sharing the cores with the benchmark.\n",
        if quick { "quick" } else { "full" },
        elapsed.as_secs_f64(),
        crate_versions(),
        r.pg_version,
        r.redis_version,
        rustc(),
    );
    if quick {
        let _ = writeln!(
            s,
            "> Quick mode: 0.3 s per tiers case, short workloads, small pipeline runs. The \
             numbers show the shape, not precise values.\n"
        );
    }
    if cfg!(debug_assertions) {
        let _ = writeln!(
            s,
            "> **Debug build: these figures are not measurements.** An unoptimised build runs \
             every tier and the daemon many times slower than a release build, and not evenly \
             (ratios and latency differences are off too; some come out negative). It shows \
             only that each benchmark runs.\n"
        );
    }

    // Tiers.
    let _ = writeln!(s, "### Tiers under concurrency\n");
    let _ = writeln!(
        s,
        "Each case runs N tokio tasks on a multi-thread runtime ({nproc} workers) for a fixed \
         time, walcache and the raw tool alternating in halves (A B B A); every call is timed alone (`Instant` pair ≈ {:.0} ns, included on both sides) and \
         percentiles are nearest-rank over all samples (a sorted vector). Every {YIELD_EVERY} calls a task \
         yields (untimed) so that all N take turns. L1 hit: \
         `Cache::get` on a warm L1 vs `moka::sync::Cache<i64, String>::get`. L2 hit: \
         `Cache::get` with a 1 ms L1 time-to-live vs a raw `GET` of the same key on a \
         multiplexed redis-rs connection. Miss: `invalidate` (untimed) then `try_get_with` \
         whose loader runs the SELECT, vs the same prepared SELECT alone on the same kind of \
         tokio-postgres connection. **Ratio** = walcache p50 / raw p50 (throughput ratio = \
         walcache / raw). On {nproc} shared cores the ratios move by tens of percent between runs; \
         read the p50 ratios at 1 caller first. The µs-scale p99 of L1 hits appears on both sides \
         alike (preemption, and moka's batched housekeeping on reads).\n",
        r.clock_ns
    );
    for tier in ["L1 hit", "L2 hit", "miss to PostgreSQL"] {
        let raw = match tier {
            "L1 hit" => "raw moka",
            "L2 hit" => "raw redis GET",
            _ => "raw SELECT",
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
    if let Some(p) = &r.pipeline {
        pipeline_markdown(&mut s, p, &nproc);
    }
    let _ = writeln!(
        s,
        "Not in the suite: the criterion benchmarks (`cargo bench -p walcache-benches`, \
         single-caller medians per tier) and the instruction count of an L1 hit \
         (`l1-instructions` under callgrind), in their own sections above; the pipeline's \
         configuration variants (e.g. `batch_max_delay_ms`) and a walcached running as its own \
         process for the latency (it runs in the suite's process, on its own runtime; only the \
         RSS measurement runs the binary).\n"
    );
    s
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn latency_plot(r: &Results, tier: &str, file: &Path) -> PlotResult {
    let rows: Vec<&TierRow> = r.tiers.iter().filter(|x| x.tier == tier).collect();
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
            format!("{tier}: latency vs concurrent callers (walcache solid, raw dashed)"),
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
                .label(format!("raw {} {pct}", size_name(*size)))
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

fn workload_plot(r: &Results, file: &Path) -> PlotResult {
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

/// The commit → eviction CDF plot's file name under `docs/benchmarks/`.
const CDF_SVG: &str = "pipeline-latency-cdf.svg";

/// Nanoseconds as milliseconds with three decimals.
fn ms(ns: i64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// p50 / p99 / p99.9 of a sorted vector, in ms.
fn pcts(v: &[i64]) -> String {
    if v.is_empty() {
        return "—".to_owned();
    }
    format!(
        "{} / {} / {}",
        ms(pct(v, 0.5)),
        ms(pct(v, 0.99)),
        ms(pct(v, 0.999))
    )
}

fn pipeline_markdown(s: &mut String, p: &PipelineResults, nproc: &str) {
    let _ = writeln!(
        s,
        "### Pipeline: walcached against PostgreSQL's own decoding\n"
    );
    let _ = writeln!(
        s,
        "The daemon runs in the suite's process (`walcached::pipeline::run` on a tokio runtime \
         of its own, 2 workers), default `[stream]` settings, one rule `keys = [\"{{id}}\"]` per \
         table, in a database of its own on the same servers; everything shares the {nproc} \
         cores (PostgreSQL, Redis, the daemon, the writers, the reader process).\n"
    );

    // Drain.
    let d = &p.drain;
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(s, "**Drain rate**, walcached vs `pg_recvlogical` on the same slot contents: one publication and four pgoutput slots created before {} rows are inserted in transactions of {} ({:.1} MiB of WAL per slot), then drained in the order A B B A. A: `pg_recvlogical --start --no-loop -o proto_version=1 -o publication_names=… --file /dev/null --endpos <end LSN>`, spawn to exit. B: walcached (Redis invalidation on, a live `walcache` handle subscribed), from the call until it confirms the end LSN, start-up included.\n",
        d.rows, d.rows_per_txn, d.wal_mib);
    let _ = writeln!(
        s,
        "| consumer | rows/s (mean time of 2) | drains (s) | ratio |"
    );
    let _ = writeln!(s, "|---|---:|---|---:|");
    let _ = writeln!(
        s,
        "| `pg_recvlogical` (pgoutput → /dev/null) | {:.0} | {} | 1.00× |",
        d.pg_rate(),
        list(&d.pg_s)
    );
    let _ = writeln!(
        s,
        "| walcached (decode, map, DEL + PUBLISH in Redis, confirm) | {:.0} | {} | **{:.2}×** |\n",
        d.walcached_rate(),
        list(&d.walcached_s),
        d.walcached_rate() / d.pg_rate()
    );
    let _ = writeln!(
        s,
        "walcached published {} invalidation messages per drain (full batches of \
         `batch_max_keys` = 1000 keys would be {}); start-up until streaming {} s.\n",
        d.messages
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        d.rows.div_ceil(1000),
        list(&d.startup_s)
    );

    // Latency.
    let _ = writeln!(
        s,
        "**Commit → L1 eviction in another process**, at several commit rates. {WRITERS} \
         writer connections (autocommit `UPDATE lat SET v = v + 1 WHERE id = $1`, key i on \
         writer i mod {WRITERS}); at a target rate, commit i is sent no earlier than i / rate \
         after the start (tokio timer, 1 ms resolution); unthrottled, each writer sends its next \
         commit as soon as the last returned (\"as fast as the writers go\": the saturation \
         point of this machine). t0 = when the writer's `execute` returned. The reader is a \
         child process (`suite --latency-reader`) with a live `walcache` handle whose L1 holds \
         every key; it polls `contains_in_l1` over a window of {READER_WINDOW} keys in update \
         order (split between the writers, each window following one writer's keys), sleeping {} µs between sweeps (the detection lateness is about half a sweep), \
         and timestamps each key's disappearance, until every key is gone or 1 s after the \
         daemon confirmed the last commit. Timestamps are `CLOCK_MONOTONIC` in both \
         processes (one clock per machine). Negative values (the eviction seen before the \
         writer's `COMMIT` round trip returned) are real and kept. Rows marked *signed* \
         repeat a rate with a daemon that signs every message (HMAC-SHA256, wire v1.4) and a \
         reader that verifies each one: what signing costs end to end. ![commit → eviction \
         CDF](docs/benchmarks/{CDF_SVG})\n",
        READER_POLL.as_micros()
    );
    let _ = writeln!(
        s,
        "| target rate | achieved commits/s | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | samples / commits | missing |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &p.latency {
        let _ = writeln!(
            s,
            "| {} | {:.0} | **{}** | **{}** | {} | {} | {} / {} | {} |",
            r.label(),
            r.achieved,
            ms(pct(&r.total, 0.5)),
            ms(pct(&r.total, 0.99)),
            ms(pct(&r.total, 0.999)),
            ms(r.total.last().copied().unwrap_or(0)),
            r.total.len(),
            r.commits,
            missing(r)
        );
    }
    s.push('\n');

    let _ = writeln!(
        s,
        "**Where the time goes** (p50 / p99 / p99.9, ms). *PostgreSQL*: a separate pass at the \
         same rate with no daemon, `pg_recvlogical --plugin test_decoding` on its own slot \
         writing to a pipe this process reads; COMMIT returned → the row's line read (the \
         walsender's decode and send, and a raw consumer's receive: the floor for any logical \
         consumer). *Daemon*: COMMIT returned → the invalidation message naming the key heard \
         by a plain redis-rs subscriber in the suite's process (PostgreSQL's decode and send, \
         then walcached's receive, decode, key mapping, batching and the Redis script that \
         deletes and PUBLISHes). *Fan-out*: message heard → key gone from the reader process's \
         L1 (Redis pub/sub delivery to the other process, the library's subscriber thread \
         applying it, the reader's polling). The stages are medians of separate distributions, \
         so they add up only roughly; walcached's own share is about *daemon* − *PostgreSQL*.\n"
    );
    let _ = writeln!(
        s,
        "| target rate | PostgreSQL: COMMIT → `pg_recvlogical` (achieved/s) | daemon: COMMIT → PUBLISH heard | fan-out: heard → L1 evicted | total: COMMIT → L1 evicted | walcached's share at p50 | writer's UPDATE round trip |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---:|---|");
    for r in &p.latency {
        let _ = writeln!(
            s,
            "| {} | {} ({:.0}) | {} | {} | {} | {} | {} |",
            r.label(),
            pcts(&r.floor),
            r.floor_achieved,
            pcts(&r.to_heard),
            pcts(&r.heard_to_evicted),
            pcts(&r.total),
            ms(pct(&r.to_heard, 0.5) - pct(&r.floor, 0.5)),
            pcts(&r.commit_rtt)
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "**Inside the daemon** (its `walcached_stage_seconds` and `walcached_batch_transactions` \
         histograms over each run, from the reader's start to its end). The stages run one \
         after another on the daemon's stream task: *decode* (one replication message: \
         decode, map to keys), *visibility* (one PostgreSQL round trip per batch: are its \
         transactions visible to new snapshots), *publish* (the invalidation script and PUBLISH: \
         one Redis round trip per batch), *status* (the standby status update after a batch), \
         *heartbeat*, *recheck* (late-visible transactions published again). A stage's share is \
         its total time against the run's wall time; the rest of the task's time is waiting \
         for PostgreSQL's next message.\n"
    );
    let mut rows: Vec<(String, &crate::stages::Totals, f64)> = p
        .latency
        .iter()
        .map(|r| (r.label(), &r.stages, r.stages_wall_s))
        .collect();
    rows.push((
        format!("drain of {} rows (both runs)", p.drain.rows),
        &p.drain.stages,
        p.drain.stages_wall_s,
    ));
    s.push_str(&crate::stages::table(&rows));
    s.push('\n');
    let behind: Vec<String> = p
        .latency
        .iter()
        .filter(|r| pct(&r.floor, 0.5) > pct(&r.to_heard, 0.5))
        .map(RateResult::label)
        .collect();
    if !behind.is_empty() {
        let _ = writeln!(
            s,
            "At {}, the floor pass itself fell behind the writers (its median exceeds the \
             daemon's: `test_decoding`'s text output and `pg_recvlogical`'s per-message writes \
             cost more than pgoutput into walcached), so it is no floor there and walcached's \
             share comes out negative.\n",
            behind.join(", ")
        );
    }
    let notes: Vec<String> = p
        .latency
        .iter()
        .map(|r| {
            format!(
                "{}: {} data messages, reader {}",
                r.label(),
                r.messages,
                r.reader_stats
            )
        })
        .collect();
    let _ = writeln!(
        s,
        "Per rate (daemon pass): {}. `not_live_sweeps` > 0 would mean the reader's handle \
         stopped being live (an L1 flush; keys gone before their UPDATE was sent are then left \
         out and counted as missing).\n",
        notes.join("; ")
    );

    // RSS.
    match &p.rss {
        Ok(m) => {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let _ = writeln!(
                s,
                "**Peak RSS of the daemon process** through one large transaction: `walcached \
                 run` (the binary next to the suite's, as a child process, Prometheus recorder \
                 installed) \
                 follows `INSERT INTO big SELECT g, 0 FROM generate_series(1, {})` (one \
                 transaction); `VmHWM` from `/proc/<pid>/status` once the slot's \
                 `confirmed_flush_lsn` reached the commit's end.\n",
                m.rows
            );
            let _ = writeln!(
                s,
                "| rows in the transaction | VmHWM idle (streaming) | VmHWM after | confirmed after COMMIT | namespace generation |"
            );
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                s,
                "| {} | {:.1} MiB | **{:.1} MiB** | {:.2} s ({:.0} rows/s) | {} |\n",
                m.rows,
                mib(m.idle_hwm_kib),
                mib(m.hwm_kib),
                m.follow_s,
                m.rows as f64 / m.follow_s,
                m.generation
            );
        }
        Err(why) => {
            let _ = writeln!(s, "**Peak RSS of the daemon process**: skipped, {why}.\n");
        }
    }
}

fn missing(r: &RateResult) -> String {
    let mut m = r.missing.to_string();
    if r.flushed > 0 {
        m.push_str(&format!(" (+{} flushed)", r.flushed));
    }
    if r.floor_missing > 0 {
        m.push_str(&format!("; floor {}", r.floor_missing));
    }
    m
}

/// One CDF curve per commit rate (solid), with PostgreSQL's floor at the same rate (dashed).
fn cdf_plot(p: &PipelineResults, file: &Path) -> PlotResult {
    const X_MIN: f64 = 0.01;
    let x_max = p
        .latency
        .iter()
        .filter_map(|r| r.total.last())
        .map(|&ns| ns as f64 / 1e6)
        .fold(1.0f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(file, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "COMMIT returned → evicted from another process's L1 (solid); PostgreSQL floor (dashed)",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((X_MIN..x_max).log_scale(), 0f64..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale; values ≤ 0.01 drawn at 0.01)")
        .y_desc("fraction of commits")
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(214, 39, 40),
    ];
    // Up to 1000 points of the empirical CDF of a sorted vector.
    let curve = |v: &[i64]| -> Vec<(f64, f64)> {
        let n = v.len();
        let step = (n / 1000).max(1);
        let mut pts: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n.saturating_sub(1)))
            .filter(|&i| i < n)
            .map(|i| ((v[i] as f64 / 1e6).max(X_MIN), (i + 1) as f64 / n as f64))
            .collect();
        pts.dedup();
        pts
    };
    for (i, r) in p.latency.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(curve(&r.total), color.stroke_width(2)))?
            .label(format!(
                "{} ({:.0}/s achieved): p50 {} ms, p99 {} ms",
                r.label(),
                r.achieved,
                ms(pct(&r.total, 0.5)),
                ms(pct(&r.total, 0.99))
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(
                curve(&r.floor),
                5,
                4,
                color.mix(0.7).stroke_width(1),
            ))?
            .label(format!("{} floor: pg_recvlogical", r.label()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.7).stroke_width(1))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    root.present()?;
    Ok(())
}

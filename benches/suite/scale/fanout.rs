//! Many subscribed handles: commit → L1 eviction at [`FANOUT_RATE`] commits/s (the pipeline
//! section's measurement: its reader process, writers and plain subscriber) with the reader's
//! handle alone on the channel, and with more handles subscribed (`mode.fanout_handles` in
//! all), each in a process of its own (this binary, [`SUBSCRIBER_COMMAND`]) whose L1 holds the
//! same keys. Separate processes, not handles in one process: each has its own pub/sub
//! connection, subscriber thread and runtime, as a fleet of services does. The reader is
//! spawned last, so Redis delivers each message to it after every other subscriber.
//!
//! On one machine the other handles' own work (waking up for every message and applying it)
//! competes for the cores with the daemon, Redis and the reader, which a fleet spreads over
//! its machines: the largest count runs a second time with the other handles at the lowest
//! CPU priority (`nice -n 19`), so that what remains is the cost of the fan-out itself
//! (Redis writing every message to every subscriber).
//!
//! Besides the latency: the daemon's `publish` stage per batch (the script whose PUBLISH
//! writes the message to every subscriber), how busy the daemon's stream task was (its
//! stages' total time against the run's), Redis's own CPU per commit (`INFO cpu`), and
//! whether every other handle saw every key evicted and stayed live.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use walcache::Walcache;

use crate::cpu::redis_cpu_s;
use crate::pipeline::{self, BoxError, Env, InProcessDaemon, RateResult, Writers, LATENCY_NS};
use crate::Mode;

/// The hidden subcommand of a passive subscriber process.
pub(crate) const SUBSCRIBER_COMMAND: &str = "--scale-subscriber";
/// Commits per second of the fan-out measurement.
pub(crate) const FANOUT_RATE: f64 = 1000.0;

/// One configuration: `handles` subscribed handles in all.
pub(crate) struct FanoutRow {
    pub(crate) handles: usize,
    /// The other handles ran at the lowest CPU priority.
    pub(crate) niced: bool,
    pub(crate) rate: RateResult,
    /// The daemon's `publish` stage over the run: total seconds and batches.
    pub(crate) publish_s: f64,
    pub(crate) batches: u64,
    /// Redis's CPU time over the run (s).
    pub(crate) redis_cpu_s: f64,
    /// The daemon's stages' total time over the run, and the run's wall time (s).
    pub(crate) busy_s: f64,
    pub(crate) wall_s: f64,
    /// The other handles that saw every key evicted and were live at the end.
    pub(crate) others_complete: usize,
}

pub(crate) struct FanoutResult {
    pub(crate) rows: Vec<FanoutRow>,
}

pub(crate) fn run(env: &Env<'_>, mode: Mode) -> Result<FanoutResult, BoxError> {
    let n = mode.fanout_commits;
    // The pipeline section's reader watches namespace `lat`: the same table name here, in
    // this section's database.
    env.sql(&format!(
        "CREATE TABLE {LATENCY_NS} (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         INSERT INTO {LATENCY_NS} SELECT g, 0 FROM generate_series(0, {last}) g;
         CREATE PUBLICATION scale_fan_pub FOR TABLE {LATENCY_NS} \
             WITH (publish_via_partition_root = true);",
        last = n - 1
    ))?;
    env.sql(&format!("VACUUM ANALYZE {LATENCY_NS}"))?;
    let writers = env.writers(LATENCY_NS)?;
    env.create_slot("scale_fan", "pgoutput")?;
    let toml = env.daemon_toml("scale_fan", "scale_fan_pub", LATENCY_NS);
    let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
    let mut rows = Vec::new();
    let most = mode.fanout_handles.iter().copied().max().unwrap_or(1);
    let configs = mode
        .fanout_handles
        .iter()
        .map(|&h| (h, false))
        .chain((most > 1).then_some((most, true)));
    for (handles, niced) in configs {
        rows.push(one(env, &mut daemon, &writers, handles, niced, n)?);
    }
    daemon.stop()?;
    env.drop_slot("scale_fan")?;
    Ok(FanoutResult { rows })
}

/// The daemon's stages, one after another on its stream task.
const STAGES: [&str; 6] = [
    "decode",
    "visibility",
    "publish",
    "status",
    "heartbeat",
    "recheck",
];

/// A passive subscriber process.
struct Passive {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Passive {
    fn line(&mut self) -> Result<String, BoxError> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }
}

fn one(
    env: &Env<'_>,
    daemon: &mut InProcessDaemon<'_>,
    writers: &Writers,
    handles: usize,
    niced: bool,
    n: usize,
) -> Result<FanoutRow, BoxError> {
    let exe = std::env::current_exe()?;
    let mut others = Vec::new();
    for _ in 1..handles {
        let mut command = if niced {
            let mut c = Command::new("nice");
            c.args(["-n", "19"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let mut child = command
            .arg(SUBSCRIBER_COMMAND)
            .arg(env.redis.url())
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("subscriber stdout")?);
        others.push(Passive {
            child,
            stdin,
            stdout,
        });
    }
    let result = (|| {
        for p in &mut others {
            let line = p.line()?;
            if line != "READY" {
                return Err(format!("a subscriber process said {line:?}").into());
            }
        }
        let now = env.current_lsn()?;
        daemon.wait("the daemon to catch up", |s| {
            s.is_caught_up() && s.confirmed_lsn() >= now
        })?;
        let mut redis = env
            .rt
            .block_on(env.redis.client().get_multiplexed_async_connection())?;
        let cpu_before = env.rt.block_on(redis_cpu_s(&mut redis))?;
        let before = crate::stages::Totals::now();
        let started = Instant::now();
        let rate = pipeline::latency_run(env, daemon, writers, Some(FANOUT_RATE), n, None)?;
        let wall_s = started.elapsed().as_secs_f64();
        let totals = crate::stages::Totals::now().since(&before);
        let redis_cpu = env.rt.block_on(redis_cpu_s(&mut redis))? - cpu_before;
        let (publish_s, batches) = crate::stages::stage(&totals, "publish");
        let busy_s = STAGES
            .iter()
            .map(|st| crate::stages::stage(&totals, st).0)
            .sum::<f64>();
        Ok::<_, BoxError>((rate, publish_s, batches, redis_cpu, busy_s, wall_s))
    })();
    // Closing stdin asks each for its count of keys gone; every process is reaped either way.
    let mut complete = 0;
    for p in &mut others {
        drop(p.stdin.take());
    }
    for mut p in others {
        let line = p.line().unwrap_or_default();
        let mut parts = line.split_whitespace();
        if parts.next() == Some("S") {
            let gone: usize = parts.next().and_then(|g| g.parse().ok()).unwrap_or(0);
            let live = parts.next() == Some("live");
            if gone == n && live {
                complete += 1;
            }
        }
        let _ = p.child.wait();
    }
    let (rate, publish_s, batches, redis_cpu_s, busy_s, wall_s) = result?;
    eprintln!(
        "suite: scale: {handles} handles{} at {FANOUT_RATE:.0}/s: p50 {:.3} ms, p99 {:.3} ms; \
         publish {:.0} µs per batch; daemon busy {:.0}%; Redis CPU {:.1} µs per commit; others \
         complete {complete}/{}{}",
        if niced { " (others niced)" } else { "" },
        pipeline::pct(&rate.total, 0.5) as f64 / 1e6,
        pipeline::pct(&rate.total, 0.99) as f64 / 1e6,
        publish_s / batches.max(1) as f64 * 1e6,
        100.0 * busy_s / wall_s,
        redis_cpu_s / n as f64 * 1e6,
        handles - 1,
        crate::caveat::figure_label()
    );
    Ok(FanoutRow {
        handles,
        niced,
        rate,
        publish_s,
        batches,
        redis_cpu_s,
        busy_s,
        wall_s,
        others_complete: complete,
    })
}

/// A passive subscriber process: a live handle whose L1 holds keys `0..n` of namespace `lat`;
/// prints `READY`, then, once stdin is closed, `S <keys gone from L1> <live|not-live>`.
pub(crate) fn subscriber(args: &[String]) -> Result<(), BoxError> {
    let [redis_url, n] = args else {
        return Err(format!("usage: {SUBSCRIBER_COMMAND} REDIS_URL N").into());
    };
    let n: usize = n.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.block_on(
        Walcache::builder()
            .allow_unsigned()
            .redis_url(redis_url.as_str())
            .build(),
    )?;
    let cache = pipeline::filled_latency_cache(&rt, &handle, n, Duration::from_secs(60))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY")?;
    stdout.flush()?;
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    let gone = (0..n as i64).filter(|k| !cache.contains_in_l1(k)).count();
    let live = if handle.is_live() { "live" } else { "not-live" };
    writeln!(stdout, "S {gone} {live}")?;
    stdout.flush()?;
    Ok(())
}

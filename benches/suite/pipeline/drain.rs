//! The drain rate: one publication and four pgoutput slots created before N row changes (ids
//! `1..=N` inserted in id order, in transactions of `per` rows), so every slot holds the same
//! WAL; drained in the order A B B A.
//!
//! - A: `pg_recvlogical` (output to `/dev/null`, `--endpos` the end LSN), from spawn to exit.
//! - B: walcached in this process (on a runtime of its own, Redis invalidation on), from the
//!   call that starts it until a plain subscriber here hears the data message that names the
//!   last row's key (N). The daemon publishes in commit order and a batch never splits a
//!   transaction, so that message is the last one of the drain: checked afterwards against the
//!   daemon's own count of messages. The daemon's confirmed LSN is not the end: it moves with
//!   its status reports and marker checks, after the invalidation work is done. It is waited
//!   for after the timing, so that the daemon stops with the slot confirmed to the end.
//!
//! Why not the library handle's L1 as the end (key N filled before the start, the end when it
//! leaves L1): a handle flushes its whole L1 at the first message of a new daemon epoch (every
//! start is one), and is not live again until the daemon's first heartbeat, which goes out
//! only once the backlog is drained. Key N would leave L1 at the first batch, not at its own
//! invalidation. The handle stays subscribed all the same, so that the daemon's messages have
//! the subscriber a service would be.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{lsn_text, BoxError, Env, InProcessDaemon, KeyListener};
use crate::cpu::{process_cpu_s, Machine};

pub(crate) struct DrainResult {
    pub(crate) rows: u64,
    pub(crate) rows_per_txn: u64,
    pub(crate) wal_mib: f64,
    /// Seconds of each `pg_recvlogical` drain (A1, A2: spawn to exit) and each walcached
    /// drain (B1, B2: start to the last row's invalidation heard).
    pub(crate) pg_s: Vec<f64>,
    pub(crate) walcached_s: Vec<f64>,
    /// The machine's busy CPU seconds over each timed drain (all cores, every process: the
    /// walsender, the consumer, Redis), A's and B's.
    pub(crate) pg_cpu_s: Vec<f64>,
    pub(crate) walcached_cpu_s: Vec<f64>,
    /// CPU seconds of the walsender serving each drain (PostgreSQL's decoding and send: one
    /// process, so at most one core), A's and B's; NaN where it could not be read.
    pub(crate) pg_walsender_s: Vec<f64>,
    pub(crate) walcached_walsender_s: Vec<f64>,
    /// Data messages walcached published per drain, and its start-up until streaming.
    pub(crate) messages: Vec<u64>,
    pub(crate) startup_s: Vec<f64>,
    /// The daemon's stage totals over its drains, and their wall time (seconds: each from its
    /// start until it confirmed the end LSN, the untimed wait included, as its stages are).
    pub(crate) stages: crate::stages::Totals,
    pub(crate) stages_wall_s: f64,
}

impl DrainResult {
    fn rate(&self, secs: &[f64]) -> f64 {
        self.rows as f64 / (secs.iter().sum::<f64>() / secs.len().max(1) as f64)
    }
    pub(crate) fn pg_rate(&self) -> f64 {
        self.rate(&self.pg_s)
    }
    pub(crate) fn walcached_rate(&self) -> f64 {
        self.rate(&self.walcached_s)
    }
    /// The machine's busy CPU seconds per 100,000 rows, and the share of the cores' time that
    /// was, over `secs` drains with `cpu_s` busy seconds.
    fn cpu(&self, secs: &[f64], cpu_s: &[f64]) -> (f64, f64) {
        let busy: f64 = cpu_s.iter().sum();
        let wall: f64 = secs.iter().sum();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        (
            busy / (self.rows as f64 * cpu_s.len().max(1) as f64) * 100_000.0,
            busy / (wall * cores as f64).max(1e-9),
        )
    }
    pub(crate) fn pg_cpu(&self) -> (f64, f64) {
        self.cpu(&self.pg_s, &self.pg_cpu_s)
    }
    pub(crate) fn walcached_cpu(&self) -> (f64, f64) {
        self.cpu(&self.walcached_s, &self.walcached_cpu_s)
    }
    /// The walsender's busy share of the drains' wall time (1.0: a core throughout).
    pub(crate) fn pg_walsender_busy(&self) -> f64 {
        self.pg_walsender_s.iter().sum::<f64>() / self.pg_s.iter().sum::<f64>().max(1e-9)
    }
    pub(crate) fn walcached_walsender_busy(&self) -> f64 {
        self.walcached_walsender_s.iter().sum::<f64>()
            / self.walcached_s.iter().sum::<f64>().max(1e-9)
    }
}

pub(super) fn drain(env: &Env<'_>, n: u64, per: u64) -> Result<DrainResult, BoxError> {
    // Ids 1..=n in commits of `per`: the last commit holds id n only if `per` divides n.
    if n == 0 || per == 0 || n % per != 0 {
        return Err(format!("drain: {n} rows are not whole transactions of {per}").into());
    }
    // The publication and all four slots exist before the rows, so every slot holds them all.
    env.create_published_table("drain")?;
    let order = ["drain_a1", "drain_b1", "drain_b2", "drain_a2"];
    for slot in order {
        env.create_slot(slot, "pgoutput")?;
    }
    env.sql(&format!(
        "DO $$ BEGIN
           FOR i IN 0..{last} LOOP
             INSERT INTO drain SELECT g, 0 FROM generate_series(i * {per} + 1, (i + 1) * {per}) g;
             COMMIT;
           END LOOP;
         END $$;",
        last = n / per - 1
    ))?;
    let end = env.current_lsn()?;
    let start_lsn = env.confirmed_flush_lsn("drain_a1")?;
    let wal_mib = end.saturating_sub(start_lsn) as f64 / (1 << 20) as f64;

    let (handle, cache) = env.subscribed_cache("drain")?;
    // The end of each walcached drain: the last row's key heard on the channel.
    let last = KeyListener::start(env, "drain", i64::try_from(n)?)?;

    let mut r = DrainResult {
        rows: n,
        rows_per_txn: per,
        wal_mib,
        pg_s: Vec::new(),
        walcached_s: Vec::new(),
        pg_cpu_s: Vec::new(),
        walcached_cpu_s: Vec::new(),
        pg_walsender_s: Vec::new(),
        walcached_walsender_s: Vec::new(),
        messages: Vec::new(),
        startup_s: Vec::new(),
        stages: crate::stages::Totals::default(),
        stages_wall_s: 0.0,
    };
    let stages_before = crate::stages::Totals::now();
    for slot in order {
        let cpu = Machine::now();
        if slot.starts_with("drain_a") {
            let (took, walsender) = drain_pg_recvlogical(env, slot, end)?;
            r.pg_cpu_s.push(Machine::now().since(&cpu).0);
            r.pg_s.push(took.as_secs_f64());
            r.pg_walsender_s.push(walsender.unwrap_or(f64::NAN));
        } else {
            let toml = env.daemon_toml(slot, "drain_pub", "drain");
            last.reset();
            let t = Instant::now();
            let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
            let streaming =
                daemon.wait_noting_streaming("the last row's invalidation", t, |_| {
                    last.heard().is_some()
                })?;
            r.walcached_cpu_s.push(Machine::now().since(&cpu).0);
            let walsender = env.walsender_pid(slot)?.and_then(process_cpu_s);
            r.walcached_walsender_s.push(walsender.unwrap_or(f64::NAN));
            let heard = last.heard().ok_or("the last row's invalidation")?;
            r.walcached_s
                .push(heard.at.saturating_duration_since(t).as_secs_f64());
            r.startup_s.push(streaming.as_secs_f64());
            // Untimed: the slot confirmed to the end, so the daemon stops on a clean slot.
            daemon.wait("the drain's end LSN to be confirmed", |s| {
                s.confirmed_lsn() >= end
            })?;
            r.stages_wall_s += t.elapsed().as_secs_f64();
            let messages = daemon.status.published_seq();
            // The end heard was this daemon's, and its last data message: nothing of the
            // drain was published after it.
            if heard.epoch != daemon.status.epoch() || heard.seq != messages {
                return Err(format!(
                    "drain {slot}: the last row's key was heard in message {} of epoch {:x}, \
                     but the daemon (epoch {:x}) published {messages} messages",
                    heard.seq,
                    heard.epoch,
                    daemon.status.epoch()
                )
                .into());
            }
            r.messages.push(messages);
            daemon.stop()?;
        }
    }
    r.stages = crate::stages::Totals::now().since(&stages_before);
    for slot in order {
        env.drop_slot(slot)?;
    }
    drop(last);
    drop(cache);
    drop(handle);
    eprintln!(
        "suite: drain {n} rows: pg_recvlogical {:.0} rows/s, walcached {:.0} rows/s ({:.2}×){}",
        r.pg_rate(),
        r.walcached_rate(),
        r.walcached_rate() / r.pg_rate(),
        crate::caveat::figure_label()
    );
    Ok(r)
}

/// Drain `slot` up to `end` with `pg_recvlogical` into /dev/null; the time from spawn to exit,
/// and the CPU seconds its walsender used (sampled until the exit).
fn drain_pg_recvlogical(
    env: &Env<'_>,
    slot: &str,
    end: u64,
) -> Result<(Duration, Option<f64>), BoxError> {
    let bin = env.pg.bin_dir().join("pg_recvlogical");
    let t = Instant::now();
    let mut child = Command::new(&bin)
        .arg("--dbname")
        .arg(env.pg.conn_string(env.dbname))
        .args(["--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=drain_pub"])
        .args(["--file", "/dev/null", "--endpos"])
        .arg(lsn_text(end))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    // The walsender's CPU, read until the consumer exits (the walsender ends with it).
    let (mut walsender, mut cpu) = (None, None);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if walsender.is_none() {
            walsender = env.walsender_pid(slot)?;
        }
        if let Some(now) = walsender.and_then(process_cpu_s) {
            cpu = Some(now);
        }
        std::thread::sleep(WALSENDER_SAMPLE);
    };
    let elapsed = t.elapsed();
    if !status.success() {
        return Err(format!("{} {slot} exited with {status}", bin.display()).into());
    }
    Ok((elapsed, cpu))
}

/// How often the `pg_recvlogical` drain's walsender's CPU is read (its clock ticks are 10 ms).
const WALSENDER_SAMPLE: Duration = Duration::from_millis(2);

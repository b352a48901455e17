//! Commit → L1 eviction at several commit rates (paced by a timer, and unthrottled): a reader
//! *process* ([`super::reader`]) holds a live `walcache` handle whose L1 holds every key and
//! records when each key leaves it; the writers here record when each `COMMIT` returned; a
//! plain redis-rs subscriber here records when the invalidation message naming the key
//! arrived. All three read `CLOCK_MONOTONIC`, one clock per machine. A separate pass at each
//! rate, without the daemon, follows the same commits with `pg_recvlogical` (`test_decoding`,
//! to a pipe): PostgreSQL's own decode-and-send time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use walcache_protocol::{Body, Message};

use super::reader::{READER_COMMAND, READER_KEYS_ENV};
use super::{mono_ns, pct, BoxError, Env, InProcessDaemon};
use crate::cpu::Machine;

/// The namespace (and table) of the latency benchmark.
pub(crate) const LATENCY_NS: &str = "lat";
/// How long the reader sleeps between two sweeps over the keys it watches.
pub(crate) const READER_POLL: Duration = Duration::from_micros(20);
/// How many keys, in update order, the reader checks per sweep (split between the writers).
pub(crate) const READER_WINDOW: usize = 256;
/// Writer connections of the latency benchmark (commit `i` goes to writer `i % WRITERS`).
pub(crate) const WRITERS: usize = 4;

/// One commit rate: sorted latencies in nanoseconds (negative values kept).
pub(crate) struct RateResult {
    /// Target commits per second; `None` = unthrottled.
    pub(crate) target: Option<f64>,
    /// The daemon signed its messages (wire v1.4) and the reader verified them.
    pub(crate) signed: bool,
    /// The daemon's stage totals over the run, and the run's wall time (seconds).
    pub(crate) stages: crate::stages::Totals,
    pub(crate) stages_wall_s: f64,
    pub(crate) commits: usize,
    /// Commits per second achieved in the daemon pass and in the floor pass.
    pub(crate) achieved: f64,
    pub(crate) floor_achieved: f64,
    /// COMMIT returned → gone from the reader's L1.
    pub(crate) total: Vec<i64>,
    /// COMMIT returned → message heard by a plain subscriber.
    pub(crate) to_heard: Vec<i64>,
    /// Message heard → gone from the reader's L1.
    pub(crate) heard_to_evicted: Vec<i64>,
    /// COMMIT returned → the row's line read from `pg_recvlogical` (floor pass).
    pub(crate) floor: Vec<i64>,
    /// UPDATE sent → COMMIT returned (daemon pass).
    pub(crate) commit_rtt: Vec<i64>,
    pub(crate) missing: usize,
    pub(crate) flushed: usize,
    pub(crate) floor_missing: usize,
    pub(crate) messages: u64,
    pub(crate) reader_stats: String,
    /// The share of the machine's cores busy while the writers ran (`/proc/stat`: every
    /// process on it).
    pub(crate) cores_busy: f64,
}

impl RateResult {
    pub(crate) fn label(&self) -> String {
        let rate = match self.target {
            Some(r) => format!("{r:.0}/s"),
            None => "unthrottled".to_owned(),
        };
        if self.signed {
            format!("{rate}, signed")
        } else {
            rate
        }
    }
}

/// The writers' connections and their prepared `UPDATE`.
pub(crate) type Writers = Vec<(tokio_postgres::Client, tokio_postgres::Statement)>;

pub(super) fn latency(
    env: &Env<'_>,
    rates: &[(Option<f64>, usize)],
) -> Result<Vec<RateResult>, BoxError> {
    let rows = rates.iter().map(|r| r.1).max().unwrap_or(1);
    env.sql(&format!(
        "CREATE TABLE {LATENCY_NS} (id bigint PRIMARY KEY, v int NOT NULL) \
             WITH (autovacuum_enabled = false);
         INSERT INTO {LATENCY_NS} SELECT g, 0 FROM generate_series(0, {last}) g;",
        last = rows - 1
    ))?;
    env.sql(&format!("VACUUM ANALYZE {LATENCY_NS}"))?;
    // The publication must exist before the first change the daemon's slot decodes: pgoutput
    // looks it up in the catalog as of each change.
    env.sql(&format!(
        "CREATE PUBLICATION lat_pub FOR TABLE {LATENCY_NS} WITH (publish_via_partition_root = true)"
    ))?;
    let writers = env.writers(LATENCY_NS)?;

    // Floor passes first, with no daemon slot yet: nothing else decodes the WAL meanwhile.
    let floors = latency_floor(env, &writers, rates)?;
    // Then the daemon's slot, from here on, and one daemon for all rates.
    env.create_slot("lat", "pgoutput")?;
    let toml = env.daemon_toml("lat", "lat_pub", LATENCY_NS);
    let mut results = Vec::new();
    // Unsigned at every rate, then signed (wire v1.4: the daemon signs each message, the
    // reader verifies it) at the rates of the goals, on the same slot and the same floors.
    let signing_env: HashMap<String, String> =
        [("WALCACHED_SIGNING_KEYS".to_owned(), SIGNING_KEYS.to_owned())].into();
    for signed in [false, true] {
        let daemon_env = if signed {
            signing_env.clone()
        } else {
            HashMap::new()
        };
        let mut daemon = InProcessDaemon::start_with_env(env.daemon_rt, &toml, &daemon_env)?;
        for (&(target, n), (floor, floor_achieved, floor_missing)) in rates.iter().zip(&floors) {
            if signed && !SIGNED_RATES.contains(&target) {
                continue;
            }
            let now = env.current_lsn()?;
            daemon.wait("the daemon to catch up", |s| {
                s.is_caught_up() && s.confirmed_lsn() >= now
            })?;
            let keys = signed.then_some(SIGNING_KEYS);
            let (before, started) = (crate::stages::Totals::now(), Instant::now());
            let mut r = latency_run(env, &mut daemon, &writers, target, n, keys)?;
            r.stages = crate::stages::Totals::now().since(&before);
            r.stages_wall_s = started.elapsed().as_secs_f64();
            r.floor = floor.clone();
            r.floor_achieved = *floor_achieved;
            r.floor_missing = *floor_missing;
            eprintln!(
                "suite: latency {}: achieved {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms \
             ({} samples, {} missing); floor p50 {:.3} ms; reader {}{}",
                r.label(),
                r.achieved,
                pct(&r.total, 0.5) as f64 / 1e6,
                pct(&r.total, 0.99) as f64 / 1e6,
                pct(&r.total, 0.999) as f64 / 1e6,
                r.total.len(),
                r.missing,
                pct(&r.floor, 0.5) as f64 / 1e6,
                r.reader_stats,
                crate::caveat::figure_label()
            );
            results.push(r);
        }
        daemon.stop()?;
    }
    env.drop_slot("lat")?;
    Ok(results)
}

/// The signing key of the signed latency pass (the daemon's and the reader's).
const SIGNING_KEYS: &str = "bench:8f1c2a9d0e4b7f6a5c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

/// The rates measured signed as well: those of the pipeline goals.
const SIGNED_RATES: &[Option<f64>] = &[Some(1000.0), Some(4000.0)];

/// When each commit was sent and when its `COMMIT` returned (indexed by key), and how long
/// the whole run took from the first send to the last return.
struct Commits {
    sent: Vec<i64>,
    acked: Vec<i64>,
    span_s: f64,
}

/// `n` autocommit UPDATEs of keys `0..n`, key `i` on writer `i % WRITERS`; at `rate`, key `i`
/// is sent no earlier than `i / rate` seconds after the start (a tokio timer, so bursts within
/// its 1 ms resolution); unthrottled, each writer sends its next as soon as the last returned.
fn write_commits(
    env: &Env<'_>,
    writers: &Writers,
    n: usize,
    rate: Option<f64>,
) -> Result<Commits, BoxError> {
    env.rt.block_on(async {
        let start = tokio::time::Instant::now();
        let per_writer = writers
            .iter()
            .enumerate()
            .map(|(w, (db, update))| async move {
                let mut out = Vec::with_capacity(n / WRITERS + 1);
                for i in (w..n).step_by(WRITERS) {
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate))
                            .await;
                    }
                    let id = i64::try_from(i)?;
                    let sent = mono_ns();
                    let changed = db.execute(update, &[&id]).await?;
                    let acked = mono_ns();
                    if changed != 1 {
                        return Err(format!("UPDATE of id {id} changed {changed} rows").into());
                    }
                    out.push((i, sent, acked));
                }
                Ok::<_, BoxError>(out)
            });
        let all = futures_util::future::try_join_all(per_writer).await?;
        let mut sent = vec![0; n];
        let mut acked = vec![0; n];
        for (i, s, a) in all.into_iter().flatten() {
            sent[i] = s;
            acked[i] = a;
        }
        let first = sent.iter().copied().min().unwrap_or(0);
        let last = acked.iter().copied().max().unwrap_or(0);
        Ok(Commits {
            sent,
            acked,
            span_s: (last - first) as f64 / 1e9,
        })
    })
}

/// The floor at every rate: the same commits followed by `pg_recvlogical` with
/// `test_decoding` writing to a pipe this process reads; for each row, the time its line
/// arrived after its `COMMIT` returned. Returns (sorted latencies, achieved rate, missing).
fn latency_floor(
    env: &Env<'_>,
    writers: &Writers,
    rates: &[(Option<f64>, usize)],
) -> Result<Vec<(Vec<i64>, f64, usize)>, BoxError> {
    env.create_slot("lat_raw", "test_decoding")?;
    let bin = env.pg.bin_dir().join("pg_recvlogical");
    let mut child = Command::new(&bin)
        .arg("--dbname")
        .arg(env.pg.conn_string(env.dbname))
        .args(["--slot", "lat_raw", "--start", "--no-loop", "--file", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let out = child.stdout.take().ok_or("pg_recvlogical stdout")?;
    let (tx, rx) = mpsc::channel::<(usize, i64)>();
    let lines = std::thread::spawn(move || {
        let prefix = format!("table public.{LATENCY_NS}: UPDATE: id[bigint]:");
        for line in BufReader::new(out).lines() {
            let at = mono_ns();
            let Ok(line) = line else { break };
            let id = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse::<usize>().ok());
            if let Some(id) = id {
                if tx.send((id, at)).is_err() {
                    break;
                }
            }
        }
    });
    let result = (|| {
        env.wait_slot("lat_raw", true)?;
        let mut floors = Vec::new();
        for &(rate, n) in rates {
            let commits = write_commits(env, writers, n, rate)?;
            // Every row's line, or whatever arrived within 10 s of the last commit.
            let mut seen = vec![None::<i64>; n];
            let mut count = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while count < n {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok((id, at)) => {
                        if let Some(s) = seen.get_mut(id).filter(|s| s.is_none()) {
                            *s = Some(at);
                            count += 1;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut v: Vec<i64> = seen
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| s - commits.acked[i]))
                .collect();
            v.sort_unstable();
            eprintln!(
                "suite: floor {}: {:.0}/s achieved, p50 {:.3} ms{}",
                rate.map_or("unthrottled".to_owned(), |r| format!("{r:.0}/s")),
                n as f64 / commits.span_s,
                pct(&v, 0.5) as f64 / 1e6,
                crate::caveat::figure_label()
            );
            floors.push((v, n as f64 / commits.span_s, n - count));
        }
        Ok::<_, BoxError>(floors)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = lines.join();
    drop(rx);
    env.drop_slot("lat_raw")?;
    result
}

pub(crate) fn latency_run(
    env: &Env<'_>,
    daemon: &mut InProcessDaemon<'_>,
    writers: &Writers,
    rate: Option<f64>,
    n: usize,
    signing_keys: Option<&str>,
) -> Result<RateResult, BoxError> {
    let exe = std::env::current_exe()?;
    let mut reader = Command::new(&exe);
    match signing_keys {
        Some(keys) => reader.env(READER_KEYS_ENV, keys),
        None => reader.env_remove(READER_KEYS_ENV),
    };
    let mut reader = reader
        .arg(READER_COMMAND)
        .arg(env.redis.url())
        .arg(n.to_string())
        .arg(WRITERS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut out = BufReader::new(reader.stdout.take().ok_or("reader stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if line.trim() != "READY" {
        let _ = reader.kill();
        let _ = reader.wait();
        return Err(format!("the reader did not get ready: {line:?}").into());
    }

    // A plain pub/sub listener in this process, to split the latency into the daemon's part
    // (commit → message received) and the fan-out (message → L1 eviction in the reader).
    let heard = Arc::new(std::sync::Mutex::new(vec![None::<i64>; n]));
    let listener = {
        let index: HashMap<String, usize> =
            (0..n).map(|k| (walcache::key_of(&(k as i64)), k)).collect();
        let heard = Arc::clone(&heard);
        let pubsub = env.invalidation_pubsub()?;
        env.rt.spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let at = mono_ns();
                if let Ok(Message {
                    body: Body::Keys(keys),
                    ..
                }) = Message::decode(m.get_payload_bytes())
                {
                    let mut heard = heard.lock().expect("not poisoned");
                    for k in keys.iter().filter(|k| k.namespace == LATENCY_NS) {
                        if let Some(&i) = index.get(&k.key) {
                            heard[i].get_or_insert(at);
                        }
                    }
                }
            }
        })
    };

    let messages_before = daemon.status.published_seq();
    let cpu = Machine::now();
    let commits = write_commits(env, writers, n, rate);
    let (_, cores_busy) = Machine::now().since(&cpu);
    // Once the daemon has confirmed the last commit (it confirms only what it has published;
    // a saturated daemon can be seconds behind the writers), closing the reader's stdin tells
    // it to stop watching after a short grace for the stragglers of pub/sub.
    let caught_up = commits.as_ref().map_err(|e| e.to_string()).and_then(|_| {
        let end = env.current_lsn().map_err(|e| e.to_string())?;
        daemon
            .wait("the daemon to confirm the last commit", |s| {
                s.confirmed_lsn() >= end
            })
            .map_err(|e| e.to_string())
    });
    drop(reader.stdin.take());
    let commits = commits?;
    caught_up?;
    let mut evicted: Vec<Option<i64>> = vec![None; n];
    let mut reader_stats = String::new();
    let mut not_live_at: Option<i64> = None;
    for line in out.lines() {
        let line = line?;
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("E") => {
                let k: usize = parts.next().ok_or("E key")?.parse()?;
                let t: i64 = parts.next().ok_or("E time")?.parse()?;
                evicted[k] = Some(t);
            }
            Some("S") => reader_stats = parts.collect::<Vec<_>>().join(" "),
            Some("N") => not_live_at = Some(parts.next().ok_or("N time")?.parse::<i64>()?),
            _ => return Err(format!("unexpected reader output {line:?}").into()),
        }
    }
    let status = reader.wait()?;
    if !status.success() {
        return Err(format!("the reader exited with {status}").into());
    }
    let messages = daemon.status.published_seq() - messages_before;
    listener.abort();
    let heard = std::mem::take(&mut *heard.lock().expect("not poisoned"));
    let (sent, acked) = (&commits.sent, &commits.acked);

    // A key gone from L1 before its UPDATE was even sent was not evicted by its invalidation
    // but by an L1 flush (the reader's stream stopped being live): not a latency sample.
    let flushed: Vec<usize> = (0..n)
        .filter(|&i| evicted[i].is_some_and(|e| e < sent[i]))
        .collect();
    if let Some(t) = not_live_at {
        eprintln!(
            "suite: !! the reader's handle stopped being live at {:+.3} s (writers' start = 0); \
             {} keys gone before their UPDATE was sent are left out",
            (t - sent[0]) as f64 / 1e9,
            flushed.len()
        );
    }
    for &i in &flushed {
        evicted[i] = None;
    }
    let mut to_heard = Vec::with_capacity(n);
    let mut heard_to_evicted = Vec::with_capacity(n);
    for (i, h) in heard.iter().enumerate() {
        if let Some(h) = h {
            to_heard.push(h - acked[i]);
            if let Some(e) = evicted[i] {
                heard_to_evicted.push(e - h);
            }
        }
    }
    let mut total = Vec::with_capacity(n);
    let mut commit_rtt = Vec::with_capacity(n);
    for (i, e) in evicted.iter().enumerate() {
        commit_rtt.push(acked[i] - sent[i]);
        if let Some(e) = e {
            total.push(e - acked[i]);
        }
    }
    for v in [
        &mut total,
        &mut to_heard,
        &mut heard_to_evicted,
        &mut commit_rtt,
    ] {
        v.sort_unstable();
    }
    let missing = evicted.iter().filter(|e| e.is_none()).count() - flushed.len();
    Ok(RateResult {
        target: rate,
        signed: signing_keys.is_some(),
        stages: crate::stages::Totals::default(),
        stages_wall_s: 0.0,
        commits: n,
        achieved: n as f64 / commits.span_s,
        floor_achieved: 0.0,
        total,
        to_heard,
        heard_to_evicted,
        floor: Vec::new(),
        commit_rtt,
        missing,
        flushed: flushed.len(),
        floor_missing: 0,
        messages,
        reader_stats,
        cores_busy,
    })
}

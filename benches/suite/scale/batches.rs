//! The daemon's ceiling in changes per second as `stream.batch_max_keys` varies: one
//! publication and two slots per batch size, all made before `mode.batch_changes` single-row
//! commits are written, so every slot holds the same changes; then each is drained by a
//! daemon with that batch size (default `batch_max_delay_ms`, 1 ms), from streaming until a
//! plain subscriber hears the invalidation of the last commit's key (the daemon publishes in
//! commit order), the sizes in ascending order and then again in descending order (drift on a
//! shared machine falls on every size alike). Single-row commits, because a batch never
//! splits a transaction: with larger ones a small `batch_max_keys` would not show.

use std::time::Instant;

use crate::pipeline::{BoxError, Env, InProcessDaemon, KeyListener};
use crate::stages::Totals;
use crate::Mode;

/// The batch sizes drained.
pub(crate) const BATCH_SIZES: [usize; 5] = [1, 10, 100, 1000, 10_000];
/// The table (and namespace) drained.
const TABLE: &str = "scale_batch";

/// One batch size's two drains.
pub(crate) struct BatchRow {
    pub(crate) batch_max_keys: usize,
    /// Start until streaming, and streaming until the last commit's invalidation was heard
    /// (s), per drain.
    pub(crate) startup_s: Vec<f64>,
    pub(crate) drain_s: Vec<f64>,
    /// Data messages published, per drain.
    pub(crate) messages: Vec<u64>,
    /// The daemon's stage totals over both drains.
    pub(crate) stages: Totals,
}

pub(crate) struct BatchResult {
    /// Single-row commits in each slot.
    pub(crate) changes: u64,
    pub(crate) rows: Vec<BatchRow>,
}

impl BatchResult {
    /// Changes per second of `row`'s drains (their mean time).
    pub(crate) fn rate(&self, row: &BatchRow) -> f64 {
        let mean = row.drain_s.iter().sum::<f64>() / row.drain_s.len().max(1) as f64;
        self.changes as f64 / mean.max(1e-9)
    }
}

pub(crate) fn run(env: &Env<'_>, mode: Mode) -> Result<BatchResult, BoxError> {
    let n = mode.batch_changes;
    env.create_published_table(TABLE)?;
    let slot = |b: usize, pass: usize| format!("{TABLE}_{b}_{pass}");
    // Ascending, then descending.
    let order: Vec<(usize, usize)> = BATCH_SIZES
        .iter()
        .map(|&b| (b, 0))
        .chain(BATCH_SIZES.iter().rev().map(|&b| (b, 1)))
        .collect();
    for &(b, pass) in &order {
        env.create_slot(&slot(b, pass), "pgoutput")?;
    }
    env.sql(&format!(
        "DO $$ BEGIN
           FOR i IN 1..{n} LOOP
             INSERT INTO {TABLE} VALUES (i, 0);
             COMMIT;
           END LOOP;
         END $$;"
    ))?;
    // A live handle, so the messages have a subscriber, and one value in the namespace, so the
    // delete script finds a schema version to delete under (as in the pipeline's drain).
    let (handle, cache) = env.subscribed_cache(TABLE)?;
    // When the last commit's key was heard on the channel (reset before each drain).
    let last = KeyListener::start(env, TABLE, i64::try_from(n)?)?;
    let mut rows: Vec<BatchRow> = BATCH_SIZES
        .iter()
        .map(|&b| BatchRow {
            batch_max_keys: b,
            startup_s: Vec::new(),
            drain_s: Vec::new(),
            messages: Vec::new(),
            stages: Totals::default(),
        })
        .collect();
    for &(b, pass) in &order {
        let toml = format!(
            "{}\n[stream]\nbatch_max_keys = {b}\n",
            env.daemon_toml(&slot(b, pass), &format!("{TABLE}_pub"), TABLE)
        );
        last.reset();
        let before = Totals::now();
        let started = Instant::now();
        let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
        daemon.wait("the daemon to stream", |s| s.is_streaming())?;
        let streaming = Instant::now();
        let heard = super::poll("the last commit's invalidation", || {
            Ok(last.heard().is_some())
        })?;
        let heard = last.heard().map_or(heard, |h| h.at);
        let drain_s = heard.saturating_duration_since(streaming).as_secs_f64();
        let messages = daemon.status.published_seq();
        daemon.stop()?;
        let totals = Totals::now().since(&before);
        eprintln!(
            "suite: scale: batch_max_keys {b}: {n} changes in {drain_s:.2} s ({:.0}/s), {messages} \
             messages{}",
            n as f64 / drain_s,
            crate::caveat::figure_label()
        );
        let row = rows
            .iter_mut()
            .find(|r| r.batch_max_keys == b)
            .ok_or("a batch size without a row")?;
        row.startup_s.push((streaming - started).as_secs_f64());
        row.drain_s.push(drain_s);
        row.messages.push(messages);
        row.stages = row.stages.plus(&totals);
        env.drop_slot(&slot(b, pass))?;
    }
    drop(last);
    drop(cache);
    drop(handle);
    Ok(BatchResult { changes: n, rows })
}

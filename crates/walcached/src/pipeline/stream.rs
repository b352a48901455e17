//! The stream loop: replication messages in, transactions batched and launched one flight at a
//! time ([`super::inflight`]), timers for status, heartbeats and visibility re-checks.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walcache_cdc::client::ReplicationStream;
use walcache_cdc::pgoutput::LogicalMessage;
use walcache_cdc::protocol::ReplicationMessage;
use walcache_cdc::Lsn;

use super::inflight::next_landing;
use super::liveness::{spawn_sampler, Liveness};
use super::stages::record_since;
use super::visibility::{TxnRecord, VISIBILITY_POLL};
use super::{SessionError, Streamer};
use crate::mapping::{Invalidation, OldRow, RelationCheck};
use crate::metrics as m;
use crate::publisher::Batch;

/// How long the replication stream may stay silent before the session is ended and
/// reconnected. The daemon asks for a keepalive after a quarter of it, so a healthy walsender
/// is never this quiet; a dead peer behind a silent network is.
pub(super) const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batch may wait for more when commits of ours arrive less than this apart on
/// average and nothing is in flight: each flight costs a PostgreSQL and a Redis round trip
/// (and their CPU), and at a few thousand commits a second, launching every commit on its own
/// costs more of a shared machine than the wait costs in latency. Slower streams never wait.
const LINGER: Duration = Duration::from_micros(500);

/// While flights follow one another, how often at most a landing reports the position (the
/// status tick reports it too).
const STATUS_COALESCE: Duration = Duration::from_millis(10);

/// How soon a catalog check that failed is tried again (at most the configured interval).
const CATALOG_RETRY: Duration = Duration::from_secs(1);

/// The sampler's control-session query ended because the session closed.
#[derive(Debug, thiserror::Error)]
#[error("the control session closed")]
pub(super) struct ControlClosed;

/// Aborts a task when dropped (the session's helper tasks end with the session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One transaction being decoded: its invalidations, deduplicated, in bounded memory.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    pub(super) xid: u32,
    pub(super) items: Batch,
    pub(super) keys_per_namespace: HashMap<String, usize>,
}

impl Transaction {
    /// Add one invalidation. A key is moved in, never copied: it is looked up as the pair it
    /// will be stored as, and its namespace is copied only the first time it is counted.
    pub(super) fn add(&mut self, inv: Invalidation, large: usize) {
        let pair = match inv {
            Invalidation::Key { namespace, key } => (namespace, key),
            other => {
                self.items.extend([other]);
                return;
            }
        };
        if self.items.flushes.contains(&pair.0) || self.items.keys.contains(&pair) {
            return;
        }
        if !self.keys_per_namespace.contains_key(&pair.0) {
            self.keys_per_namespace.insert(pair.0.clone(), 0);
        }
        let n = self
            .keys_per_namespace
            .get_mut(&pair.0)
            .expect("counted just above");
        *n += 1;
        if *n > large {
            // Too large to list key by key: one namespace flush, memory stays bounded.
            let ns = pair.0;
            self.items.keys.retain(|(n, _)| *n != ns);
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "large_transaction")
                .increment(1);
            self.items.flushes.insert(ns);
            return;
        }
        self.items.keys.insert(pair);
    }
}

impl Streamer<'_> {
    pub(super) async fn stream_loop(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let ended = self.read_and_publish(stream, shutdown).await;
        // Whatever ended the session, a flight still in the air lands first: the publisher
        // comes back with it (its batch published; the next session replays what the slot has
        // not confirmed).
        if let Err(e) = self.land().await {
            tracing::debug!(error = %e, "the last batch of the session was published but not confirmed");
        }
        ended
    }

    async fn read_and_publish(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let cfg = &self.config.stream;
        let mut txn: Option<Transaction> = None;
        let mut batch = Batch::default();
        let mut batch_started: Option<Instant> = None;
        let mut status_tick = tokio::time::interval(cfg.status_interval());
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut samples, sampler) =
            spawn_sampler(Arc::clone(&self.control), cfg.heartbeat_interval());
        let _sampler = AbortOnDrop(sampler);
        let mut liveness = Liveness::new(cfg.heartbeat_interval());
        let mut last_received = Instant::now();
        // A sample arrived: whether the daemon is still caught up is judged at the loop's top.
        let mut judge_readiness = false;
        // Its own timer, not the status updates' (up to 10 s apart): a keepalive is asked for
        // after 2.5 s of silence whatever the status interval.
        let mut silence_tick = tokio::time::interval(RECEIVE_TIMEOUT / 8);
        silence_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut run_id_tick = tokio::time::interval(Duration::from_secs(5));
        run_id_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut catalog_tick = tokio::time::interval(cfg.catalog_interval());
        catalog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut visibility_tick = tokio::time::interval(VISIBILITY_POLL);
        visibility_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Transactions that announced a catalog change (DDL capture, a Relation message): the
        // catalog is checked once every one is visible to new snapshots, not before — a
        // check that reads the catalog without their change would find nothing.
        let mut check_after: BTreeSet<u32> = BTreeSet::new();
        let mut check_after_tick = tokio::time::interval(VISIBILITY_POLL);
        check_after_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes: Vec<Invalidation> = Vec::new();
        // Since when reading has waited for the flight in the air (the next batch is full).
        let mut stalled: Option<Instant> = None;
        // A flight landed unconfirmed (shutdown interrupted its publish): nothing read after
        // it may be confirmed in this session.
        let mut unconfirmed = false;
        // When a landing last reported the position.
        let mut last_status = Instant::now();
        // When the last commit of ours was read, and the time between two (a moving average
        // over about eight, so that one close pair in a slow stream does not make it wait).
        let mut last_commit: Option<Instant> = None;
        let mut commit_gap = Duration::from_secs(1);
        self.batch_txns.clear();
        loop {
            // Nothing received is unpublished: no transaction open, no batch built or in flight.
            let idle = txn.is_none() && batch.is_empty() && self.flight.is_none();
            // Everything received up to `covered` is published.
            let covered = if idle {
                liveness.received_lsn()
            } else {
                self.published
            };
            liveness.reach(covered);
            let full = batch.len() >= cfg.batch_max_keys;
            if full && self.flight.is_some() {
                stalled.get_or_insert_with(Instant::now);
            }
            let judge = std::mem::take(&mut judge_readiness);
            // A heartbeat waits for the flight in the air: the publisher is with it.
            if self.flight.is_none() && liveness.heartbeat_due() {
                liveness.heartbeat_sent();
                let t = Instant::now();
                self.heartbeat(liveness.lag_bytes()).await;
                record_since(&self.stages.heartbeat, t);
                // The markers moved up to the confirmed position, which may be reported now.
                self.report_moved(stream).await?;
            } else if judge && !liveness.is_keeping_up() {
                self.status.set_caught_up(false);
            }
            // Commits of ours come fast: a batch not yet LINGER old waits for more (launched by
            // the deadline below, or when full).
            let linger = commit_gap < LINGER
                && batch_started.is_some_and(|s| s.elapsed() < LINGER.min(cfg.batch_max_delay()));
            let deadline = batch_started.map(|s| {
                let wait = if linger {
                    LINGER.min(cfg.batch_max_delay())
                } else {
                    cfg.batch_max_delay()
                };
                tokio::time::Instant::from_std(s + wait)
            });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Land the flight in the air, publish the batch built, confirm both, stop.
                    // A transaction half-read is replayed by the next run. (With the token
                    // cancelled, a publish is tried once, not retried.) Nothing is confirmed
                    // past a batch that was not.
                    for _ in 0..2 {
                        match self.land().await {
                            Ok(true) if !unconfirmed => {}
                            Ok(_) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "published at shutdown but not confirmed");
                                break;
                            }
                        }
                        if batch.is_empty() {
                            // Commits with nothing of ours read since the last launch.
                            self.advance_confirmed(Lsn(batch.lsn));
                        }
                        self.launch(&mut batch, &mut batch_started, shutdown);
                    }
                    // Markers first: the position reported may not pass them.
                    self.verify_markers().await;
                    self.send_status(stream).await?;
                    return Ok(());
                }
                landed = next_landing(&mut self.flight), if self.flight.is_some() => {
                    self.flight = None;
                    if let Some(t) = stalled.take() {
                        record_since(&self.stages.wait, t);
                    }
                    if !self.take_in(landed).await? {
                        // Shutdown interrupted the publish: its arm comes next.
                        unconfirmed = true;
                        continue;
                    }
                    if batch.is_empty() {
                        // Commits with nothing of ours, read while the flight was in the air.
                        self.advance_confirmed(Lsn(batch.lsn));
                    }
                    // The batch built meanwhile goes at once: its oldest change has waited a
                    // whole flight already.
                    self.launch(&mut batch, &mut batch_started, shutdown);
                    // Reported at once when nothing follows; while flights follow one another,
                    // at most every STATUS_COALESCE (each update wakes the walsender).
                    if self.reportable() > self.reported
                        && (self.flight.is_none() || last_status.elapsed() >= STATUS_COALESCE)
                    {
                        let t = Instant::now();
                        self.send_status(stream).await?;
                        last_status = t;
                        record_since(&self.stages.status, t);
                    }
                }
                () = sleep_until_opt(deadline), if self.flight.is_none() => {
                    self.launch(&mut batch, &mut batch_started, shutdown);
                }
                _ = visibility_tick.tick(), if !self.pending.is_empty() && self.flight.is_none() => {
                    let t = Instant::now();
                    self.recheck_pending(stream, shutdown).await?;
                    record_since(&self.stages.recheck, t);
                }
                _ = status_tick.tick() => {
                    // Ask for a reply while the server is ahead of what we received.
                    if liveness.lag_bytes() > 0 {
                        self.request_reply(stream).await?;
                    } else {
                        self.send_status(stream).await?;
                    }
                    liveness.report(self.confirmed);
                    self.status.set_lag(liveness.lag_bytes(), liveness.lag().as_secs_f64());
                }
                _ = silence_tick.tick() => {
                    // An idle walsender sends keepalives only every wal_sender_timeout / 2:
                    // ask for one after a quarter of the receive deadline, and end the session
                    // once the deadline passes without a byte.
                    let silent = last_received.elapsed();
                    if silent >= RECEIVE_TIMEOUT {
                        return Err(SessionError::Silent(silent));
                    }
                    if silent >= RECEIVE_TIMEOUT / 4 {
                        self.request_reply(stream).await?;
                    }
                }
                sample = samples.recv() => {
                    match sample {
                        Some(Ok(sample)) => {
                            if liveness.sampled(sample) {
                                self.request_reply(stream).await?;
                            }
                            if liveness.wants_wal_flush(idle) {
                                self.request_wal_flush().await;
                            }
                            liveness.report(self.confirmed);
                            self.status.set_lag(liveness.lag_bytes(), liveness.lag().as_secs_f64());
                            // Judged at the top of the loop, once the new sample had its chance
                            // to be reached: judged here, `/readyz` would read "not caught up"
                            // between every sample's arrival and its heartbeat.
                            judge_readiness = true;
                        }
                        Some(Err(e)) if self.control.is_closed() => return Err(SessionError::ControlLost(e.into())),
                        Some(Err(e)) => {
                            // No sample, no heartbeat: liveness lapses on its own.
                            tracing::warn!(error = %e, "sampling the server's WAL position failed");
                            metrics::counter!(m::ERRORS_TOTAL, "kind" => "postgres").increment(1);
                        }
                        None => return Err(SessionError::ControlLost(ControlClosed.into())),
                    }
                }
                _ = catalog_tick.tick(), if txn.is_none() && self.flight.is_none() => {
                    if !self.check_catalog(stream, shutdown).await {
                        catalog_tick.reset_after(CATALOG_RETRY.min(cfg.catalog_interval()));
                    }
                }
                _ = check_after_tick.tick(), if txn.is_none() && !check_after.is_empty() && self.flight.is_none() => {
                    let xids: Vec<u32> = check_after.iter().copied().collect();
                    if self.invisible(&xids).await?.is_empty() {
                        check_after.clear();
                        if self.check_catalog(stream, shutdown).await {
                            catalog_tick.reset();
                        } else {
                            catalog_tick.reset_after(CATALOG_RETRY.min(cfg.catalog_interval()));
                        }
                    }
                }
                request = super::flush::next(&mut self.flush_requests), if txn.is_none() && self.flight.is_none() => {
                    self.flush_requested(request, stream, shutdown).await;
                }
                _ = run_id_tick.tick(), if self.flight.is_none() => {
                    self.check_redis_identity().await;
                    // Also while no heartbeat goes out (catching up): losses are found, and
                    // the markers advance so that the confirmed position can.
                    self.verify_markers().await;
                    self.report_moved(stream).await?;
                    self.export_slot_metrics().await;
                }
                // Not while the next batch is full and the flight has not landed: bounded memory.
                event = stream.next_event(), if !(full && self.flight.is_some()) => {
                    let Some(event) = event? else {
                        return Err(SessionError::Replication(walcache_cdc::Error::Closed));
                    };
                    last_received = Instant::now();
                    // What a logical decoding message or an oversized one asks for.
                    let mut reaction = None;
                    match event {
                        ReplicationMessage::XLogData(x) => {
                            let decoding = Instant::now();
                            liveness.received(x.wal_end);
                            match x.logical_message()? {
                                LogicalMessage::Begin(b) => {
                                    txn = Some(Transaction { xid: b.xid, ..Transaction::default() });
                                }
                                LogicalMessage::Relation(rel) => {
                                    // PostgreSQL sends a Relation message when a relation's
                                    // definition changed: compare the catalog once this
                                    // transaction has ended.
                                    if self.mapper.namespace_of(rel.id).is_some() {
                                        check_after.extend(txn.as_ref().map(|t| t.xid));
                                    }
                                    if let RelationCheck::Mismatch { namespace, reason } = self.mapper.relation(&rel) {
                                        tracing::error!(namespace = %namespace, %reason, "a mapped table changed under its rule: its namespace is flushed on every change until the rule is fixed");
                                        metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "relation_mismatch").increment(1);
                                        if let Some(t) = txn.as_mut() {
                                            t.add(Invalidation::Flush(namespace), cfg.large_transaction_keys);
                                        }
                                    }
                                }
                                LogicalMessage::Insert(i) => {
                                    self.mapper.change(i.relation_id, Some(&i.new), OldRow::None, &mut changes);
                                    self.count_change(i.relation_id);
                                }
                                LogicalMessage::Update(u) => {
                                    self.mapper.change(u.relation_id, Some(&u.new), OldRow::of(u.old.as_ref()), &mut changes);
                                    self.count_change(u.relation_id);
                                }
                                LogicalMessage::Delete(d) => {
                                    self.mapper.change(d.relation_id, None, OldRow::of(Some(&d.old)), &mut changes);
                                    self.count_change(d.relation_id);
                                }
                                LogicalMessage::Truncate(t) => {
                                    self.mapper.truncate(&t.relation_ids, &mut changes);
                                }
                                LogicalMessage::Message(message) => {
                                    // DDL capture; a non-transactional message arrives outside
                                    // Begin..Commit and is published on its own (below).
                                    reaction = Some(self.on_message(&message));
                                }
                                LogicalMessage::Commit(c) => {
                                    let t = txn.take().unwrap_or_default();
                                    metrics::counter!(m::TRANSACTIONS_TOTAL).increment(1);
                                    if !t.items.is_empty() {
                                        let mut own = t.items;
                                        own.lsn = c.end_lsn.0;
                                        batch.extend_from(&own);
                                        self.batch_txns.push(TxnRecord { xid: t.xid, commit_lsn: c.commit_lsn, items: own });
                                        let now = Instant::now();
                                        batch_started.get_or_insert(now);
                                        if let Some(last) = last_commit {
                                            let gap = (now - last).min(Duration::from_secs(1));
                                            commit_gap = (commit_gap * 7 + gap) / 8;
                                        }
                                        last_commit = Some(now);
                                    }
                                    batch.lsn = c.end_lsn.0;
                                    batch.commit_time_micros = unix_micros(c.commit_time);
                                    if batch.is_empty() {
                                        // Nothing of ours: the position can be confirmed as
                                        // is, unless a flight is in the air (then it is when
                                        // the flight lands).
                                        if self.flight.is_none() {
                                            self.advance_confirmed(c.end_lsn);
                                        }
                                    } else if batch.len() >= cfg.batch_max_keys && self.flight.is_none() {
                                        self.launch(&mut batch, &mut batch_started, shutdown);
                                    }
                                }
                                _ => {}
                            }
                            record_since(&self.stages.decode, decoding);
                        }
                        ReplicationMessage::OversizedXLogData(o) => {
                            liveness.received(o.wal_end);
                            reaction = Some(self.on_oversized(&o));
                        }
                        ReplicationMessage::PrimaryKeepalive(k) => {
                            liveness.received(k.wal_end);
                            if txn.is_none() && batch.is_empty() {
                                if self.flight.is_none() {
                                    self.advance_confirmed(k.wal_end);
                                } else {
                                    // Confirmed when the flight lands.
                                    batch.lsn = batch.lsn.max(k.wal_end.0);
                                }
                            }
                            // Asked for, or the walsender is idle (it sends keepalives when it
                            // waits for WAL and the position reported is behind what it sent):
                            // report a position that moved now rather than at the next tick.
                            if k.reply_requested {
                                self.send_status(stream).await?;
                            } else {
                                self.report_moved(stream).await?;
                            }
                        }
                        _ => {}
                    }
                    if let Some(reaction) = reaction {
                        changes.extend(reaction.flushes);
                        if reaction.check_catalog {
                            // Outside a transaction (non-transactional): no xid to wait for.
                            match txn.as_ref() {
                                Some(t) => {
                                    check_after.insert(t.xid);
                                }
                                None => catalog_tick.reset_immediately(),
                            }
                        }
                    }
                    if !changes.is_empty() {
                        match txn.as_mut() {
                            Some(t) => {
                                for c in changes.drain(..) {
                                    t.add(c, cfg.large_transaction_keys);
                                }
                            }
                            // Outside Begin..Commit: a non-transactional message (a change
                            // cannot be, in pgoutput v1); never dropped.
                            None => {
                                batch.extend(changes.drain(..));
                                batch_started.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                }
                // The stream has nothing ready and nothing is in flight: launch now rather
                // than wait for the timer, unless commits come fast (LINGER). (Under a backlog,
                // events stay ready and batches fill up while the flight before them is in the
                // air, up to batch_max_keys or batch_max_delay.)
                () = std::future::ready(()), if !batch.is_empty() && self.flight.is_none() && !linger => {
                    self.launch(&mut batch, &mut batch_started, shutdown);
                }
            }
        }
    }
}

impl Streamer<'_> {
    /// Report the position now if it moved since the last status update and nothing is in
    /// flight (the landing reports it then), rather than at the next status tick: a position
    /// reported late holds WAL in the slot, and tells an observer of the slot that the daemon
    /// is behind when it is not.
    async fn report_moved(&mut self, stream: &mut ReplicationStream) -> Result<(), SessionError> {
        if self.flight.is_none() && self.reportable() > self.reported {
            self.send_status(stream).await?;
        }
        Ok(())
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// PostgreSQL time (µs since 2000-01-01) → µs since the Unix epoch.
pub(super) fn unix_micros(t: walcache_cdc::PgTimestamp) -> i64 {
    const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
    t.0.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

//! Whether the daemon may certify freshness: heartbeats, `/readyz`, lag.
//!
//! A heartbeat tells every subscriber "every change committed before my sample has been
//! invalidated" (DESIGN.md, "Caught up means caught up with the server"). The rule:
//!
//! - each heartbeat interval a task on the control session samples the server's
//!   `pg_current_wal_flush_lsn()` (F) at daemon time t, taken *before* the query is sent, so
//!   every commit acknowledged to its client before t ends at or below F;
//! - the received position R is the end of the last XLogData, or the position of the last
//!   keepalive (how far the walsender has decoded; it never stands in for F);
//! - a sample is *reached* once R ≥ F and everything received up to F is published;
//! - a heartbeat goes out when a sample at most one interval old is reached, once per sample;
//!   no fresh sample (the control session is slow or gone), no heartbeat.
//!
//! Lag in bytes is F − R for the newest sample; lag in seconds is the age of the oldest sample
//! not yet reached, on the daemon's clock only (0 when everything sampled is reached), so the
//! server's clock and any skew never enter it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use walcache_cdc::Lsn;

use walcache_cdc::client::ReplicationStream;
use walcache_protocol::HeartbeatDetails;

use super::{SessionError, Streamer};
use crate::metrics as m;

/// One reading of the server's WAL flush position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    /// `pg_current_wal_flush_lsn()`.
    pub(super) flush: Lsn,
    /// When the query was sent (before the server evaluated it).
    pub(super) taken: Instant,
}

/// What the sampler task reports.
pub(super) type SampleResult = Result<Sample, tokio_postgres::Error>;

/// Sample the server's flush position every `interval` on `control` until the receiver is
/// dropped. One query at a time: a slow server delays samples (and so heartbeats), it never
/// piles queries up.
pub(super) fn spawn_sampler(
    control: Arc<tokio_postgres::Client>,
    interval: Duration,
) -> (mpsc::Receiver<SampleResult>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let taken = Instant::now();
            let result = control
                .query_one(
                    "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8",
                    &[],
                )
                .await
                .map(|row| Sample {
                    flush: Lsn(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)),
                    taken,
                });
            let failed = result.is_err();
            if tx.send(result).await.is_err() || (failed && control.is_closed()) {
                return;
            }
        }
    });
    (rx, task)
}

/// The liveness state of one replication session.
#[derive(Debug)]
pub(super) struct Liveness {
    interval: Duration,
    /// Samples not yet reached, oldest first (their flush positions only grow).
    unreached: VecDeque<Sample>,
    /// The newest sample reached.
    last_reached: Option<Sample>,
    /// A heartbeat is owed for `last_reached`.
    heartbeat_owed: bool,
    /// R: the end of the last XLogData or the last keepalive's position.
    received: Lsn,
    /// F of the newest sample.
    newest_flush: Lsn,
    /// R when the previous sample arrived, and whether it moved since.
    received_at_sample: Lsn,
    progressed: bool,
    /// When the server was last asked to flush its WAL (see [`Liveness::wants_wal_flush`]).
    last_flush_request: Option<Instant>,
    catch_up: CatchUp,
}

/// How often, at most, the daemon asks the server to flush a partially written record.
const WAL_FLUSH_REQUEST_EVERY: Duration = Duration::from_secs(1);

impl Liveness {
    pub(super) fn new(interval: Duration) -> Self {
        Liveness {
            interval,
            unreached: VecDeque::new(),
            last_reached: None,
            heartbeat_owed: false,
            received: Lsn(0),
            newest_flush: Lsn(0),
            received_at_sample: Lsn(0),
            progressed: true,
            last_flush_request: None,
            catch_up: CatchUp::default(),
        }
    }

    /// R moved: the end of an XLogData, or a keepalive's position.
    pub(super) fn received(&mut self, lsn: Lsn) {
        self.received = self.received.max(lsn);
    }

    /// R: how far the stream has been received.
    pub(super) fn received_lsn(&self) -> Lsn {
        self.received
    }

    /// A new sample. Returns whether the walsender should be asked for a reply (R < F: a
    /// keepalive tells how far it has decoded, and an idle walsender sends none on its own).
    pub(super) fn sampled(&mut self, sample: Sample) -> bool {
        self.progressed = self.received > self.received_at_sample;
        self.received_at_sample = self.received;
        self.newest_flush = self.newest_flush.max(sample.flush);
        self.unreached.push_back(sample);
        self.newest_flush > self.received
    }

    /// Whether to ask the server to flush its WAL: the stream has stood still for a whole
    /// interval with nothing of ours in flight (`idle`) while a sample two intervals old is
    /// still ahead of it. The WAL writer flushes only whole pages, so a large record written
    /// by a transaction that is still open can be flushed up to a page boundary in its middle:
    /// the flush position then sits past the last record the walsender can decode, and stays
    /// there until something commits. On a database where nothing else commits, that would
    /// stop heartbeats for as long as the transaction stays open. At most once a second.
    pub(super) fn wants_wal_flush(&mut self, idle: bool) -> bool {
        let stuck = idle
            && !self.progressed
            && self
                .unreached
                .front()
                .is_some_and(|s| s.taken.elapsed() >= 2 * self.interval);
        if stuck
            && self
                .last_flush_request
                .is_none_or(|t| t.elapsed() >= WAL_FLUSH_REQUEST_EVERY)
        {
            self.last_flush_request = Some(Instant::now());
            return true;
        }
        false
    }

    /// Everything received up to `covered` is published: mark the samples it reaches.
    pub(super) fn reach(&mut self, covered: Lsn) {
        while let Some(s) = self.unreached.front() {
            if s.flush > covered {
                break;
            }
            self.last_reached = self.unreached.pop_front();
            self.heartbeat_owed = true;
        }
    }

    /// A heartbeat may go out now: a sample at most one interval old is reached and none
    /// went out for it yet.
    pub(super) fn heartbeat_due(&self) -> bool {
        self.heartbeat_owed && self.is_fresh()
    }

    /// The heartbeat for the newest reached sample went out.
    pub(super) fn heartbeat_sent(&mut self) {
        self.heartbeat_owed = false;
    }

    /// The newest reached sample is at most one interval old: what `/readyz` reports.
    pub(super) fn is_fresh(&self) -> bool {
        self.last_reached
            .is_some_and(|s| s.taken.elapsed() <= self.interval)
    }

    /// What `/readyz` reports when a sample arrives: the newest reached sample is at most one
    /// interval old, or every sample not yet reached is. A new sample that is not reached at
    /// once — the server wrote WAL since the walsender's last keepalive (a checkpoint, a
    /// standby snapshot record), so its reach waits for the reply to a keepalive request — is
    /// not lag: the newest reached sample is then always a little over one interval old, and
    /// `/readyz` would read "not caught up" for that round trip. A daemon that falls behind is
    /// not ready from the next sample on (its unreached samples age past the interval).
    pub(super) fn is_keeping_up(&self) -> bool {
        self.is_fresh()
            || self
                .unreached
                .front()
                .is_some_and(|s| s.taken.elapsed() <= self.interval)
    }

    /// F − R for the newest sample, in bytes.
    pub(super) fn lag_bytes(&self) -> u64 {
        self.newest_flush.0.saturating_sub(self.received.0)
    }

    /// The age of the oldest sample not yet reached (zero when all are).
    pub(super) fn lag(&self) -> Duration {
        self.unreached
            .front()
            .map_or(Duration::ZERO, |s| s.taken.elapsed())
    }

    /// Export the lag gauges and log catch-up progress.
    pub(super) fn report(&mut self, confirmed: Lsn) {
        let bytes = self.lag_bytes();
        metrics::gauge!(m::REPLICATION_LAG_BYTES).set(bytes as f64);
        metrics::gauge!(m::REPLICATION_LAG_SECONDS).set(self.lag().as_secs_f64());
        self.catch_up.report(bytes, confirmed);
    }
}

impl Streamer<'_> {
    /// A status update that asks the walsender for a keepalive (its decoded position).
    pub(super) async fn request_reply(
        &mut self,
        stream: &mut ReplicationStream,
    ) -> Result<(), SessionError> {
        self.status_update(stream, true).await
    }

    /// Make the server flush its WAL: a transaction that takes an xid commits, and a commit
    /// flushes everything before it (locally: `synchronous_commit = local`, so a configured
    /// synchronous standby cannot hold the control session). Costs one xid; see
    /// [`Liveness::wants_wal_flush`] for when it is needed.
    pub(super) async fn request_wal_flush(&self) {
        let result = self
            .control
            .batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = local; SELECT pg_current_xact_id(); COMMIT;",
            )
            .await;
        match result {
            Ok(()) => tracing::debug!("asked the server to flush a partially written WAL record"),
            Err(e) => {
                // A failed statement skips the rest of the query string, COMMIT included: end
                // the transaction, or every later query on the shared control session fails
                // ("current transaction is aborted") and heartbeats never come back.
                tracing::warn!(error = %e, "asking the server to flush its WAL failed");
                if let Err(e) = self.control.batch_execute("ROLLBACK").await {
                    tracing::warn!(error = %e, "ending the failed WAL flush transaction failed");
                }
            }
        }
    }

    /// Publish a heartbeat; `/readyz` follows whether it went out.
    /// The markers advance to the confirmed position: every publish before it has completed,
    /// visibility re-checks included.
    /// A namespace out of service (drift the daemon cannot repair) is not certified: it is
    /// listed apart, so that libraries bypass it rather than take it for one no rule covers.
    pub(super) async fn heartbeat(&mut self, lag_bytes: u64) {
        let out_of_service = self.watch.out_of_service(self.mapper.rules());
        let certified: Vec<String> = self
            .mapper
            .namespaces()
            .into_iter()
            .filter(|n| !out_of_service.contains(n))
            .collect();
        let details = HeartbeatDetails {
            lag_bytes,
            refresh_interval_ms: self.config.refresh.interval_secs.saturating_mul(1000),
            namespaces: certified.clone(),
            out_of_service: out_of_service.into_iter().collect(),
        };
        let confirmed = self.confirmed;
        match self.publisher().heartbeat(details, confirmed).await {
            Ok(published) => {
                if published {
                    self.status.set_certified(certified);
                }
                self.status.set_caught_up(published);
            }
            Err(e) => {
                self.status.set_caught_up(false);
                tracing::warn!(error = %e, "heartbeat failed");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                self.reconnect_redis().await;
            }
        }
    }
}

/// Logs catch-up progress while the daemon is far behind (after a restart, an outage or a
/// large transaction), at most every 10 s, and once when it has caught up.
#[derive(Debug, Default)]
struct CatchUp {
    behind_since: Option<(Instant, Lsn)>,
    last_log: Option<Instant>,
}

impl CatchUp {
    /// Lag above which the daemon counts as catching up (and says so).
    const BEHIND_BYTES: u64 = 16 * 1024 * 1024;
    const EVERY: Duration = Duration::from_secs(10);

    fn report(&mut self, lag: u64, confirmed: Lsn) {
        let now = Instant::now();
        match self.behind_since {
            None if lag >= Self::BEHIND_BYTES => {
                self.behind_since = Some((now, confirmed));
                self.last_log = Some(now);
                tracing::info!(behind_mib = lag / (1024 * 1024), "catching up with the WAL");
            }
            Some((since, from)) if lag < Self::BEHIND_BYTES => {
                let done_mib = confirmed.0.saturating_sub(from.0) / (1024 * 1024);
                tracing::info!(took = ?since.elapsed(), done_mib, "caught up with the WAL");
                *self = CatchUp::default();
            }
            Some((since, from)) if self.last_log.is_none_or(|t| now - t >= Self::EVERY) => {
                let done = confirmed.0.saturating_sub(from.0);
                let secs = since.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    behind_mib = lag / (1024 * 1024),
                    done_mib = done / (1024 * 1024),
                    mib_per_s = format!("{:.1}", done as f64 / secs / (1024.0 * 1024.0)),
                    "catching up with the WAL"
                );
                self.last_log = Some(now);
            }
            _ => {}
        }
    }
}

//! Shared daemon state for health checks and operators.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What `/healthz`, `/readyz` and `GET /api/v1/status` report.
#[derive(Debug, Default)]
pub struct Status {
    streaming: AtomicBool,
    caught_up: AtomicBool,
    confirmed_lsn: AtomicU64,
    published_seq: AtomicU64,
    /// Namespaces out of service, sorted (see [`Status::out_of_service`]).
    out_of_service: Mutex<Vec<String>>,
    /// The epoch of the messages published (0 until the publisher connected).
    epoch: AtomicU64,
    lag_bytes: AtomicU64,
    /// Lag in seconds, as the bits of an `f64`.
    lag_seconds: AtomicU64,
    /// The namespaces the last heartbeat certified, sorted.
    certified: Mutex<Vec<String>>,
    /// The Redis server written to: its `run_id` and version.
    redis: Mutex<Option<RedisIdentity>>,
}

/// The Redis server the daemon writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisIdentity {
    /// `run_id` from `INFO server`: a new one means a restart or a failover.
    pub run_id: String,
    /// `redis_version`, major and minor.
    pub version: (u32, u32),
}

impl Status {
    /// Connected to PostgreSQL and Redis and reading the stream.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }
    /// Streaming and caught up with the server: everything up to a sample of its WAL flush
    /// position at most one heartbeat interval old is published (heartbeats flowing).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }
    /// The namespaces out of service, sorted: drift the daemon cannot repair (a rule's table
    /// that cannot be published again, another consumer's publication that no longer publishes
    /// what a rule needs) means their changes are missed, so heartbeats do not certify them
    /// until it is fixed.
    pub fn out_of_service(&self) -> Vec<String> {
        self.out_of_service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Ready to serve: caught up, and no namespace out of service (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.is_caught_up()
            && self
                .out_of_service
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }
    /// The last LSN confirmed to PostgreSQL.
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed_lsn.load(Ordering::Acquire)
    }
    /// The sequence number of the last data message published in this epoch.
    pub fn published_seq(&self) -> u64 {
        self.published_seq.load(Ordering::Acquire)
    }
    /// The epoch of every message this run publishes (0 before the publisher connected).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    /// Replication lag: bytes of WAL the server has flushed that are not yet received and
    /// published, and the age in seconds of the oldest server position sample not yet reached
    /// (daemon's clock; 0 when caught up), as of the last report.
    pub fn lag(&self) -> (u64, f64) {
        (
            self.lag_bytes.load(Ordering::Acquire),
            f64::from_bits(self.lag_seconds.load(Ordering::Acquire)),
        )
    }
    /// The namespaces the last heartbeat certified, sorted (only while caught up: otherwise
    /// none are, whatever the last heartbeat said).
    pub fn certified(&self) -> Vec<String> {
        if !self.is_caught_up() {
            return Vec::new();
        }
        self.certified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// The Redis server written to, once known.
    pub fn redis(&self) -> Option<RedisIdentity> {
        self.redis.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }
    pub(crate) fn set_lag(&self, bytes: u64, seconds: f64) {
        self.lag_bytes.store(bytes, Ordering::Release);
        self.lag_seconds.store(seconds.to_bits(), Ordering::Release);
    }
    pub(crate) fn set_certified(&self, mut namespaces: Vec<String>) {
        namespaces.sort();
        *self.certified.lock().unwrap_or_else(|p| p.into_inner()) = namespaces;
    }
    pub(crate) fn set_redis(&self, identity: RedisIdentity) {
        *self.redis.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity);
    }
    pub(crate) fn set_streaming(&self, v: bool) {
        self.streaming.store(v, Ordering::Release);
        if !v {
            self.set_caught_up(false);
        }
    }
    pub(crate) fn set_caught_up(&self, v: bool) {
        if self.caught_up.swap(v, Ordering::AcqRel) != v {
            metrics::gauge!(crate::metrics::CAUGHT_UP).set(if v { 1.0 } else { 0.0 });
        }
    }
    pub(crate) fn set_out_of_service(&self, namespaces: Vec<String>) {
        *self
            .out_of_service
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = namespaces;
    }
    pub(crate) fn set_confirmed_lsn(&self, lsn: u64) {
        self.confirmed_lsn.store(lsn, Ordering::Release);
    }
    pub(crate) fn set_published_seq(&self, seq: u64) {
        self.published_seq.store(seq, Ordering::Release);
    }
}

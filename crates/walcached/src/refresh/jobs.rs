//! Refresh jobs: every full-refresh cycle the daemon runs, scheduled or asked for through the
//! admin API, as a record an operator can look up — and the rules for asking.
//!
//! One cycle at a time: [`run_schedule`](super::run_schedule) runs both kinds, so a manual
//! cycle never overlaps a scheduled one, and a completed manual cycle moves the schedule on
//! like any other. A request ([`RefreshJobs::request`]) is answered in this order:
//!
//! 1. the same `Idempotency-Key` from the same caller within [`IDEMPOTENCY_WINDOW`] returns
//!    the job it created, whatever its state ([`Requested::Replayed`]); with another body it is
//!    refused ([`Refused::KeyReused`]);
//! 2. while any cycle is queued or running, a new request is refused with that job
//!    ([`Refused::Running`]);
//! 3. within `min_interval` of the last manual cycle accepted, it is refused with the time to
//!    wait ([`Refused::RateLimited`]);
//! 4. otherwise a job is queued and the schedule task woken.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::Notify;
use utoipa::ToSchema;

use super::CycleReport;

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long a finished job can be looked up.
const RETENTION: Duration = IDEMPOTENCY_WINDOW;
/// Most jobs remembered (a cycle a minute for a day is 1440): the oldest finished go first.
const MAX_JOBS: usize = 2048;
/// Most idempotency keys remembered: the oldest go first.
const MAX_KEYS: usize = 4096;

/// A job's identifier: 16 hex digits.
pub type JobId = String;

/// What started a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `refresh.interval_secs` came round.
    Schedule,
    /// `POST /api/v1/refresh`.
    Manual,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted; the cycle starts as soon as the schedule task takes it (at once when idle).
    Queued,
    /// The cycle is running.
    Running,
    /// The cycle completed: nothing stamped before its start survives in L2.
    Succeeded,
    /// The cycle stopped at a Redis error or at shutdown (incomplete: run another).
    Failed,
}

/// What a completed cycle did.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct JobReport {
    /// Namespaces walked.
    pub namespaces: usize,
    /// Value keys examined.
    pub keys_scanned: u64,
    /// Keys deleted (stamped at or before the cycle's start, or not envelopes).
    pub keys_deleted: u64,
    /// Tag versions pruned after the cycle.
    pub tag_versions_pruned: u64,
    /// The cycle's start, ms since the Unix epoch on the Redis server's clock.
    pub started_at_redis_ms: u64,
    /// How long the cycle took, in seconds.
    pub seconds: f64,
}

impl From<&CycleReport> for JobReport {
    fn from(r: &CycleReport) -> Self {
        JobReport {
            namespaces: r.namespaces,
            keys_scanned: r.keys_scanned,
            keys_deleted: r.keys_deleted,
            tag_versions_pruned: r.tag_versions_pruned,
            started_at_redis_ms: r.started_at_ms,
            seconds: r.elapsed.as_secs_f64(),
        }
    }
}

/// One full-refresh cycle, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Job {
    /// The job's identifier (`GET /api/v1/refresh/{id}`).
    pub id: JobId,
    /// What started it.
    pub trigger: Trigger,
    /// Where it stands.
    pub state: JobState,
    /// Who asked (a token fingerprint; absent for scheduled cycles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The reason given with the request, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was created, ms since the Unix epoch on the daemon's clock.
    pub created_at_ms: u64,
    /// When its cycle started (daemon's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// When its cycle ended (daemon's clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// What the cycle did, once it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<JobReport>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Job {
    /// The job is done (succeeded or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Succeeded | JobState::Failed)
    }
}

/// A request accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// A new job, queued.
    Created(Job),
    /// The job an earlier request with the same idempotency key created.
    Replayed(Job),
}

/// A request refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The idempotency key was used with another body.
    #[error("the idempotency key was used with a different request body")]
    KeyReused,
    /// A cycle is queued or running: this job.
    #[error("a refresh cycle is already running: job {0}")]
    Running(JobId),
    /// Too soon after the last manual cycle: try again after this long.
    #[error("at most one manual refresh cycle per interval: retry in {0:?}")]
    RateLimited(Duration),
}

/// A manual request: who, the key (if any), and a digest of the request body.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who asks (a token fingerprint, or `anonymous`): keys are per caller.
    pub who: &'a str,
    /// The `Idempotency-Key`, if sent.
    pub idempotency_key: Option<&'a str>,
    /// A digest of the request body, canonicalised: the same key with another is refused.
    pub body_digest: [u8; 32],
    /// The reason given, recorded in the job.
    pub reason: Option<String>,
}

#[derive(Debug)]
struct Remembered {
    body_digest: [u8; 32],
    job: JobId,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Oldest first.
    jobs: VecDeque<(Instant, Job)>,
    /// The job queued or running.
    current: Option<JobId>,
    last_manual: Option<Instant>,
    keys: HashMap<(String, String), Remembered>,
}

impl Inner {
    fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs
            .iter_mut()
            .rev()
            .map(|(_, j)| j)
            .find(|j| j.id == id)
    }

    fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().rev().map(|(_, j)| j).find(|j| j.id == id)
    }

    fn expire(&mut self, now: Instant) {
        self.keys
            .retain(|_, r| now.duration_since(r.at) < IDEMPOTENCY_WINDOW);
        while self.keys.len() > MAX_KEYS {
            let Some(oldest) = self
                .keys
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.keys.remove(&oldest);
        }
        let current = self.current.clone();
        let mut kept = VecDeque::with_capacity(self.jobs.len());
        let excess = self.jobs.len().saturating_sub(MAX_JOBS);
        let mut dropped = 0;
        for (at, job) in self.jobs.drain(..) {
            let is_current = current.as_deref() == Some(job.id.as_str());
            let old = now.duration_since(at) >= RETENTION;
            if !is_current && (old || dropped < excess) {
                dropped += 1;
                continue;
            }
            kept.push_back((at, job));
        }
        self.jobs = kept;
    }

    fn push(&mut self, now: Instant, job: Job) {
        self.current = Some(job.id.clone());
        self.jobs.push_back((now, job));
    }
}

/// Every cycle's record, the idempotency keys and the manual rate limit; shared by the admin
/// API and the schedule task.
#[derive(Debug)]
pub struct RefreshJobs {
    inner: Mutex<Inner>,
    wake: Notify,
    min_interval: Duration,
}

impl RefreshJobs {
    /// Accept a manual cycle at most once per `min_interval` (zero: no limit).
    pub fn new(min_interval: Duration) -> Self {
        RefreshJobs {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            min_interval,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask for a manual cycle (see the module docs for the order of the answers).
    ///
    /// # Errors
    ///
    /// [`Refused`]: the key was reused with another body, a cycle runs, or too soon.
    pub fn request(&self, req: &Request<'_>) -> Result<Requested, Refused> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        let key = req
            .idempotency_key
            .map(|k| (req.who.to_owned(), k.to_owned()));
        if let Some(key) = &key {
            if let Some(r) = inner.keys.get(key) {
                if r.body_digest != req.body_digest {
                    return Err(Refused::KeyReused);
                }
                let id = r.job.clone();
                if let Some(job) = inner.job(&id) {
                    return Ok(Requested::Replayed(job.clone()));
                }
                // The job itself was forgotten (more than MAX_JOBS since): a new one.
                inner.keys.remove(key);
            }
        }
        if let Some(id) = &inner.current {
            return Err(Refused::Running(id.clone()));
        }
        if let Some(last) = inner.last_manual {
            let since = now.duration_since(last);
            if since < self.min_interval {
                return Err(Refused::RateLimited(self.min_interval - since));
            }
        }
        let job = new_job(
            Trigger::Manual,
            Some(req.who.to_owned()),
            req.reason.clone(),
        );
        inner.last_manual = Some(now);
        if let Some(key) = key {
            inner.keys.insert(
                key,
                Remembered {
                    body_digest: req.body_digest,
                    job: job.id.clone(),
                    at: now,
                },
            );
        }
        inner.push(now, job.clone());
        drop(inner);
        self.wake.notify_one();
        Ok(Requested::Created(job))
    }

    /// The job `id`, if remembered.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.lock().job(id).cloned()
    }

    /// The job queued or running, if any.
    pub fn current(&self) -> Option<Job> {
        let inner = self.lock();
        inner
            .current
            .as_deref()
            .and_then(|id| inner.job(id))
            .cloned()
    }

    /// The last job finished, if any.
    pub fn last_finished(&self) -> Option<Job> {
        self.lock()
            .jobs
            .iter()
            .rev()
            .map(|(_, j)| j)
            .find(|j| j.is_finished())
            .cloned()
    }

    /// Resolves when a manual job was queued (a permit is kept if nobody waits yet).
    pub(super) async fn queued(&self) {
        self.wake.notified().await;
    }

    /// Start the queued manual job, if there is one: its id.
    pub(super) fn start_queued(&self) -> Option<JobId> {
        let mut inner = self.lock();
        let id = inner.current.clone()?;
        let job = inner.job_mut(&id)?;
        (job.state == JobState::Queued).then(|| {
            job.state = JobState::Running;
            job.started_at_ms = Some(unix_ms());
            id
        })
    }

    /// Start a scheduled job, unless another is queued or running.
    pub(super) fn start_scheduled(&self) -> Option<JobId> {
        let mut inner = self.lock();
        if inner.current.is_some() {
            return None;
        }
        let mut job = new_job(Trigger::Schedule, None, None);
        job.state = JobState::Running;
        job.started_at_ms = Some(job.created_at_ms);
        let id = job.id.clone();
        let now = Instant::now();
        inner.expire(now);
        inner.push(now, job);
        Some(id)
    }

    /// The job `id` ended with `outcome`.
    pub(super) fn finish(&self, id: &str, outcome: Result<&CycleReport, String>) {
        let mut inner = self.lock();
        if inner.current.as_deref() == Some(id) {
            inner.current = None;
        }
        if let Some(job) = inner.job_mut(id) {
            job.finished_at_ms = Some(unix_ms());
            match outcome {
                Ok(report) => {
                    job.state = JobState::Succeeded;
                    job.report = Some(report.into());
                }
                Err(e) => {
                    job.state = JobState::Failed;
                    job.error = Some(e);
                }
            }
        }
    }
}

fn new_job(trigger: Trigger, requested_by: Option<String>, reason: Option<String>) -> Job {
    Job {
        id: format!("{:016x}", rand::random::<u64>()),
        trigger,
        state: JobState::Queued,
        requested_by,
        reason,
        created_at_ms: unix_ms(),
        started_at_ms: None,
        finished_at_ms: None,
        report: None,
        error: None,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(key: Option<&'a str>, body: u8) -> Request<'a> {
        Request {
            who: "token:abc",
            idempotency_key: key,
            body_digest: [body; 32],
            reason: None,
        }
    }

    fn report() -> CycleReport {
        CycleReport {
            namespaces: 1,
            keys_scanned: 2,
            keys_deleted: 1,
            tag_versions_pruned: 0,
            started_at_micros: 5_000,
            started_at_ms: 5,
            elapsed: Duration::from_millis(3),
        }
    }

    #[test]
    fn the_same_key_gives_the_same_job_and_another_body_is_refused() {
        let jobs = RefreshJobs::new(Duration::from_secs(300));
        let Ok(Requested::Created(first)) = jobs.request(&req(Some("k1"), 1)) else {
            panic!("created");
        };
        assert_eq!(first.state, JobState::Queued);
        assert_eq!(
            jobs.request(&req(Some("k1"), 1)),
            Ok(Requested::Replayed(first.clone()))
        );
        assert_eq!(jobs.request(&req(Some("k1"), 2)), Err(Refused::KeyReused));
        // Another caller's key of the same name is another key.
        let other = Request {
            who: "token:def",
            ..req(Some("k1"), 2)
        };
        assert_eq!(
            jobs.request(&other),
            Err(Refused::Running(first.id.clone()))
        );
        assert_eq!(
            jobs.request(&req(None, 1)),
            Err(Refused::Running(first.id.clone()))
        );
        assert_eq!(jobs.start_queued(), Some(first.id.clone()));
        assert_eq!(jobs.get(&first.id).unwrap().state, JobState::Running);
        jobs.finish(&first.id, Ok(&report()));
        let done = jobs.get(&first.id).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.report.as_ref().unwrap().keys_deleted, 1);
        // Still the same job once finished; a new key is rate-limited.
        assert_eq!(
            jobs.request(&req(Some("k1"), 1)),
            Ok(Requested::Replayed(done))
        );
        match jobs.request(&req(Some("k2"), 1)) {
            Err(Refused::RateLimited(d)) => assert!(d <= Duration::from_secs(300)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scheduled_cycles_are_jobs_and_block_manual_ones() {
        let jobs = RefreshJobs::new(Duration::ZERO);
        let id = jobs.start_scheduled().expect("idle");
        assert_eq!(jobs.start_scheduled(), None, "one at a time");
        assert_eq!(jobs.start_queued(), None, "nothing queued");
        assert_eq!(
            jobs.request(&req(None, 1)),
            Err(Refused::Running(id.clone()))
        );
        jobs.finish(&id, Err("redis: gone".to_owned()));
        let failed = jobs.get(&id).unwrap();
        assert_eq!(
            (failed.state, failed.trigger),
            (JobState::Failed, Trigger::Schedule)
        );
        assert_eq!(jobs.last_finished().unwrap().id, id);
        assert!(matches!(
            jobs.request(&req(None, 1)),
            Ok(Requested::Created(_))
        ));
        assert_eq!(jobs.start_scheduled(), None, "a manual job is queued");
        assert!(jobs.start_queued().is_some());
    }
}

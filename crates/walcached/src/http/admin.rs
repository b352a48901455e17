//! The admin API, `/api/v1/`: status, full-refresh jobs, namespace flushes.
//!
//! Every change it makes goes the daemon's own way: a refresh is a job of the schedule task
//! (one cycle at a time), a flush is published by the stream loop on the sequenced channel.
//! Every action writes an audit line (target `walcached::audit`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use walcache_cdc::Lsn;

use super::auth::{audit, AdminToken, Operator, Reader};
use super::problem::{json, kind, Problem, PROBLEM_JSON};
use super::AppState;
use crate::config::{redact_url, Config};
use crate::pipeline::{FlushError, FlushSender};
use crate::refresh::jobs::{Job, Refused, Request, Requested};
use crate::refresh::{RefreshJobs, RefreshProgress};

/// How long a flush request waits for the stream loop to publish it.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);
/// `Retry-After` when the daemon cannot flush now.
const FLUSH_RETRY_SECS: u64 = 5;
/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;
/// Longest refresh `reason` accepted.
const MAX_REASON_LEN: usize = 200;

/// What the admin API needs besides the shared [`Status`](crate::status::Status).
#[derive(Debug)]
pub struct Admin {
    pub(super) token: Option<AdminToken>,
    jobs: Arc<RefreshJobs>,
    progress: Arc<RefreshProgress>,
    flush: Option<FlushSender>,
    rules: Vec<RuleView>,
    /// Every namespace the rules write to (their own and their `tag_namespaces`).
    namespaces: Vec<String>,
    slot: String,
    publication: String,
    redis_url: String,
    refresh_interval_secs: u64,
    manual_refresh_min_interval_secs: u64,
}

impl Admin {
    /// The admin API of a daemon running `config`, its refresh `jobs` and `progress`, and its
    /// pipeline's flush requests (`None`: flushes answer 503).
    pub fn new(
        config: &Config,
        jobs: Arc<RefreshJobs>,
        progress: Arc<RefreshProgress>,
        flush: Option<FlushSender>,
    ) -> Self {
        let mut namespaces = crate::marker::targets(&config.rules);
        namespaces.sort();
        Admin {
            token: config.http.admin_token.as_ref().map(AdminToken::new),
            jobs,
            progress,
            flush,
            rules: config
                .rules
                .iter()
                .map(|r| {
                    let (schema, table) = r.qualified_table();
                    RuleView {
                        table: format!("{schema}.{table}"),
                        namespace: r.namespace.clone(),
                        keys: r.keys.clone(),
                        tags: r.tags.clone(),
                        tag_namespaces: r.tag_namespaces.clone(),
                    }
                })
                .collect(),
            namespaces,
            slot: config.postgres.slot.clone(),
            publication: config.postgres.publication.clone(),
            redis_url: redact_url(config.redis.url.expose()),
            refresh_interval_secs: config.refresh.interval_secs,
            manual_refresh_min_interval_secs: config.http.manual_refresh_min_interval_secs,
        }
    }

    /// An admin token is configured (the mutating endpoints are enabled).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// The daemon's state, as `GET /api/v1/status` reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// Connected to PostgreSQL and Redis and reading the stream.
    pub streaming: bool,
    /// Everything the server had flushed at a sample at most one heartbeat interval old is
    /// published: heartbeats flow.
    pub caught_up: bool,
    /// Caught up and no namespace out of service (what `/readyz` reports).
    pub ready: bool,
    /// The epoch of this run's messages, in decimal (a string: it is 64 bits wide); `"0"`
    /// before the publisher connected.
    pub epoch: String,
    /// The sequence number of the last data message published in this epoch.
    pub published_seq: u64,
    /// Replication lag as of the last report.
    pub lag: LagView,
    /// The replication slot.
    pub slot: SlotView,
    /// Every namespace the rules write to, with its state.
    pub namespaces: Vec<NamespaceView>,
    /// The rules, as configured.
    pub rules: Vec<RuleView>,
    /// The full refresh.
    pub refresh: RefreshView,
    /// The Redis written to.
    pub redis: RedisView,
}

/// Replication lag.
#[derive(Debug, Serialize, ToSchema)]
pub struct LagView {
    /// WAL the server has flushed that is not yet received and published, in bytes.
    pub bytes: u64,
    /// Age of the oldest server position sample not yet reached (the daemon's clock; 0 when
    /// caught up), in seconds.
    pub seconds: f64,
}

/// The replication slot.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotView {
    /// `postgres.slot`.
    pub name: String,
    /// `postgres.publication`.
    pub publication: String,
    /// The last position confirmed to PostgreSQL (`X/Y`).
    pub confirmed_lsn: String,
}

/// One namespace.
#[derive(Debug, Serialize, ToSchema)]
pub struct NamespaceView {
    /// The namespace.
    pub name: String,
    /// The tables whose rules write to it (their own namespace, or a tag namespace).
    pub tables: Vec<String>,
    /// Not out of service (catalog drift the daemon cannot repair takes it out).
    pub in_service: bool,
    /// The last heartbeat certified it, and the daemon is still caught up.
    pub certified: bool,
}

/// One rule.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleView {
    /// `schema.table`.
    pub table: String,
    /// Its namespace.
    pub namespace: String,
    /// Key templates.
    pub keys: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Other namespaces its tags are bumped in.
    pub tag_namespaces: Vec<String>,
}

/// The full refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefreshView {
    /// `refresh.interval_secs` (0: no schedule).
    pub interval_secs: u64,
    /// `http.manual_refresh_min_interval_secs` (0: no limit).
    pub manual_min_interval_secs: u64,
    /// A cycle is running.
    pub in_progress: bool,
    /// Cycles completed since the daemon started.
    pub cycles_completed: u64,
    /// Start of the last cycle begun, ms since the Unix epoch on the Redis server's clock
    /// (0: none yet).
    pub last_cycle_start_ms: u64,
    /// End of the last cycle completed, same clock (0: none yet).
    pub last_cycle_end_ms: u64,
    /// The job queued or running, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_job: Option<Job>,
    /// The last job finished, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_job: Option<Job>,
}

/// The Redis written to.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedisView {
    /// `redis.url`, without its password.
    pub url: String,
    /// Its `run_id` (absent before the first connection): a new one is a restart or failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Its version, `major.minor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The body of `POST /api/v1/refresh` (optional: an empty body is `{}`).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// Why, recorded in the job and the audit line (at most 200 characters; no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A namespace flush published.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlushBody {
    /// The namespace flushed: its generation moved, and every subscriber heard of it.
    pub namespace: String,
    /// The epoch of the message that carried it (decimal string).
    pub epoch: String,
    /// The sequence number of that message.
    pub seq: u64,
}

fn admin(state: &AppState) -> Result<&Admin, Box<Problem>> {
    state.admin.as_deref().ok_or_else(|| {
        Box::new(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no admin API (started without one)",
        ))
    })
}

/// The daemon's state: streaming, lag, slot, epoch, namespaces, refresh, Redis.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "admin",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The daemon's state", body = StatusBody),
        (status = 401, description = "A token is configured and was not presented", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(super) async fn status(State(state): State<AppState>, _caller: Reader) -> Response {
    let admin = match admin(&state) {
        Ok(a) => a,
        Err(problem) => return problem.into_response(),
    };
    let s = &state.status;
    let out: BTreeSet<String> = s.out_of_service().into_iter().collect();
    let certified: BTreeSet<String> = s.certified().into_iter().collect();
    let namespaces = admin
        .namespaces
        .iter()
        .map(|ns| NamespaceView {
            name: ns.clone(),
            tables: admin
                .rules
                .iter()
                .filter(|r| {
                    r.namespace == *ns || (!r.tags.is_empty() && r.tag_namespaces.contains(ns))
                })
                .map(|r| r.table.clone())
                .collect(),
            in_service: !out.contains(ns),
            certified: certified.contains(ns),
        })
        .collect();
    let (lag_bytes, lag_seconds) = s.lag();
    let redis = s.redis();
    let p = &admin.progress;
    let body = StatusBody {
        streaming: s.is_streaming(),
        caught_up: s.is_caught_up(),
        ready: s.is_ready(),
        epoch: s.epoch().to_string(),
        published_seq: s.published_seq(),
        lag: LagView {
            bytes: lag_bytes,
            seconds: lag_seconds,
        },
        slot: SlotView {
            name: admin.slot.clone(),
            publication: admin.publication.clone(),
            confirmed_lsn: Lsn(s.confirmed_lsn()).to_string(),
        },
        namespaces,
        rules: admin.rules.clone(),
        refresh: RefreshView {
            interval_secs: admin.refresh_interval_secs,
            manual_min_interval_secs: admin.manual_refresh_min_interval_secs,
            in_progress: p.in_progress(),
            cycles_completed: p.cycles_completed(),
            last_cycle_start_ms: p.last_cycle_start_ms(),
            last_cycle_end_ms: p.last_cycle_end_ms(),
            current_job: admin.jobs.current(),
            last_job: admin.jobs.last_finished(),
        },
        redis: RedisView {
            url: admin.redis_url.clone(),
            run_id: redis.as_ref().map(|r| r.run_id.clone()),
            version: redis.map(|r| format!("{}.{}", r.version.0, r.version.1)),
        },
    };
    json(StatusCode::OK, &body)
}

fn job_location(id: &str) -> String {
    format!("/api/v1/refresh/{id}")
}

/// Start a full-refresh cycle (a job; see `GET /api/v1/refresh/{id}`).
///
/// The same `Idempotency-Key` from the same token within 24 hours returns the same job (202),
/// even while it runs; with another body it is refused (422). While any cycle (scheduled or
/// manual) is queued or running, a new request is refused (409, `Location` of that job). At
/// most one manual cycle per `http.manual_refresh_min_interval_secs` (default 300): 429 with
/// `Retry-After`.
#[utoipa::path(
    post,
    path = "/api/v1/refresh",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to retry: the same key (per token, 24 hours) returns the same job. 1 to 255 visible ASCII characters."),
    ),
    request_body(content = Option<RefreshRequest>, description = "Optional; an empty body is `{}`", content_type = "application/json"),
    responses(
        (status = 202, description = "The job, queued or (for a repeated key) in whatever state it is", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, description = "The body or the key is malformed", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "No token, or a wrong one", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "No admin token is configured: disabled", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "A cycle is queued or running", body = Problem, content_type = PROBLEM_JSON,
            headers(("Location" = String, description = "The running job's URL"))),
        (status = 422, description = "The key was used with another body", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Too soon after the last manual cycle", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(super) async fn start_refresh(
    State(state): State<AppState>,
    Operator(caller): Operator,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const ACTION: &str = "refresh";
    let admin = match admin(&state) {
        Ok(a) => a,
        Err(problem) => return problem.into_response(),
    };
    let refuse = |result: &str, problem: Problem| {
        audit(&caller, ACTION, result, &problem.detail);
        problem.into_response()
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if valid_key(k) => Some(k),
        Some(_) => {
            return refuse(
                "bad_request",
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Idempotency-Key: use 1 to {MAX_KEY_LEN} visible ASCII characters, e.g. \
                         a UUID"
                    ),
                ),
            )
        }
    };
    let request: RefreshRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return refuse(
                    "bad_request",
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not a refresh request ({e}): send {{}} or {{\"reason\": \"...\"}}"),
                    ),
                )
            }
        }
    };
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
    {
        return refuse(
            "bad_request",
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("reason: at most {MAX_REASON_LEN} characters"),
            ),
        );
    }
    let canonical = serde_json::to_vec(&request).unwrap_or_default();
    let asked = admin.jobs.request(&Request {
        who: &caller.who,
        idempotency_key: key,
        body_digest: Sha256::digest(&canonical).into(),
        reason: request.reason.clone(),
    });
    match asked {
        Ok(requested) => {
            let (job, result) = match requested {
                Requested::Created(job) => (job, "accepted"),
                Requested::Replayed(job) => (job, "replayed"),
            };
            let detail = match &job.reason {
                Some(reason) => format!("job {} ({reason:?})", job.id),
                None => format!("job {}", job.id),
            };
            audit(&caller, ACTION, result, &detail);
            let mut response = json(StatusCode::ACCEPTED, &job);
            if let Ok(v) = job_location(&job.id).parse() {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
        }
        Err(Refused::KeyReused) => refuse(
            "refused_key_reused",
            Problem::of_kind(
                StatusCode::UNPROCESSABLE_ENTITY,
                kind::KEY_REUSED,
                "Idempotency key reused",
                "this Idempotency-Key was used with a different body: use a new key for a new \
                 request",
            ),
        ),
        Err(Refused::Running(id)) => refuse(
            "refused_running",
            Problem::of_kind(
                StatusCode::CONFLICT,
                kind::REFRESH_RUNNING,
                "Refresh already running",
                format!("a refresh cycle is already queued or running: job {id}"),
            )
            .job(&id)
            .header(header::LOCATION, &job_location(&id)),
        ),
        Err(Refused::RateLimited(wait)) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            refuse(
                "refused_rate_limited",
                Problem::of_kind(
                    StatusCode::TOO_MANY_REQUESTS,
                    kind::RATE_LIMITED,
                    "Too many refresh cycles",
                    format!(
                        "at most one manual refresh cycle per {} seconds \
                         (http.manual_refresh_min_interval_secs): retry in {secs} seconds",
                        admin.manual_refresh_min_interval_secs
                    ),
                )
                .config_field("http.manual_refresh_min_interval_secs")
                .retry_after(secs),
            )
        }
    }
}

fn valid_key(k: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic())
}

/// A refresh job: scheduled or manual, queued, running or finished (kept 24 hours).
#[utoipa::path(
    get,
    path = "/api/v1/refresh/{id}",
    tag = "admin",
    security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "A token is configured and was not presented", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such job (or forgotten: jobs are kept 24 hours)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(super) async fn refresh_job(
    State(state): State<AppState>,
    _caller: Reader,
    Path(id): Path<String>,
) -> Response {
    let admin = match admin(&state) {
        Ok(a) => a,
        Err(problem) => return problem.into_response(),
    };
    match admin.jobs.get(&id) {
        Some(job) => json(StatusCode::OK, &job),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "no such refresh job (jobs are kept 24 hours)",
        )
        .into_response(),
    }
}

/// Flush a namespace: its generation moves (every value in it is gone from L2 at once), and
/// the flush is published on the sequenced invalidation channel, so every service's L1 drops
/// it too. Only while the daemon streams.
#[utoipa::path(
    post,
    path = "/api/v1/namespaces/{ns}/flush",
    tag = "admin",
    security(("bearer" = [])),
    params(("ns" = String, Path, description = "A namespace the rules write to")),
    responses(
        (status = 200, description = "Published", body = FlushBody),
        (status = 401, description = "No token, or a wrong one", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "No admin token is configured: disabled", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No rule writes to this namespace", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "Not streaming (or busy): nothing was published; retry", body = Problem, content_type = PROBLEM_JSON,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(super) async fn flush_namespace(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(ns): Path<String>,
) -> Response {
    let admin = match admin(&state) {
        Ok(a) => a,
        Err(problem) => return problem.into_response(),
    };
    let action = format!("flush {ns:?}");
    let refuse = |result: &str, problem: Problem| {
        audit(&caller, &action, result, &problem.detail);
        problem.into_response()
    };
    if !admin.namespaces.contains(&ns) {
        return refuse(
            "not_found",
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no rule writes to namespace {ns:?}; the namespaces are: {}",
                    admin.namespaces.join(", ")
                ),
            ),
        );
    }
    let Some(flush) = &admin.flush else {
        return refuse(
            "unavailable",
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this server cannot flush (started without a pipeline)",
            ),
        );
    };
    if !state.status.is_streaming() {
        return refuse(
            "unavailable",
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not streaming (connecting to PostgreSQL or Redis, or waiting as a standby): \
                 only a streaming daemon publishes flushes; retry",
            )
            .retry_after(FLUSH_RETRY_SECS),
        );
    }
    match flush.flush(&ns, FLUSH_DEADLINE).await {
        Ok(done) => {
            audit(&caller, &action, "flushed", &format!("seq {}", done.seq));
            json(
                StatusCode::OK,
                &FlushBody {
                    namespace: ns.clone(),
                    epoch: done.epoch.to_string(),
                    seq: done.seq,
                },
            )
        }
        Err(e @ (FlushError::NotPublished(_) | FlushError::Stopped)) => refuse(
            "unavailable",
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}: retry"))
                .retry_after(FLUSH_RETRY_SECS),
        ),
    }
}

//! The whole daemon, as `walcached run` starts it: the pipeline, the full-refresh schedule and
//! the HTTP endpoint with its admin API, wired together (the refresh jobs the API queues run
//! on the schedule task; the flushes it asks for are published by the pipeline).
//!
//! Every task logs to the subscriber current when [`run`] is called, so a test that runs a
//! daemon under a subscriber of its own reads that daemon's lines alone.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::instrument::WithSubscriber;

use crate::config::Config;
use crate::http::{self, Admin};
use crate::pipeline::{self, flush_channel, RunError, RunOptions};
use crate::refresh::{self, RefreshJobs, RefreshProgress};
use crate::status::Status;

/// The HTTP endpoint: a bound listener (`http.listen`) and the metrics to serve.
#[derive(Debug)]
pub struct Endpoint {
    /// Bound to `http.listen`.
    pub listener: TcpListener,
    /// What `/metrics` renders.
    pub metrics: PrometheusHandle,
}

/// Run the daemon until `shutdown` is cancelled (or the pipeline fails): the pipeline
/// ([`pipeline::run_with`], with `options`), the full-refresh schedule, and, with an
/// `endpoint`, the HTTP endpoint and admin API. The schedule and the endpoint stop when the
/// pipeline returns.
///
/// # Errors
///
/// As [`pipeline::run_with`].
pub async fn run(
    config: Config,
    endpoint: Option<Endpoint>,
    status: Arc<Status>,
    shutdown: CancellationToken,
    mut options: RunOptions,
) -> Result<(), RunError> {
    let redis = crate::connect::redis_client(&config)?;
    let namespaces = {
        let mut n = crate::marker::targets(&config.rules);
        n.sort();
        n
    };
    let jobs = Arc::new(RefreshJobs::new(config.http.manual_refresh_min_interval()));
    let progress = Arc::new(RefreshProgress::default());
    let (flushes, flush_requests) = flush_channel();
    options.flush_requests = Some(flush_requests);

    let tasks = TaskTracker::new();
    let stop = shutdown.child_token();
    if let Some(endpoint) = endpoint {
        let admin = Admin::new(
            &config,
            Arc::clone(&jobs),
            Arc::clone(&progress),
            Some(flushes),
        );
        http::warn_plain_http_token(&config.http.listen, &admin);
        if !admin.has_token() {
            tracing::info!(
                "no admin token (http.admin_token_file): the admin API's mutating endpoints are \
                 disabled"
            );
        }
        let app = http::app(endpoint.metrics, Arc::clone(&status), Some(Arc::new(admin)));
        let token = stop.clone();
        tasks.spawn(
            async move {
                if let Err(e) = http::serve_app(endpoint.listener, app, token).await {
                    tracing::error!(error = %e, "the HTTP endpoint failed");
                }
            }
            .with_current_subscriber(),
        );
    }
    tasks.spawn(
        refresh::run_schedule(
            redis,
            config.naming(),
            namespaces,
            config.refresh.clone(),
            progress,
            jobs,
            stop.clone(),
        )
        .with_current_subscriber(),
    );
    let result = pipeline::run_with(config, shutdown, status, options).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    result
}

//! The operator endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (the process is up)
//! and `GET /readyz` (streaming and caught up, so heartbeats are flowing, and no namespace out
//! of service).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::status::Status;

/// The Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AppState {
    handle: PrometheusHandle,
    status: Arc<Status>,
}

/// The routes, without a listener (for [`serve`] and for tests).
pub fn router(handle: PrometheusHandle, status: Arc<Status>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { handle, status })
}

/// Bind `listen` and serve until `shutdown` is cancelled; requests in flight then finish.
///
/// # Errors
///
/// Binding `listen` fails (address in use, not an address): the caller reports it as a
/// `http.listen` configuration error. Errors while serving are I/O errors too.
pub async fn serve(
    listen: &str,
    handle: PrometheusHandle,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    let listener = bind(listen).await?;
    serve_on(listener, handle, status, shutdown).await
}

/// Bind `listen` (`host:port`).
///
/// # Errors
///
/// The address does not resolve or cannot be bound.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serve on an already bound listener until `shutdown` is cancelled.
///
/// # Errors
///
/// I/O errors while serving.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    status: Arc<Status>,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(handle, status))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.handle.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let out_of_service = state.status.out_of_service();
    if !state.status.is_streaming() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not streaming: connecting to PostgreSQL or Redis\n".to_owned(),
        )
    } else if !state.status.is_caught_up() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "streaming but not caught up with the server's WAL position: heartbeats paused\n"
                .to_owned(),
        )
    } else if !out_of_service.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "namespaces out of service (catalog drift walcached cannot repair: its \
                 changes are missed, so heartbeats do not certify it; see the log and \
                 `walcached check`): {}\n",
                out_of_service.join(", ")
            ),
        )
    } else {
        (StatusCode::OK, "ready\n".to_owned())
    }
}

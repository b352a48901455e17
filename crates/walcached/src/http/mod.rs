//! The operator endpoint: `GET /metrics` (Prometheus text), `GET /healthz` (the process is up),
//! `GET /readyz` (streaming and caught up, so heartbeats are flowing, and no namespace out of
//! service), and the admin API under `/api/v1/` ([`admin`]), described by an OpenAPI 3.1
//! document generated from this code and served at `GET /api/v1/openapi.json`.
//!
//! Handlers log to the subscriber that was current when the router was built (the process's,
//! or a test's own), although connections are served on tasks of their own.

pub mod admin;
pub mod auth;
mod openapi;
pub mod problem;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use admin::Admin;
pub use openapi::{openapi, openapi_json};

use crate::status::Status;
use problem::{kind, Problem};

/// The Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
pub(crate) struct AppState {
    handle: PrometheusHandle,
    status: Arc<Status>,
    admin: Option<Arc<Admin>>,
}

/// Every route with its OpenAPI description: the one list both the router and the document
/// are made from, so neither can have a route the other lacks.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi::document))
        .routes(routes!(admin::status))
        .routes(routes!(admin::start_refresh))
        .routes(routes!(admin::refresh_job))
        .routes(routes!(admin::flush_namespace))
}

/// The routes without the admin API's state (its endpoints answer 503), without a listener
/// (for [`serve_on`] and for tests).
pub fn router(handle: PrometheusHandle, status: Arc<Status>) -> Router {
    app(handle, status, None)
}

/// Every route, with the admin API `admin` (`None`: its endpoints answer 503).
pub fn app(handle: PrometheusHandle, status: Arc<Status>, admin: Option<Arc<Admin>>) -> Router {
    let (router, _) = routes().split_for_parts();
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    router
        .fallback(no_route)
        .layer(axum::middleware::from_fn(as_problem))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| next.run(req).with_subscriber(dispatch.clone()),
        ))
        .with_state(AppState {
            handle,
            status,
            admin,
        })
}

/// Warn about an admin token sent in the clear: configured, and `listen` is not a loopback
/// address (the endpoint speaks plain HTTP).
pub fn warn_plain_http_token(listen: &str, admin: &Admin) {
    if admin.has_token() && !auth::is_loopback(listen) {
        tracing::warn!(
            listen,
            "the admin API's bearer token travels in plain HTTP on a non-loopback address: \
             put the endpoint behind TLS (a sidecar or ingress) or a network policy that admits \
             only operators (see docs/admin-api.md)"
        );
    }
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

/// Serve [`router`] on an already bound listener until `shutdown` is cancelled.
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
    serve_app(listener, router(handle, status), shutdown).await
}

/// How long a client may take to send a request's headers (and an idle keep-alive
/// connection may wait for its next request) before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once; a connection beyond it is closed at once. Scrapers and
/// operators need a handful; the limit keeps a flood of idle connections from taking the file
/// descriptors the daemon's PostgreSQL and Redis connections need.
pub const MAX_CONNECTIONS: usize = 256;

/// Serve `app` (from [`app`]) on an already bound listener until `shutdown` is cancelled,
/// giving handlers the peer's address (for audit lines). At most [`MAX_CONNECTIONS`] at once,
/// each closed if a request's headers take longer than [`HEADER_READ_TIMEOUT`]; requests in
/// flight finish at shutdown.
///
/// # Errors
///
/// I/O errors of the listener.
pub async fn serve_app(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    use tower::ServiceExt as _;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and the admin API (/api/v1/)");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A failed accept (a connection reset before it was taken, out of file
                // descriptors for a moment) is that connection's problem, not the server's.
                Err(e) => {
                    tracing::debug!(error = %e, "accepting an HTTP connection failed");
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many HTTP connections: closing this one");
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Under `/api/`, every error is a problem (RFC 9457), including those axum answers itself
/// before a handler runs: a method the route does not take (405, empty), a body over the
/// limit (413) or not of the expected shape (400, 415, 422: plain text). The text becomes the
/// problem's `detail`; headers such as `Allow` are kept.
async fn as_problem(request: Request, next: Next) -> axum::response::Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(problem::PROBLEM_JSON.as_bytes()));
    if !api || is_problem || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    let mut problem = Problem::new(status, detail).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().insert(name.clone(), value.clone());
        }
    }
    problem
}

async fn no_route(request: Request) -> Problem {
    Problem::of_kind(
        StatusCode::NOT_FOUND,
        kind::NO_ROUTE,
        "No such route",
        format!(
            "no route for {} {}: see /api/v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        state.handle.render(),
    )
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Up", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Streaming, caught up (heartbeats flowing), and no namespace out of service.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready, and why", body = String, content_type = "text/plain"),
    )
)]
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

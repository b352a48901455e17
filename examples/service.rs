//! An HTTP service that embeds walcache in front of PostgreSQL: the shape to copy into your own.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/app REDIS_URL=redis://127.0.0.1:6379/ cargo run -p walcache-examples --bin service`
//!
//! and `walcached` beside it, following the same database and Redis
//! (`cargo run -p walcached -- run --config examples/walcached.toml`; its rule maps
//! `public.users` to the namespace `users` with the key `{id}`, as this service does).
//!
//! - `GET /users/{id}`: the user as JSON, read L1 → L2 → PostgreSQL through
//!   [`Cache::try_get_with`]. The loader reads the primary in autocommit, so every load sees
//!   the latest commit. The `x-walcache-live` header says whether L1 is in use (the daemon's
//!   stream is live).
//! - `PUT /users/{id}` with `{"email": "..."}`: writes the row (insert or update). The daemon
//!   invalidates the key in every process once the commit reaches the replication stream;
//!   the service also calls [`Cache::invalidate`] after the commit, so its next read returns
//!   its own write without waiting for the daemon.
//! - `GET /metrics`: the library's metrics (`walcache_*`) in Prometheus' text format.
//! - `GET /healthz`: `ok` while the process runs.
//!
//! Environment: `DATABASE_URL` (required; plain TCP, no TLS in this example), `REDIS_URL`
//! (required; `rediss://` works), `LISTEN` (default `127.0.0.1:8080`), `RUST_LOG` (default
//! `info`), `LOG_FORMAT` (`json` for one JSON object per line). The service creates the
//! `users` table if it is missing. SIGTERM or ctrl-c stops it
//! after the requests in flight.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use walcache::{Cache, ErrorKind, Walcache};
use walcache_examples::{exit_code, redact, Context, Failed};

/// How often the Prometheus recorder drains its histograms (`install_recorder` leaves it to us).
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A row of `users`, as cached and as returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: i64,
    email: String,
}

/// The body of `PUT /users/{id}`.
#[derive(Debug, Deserialize)]
struct UserUpdate {
    email: String,
}

/// What the loader can fail with.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("no such user")]
    NotFound,
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
}

/// Everything a handler needs. Cheap to clone: `Arc`s inside.
#[derive(Clone)]
struct App {
    db: Arc<tokio_postgres::Client>,
    walcache: Walcache,
    users: Cache<i64, User>,
    metrics: PrometheusHandle,
}

/// The loader: one autocommit statement on the primary, so it reads the latest committed row
/// (never a replica, never inside a long REPEATABLE READ transaction).
async fn load_user(db: &tokio_postgres::Client, id: i64) -> Result<User, LoadError> {
    let row = db
        .query_opt("SELECT id, email FROM users WHERE id = $1", &[&id])
        .await?
        .ok_or(LoadError::NotFound)?;
    Ok(User {
        id: row.get(0),
        email: row.get(1),
    })
}

/// `GET /users/{id}`
async fn get_user(State(app): State<App>, Path(id): Path<i64>) -> Result<Response, AppError> {
    let user = app.users.try_get_with(&id, load_user(&app.db, id)).await?;
    let live = HeaderValue::from_static(if app.walcache.is_live() {
        "true"
    } else {
        "false"
    });
    Ok(([("x-walcache-live", live)], Json(user)).into_response())
}

/// `PUT /users/{id}`
async fn put_user(
    State(app): State<App>,
    Path(id): Path<i64>,
    Json(update): Json<UserUpdate>,
) -> Result<Json<User>, AppError> {
    // One statement in autocommit: committed when `query_one` returns.
    let row = app
        .db
        .query_one(
            "INSERT INTO users (id, email) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email
             RETURNING id, email",
            &[&id, &update.email],
        )
        .await
        .map_err(|e| AppError::Db(e.into()))?;
    // After the commit: drop the key here, in L2 and in every other process's L1, so this
    // process reads its own write at once. walcached invalidates it again from the
    // replication stream; the duplicate is harmless. A Redis error is not the write's failure:
    // the daemon still delivers the invalidation.
    if let Err(e) = app.users.invalidate(&id).await {
        tracing::warn!(error = %e, "invalidate after write failed; the daemon will invalidate");
    }
    Ok(Json(User {
        id: row.get(0),
        email: row.get(1),
    }))
}

/// `GET /metrics`
async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

/// `GET /healthz`
async fn healthz() -> &'static str {
    "ok\n"
}

/// A handler's failure, as an HTTP status.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Cache(#[from] walcache::Error),
    #[error(transparent)]
    Db(LoadError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            // The loader's own error comes back typed.
            AppError::Cache(e)
                if matches!(e.loader_error::<LoadError>(), Some(LoadError::NotFound)) =>
            {
                StatusCode::NOT_FOUND
            }
            AppError::Cache(e) if e.kind() == ErrorKind::Loader => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Db(LoadError::NotFound) => StatusCode::NOT_FOUND,
            AppError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Cache(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status != StatusCode::NOT_FOUND {
            tracing::error!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        (status, format!("{self}\n")).into_response()
    }
}

/// The routes, over a ready [`App`].
fn router(app: App) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(app)
}

/// Every log line of a request carries its method and path (a span); never a header, a key
/// or a value.
async fn request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path()
    );
    async move {
        let response = next.run(request).await;
        tracing::debug!(status = response.status().as_u16(), "request served");
        response
    }
    .instrument(span)
    .await
}

fn required_env(name: &str) -> Result<String, Failed> {
    std::env::var(name).context(|| format!("reading {name} (see the top of examples/service.rs)"))
}

#[tokio::main]
async fn main() -> ExitCode {
    exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    // LOG_FORMAT=json: one JSON object per line, with the request's span (method, path).
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().with_span_list(true).init(),
        _ => logs.init(),
    }
    let database_url = required_env("DATABASE_URL")?;
    let redis_url = required_env("REDIS_URL")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    tracing::info!(
        postgres = %redact(&database_url),
        redis = %redact(&redis_url),
        "servers from DATABASE_URL and REDIS_URL"
    );

    // The recorder first, so the handle's and the caches' metrics land in it.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    // One connection; tokio-postgres pipelines concurrent queries on it. If it ends, exit and
    // let the supervisor restart the service (a real service would use a pool).
    let (db, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .context(|| format!("connecting to PostgreSQL at {}", redact(&database_url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "the PostgreSQL connection ended; exiting");
        }
        std::process::exit(1);
    });
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, email text NOT NULL)",
    )
    .await
    .context(|| "creating the users table")?;

    // One handle per process (it follows walcached's stream); one cache per namespace, named as
    // the daemon's rule names it. L1's time-to-live stays below the daemon's refresh interval.
    // The daemon's signing keys (`id:hexsecret`, the same as walcached's), so that only it
    // (and services holding the keys) can move this process's caches; without them, this
    // example accepts unsigned messages, as a daemon without keys sends.
    let builder = Walcache::builder().redis_url(&redis_url);
    let builder = if std::env::var_os("WALCACHE_SIGNING_KEYS").is_some() {
        builder.signing_keys_env("WALCACHE_SIGNING_KEYS")
    } else {
        builder.allow_unsigned()
    };
    let walcache = builder
        .build()
        .await
        .context(|| format!("connecting to Redis at {}", redact(&redis_url)))?;
    let users = walcache
        .cache::<i64, User>("users")
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(300))
        .build()?;

    let app = App {
        db: Arc::new(db),
        walcache,
        users,
        metrics,
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .context(|| format!("listening on {listen} (set LISTEN to another address)"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /users/{{id}}, /metrics and /healthz");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// SIGTERM (what `docker stop` and Kubernetes send) or ctrl-c.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down after the requests in flight");
}

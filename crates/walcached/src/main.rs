//! `walcached`: see the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing_subscriber::EnvFilter;
use walcached::config::{Config, ConfigError, ProcessEnv};
use walcached::refresh::{self, RefreshProgress};
use walcached::status::Status;
use walcached::{check, http};

mod remote;

/// Exit code: success (`run` shut down cleanly, or `check` found no problem).
const EXIT_OK: u8 = 0;
/// Exit code: a failure while running (lost a server for good, an internal error, or Redis
/// failing during `refresh`).
const EXIT_RUNTIME: u8 = 1;
/// Exit code: the configuration (file, field, environment variable or command line) is wrong.
const EXIT_CONFIG: u8 = 2;
/// Exit code: `check` found a prerequisite that does not hold.
const EXIT_CHECK_FAILED: u8 = 3;

/// How often the Prometheus recorder drains its histograms.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

const AFTER_HELP: &str = "\
Exit codes:
  0  success: `run` shut down cleanly (SIGTERM or ctrl-c), `check` found no problem,
     `refresh` completed a cycle, or `status` found the daemon ready
  1  runtime failure (for `refresh`: a Redis error, or the daemon refused: a cycle running,
     too soon after the last; for `status`: no daemon answers, or it is not ready)
  2  configuration error: the file, a field, an environment variable or the command line
     (printed as `field: problem`)
  3  `check` found a prerequisite that does not hold

Environment overrides (applied over the file):
  WALCACHED_CONFIG                           the --config file
  WALCACHED_POSTGRES_URL                     postgres.url
  WALCACHED_POSTGRES_PASSWORD                the PostgreSQL password (environment only)
  WALCACHED_POSTGRES_PASSWORD_FILE           postgres.password_file
  WALCACHED_POSTGRES_SLOT                    postgres.slot
  WALCACHED_POSTGRES_PUBLICATION             postgres.publication
  WALCACHED_REDIS_URL                        redis.url
  WALCACHED_REDIS_KEY_PREFIX                 redis.key_prefix
  WALCACHED_REDIS_CA_FILE                    redis.ca_file
  WALCACHED_REDIS_CLIENT_CERT_FILE           redis.client_cert_file
  WALCACHED_REDIS_CLIENT_KEY_FILE            redis.client_key_file
  WALCACHED_HTTP_LISTEN                      http.listen (empty disables the endpoint)
  WALCACHED_HTTP_ADMIN_TOKEN                 the admin API's bearer token (environment only)
  WALCACHED_HTTP_ADMIN_TOKEN_FILE            http.admin_token_file
  WALCACHED_HTTP_MANUAL_REFRESH_MIN_INTERVAL_SECS
                                             http.manual_refresh_min_interval_secs
  WALCACHED_STREAM_BATCH_MAX_KEYS            stream.batch_max_keys
  WALCACHED_STREAM_BATCH_MAX_DELAY_MS        stream.batch_max_delay_ms
  WALCACHED_STREAM_HEARTBEAT_INTERVAL_MS     stream.heartbeat_interval_ms
  WALCACHED_STREAM_STATUS_INTERVAL_MS        stream.status_interval_ms
  WALCACHED_STREAM_LARGE_TRANSACTION_KEYS    stream.large_transaction_keys
  WALCACHED_STREAM_MAX_MESSAGE_BYTES         stream.max_message_bytes
  WALCACHED_STREAM_MAX_FRAME_BYTES           stream.max_frame_bytes
  WALCACHED_STREAM_CATALOG_INTERVAL_MS       stream.catalog_interval_ms
  WALCACHED_REFRESH_INTERVAL_SECS            refresh.interval_secs (0 disables the schedule)
  WALCACHED_REFRESH_MAX_DELETES_PER_SECOND   refresh.max_deletes_per_second
  WALCACHED_SIGNING_KEYS                     signing keys, id:hexsecret,... (environment only; not with
                                             the file, which rotates without a restart)
  WALCACHED_SIGNING_KEYS_FILE                security.signing_keys_file
  WALCACHED_LOG_FORMAT                       --log-format
  RUST_LOG                                   log filter (default: info), e.g. walcached=debug";

/// The walcache daemon: follows PostgreSQL's logical replication stream and invalidates the
/// cache keys of every committed row change in Redis and in every service's in-process cache.
#[derive(Debug, Parser)]
#[command(name = "walcached", version, after_help = AFTER_HELP)]
struct Cli {
    /// Log format, on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "WALCACHED_LOG_FORMAT", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or ctrl-c.
    ///
    /// Loads and validates the configuration, serves /metrics, /healthz, /readyz and the
    /// admin API (/api/v1/) on http.listen (unless empty), then streams changes from the
    /// replication slot and publishes their invalidations. On SIGTERM or ctrl-c it stops reading the stream,
    /// finishes the publishes in flight, confirms the last position and exits 0; a second
    /// signal exits at once with 1 (the slot replays whatever was not confirmed).
    #[command(after_help = AFTER_HELP)]
    Run(ConfigArgs),
    /// Check the prerequisites in PostgreSQL and Redis, print one line per finding, and exit.
    ///
    /// Checks the connection, wal_level, the role's REPLICATION privilege, replication slots
    /// and WAL senders, synchronous_standby_names, each rule against its table (columns,
    /// key types, replica identity, SELECT privilege), the publication, the slot, Redis's
    /// maxmemory-policy, and whether messages are signed (the key ids, the key file's
    /// permissions). Changes nothing. Exits 0 when everything holds, 3 otherwise.
    #[command(after_help = AFTER_HELP)]
    Check(ConfigArgs),
    /// Run one full-refresh cycle now, print what it did, and exit.
    ///
    /// With a daemon running on this configuration (answering at http.listen) and an admin
    /// token configured, asks it through its admin API (POST /api/v1/refresh) and waits for
    /// the job; otherwise (or with --local) runs the cycle in this process against Redis.
    /// Walks every namespace the rules write to in L2 and deletes, at most
    /// refresh.max_deletes_per_second, every value and cached "not found" stamped before the
    /// cycle began (on the Redis server's clock), and every key that is not the library's
    /// (leases are kept); then prunes tag versions older than the cycle. `run` does the same every refresh.interval_secs;
    /// keep every service's L1 time_to_live at or below that interval. Does not connect to
    /// PostgreSQL. Exits 0 once the cycle completes, 1 on a Redis error or when the daemon
    /// refuses (a cycle running, or too soon after the last manual one).
    #[command(after_help = AFTER_HELP)]
    Refresh(RefreshArgs),
    /// Print the state of the daemon running on this configuration (GET /api/v1/status at
    /// http.listen): streaming, lag, slot, epoch, namespaces, refresh, Redis.
    ///
    /// Exits 0 when it is ready, 1 when it is not or no daemon answers.
    #[command(after_help = AFTER_HELP)]
    Status(StatusArgs),
    /// Print the OpenAPI 3.1 document of the HTTP endpoint (as served at
    /// /api/v1/openapi.json) and exit.
    Openapi,
    /// Install or remove DDL capture (needs a superuser; the daemon itself does not).
    ///
    /// DDL capture announces statements that change rows without row events (DROP and
    /// re-create, ATTACH and DETACH PARTITION, TRUNCATE of a partition, ALTER TABLE) in the
    /// WAL, in commit order, so the daemon flushes the namespaces concerned at once rather
    /// than at its next catalog check (stream.catalog_interval_ms). See
    /// docs/adr/0010-ddl-capture.md.
    #[command(subcommand)]
    DdlCapture(DdlCaptureCommand),
}

#[derive(Debug, Subcommand)]
enum DdlCaptureCommand {
    /// Install or update the event triggers, the functions (schema `walcache`) and the
    /// TRUNCATE trigger on every partition of every rule's table. Run again after adding a
    /// rule. Exits 0 when done, 2 when the role is not a superuser, 1 on another error.
    #[command(after_help = AFTER_HELP)]
    Install(AdminArgs),
    /// Remove them all (the schema `walcache` and everything in it). Exits 0 when done.
    #[command(after_help = AFTER_HELP)]
    Uninstall(AdminArgs),
}

#[derive(Debug, Args)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Connect as this superuser instead of postgres.url's role (same TLS settings; the
    /// password, if any, in the URL).
    #[arg(long, env = "WALCACHED_ADMIN_URL", value_name = "URL")]
    admin_url: Option<String>,
}

#[derive(Debug, Args)]
struct RefreshArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Run the cycle in this process even when a daemon answers.
    #[arg(long)]
    local: bool,
    /// Send this Idempotency-Key (default: a new random one): running the command again
    /// with the same key within 24 hours waits for the same job instead of starting another.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// A reason, recorded in the job and the daemon's audit log.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the daemon's JSON as it is.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "WALCACHED_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return ExitCode::from(fail(EXIT_RUNTIME, "cannot start the tokio runtime", &e));
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(&args).await,
            Command::Check(args) => check(&args).await,
            Command::Refresh(args) => refresh(&args).await,
            Command::Status(args) => remote::status(&args.config.config, args.json).await,
            Command::Openapi => {
                print!("{}", http::openapi_json());
                EXIT_OK
            }
            Command::DdlCapture(command) => ddl_capture(command).await,
        }
    });
    ExitCode::from(code)
}

/// Set when logs are JSON: the reason the process exits is then a JSON line too.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: not in journald, docker logs or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    JSON_LOGS.store(
        matches!(format, LogFormat::Json),
        std::sync::atomic::Ordering::Relaxed,
    );
    match format {
        LogFormat::Text => builder.init(),
        // Each line carries its spans' fields: the run's epoch and slot, the session number
        // and a refresh cycle its job id: the correlation fields of a log pipeline.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    Config::load(&args.config, &ProcessEnv)
}

fn config_error(e: &ConfigError) -> u8 {
    exit_line(EXIT_CONFIG, &format!("configuration error: {e}"));
    EXIT_CONFIG
}

/// The reason the process exits: `walcached: {text}` on stderr, or with JSON logs an error
/// event (`exit_code`, `error`), so that every line of the stream parses.
fn exit_line(code: u8, text: &str) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(exit_code = code, error = %text, "walcached exits");
    } else {
        eprintln!("walcached: {text}");
    }
}

/// Print `context: error: source: ...` on stderr and return `code`.
fn fail(code: u8, context: &str, error: &(dyn std::error::Error + 'static)) -> u8 {
    let mut line = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    exit_line(code, &line);
    code
}

async fn check(args: &ConfigArgs) -> u8 {
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let report = check::check(&config).await;
    print!("{report}");
    if report.is_ok() {
        println!("all checks passed");
        EXIT_OK
    } else {
        println!("some checks failed: fix the problems above and run `walcached check` again");
        EXIT_CHECK_FAILED
    }
}

/// Every namespace the rules write to — their own, and those their tags are bumped in: what
/// the full refresh walks (values there carrying the daemon's tags depend on the stream too).
fn served_namespaces(config: &Config) -> Vec<String> {
    let mut namespaces = walcached::marker::targets(&config.rules);
    namespaces.sort();
    namespaces
}

fn redis_client(config: &Config) -> Result<redis::Client, u8> {
    // Validated with the configuration; an error here is still the configuration's.
    walcached::connect::redis_client(config).map_err(|e| config_error(&e))
}

async fn refresh(args: &RefreshArgs) -> u8 {
    let config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if !args.local {
        let request = remote::RefreshRequest {
            idempotency_key: args.idempotency_key.clone(),
            reason: args.reason.clone(),
        };
        if let Some(code) = remote::refresh(&config, &request).await {
            return code;
        }
    }
    refresh_locally(&config).await
}

async fn refresh_locally(config: &Config) -> u8 {
    let client = match redis_client(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let progress = RefreshProgress::default();
    match refresh::run_cycle(
        &client,
        &config.naming(),
        &served_namespaces(config),
        &config.refresh,
        &progress,
    )
    .await
    {
        Ok(report) => {
            println!("{report}");
            EXIT_OK
        }
        Err(e) => {
            println!(
                "refresh incomplete: {} keys scanned, {} keys deleted before the error",
                progress.keys_scanned(),
                progress.keys_deleted()
            );
            fail(EXIT_RUNTIME, "refresh failed: redis error", &e)
        }
    }
}

async fn ddl_capture(command: DdlCaptureCommand) -> u8 {
    let (args, install) = match command {
        DdlCaptureCommand::Install(a) => (a, true),
        DdlCaptureCommand::Uninstall(a) => (a, false),
    };
    let mut config = match load(&args.config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Some(url) = args.admin_url {
        config.postgres.url = walcached::config::Secret::new(url);
        config.postgres.password = None;
        config.postgres.password_file = None;
    }
    let target = walcached::config::redact_url(config.postgres.url.expose());
    let postgres = match walcached::connect::Postgres::from_config(&config) {
        Ok(p) => p,
        Err(e) => return config_error(&e),
    };
    let mut client = match postgres.connect("walcached-ddl-capture").await {
        Ok(c) => c,
        Err(e) => return fail(EXIT_RUNTIME, &format!("connecting to {target}"), &e),
    };
    let result = if install {
        walcached::ddl_capture::install(&mut client, &config)
            .await
            .map(|done| {
                println!(
                    "ddl capture installed: event triggers walcache_ddl_command_end and \
                     walcache_sql_drop; tables {}; {} partitions carry the TRUNCATE trigger",
                    done.tables.join(", "),
                    done.partitions
                );
            })
    } else {
        walcached::ddl_capture::uninstall(&mut client)
            .await
            .map(|()| println!("ddl capture removed"))
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e @ walcached::ddl_capture::InstallError::NotSuperuser(_)) => {
            fail(EXIT_CONFIG, "ddl-capture", &e)
        }
        Err(e) => fail(EXIT_RUNTIME, &format!("ddl-capture on {target}"), &e),
    }
}

async fn run(args: &ConfigArgs) -> u8 {
    let config = match load(args) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    // First, so a SIGTERM during start-up is a graceful shutdown too.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return fail(EXIT_RUNTIME, "cannot install signal handlers", &e),
    };
    let handle = match PrometheusBuilder::new().install_recorder() {
        Ok(h) => h,
        Err(e) => return fail(EXIT_RUNTIME, "cannot install the metrics recorder", &e),
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let status = Arc::new(Status::default());

    // Bind before anything else starts, so a taken or malformed address fails fast as a
    // configuration error.
    let endpoint = if config.http.listen.is_empty() {
        None
    } else {
        match http::bind(&config.http.listen).await {
            Ok(listener) => Some(walcached::daemon::Endpoint {
                listener,
                metrics: handle.clone(),
            }),
            Err(e) => {
                eprintln!(
                    "walcached: configuration error: http.listen: cannot listen on {:?}: {e}; \
                     use a free host:port, or \"\" to disable the endpoint",
                    config.http.listen
                );
                return EXIT_CONFIG;
            }
        }
    };
    tracker.spawn(metrics_upkeep(handle, shutdown.clone()));
    let on_signal = tokio::spawn(signals.cancel_on_signal(shutdown.clone()));

    let result = walcached::daemon::run(
        config,
        endpoint,
        status,
        shutdown.clone(),
        walcached::pipeline::RunOptions::default(),
    )
    .await;

    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    on_signal.abort();
    // The task was aborted or ended by a second signal; either is expected here.
    let _ = on_signal.await;

    match result {
        Ok(()) => {
            tracing::info!("shut down cleanly");
            EXIT_OK
        }
        Err(e) if e.is_config() => fail(EXIT_CONFIG, "configuration error", &e),
        Err(e) => fail(EXIT_RUNTIME, "error", &e),
    }
}

/// Drain the recorder's histograms periodically (`install_recorder` leaves that to us).
async fn metrics_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// SIGTERM and SIGINT (ctrl-c), installed before the pipeline starts.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }

    /// The first signal starts a graceful shutdown; a second one exits at once.
    async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        let name = self.next().await;
        tracing::info!(signal = name, "shutting down: finishing in-flight work");
        shutdown.cancel();
        let name = self.next().await;
        tracing::warn!(
            signal = name,
            "second signal: exiting without finishing the shutdown (the slot replays what was \
             not confirmed)"
        );
        std::process::exit(i32::from(EXIT_RUNTIME));
    }
}

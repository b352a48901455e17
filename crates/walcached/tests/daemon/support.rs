//! Shared setup: servers, a daemon running in-process, and a listener on the invalidation
//! channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use walcache_protocol::{Body, Message, Naming};
use walcache_testkit::{wait_until, PgServer, RedisServer};
use walcached::config::Config;
use walcached::pipeline::RunOptions;
use walcached::status::Status;

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

/// A daemon running in this process, stopped (politely) on drop.
pub(crate) struct Daemon {
    pub(crate) status: Arc<Status>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), walcached::pipeline::RunError>>>,
}

impl Daemon {
    pub(crate) async fn start(config_toml: &str) -> Daemon {
        let d = Daemon::spawn(config_toml);
        let status = Arc::clone(&d.status);
        wait_until("daemon caught up", DEADLINE, || async {
            status.is_caught_up()
        })
        .await
        .expect("the daemon starts streaming");
        d
    }

    /// Start a daemon without waiting for it to stream (it may never: a standby waiting for
    /// another daemon's slot).
    pub(crate) fn spawn(config_toml: &str) -> Daemon {
        Daemon::spawn_with(config_toml, RunOptions::default())
    }

    /// As [`spawn`](Self::spawn), with options the configuration file does not carry.
    pub(crate) fn spawn_with(config_toml: &str, options: RunOptions) -> Daemon {
        Daemon::spawn_run(config_toml, options, None)
    }

    /// As [`spawn_with`](Self::spawn_with), logging to `log` instead of the process's
    /// subscriber: a test that reads a daemon's log lines reads that daemon's alone, whatever
    /// else runs in the process (plain `cargo test` runs every test of the binary in one).
    pub(crate) fn spawn_logging_to(
        config_toml: &str,
        options: RunOptions,
        log: tracing::Dispatch,
    ) -> Daemon {
        Daemon::spawn_run(config_toml, options, Some(log))
    }

    fn spawn_run(config_toml: &str, options: RunOptions, log: Option<tracing::Dispatch>) -> Daemon {
        use tracing::instrument::WithSubscriber;
        let config = Config::parse(config_toml, &HashMap::<String, String>::new()).expect("config");
        let status = Arc::new(Status::default());
        let shutdown = CancellationToken::new();
        let run =
            walcached::pipeline::run_with(config, shutdown.clone(), Arc::clone(&status), options);
        let task = match log {
            Some(log) => tokio::spawn(run.with_subscriber(log)),
            None => tokio::spawn(run),
        };
        Daemon {
            status,
            shutdown,
            task: Some(task),
        }
    }

    /// SIGTERM's path without waiting for the result: cancel the shutdown token.
    pub(crate) fn signal_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Wait (at most `deadline`) for `run` to return, and return its result.
    pub(crate) async fn join(
        mut self,
        deadline: Duration,
    ) -> Result<(), walcached::pipeline::RunError> {
        let task = self.task.take().expect("not joined yet");
        tokio::time::timeout(deadline, task)
            .await
            .unwrap_or_else(|_| panic!("the daemon did not return within {deadline:?}"))
            .expect("daemon task")
    }

    /// A crash: the daemon's task is dropped wherever it stands; no shutdown path runs.
    pub(crate) async fn crash(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// SIGTERM's path: stop reading, publish in-flight, confirm, return.
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("daemon task").expect("clean stop");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The config for one PostgreSQL database and one Redis, with the given rules.
pub(crate) fn config(pg: &PgServer, db: &str, redis: &RedisServer, rules: &str) -> String {
    format!(
        r#"
[postgres]
url = "{pg}"

[redis]
url = "{redis}"

[stream]
heartbeat_interval_ms = 50
status_interval_ms = 200

[http]
listen = ""

{rules}
"#,
        pg = pg.url(db),
        redis = redis.url()
    )
}

/// `cfg` (from [`config`]) with the catalog checked every `ms` milliseconds.
pub(crate) fn with_catalog_interval(cfg: String, ms: u64) -> String {
    let out = cfg.replace(
        "status_interval_ms = 200",
        &format!("status_interval_ms = 200\ncatalog_interval_ms = {ms}"),
    );
    assert_ne!(out, cfg, "the test config has a [stream] section");
    out
}

/// Collects every message published on the invalidation channel, with when it arrived and
/// its bytes as published (for signatures).
pub(crate) struct Listener {
    messages: Arc<Mutex<Vec<Message>>>,
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
    payloads: Arc<Mutex<Vec<Vec<u8>>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub(crate) async fn start(redis: &RedisServer) -> Listener {
        let mut pubsub = redis.client().get_async_pubsub().await.expect("pubsub");
        pubsub
            .subscribe(Naming::default().invalidation_channel())
            .await
            .expect("subscribe");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let payloads = Arc::new(Mutex::new(Vec::new()));
        let (sink, times, raw) = (
            Arc::clone(&messages),
            Arc::clone(&arrivals),
            Arc::clone(&payloads),
        );
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(m) = stream.next().await {
                let bytes = m.get_payload_bytes();
                let decoded = Message::decode(bytes).expect("the daemon publishes valid messages");
                // One lock order (messages, then arrivals, then payloads) keeps the lists in
                // step.
                let mut all = sink.lock().unwrap();
                all.push(decoded);
                times.lock().unwrap().push(std::time::Instant::now());
                raw.lock().unwrap().push(bytes.to_vec());
            }
        });
        Listener {
            messages,
            arrivals,
            payloads,
            _task: task,
        }
    }

    /// Every message so far with its arrival time, in arrival order.
    pub(crate) fn timed(&self) -> Vec<(std::time::Instant, Message)> {
        let all = self.messages.lock().unwrap();
        let times = self.arrivals.lock().unwrap();
        times.iter().copied().zip(all.iter().cloned()).collect()
    }

    /// Every message so far, decoded and as published, in arrival order.
    pub(crate) fn raw(&self) -> Vec<(Message, Vec<u8>)> {
        let all = self.messages.lock().unwrap();
        let raw = self.payloads.lock().unwrap();
        all.iter().cloned().zip(raw.iter().cloned()).collect()
    }

    /// Every data (non-heartbeat) message so far.
    pub(crate) fn data(&self) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| !m.is_heartbeat())
            .cloned()
            .collect()
    }

    /// Keys announced so far, as `namespace/key`.
    pub(crate) fn keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.data() {
            if let Body::Keys(keys) = m.body {
                out.extend(
                    keys.into_iter()
                        .map(|k| format!("{}/{}", k.namespace, k.key)),
                );
            }
        }
        out
    }

    /// Tags announced so far, as `namespace/tag` (`*/tag`: every namespace).
    pub(crate) fn tags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.data() {
            if let Body::Tags(tags) = m.body {
                out.extend(
                    tags.into_iter()
                        .map(|t| format!("{}/{}", t.namespace.as_deref().unwrap_or("*"), t.tag)),
                );
            }
        }
        out
    }

    pub(crate) fn flushes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.data() {
            if let Body::Flush(ns) = m.body {
                out.extend(ns);
            }
        }
        out
    }

    /// Wait for a heartbeat: the daemon is streaming and caught up.
    pub(crate) async fn wait_heartbeat(&self) {
        let before = self.heartbeats();
        wait_until("a heartbeat", DEADLINE, || async {
            self.heartbeats() > before
        })
        .await
        .expect("the daemon is streaming");
    }

    pub(crate) fn heartbeats(&self) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.is_heartbeat())
            .count()
    }

    /// The distinct epochs of every message so far (heartbeats included), in order of first
    /// appearance: one per daemon that published.
    pub(crate) fn epochs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for m in self.messages.lock().unwrap().iter() {
            if !out.contains(&m.epoch) {
                out.push(m.epoch);
            }
        }
        out
    }

    pub(crate) fn clear(&self) {
        let mut all = self.messages.lock().unwrap();
        all.clear();
        self.arrivals.lock().unwrap().clear();
        self.payloads.lock().unwrap().clear();
    }

    /// Wait until every one of `keys` (as `namespace/key`) has been announced.
    pub(crate) async fn wait_keys(&self, keys: &[&str]) {
        wait_until("keys announced", DEADLINE, || async {
            let seen = self.keys();
            keys.iter().all(|k| seen.iter().any(|s| s == k))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: wanted {keys:?}, saw {:?}", self.keys()));
    }
}

/// The slot's confirmed position and the server's current WAL position.
pub(crate) async fn confirmed_and_current(db: &tokio_postgres::Client) -> (u64, u64) {
    let row = db
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8, (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = 'walcached'",
            &[],
        )
        .await
        .expect("slot position");
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

/// The `users` table's rule: keys by id and by email, and a tag.
pub(crate) const USERS_RULE: &str = r#"
[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}", "by_email:{email}"]
tags = ["users"]
"#;

/// A database with a `users` table under REPLICA IDENTITY FULL (templates use email too).
pub(crate) async fn users_db(pg: &PgServer) -> (String, tokio_postgres::Client) {
    let name = pg.create_database("daemon").await.expect("database");
    let db = pg.connect(&name).await.expect("connect");
    db.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text);
         ALTER TABLE users REPLICA IDENTITY FULL;",
    )
    .await
    .expect("schema");
    (name, db)
}

/// A library handle on this Redis, live on the daemon's heartbeats.
pub(crate) async fn live_library(redis: &RedisServer) -> walcache::Walcache {
    let handle = walcache::Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .heartbeat_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("handle");
    wait_until("library live", DEADLINE, || async { handle.is_live() })
        .await
        .expect("the daemon's heartbeats make the stream live");
    handle
}

/// Private PostgreSQL and Redis, and a database with the `users` table.
pub(crate) async fn users_stack() -> (PgServer, RedisServer, String, tokio_postgres::Client) {
    let pg = PgServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let (dbname, db) = users_db(&pg).await;
    (pg, redis, dbname, db)
}

/// The loader of the end-to-end tests: user 1's name, read in autocommit.
pub(crate) async fn load_name(
    db: std::sync::Arc<tokio_postgres::Client>,
) -> Result<String, tokio_postgres::Error> {
    db.query_one("SELECT name FROM users WHERE id = 1", &[])
        .await
        .map(|r| r.get::<_, String>(0))
}

/// Whether backend `pid` is waiting for a synchronous standby (wait event `SyncRep`): its
/// commit is in the WAL, and so in the logical stream, but not yet visible to other sessions.
pub(crate) async fn syncrep_waiting(db: &tokio_postgres::Client, pid: i32) -> bool {
    db.query_opt(
        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
        &[&pid],
    )
    .await
    .unwrap()
    .is_some()
}

/// Makes every commit in `pg` wait for a synchronous standby that never answers
/// (`synchronous_standby_names = 'ghost'`, cluster-wide: give the test a cluster of its own),
/// and returns once a throwaway commit (into a new table `probe` of `dbname`) did wait. A
/// waiting commit stays invisible until its wait is cancelled (`pg_cancel_backend`), and then
/// stands. Consumes a few xids (the table and the probes).
pub(crate) async fn make_commits_wait_for_a_ghost_standby(
    pg: &PgServer,
    dbname: &str,
    db: &tokio_postgres::Client,
) {
    db.batch_execute("CREATE TABLE probe (n int)")
        .await
        .unwrap();
    db.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'", &[])
        .await
        .unwrap();
    db.execute("SELECT pg_reload_conf()", &[]).await.unwrap();
    // Backends see the reload at once, but commits only wait once the checkpointer has
    // processed it too: probe with a throwaway commit until one waits.
    wait_until("commits wait for the ghost standby", DEADLINE, || async {
        let prober = pg.connect(dbname).await.unwrap();
        let pid: i32 = prober
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let probe = tokio::spawn(async move {
            prober
                .execute("INSERT INTO probe VALUES (1)", &[])
                .await
                .map(|_| ())
        });
        let waited = wait_until(
            "probe waits or finishes",
            Duration::from_secs(5),
            || async { probe.is_finished() || syncrep_waiting(db, pid).await },
        )
        .await
        .is_ok()
            && syncrep_waiting(db, pid).await;
        if waited {
            db.execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .unwrap();
        }
        let _ = probe.await;
        waited
    })
    .await
    .expect("synchronous replication in force");
}

/// Runs `sql` in autocommit on a new connection to `dbname` and returns once its commit
/// waits for the ghost standby ([`make_commits_wait_for_a_ghost_standby`]): the writer's
/// backend pid, for `pg_cancel_backend`, and the task, which ends once the wait is cancelled
/// (with a warning; the commit stands).
pub(crate) async fn commit_waiting_for_the_ghost(
    pg: &PgServer,
    dbname: &str,
    db: &tokio_postgres::Client,
    sql: &'static str,
) -> (
    i32,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let writer = pg.connect(dbname).await.unwrap();
    let writer_pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let commit = tokio::spawn(async move { writer.execute(sql, &[]).await.map(|_| ()) });
    wait_until("writer waits for the ghost standby", DEADLINE, || async {
        syncrep_waiting(db, writer_pid).await
    })
    .await
    .expect("the commit waits");
    (writer_pid, commit)
}

/// The pid of the walsender serving walcached, if one is streaming.
pub(crate) async fn walsender_pid(db: &tokio_postgres::Client) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_replication WHERE application_name = 'walcached'",
        &[],
    )
    .await
    .expect("pg_stat_replication")
    .map(|r| r.get(0))
}

/// Microseconds since the Unix epoch, now: the least generation a daemon's flush moves to.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_micros() as u64
}

/// The log of one daemon: a subscriber of its own ([`Daemon::spawn_logging_to`]), so other
/// tests' daemons in the same process (plain `cargo test`) never write to it.
#[derive(Clone, Default)]
pub(crate) struct TestLog(Arc<Mutex<Vec<u8>>>);

impl TestLog {
    pub(crate) fn dispatch(&self) -> tracing::Dispatch {
        let log = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || log.clone())
                .finish(),
        )
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Its lines at `level` from walcached containing `needle`.
    pub(crate) fn lines(&self, level: &str, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(level) && l.contains("walcached") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for TestLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

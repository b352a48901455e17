//! The `walcached` binary: exit codes, `check` against real servers, `run` with its HTTP
//! endpoint and SIGTERM.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walcache_testkit::{wait_until, PgServer, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_walcached");
const DEADLINE: Duration = Duration::from_secs(30);

const EXIT_OK: i32 = 0;
const EXIT_CONFIG: i32 = 2;
const EXIT_CHECK_FAILED: i32 = 3;

/// A configuration file that lives as long as the value.
struct ConfigFile(tempfile::NamedTempFile);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
        ConfigFile(file)
    }

    fn path(&self) -> &str {
        self.0.path().to_str().expect("utf-8 temp path")
    }
}

/// `walcached ARGS`, with no `WALCACHED_*` variable inherited from the developer's shell.
fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WALCACHED_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Run `walcached SUBCOMMAND --config FILE` to completion.
pub(crate) async fn walcached(subcommand: &str, config: &str) -> Output {
    walcached_args(&[subcommand], config).await
}

/// Run `walcached ARGS --config FILE` to completion.
pub(crate) async fn walcached_args(args: &[&str], config: &str) -> Output {
    let file = ConfigFile::new(config);
    let mut all = args.to_vec();
    all.extend(["--config", file.path()]);
    let run = command(&all).output();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("walcached finishes")
        .expect("walcached runs")
}

/// Exit code, stdout and stderr, for assertions and their messages.
pub(crate) fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().expect("exited, not killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_toml(pg_url: &str, redis_url: &str, rules: &str) -> String {
    format!(
        r#"
[postgres]
url = "{pg_url}"

[redis]
url = "{redis_url}"

[http]
listen = ""

{rules}
"#
    )
}

const USERS_RULE: &str = r#"
[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}"]
tags = ["users"]
"#;

/// A PostgreSQL with a database holding `users (id bigint primary key, email text)`, and a
/// Redis.
struct Setup {
    pg: PgServer,
    db: String,
    redis: RedisServer,
}

impl Setup {
    async fn start() -> Setup {
        let pg = PgServer::start().expect("postgres");
        let redis = RedisServer::start().expect("redis");
        let db = pg.create_database("cli").await.expect("database");
        pg.connect(&db)
            .await
            .expect("connect")
            .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL)")
            .await
            .expect("create table");
        Setup { pg, db, redis }
    }

    fn config(&self, rules: &str) -> String {
        config_toml(&self.pg.url(&self.db), &self.redis.url(), rules)
    }
}

#[tokio::test]
async fn help_lists_both_subcommands_exit_codes_and_environment() {
    let out = command(&["--help"]).output().await.expect("runs");
    let (code, stdout, _) = outcome(&out);
    assert_eq!(code, EXIT_OK);
    for needle in [
        "run",
        "check",
        "Exit codes",
        "WALCACHED_POSTGRES_URL",
        "WALCACHED_POSTGRES_PASSWORD",
        "WALCACHED_REDIS_URL",
        "RUST_LOG",
    ] {
        assert!(
            stdout.contains(needle),
            "--help lacks {needle:?}:\n{stdout}"
        );
    }
    // Every override the configuration reads is listed (its names are the string literals
    // of config.rs, config/*.rs and connect.rs); two variables that are not overrides are
    // left out on purpose.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(src.join("config"))
        .expect("src/config")
        .map(|e| e.expect("entry").path())
        .collect();
    files.extend([src.join("config.rs"), src.join("connect.rs")]);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for (i, _) in text.match_indices("\"WALCACHED_") {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            if name != "WALCACHED_BLESS" && name != "WALCACHED_ADMIN_URL" {
                assert!(stdout.contains(&name), "--help lacks {name}:\n{stdout}");
            }
        }
    }
    let out = command(&["check", "--help"]).output().await.expect("runs");
    let (code, stdout, _) = outcome(&out);
    assert_eq!(code, EXIT_OK);
    assert!(stdout.contains("--config"), "{stdout}");
}

#[tokio::test]
async fn check_passes_on_a_good_setup() {
    let setup = Setup::start().await;
    let out = walcached("check", &setup.config(USERS_RULE)).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, EXIT_OK, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for subject in [
        "postgres.url",
        "wal_level",
        "postgres role",
        "replication connection",
        "synchronous_standby_names",
        "rules[0].table",
        "postgres.publication",
        "postgres.slot",
        "redis.url",
        "redis version",
        "redis maxmemory-policy",
        "redis persistence",
        "marker of namespace users",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(subject)),
            "no ok line for {subject}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("problem"), "{stdout}");
    // One finding per line, words single-spaced after the label column (a message broken
    // across source lines without a `\` once printed runs of its indentation).
    for line in stdout.lines() {
        let message = line.get(9..).unwrap_or_default();
        assert!(!message.contains("  "), "a run of spaces in {line:?}");
    }
}

#[tokio::test]
async fn an_unknown_field_is_a_configuration_error() {
    let text = config_toml(
        "postgres://u@127.0.0.1:1/db",
        "redis://127.0.0.1:1/",
        USERS_RULE,
    )
    .replace("keys = [", "kees = [");
    for subcommand in ["check", "run"] {
        let (code, _, stderr) = outcome(&walcached(subcommand, &text).await);
        assert_eq!(code, EXIT_CONFIG, "{subcommand}: {stderr}");
        assert!(stderr.contains("kees"), "{subcommand}: {stderr}");
    }
}

#[tokio::test]
async fn a_bad_url_is_a_configuration_error_naming_the_field() {
    let text = config_toml("nonsense://", "redis://127.0.0.1:1/", USERS_RULE);
    let (code, _, stderr) = outcome(&walcached("check", &text).await);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(stderr.contains("postgres.url"), "{stderr}");

    let text = config_toml("postgres://u@127.0.0.1:1/db", "http://x", USERS_RULE);
    let (code, _, stderr) = outcome(&walcached("run", &text).await);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(stderr.contains("redis.url"), "{stderr}");
}

#[tokio::test]
async fn a_missing_config_file_is_a_configuration_error() {
    let out = command(&["check", "--config", "/nonexistent/walcached.toml"])
        .output()
        .await
        .expect("runs");
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
}

#[tokio::test]
async fn check_names_an_unknown_table() {
    let setup = Setup::start().await;
    let rules = USERS_RULE.replace("public.users", "public.nope");
    let (code, stdout, stderr) = outcome(&walcached("check", &setup.config(&rules)).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout).any(|l| l.contains("rules[0].table") && l.contains("nope")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_names_an_unknown_column() {
    let setup = Setup::start().await;
    let rules = USERS_RULE.replace("{id}", "{nope}");
    let (code, stdout, stderr) = outcome(&walcached("check", &setup.config(&rules)).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout).any(|l| l.contains("rules[0].keys[0]") && l.contains("nope")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_gives_the_replica_identity_fix_for_a_column_outside_it() {
    let setup = Setup::start().await;
    let rules = USERS_RULE.replace(
        r#"keys = ["{id}"]"#,
        r#"keys = ["{id}", "by_email:{email}"]"#,
    );
    let (code, stdout, stderr) = outcome(&walcached("check", &setup.config(&rules)).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout).any(|l| l.contains("rules[0].keys[1]")
            && l.contains("ALTER TABLE \"public\".\"users\" REPLICA IDENTITY FULL")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_gives_the_privilege_fix_for_a_role_without_replication() {
    let setup = Setup::start().await;
    setup
        .pg
        .connect(&setup.db)
        .await
        .expect("connect")
        .batch_execute(
            "CREATE ROLE app LOGIN NOREPLICATION NOSUPERUSER; GRANT SELECT ON users TO app",
        )
        .await
        .expect("create role");
    let url = format!("postgres://app@127.0.0.1:{}/{}", setup.pg.port(), setup.db);
    let text = config_toml(&url, &setup.redis.url(), USERS_RULE);
    let (code, stdout, stderr) = outcome(&walcached("check", &text).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout).any(|l| l.contains("ALTER ROLE \"app\" REPLICATION;")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_refuses_to_become_a_synchronous_standby() {
    // A cluster of its own: the setting is cluster-wide.
    let setup = Setup::start().await;
    let admin = setup.pg.connect("postgres").await.expect("connect");
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'walcached'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    // The reload is asynchronous: wait until new sessions see it.
    let pg = &setup.pg;
    wait_until("the reload to apply", DEADLINE, || async {
        match pg.connect("postgres").await {
            Ok(c) => c
                .query_one("SHOW synchronous_standby_names", &[])
                .await
                .is_ok_and(|row| row.get::<_, String>(0) == "walcached"),
            Err(_) => false,
        }
    })
    .await
    .expect("reloaded");
    let (code, stdout, stderr) = outcome(&walcached("check", &setup.config(USERS_RULE)).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout)
            .any(|l| l.contains("synchronous_standby_names") && l.contains("synchronous standby")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_rejects_an_allkeys_eviction_policy() {
    let setup = Setup::start().await;
    let mut redis = setup
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .exec_async(&mut redis)
        .await
        .expect("CONFIG SET");
    let (code, stdout, stderr) = outcome(&walcached("check", &setup.config(USERS_RULE)).await);
    assert_eq!(
        code, EXIT_CHECK_FAILED,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        problem_lines(&stdout).any(|l| l.contains("maxmemory-policy") && l.contains("allkeys-lru")),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_warns_about_each_transaction_slot_creation_would_wait_for() {
    let mut setup = Setup::start().await;
    // Prepared transactions are off by default; the setting needs a restart.
    setup
        .pg
        .connect("postgres")
        .await
        .expect("connect")
        .batch_execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        .await
        .expect("ALTER SYSTEM");
    setup.pg.restart().expect("restart");
    let config = setup.config(USERS_RULE);
    let slot_lines = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.contains("postgres.slot") && l.contains("will wait"))
            .map(str::to_owned)
            .collect()
    };

    // An open transaction with an xid, and a prepared transaction (pg_blocking_pids would not
    // show the latter).
    let open = setup.pg.connect(&setup.db).await.expect("connect");
    open.batch_execute("BEGIN").await.expect("BEGIN");
    let row = open
        .query_one("SELECT pg_backend_pid(), txid_current()", &[])
        .await
        .expect("txid_current");
    let (pid, xid): (i32, i64) = (row.get(0), row.get(1));
    let preparer = setup.pg.connect(&setup.db).await.expect("connect");
    preparer.batch_execute("BEGIN").await.expect("BEGIN");
    let prepared_xid: i64 = preparer
        .query_one("SELECT txid_current()", &[])
        .await
        .expect("txid_current")
        .get(0);
    preparer
        .batch_execute("PREPARE TRANSACTION 'walcache-orphan'")
        .await
        .expect("PREPARE TRANSACTION");

    let (code, stdout, stderr) = outcome(&walcached("check", &config).await);
    assert_eq!(code, EXIT_OK, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines = slot_lines(&stdout);
    assert_eq!(lines.len(), 2, "one line per blocker:\n{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("warning")), "{stdout}");
    assert!(
        lines[0].contains(&format!("pid {pid} "))
            && lines[0].contains(&format!("xid {xid},"))
            && lines[0].contains(&format!("pg_terminate_backend({pid})")),
        "{stdout}"
    );
    assert!(
        lines[1].contains("prepared transaction 'walcache-orphan'")
            && lines[1].contains(&format!("xid {prepared_xid},"))
            && lines[1].contains("ROLLBACK PREPARED 'walcache-orphan'"),
        "{stdout}"
    );

    // Nothing to wait for: nothing said.
    open.batch_execute("COMMIT").await.expect("COMMIT");
    preparer
        .batch_execute("ROLLBACK PREPARED 'walcache-orphan'")
        .await
        .expect("ROLLBACK PREPARED");
    let (code, stdout, _) = outcome(&walcached("check", &config).await);
    assert_eq!(code, EXIT_OK, "{stdout}");
    assert!(slot_lines(&stdout).is_empty(), "{stdout}");

    // The slot exists: a running transaction does not matter to it.
    preparer
        .batch_execute("SELECT pg_create_logical_replication_slot('walcached', 'pgoutput')")
        .await
        .expect("slot");
    preparer
        .batch_execute("BEGIN; SELECT txid_current();")
        .await
        .expect("an open transaction");
    let (code, stdout, _) = outcome(&walcached("check", &config).await);
    assert_eq!(code, EXIT_OK, "{stdout}");
    assert!(slot_lines(&stdout).is_empty(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("ok")
            && l.contains("postgres.slot")
            && l.contains("pgoutput slot")),
        "{stdout}"
    );
}

#[tokio::test]
async fn run_serves_health_and_exits_cleanly_on_sigterm() {
    let setup = Setup::start().await;
    let listen = free_local_addr();
    let text = setup
        .config(USERS_RULE)
        .replace("listen = \"\"", &format!("listen = \"{listen}\""));
    let file = ConfigFile::new(&text);
    let mut child = command(&["run", "--config", file.path()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walcached");

    wait_until("/readyz to answer 200", DEADLINE, || async {
        matches!(http_get(&listen, "/readyz").await, Some((200, _)))
    })
    .await
    .expect("the daemon becomes ready");
    let (status, body) = http_get(&listen, "/healthz").await.expect("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&listen, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("walcached_caught_up"), "{body}");
    // Counters that alerts take increase() of exist at 0 before their first event: one that
    // first appears at 1 has no increase, and a one-off failover or loss would never alert.
    for series in [
        "walcached_server_changes_total ",
        "walcached_redis_losses_total{reason=\"marker_missing\"} ",
        "walcached_namespace_flushes_total{reason=\"ddl_unreadable\"} ",
        "walcached_item_fallbacks_total{namespace=\"users\"} ",
        "walcached_slot_recreations_total{reason=\"wal_removed\"} ",
    ] {
        assert!(
            body.lines().any(|l| l.starts_with(series)),
            "{series} not in {body}"
        );
    }

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.expect("stderr");
    }
    assert_eq!(status.code(), Some(EXIT_OK), "{stderr}");
}

/// `--log-format json`: every line is a JSON object; lines of the run carry its epoch and
/// slot (and those of a session its number, a published batch its sequence number and LSN),
/// and no line holds a configured secret: the password in the URL or the environment, or a
/// signing key.
#[tokio::test]
async fn json_logs_carry_correlation_fields_and_no_secret() {
    const URL_PASSWORD: &str = "Pw-in-the-URL-7f3a";
    const ENV_PASSWORD: &str = "Pw-in-the-env-91c2";
    let key_secret = "5e".repeat(32);
    let setup = Setup::start().await;
    let listen = free_local_addr();
    let pg_url = setup.pg.url(&setup.db);
    let with_password = pg_url.replacen("@", &format!(":{URL_PASSWORD}@"), 1);
    assert_ne!(with_password, pg_url, "the URL names a user");
    let text = config_toml(&with_password, &setup.redis.url(), USERS_RULE)
        .replace("listen = \"\"", &format!("listen = \"{listen}\""));
    let file = ConfigFile::new(&text);
    let mut child = command(&["run", "--config", file.path(), "--log-format", "json"])
        .env("RUST_LOG", "walcached=debug,info")
        .env("WALCACHED_POSTGRES_PASSWORD", ENV_PASSWORD)
        .env("WALCACHED_SIGNING_KEYS", format!("k1:{key_secret}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walcached");
    wait_until("/readyz to answer 200", DEADLINE, || async {
        matches!(http_get(&listen, "/readyz").await, Some((200, _)))
    })
    .await
    .expect("the daemon becomes ready");
    setup
        .pg
        .connect(&setup.db)
        .await
        .expect("connect")
        .batch_execute("INSERT INTO users VALUES (1, 'a@x.org')")
        .await
        .expect("insert");
    wait_until("the change published", DEADLINE, || async {
        http_get(&listen, "/metrics")
            .await
            .is_some_and(|(_, body)| body.contains("walcached_keys_invalidated_total 1"))
    })
    .await
    .expect("the daemon publishes the change");
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).await.expect("stderr");
    }

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for secret in [URL_PASSWORD, ENV_PASSWORD, key_secret.as_str()] {
        assert!(!stderr.contains(secret), "a secret in the logs: {stderr}");
    }
    let span = |line: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    };
    let message = |line: &serde_json::Value| line["fields"]["message"].as_str().map(str::to_owned);
    let starting = lines
        .iter()
        .find(|l| message(l).as_deref() == Some("walcached starting"))
        .unwrap_or_else(|| panic!("no start line: {stderr}"));
    let run = span(starting, "walcached").expect("the run's span");
    // A string: 64-bit epochs do not survive JSON tools' doubles.
    assert!(
        run["epoch"]
            .as_str()
            .is_some_and(|e| e.parse::<u64>().is_ok()),
        "{run}"
    );
    assert_eq!(run["slot"], "walcached");
    assert_eq!(starting["fields"]["epoch"], run["epoch"]);
    let published = lines
        .iter()
        .find(|l| message(l).as_deref() == Some("published a batch"))
        .unwrap_or_else(|| panic!("no published batch: {stderr}"));
    assert!(published["fields"]["seq"].as_u64().is_some(), "{published}");
    assert!(published["fields"]["lsn"].as_str().is_some(), "{published}");
    assert!(
        span(published, "session").is_some_and(|s| s["n"].as_u64().is_some()),
        "{published}"
    );
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        if target.starts_with("walcached::pipeline") || target.starts_with("walcached::publisher") {
            let run = span(line, "walcached").unwrap_or_else(|| panic!("no run span: {line}"));
            assert_eq!(run["epoch"], starting["fields"]["epoch"], "{line}");
        }
    }
}

/// With JSON logs, the reason the process exits is a JSON line too (a log pipeline that
/// parses every line would otherwise drop exactly the line that says why it stopped).
#[tokio::test]
async fn with_json_logs_the_exit_reason_is_a_json_line() {
    let text = config_toml(
        "postgres://u@127.0.0.1:1/db",
        "redis://127.0.0.1:1/",
        USERS_RULE,
    );
    let file = ConfigFile::new(&text);
    let out = command(&["run", "--config", file.path(), "--log-format", "json"])
        .env("WALCACHED_STREAM_MAX_FRAME_BYTES", "5")
        .output();
    let out = tokio::time::timeout(DEADLINE, out)
        .await
        .expect("walcached finishes")
        .expect("walcached runs");
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a line");
    assert_eq!(last["fields"]["exit_code"], 2, "{last}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stream.max_frame_bytes")),
        "{last}"
    );
}

#[tokio::test]
async fn run_reports_a_taken_http_address_as_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let text = config_toml(
        "postgres://u@127.0.0.1:1/db",
        "redis://127.0.0.1:1/",
        USERS_RULE,
    )
    .replace("listen = \"\"", &format!("listen = \"{listen}\""));
    let (code, _, stderr) = outcome(&walcached("run", &text).await);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(
        stderr.contains("http.listen") && stderr.contains(&listen),
        "{stderr}"
    );
}

fn problem_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout.lines().filter(|l| l.starts_with("problem"))
}

/// A loopback address nobody listens on right now.
fn free_local_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A minimal HTTP/1.1 GET: `(status, body)`, or `None` if nothing answers.
pub(crate) async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

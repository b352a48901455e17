//! The full refresh (DESIGN contract 6): one cycle removes from L2 everything stamped before it
//! began — values, "not found" entries and bytes that are not the library's — and leaves leases,
//! later fills and other namespaces alone, at a bounded delete rate. Stamps, the cycle's start
//! and the bound of the future are all the Redis server's clock (µs). After a complete cycle,
//! tag versions older than it (minus the longest lease) are pruned.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use walcache::Walcache;
use walcache_protocol::Naming;
use walcache_testkit::{wait_until, RedisServer};
use walcached::refresh::jobs::{JobState, Request, Requested};
use walcached::refresh::{run_cycle, run_schedule, RefreshConfig, RefreshJobs, RefreshProgress};

use crate::support::DEADLINE;

const BIN: &str = env!("CARGO_BIN_EXE_walcached");

#[derive(Debug)]
struct LoadError;
impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("load failed")
    }
}
impl std::error::Error for LoadError {}

/// The Redis server's clock (`TIME`), µs since the Unix epoch: the clock of every stamp.
async fn redis_micros(conn: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    s * 1_000_000 + us
}

/// A value envelope (no tags) with the given stamp (µs), as the library writes it.
fn value_envelope(stamp: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01];
    out.extend_from_slice(&stamp.to_le_bytes());
    out.extend_from_slice(&0_u16.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A cached "not found" with the given stamp (µs).
fn negative_envelope(stamp: u64) -> Vec<u8> {
    let mut out = vec![0x02];
    out.extend_from_slice(&stamp.to_le_bytes());
    out
}

/// The stamp of an envelope.
fn stamp_of(envelope: &[u8]) -> u64 {
    u64::from_le_bytes(envelope[1..9].try_into().expect("an envelope"))
}

fn lease() -> Vec<u8> {
    let mut out = vec![0x00, b'L'];
    out.extend_from_slice(b"0123456789abcdef0123456789abcdef");
    out
}

async fn connection(redis: &RedisServer) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

async fn raw_get(conn: &mut MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    conn.get(key).await.expect("GET")
}

async fn keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = conn.keys(pattern).await.expect("KEYS");
    k.sort();
    k
}

fn fast() -> RefreshConfig {
    RefreshConfig {
        max_deletes_per_second: 1_000_000,
        ..RefreshConfig::default()
    }
}

fn namespaces(ns: &[&str]) -> Vec<String> {
    ns.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cycle_removes_everything_filled_before_it_began() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let handle = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle");
    let users = handle
        .cache::<i64, String>("users")
        .negative_ttl(Duration::from_secs(600))
        .build()
        .expect("cache");
    // Generation 1: the counter `wc:{users}:gen` exists, matches `wc:{users}:g*`, and must
    // survive (a generation going back would resurrect flushed values).
    users.invalidate_all().await.expect("flush");
    let posts = handle.cache::<i64, String>("posts").build().expect("cache");
    let orders = handle
        .cache::<i64, String>("orders")
        .build()
        .expect("cache");

    // Filled through the library: loaded values and a "not found".
    let fill = |cache: &walcache::Cache<i64, String>, id: i64, v: &'static str| {
        let cache = cache.clone();
        async move {
            let got = cache
                .try_get_with(&id, async move { Ok::<_, LoadError>(v.to_owned()) })
                .await
                .expect("load");
            assert_eq!(got, v);
        }
    };
    fill(&users, 1, "one").await;
    fill(&users, 2, "two").await;
    let loaded = users
        .try_get_with(&3, async { Ok::<_, LoadError>("three".to_owned()) })
        .await
        .expect("load");
    assert_eq!(loaded, "three");
    let none = users
        .try_get_optional_with(&4, async { Ok::<Option<String>, LoadError>(None) })
        .await
        .expect("load");
    assert_eq!(none, None);
    fill(&posts, 1, "post").await;
    fill(&orders, 1, "order").await;
    for fills in [
        users.wait_for_l2_fills(),
        posts.wait_for_l2_fills(),
        orders.wait_for_l2_fills(),
    ] {
        fills.await;
    }
    let library_users = keys(&mut conn, "wc:{users}:g1:*").await;
    assert_eq!(library_users.len(), 4, "{library_users:?}");
    let library_posts = keys(&mut conn, "wc:{posts}:g*").await;
    assert_eq!(library_posts.len(), 1, "{library_posts:?}");
    let orders_keys = keys(&mut conn, "wc:{orders}:g*").await;
    assert_eq!(orders_keys.len(), 1, "{orders_keys:?}");

    // Written behind the daemon's back.
    let key = |ns: &str, generation: u64, k: &str| naming.value_key(ns, generation, 1, k);
    let corrupt = key("users", 1, "corrupt");
    let old = key("users", 1, "old");
    let old_negative = key("users", 1, "old-negative");
    let old_generation = key("users", 0, "old-generation");
    let truncated = key("users", 1, "truncated");
    let wrong_type = key("users", 1, "wrong-type");
    let empty = key("users", 1, "empty");
    let () = conn.set(&corrupt, b"not an envelope").await.unwrap();
    let () = conn.set(&old, value_envelope(1_000, b"x")).await.unwrap();
    let () = conn
        .set(&old_negative, negative_envelope(1_000))
        .await
        .unwrap();
    let () = conn
        .set(&old_generation, value_envelope(1_000, b"x"))
        .await
        .unwrap();
    // A minute ahead of the Redis server's clock: within the allowance for its clock stepping
    // back, and after any start the cycle can take.
    let future = redis_micros(&mut conn).await + 60_000_000;
    let () = conn
        .set(&truncated, &value_envelope(future, b"")[..9])
        .await
        .unwrap();
    let () = conn.hset(&wrong_type, "f", "v").await.unwrap();
    let () = conn.set(&empty, b"").await.unwrap();
    // Filled after the cycle begins (its fill time is after any start the cycle can take).
    let fresh = key("users", 1, "fresh");
    let fresh_negative = key("posts", 0, "fresh-negative");
    let fresh_bytes = value_envelope(future, b"fresh");
    let () = conn.set(&fresh, &fresh_bytes).await.unwrap();
    let () = conn
        .set(&fresh_negative, negative_envelope(future))
        .await
        .unwrap();
    let leased = key("users", 1, "leased");
    let () = conn.pset_ex(&leased, lease(), 600_000).await.unwrap();

    let progress = RefreshProgress::default();
    let before = redis_micros(&mut conn).await;
    let report = run_cycle(
        &redis.client(),
        &naming,
        &namespaces(&["users", "posts", "users"]),
        &fast(),
        &progress,
    )
    .await
    .expect("cycle");
    let after = redis_micros(&mut conn).await;

    assert!(
        (before..=after).contains(&report.started_at_micros),
        "the cycle's start is the Redis server's clock: {before} <= {} <= {after}",
        report.started_at_micros
    );
    assert_eq!(report.started_at_ms, report.started_at_micros / 1000);
    assert!(
        report.started_at_micros < future,
        "the fresh entries were stamped after the cycle began"
    );
    assert_eq!(report.namespaces, 2, "duplicates walked once");
    // 4 library users + 1 library post + 7 written directly.
    assert_eq!(report.keys_deleted, 12, "{report:?}");
    assert_eq!(report.keys_scanned, 15, "{report:?}");
    for k in library_users.iter().chain(&library_posts).chain([
        &corrupt,
        &old,
        &old_negative,
        &old_generation,
        &truncated,
        &empty,
    ]) {
        assert_eq!(raw_get(&mut conn, k).await, None, "{k} survived");
    }
    let exists: bool = conn.exists(&wrong_type).await.unwrap();
    assert!(!exists, "a non-string at a value key is not the library's");

    assert_eq!(raw_get(&mut conn, &fresh).await, Some(fresh_bytes));
    assert_eq!(
        raw_get(&mut conn, &fresh_negative).await,
        Some(negative_envelope(future))
    );
    assert_eq!(raw_get(&mut conn, &leased).await, Some(lease()));
    let lease_ttl: i64 = conn.pttl(&leased).await.unwrap();
    assert!(lease_ttl > 0, "the lease keeps its own expiry");
    assert_eq!(keys(&mut conn, "wc:{orders}:g*").await, orders_keys);
    let generation: Option<String> = conn.get(naming.generation_key("users")).await.unwrap();
    assert_eq!(generation.as_deref(), Some("1"));
    let schemas: bool = conn.exists(naming.schemas_key("users")).await.unwrap();
    assert!(schemas, "the schema set is not a value key");

    // Seen from a fresh process: L2 no longer holds what was filled before the cycle.
    let other = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle");
    let users2 = other.cache::<i64, String>("users").build().expect("cache");
    let loads = AtomicUsize::new(0);
    for id in [1, 2, 3] {
        let v = users2
            .try_get_with(&id, async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, LoadError>(format!("reloaded {id}"))
            })
            .await
            .expect("load");
        assert_eq!(v, format!("reloaded {id}"));
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        3,
        "every read went to the loader"
    );
    let orders2 = other.cache::<i64, String>("orders").build().expect("cache");
    let v = orders2
        .try_get_with(&1, async { Ok::<_, LoadError>("loaded".to_owned()) })
        .await
        .expect("read");
    assert_eq!(v, "order", "an unserved namespace keeps its L2");

    assert_eq!(progress.cycles_completed(), 1);
    assert_eq!(progress.keys_deleted(), 12);
    assert_eq!(progress.keys_scanned(), 15);
    assert_eq!(progress.last_cycle_start_ms(), report.started_at_ms);
    assert!(progress.last_cycle_end_ms() >= report.started_at_ms);
    assert!(!progress.in_progress());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_rate_limited() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    for i in 0..100 {
        let () = conn
            .set(
                naming.value_key("bulk", 0, 1, &i.to_string()),
                value_envelope(1_000, b"x"),
            )
            .await
            .unwrap();
    }
    let cfg = RefreshConfig {
        max_deletes_per_second: 200,
        ..RefreshConfig::default()
    };
    let progress = RefreshProgress::default();
    let started = Instant::now();
    let report = run_cycle(
        &redis.client(),
        &naming,
        &namespaces(&["bulk"]),
        &cfg,
        &progress,
    )
    .await
    .expect("cycle");
    let elapsed = started.elapsed();
    assert_eq!(report.keys_deleted, 100);
    assert!(keys(&mut conn, "wc:{bulk}:*").await.is_empty());
    // 100 deletes at 200/s, with at most a tenth of a second's worth (20) ahead of the rate.
    assert!(
        elapsed >= Duration::from_millis(400),
        "100 deletes at 200/s took only {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_resumes_from_the_last_cycle_and_stops_on_shutdown() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let old = naming.value_key("users", 0, 1, "1");
    let () = conn.set(&old, value_envelope(1_000, b"x")).await.unwrap();

    // The last cycle started more than an interval ago: the next one is due at once.
    let () = conn
        .set(Naming::default().refresh_last_key(), 1_000_u64)
        .await
        .unwrap();
    let progress = Arc::new(RefreshProgress::default());
    let shutdown = CancellationToken::new();
    let schedule = tokio::spawn(run_schedule(
        redis.client(),
        naming.clone(),
        namespaces(&["users"]),
        RefreshConfig::default(),
        Arc::clone(&progress),
        Arc::new(RefreshJobs::new(Duration::ZERO)),
        shutdown.clone(),
    ));
    wait_until("a cycle completes", DEADLINE, || async {
        progress.cycles_completed() == 1
    })
    .await
    .expect("an overdue cycle runs at start-up");
    assert_eq!(raw_get(&mut conn, &old).await, None);
    let last: u64 = conn
        .get(Naming::default().refresh_last_key())
        .await
        .unwrap();
    assert_eq!(
        last,
        progress.last_cycle_start_ms(),
        "recorded for restarts"
    );
    let now_ms = redis_micros(&mut conn).await / 1000;
    assert!(
        last <= now_ms && now_ms - last < DEADLINE.as_millis() as u64,
        "ms on the Redis server's clock: {last} vs {now_ms}"
    );

    // The next cycle is an interval away: shutdown ends the wait.
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, schedule)
        .await
        .expect("the schedule stops on shutdown")
        .expect("no panic");
    assert_eq!(progress.cycles_completed(), 1);

    // A disabled schedule runs no cycle of its own, only those asked for (the admin API's).
    let disabled = RefreshConfig {
        interval_secs: 0,
        ..RefreshConfig::default()
    };
    let jobs = Arc::new(RefreshJobs::new(Duration::ZERO));
    let progress = Arc::new(RefreshProgress::default());
    let stop = CancellationToken::new();
    let schedule = tokio::spawn(run_schedule(
        redis.client(),
        naming,
        namespaces(&["users"]),
        disabled,
        Arc::clone(&progress),
        Arc::clone(&jobs),
        stop.clone(),
    ));
    let Ok(Requested::Created(job)) = jobs.request(&Request {
        who: "test",
        idempotency_key: None,
        body_digest: [0; 32],
        reason: None,
    }) else {
        panic!("a job is queued");
    };
    wait_until("the manual cycle", DEADLINE, || async {
        jobs.get(&job.id).is_some_and(|j| j.is_finished())
    })
    .await
    .expect("the schedule runs the job");
    assert_eq!(jobs.get(&job.id).unwrap().state, JobState::Succeeded);
    assert_eq!(progress.cycles_completed(), 1, "no scheduled cycle");
    stop.cancel();
    tokio::time::timeout(DEADLINE, schedule)
        .await
        .expect("the schedule stops on shutdown")
        .expect("no panic");
}

fn walcached(args: &[&str]) -> tokio::process::Command {
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

/// `walcached refresh --config FILE`: exit code, stdout, stderr.
async fn refresh_subcommand(config: &str) -> (i32, String, String) {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut file, config.as_bytes()).expect("write config");
    let path = file.path().to_str().expect("utf-8 path").to_owned();
    let out = tokio::time::timeout(
        DEADLINE,
        walcached(&["refresh", "--config", &path]).output(),
    )
    .await
    .expect("walcached finishes")
    .expect("walcached runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refresh_config(redis_url: &str, extra: &str) -> String {
    // Nothing listens on port 1: `refresh` must not need PostgreSQL.
    format!(
        r#"
[postgres]
url = "postgres://walcached@127.0.0.1:1/nowhere"

[redis]
url = "{redis_url}"

[http]
listen = ""

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{{id}}"]

[[rules]]
table = "public.accounts"
namespace = "users"
keys = ["account:{{id}}"]

[[rules]]
table = "public.posts"
namespace = "posts"
keys = ["{{id}}"]
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_subcommand_runs_one_cycle_and_prints_the_counts() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    for (ns, k) in [("users", "1"), ("users", "2"), ("posts", "1")] {
        let () = conn
            .set(naming.value_key(ns, 0, 1, k), value_envelope(1_000, b"x"))
            .await
            .unwrap();
    }
    let fresh = naming.value_key("posts", 0, 1, "2");
    let ahead = redis_micros(&mut conn).await + 60_000_000;
    let () = conn.set(&fresh, value_envelope(ahead, b"x")).await.unwrap();

    let (code, stdout, stderr) = refresh_subcommand(&refresh_config(&redis.url(), "")).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "2 namespaces",
        "4 keys scanned",
        "3 keys deleted",
        "seconds",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    assert_eq!(keys(&mut conn, "wc:{*}:g*").await, vec![fresh]);

    // A bad [refresh] field is a configuration error naming it.
    let (code, _, stderr) = refresh_subcommand(&refresh_config(
        &redis.url(),
        "\n[refresh]\nmax_deletes_per_second = 0\n",
    ))
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("refresh.max_deletes_per_second"),
        "{stderr}"
    );

    // Redis unreachable: a runtime failure.
    let (code, _, stderr) = refresh_subcommand(&refresh_config("redis://127.0.0.1:1/", "")).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refresh failed"), "{stderr}");
}

#[tokio::test]
async fn help_mentions_the_refresh_subcommand_and_its_settings() {
    let out = walcached(&["--help"]).output().await.expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "refresh",
        "WALCACHED_REFRESH_INTERVAL_SECS",
        "WALCACHED_REFRESH_MAX_DELETES_PER_SECOND",
    ] {
        assert!(
            stdout.contains(needle),
            "--help lacks {needle:?}:\n{stdout}"
        );
    }
    let out = walcached(&["refresh", "--help"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("--config"), "{stdout}");
    assert!(stdout.contains("time_to_live"), "{stdout}");
}

/// The cutoff is the Redis server's clock when the cycle begins: a value stamped before it is
/// deleted, one stamped after it is kept — a fill during the cycle (stamped by the library's
/// script on the same clock) survives it, and the next cycle, which began after it, deletes
/// it. The bound of the future is that clock plus five minutes, read inside the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_are_judged_against_the_redis_clock_at_the_cycles_start() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let t0 = redis_micros(&mut conn).await;
    let key = |ns: &str, k: &str| naming.value_key(ns, 0, 1, k);
    // Stamped just before the cycle, two minutes ahead (a clock stepped back: kept), and ten
    // minutes ahead (corrupt: deleted).
    for (k, stamp) in [
        ("before", t0),
        ("ahead", t0 + 120_000_000),
        ("too-far", t0 + 600_000_000),
    ] {
        let () = conn
            .set(key("stamped", k), value_envelope(stamp, b"x"))
            .await
            .unwrap();
    }
    // Enough old values that the cycle is still deleting while a service fills a value in
    // `fresh`: 60 deletes at 20 per second, three seconds.
    for i in 0..60 {
        let () = conn
            .set(key("bulk", &i.to_string()), value_envelope(1_000, b"x"))
            .await
            .unwrap();
    }
    // The key the service fills during the cycle holds bytes that are not an envelope before
    // it (the library's fill replaces them): the one SCAN pass, made before the fill, meets
    // the key, and checks it with `fresh`'s last chunk — after the pass, after the fill. A
    // value refilled between the SCAN and the delete is kept.
    let refilled = key("fresh", "1");
    let () = conn.set(&refilled, b"not an envelope").await.unwrap();
    let handle = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle");
    let fresh = handle.cache::<i64, String>("fresh").build().expect("cache");
    let cfg = RefreshConfig {
        max_deletes_per_second: 20,
        ..RefreshConfig::default()
    };
    let progress = Arc::new(RefreshProgress::default());
    let cycle = {
        let (client, naming, progress, cfg) = (
            redis.client(),
            naming.clone(),
            Arc::clone(&progress),
            cfg.clone(),
        );
        tokio::spawn(async move {
            run_cycle(
                &client,
                &naming,
                &namespaces(&["bulk", "fresh", "stamped"]),
                &cfg,
                &progress,
            )
            .await
        })
    };
    wait_until("the cycle is deleting", DEADLINE, || async {
        progress.keys_deleted() > 0
    })
    .await
    .expect("the cycle runs");
    let filled = fresh
        .try_get_with(&1, async {
            Ok::<_, LoadError>("filled during the cycle".to_owned())
        })
        .await
        .expect("fill");
    assert_eq!(filled, "filled during the cycle");
    fresh.wait_for_l2_fills().await;
    assert!(
        !cycle.is_finished(),
        "the fill landed while the cycle ran (it paces 60 deletes over three seconds)"
    );
    let report = tokio::time::timeout(DEADLINE, cycle)
        .await
        .expect("the cycle ends")
        .expect("no panic")
        .expect("cycle");

    assert!(report.started_at_micros >= t0);
    assert_eq!(raw_get(&mut conn, &key("stamped", "before")).await, None);
    assert_eq!(raw_get(&mut conn, &key("stamped", "too-far")).await, None);
    assert!(raw_get(&mut conn, &key("stamped", "ahead")).await.is_some());
    let filled = keys(&mut conn, "wc:{fresh}:g*").await;
    assert_eq!(filled, [refilled], "the fill during the cycle survives it");
    let envelope = raw_get(&mut conn, &filled[0]).await.expect("kept");
    assert!(
        stamp_of(&envelope) > report.started_at_micros,
        "stamped by the library on the Redis clock, after the cycle's start"
    );
    assert!(keys(&mut conn, "wc:{bulk}:*").await.is_empty());

    // The next cycle began after the fill: it goes.
    let report = run_cycle(
        &redis.client(),
        &naming,
        &namespaces(&["fresh"]),
        &fast(),
        &RefreshProgress::default(),
    )
    .await
    .expect("cycle");
    assert_eq!(report.keys_deleted, 1);
    assert!(keys(&mut conn, "wc:{fresh}:g*").await.is_empty());
}

/// After a complete cycle, each walked namespace's tags hash loses the fields older than the
/// cycle's start minus the longest lease (bounded pages of HSCAN, each pruned by a script),
/// keeps recent ones, the library's bookkeeping (the tag clock among it) whatever its number,
/// and values that are not numbers (not its to judge); namespaces not walked keep theirs. A tags hash of the wrong type does not
/// fail the cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_cycle_prunes_old_tag_versions_and_keeps_recent_ones_and_the_clock() {
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let t0 = redis_micros(&mut conn).await;
    let lease = u64::try_from(walcache_protocol::MAX_LEASE_TTL.as_micros()).unwrap();
    let users = naming.tags_key("users");
    // 300 old tags (a hash table, so HSCAN pages through it), a few recent ones, the clock.
    let mut old: Vec<(String, u64)> = (0..300)
        .map(|i| (format!("old:{i}"), t0 - lease - 1_000_000 - i))
        .collect();
    old.push(("ancient".into(), 1_000));
    for (field, v) in &old {
        let () = conn.hset(&users, field, v).await.unwrap();
    }
    // The library's bookkeeping (the tag clock, the longest time-to-live, the pruning cursor)
    // is never pruned, however small its number.
    let recent = [
        ("recent", t0 - 1_000_000),
        ("within-a-lease", t0 - lease + 5_000_000),
        (" now", t0 - 2 * lease),
        (" ttl", 1_000),
        (" cursor", 0),
    ];
    for (field, v) in recent {
        let () = conn.hset(&users, field, v).await.unwrap();
    }
    let () = conn.hset(&users, "garbled", "abc").await.unwrap();
    let unwalked = naming.tags_key("other");
    let () = conn.hset(&unwalked, "old", 1_000_u64).await.unwrap();
    let () = conn
        .set(naming.tags_key("broken"), "not a hash")
        .await
        .unwrap();

    let cfg = RefreshConfig {
        scan_count: 50,
        ..fast()
    };
    let report = run_cycle(
        &redis.client(),
        &naming,
        &namespaces(&["broken", "users"]),
        &cfg,
        &RefreshProgress::default(),
    )
    .await
    .expect("a completed cycle, whatever a tags hash holds");
    assert_eq!(report.tag_versions_pruned, old.len() as u64, "{report:?}");
    let mut left: Vec<String> = conn.hkeys(&users).await.unwrap();
    left.sort();
    assert_eq!(
        left,
        [
            " cursor",
            " now",
            " ttl",
            "garbled",
            "recent",
            "within-a-lease"
        ]
    );
    let now: u64 = conn.hget(&users, " now").await.unwrap();
    assert_eq!(now, t0 - 2 * lease, "the tag clock is never pruned");
    let other: Option<u64> = conn.hget(&unwalked, "old").await.unwrap();
    assert_eq!(
        other,
        Some(1_000),
        "a namespace not walked keeps its versions"
    );

    // Nothing left to prune: the next cycle deletes nothing more.
    let report = run_cycle(
        &redis.client(),
        &naming,
        &namespaces(&["users"]),
        &cfg,
        &RefreshProgress::default(),
    )
    .await
    .expect("cycle");
    assert_eq!(report.tag_versions_pruned, 0);
    assert_eq!(conn.hlen::<_, usize>(&users).await.unwrap(), 6);
}

/// SCAN calls the Redis server has answered since it started (`INFO commandstats`).
async fn scan_calls(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    // `cmdstat_scan:calls=12,usec=…`; absent before the first SCAN.
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:"))
        .and_then(|rest| rest.split(',').find_map(|f| f.strip_prefix("calls=")))
        .map_or(0, |c| c.parse().expect("a count"))
}

/// One cycle walks the keyspace once, however many namespaces it serves: the SCAN calls it
/// makes are the pages of one pass, not one pass per namespace. Within that pass each key is
/// attributed to its namespace by its hash tag: every old value key of the cycle's
/// namespaces goes, and everything else stays — another namespace's values, the
/// generations, tags hashes, schema sets and markers, keys that match the SCAN pattern
/// without a value key's shape, leases, fresh values, and keys under another prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scan_pass_serves_every_namespace_and_leaves_foreign_keys() {
    const NAMESPACES: usize = 20;
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let future = redis_micros(&mut conn).await + 60_000_000;
    let served: Vec<String> = (0..NAMESPACES).map(|i| format!("ns_{i:02}")).collect();
    let mut stale = Vec::new();
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for ns in &served {
        for (generation, k) in [(0, "1"), (3, "2"), (3, "with {braces}:g1:s1:x")] {
            let key = naming.value_key(ns, generation, 1, k);
            let () = conn.set(&key, value_envelope(1_000, b"x")).await.unwrap();
            stale.push(key);
        }
        let fresh = naming.value_key(ns, 3, 1, "fresh");
        let leased = naming.value_key(ns, 3, 1, "leased");
        let bytes = [
            (fresh, value_envelope(future, b"fresh")),
            (leased, lease()),
            (naming.generation_key(ns), b"3".to_vec()),
            // Match `…:g[0-9]*` without a value key's shape.
            (format!("{}7", naming.value_key_prefix(ns)), b"odd".to_vec()),
            (
                format!("{}7:x1:k", naming.value_key_prefix(ns)),
                b"odd".to_vec(),
            ),
        ];
        for (key, value) in bytes {
            let () = conn.set(&key, &value).await.unwrap();
            kept.push((key, value));
        }
        let () = conn.hset(naming.tags_key(ns), "t", future).await.unwrap();
        let () = conn
            .hset(naming.marker_key(ns), "lsn", "0/1")
            .await
            .unwrap();
        let () = conn.sadd(naming.schemas_key(ns), 1).await.unwrap();
    }
    // Old values the cycle must not touch: a namespace it does not serve (one whose name
    // extends a served one's among them), and the same shape under another prefix.
    let other = Naming::new("other").expect("prefix");
    for key in [
        naming.value_key("unserved", 0, 1, "1"),
        naming.value_key("ns_0", 0, 1, "1"),
        naming.value_key("ns_001", 0, 1, "1"),
        other.value_key("ns_00", 0, 1, "1"),
    ] {
        let () = conn.set(&key, value_envelope(1_000, b"x")).await.unwrap();
        kept.push((key, value_envelope(1_000, b"x")));
    }
    let dbsize: usize = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(
        dbsize < 500,
        "one pass is a page or two at the default scan_count: {dbsize} keys"
    );

    let scans_before = scan_calls(&mut conn).await;
    let progress = RefreshProgress::default();
    let report = run_cycle(&redis.client(), &naming, &served, &fast(), &progress)
        .await
        .expect("cycle");
    let scans = scan_calls(&mut conn).await - scans_before;

    assert_eq!(report.namespaces, NAMESPACES);
    assert_eq!(report.keys_deleted, stale.len() as u64, "{report:?}");
    // Old, fresh and leased value keys of the served namespaces, nothing else.
    assert_eq!(report.keys_scanned, 5 * NAMESPACES as u64, "{report:?}");
    assert!(
        (1..NAMESPACES as u64).contains(&scans),
        "{scans} SCAN calls for {NAMESPACES} namespaces over {dbsize} keys: one pass, not one \
         per namespace"
    );
    for key in &stale {
        let exists: bool = conn.exists(key).await.unwrap();
        assert!(!exists, "{key} survived");
    }
    for (key, value) in &kept {
        assert_eq!(
            raw_get(&mut conn, key).await.as_ref(),
            Some(value),
            "{key} was touched"
        );
    }
    for ns in &served {
        let tags: Option<u64> = conn.hget(naming.tags_key(ns), "t").await.unwrap();
        assert_eq!(tags, Some(future), "{ns}'s tags hash");
        let marker: Option<String> = conn.hget(naming.marker_key(ns), "lsn").await.unwrap();
        assert_eq!(marker.as_deref(), Some("0/1"), "{ns}'s marker");
        let schemas: bool = conn.sismember(naming.schemas_key(ns), 1).await.unwrap();
        assert!(schemas, "{ns}'s schema set");
    }
}

/// Keys checked per script call at `rate` deletes per second and the default `scan_count`
/// (the cycle's `chunk_len`): what may run ahead of the rate.
fn chunk_at(rate: u64) -> u64 {
    (rate / 10).clamp(1, RefreshConfig::default().scan_count)
}

/// Run a cycle at `rate` deletes per second while sampling its progress: at every sample,
/// the deletes done since the cycle was called are at most what the rate allows for the time
/// since, plus one chunk (the one script that may run ahead). Returns the report and the
/// cycle's duration.
async fn run_sampled(
    redis: &RedisServer,
    naming: &Naming,
    served: &[String],
    rate: u64,
) -> (walcached::refresh::CycleReport, Duration) {
    let cfg = RefreshConfig {
        max_deletes_per_second: rate,
        ..RefreshConfig::default()
    };
    let progress = Arc::new(RefreshProgress::default());
    let started = Instant::now();
    let cycle = {
        let (client, naming, served, progress) = (
            redis.client(),
            naming.clone(),
            served.to_vec(),
            Arc::clone(&progress),
        );
        tokio::spawn(async move { run_cycle(&client, &naming, &served, &cfg, &progress).await })
    };
    let allowance = chunk_at(rate);
    let mut samples = 0_u32;
    let mut ticks = tokio::time::interval(Duration::from_millis(5));
    while !cycle.is_finished() {
        ticks.tick().await;
        // The counter first, then the time: every delete counted began before `now`.
        let done = progress.keys_deleted();
        let since = started.elapsed();
        #[allow(clippy::cast_precision_loss)]
        let budget = since.as_secs_f64() * rate as f64 + allowance as f64;
        #[allow(clippy::cast_precision_loss)]
        let done_f = done as f64;
        assert!(
            done_f <= budget + 1e-6,
            "{done} deletes {since:?} into a cycle at {rate}/s: more than {budget:.1} (the rate \
             plus one chunk of {allowance})"
        );
        samples += 1;
    }
    let elapsed = started.elapsed();
    let report = cycle.await.expect("task").expect("cycle");
    assert!(samples > 10, "only {samples} samples of a paced cycle");
    (report, elapsed)
}

/// The pacer sleeps only when ahead of the rate: the rate must hold anyway. 150 deletes at
/// 50/s (chunks of 5) take at least (150 − 5) / 50 s, and at no moment run more than one
/// chunk ahead of the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_rate_holds_over_the_whole_cycle() {
    const KEYS: u64 = 150;
    const RATE: u64 = 50;
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.set(
            naming.value_key("slow", 0, 1, &i.to_string()),
            value_envelope(1_000, b"x"),
        )
        .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let (report, elapsed) = run_sampled(&redis, &naming, &namespaces(&["slow"]), RATE).await;
    assert_eq!(report.keys_deleted, KEYS);
    assert!(keys(&mut conn, "wc:{slow}:*").await.is_empty());
    let budget = Duration::from_secs_f64((KEYS - chunk_at(RATE)) as f64 / RATE as f64);
    assert!(
        elapsed >= budget,
        "{KEYS} deletes at {RATE}/s took {elapsed:?}, less than {budget:?}"
    );
}

/// The same rate when every delete goes through the partial chunks sent after the pass: 50
/// namespaces of 3 old keys each, below a chunk of 5 at 50/s, so each namespace's keys go in
/// one script call after the SCAN pass, paced like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_rate_holds_for_the_partial_chunks_sent_after_the_pass() {
    const NAMESPACES: u64 = 50;
    const PER: u64 = 3;
    const RATE: u64 = 50;
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let served: Vec<String> = (0..NAMESPACES).map(|i| format!("part_{i}")).collect();
    let mut pipe = redis::pipe();
    for ns in &served {
        for i in 0..PER {
            pipe.set(
                naming.value_key(ns, 0, 1, &i.to_string()),
                value_envelope(1_000, b"x"),
            )
            .ignore();
        }
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let (report, elapsed) = run_sampled(&redis, &naming, &served, RATE).await;
    let total = NAMESPACES * PER;
    assert_eq!(report.keys_deleted, total);
    assert!(keys(&mut conn, "wc:{part_*").await.is_empty());
    let budget = Duration::from_secs_f64((total - PER) as f64 / RATE as f64);
    assert!(
        elapsed >= budget,
        "{total} deletes at {RATE}/s took {elapsed:?}, less than {budget:?}"
    );
}

/// A value refilled (stamped after the cycle began) or leased between the SCAN that returned
/// its key and the script that checks it survives the cycle; what was not touched goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_refilled_or_leased_between_scan_and_delete_survive() {
    const KEYS: usize = 150;
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let all: Vec<String> = (0..KEYS)
        .map(|i| naming.value_key("refill", 0, 1, &i.to_string()))
        .collect();
    let mut pipe = redis::pipe();
    for k in &all {
        pipe.set(k, value_envelope(1_000, b"old")).ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    let cfg = RefreshConfig {
        max_deletes_per_second: 50,
        ..RefreshConfig::default()
    };
    let progress = Arc::new(RefreshProgress::default());
    let cycle = {
        let (client, naming, progress) = (redis.client(), naming.clone(), Arc::clone(&progress));
        tokio::spawn(async move {
            run_cycle(&client, &naming, &namespaces(&["refill"]), &cfg, &progress).await
        })
    };
    // The whole keyspace is one SCAN page: once it is scanned, every key is held or checked.
    wait_until("the pass scanned every key", DEADLINE, || async {
        progress.keys_scanned() >= KEYS as u64
    })
    .await
    .expect("scanned");
    // After the cycle's start on the Redis clock (its start was read before it scanned).
    let fresh_stamp = redis_micros(&mut conn).await + 1;
    let fresh = value_envelope(fresh_stamp, b"new");
    // Only keys still present: scanned, not yet checked. Every other one is refilled, every
    // seventh leased instead.
    let mut survivors = Vec::new();
    for (i, k) in all.iter().enumerate().rev().step_by(2) {
        let bytes = if i % 7 == 0 { lease() } else { fresh.clone() };
        let set: Option<String> = redis::cmd("SET")
            .arg(k)
            .arg(&bytes)
            .arg("XX")
            .query_async(&mut conn)
            .await
            .unwrap();
        if set.is_some() {
            survivors.push((k.clone(), bytes));
        }
    }
    let deleted_when_done = progress.keys_deleted();
    assert!(
        survivors.len() >= 10 && deleted_when_done < KEYS as u64 / 2,
        "the cycle was too fast to race: {} refilled, {deleted_when_done} deleted already",
        survivors.len()
    );
    let report = cycle.await.expect("task").expect("cycle");
    for (k, bytes) in &survivors {
        assert_eq!(
            raw_get(&mut conn, k).await.as_ref(),
            Some(bytes),
            "{k}, refilled after it was scanned, was deleted"
        );
    }
    let left = keys(&mut conn, "wc:{refill}:*").await;
    assert_eq!(left.len(), survivors.len(), "{left:?}");
    assert_eq!(report.keys_deleted, (KEYS - survivors.len()) as u64);
}

async fn evalsha_calls(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO");
    ["cmdstat_evalsha:", "cmdstat_eval:"]
        .iter()
        .filter_map(|p| info.lines().find_map(|l| l.strip_prefix(p)))
        .filter_map(|rest| rest.split(',').find_map(|f| f.strip_prefix("calls=")))
        .map(|c| c.parse::<u64>().expect("a count"))
        .sum()
}

/// More than 20,000 keys held across namespaces (each below a chunk): the cycle sends what it
/// holds mid-pass, and still deletes every old value key of its namespaces and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_more_than_twenty_thousand_keys_sends_them_mid_pass() {
    const NAMESPACES: usize = 45;
    const OLD: usize = 480;
    let redis = RedisServer::start().expect("redis");
    let naming = Naming::default();
    let mut conn = connection(&redis).await;
    let future = redis_micros(&mut conn).await + 60_000_000;
    let served: Vec<String> = (0..NAMESPACES).map(|i| format!("held_{i}")).collect();
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for ns in &served {
        let mut pipe = redis::pipe();
        for i in 0..OLD {
            pipe.set(
                naming.value_key(ns, 2, 1, &format!("{i}}}{{x")),
                value_envelope(1_000, b"x"),
            )
            .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
        for (key, bytes) in [
            (
                naming.value_key(ns, 2, 1, "fresh"),
                value_envelope(future, b"f"),
            ),
            (naming.value_key(ns, 2, 1, "leased"), lease()),
            (naming.generation_key(ns), b"2".to_vec()),
            // Another namespace whose name extends this one's: not served.
            (
                naming.value_key(&format!("{ns}x"), 2, 1, "1"),
                value_envelope(1_000, b"x"),
            ),
        ] {
            let () = conn.set(&key, &bytes).await.unwrap();
            kept.push((key, bytes));
        }
    }
    let calls_before = evalsha_calls(&mut conn).await;
    let progress = RefreshProgress::default();
    let report = run_cycle(&redis.client(), &naming, &served, &fast(), &progress)
        .await
        .expect("cycle");
    let calls = evalsha_calls(&mut conn).await - calls_before;
    assert_eq!(report.keys_deleted, (NAMESPACES * OLD) as u64, "{report:?}");
    assert_eq!(
        report.keys_scanned,
        (NAMESPACES * (OLD + 2)) as u64,
        "{report:?}"
    );
    assert!(
        calls > NAMESPACES as u64,
        "{calls} script calls: the keys held past 20,000 were not sent mid-pass (one call per \
         namespace means everything was held to the end)"
    );
    for ns in &served {
        let left = keys(&mut conn, &format!("wc:{{{ns}}}:g2:*")).await;
        assert_eq!(left.len(), 2, "{ns}: {left:?}");
    }
    for (key, bytes) in &kept {
        assert_eq!(
            raw_get(&mut conn, key).await.as_ref(),
            Some(bytes),
            "{key} was touched"
        );
    }
}

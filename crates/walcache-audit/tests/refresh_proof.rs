//! The full-refresh proof against real servers and a real `walcached` (build it first:
//! `cargo build -p walcached`): caches corrupted behind the daemon's back, one `walcached
//! refresh` cycle, nothing stale left in either tier once the L1 time-to-live has passed.

use std::time::Duration;

use walcache::Walcache;
use walcache_audit::daemon::{daemon_config, walcached_bin, Daemon, RuleSpec};
use walcache_audit::refresh_proof::{prove, Kind, ProofSetup, DEFAULT_SLOT};
use walcache_testkit::{wait_until, PgServer, RedisServer};

const TABLE: &str = "proof_rows";
const NAMESPACE: &str = "proof_rows";
const ROWS: i64 = 120;
const HEARTBEAT_MS: u64 = 100;
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
const L1_TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_cycle_leaves_nothing_stale_in_either_tier() {
    let bin = walcached_bin().expect("the walcached binary (cargo build -p walcached)");
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("join")
        .expect("PostgreSQL");
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("join")
        .expect("Redis");
    let dbname = pg.create_database("proof").await.expect("database");
    let admin = pg.connect(&dbname).await.expect("connect");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO {TABLE} SELECT g, 0 FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .expect("schema");
    let prefix = walcache_testkit::unique_prefix();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("walcached.toml");
    std::fs::write(
        &config,
        daemon_config(
            &pg.url(&dbname),
            &redis.url(),
            &prefix,
            HEARTBEAT_MS,
            &[RuleSpec {
                table: format!("public.{TABLE}"),
                namespace: NAMESPACE.into(),
                keys: vec!["{id}".into()],
                tags: vec![],
                tag_namespaces: vec![],
            }],
        ),
    )
    .expect("config");
    let mut daemon = Daemon {
        bin,
        config,
        log: dir.path().join("walcached.log"),
        child: None,
    };
    daemon.spawn().expect("spawn walcached");

    // The daemon streams and is caught up (its first start's flush is behind us) once a probe
    // handle hears its heartbeats.
    let probe = Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .key_prefix(&prefix)
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .build()
        .await
        .expect("probe handle");
    if let Err(e) = wait_until(
        "the daemon's stream to be live",
        Duration::from_secs(30),
        || {
            let live = probe.is_live();
            async move { live }
        },
    )
    .await
    {
        panic!("{e}; walcached log:\n{}", daemon.log_tail());
    }
    drop(probe);

    let pg_conn = pg.conn_string(&dbname);
    let redis_url = redis.url();
    let result = prove(ProofSetup {
        admin: &admin,
        pg_conn: &pg_conn,
        redis_url: &redis_url,
        key_prefix: &prefix,
        daemon: &mut daemon,
        slot: DEFAULT_SLOT,
        table: TABLE,
        namespace: NAMESPACE,
        rows: ROWS,
        handles: 3,
        l1_ttl: L1_TTL,
        heartbeat_timeout: HEARTBEAT_TIMEOUT,
    })
    .await;
    let proof = match result {
        Ok(p) => p,
        Err(e) => panic!("{e}; walcached log:\n{}", daemon.log_tail()),
    };
    let report = serde_json::to_string_pretty(&proof).expect("json");
    println!("{report}");

    // The corruption took, in both tiers and for every kind.
    assert!(proof.before.stale > 0, "{report}");
    assert!(proof.before.stale_from_l2 > 0, "{report}");
    assert!(proof.before_repeat.stale_from_l1 > 0, "{report}");
    assert!(proof.l2_before_cycle.stale > 0, "{report}");
    assert_eq!(
        proof.before.stale_by_kind.get(&Kind::Untouched),
        None,
        "{report}"
    );
    // The negative control: L1's expiry alone leaves L2's stale values in place (and L1 held
    // nothing when the control pass began).
    assert!(proof.control_without_cycle.stale_from_l2 > 0, "{report}");
    assert_eq!(
        proof.control_without_cycle.l1_entries_at_start, 0,
        "{report}"
    );
    assert_eq!(
        proof.control_without_cycle.stale_by_kind.get(&Kind::L1Only),
        None,
        "L1-only corruption is gone with the L1 time-to-live: {report}"
    );
    // One cycle: it deleted keys, and nothing stale survives in either tier.
    assert!(proof.cycle.keys_deleted > 0, "{report}");
    assert_eq!(
        proof.l2_after_cycle.filled_at_or_before_cutoff, 0,
        "{report}"
    );
    assert_eq!(proof.after.l1_entries_at_start, 0, "{report}");
    assert_eq!(proof.after.stale, 0, "{report}");
    assert_eq!(proof.l2_after.stale, 0, "{report}");
    assert!(proof.passed, "{report}");

    daemon.sigkill().await.expect("stop walcached");
}

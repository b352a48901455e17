//! Least privilege (docs/redis-acl.md): the Redis users of `deploy/redis/users.acl.in`, loaded
//! from that very file, let the daemon and a service do everything they run — the daemon
//! streams, invalidates, keeps its markers and catalog, and refreshes; the service reads
//! through both tiers, fills, invalidates keys, tags and whole namespaces, and probes a silent
//! subscription — with nothing in Redis's `ACL LOG` (so no refusal hides behind a logged
//! warning or a miss); and they refuse the rest with NOPERM: in particular a service can
//! neither publish on the sequenced channel nor write the daemon's markers, catalog or
//! refresh time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;
use walcache_protocol::Naming;
use walcache_testkit::{wait_until, RedisServer};
use walcached::refresh::{run_schedule, RefreshConfig, RefreshJobs, RefreshProgress};

use crate::support::{
    config, load_name, users_stack, with_catalog_interval, Daemon, Listener, DEADLINE, USERS_RULE,
};

/// The users, one `user NAME RULES…` line each, without passwords.
const USERS_ACL: &str = include_str!("../../../../deploy/redis/users.acl.in");
/// The recipe, which must show those very lines.
const RECIPE: &str = include_str!("../../../../docs/redis-acl.md");

/// `(name, rules)` of every user line of [`USERS_ACL`].
fn users() -> Vec<(String, String)> {
    let users: Vec<(String, String)> = USERS_ACL
        .lines()
        .filter_map(|l| l.strip_prefix("user "))
        .map(|l| {
            let (name, rules) = l.split_once(' ').expect("user NAME RULES");
            (name.to_owned(), rules.to_owned())
        })
        .collect();
    let names: Vec<&str> = users.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["walcached", "service"], "the users of the recipe");
    users
}

fn password(user: &str) -> String {
    format!("{user}-test-password")
}

/// `redis://USER:PASSWORD@127.0.0.1:PORT/`.
fn url_as(redis: &RedisServer, user: &str) -> String {
    let url = redis.url();
    let rest = url
        .strip_prefix("redis://")
        .expect("a plain redis:// server");
    format!("redis://{user}:{}@{rest}", password(user))
}

/// Create the recipe's users, as the administrator (the test server's default user), each with
/// its test password.
async fn create_users(admin: &mut MultiplexedConnection) {
    for (name, rules) in users() {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(&name).arg("reset");
        // Redis joins the words of a selector `( … )` itself, as when it reads an ACL file.
        for rule in rules.split_whitespace() {
            cmd.arg(rule);
        }
        cmd.arg(format!(">{}", password(&name)));
        let () = cmd
            .query_async(admin)
            .await
            .unwrap_or_else(|e| panic!("ACL SETUSER {name}: {e}"));
    }
}

async fn admin(redis: &RedisServer) -> MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("redis as the administrator")
}

async fn connect_as(redis: &RedisServer, user: &str) -> MultiplexedConnection {
    redis::Client::open(url_as(redis, user))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis as {user}: {e}"))
}

/// The commands Redis refused to `users` since the start (`ACL LOG`), as `user: reason
/// object`. `CLIENT SETINFO`, which redis-rs sends on connecting and whose refusal it ignores
/// (Redis 7.2 or later; 7.0 does not know it), is not counted.
async fn refusals(admin: &mut MultiplexedConnection, users: &[&str]) -> Vec<String> {
    let log: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query_async(admin)
        .await
        .expect("ACL LOG");
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        other => format!("{other:?}"),
    };
    log.iter()
        .map(|e| {
            (
                text(e.get("username")),
                text(e.get("reason")),
                text(e.get("object")),
            )
        })
        .filter(|(user, _, object)| users.contains(&user.as_str()) && object != "client|setinfo")
        .map(|(user, reason, object)| format!("{user}: {reason} {object}"))
        .collect()
}

/// Every L2 key of `key` in `users` (any generation, any schema).
async fn value_keys(admin: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("wc:{{users}}:g[0-9]*:s[0-9]*:{key}"))
        .query_async(admin)
        .await
        .expect("KEYS")
}

async fn generation(admin: &mut MultiplexedConnection) -> u64 {
    let g: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().generation_key("users"))
        .query_async(admin)
        .await
        .expect("GET generation");
    g.unwrap_or(0)
}

/// A service process: a handle logged in as the service user, live on the daemon's heartbeats
/// (so subscribed to both channels), and its `users` cache.
async fn service(redis: &RedisServer) -> walcache::Cache<i64, String> {
    let handle = walcache::Walcache::builder()
        .allow_unsigned()
        .redis_url(url_as(redis, "service"))
        .heartbeat_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("handle as the service user");
    wait_until("service live", DEADLINE, || async { handle.is_live() })
        .await
        .expect("the service hears the daemon's heartbeats");
    handle.cache::<i64, String>("users").build().expect("cache")
}

/// `what` was refused by the ACL: NOPERM for a command, or the script error Redis raises
/// when a command inside a script is.
fn assert_refused<T: std::fmt::Debug>(what: &str, result: redis::RedisResult<T>) {
    match result {
        Ok(v) => panic!("{what}: allowed (replied {v:?}), expected a refusal"),
        Err(e) => assert!(
            e.code() == Some("NOPERM")
                || e.detail()
                    .is_some_and(|d| d.contains("The user executing the script can't")),
            "{what}: failed, but not for want of permission: {e}"
        ),
    }
}

#[test]
fn the_recipe_shows_the_users_the_tests_load() {
    for (name, rules) in users() {
        let line = format!("user {name} {rules}");
        assert!(
            RECIPE.lines().any(|l| l == line),
            "docs/redis-acl.md lacks the ACL file line\n{line}"
        );
        let prefix = format!("ACL SETUSER {name} reset >");
        let suffix = format!(" {rules}");
        assert!(
            RECIPE
                .lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix)),
            "docs/redis-acl.md lacks the command\n{prefix}PASSWORD{suffix}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_a_service_do_all_they_need_as_their_acl_users() {
    let (pg, redis, dbname, db) = users_stack().await;
    let mut admin = admin(&redis).await;
    create_users(&mut admin).await;
    let db = Arc::new(db);
    db.execute(
        "INSERT INTO users (id, email, name) VALUES (1, 'ada@example.com', 'Ada')",
        &[],
    )
    .await
    .expect("insert");

    // Before any daemon: a strict service with a fleet-wide cap bypasses the caches, taking
    // and giving back a permit in `wc:bypass` as `service`. A refused permit would fall back
    // to the process's cap silently, but not past the ACL LOG checked below.
    let strict = walcache::Walcache::builder()
        .allow_unsigned()
        .redis_url(url_as(&redis, "service"))
        .freshness(walcache::Freshness::Strict)
        .fleet_bypass_loads(4)
        .build()
        .await
        .expect("a strict handle as the service user");
    let bypassing = strict.cache::<i64, String>("users").build().expect("cache");
    assert_eq!(
        bypassing
            .try_get_with(&1, load_name(Arc::clone(&db)))
            .await
            .expect("a bypassing load"),
        "Ada"
    );
    let permits = walcache_protocol::Naming::default().bypass_permits_key();
    wait_until("the permit given back", DEADLINE, || async {
        let held: u64 = redis::cmd("ZCARD")
            .arg(&permits)
            .query_async(&mut admin.clone())
            .await
            .expect("ZCARD");
        held == 0
    })
    .await
    .expect("the permit is given back");
    drop((bypassing, strict));

    // The daemon, as `walcached`: it starts (INFO, markers, catalog), streams and beats.
    let listener = Listener::start(&redis).await;
    // The catalog checked often, so its view is written early.
    let cfg = with_catalog_interval(config(&pg, &dbname, &redis, USERS_RULE), 200);
    let daemon_cfg = cfg.replace(&redis.url(), &url_as(&redis, "walcached"));
    assert_ne!(daemon_cfg, cfg, "the daemon's config names its user");
    let daemon = Daemon::start(&daemon_cfg).await;
    listener.wait_heartbeat().await;

    // Two service processes, as `service`: live, so subscribed to the sequenced channel.
    let a = service(&redis).await;
    let b = service(&redis).await;
    let load = || load_name(Arc::clone(&db));

    // Read through both tiers: `a` loads and fills L2 (lease, fill), `b` reads L2 (GET, the
    // tags' versions), and both keep it in L1.
    let got = a
        .try_get_tagged_with(&1, &["users"], load())
        .await
        .expect("load");
    assert_eq!(got, "Ada");
    a.wait_for_l2_fills().await;
    assert_eq!(value_keys(&mut admin, "1").await.len(), 1, "filled in L2");
    assert!(a.contains_in_l1(&1));
    assert_eq!(b.get(&1).await.as_deref(), Some("Ada"), "read from L2");
    assert!(b.contains_in_l1(&1));

    // The daemon invalidates a change: the key in L2 and in every L1, the tag in its hash.
    db.execute("UPDATE users SET name = 'Ada L.' WHERE id = 1", &[])
        .await
        .expect("update");
    listener.wait_keys(&["users/1"]).await;
    wait_until("the change invalidated everywhere", DEADLINE, || async {
        value_keys(&mut admin.clone(), "1").await.is_empty()
            && !a.contains_in_l1(&1)
            && !b.contains_in_l1(&1)
    })
    .await
    .expect("the daemon's invalidation reaches L2 and both L1s");
    let bumped: Option<u64> = redis::cmd("HGET")
        .arg(Naming::default().tags_key("users"))
        .arg("users")
        .query_async(&mut admin)
        .await
        .expect("HGET");
    assert!(bumped.is_some(), "the daemon moved the tag's version");
    let got = a
        .try_get_tagged_with(&1, &["users"], load())
        .await
        .expect("load");
    assert_eq!(got, "Ada L.");
    a.wait_for_l2_fills().await;

    // A service invalidates a key: L2 and the other process's L1 (over the app channel).
    assert_eq!(b.get(&1).await.as_deref(), Some("Ada L."));
    a.invalidate(&1).await.expect("invalidate a key");
    assert!(value_keys(&mut admin, "1").await.is_empty());
    wait_until("b hears the key", DEADLINE, || async {
        !b.contains_in_l1(&1)
    })
    .await
    .expect("the app channel carries the key");

    // ... a tag: its version moves (the service writes the tags hash), the value is stale.
    a.try_get_tagged_with(&1, &["users"], load())
        .await
        .expect("load");
    a.wait_for_l2_fills().await;
    assert_eq!(b.get(&1).await.as_deref(), Some("Ada L."));
    a.invalidate_tag("users").await.expect("invalidate a tag");
    wait_until("b hears the tag", DEADLINE, || async {
        !b.contains_in_l1(&1)
    })
    .await
    .expect("the app channel carries the tag");
    assert_eq!(
        b.get(&1).await,
        None,
        "the tagged value in L2 is superseded"
    );

    // ... the whole namespace: the service moves the generation.
    a.try_get_with(&1, load()).await.expect("load");
    a.wait_for_l2_fills().await;
    assert_eq!(b.get(&1).await.as_deref(), Some("Ada L."));
    let before = generation(&mut admin).await;
    a.invalidate_all().await.expect("invalidate_all");
    assert!(generation(&mut admin).await > before, "a new generation");
    wait_until("b hears the flush", DEADLINE, || async {
        !b.contains_in_l1(&1)
    })
    .await
    .expect("the app channel carries the flush");
    assert_eq!(
        b.get(&1).await,
        None,
        "nothing under the new generation yet"
    );

    // The daemon kept its markers and its catalog.
    for key in [
        Naming::default().marker_key("users"),
        Naming::default().catalog_key("users"),
    ] {
        wait_until(&format!("{key} written"), DEADLINE, || async {
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut admin.clone())
                .await
                .expect("EXISTS");
            exists == 1
        })
        .await
        .expect("the daemon writes its marker and its view of the catalog");
    }

    // The full refresh, as `walcached`: a value filled before the cycle goes, and so does a
    // tag version too old to judge anything; the cycle's start is recorded.
    a.try_get_with(&1, load()).await.expect("load");
    a.wait_for_l2_fills().await;
    assert!(!value_keys(&mut admin, "1").await.is_empty());
    let () = redis::cmd("HSET")
        .arg(Naming::default().tags_key("users"))
        .arg("ancient")
        .arg(1)
        .query_async(&mut admin)
        .await
        .expect("HSET");
    let progress = Arc::new(RefreshProgress::default());
    let stop = CancellationToken::new();
    let schedule = tokio::spawn(run_schedule(
        redis::Client::open(url_as(&redis, "walcached")).expect("url"),
        Naming::default(),
        vec!["users".to_owned()],
        RefreshConfig {
            max_deletes_per_second: 1_000_000,
            ..RefreshConfig::default()
        },
        Arc::clone(&progress),
        Arc::new(RefreshJobs::new(Duration::ZERO)),
        stop.clone(),
    ));
    wait_until("a refresh cycle", DEADLINE, || async {
        progress.cycles_completed() >= 1
    })
    .await
    .expect("the refresh completes a cycle as the daemon's user");
    stop.cancel();
    schedule.await.expect("schedule");
    assert!(value_keys(&mut admin, "1").await.is_empty(), "refreshed");
    let ancient: bool = redis::cmd("HEXISTS")
        .arg(Naming::default().tags_key("users"))
        .arg("ancient")
        .query_async(&mut admin)
        .await
        .expect("HEXISTS");
    assert!(!ancient, "the old tag version was pruned");
    let last: Option<u64> = redis::cmd("GET")
        .arg(Naming::default().refresh_last_key())
        .query_async(&mut admin)
        .await
        .expect("GET");
    assert!(last.is_some(), "the cycle's start is recorded");

    // Still streaming. Then the daemon stops, and after a heartbeat's silence the services
    // probe their subscriptions with PING.
    listener.wait_heartbeat().await;
    assert!(daemon.status.is_caught_up());
    daemon.stop().await;
    wait_until("a service pinged its subscription", DEADLINE, || async {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin.clone())
            .await
            .expect("CLIENT LIST");
        !a.handle().is_live()
            && clients
                .lines()
                .any(|c| c.contains(" user=service ") && c.contains(" cmd=ping "))
    })
    .await
    .expect("silence makes the services PING");

    // Nothing either side ran was refused, not even what they only log or read as a miss.
    assert_eq!(
        refusals(&mut admin, &["walcached", "service"]).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_is_refused_what_its_side_does_not_run() {
    let redis = RedisServer::start().expect("redis");
    let mut admin = admin(&redis).await;
    create_users(&mut admin).await;
    let naming = Naming::default();
    let (mark, catalog) = (naming.marker_key("users"), naming.catalog_key("users"));
    let refresh_last = naming.refresh_last_key();
    let script = |body: &str| redis::Script::new(body);

    // A service: the app channel yes, the sequenced channel no; the daemon's keys, neither
    // directly nor from a script; nothing outside its prefix; no administration.
    let mut s = connect_as(&redis, "service").await;
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg("wc:app")
        .arg("x")
        .query_async(&mut s)
        .await
        .expect("a service publishes on the app channel");
    assert_eq!(receivers, 0);
    let refused = [
        (
            "PUBLISH on the sequenced channel",
            redis::cmd("PUBLISH").arg("wc:inval").arg("x").clone(),
        ),
        (
            "HSET a marker",
            redis::cmd("HSET").arg(&mark).arg("owed").arg("0").clone(),
        ),
        ("DEL a marker", redis::cmd("DEL").arg(&mark).clone()),
        ("HGETALL a marker", redis::cmd("HGETALL").arg(&mark).clone()),
        (
            "HSET the catalog",
            redis::cmd("HSET")
                .arg(&catalog)
                .arg("public.users")
                .arg("x")
                .clone(),
        ),
        (
            "SET the refresh time",
            redis::cmd("SET").arg(&refresh_last).arg("0").clone(),
        ),
        (
            "GET another prefix's generation",
            redis::cmd("GET").arg("other:{users}:gen").clone(),
        ),
        (
            "SET a key outside walcache",
            redis::cmd("SET").arg("session:1").arg("x").clone(),
        ),
        (
            "PUBLISH on another prefix's app channel",
            redis::cmd("PUBLISH").arg("other:app").arg("x").clone(),
        ),
        ("EVAL", redis::cmd("EVAL").arg("return 1").arg(0).clone()),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        (
            "SCAN",
            redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg("other:*")
                .clone(),
        ),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("FLUSHDB", redis::cmd("FLUSHDB").clone()),
        (
            "CONFIG SET",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("allkeys-lru")
                .clone(),
        ),
        (
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("requirepass").clone(),
        ),
        ("INFO", redis::cmd("INFO").clone()),
        ("CLIENT LIST", redis::cmd("CLIENT").arg("LIST").clone()),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
    ];
    for (what, cmd) in &refused {
        assert_refused(
            &format!("service: {what}"),
            cmd.query_async::<redis::Value>(&mut s).await,
        );
    }
    for (what, body) in [
        (
            "a script PUBLISHing on the sequenced channel",
            "return redis.call('PUBLISH', 'wc:inval', 'x')",
        ),
        (
            "a script writing a marker",
            "return redis.call('HSET', 'wc:{users}:mark', 'owed', '0')",
        ),
        (
            "a script writing the catalog",
            "return redis.call('HSET', 'wc:{users}:catalog', 'public.users', 'x')",
        ),
        (
            "a script writing the refresh time",
            "return redis.call('SET', 'wc:refresh:last', '0')",
        ),
        ("a script running FLUSHALL", "return redis.call('FLUSHALL')"),
    ] {
        assert_refused(
            &format!("service: {what}"),
            script(body).invoke_async::<_, redis::Value>(&mut s).await,
        );
    }
    let service = redis::Client::open(url_as(&redis, "service")).expect("url");
    let mut listening = service.get_async_pubsub().await.expect("pubsub");
    listening
        .subscribe(&["wc:inval", "wc:app"])
        .await
        .expect("a service subscribes to both channels");
    let mut pubsub = service.get_async_pubsub().await.expect("pubsub");
    assert_refused(
        "service: SUBSCRIBE to another prefix's channel",
        pubsub.subscribe("other:inval").await,
    );

    // The daemon: the sequenced channel only, never a subscriber; its prefix only; no
    // administration.
    let mut d = connect_as(&redis, "walcached").await;
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg("wc:inval")
        .arg("x")
        .query_async(&mut d)
        .await
        .expect("the daemon publishes on the sequenced channel");
    assert_eq!(receivers, 1, "heard by the service's subscription");
    let refused = [
        (
            "PUBLISH on the app channel",
            redis::cmd("PUBLISH").arg("wc:app").arg("x").clone(),
        ),
        (
            "GET another prefix's generation",
            redis::cmd("GET").arg("other:{users}:gen").clone(),
        ),
        (
            "SET a key outside walcache",
            redis::cmd("SET").arg("session:1").arg("x").clone(),
        ),
        ("EVAL", redis::cmd("EVAL").arg("return 1").arg(0).clone()),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("FLUSHDB", redis::cmd("FLUSHDB").clone()),
        (
            "CONFIG SET",
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("allkeys-lru")
                .clone(),
        ),
        (
            "CONFIG GET",
            redis::cmd("CONFIG").arg("GET").arg("requirepass").clone(),
        ),
        ("CLIENT LIST", redis::cmd("CLIENT").arg("LIST").clone()),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
    ];
    for (what, cmd) in &refused {
        assert_refused(
            &format!("walcached: {what}"),
            cmd.query_async::<redis::Value>(&mut d).await,
        );
    }
    assert_refused(
        "walcached: a script writing outside its prefix",
        script("return redis.call('SET', 'session:1', 'x')")
            .invoke_async::<_, redis::Value>(&mut d)
            .await,
    );
    let daemon = redis::Client::open(url_as(&redis, "walcached")).expect("url");
    let mut pubsub = daemon.get_async_pubsub().await.expect("pubsub");
    assert_refused(
        "walcached: SUBSCRIBE",
        pubsub.subscribe(naming.invalidation_channel()).await,
    );

    // Every refusal above is in Redis's own log, under its user.
    let log = refusals(&mut admin, &["walcached", "service"]).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("service: channel wc:inval")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l == &format!("service: key {mark}")),
        "{log:?}"
    );
}

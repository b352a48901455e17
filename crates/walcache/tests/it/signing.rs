//! Issue 14: only holders of a signing key move a process's caches. Forged heartbeats do not
//! keep a handle live once the daemon is gone, replays are refused, a key rotation in three
//! steps loses no liveness, and the application channel (every service's to publish on) can
//! neither flush a process nor end its liveness with garbage or forgeries. Each test reads its
//! own handle's counters (`test_hooks().count`), never the process-wide recorder.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::hooks::HookEvent;
use walcache::{Keyring, Walcache};
use walcache_protocol::{Body, Message, Naming};
use walcache_testkit::{wait_until, RedisServer};

use crate::support::{namespace, LoadError, Publisher, DEADLINE};

const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "k2:202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
/// The same id as K1, another secret: what a forger without the key would sign with.
const FORGED_K1: &str = "k1:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn keys(spec: &str) -> Keyring {
    Keyring::parse(spec).expect("keys")
}

fn signed_builder(redis: &RedisServer, heartbeat_timeout: Duration) -> walcache::WalcacheBuilder {
    Walcache::builder()
        .redis_url(redis.url())
        .redis_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .heartbeat_timeout(heartbeat_timeout)
}

async fn make_live_signed(h: &Walcache, publisher: &mut Publisher) {
    for _ in 0..500 {
        publisher.heartbeat().await;
        if wait_until("live", Duration::from_millis(20), || async { h.is_live() })
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("the handle never became live on signed heartbeats");
}

async fn publish_on(redis: &RedisServer, channel: &str, bytes: &[u8]) {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(bytes)
        .query_async(&mut c)
        .await
        .expect("PUBLISH");
}

/// The first case: the daemon is gone, and another client publishes heartbeats with
/// its epoch and the next sequence numbers (all visible to any subscriber), unsigned or signed
/// with a guessed key. None is accepted, so the handle goes not live within its heartbeat
/// timeout (on the previous code it stayed live for as long as the forger went on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_do_not_keep_a_handle_live_once_the_daemon_is_gone() {
    let redis = RedisServer::start().expect("redis");
    let timeout = Duration::from_millis(600);
    let h = signed_builder(&redis, timeout)
        .signing_keys(keys(K1))
        .build()
        .await
        .expect("handle");
    let mut daemon = Publisher::new(&redis).await;
    daemon.keys = Some(keys(K1));
    make_live_signed(&h, &mut daemon).await;

    // The daemon dies; the forger carries on with its epoch and sequence.
    let mut forger = Publisher::new(&redis).await;
    forger.epoch = daemon.epoch;
    forger.seq = daemon.seq;
    let stop = Arc::new(AtomicBool::new(false));
    let forging = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                // Alternately unsigned and signed with a key of the right id but not the key.
                forger.keys = (n % 2 == 1).then(|| keys(FORGED_K1));
                forger.heartbeat().await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await; // the forger's pace
            }
        })
    };
    let gone = Instant::now();
    wait_until("not live", timeout * 3, || async { !h.is_live() })
        .await
        .expect("forged heartbeats kept the handle live");
    assert!(gone.elapsed() < timeout * 3);
    let hooks = h.test_hooks();
    wait_until("forgeries counted", DEADLINE, || async {
        hooks.count(HookEvent::MessageRejected("stream", "unsigned")) > 0
            && hooks.count(HookEvent::MessageRejected("stream", "bad_mac")) > 0
    })
    .await
    .expect("each kind of forgery is counted");
    stop.store(true, Ordering::Relaxed);
    forging.await.expect("forger");
    assert!(!h.is_live());
}

/// Heartbeats recorded from an earlier daemon run (another epoch) and published again leave a
/// fresh process not live: they are older than `max_clock_skew + heartbeat_timeout`. And one
/// accepted heartbeat published again is refused as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_heartbeats_are_refused() {
    let redis = RedisServer::start().expect("redis");
    let timeout = Duration::from_millis(500);
    let skew = Duration::from_millis(200);
    let mut old_run = Publisher::new(&redis).await;
    old_run.keys = Some(keys(K1));
    let recorded: Vec<Vec<u8>> = (0..3).map(|_| old_run.heartbeat_bytes()).collect();
    let recorded_at = Instant::now();
    wait_until(
        "the recording is older than the window",
        DEADLINE,
        || async { recorded_at.elapsed() > skew + timeout },
    )
    .await
    .unwrap();

    let h = signed_builder(&redis, timeout)
        .signing_keys(keys(K1))
        .max_clock_skew(skew)
        .build()
        .await
        .expect("handle");
    let channel = Naming::default().invalidation_channel();
    for bytes in &recorded {
        publish_on(&redis, &channel, bytes).await;
    }
    let hooks = h.test_hooks();
    wait_until("the replays are refused", DEADLINE, || async {
        hooks.count(HookEvent::MessageRejected("stream", "stale")) >= 3
    })
    .await
    .expect("old heartbeats refused as stale");
    assert!(
        !h.is_live(),
        "a replay of an earlier run made a process live"
    );

    // A live handle: the daemon's last heartbeat, published again, is a replay.
    let mut daemon = Publisher::new(&redis).await;
    daemon.keys = Some(keys(K1));
    make_live_signed(&h, &mut daemon).await;
    let last = daemon.heartbeat_bytes();
    publish_on(&redis, &channel, &last).await;
    publish_on(&redis, &channel, &last).await;
    wait_until("the second copy is refused", DEADLINE, || async {
        hooks.count(HookEvent::MessageRejected("stream", "replayed")) >= 1
    })
    .await
    .expect("a replayed heartbeat is refused");
}

/// A rotation in three steps (every process accepts both keys; the daemon signs with the new
/// one; the old one is removed), through a key file the handle re-reads, loses no liveness and
/// flushes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_key_rotation_loses_no_liveness() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys");
    std::fs::write(&file, K1).unwrap();
    let h = signed_builder(&redis, Duration::from_secs(3))
        .signing_keys_file(&file)
        .build()
        .await
        .expect("handle");
    let mut daemon = Publisher::new(&redis).await;
    daemon.keys = Some(keys(K1));
    make_live_signed(&h, &mut daemon).await;
    let hooks = h.test_hooks();
    let flushes = |hooks: &walcache::hooks::Hooks| {
        [
            "gap",
            "epoch_change",
            "heartbeat_silence",
            "undecodable",
            "reconnect",
        ]
        .iter()
        .map(|r| hooks.count(HookEvent::L1Flush(r)))
        .sum::<u64>()
    };
    let before = flushes(hooks);

    // Liveness is watched the whole time, between heartbeats every 20 ms.
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (h, lost, stop) = (h.clone(), Arc::clone(&lost), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !h.is_live() {
                    lost.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await; // the watcher's poll rate
            }
        })
    };
    let step = |keys_now: &str| {
        // A later modification time than the last read, whatever the file system's clock
        // granularity: written, then touched one second ahead.
        std::fs::write(&file, keys_now).unwrap();
        let t = std::time::SystemTime::now() + Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(t)
            .unwrap();
    };
    // 1. Accept the new key too.
    step(&format!("{K1}\n{K2}"));
    wait_until("both keys accepted", DEADLINE, || {
        let ids = h.signing_key_ids();
        let heartbeat = daemon.heartbeat_bytes();
        let redis = &redis;
        async move {
            publish_on(redis, &Naming::default().invalidation_channel(), &heartbeat).await;
            ids == ["k1", "k2"]
        }
    })
    .await
    .expect("the file is re-read");
    // 2. The daemon signs with the new key.
    daemon.keys = Some(keys(&format!("{K2},{K1}")));
    for _ in 0..10 {
        daemon.heartbeat().await;
    }
    // 3. The old key goes.
    step(K2);
    wait_until("only the new key accepted", DEADLINE, || {
        let ids = h.signing_key_ids();
        let heartbeat = daemon.heartbeat_bytes();
        let redis = &redis;
        async move {
            publish_on(redis, &Naming::default().invalidation_channel(), &heartbeat).await;
            ids == ["k2"]
        }
    })
    .await
    .expect("the file is re-read again");
    daemon.heartbeat().await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    assert!(
        !lost.load(Ordering::Relaxed),
        "liveness was lost during the rotation"
    );
    assert_eq!(flushes(hooks), before, "L1 was flushed during the rotation");
    assert_eq!(
        hooks.count(HookEvent::MessageRejected("stream", "unknown_key")),
        0
    );
    // Messages signed with the old key are now refused.
    daemon.keys = Some(keys(K1));
    daemon.heartbeat().await;
    wait_until("the old key refused", DEADLINE, || async {
        hooks.count(HookEvent::MessageRejected("stream", "unknown_key")) >= 1
    })
    .await
    .expect("the removed key is refused");
}

/// The second case: garbage, forgeries and unsigned messages on the application
/// channel change no process's liveness and flush nothing (on the previous code one
/// undecodable message flushed every L1 and ended liveness). A flush signed with the key is
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_unauthorised_messages_on_the_app_channel_change_nothing() {
    let redis = RedisServer::start().expect("redis");
    let h = signed_builder(&redis, Duration::from_secs(3))
        .signing_keys(keys(K1))
        .build()
        .await
        .expect("handle");
    let mut daemon = Publisher::new(&redis).await;
    daemon.keys = Some(keys(K1));
    make_live_signed(&h, &mut daemon).await;
    let ns = namespace("appsigned");
    let cache = h.cache::<i64, i64>(&ns).build().unwrap();
    cache
        .try_get_with(&1, async { Ok::<_, LoadError>(1) })
        .await
        .unwrap();
    assert!(cache.contains_in_l1(&1));
    let app = Naming::default().app_channel();
    let flush = Message::new(42, 0, Body::Flush(vec![ns.clone()]));
    let mut with_time = flush.clone();
    with_time.sent_at_micros = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    publish_on(&redis, &app, b"\x00garbage").await;
    publish_on(&redis, &app, &with_time.encode()).await;
    publish_on(&redis, &app, &keys(FORGED_K1).sign(&with_time, &app)).await;
    // Signed for the daemon's channel, replayed on the application channel.
    publish_on(
        &redis,
        &app,
        &keys(K1).sign(&with_time, &Naming::default().invalidation_channel()),
    )
    .await;
    let hooks = h.test_hooks();
    wait_until("all four refused", DEADLINE, || async {
        ["undecodable", "unsigned", "bad_mac"]
            .iter()
            .map(|r| hooks.count(HookEvent::MessageRejected("app", r)))
            .sum::<u64>()
            >= 4
    })
    .await
    .expect("the app channel's rejects are counted");
    assert!(h.is_live(), "liveness ended");
    assert!(cache.contains_in_l1(&1), "L1 was flushed");
    // The same flush signed with the key is applied.
    publish_on(&redis, &app, &keys(K1).sign(&with_time, &app)).await;
    wait_until("the signed flush applied", DEADLINE, || async {
        !cache.contains_in_l1(&1)
    })
    .await
    .expect("a signed app flush is applied");
    assert!(h.is_live());
}

/// Application flushes of a namespace are coalesced: a service calling `invalidate_all` in a
/// loop makes each other process flush at most once per window, and the last request is
/// still applied (at the window's end), so nothing filled before it survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_flushes_are_coalesced_never_dropped() {
    let redis = RedisServer::start().expect("redis");
    let mut daemon = Publisher::new(&redis).await;
    daemon.keys = Some(keys(K1));
    let a = signed_builder(&redis, Duration::from_secs(3))
        .signing_keys(keys(K1))
        .build()
        .await
        .expect("a");
    let b = signed_builder(&redis, Duration::from_secs(3))
        .signing_keys(keys(K1))
        .build()
        .await
        .expect("b");
    make_live_signed(&a, &mut daemon).await;
    make_live_signed(&b, &mut daemon).await;
    let ns = namespace("coalesce");
    let ca = a.cache::<i64, i64>(&ns).build().unwrap();
    let cb = b.cache::<i64, i64>(&ns).build().unwrap();
    let flushes_of_b = || b.test_hooks().count(HookEvent::AppFlush);
    for _ in 0..20 {
        ca.invalidate_all().await.unwrap();
    }
    // b fills after the burst; the held-back flush (the burst's last) still comes after it.
    wait_until("the first flush applied in b", DEADLINE, || async {
        flushes_of_b() >= 1
    })
    .await
    .unwrap();
    wait_until("the burst's last flush applied in b", DEADLINE, || async {
        flushes_of_b() >= 2
    })
    .await
    .unwrap();
    assert!(
        flushes_of_b() <= 3,
        "20 requests in a burst applied {} times",
        flushes_of_b()
    );
    cb.try_get_with(&1, async { Ok::<_, LoadError>(1) })
        .await
        .unwrap();
    ca.invalidate_all().await.unwrap();
    wait_until("a later request is applied too", DEADLINE, || async {
        !cb.contains_in_l1(&1)
    })
    .await
    .expect("never dropped");
}

//! Many namespaces: a daemon with one rule (and one table) per namespace, and a handle with
//! one cache per namespace, against the same with one namespace.
//!
//! - *caches*: building the handle's caches, one per namespace;
//! - *daemon start*: `walcached::pipeline::run` until streaming, and until caught up (its first
//!   heartbeat may go out), the slot and publication made beforehand;
//! - *heartbeat*: the bytes of one heartbeat on the channel (it names every namespace it
//!   certifies), heard by a plain subscriber, and the daemon's `heartbeat` stage per heartbeat
//!   (one script that checks every namespace's marker, and the PUBLISH);
//! - *re-subscribe*: the handle's pub/sub connection killed (`CLIENT KILL ID`) until the handle
//!   is live again: it reconnects, flushes L1, GETs each namespace's generation one after
//!   another, then waits for the next heartbeat;
//! - *gap*: one data message dropped on its way to the handle by the test kit's TCP proxy;
//!   from the handle's loss of liveness (the next heartbeat shows the gap) until it is live
//!   again: it flushes L1, GETs every generation again, then waits for the next heartbeat.
//!   The handle reaches Redis through the proxy, so each of its round trips has one more
//!   loopback hop. An epoch change (a daemon restart) runs the same re-learning, but the
//!   handle stays live meanwhile: the invalidations behind it wait instead.
//!
//! The daemon heartbeats every [`HEARTBEAT_MS`] here (250 ms by default), so that waiting for
//! the next heartbeat adds little to the two liveness measurements.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use walcache::{Cache, Walcache};
use walcache_protocol::Message;
use walcache_testkit::TcpProxy;

use super::{pct_f, poll, sorted};
use crate::pipeline::{BoxError, Env, InProcessDaemon};
use crate::Mode;

/// The daemon's heartbeat interval in this measurement.
pub(crate) const HEARTBEAT_MS: u64 = 10;
/// The handles' heartbeat timeout: well above the few heartbeats the gap drops.
const HANDLE_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// One configuration: `namespaces` rules and caches.
pub(crate) struct NamespacesRow {
    pub(crate) namespaces: usize,
    /// Building the handle's caches, one per namespace (ms).
    pub(crate) caches_ms: f64,
    /// The daemon's start until streaming, and until caught up (s).
    pub(crate) daemon_streaming_s: f64,
    pub(crate) daemon_caught_up_s: f64,
    /// Bytes of a heartbeat message on the channel (the largest heard).
    pub(crate) heartbeat_bytes: usize,
    /// The daemon's `heartbeat` stage: total seconds and count over the window.
    pub(crate) heartbeat_s: f64,
    pub(crate) heartbeats: u64,
    /// The window the heartbeats were counted over (s).
    pub(crate) window_s: f64,
    /// Pub/sub connection killed → live again, per repetition (ms, sorted).
    pub(crate) resubscribe_ms: Vec<f64>,
    /// Gap detected (not live) → live again, per repetition (ms, sorted).
    pub(crate) gap_ms: Vec<f64>,
}

impl NamespacesRow {
    /// The daemon's µs per heartbeat.
    pub(crate) fn heartbeat_us(&self) -> f64 {
        self.heartbeat_s / self.heartbeats.max(1) as f64 * 1e6
    }
}

pub(crate) struct NamespacesResult {
    pub(crate) rows: Vec<NamespacesRow>,
    pub(crate) reps: usize,
}

/// The namespace (and table) of rule `i`.
fn ns_name(i: usize) -> String {
    format!("scale_ns_{i:03}")
}

pub(crate) fn run(env: &Env<'_>, mode: Mode) -> Result<NamespacesResult, BoxError> {
    let max = mode.scale_namespaces;
    // Every table exists before any slot: one batch of CREATE TABLE.
    let mut ddl = String::new();
    for i in 0..max {
        let _ = writeln!(
            ddl,
            "CREATE TABLE {} (id bigint PRIMARY KEY, v int NOT NULL);",
            ns_name(i)
        );
    }
    let _ = writeln!(ddl, "INSERT INTO {} VALUES (0, 0);", ns_name(0));
    env.sql(&ddl)?;
    let mut rows = Vec::new();
    for n in [1, max] {
        rows.push(one(env, mode, n)?);
    }
    Ok(NamespacesResult {
        rows,
        reps: mode.scale_reps,
    })
}

fn one(env: &Env<'_>, mode: Mode, n: usize) -> Result<NamespacesRow, BoxError> {
    let slot = format!("scale_ns{n}");
    let publication = format!("scale_ns{n}_pub");
    let tables: Vec<String> = (0..n).map(ns_name).collect();
    env.sql(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE {} WITH (publish_via_partition_root = true)",
        tables.join(", ")
    ))?;
    env.create_slot(&slot, "pgoutput")?;
    // One rule per table and namespace.
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let toml = format!(
        "{}\n[stream]\nheartbeat_interval_ms = {HEARTBEAT_MS}\n",
        env.daemon_toml_tables(&slot, &publication, &tables)
    );

    let started = Instant::now();
    let mut daemon = InProcessDaemon::start(env.daemon_rt, &toml)?;
    let streaming =
        daemon.wait_noting_streaming("the daemon to catch up", started, |s| s.is_caught_up())?;
    let caught_up = started.elapsed();

    let (heartbeat_bytes, heartbeat_s, heartbeats, window_s) = heartbeats(env, mode)?;
    let resubscribe_ms = resubscribe(env, mode, n)?;
    let (caches_ms, gap_ms) = gaps(env, mode, &mut daemon, n)?;
    daemon.stop()?;
    env.drop_slot(&slot)?;
    env.sql(&format!("DROP PUBLICATION {publication}"))?;
    let row = NamespacesRow {
        namespaces: n,
        caches_ms,
        daemon_streaming_s: streaming.as_secs_f64(),
        daemon_caught_up_s: caught_up.as_secs_f64(),
        heartbeat_bytes,
        heartbeat_s,
        heartbeats,
        window_s,
        resubscribe_ms: sorted(resubscribe_ms),
        gap_ms: sorted(gap_ms),
    };
    eprintln!(
        "suite: scale: {n} namespaces: caches {:.1} ms, daemon streaming {:.2} s / caught up \
         {:.2} s, heartbeat {} B, {:.0} µs ({} in {:.1} s), re-subscribe p50 {:.1} ms, gap p50 \
         {:.1} ms{}",
        row.caches_ms,
        row.daemon_streaming_s,
        row.daemon_caught_up_s,
        row.heartbeat_bytes,
        row.heartbeat_us(),
        row.heartbeats,
        row.window_s,
        pct_f(&row.resubscribe_ms, 0.5),
        pct_f(&row.gap_ms, 0.5),
        crate::caveat::figure_label()
    );
    Ok(row)
}

/// Listen to the channel for a window: the largest heartbeat's bytes, and the daemon's
/// heartbeat stage (total seconds, count) and the window (s).
fn heartbeats(env: &Env<'_>, mode: Mode) -> Result<(usize, f64, u64, f64), BoxError> {
    let largest = Arc::new(Mutex::new(0usize));
    let pubsub = env.invalidation_pubsub()?;
    let listener = {
        let largest = Arc::clone(&largest);
        env.rt.spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let bytes = m.get_payload_bytes();
                if Message::decode(bytes).is_ok_and(|m| m.is_heartbeat()) {
                    let mut l = largest.lock().expect("not poisoned");
                    *l = (*l).max(bytes.len());
                }
            }
        })
    };
    let window = if mode.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    let before = crate::stages::Totals::now();
    let start = Instant::now();
    // The window is the measurement: heartbeats are counted over it, not waited for.
    std::thread::sleep(window);
    let totals = crate::stages::Totals::now().since(&before);
    let window_s = start.elapsed().as_secs_f64();
    listener.abort();
    let (sum, count) = crate::stages::stage(&totals, "heartbeat");
    let bytes = *largest.lock().expect("not poisoned");
    if bytes == 0 {
        return Err("no heartbeat heard on the channel".into());
    }
    Ok((bytes, sum, count, window_s))
}

/// A handle with one cache per namespace.
struct Probe {
    handle: Walcache,
    /// Kept for their namespaces: the handle re-learns the generation of each.
    _caches: Vec<Cache<i64, i64>>,
    /// How long building the caches took (ms).
    caches_ms: f64,
}

/// A handle following the stream through `redis_url`, live, with one cache per namespace.
fn handle_with_caches(env: &Env<'_>, redis_url: &str, n: usize) -> Result<Probe, BoxError> {
    let handle = env.rt.block_on(
        Walcache::builder()
            .allow_unsigned()
            .redis_url(redis_url)
            .heartbeat_timeout(HANDLE_HEARTBEAT_TIMEOUT)
            .reconnect_backoff(Duration::from_millis(1), Duration::from_millis(10))
            .build(),
    )?;
    let t = Instant::now();
    let caches = (0..n)
        .map(|i| {
            handle
                .cache::<i64, i64>(&ns_name(i))
                .max_capacity(1000)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let caches_ms = t.elapsed().as_secs_f64() * 1e3;
    poll("the handle to be live", || Ok(handle.is_live()))?;
    Ok(Probe {
        handle,
        _caches: caches,
        caches_ms,
    })
}

/// The ids of the pub/sub clients subscribed to two channels (handles': the daemon's and the
/// application's).
fn handle_pubsub_clients(env: &Env<'_>) -> Result<Vec<String>, BoxError> {
    let list: String = env.rt.block_on(async {
        let mut conn = env
            .redis
            .client()
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async::<String>(&mut conn)
            .await
    })?;
    Ok(list
        .lines()
        .filter_map(|line| {
            let fields: HashMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            (fields.get("sub") == Some(&"2")).then(|| fields.get("id").map(|id| (*id).to_owned()))
        })
        .flatten()
        .collect())
}

/// Kill the handle's pub/sub connection, repeatedly: killed → live again (ms).
fn resubscribe(env: &Env<'_>, mode: Mode, n: usize) -> Result<Vec<f64>, BoxError> {
    // Every handle with a Redis URL subscribes, the suite's earlier ones too: the one to kill
    // is the one that was not there before this handle.
    let others: HashSet<String> = handle_pubsub_clients(env)?.into_iter().collect();
    let probe = handle_with_caches(env, &env.redis.url(), n)?;
    let handle = &probe.handle;
    let mut conn = env
        .rt
        .block_on(env.redis.client().get_multiplexed_async_connection())?;
    let mut out = Vec::new();
    for _ in 0..mode.scale_reps {
        poll("the handle to be live", || Ok(handle.is_live()))?;
        // A handle dropped a moment ago may still be disconnecting.
        let mut ids = Vec::new();
        poll("one new handle's pub/sub client", || {
            ids = handle_pubsub_clients(env)?;
            ids.retain(|id| !others.contains(id));
            Ok(ids.len() == 1)
        })
        .map_err(|e| format!("{e}: found {ids:?}"))?;
        let id = &ids[0];
        let killed = Instant::now();
        let n_killed: i64 = env.rt.block_on(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut conn),
        )?;
        if n_killed != 1 {
            return Err(format!("CLIENT KILL ID {id} killed {n_killed} clients").into());
        }
        poll("the handle to notice the kill", || Ok(!handle.is_live()))?;
        let live = poll("the handle to be live again", || Ok(handle.is_live()))?;
        out.push((live - killed).as_secs_f64() * 1e3);
    }
    drop(probe);
    Ok(out)
}

/// Drop one data message on its way to a handle behind the proxy, repeatedly: the handle's
/// loss of liveness (the gap seen) → live again (ms). Also returns how long building its
/// caches took (ms).
fn gaps(
    env: &Env<'_>,
    mode: Mode,
    daemon: &mut InProcessDaemon<'_>,
    n: usize,
) -> Result<(f64, Vec<f64>), BoxError> {
    let proxy = TcpProxy::start(([127, 0, 0, 1], env.redis.port()).into())?;
    let probe = handle_with_caches(env, &proxy.redis_url(), n)?;
    let handle = &probe.handle;
    let update = format!("UPDATE {} SET v = v + 1 WHERE id = 0", ns_name(0));
    let mut out = Vec::new();
    for _ in 0..mode.scale_reps {
        poll("the handle to be live", || Ok(handle.is_live()))?;
        let seq = daemon.status.published_seq();
        proxy.set_drop_pubsub_messages(true);
        env.sql(&update)?;
        daemon.wait("the daemon to publish the change", |s| {
            s.published_seq() > seq
        })?;
        // Frames reach the proxy in order: once one more is dropped after the data message
        // went out, the data message was dropped too (it went before, while dropping).
        let dropped = proxy.stats().pubsub_messages_dropped;
        poll("the proxy to drop a message after the change", || {
            Ok(proxy.stats().pubsub_messages_dropped > dropped)
        })?;
        proxy.set_drop_pubsub_messages(false);
        let lost = poll("the handle to see the gap", || Ok(!handle.is_live()))?;
        let live = poll("the handle to be live again", || Ok(handle.is_live()))?;
        out.push((live - lost).as_secs_f64() * 1e3);
    }
    let caches_ms = probe.caches_ms;
    drop(probe);
    drop(proxy);
    Ok((caches_ms, out))
}

//! The daemon's full refresh over many namespaces: one cycle of
//! `walcached::refresh::run_cycle` (the code the daemon's schedule and `walcached refresh`
//! run) over `mode.refresh_keys` value keys spread evenly over 1 … N namespaces, on a Redis of
//! its own that holds nothing else, with the delete rate unthrottled (the default 5,000
//! deletes/s would make every cycle at least keys / 5,000 s long by design). The values are
//! written through a walcache handle (a read through a loader) before each cycle; the cycle deletes
//! them all (every one was filled before it began). Redis's `INFO commandstats` counts the
//! cycle's SCAN calls.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::runtime::Runtime;
use walcache::Walcache;
use walcache_protocol::Naming;
use walcache_testkit::RedisServer;
use walcached::refresh::{run_cycle, RefreshConfig, RefreshProgress};

use crate::pipeline::BoxError;
use crate::Mode;

/// Deletes per second of the measured cycles: no limit in practice.
const UNTHROTTLED: u64 = 1_000_000_000;

/// One cycle.
pub(crate) struct RefreshRow {
    pub(crate) namespaces: usize,
    pub(crate) keys: u64,
    pub(crate) seconds: f64,
    pub(crate) keys_scanned: u64,
    pub(crate) keys_deleted: u64,
    /// SCAN calls Redis answered during the cycle.
    pub(crate) scan_calls: u64,
}

pub(crate) struct RefreshResult {
    pub(crate) rows: Vec<RefreshRow>,
    /// `COUNT` of each SCAN.
    pub(crate) scan_count: u64,
}

pub(crate) fn run(rt: &Runtime, mode: Mode) -> Result<RefreshResult, BoxError> {
    let redis = RedisServer::start()?;
    let cfg = RefreshConfig {
        max_deletes_per_second: UNTHROTTLED,
        ..RefreshConfig::default()
    };
    let rows = rt.block_on(async {
        let handle = Walcache::builder()
            .allow_unsigned()
            .redis_url(redis.url())
            .without_invalidation_stream()
            .build()
            .await?;
        let client = redis.client();
        let mut conn = client.get_multiplexed_async_connection().await?;
        let naming = Naming::default();
        let mut rows = Vec::new();
        for &n in mode.refresh_namespaces {
            let names: Vec<String> = (0..n).map(|i| format!("refresh_{n}_{i:03}")).collect();
            let caches = names
                .iter()
                .map(|ns| {
                    handle
                        .cache::<i64, i64>(ns)
                        .max_capacity(1)
                        .time_to_live(Duration::from_secs(3600))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let keys = mode.refresh_keys;
            let caches = &caches;
            futures_util::stream::iter(0..keys)
                .map(|k| async move {
                    let k = i64::try_from(k).unwrap_or(i64::MAX);
                    let cache = &caches[usize::try_from(k).unwrap_or(0) % caches.len()];
                    walcache_benches::fill(cache, &k, k).await
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
            if dbsize < keys {
                return Err(format!("{dbsize} keys in Redis after writing {keys}").into());
            }
            let scans_before = scan_calls(&mut conn).await?;
            let progress = RefreshProgress::default();
            let report = run_cycle(&client, &naming, &names, &cfg, &progress).await?;
            let scans = scan_calls(&mut conn).await? - scans_before;
            let row = RefreshRow {
                namespaces: n,
                keys,
                seconds: report.elapsed.as_secs_f64(),
                keys_scanned: report.keys_scanned,
                keys_deleted: report.keys_deleted,
                scan_calls: scans,
            };
            eprintln!(
                "suite: scale: refresh over {keys} keys in {n} namespaces: {:.3} s, {} SCANs, \
                 {} deleted{}",
                row.seconds,
                row.scan_calls,
                row.keys_deleted,
                crate::caveat::figure_label()
            );
            rows.push(row);
        }
        Ok::<_, BoxError>(rows)
    })?;
    drop(redis);
    Ok(RefreshResult {
        rows,
        scan_count: cfg.scan_count,
    })
}

/// SCAN calls Redis has answered since its start (`INFO commandstats`).
async fn scan_calls(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, BoxError> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    // `cmdstat_scan:calls=12,usec=…`
    let calls = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:"))
        .and_then(|rest| rest.split(',').find_map(|f| f.strip_prefix("calls=")))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(calls)
}

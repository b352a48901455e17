//! Memory: RSS growth per L1 entry, each kind of L1 in a fresh child process.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use walcache::Cache;
use walcache_benches::value_of;

use crate::MEMORY_ENTRIES;

/// RSS growth per entry for each kind of L1, each in a fresh child process.
pub(crate) fn run() -> Vec<(String, f64)> {
    let exe = std::env::current_exe().expect("the suite's own path");
    ["walcache", "moka_i64", "moka_arc_str"]
        .into_iter()
        .map(|kind| {
            let out = std::process::Command::new(&exe)
                .args(["--memory-child", kind])
                .output()
                .expect("run the memory child");
            assert!(out.status.success(), "memory child {kind} failed");
            let bytes: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("the child prints bytes per entry");
            (kind.to_owned(), bytes)
        })
        .collect()
}

/// Resident set size from `/proc/self/statm`, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's resident field");
    pages * 4096
}

/// The memory child: fill one L1 with [`MEMORY_ENTRIES`] 64 B values keyed by `i64`, print the
/// RSS growth per entry.
pub(crate) fn child(kind: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = MEMORY_ENTRIES;
    let keys: Vec<i64> = (0..n as i64).collect();
    let values: Vec<String> = (0..n as i64).map(|id| value_of(64, id)).collect();
    let per_entry = rt.block_on(async {
        match kind {
            "walcache" => {
                let handle = walcache_benches::l1_only_handle().await;
                let cache: Cache<i64, String> = handle
                    .cache("mem")
                    .max_capacity(2 * n)
                    .build()
                    .expect("cache");
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    walcache_benches::fill(&cache, k, v).await.expect("fill");
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
            "moka_i64" => {
                let cache: moka::sync::Cache<i64, String> = moka::sync::Cache::builder()
                    .max_capacity(2 * n)
                    .time_to_live(Duration::from_secs(60))
                    .build();
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    cache.insert(*k, v);
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
            _ => {
                let cache: moka::sync::Cache<Arc<str>, String> = moka::sync::Cache::builder()
                    .max_capacity(2 * n)
                    .time_to_live(Duration::from_secs(60))
                    .build();
                let before = rss();
                for (k, v) in keys.iter().zip(values) {
                    cache.insert(Arc::from(k.to_string()), v);
                }
                cache.run_pending_tasks();
                assert_eq!(cache.entry_count(), n);
                let d = rss() - before;
                black_box(&cache);
                d
            }
        }
    });
    println!("{}", per_entry as f64 / n as f64);
}

//! Instructions per L1 hit, walcache against raw moka (keyed by the `i64`, and keyed by the
//! canonical string walcache keys L1 by: `moka-str`), counted by valgrind (callgrind): unlike
//! wall time, the count does not depend on what else the machine is doing.
//!
//! Run with: `cargo build --release -p walcache-benches --bin l1-instructions`, then
//! `benches/l1_instructions.sh` (runs each mode under callgrind with 0 and N lookups and prints
//! the per-lookup difference).

use std::hint::black_box;
use std::sync::Arc;

const KEYS: i64 = 1000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "walcache".to_owned());
    let lookups: i64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let value: Arc<str> = Arc::from("x".repeat(64));
    match mode.as_str() {
        "moka" => {
            let cache: moka::sync::Cache<i64, Arc<str>> = moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(3600))
                .build();
            for k in 0..KEYS {
                cache.insert(k, Arc::clone(&value));
            }
            cache.run_pending_tasks();
            for i in 0..lookups {
                black_box(cache.get(&(i % KEYS)));
            }
        }
        "moka-str" => {
            // The canonical string key walcache's L1 is keyed by (the key invalidations name,
            // rendered by the daemon from row columns), with walcache's hasher: what a hit
            // costs before anything walcache adds.
            let cache: moka::sync::Cache<Arc<str>, Arc<str>, foldhash::fast::RandomState> =
                moka::sync::Cache::builder()
                    .max_capacity(10_000)
                    .time_to_live(std::time::Duration::from_secs(3600))
                    .build_with_hasher(foldhash::fast::RandomState::default());
            for k in 0..KEYS {
                cache.insert(Arc::from(walcache::key_of(&k)), Arc::clone(&value));
            }
            cache.run_pending_tasks();
            let mut key = walcache::KeyBuilder::new();
            for i in 0..lookups {
                key.clear();
                walcache::ToKey::write_key(&(i % KEYS), &mut key);
                black_box(cache.get(key.as_str()));
            }
        }
        _ => {
            let handle = walcache_benches::l1_only_handle().await;
            let cache = handle
                .cache::<i64, Arc<str>>("bench")
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(3600))
                .build()
                .expect("cache");
            for k in 0..KEYS {
                walcache_benches::fill(&cache, &k, Arc::clone(&value))
                    .await
                    .expect("fill");
            }
            cache.run_pending_tasks();
            for i in 0..lookups {
                black_box(cache.get(&(i % KEYS)).await);
            }
        }
    }
}

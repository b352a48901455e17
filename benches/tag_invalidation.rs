//! What invalidating a tag carried by 1 M values costs the reads of everyone else.
//!
//! 64 callers read other keys from Redis the way an L2 hit does (one `GET` each, on a shared
//! multiplexed connection per 8 callers) while one tag with 1,000,000 values is invalidated,
//! three ways in the same run on the same private Redis:
//!
//! - `idle`: no invalidation (the floor);
//! - `member sets (before)`: the design this replaced — one script that `SMEMBERS` the tag's
//!   member set and deletes every member, 500 per `DEL` — replayed here on 1 M members;
//! - `versions (after)`: walcache's `invalidate_tag` on a namespace holding 1 M values tagged
//!   with it: one `HSET` in Redis; the values stay and are read as misses (checked below).
//!
//! For each, the p50, p99 and max of the reads that began while the invalidation ran (or, for
//! `idle`, over the same window length) and how long the invalidation took.
//!
//! Run with: `cargo run --release -p walcache-benches --bin tag-invalidation` (about a
//! minute; `WALCACHE_BENCH_QUICK=1` uses 20,000 values and its figures do not count).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use walcache_protocol::Naming;
use walcache_testkit::RedisServer;

const READERS: usize = 64;
const CONNECTIONS: usize = 8;
const OTHER_KEYS: u64 = 10_000;
const TAG: &str = "team:7";

/// The old design's tag invalidation, as it ran inside Redis: delete every member, then the set.
const MEMBER_SET_SCRIPT: &str = r"local members = redis.call('SMEMBERS', KEYS[1])
for i = 1, #members, 500 do
  redis.call('DEL', unpack(members, i, math.min(i + 499, #members)))
end
redis.call('DEL', KEYS[1])
return #members";

/// Write `n` keys `{prefix}{i}` holding `value`, 10,000 per script call.
const FILL_SCRIPT: &str = r"for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  redis.call('SET', ARGV[1] .. i, ARGV[4])
  if ARGV[5] ~= '' then redis.call('SADD', ARGV[5], ARGV[1] .. i) end
end
return 1";

struct Window {
    reads: Vec<Duration>,
    invalidation: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn fill(conn: &mut MultiplexedConnection, prefix: &str, n: u64, value: &[u8], set: &str) {
    let script = redis::Script::new(FILL_SCRIPT);
    let mut start = 0;
    while start < n {
        let end = (start + 10_000).min(n) - 1;
        let _: i64 = script
            .arg(prefix)
            .arg(start)
            .arg(end)
            .arg(value)
            .arg(set)
            .invoke_async(conn)
            .await
            .expect("fill");
        start = end + 1;
    }
}

/// Run the readers, start `invalidate` once they are warm, and keep the reads that began
/// while it ran.
async fn measure<F, Fut>(conns: &[MultiplexedConnection], invalidate: F) -> Window
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for r in 0..READERS {
        let mut conn = conns[r % conns.len()].clone();
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = r as u64;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 7919 + 13) % OTHER_KEYS;
                let began = Instant::now();
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(format!("other:{i}"))
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                mine.push((began, began.elapsed()));
            }
            samples.lock().expect("samples").extend(mine);
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // warm-up of the readers, measured below
    let from = Instant::now();
    invalidate().await;
    let invalidation = from.elapsed();
    // The idle case needs a window as long as a real one to compare tails fairly.
    let to = Instant::now().max(from + Duration::from_millis(200));
    tokio::time::sleep_until(to.into()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("reader");
    }
    let mut reads: Vec<Duration> = samples
        .lock()
        .expect("samples")
        .iter()
        .filter(|(began, _)| *began >= from && *began < to)
        .map(|(_, d)| *d)
        .collect();
    reads.sort();
    Window {
        reads,
        invalidation,
    }
}

fn row(name: &str, w: &Window) -> String {
    format!(
        "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.1} |",
        w.reads.len(),
        percentile(&w.reads, 0.5).as_secs_f64() * 1e3,
        percentile(&w.reads, 0.99).as_secs_f64() * 1e3,
        w.reads.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        w.invalidation.as_secs_f64() * 1e3,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = walcache_benches::quick();
    let members: u64 = if quick { 20_000 } else { 1_000_000 };
    let redis = RedisServer::start().expect("redis");
    let client = redis.client();
    let mut conns = Vec::new();
    // No reply timeout: the old design's script blocks Redis for longer than any sensible one
    // (that is what is measured), and a read waiting behind it must be timed, not dropped.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    for _ in 0..CONNECTIONS {
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("connection"),
        );
    }
    let mut admin = conns[0].clone();
    let value = vec![b'x'; 64];
    fill(&mut admin, "other:", OTHER_KEYS, &value, "").await;

    let idle = measure(&conns, || async {}).await;

    eprintln!("tag-invalidation: writing {members} members of the old design's set");
    fill(&mut admin, "old:", members, &value, "old-tag:m").await;
    let before = {
        let mut c = admin.clone();
        measure(&conns, || async move {
            let deleted: i64 = redis::Script::new(MEMBER_SET_SCRIPT)
                .key("old-tag:m")
                .invoke_async(&mut c)
                .await
                .expect("member-set invalidation");
            assert_eq!(u64::try_from(deleted).ok(), Some(members));
        })
        .await
    };

    // The new design: `members` values tagged with TAG in one namespace, filled by walcache.
    let handle = walcache::Walcache::builder()
        .allow_unsigned()
        .redis_url(redis.url())
        .without_invalidation_stream()
        .build()
        .await
        .expect("handle");
    let ns = "tagbench";
    let cache = handle
        .cache::<u64, Vec<u8>>(ns)
        .max_capacity(1)
        .build()
        .expect("cache");
    let names = Naming::default();
    eprintln!(
        "tag-invalidation: filling {members} tagged values through walcache (a sample) and Redis"
    );
    // A handful through the library (lease, stamp, fill), the rest copied from one of them:
    // the invalidation touches none of them either way.
    for k in 0..16 {
        cache
            .try_get_tagged_with(&k, &[TAG], async move {
                Ok::<_, std::convert::Infallible>(vec![b'x'; 64])
            })
            .await
            .expect("tagged fill");
    }
    let sample: Vec<u8> = redis::cmd("GET")
        .arg(names.value_key(ns, 0, 1, "0"))
        .query_async(&mut admin)
        .await
        .expect("GET sample");
    fill(
        &mut admin,
        &names.value_key(ns, 0, 1, "1"),
        members,
        &sample,
        "",
    )
    .await;
    let after = measure(&conns, || async {
        cache.invalidate_tag(TAG).await.expect("invalidate_tag");
    })
    .await;
    assert_eq!(
        cache.get(&0).await,
        None,
        "a value carrying the tag is superseded"
    );

    println!("Reads of other keys while one tag carried by {members} values is invalidated");
    println!("({READERS} callers, {CONNECTIONS} multiplexed connections, one GET each; ms):");
    println!();
    println!("| invalidation | reads | p50 | p99 | max | invalidation took |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("{}", row("none (idle)", &idle));
    println!("{}", row("member sets (before)", &before));
    println!("{}", row("versions (after)", &after));
    if quick {
        println!();
        println!("(quick mode: 20,000 values; these figures do not count)");
    }
}

//! The stampede across OS processes: [`STAMPEDE_PROCESSES`] children of this binary
//! (`--stampede-child`), [`STAMPEDE_READERS`] readers in all, read one cold key at once.
//!
//! Protocol over each child's stdin/stdout (one line each): the child connects (its own
//! `Walcache` handle, PostgreSQL connection and Redis connection) and says `READY`; per round
//! the parent sends `ARM key` and the child spawns its readers, parked on a watch channel, and
//! says `ARMED`; once every child is armed the parent sends `GO` to each (the barrier: no child
//! starts before all are ready, and the `GO`s go out microseconds apart), and each child
//! releases its readers and answers `DONE loads` when all have their value, `loads` being how
//! many times its loader ran in that round.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walcache::{Cache, Walcache};
use walcache_benches::{table, Servers, KEYS};
use walcache_testkit::unique_prefix;

use crate::{Mode, StampedeRow};

/// The hidden subcommand of a stampede child process.
pub(crate) const CHILD_COMMAND: &str = "--stampede-child";
/// Readers in all, and the processes they are spread over.
pub(crate) const STAMPEDE_READERS: usize = 1000;
pub(crate) const STAMPEDE_PROCESSES: usize = 4;
/// The stampede's loader: the SELECT plus this much simulated query time.
pub(crate) const STAMPEDE_LOAD_DELAY: Duration = Duration::from_millis(20);

/// The variants, as named in the report.
pub(crate) const VARIANTS: [&str; 3] = [
    "walcache, Redis lease (default)",
    "walcache, lease_wait(0)",
    "cache-aside by hand",
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to a stampede child");
        self.stdin.flush().expect("flush a stampede child's stdin");
    }

    fn expect(&mut self, word: &str) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read from a stampede child");
        let rest = line
            .trim()
            .strip_prefix(word)
            .unwrap_or_else(|| panic!("a stampede child said {line:?}, expected {word}"));
        rest.trim().to_owned()
    }
}

/// Every variant, `mode.stampede_rounds` rounds each, a fresh key per round.
pub(crate) fn run(mode: Mode, servers: &Servers) -> Vec<StampedeRow> {
    let exe = std::env::current_exe().expect("the suite's own path");
    let per_child = STAMPEDE_READERS / STAMPEDE_PROCESSES;
    let mut next_key = 1_000_000i64;
    let mut rows = Vec::new();
    for (v, variant) in VARIANTS.iter().enumerate() {
        let prefix = unique_prefix();
        let mut children: Vec<Proc> = (0..STAMPEDE_PROCESSES)
            .map(|_| {
                let mut child = Command::new(&exe)
                    .arg(CHILD_COMMAND)
                    .arg(v.to_string())
                    .arg(servers.redis.url())
                    .arg(servers.pg.conn_string(&servers.database))
                    .arg(&prefix)
                    .arg(per_child.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn a stampede child");
                Proc {
                    stdin: child.stdin.take().expect("stdin"),
                    stdout: BufReader::new(child.stdout.take().expect("stdout")),
                    child,
                }
            })
            .collect();
        for c in &mut children {
            c.expect("READY");
        }
        let mut row = StampedeRow {
            variant,
            loads: Vec::new(),
            all_served_ms: Vec::new(),
        };
        for _ in 0..mode.stampede_rounds {
            let k = next_key;
            next_key += 1;
            for c in &mut children {
                c.send(&format!("ARM {k}"));
            }
            for c in &mut children {
                c.expect("ARMED");
            }
            let start = Instant::now();
            for c in &mut children {
                c.send("GO");
            }
            let mut loads = 0u64;
            for c in &mut children {
                loads += c.expect("DONE").parse::<u64>().expect("DONE loads");
            }
            row.all_served_ms.push(start.elapsed().as_secs_f64() * 1e3);
            row.loads.push(loads);
        }
        for mut c in children {
            drop(c.stdin);
            let status = c.child.wait().expect("wait for a stampede child");
            assert!(status.success(), "a stampede child failed: {status}");
        }
        eprintln!("suite: stampede {variant}: loads {:?}", row.loads);
        rows.push(row);
    }
    rows
}

/// A stampede child: `VARIANT REDIS_URL PG_CONN PREFIX READERS`.
pub(crate) fn child(args: &[String]) -> Result<(), BoxError> {
    let [variant, redis_url, pg, prefix, readers] = args else {
        return Err("usage: --stampede-child VARIANT REDIS_URL PG_CONN PREFIX READERS".into());
    };
    let variant: usize = variant.parse()?;
    let readers: usize = readers.parse()?;
    let by_hand = variant == 2;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (cache, db, select, conn) = rt.block_on(async {
        let mut b = Walcache::builder()
            .allow_unsigned()
            .redis_url(redis_url.as_str())
            .key_prefix(prefix)
            .without_invalidation_stream();
        if variant == 1 {
            b = b.lease_wait(Duration::ZERO);
        }
        let handle = b.build().await?;
        let cache: Cache<i64, String> = handle.cache("stampede").build()?;
        let (db, connection) = tokio_postgres::connect(pg, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let select = db
            .prepare(&format!("SELECT body FROM {} WHERE id = $1", table(64)))
            .await?;
        let conn = redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        Ok::<_, BoxError>((Arc::new(cache), Arc::new(db), Arc::new(select), conn))
    })?;
    let loads = Arc::new(AtomicU64::new(0));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY")?;
    stdout.flush()?;
    let mut lines = std::io::stdin().lock().lines();
    while let Some(line) = lines.next() {
        let line = line?;
        let Some(k) = line.strip_prefix("ARM ") else {
            return Err(format!("expected ARM, got {line:?}").into());
        };
        let k: i64 = k.trim().parse()?;
        let before = loads.load(Ordering::Relaxed);
        let (go, ready) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..readers)
            .map(|_| {
                let mut ready = ready.clone();
                let (cache, db, select) =
                    (Arc::clone(&cache), Arc::clone(&db), Arc::clone(&select));
                let (loads, mut conn) = (Arc::clone(&loads), conn.clone());
                let key = format!("{prefix}:aside:{k}");
                rt.spawn(async move {
                    ready.wait_for(|go| *go).await.expect("the GO signal");
                    let load = async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        let row = db.query_one(&*select, &[&(k % KEYS)]).await?;
                        tokio::time::sleep(STAMPEDE_LOAD_DELAY).await;
                        Ok::<String, tokio_postgres::Error>(row.get(0))
                    };
                    if by_hand {
                        let v: Option<String> = redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await
                            .expect("GET");
                        if v.is_none() {
                            let body = load.await.expect("load");
                            let _: () = redis::cmd("SET")
                                .arg(&key)
                                .arg(&body)
                                .arg("PX")
                                .arg(3_600_000)
                                .query_async(&mut conn)
                                .await
                                .expect("SET");
                        }
                    } else {
                        cache.try_get_with(&k, load).await.expect("a read");
                    }
                })
            })
            .collect();
        writeln!(stdout, "ARMED")?;
        stdout.flush()?;
        match lines.next() {
            Some(Ok(l)) if l.trim() == "GO" => {}
            other => return Err(format!("expected GO, got {other:?}").into()),
        }
        go.send(true)?;
        rt.block_on(async {
            for t in tasks {
                t.await?;
            }
            Ok::<_, BoxError>(())
        })?;
        writeln!(stdout, "DONE {}", loads.load(Ordering::Relaxed) - before)?;
        stdout.flush()?;
    }
    Ok(())
}

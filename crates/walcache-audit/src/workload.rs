//! The audited workload: four tables, the caches that read them, readers and writers.
//!
//! | table | writes | read through | key in the history |
//! |---|---|---|---|
//! | `audit_rows(id, version)` | UPDATE | `get_or_load`, namespace `audit_rows`, rule keys `["{id}"]` | `row_key(ROWS, id)` |
//! | `audit_items(id, version)` | INSERT, UPDATE, DELETE | `try_get_optional_with` (cached "not found"), namespace `audit_items`, rule keys `["{id}"]` | `row_key(ITEMS, id)` |
//! | `audit_counters(id, version)` (16 rows) | UPDATE | `try_get_tagged_with` of `sum(version)` under the tag `audit_counters`, namespace `audit_sums`; the rule has no keys, only the tag, bumped in `audit_sums` (`tag_namespaces`) | `row_key(SUM, 0)`, version = the sum |
//! | `audit_parts(id, part, version)`, partitioned by `part = id % 2` | by the `ddl` fault only: TRUNCATE and refill a partition, DETACH and re-ATTACH one, replica identity changes, DROP and re-create the table | `try_get_optional_with`, namespace `audit_parts`, rule keys `["{id}"]` | `row_key(PARTS, id)` |
//! | `audit_filler(id, version)` (10,000 rows) | UPDATE, by `daemon-backlog`'s burst writers only | nobody; the rule keys `["{id}"]` make every change an invalidation the daemon must publish | — |
//!
//! Every write sets a version one above the row's last committed one, so each writer must know
//! its rows' state: writer `w` of `n` owns the rows whose `(id - 1) % n == w`, and one more
//! writer owns the counters. That also makes an unknown outcome (the connection broke during
//! the statement, e.g. PostgreSQL restarting) decidable by re-reading the row.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use walcache::{Cache, Freshness, Walcache};
use walcache_audit::{now_ns, row_key, Commit, Read, Zipf};

use crate::BoxError;

/// The library's and the daemon's Redis key prefix.
pub(crate) const KEY_PREFIX: &str = "audit";
/// Table numbers in [`row_key`].
pub(crate) const ROWS: u16 = 1;
pub(crate) const ITEMS: u16 = 2;
pub(crate) const SUM: u16 = 3;
pub(crate) const PARTS: u16 = 4;
/// Rows of `audit_counters`.
pub(crate) const COUNTERS: i64 = 16;
/// The tag the counters' rule bumps, and the sum's cache entry carries.
pub(crate) const COUNTERS_TAG: &str = "audit_counters";
pub(crate) const NS_ROWS: &str = "audit_rows";
pub(crate) const NS_ITEMS: &str = "audit_items";
pub(crate) const NS_SUMS: &str = "audit_sums";
pub(crate) const NS_PARTS: &str = "audit_parts";
/// The table `daemon-backlog`'s burst writes: mapped by the daemon (one key per row, so every
/// change is an invalidation it must publish) and read by nobody, so the checked tables keep
/// their writers' version model.
pub(crate) const FILLER: &str = "audit_filler";
/// Rows of `audit_filler`.
pub(crate) const FILLER_ROWS: i64 = 10_000;

/// The table names in reports.
pub(crate) fn table_name(table: u16) -> &'static str {
    match table {
        ROWS => "audit_rows",
        ITEMS => "audit_items",
        SUM => "sum(audit_counters)",
        PARTS => "audit_parts",
        _ => "?",
    }
}

/// The schema and the initial rows: `audit_rows` all present, `audit_items` odd ids present
/// (even ids absent until inserted), 16 counters. Returns the initial history.
pub(crate) async fn create_tables(
    admin: &tokio_postgres::Client,
    rows: usize,
    t_ns: u64,
) -> Result<Vec<Commit>, BoxError> {
    admin
        .batch_execute(&format!(
            "CREATE TABLE audit_rows (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO audit_rows SELECT g, 0 FROM generate_series(1, {rows}) g;
             CREATE TABLE audit_items (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO audit_items SELECT g, 0 FROM generate_series(1, {rows}, 2) g;
             CREATE TABLE audit_counters (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO audit_counters SELECT g, 0 FROM generate_series(1, {COUNTERS}) g;
             CREATE TABLE {FILLER} (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO {FILLER} SELECT g, 0 FROM generate_series(1, {FILLER_ROWS}) g;
             {}",
            parts_schema(rows, 0)
        ))
        .await?;
    let mut history = Vec::with_capacity(2 * rows + 1);
    for id in 1..=rows as i64 {
        history.push(Commit::at(row_key(ROWS, id), 0, t_ns));
        history.push(Commit {
            absent: id % 2 == 0,
            ..Commit::at(row_key(ITEMS, id), 0, t_ns)
        });
    }
    history.push(Commit::at(row_key(SUM, 0), 0, t_ns));
    history.extend((1..=rows as i64).map(|id| Commit::at(row_key(PARTS, id), 0, t_ns)));
    Ok(history)
}

/// `audit_parts` created with its two partitions (`part = id % 2`) and rows `1..=rows` at
/// `version`: the schema at start and after the `ddl` fault drops and re-creates it.
pub(crate) fn parts_schema(rows: usize, version: i64) -> String {
    format!(
        "CREATE TABLE audit_parts (id bigint NOT NULL, part int NOT NULL, version bigint NOT NULL,
                                   PRIMARY KEY (id, part)) PARTITION BY LIST (part);
         CREATE TABLE audit_parts_0 PARTITION OF audit_parts FOR VALUES IN (0);
         CREATE TABLE audit_parts_1 PARTITION OF audit_parts FOR VALUES IN (1);
         INSERT INTO audit_parts SELECT g, g % 2, {version} FROM generate_series(1, {rows}) g;"
    )
}

/// The daemon's rules for the three audited tables and the filler.
pub(crate) fn rules() -> Vec<walcache_audit::daemon::RuleSpec> {
    use walcache_audit::daemon::RuleSpec;
    vec![
        RuleSpec {
            table: "public.audit_rows".into(),
            namespace: NS_ROWS.into(),
            keys: vec!["{id}".into()],
            tags: vec![],
            tag_namespaces: vec![],
        },
        RuleSpec {
            table: "public.audit_items".into(),
            namespace: NS_ITEMS.into(),
            keys: vec!["{id}".into()],
            tags: vec![],
            tag_namespaces: vec![],
        },
        RuleSpec {
            table: "public.audit_counters".into(),
            namespace: "audit_counters".into(),
            keys: vec![],
            tags: vec![COUNTERS_TAG.into()],
            // The sums are cached in their own namespace: the tag is bumped there.
            tag_namespaces: vec![NS_SUMS.into()],
        },
        RuleSpec {
            table: "public.audit_parts".into(),
            namespace: NS_PARTS.into(),
            keys: vec!["{id}".into()],
            tags: vec![],
            tag_namespaces: vec![],
        },
        RuleSpec {
            table: format!("public.{FILLER}"),
            namespace: FILLER.into(),
            keys: vec!["{id}".into()],
            tags: vec![],
            tag_namespaces: vec![],
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// A PostgreSQL connection that comes back after a restart

/// A client that reconnects (at most every 50 ms) once its connection has closed.
pub(crate) struct Db {
    conn: String,
    client: Option<tokio_postgres::Client>,
    next_try_ns: u64,
}

impl Db {
    /// Connect now; later reconnects happen on demand.
    pub(crate) async fn connect(conn: &str) -> Result<Db, BoxError> {
        let mut db = Db {
            conn: conn.to_owned(),
            client: None,
            next_try_ns: 0,
        };
        db.client = Some(connect(conn).await?);
        Ok(db)
    }

    /// The client, reconnecting if the old one is closed; `None` while PostgreSQL is away.
    pub(crate) async fn client(&mut self) -> Option<&tokio_postgres::Client> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return self.client.as_ref();
        }
        self.client = None;
        let now = now_ns();
        if now < self.next_try_ns {
            return None;
        }
        self.next_try_ns = now + 50_000_000;
        match tokio::time::timeout(Duration::from_secs(2), connect(&self.conn)).await {
            Ok(Ok(c)) => self.client = Some(c),
            Ok(Err(_)) | Err(_) => return None,
        }
        self.client.as_ref()
    }

    /// Like [`client`](Self::client), waiting (polling every 10 ms) for up to `deadline`.
    pub(crate) async fn client_within(
        &mut self,
        deadline: Duration,
    ) -> Result<&tokio_postgres::Client, BoxError> {
        let until = now_ns() + deadline.as_nanos() as u64;
        while self.client().await.is_none() {
            if now_ns() > until {
                return Err(format!("PostgreSQL unreachable for {deadline:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.client
            .as_ref()
            .ok_or_else(|| "PostgreSQL connection lost".into())
    }

    /// `SELECT version FROM {table} WHERE id = $1`, retried (reconnecting) for up to 60 s:
    /// how a writer resolves a statement whose outcome it does not know.
    pub(crate) async fn reread(&mut self, table: &str, id: i64) -> Result<Option<i64>, BoxError> {
        let until = now_ns() + 60_000_000_000;
        let sql = format!("SELECT version FROM {table} WHERE id = $1");
        loop {
            let client = self.client_within(Duration::from_secs(60)).await?;
            match client.query_opt(&sql, &[&id]).await {
                Ok(row) => return Ok(row.map(|r| r.get(0))),
                Err(e) if now_ns() > until => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

async fn connect(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// Readers

/// A reader's loader failed: PostgreSQL's error, or no connection at all.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The query failed.
    Pg(tokio_postgres::Error),
    /// PostgreSQL is unreachable (restarting).
    Down,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Pg(e) => write!(f, "{e}"),
            LoadError::Down => f.write_str("PostgreSQL is unreachable"),
        }
    }
}

impl std::error::Error for LoadError {}

/// One reader's handle and caches.
pub(crate) struct Reader {
    /// The handle (one per reader: its own Redis connections and subscriber).
    pub(crate) handle: Walcache,
    rows: Cache<i64, i64>,
    items: Cache<i64, i64>,
    sums: Cache<i64, i64>,
    parts: Cache<i64, i64>,
}

/// What the readers are configured with.
#[derive(Debug, Clone)]
pub(crate) struct ReaderConfig {
    /// The library's Redis URL (through the fault proxy).
    pub(crate) redis_url: String,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) freshness: Freshness,
}

impl Reader {
    /// A handle and the three caches.
    pub(crate) async fn new(config: &ReaderConfig) -> Result<Reader, BoxError> {
        let handle = Walcache::builder()
            .allow_unsigned()
            .redis_url(&config.redis_url)
            .key_prefix(KEY_PREFIX)
            .heartbeat_timeout(config.heartbeat_timeout)
            .freshness(config.freshness)
            .build()
            .await?;
        Ok(Reader {
            rows: handle.cache(NS_ROWS).build()?,
            items: handle
                .cache(NS_ITEMS)
                .negative_ttl(Duration::from_secs(60))
                .build()?,
            sums: handle.cache(NS_SUMS).build()?,
            parts: handle
                .cache(NS_PARTS)
                .negative_ttl(Duration::from_secs(60))
                .build()?,
            handle,
        })
    }

    /// Wait until the handle's stream is live.
    pub(crate) async fn wait_live(&self, deadline: Duration) -> Result<(), BoxError> {
        walcache_testkit::wait_until("the invalidation stream to be live", deadline, || async {
            self.handle.is_live()
        })
        .await?;
        Ok(())
    }

    /// Read row `id` of `table` through its cache; the loaders read the primary in autocommit.
    async fn read(&self, db: &mut Db, table: u16, id: i64) -> Result<Option<i64>, walcache::Error> {
        let client = db.client().await;
        match table {
            ROWS => self
                .rows
                .get_or_load(&id, || async move {
                    let c = client.ok_or(LoadError::Down)?;
                    c.query_one("SELECT version FROM audit_rows WHERE id = $1", &[&id])
                        .await
                        .map(|r| r.get::<_, i64>(0))
                        .map_err(LoadError::Pg)
                })
                .await
                .map(Some),
            ITEMS => {
                self.items
                    .try_get_optional_with(&id, async move {
                        let c = client.ok_or(LoadError::Down)?;
                        c.query_opt("SELECT version FROM audit_items WHERE id = $1", &[&id])
                            .await
                            .map(|r| r.map(|r| r.get::<_, i64>(0)))
                            .map_err(LoadError::Pg)
                    })
                    .await
            }
            PARTS => {
                self.parts
                    .try_get_optional_with(&id, async move {
                        let c = client.ok_or(LoadError::Down)?;
                        c.query_opt("SELECT version FROM audit_parts WHERE id = $1", &[&id])
                            .await
                            .map(|r| r.map(|r| r.get::<_, i64>(0)))
                            .map_err(LoadError::Pg)
                    })
                    .await
            }
            _ => self
                .sums
                .try_get_tagged_with(&0, &[COUNTERS_TAG], async move {
                    let c = client.ok_or(LoadError::Down)?;
                    c.query_one("SELECT sum(version)::bigint FROM audit_counters", &[])
                        .await
                        .map(|r| r.get::<_, i64>(0))
                        .map_err(LoadError::Pg)
                })
                .await
                .map(Some),
        }
    }
}

/// Which table a read goes to: 45% rows, 40% items, 10% the sum, 5% parts.
fn pick_table(u: f64) -> u16 {
    if u < 0.45 {
        ROWS
    } else if u < 0.85 {
        ITEMS
    } else if u < 0.95 {
        SUM
    } else {
        PARTS
    }
}

/// Reads at `rate` per second (in 10 ms ticks) until `stop`, calling `sink` per read.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_loop(
    reader: Reader,
    mut db: Db,
    zipf: Zipf,
    rate: f64,
    number: u32,
    stop: Arc<AtomicBool>,
    mut sink: impl FnMut(Result<Read, String>),
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ u64::from(number) ^ now_ns());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut owed = 0.0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        owed += rate / 100.0;
        while owed >= 1.0 && !stop.load(Ordering::Relaxed) {
            owed -= 1.0;
            let table = pick_table(rng.random::<f64>());
            let id = if table == SUM {
                0
            } else {
                zipf.sample(&mut rng)
            };
            let t_ns = now_ns();
            let r = reader.read(&mut db, table, id).await;
            let t_end_ns = now_ns();
            sink(match r {
                Ok(version) => Ok(Read {
                    id: row_key(table, id),
                    version,
                    t_ns,
                    t_end_ns,
                    reader: number,
                }),
                Err(e) => Err(e.to_string()),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writers

/// What a writer did.
#[derive(Debug, Default)]
pub(crate) struct WriterResult {
    /// Committed writes (known outcome, or resolved by re-reading).
    pub(crate) commits: Vec<Commit>,
    /// Statements that failed and were then found committed by re-reading the row.
    pub(crate) unknown_committed: u64,
    /// ... and found not committed.
    pub(crate) unknown_rolled_back: u64,
}

/// The state of one owned row: its last committed version, and whether it exists.
#[derive(Debug, Clone, Copy)]
struct RowState {
    version: i64,
    present: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Update,
    Insert,
    Delete,
}

/// Writer `w` of `writers`: UPDATEs `audit_rows` and INSERTs, UPDATEs and DELETEs
/// `audit_items`, for the rows it owns, at `rate` writes per second.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn row_writer(
    mut db: Db,
    w: usize,
    writers: usize,
    rows: usize,
    zipf: Zipf,
    rate: f64,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> Result<WriterResult, BoxError> {
    let mut state: HashMap<i64, RowState> = HashMap::new();
    for id in (1..=rows as i64).filter(|id| (id - 1) as usize % writers == w) {
        state.insert(
            row_key(ROWS, id),
            RowState {
                version: 0,
                present: true,
            },
        );
        state.insert(
            row_key(ITEMS, id),
            RowState {
                version: 0,
                present: id % 2 == 1,
            },
        );
    }
    let mut result = WriterResult::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64 ^ now_ns());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // Zipf over all ids, moved to the nearest id this writer owns.
        let sampled = zipf.sample(&mut rng);
        let mut id = sampled - ((sampled - 1) % writers as i64) + w as i64;
        if id > rows as i64 {
            id -= writers as i64;
        }
        if id < 1 {
            continue;
        }
        let items = rng.random_bool(0.5);
        let (table, key) = if items {
            (ITEMS, row_key(ITEMS, id))
        } else {
            (ROWS, row_key(ROWS, id))
        };
        let s = state[&key];
        let op = match (table, s.present) {
            (ITEMS, false) => Op::Insert,
            (ITEMS, true) if rng.random_bool(1.0 / 3.0) => Op::Delete,
            _ => Op::Update,
        };
        let next = s.version + 1;
        let t_start_ns = now_ns();
        let outcome = match db.client().await {
            // Never sent: nothing to resolve.
            None => continue,
            Some(c) => {
                let r = match (table, op) {
                    (ROWS, _) => {
                        c.execute(
                            "UPDATE audit_rows SET version = $2 WHERE id = $1",
                            &[&id, &next],
                        )
                        .await
                    }
                    (_, Op::Update) => {
                        c.execute(
                            "UPDATE audit_items SET version = $2 WHERE id = $1",
                            &[&id, &next],
                        )
                        .await
                    }
                    (_, Op::Insert) => {
                        c.execute(
                            "INSERT INTO audit_items (id, version) VALUES ($1, $2)",
                            &[&id, &next],
                        )
                        .await
                    }
                    (_, Op::Delete) => {
                        c.execute("DELETE FROM audit_items WHERE id = $1", &[&id])
                            .await
                    }
                };
                match r {
                    Ok(1) => Ok(()),
                    Ok(n) => Err(format!("{n} rows affected, expected 1")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let committed_at = match outcome {
            Ok(()) => Some(now_ns()),
            Err(_) => {
                // Unknown outcome: this writer owns the row, so re-reading it decides.
                errors.fetch_add(1, Ordering::Relaxed);
                let table_name = if table == ITEMS {
                    "audit_items"
                } else {
                    "audit_rows"
                };
                let row = db.reread(table_name, id).await?;
                let committed = match op {
                    Op::Delete => row.is_none(),
                    Op::Update | Op::Insert => row == Some(next),
                };
                if committed {
                    result.unknown_committed += 1;
                    Some(now_ns())
                } else {
                    result.unknown_rolled_back += 1;
                    None
                }
            }
        };
        if let Some(t_ns) = committed_at {
            let present = !matches!(op, Op::Delete);
            state.insert(
                key,
                RowState {
                    version: next,
                    present,
                },
            );
            result.commits.push(Commit {
                id: key,
                version: next,
                absent: !present,
                t_start_ns,
                t_ns,
            });
        }
    }
    Ok(result)
}

/// The counters' writer: one `UPDATE audit_counters SET version = version + 1` at a time, so
/// the sum's committed versions are 1, 2, 3, …
pub(crate) async fn counter_writer(
    mut db: Db,
    rate: f64,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> Result<WriterResult, BoxError> {
    let mut counters = vec![0i64; COUNTERS as usize + 1];
    let mut sum = 0i64;
    let mut result = WriterResult::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xc0ff ^ now_ns());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let id = rng.random_range(1..=COUNTERS);
        let next = counters[id as usize] + 1;
        let t_start_ns = now_ns();
        let ok = match db.client().await {
            None => continue,
            Some(c) => matches!(
                c.execute(
                    "UPDATE audit_counters SET version = $2 WHERE id = $1",
                    &[&id, &next]
                )
                .await,
                Ok(1)
            ),
        };
        let committed = if ok {
            true
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
            let v = db
                .reread("audit_counters", id)
                .await?
                .ok_or("a counter row is missing")?;
            if v == next {
                result.unknown_committed += 1;
            } else {
                result.unknown_rolled_back += 1;
            }
            v == next
        };
        if committed {
            counters[id as usize] = next;
            sum += 1;
            result.commits.push(Commit {
                id: row_key(SUM, 0),
                version: sum,
                absent: false,
                t_start_ns,
                t_ns: now_ns(),
            });
        }
    }
    Ok(result)
}

/// One of `parts` burst writers for `daemon-backlog`: at `rate` commits per second until
/// `stop`, each an autocommit UPDATE of `rows_per_commit` consecutive rows of `audit_filler`
/// in this writer's share of the ids (no two writers touch the same row, so none waits on
/// another's lock). Returns the commits made. Behind schedule, it catches up (the point is the
/// volume the daemon finds when it comes back).
pub(crate) async fn burst_writer(
    mut db: Db,
    part: i64,
    parts: i64,
    rows_per_commit: i64,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> Result<u64, BoxError> {
    let share = FILLER_ROWS / parts;
    let first = part * share + 1;
    let blocks = (share / rows_per_commit).max(1);
    let sql = format!(
        "UPDATE {FILLER} SET version = version + 1 WHERE id >= $1 AND id < $1 + {rows_per_commit}"
    );
    let client = db.client_within(Duration::from_secs(10)).await?;
    let statement = client.prepare(&sql).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut commits = 0u64;
    let mut block = 0i64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let start = first + (block % blocks) * rows_per_commit;
        block += 1;
        client.execute(&statement, &[&start]).await?;
        commits += 1;
    }
    Ok(commits)
}

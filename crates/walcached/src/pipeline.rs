//! The replication loop: PostgreSQL's logical stream in, invalidations out, position confirmed
//! only after they are published.
//!
//! Order of a batch (DESIGN.md, write path): decode → rows to keys → batch across transactions
//! (bounded by keys and by time) → one script per message deletes and PUBLISHes → confirm the
//! end LSN of the last transaction in the batch. Outside a transaction and with nothing in
//! flight, a keepalive's position is confirmed too, so an idle slot does not hold WAL.
//!
//! Shutdown (SIGTERM): stop reading → publish what is in flight → confirm → close.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use walcache_cdc::client::{
    ReplicationClient, ReplicationConfig, ReplicationStream, StartReplication,
};
use walcache_cdc::pgoutput::LogicalMessage;
use walcache_cdc::protocol::ReplicationMessage;
use walcache_cdc::Lsn;

use crate::config::{redact_url, Config, ConfigError};
use crate::connect::Postgres;
use crate::mapping::{self, CompiledRule, Invalidation, Mapper, RelationCheck, TableInfo};
use crate::metrics as m;
use crate::publisher::{Batch, Publisher};
use crate::status::Status;

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration does not fit the database (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// PostgreSQL could not be used at start-up.
    #[error("postgres: {context}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Redis could not be used at start-up.
    #[error("redis: {context}")]
    Redis {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
}

impl RunError {
    /// A configuration problem (exit code 2) rather than a runtime failure.
    pub fn is_config(&self) -> bool {
        matches!(self, RunError::Config(_))
    }

    fn postgres(
        context: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RunError::Postgres {
            context: context.into(),
            source: Box::new(e),
        }
    }
}

/// Capped exponential backoff with jitter, for reconnects.
#[derive(Debug)]
struct Backoff {
    attempt: u32,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Reconnecting to PostgreSQL: from 100 ms up to 2 s. Short for the same reason as
    /// Redis's: once PostgreSQL is back, every commit until the daemon reconnects is served
    /// stale from L2 in `available` mode, so the wait after an outage of any length must stay
    /// small (the staleness auditor measured up to ~1 s after a restart already with this
    /// schedule's first steps). One connection attempt every 2 s is no load on a server.
    fn postgres() -> Self {
        Backoff {
            attempt: 0,
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    /// Retrying a publish while Redis is away: short, because every commit made while the
    /// daemon waits is served stale from L2 until it publishes (the staleness auditor measured
    /// ~270 ms after a Redis restart with the PostgreSQL schedule). A refused connection costs
    /// nothing; an unreachable host is bounded by the publisher's timeout anyway.
    fn redis() -> Self {
        Backoff {
            attempt: 0,
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }

    fn next(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(exp.as_millis()).unwrap_or(10_000).max(2);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Connect the control session (catalog reads, slot/publication management, visibility
/// checks), with the same TLS settings as the replication connection.
async fn sql_client(
    postgres: &Postgres,
    config: &Config,
) -> Result<tokio_postgres::Client, RunError> {
    postgres.connect("walcached-control").await.map_err(|e| {
        RunError::postgres(
            format!("connecting to {}", redact_url(config.postgres.url.expose())),
            e,
        )
    })
}

/// Check every rule against the catalog.
///
/// # Errors
///
/// The first rule that does not fit its table.
pub async fn compile_rules(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<Vec<CompiledRule>, RunError> {
    let mut compiled = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        let (schema, table) = rule.qualified_table();
        let info = TableInfo::load(client, &schema, &table)
            .await
            .map_err(|e| RunError::postgres("reading the catalog", e))?
            .ok_or_else(|| {
                ConfigError::new(
                    format!("rules[{i}].table"),
                    format!(
                        "table {schema}.{table} does not exist (or is not a table) in the \
                         database of postgres.url"
                    ),
                )
            })?;
        compiled.push(mapping::compile(rule, i, &info)?);
    }
    Ok(compiled)
}

/// A logical consumer matched by `synchronous_standby_names` becomes a synchronous standby:
/// every commit in the database would then wait on the daemon. Refuse to start.
async fn refuse_synchronous_standby(client: &tokio_postgres::Client) -> Result<(), RunError> {
    let setting: String = client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .map_err(|e| RunError::postgres("reading synchronous_standby_names", e))?
        .get(0);
    if crate::check::standby_names_match(&setting, walcache_cdc::client::APPLICATION_NAME) {
        return Err(RunError::Config(ConfigError::new(
            "synchronous_standby_names",
            format!(
                "the server's setting {setting:?} matches the daemon's application_name                  \"{}\": it would become a synchronous standby and every commit would wait on                  it; name the real standbys instead of '*' (ALTER SYSTEM SET                  synchronous_standby_names = ...; SELECT pg_reload_conf();)",
                walcache_cdc::client::APPLICATION_NAME
            ),
        )));
    }
    Ok(())
}

/// Create the publication if missing (publish_via_partition_root, so rules on a partitioned
/// parent see its partitions' changes), and add rule tables it lacks.
async fn ensure_publication(
    client: &tokio_postgres::Client,
    config: &Config,
    rules: &[CompiledRule],
) -> Result<(), RunError> {
    let name = &config.postgres.publication;
    let tables: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                mapping::quote_ident(&r.table.0),
                mapping::quote_ident(&r.table.1)
            )
        })
        .collect();
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(|e| RunError::postgres("reading publications", e))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
                mapping::quote_ident(name),
                tables.join(", ")
            ))
            .await
            .map_err(|e| RunError::postgres(format!("creating publication {name}"), e))?;
        tracing::info!(publication = %name, "created the publication");
        return Ok(());
    }
    for (rule, quoted) in rules.iter().zip(&tables) {
        let covered = client
            .query_opt(
                "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                &[name, &rule.table.0, &rule.table.1],
            )
            .await
            .map_err(|e| RunError::postgres("reading publication tables", e))?
            .is_some();
        if !covered {
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {quoted}",
                    mapping::quote_ident(name)
                ))
                .await
                .map_err(|e| {
                    RunError::postgres(format!("adding {quoted} to publication {name}"), e)
                })?;
            tracing::info!(publication = %name, table = %quoted, "added a table to the publication");
        }
    }
    Ok(())
}

/// The slot's state as the catalog shows it.
async fn slot_state(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<(Option<String>, bool)>, RunError> {
    let row = client
        .query_opt(
            "SELECT wal_status, active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| RunError::postgres("reading replication slots", e))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Run the daemon until `shutdown` is cancelled.
///
/// # Errors
///
/// Start-up failures: configuration that does not fit the database, PostgreSQL or Redis
/// unreachable at start (fail fast). Once running, lost connections are retried with backoff.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    status: Arc<Status>,
) -> Result<(), RunError> {
    let postgres = Postgres::from_config(&config)?;
    let control = sql_client(&postgres, &config).await?;
    refuse_synchronous_standby(&control).await?;
    let rules = compile_rules(&control, &config).await?;
    let mapper = Mapper::new(rules.clone());
    let redis_client = crate::connect::redis_client(&config)?;
    let epoch: u64 = rand::random();
    let mut publisher = Publisher::connect(
        &redis_client,
        config.naming(),
        epoch,
        config.stream.max_message_bytes,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| RunError::Redis {
        context: format!("connecting to {}", redact_url(config.redis.url.expose())),
        source: e,
    })?;
    let run_id = publisher.run_id().await.map_err(|e| RunError::Redis {
        context: "reading INFO server".to_owned(),
        source: e,
    })?;
    ensure_publication(&control, &config, &rules).await?;
    let replication = postgres.replication()?;
    tracing::info!(epoch, rules = rules.len(), "walcached starting");

    let mut stream = Streamer {
        config: &config,
        status: &status,
        mapper,
        publisher,
        redis_client,
        run_id,
        control,
        confirmed: Lsn(0),
        flush_all_on_start: false,
        redis_reconnected: false,
        batch_txns: Vec::new(),
        pending: Vec::new(),
    };
    let mut backoff = Backoff::postgres();
    // Waiting for a slot another daemon streams from (said once per wait, not per retry).
    let mut standby = false;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        match stream.session(&replication, &shutdown, &mut backoff).await {
            Ok(()) => break, // clean shutdown
            Err(SessionError::Replication(e)) if e.code() == Some(SLOT_IN_USE) => {
                // Another daemon holds the slot (SQLSTATE 55006): wait silently as a standby
                // (no heartbeats, no warnings, no error count) and take over once it is free.
                // The control connection just worked (it read the slot's state): keep it.
                status.set_streaming(false);
                // The backoff restarts whenever a session streams: a new wait.
                if backoff.attempt == 0 {
                    standby = false;
                }
                let pause = backoff.next();
                if standby {
                    tracing::debug!(retry_in = ?pause, "the replication slot is still in use");
                } else {
                    standby = true;
                    tracing::info!(slot = %config.postgres.slot, reason = %e.as_db_error().map_or("", |db| db.message.as_str()), "the replication slot is in use by another consumer: waiting as a standby until it is free");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            Err(e) => {
                status.set_streaming(false);
                standby = false;
                metrics::counter!(m::ERRORS_TOTAL, "kind" => e.kind()).increment(1);
                let pause = backoff.next();
                tracing::warn!(error = %e, retry_in = ?pause, "replication session ended; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                metrics::counter!(m::RECONNECTS_TOTAL, "to" => "postgres").increment(1);
                if let Ok(c) = sql_client(&postgres, &config).await {
                    stream.control = c;
                }
            }
        }
    }
    status.set_streaming(false);
    tracing::info!("walcached stopped");
    Ok(())
}

/// SQLSTATE object_in_use: what START_REPLICATION (or dropping a slot) answers while another
/// connection streams from the slot.
const SLOT_IN_USE: &str = "55006";

/// Why a session ended (retried).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("replication: {0}")]
    Replication(#[from] walcache_cdc::Error),
    #[error("decoding the stream: {0}")]
    Decode(#[from] walcache_cdc::DecodeError),
    #[error(transparent)]
    Setup(#[from] RunError),
    /// The control session closed (e.g. PostgreSQL shutting down, which ends ordinary
    /// sessions before walsenders): visibility cannot be checked, so nothing more can be
    /// confirmed. Ending the session lets PostgreSQL's shutdown finish — a walsender waits
    /// for its client to confirm everything sent — and the next session replays.
    #[error("the control session closed: {0}")]
    ControlLost(tokio_postgres::Error),
}

impl SessionError {
    fn kind(&self) -> &'static str {
        match self {
            SessionError::Decode(_) => "decode",
            _ => "postgres",
        }
    }
}

/// The state that outlives one replication connection.
struct Streamer<'a> {
    config: &'a Config,
    status: &'a Status,
    mapper: Mapper,
    publisher: Publisher,
    redis_client: redis::Client,
    run_id: String,
    control: tokio_postgres::Client,
    confirmed: Lsn,
    flush_all_on_start: bool,
    /// Redis was reconnected since its run_id was last checked.
    redis_reconnected: bool,
    /// The transactions of the batch being built, for the visibility check.
    batch_txns: Vec<TxnRecord>,
    /// Published transactions not yet visible to new snapshots, oldest first.
    pending: Vec<TxnRecord>,
}

/// Logs catch-up progress while the daemon is far behind (after a restart, an outage or a
/// large transaction), at most every 10 s, and once when it has caught up.
#[derive(Debug, Default)]
struct CatchUp {
    behind_since: Option<(Instant, Lsn)>,
    last_log: Option<Instant>,
}

impl CatchUp {
    /// Lag above which the daemon counts as catching up (and says so).
    const BEHIND_BYTES: u64 = 16 * 1024 * 1024;
    const EVERY: Duration = Duration::from_secs(10);

    fn report(&mut self, lag: u64, confirmed: Lsn) {
        let now = Instant::now();
        match self.behind_since {
            None if lag >= Self::BEHIND_BYTES => {
                self.behind_since = Some((now, confirmed));
                self.last_log = Some(now);
                tracing::info!(behind_mib = lag / (1024 * 1024), "catching up with the WAL");
            }
            Some((since, from)) if lag < Self::BEHIND_BYTES => {
                let done_mib = confirmed.0.saturating_sub(from.0) / (1024 * 1024);
                tracing::info!(took = ?since.elapsed(), done_mib, "caught up with the WAL");
                *self = CatchUp::default();
            }
            Some((since, from)) if self.last_log.is_none_or(|t| now - t >= Self::EVERY) => {
                let done = confirmed.0.saturating_sub(from.0);
                let secs = since.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    behind_mib = lag / (1024 * 1024),
                    done_mib = done / (1024 * 1024),
                    mib_per_s = format!("{:.1}", done as f64 / secs / (1024.0 * 1024.0)),
                    "catching up with the WAL"
                );
                self.last_log = Some(now);
            }
            _ => {}
        }
    }
}

/// How often transactions waiting to become visible are rechecked.
const VISIBILITY_POLL: Duration = Duration::from_millis(2);

/// A committed transaction's invalidations, kept for the visibility re-check.
#[derive(Debug, Clone)]
struct TxnRecord {
    xid: u32,
    commit_lsn: Lsn,
    items: Batch,
}

/// One transaction being decoded: its invalidations, deduplicated, in bounded memory.
#[derive(Debug, Default)]
struct Transaction {
    xid: u32,
    items: Batch,
    keys_per_namespace: HashMap<String, usize>,
}

impl Transaction {
    fn add(&mut self, inv: Invalidation, large: usize) {
        if let Invalidation::Key { namespace, key } = &inv {
            if self.items.flushes.contains(namespace) {
                return;
            }
            if self.items.keys.contains(&(namespace.clone(), key.clone())) {
                return;
            }
            let n = self
                .keys_per_namespace
                .entry(namespace.clone())
                .or_default();
            *n += 1;
            if *n > large {
                // Too large to list key by key: one namespace flush, memory stays bounded.
                let ns = namespace.clone();
                self.items.keys.retain(|(n, _)| *n != ns);
                metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "large_transaction")
                    .increment(1);
                self.items.flushes.insert(ns);
                return;
            }
        }
        self.items.extend([inv]);
    }
}

impl Streamer<'_> {
    async fn session(
        &mut self,
        replication: &ReplicationConfig,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let slot = &self.config.postgres.slot;
        let mut client = ReplicationClient::connect(replication).await?;
        match slot_state(&self.control, slot).await? {
            None => {
                client.create_logical_slot(slot, false).await?;
                tracing::warn!(slot = %slot, "created the replication slot: changes before it are unknown, flushing every namespace");
                self.flush_all_on_start = true;
            }
            Some((Some(wal), _)) if wal == "lost" => {
                tracing::error!(slot = %slot, "replication slot lost its WAL: recreating it and flushing every namespace");
                client.drop_slot(slot).await?;
                client.create_logical_slot(slot, false).await?;
                self.flush_all_on_start = true;
            }
            Some(_) => {}
        }
        if self.flush_all_on_start {
            let mut batch = Batch::default();
            batch.extend(
                self.mapper
                    .namespaces()
                    .into_iter()
                    .map(Invalidation::Flush),
            );
            self.publish_with_retry(&batch, None, shutdown).await;
            self.flush_all_on_start = false;
        }
        let start = StartReplication::new(slot.clone(), [self.config.postgres.publication.clone()])
            .messages(true);
        let mut stream = client.start_replication(&start).await?;
        self.status.set_streaming(true);
        backoff.reset();
        tracing::info!(slot = %slot, "streaming");
        self.stream_loop(&mut stream, shutdown).await
    }

    async fn stream_loop(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let cfg = &self.config.stream;
        let mut txn: Option<Transaction> = None;
        let mut batch = Batch::default();
        let mut batch_started: Option<Instant> = None;
        let mut wal_end = Lsn(0);
        let mut status_tick = tokio::time::interval(cfg.status_interval());
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat_tick = tokio::time::interval(cfg.heartbeat_interval());
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut run_id_tick = tokio::time::interval(Duration::from_secs(5));
        run_id_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut visibility_tick = tokio::time::interval(VISIBILITY_POLL);
        visibility_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changes: Vec<Invalidation> = Vec::new();
        let mut txn_started: Option<Instant> = None;
        let mut progress = CatchUp::default();
        self.batch_txns.clear();
        loop {
            let deadline =
                batch_started.map(|s| tokio::time::Instant::from_std(s + cfg.batch_max_delay()));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    // Finish what is in flight, confirm it, stop. A transaction half-read is
                    // replayed by the next run.
                    // (With the token cancelled, the publish is tried once, not retried.)
                    let txns = std::mem::take(&mut self.batch_txns);
                    let held = self.hold_invisible(txns).await;
                    if !batch.is_empty()
                        && self.publish_with_retry(&batch, Some(stream), shutdown).await
                        && held.is_ok()
                    {
                        self.advance_confirmed(Lsn(batch.lsn));
                    }
                    stream.send_status(self.confirmed, self.confirmed, self.confirmed, false).await?;
                    self.status.set_confirmed_lsn(self.confirmed.0);
                    return Ok(());
                }
                () = sleep_until_opt(deadline) => {
                    self.flush_batch(&mut batch, &mut batch_started, stream, shutdown).await?;
                }
                _ = visibility_tick.tick(), if !self.pending.is_empty() => {
                    self.recheck_pending(stream, shutdown).await?;
                }
                _ = status_tick.tick() => {
                    self.send_status(stream).await?;
                    let lag = wal_end.0.saturating_sub(self.confirmed.0);
                    metrics::gauge!(m::REPLICATION_LAG_BYTES).set(lag as f64);
                    progress.report(lag, self.confirmed);
                }
                _ = heartbeat_tick.tick() => {
                    // Caught up: nothing has waited longer than a heartbeat interval — no
                    // transaction open that long, no batch unpublished that long. (Timers come
                    // before stream events in this biased select, so a backlog cannot starve
                    // heartbeats or status updates; a lagging daemon stops heartbeating.)
                    let interval = cfg.heartbeat_interval();
                    let caught_up = txn_started.is_none_or(|t| t.elapsed() < interval)
                        && batch_started.is_none_or(|t| t.elapsed() < interval);
                    self.status.set_caught_up(caught_up);
                    if caught_up {
                        if let Err(e) = self.publisher.heartbeat().await {
                            self.status.set_caught_up(false);
                            tracing::warn!(error = %e, "heartbeat failed");
                            metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                            self.reconnect_redis().await;
                        }
                    }
                }
                _ = run_id_tick.tick() => {
                    self.check_redis_identity(stream, shutdown).await;
                    self.export_slot_metrics().await;
                }
                event = stream.next_event() => {
                    let Some(event) = event? else {
                        return Err(SessionError::Replication(walcache_cdc::Error::Closed));
                    };
                    match event {
                        ReplicationMessage::XLogData(x) => {
                            wal_end = wal_end.max(x.wal_end);
                            match x.logical_message()? {
                                LogicalMessage::Begin(b) => {
                                    txn_started = Some(Instant::now());
                                    txn = Some(Transaction { xid: b.xid, ..Transaction::default() });
                                }
                                LogicalMessage::Relation(rel) => {
                                    if let RelationCheck::Mismatch { namespace, reason } = self.mapper.relation(&rel) {
                                        tracing::error!(namespace = %namespace, %reason, "a mapped table changed under its rule: its namespace is flushed on every change until the rule is fixed");
                                        metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "relation_mismatch").increment(1);
                                        if let Some(t) = txn.as_mut() {
                                            t.add(Invalidation::Flush(namespace), cfg.large_transaction_keys);
                                        }
                                    }
                                }
                                LogicalMessage::Insert(i) => {
                                    self.mapper.change(i.relation_id, Some(&i.new), None, &mut changes);
                                    self.count_change(i.relation_id);
                                }
                                LogicalMessage::Update(u) => {
                                    let old = u.old.as_ref().map(|o| o.tuple());
                                    self.mapper.change(u.relation_id, Some(&u.new), old, &mut changes);
                                    self.count_change(u.relation_id);
                                }
                                LogicalMessage::Delete(d) => {
                                    self.mapper.change(d.relation_id, None, Some(d.old.tuple()), &mut changes);
                                    self.count_change(d.relation_id);
                                }
                                LogicalMessage::Truncate(t) => {
                                    self.mapper.truncate(&t.relation_ids, &mut changes);
                                }
                                LogicalMessage::Commit(c) => {
                                    let t = txn.take().unwrap_or_default();
                                    txn_started = None;
                                    metrics::counter!(m::TRANSACTIONS_TOTAL).increment(1);
                                    if !t.items.is_empty() {
                                        let mut own = t.items;
                                        own.lsn = c.end_lsn.0;
                                        batch.extend_from(&own);
                                        self.batch_txns.push(TxnRecord { xid: t.xid, commit_lsn: c.commit_lsn, items: own });
                                        batch_started.get_or_insert_with(Instant::now);
                                    }
                                    batch.lsn = c.end_lsn.0;
                                    batch.commit_time_micros = unix_micros(c.commit_time);
                                    if batch.is_empty() {
                                        // Nothing of ours: the position can be confirmed as is.
                                        self.advance_confirmed(c.end_lsn);
                                    } else if batch.len() >= cfg.batch_max_keys {
                                        self.flush_batch(&mut batch, &mut batch_started, stream, shutdown).await?;
                                    }
                                }
                                _ => {}
                            }
                            if !changes.is_empty() {
                                match txn.as_mut() {
                                    Some(t) => {
                                        for c in changes.drain(..) {
                                            t.add(c, cfg.large_transaction_keys);
                                        }
                                    }
                                    // A change outside Begin..Commit cannot happen in pgoutput v1;
                                    // never drop it.
                                    None => {
                                        batch.extend(changes.drain(..));
                                        batch_started.get_or_insert_with(Instant::now);
                                    }
                                }
                            }
                        }
                        ReplicationMessage::PrimaryKeepalive(k) => {
                            wal_end = wal_end.max(k.wal_end);
                            if txn.is_none() && batch.is_empty() {
                                self.advance_confirmed(k.wal_end);
                            }
                            if k.reply_requested {
                                self.send_status(stream).await?;
                            }
                        }
                        _ => {}
                    }
                }
                // The stream has nothing ready: publish now rather than wait for the timer.
                // (Under a backlog, events stay ready and batches fill up to
                // batch_max_keys or batch_max_delay.)
                () = std::future::ready(()), if !batch.is_empty() => {
                    self.flush_batch(&mut batch, &mut batch_started, stream, shutdown).await?;
                }
            }
        }
    }

    /// Move the confirmed position forward to `candidate`, but never past a transaction still
    /// waiting for its second invalidation: a crash must replay it.
    fn advance_confirmed(&mut self, candidate: Lsn) {
        let cap = self.pending.iter().map(|t| t.commit_lsn).min();
        let target = match cap {
            Some(cap) => candidate.min(cap),
            None => candidate,
        };
        self.confirmed = self.confirmed.max(target);
    }

    /// Which of these transactions are not yet visible to a new snapshot. On a query error,
    /// all of them (the check is retried); if the control connection has closed,
    /// [`SessionError::ControlLost`].
    async fn invisible(&self, xids: &[u32]) -> Result<Vec<u32>, SessionError> {
        if xids.is_empty() {
            return Ok(Vec::new());
        }
        // Widen each 32-bit xid to xid8 with the epoch of the snapshot's xmax: a committed
        // transaction's xid is below xmax, so a larger low half belongs to the previous epoch.
        // (Checking only the in-progress list is wrong: a transaction waiting for a
        // synchronous standby often sits at or above xmax.)
        let xs: Vec<i64> = xids.iter().map(|x| i64::from(*x)).collect();
        let rows = self
            .control
            .query(
                "WITH s AS (SELECT pg_current_snapshot() AS snap),                       e AS (SELECT snap, pg_snapshot_xmax(snap)::text::int8 AS xmax FROM s)                  SELECT x FROM e, unnest($1::int8[]) AS x                  WHERE NOT pg_visible_in_snapshot(                      (CASE WHEN x <= (xmax & 4294967295)                            THEN ((xmax >> 32) << 32) | x                            ELSE (((xmax >> 32) - 1) << 32) | x END)::text::xid8, snap)",
                &[&xs],
            )
            .await;
        match rows {
            Ok(rows) => Ok(rows
                .iter()
                .filter_map(|r| u32::try_from(r.get::<_, i64>(0)).ok())
                .collect()),
            Err(e) if self.control.is_closed() => Err(SessionError::ControlLost(e)),
            Err(e) => {
                tracing::warn!(error = %e, "visibility check failed; rechecking");
                metrics::counter!(m::ERRORS_TOTAL, "kind" => "postgres").increment(1);
                Ok(xids.to_vec())
            }
        }
    }

    async fn hold_invisible(&mut self, txns: Vec<TxnRecord>) -> Result<(), SessionError> {
        let xids: Vec<u32> = txns.iter().map(|t| t.xid).collect();
        let invisible = self.invisible(&xids).await?;
        if invisible.is_empty() {
            return Ok(());
        }
        for t in txns {
            if invisible.contains(&t.xid) {
                tracing::debug!(
                    xid = t.xid,
                    "committed but not yet visible: will invalidate again"
                );
                self.pending.push(t);
            }
        }
        metrics::gauge!(m::VISIBILITY_PENDING).set(self.pending.len() as f64);
        Ok(())
    }

    /// Republish the transactions that became visible, then let the position move on.
    async fn recheck_pending(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let xids: Vec<u32> = self.pending.iter().map(|t| t.xid).collect();
        let invisible = self.invisible(&xids).await?;
        if invisible.len() == xids.len() {
            return Ok(());
        }
        let mut again = Batch::default();
        let mut still = Vec::new();
        for t in std::mem::take(&mut self.pending) {
            if invisible.contains(&t.xid) {
                still.push(t);
            } else {
                again.extend_from(&t.items);
                again.lsn = again.lsn.max(t.items.lsn);
            }
        }
        // Keep them pending until the second invalidation is out.
        let visible_now = again.clone();
        self.pending.extend(still.iter().cloned());
        if !self
            .publish_with_retry(&visible_now, Some(stream), shutdown)
            .await
        {
            return Ok(());
        }
        self.pending = still;
        metrics::gauge!(m::VISIBILITY_PENDING).set(self.pending.len() as f64);
        metrics::counter!(m::VISIBILITY_REINVALIDATIONS_TOTAL).increment(1);
        self.advance_confirmed(Lsn(visible_now.lsn));
        self.send_status(stream).await
    }

    /// WAL the slot holds back: without a consumer it grows without limit (set
    /// `max_slot_wal_keep_size`).
    async fn export_slot_metrics(&self) {
        let row = self
            .control
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.postgres.slot],
            )
            .await;
        if let Ok(Some(row)) = row {
            if let Ok(Some(bytes)) = row.try_get::<_, Option<f64>>(0) {
                metrics::gauge!(m::SLOT_RETAINED_WAL_BYTES).set(bytes);
            }
        }
    }

    fn count_change(&self, relation_id: u32) {
        if let Some(ns) = self.mapper.namespace_of(relation_id) {
            metrics::counter!(m::CHANGES_TOTAL, "namespace" => ns.to_owned()).increment(1);
        }
    }

    async fn send_status(&mut self, stream: &mut ReplicationStream) -> Result<(), SessionError> {
        stream
            .send_status(self.confirmed, self.confirmed, self.confirmed, false)
            .await?;
        self.status.set_confirmed_lsn(self.confirmed.0);
        metrics::gauge!(m::CONFIRMED_LSN).set(self.confirmed.0 as f64);
        Ok(())
    }

    async fn flush_batch(
        &mut self,
        batch: &mut Batch,
        started: &mut Option<Instant>,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        if batch.is_empty() {
            *started = None;
            return Ok(());
        }
        let first = started.take().unwrap_or_else(Instant::now);
        // Visibility is checked *before* publishing: a transaction seen visible here is
        // visible to every fill that takes its lease after the publish (fills read the
        // database after taking the lease), and one not yet visible gets a second
        // invalidation once it is. Checked after publishing instead, a commit that became
        // visible between the publish and the check would let a fill that read the old row in
        // that gap survive.
        let txns = std::mem::take(&mut self.batch_txns);
        let held = self.hold_invisible(txns).await;
        if !self.publish_with_retry(batch, Some(stream), shutdown).await {
            // Shutting down with the batch unpublished: do not confirm it; the next run
            // replays it from the slot.
            return Ok(());
        }
        // Published either way (the sooner the better); without a visibility verdict it is
        // not confirmed: the session ends and the next one replays it.
        held?;
        metrics::histogram!(m::PUBLISH_LATENCY_SECONDS).record(first.elapsed());
        // Commit (server clock) → published (ours): the replication lag in seconds.
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let lag = now_micros.saturating_sub(batch.commit_time_micros).max(0);
        metrics::gauge!(m::REPLICATION_LAG_SECONDS).set(lag as f64 / 1e6);
        self.status.set_published_seq(self.publisher.seq());
        if std::mem::take(&mut self.redis_reconnected) {
            self.check_redis_identity(stream, shutdown).await;
        }
        // Only now is the position safe to confirm (held at the oldest pending recheck).
        self.advance_confirmed(Lsn(batch.lsn));
        *batch = Batch::default();
        self.send_status(stream).await
    }

    /// Publish, retrying with backoff while Redis is away; the stream keeps hearing status
    /// updates (with the old position) so PostgreSQL does not time the connection out.
    /// Returns false only if shutdown interrupted it.
    async fn publish_with_retry(
        &mut self,
        batch: &Batch,
        mut stream: Option<&mut ReplicationStream>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::redis();
        loop {
            match self.publisher.publish(batch).await {
                Ok(()) => return true,
                Err(e) => {
                    self.status.set_caught_up(false);
                    metrics::counter!(m::ERRORS_TOTAL, "kind" => "redis").increment(1);
                    let pause = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?pause, "publishing failed; nothing is confirmed until it succeeds");
                    if let Some(s) = stream.as_deref_mut() {
                        if let Err(e) = s
                            .send_status(self.confirmed, self.confirmed, self.confirmed, false)
                            .await
                        {
                            tracing::debug!(error = %e, "status update during redis outage failed");
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(pause) => {}
                    }
                    self.reconnect_redis().await;
                }
            }
        }
    }

    async fn reconnect_redis(&mut self) {
        metrics::counter!(m::RECONNECTS_TOTAL, "to" => "redis").increment(1);
        match self.publisher.reconnect(&self.redis_client).await {
            // A new connection may be to a restarted Redis: check its run_id at once rather
            // than at the next periodic check.
            Ok(()) => self.redis_reconnected = true,
            Err(e) => tracing::debug!(error = %e, "redis reconnect failed"),
        }
    }

    /// A Redis whose run_id changed restarted or failed over and may have lost recent deletes:
    /// the gap is unknown, so every namespace served is flushed.
    async fn check_redis_identity(
        &mut self,
        stream: &mut ReplicationStream,
        shutdown: &CancellationToken,
    ) {
        let Ok(run_id) = self.publisher.run_id().await else {
            return;
        };
        if run_id != self.run_id {
            tracing::error!("redis run_id changed (restart or failover): flushing every namespace");
            metrics::counter!(m::NAMESPACE_FLUSHES_TOTAL, "reason" => "unknown_gap").increment(1);
            let mut batch = Batch::default();
            batch.extend(
                self.mapper
                    .namespaces()
                    .into_iter()
                    .map(Invalidation::Flush),
            );
            batch.lsn = self.confirmed.0;
            if self
                .publish_with_retry(&batch, Some(stream), shutdown)
                .await
            {
                self.run_id = run_id;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// PostgreSQL time (µs since 2000-01-01) → µs since the Unix epoch.
fn unix_micros(t: walcache_cdc::PgTimestamp) -> i64 {
    const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
    t.0.saturating_add(PG_EPOCH_OFFSET_MICROS)
}

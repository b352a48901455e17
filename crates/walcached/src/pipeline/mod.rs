//! The replication loop: PostgreSQL's logical stream in, invalidations out, position confirmed
//! only after they are published.
//!
//! Order of a batch (DESIGN.md, write path): decode → rows to keys → batch across transactions
//! (bounded by keys and by time) → the visibility check → one script per message deletes and
//! PUBLISHes → confirm the end LSN of the last transaction in the batch. The check and the
//! script of one batch run while the next is read and decoded (`inflight.rs`), one batch in
//! flight at a time. Outside a transaction and with nothing in flight, a keepalive's position
//! is confirmed too, so an idle slot does not hold WAL.
//!
//! Shutdown (SIGTERM): stop reading → publish what is in flight → confirm → close.

mod backoff;
mod catalog;
mod catalog_watch;
mod ddl;
mod flush;
mod inflight;
mod liveness;
mod markers;
mod publish;
mod server;
mod stages;
mod stream;
mod visibility;

use backoff::Backoff;
pub use catalog::{compile_rules, Compiled};
use catalog::{plan_publication, refuse_synchronous_standby, sql_client, Planned, PublicationPlan};
pub use flush::{flush_channel, FlushError, FlushRequests, FlushSender, Flushed};
pub(crate) use server::control_identity;
use server::{is_invalidated_slot_error, slot_confirmed, slot_state, ServerIdentity, SlotState};
use visibility::TxnRecord;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use walcache_cdc::client::{
    ReplicationClient, ReplicationConfig, ReplicationStream, StartReplication,
};
use walcache_cdc::Lsn;

use crate::config::{redact_url, Config, ConfigError};
use crate::connect::Postgres;
use crate::mapping::Mapper;
use crate::marker::Loss;
use crate::metrics as m;
use crate::publisher::Publisher;
use crate::slot::{self, SlotError};
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
    /// Creating the replication slot waited longer than [`RunOptions::slot_max_wait`] for
    /// running transactions, which the error names ([`SlotError::TimedOut`]). A runtime
    /// error (exit code 1): a supervisor restarts the daemon with backoff until they have
    /// ended.
    #[error("postgres: {0}")]
    SlotCreation(#[source] SlotError),
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

/// What [`run_with`] takes besides the configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// How long creating the replication slot may wait for the transactions running when it
    /// starts before [`run_with`] gives up with [`RunError::SlotCreation`]. Default:
    /// [`slot::MAX_WAIT`], 60 s.
    pub slot_max_wait: Duration,
    /// Namespace flushes asked for through the admin API (see [`flush_channel`]); none by
    /// default.
    pub flush_requests: Option<FlushRequests>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            slot_max_wait: slot::MAX_WAIT,
            flush_requests: None,
        }
    }
}

/// Run the daemon until `shutdown` is cancelled, with the default [`RunOptions`].
///
/// # Errors
///
/// As [`run_with`].
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    status: Arc<Status>,
) -> Result<(), RunError> {
    run_with(config, shutdown, status, RunOptions::default()).await
}

/// Run the daemon until `shutdown` is cancelled.
///
/// # Errors
///
/// Start-up failures: configuration that does not fit the database, PostgreSQL or Redis
/// unreachable at start (fail fast). Once running, lost connections are retried with backoff.
/// Creating the slot is bounded: transactions that keep it waiting longer than
/// [`RunOptions::slot_max_wait`] end the run with [`RunError::SlotCreation`] (a shutdown
/// during that wait returns `Ok`).
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    status: Arc<Status>,
    options: RunOptions,
) -> Result<(), RunError> {
    // The epoch of this run's messages (wire format): every log line of the run carries it
    // and the slot, so that logs, messages and metrics of one run can be put side by side.
    let epoch: u64 = rand::random();
    // As a string (in JSON too): 64-bit epochs do not survive JSON tools' doubles, and the
    // admin API writes it as a string as well.
    let span = tracing::info_span!("walcached", epoch = %epoch, slot = %config.postgres.slot);
    run_epoch(config, shutdown, status, options, epoch)
        .instrument(span)
        .await
}

async fn run_epoch(
    config: Config,
    shutdown: CancellationToken,
    status: Arc<Status>,
    options: RunOptions,
    epoch: u64,
) -> Result<(), RunError> {
    let namespaces: Vec<String> = config.rules.iter().map(|r| r.namespace.clone()).collect();
    m::register_at_zero(&namespaces);
    let postgres = Postgres::from_config(&config)?;
    let control = sql_client(&postgres, &config).await?;
    refuse_synchronous_standby(&control).await?;
    let Compiled { rules, mut unfit } = compile_rules(&control, &config).await?;
    let mut mapper = Mapper::new(rules.clone());
    let redis_client = crate::connect::redis_client(&config)?;
    let mut publisher = Publisher::connect(
        &redis_client,
        config.naming(),
        epoch,
        config.stream.max_message_bytes,
        crate::publisher::REDIS_TIMEOUT,
        &config.rules,
    )
    .await
    .map_err(|e| RunError::Redis {
        context: format!("connecting to {}", redact_url(config.redis.url.expose())),
        source: e,
    })?;
    let signer = crate::signing::Signer::new(
        config.security.signing_keys.as_ref(),
        config.naming().invalidation_channel(),
        config.stream.heartbeat_interval(),
    );
    signer.log_start();
    publisher.set_signer(signer);
    let (version, run_id) = publisher.server_info().await.map_err(|e| RunError::Redis {
        context: "reading INFO server".to_owned(),
        source: e,
    })?;
    status.set_epoch(epoch);
    status.set_redis(crate::status::RedisIdentity {
        run_id: run_id.clone(),
        version,
    });
    if version < crate::publisher::MIN_REDIS_VERSION {
        let (major, minor) = crate::publisher::MIN_REDIS_VERSION;
        return Err(RunError::Config(ConfigError::new(
            "redis.url",
            format!(
                "the Redis at {} is version {}.{}; walcached needs {major}.{minor} or later \
                 (its invalidation scripts declare flags such as allow-oom, so that deletes \
                 still run when Redis is at maxmemory): upgrade Redis",
                redact_url(config.redis.url.expose()),
                version.0,
                version.1
            ),
        )));
    }
    // A first start (no slot yet) refuses what does not fit, with the fix (exit 2): another
    // consumer's publication that does not publish what the rules need, or a rule its table
    // does not fit. A daemon that has streamed from this database before starts instead: the
    // drift happened while it ran or was down, and exiting would make its supervisor restart
    // it in a loop. Such rules are broken (every change of their table flushes) and, where
    // their changes are not published, their namespaces out of service until a catalog check
    // finds them fixed.
    let unfit_rules: BTreeSet<usize> = unfit.keys().copied().collect();
    let (planned, unpublished) = plan_publication(&control, &config, &rules, &unfit_rules).await?;
    let foreign = matches!(planned, Planned::Foreign { .. });
    if (foreign || !unfit.is_empty())
        && slot_state(&control, &config.postgres.slot).await? == SlotState::Missing
    {
        return Err(RunError::Config(match planned {
            Planned::Foreign { error, .. } if unfit.is_empty() => error,
            _ => unfit.pop_first().expect("a rule that does not fit").1,
        }));
    }
    let (plan, foreign) = match planned {
        Planned::Repair(plan) => (plan, None),
        Planned::Foreign {
            error,
            affected_rules,
        } => (PublicationPlan::none(), Some((error, affected_rules))),
    };
    // Rules whose changes the publication may have dropped owe a flush of every namespace
    // they write to (their own, and those they bump tags in: a missed tag bump there is only
    // made good by a flush), recorded before the publication is changed: a crash in between
    // repeats it.
    let owed: Vec<String> = plan
        .affected_rules
        .iter()
        .flat_map(|&i| crate::marker::targets(std::slice::from_ref(&config.rules[i])))
        .collect();
    publisher
        .mark_owed(&owed)
        .await
        .map_err(|e| RunError::Redis {
            context: "recording the flushes the publication owes".to_owned(),
            source: e,
        })?;
    plan.apply(&control, &config.postgres.publication).await?;
    // Transactions open at the repair changed the tables before they were published: their
    // namespaces are flushed again once those have ended.
    let mut watch = if plan.affected_rules.is_empty() {
        catalog_watch::CatalogWatch::default()
    } else {
        let xmax = catalog_watch::snapshot_xmax(&control)
            .await
            .map_err(|e| RunError::postgres("reading the current snapshot", e))?;
        catalog_watch::CatalogWatch::after_startup_repair(xmax, plan.affected_rules.clone())
    };
    if let Some((error, affected)) = &foreign {
        let namespaces: BTreeSet<&str> = affected
            .iter()
            .map(|&i| config.rules[i].namespace.as_str())
            .collect();
        tracing::error!(%error, namespaces = ?namespaces, "the publication does not publish what these rules need and is not walcached's to repair: starting with their namespaces out of service until it is fixed");
        metrics::counter!(m::CATALOG_DRIFTS_TOTAL, "reason" => "publication").increment(1);
        watch.start_out_of_service(affected, "publication");
    }
    for (&i, error) in &unfit {
        mapper.break_rule(i);
        let out = unpublished.contains(&i);
        tracing::error!(%error, namespace = %config.rules[i].namespace, out_of_service = out, "a rule does not fit its table: every change of the table flushes its namespace (out of service while its changes are not published) until a catalog check finds it fixed");
        metrics::counter!(m::CATALOG_DRIFTS_TOTAL, "reason" => "unfit_table").increment(1);
    }
    watch.start_out_of_service(&unpublished, "unfit_table");
    let replication = postgres.replication()?;
    tracing::info!(
        epoch = %epoch,
        rules = rules.len(),
        signing_key_id = publisher.signing_key_id().unwrap_or("(unsigned)"),
        "walcached starting"
    );

    let mut stream = Streamer {
        config: &config,
        slot_max_wait: options.slot_max_wait,
        status: Arc::clone(&status),
        mapper,
        publisher: Some(publisher),
        marked_when_lent: Lsn(0),
        flight: None,
        redis_client: Arc::new(redis_client),
        run_id,
        control: Arc::new(control),
        published: Lsn(0),
        server: None,
        slot_invalidated: None,
        orphan_watch: None,
        confirmed: Lsn(0),
        reported: Lsn(0),
        owed_reason: None,
        watch,
        redis_reconnected: false,
        batch_txns: Vec::new(),
        pending: Vec::new(),
        flush_requests: options
            .flush_requests
            .as_ref()
            .and_then(FlushRequests::take),
        stages: stages::Stages::new(),
        checker: visibility::Checker::default(),
    };
    // Out of service from the start (see above): not ready before the first heartbeat.
    stream.export_out_of_service(&stream.watch.out_of_service(stream.mapper.rules()));
    let mut backoff = Backoff::postgres();
    // Waiting for a slot another daemon streams from (said once per wait, not per retry).
    let mut standby = false;
    let mut sessions: u64 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        sessions += 1;
        let session = tracing::info_span!("session", n = sessions);
        match stream
            .session(&replication, &shutdown, &mut backoff)
            .instrument(session)
            .await
        {
            Ok(()) => break, // clean shutdown
            Err(SessionError::SlotCreation(e @ SlotError::TimedOut { .. })) => {
                // Retrying at once would wait on the same transactions: exit 1 and let the
                // supervisor's backoff pace the attempts (the error names what to end).
                status.set_streaming(false);
                return Err(RunError::SlotCreation(e));
            }
            Err(SessionError::Replication(e)) if e.code() == Some(SLOT_IN_USE) => {
                // A walsender of ours whose daemon froze or was cut off holds the slot until
                // wal_sender_timeout: take over sooner.
                if stream.take_over_orphan().await {
                    backoff.reset();
                    continue;
                }
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
                    stream.control = Arc::new(c);
                }
            }
        }
    }
    status.set_streaming(false);
    tracing::info!("walcached stopped");
    Ok(())
}

/// Why the publisher must be here: every use of it waits for the batch in flight to land.
const LENT: &str = "the publisher is used only with no batch in flight";

/// SQLSTATE object_in_use: what START_REPLICATION (or dropping a slot) answers while another
/// connection streams from the slot.
const SLOT_IN_USE: &str = "55006";

/// Why a session ended (retried).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("replication: {0}")]
    Replication(#[from] walcache_cdc::Error),
    /// Creating the slot failed; when it timed out waiting for running transactions, the run
    /// ends.
    #[error(transparent)]
    SlotCreation(SlotError),
    #[error("decoding the stream: {0}")]
    Decode(#[from] walcache_cdc::DecodeError),
    #[error(transparent)]
    Setup(#[from] RunError),
    /// The control session closed (e.g. PostgreSQL shutting down, which ends ordinary
    /// sessions before walsenders): visibility cannot be checked, so nothing more can be
    /// confirmed. Ending the session lets PostgreSQL's shutdown finish — a walsender waits
    /// for its client to confirm everything sent — and the next session replays.
    #[error("the control session closed: {0}")]
    ControlLost(Box<dyn std::error::Error + Send + Sync>),
    /// Nothing arrived on the replication stream for this long, though the daemon asked for
    /// keepalives: the peer or the network is gone without a word.
    #[error("the replication stream was silent for {0:?}")]
    Silent(Duration),
    /// The control session and the replication connection reach different servers (a DNS
    /// or proxy change between the two connects): nothing can be checked; retried.
    #[error("the control session reaches {control} but the replication connection {replication}")]
    ServerMismatch {
        /// What the control session reaches.
        control: String,
        /// What the replication connection reaches.
        replication: String,
    },
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
    /// How long creating the slot may wait for running transactions.
    slot_max_wait: Duration,
    status: Arc<Status>,
    mapper: Mapper,
    /// The publisher; lent to the batch in flight while there is one ([`inflight`]).
    publisher: Option<Publisher>,
    /// How far every marker had been written when the publisher was last lent: what
    /// [`Streamer::reportable`] goes by while it is away (marker positions never go back).
    marked_when_lent: Lsn,
    /// The batch whose visibility check and script are under way.
    flight: Option<inflight::Flight>,
    redis_client: Arc<redis::Client>,
    run_id: String,
    control: Arc<tokio_postgres::Client>,
    /// Everything received up to here is published (the end of the last batch published).
    published: Lsn,
    /// The cluster and timeline the last session streamed from.
    server: Option<ServerIdentity>,
    /// START_REPLICATION said the slot is invalidated (why): recreate it next session.
    slot_invalidated: Option<String>,
    /// The walsender holding the slot (pid, last `reply_time` as text) and when this daemon
    /// first saw it so: see `take_over_orphan`.
    orphan_watch: Option<((i32, Option<String>), std::time::Instant)>,
    confirmed: Lsn,
    /// The position the last status update reported.
    reported: Lsn,
    /// Why every target was recorded as owing a flush (a new slot, a changed server), until
    /// the flushes are published.
    owed_reason: Option<crate::marker::Loss>,
    /// What the catalog looked like at the last drift check.
    watch: catalog_watch::CatalogWatch,
    /// Redis was reconnected since its run_id was last checked.
    redis_reconnected: bool,
    /// The transactions of the batch being built, for the visibility check.
    batch_txns: Vec<TxnRecord>,
    /// Published transactions not yet visible to new snapshots, oldest first.
    pending: Vec<TxnRecord>,
    /// Flushes asked for through the admin API.
    flush_requests: Option<tokio::sync::mpsc::Receiver<flush::FlushRequest>>,
    /// Where the stream loop's time goes.
    stages: stages::Stages,
    /// Judges whether transactions are visible to new snapshots ([`visibility`]).
    checker: visibility::Checker,
}

impl Streamer<'_> {
    async fn session(
        &mut self,
        replication: &ReplicationConfig,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        // Another server (a failover, a restore) has other xids: read its snapshots afresh.
        self.checker = visibility::Checker::default();
        let slot = &self.config.postgres.slot;
        let mut client = ReplicationClient::connect(replication).await?;
        self.check_server(&mut client).await?;
        let mut state = slot_state(&self.control, slot).await?;
        if let (SlotState::Usable, Some(reason)) = (&state, self.slot_invalidated.take()) {
            state = SlotState::Invalidated(reason);
        }
        match state {
            SlotState::Missing => {
                if !self.owe_every_flush(Loss::SlotCreated, shutdown).await
                    || !self.create_slot(&mut client, shutdown).await?
                {
                    return Ok(()); // shutdown during the wait
                }
                tracing::warn!(slot = %slot, "created the replication slot: changes before it are unknown, flushing every namespace");
            }
            SlotState::Invalidated(reason) => {
                tracing::error!(slot = %slot, %reason, "PostgreSQL invalidated the replication slot: recreating it and flushing every namespace");
                metrics::counter!(m::SLOT_RECREATIONS_TOTAL, "reason" => reason).increment(1);
                if !self.owe_every_flush(Loss::SlotCreated, shutdown).await {
                    return Ok(());
                }
                client.drop_slot(slot).await?;
                if !self.create_slot(&mut client, shutdown).await? {
                    return Ok(()); // shutdown during the wait
                }
            }
            SlotState::Usable => {}
        }
        // Every session starts from what this server's slot has confirmed, never from what an
        // earlier session believed: after a failover or a restore the new server's positions
        // can be lower, and confirming or certifying an old, higher one would skip changes.
        let start_at = slot_confirmed(&self.control, slot).await?;
        self.confirmed = start_at;
        self.reported = start_at;
        self.published = start_at;
        // What Redis lost (and every flush owed) is flushed before streaming, so before any
        // heartbeat certifies it.
        if !self.audit_markers(start_at, shutdown).await {
            return Ok(());
        }
        let start = StartReplication::new(slot.clone(), [self.config.postgres.publication.clone()])
            .messages(true);
        let mut stream = match client.start_replication(&start).await {
            Ok(stream) => stream,
            Err(e) if is_invalidated_slot_error(&e) => {
                // A reason the catalog check does not know yet: the next session recreates.
                self.slot_invalidated = Some("refused_by_server".to_owned());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        self.status.set_streaming(true);
        backoff.reset();
        tracing::info!(slot = %slot, "streaming");
        self.stream_loop(&mut stream, shutdown).await
    }

    /// Create the slot, waiting at most `slot_max_wait` for running transactions. `false` if
    /// `shutdown` interrupted the wait (nothing was created).
    async fn create_slot(
        &self,
        client: &mut ReplicationClient,
        shutdown: &CancellationToken,
    ) -> Result<bool, SessionError> {
        let slot = &self.config.postgres.slot;
        match slot::create_slot(client, &self.control, slot, self.slot_max_wait, shutdown).await {
            Ok(_) => Ok(true),
            Err(SlotError::Shutdown { .. }) => Ok(false),
            Err(e) => Err(SessionError::SlotCreation(e)),
        }
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

    /// Counts a change of a mapped relation in its namespace's `walcached_changes_total`.
    /// The counter is looked up once per relation, not once per change (a registry lookup
    /// and a label allocation each).
    fn count_change(&mut self, relation_id: u32) {
        if let Some(counter) = self.stages.changes.get(&relation_id) {
            counter.increment(1);
            return;
        }
        if let Some(ns) = self.mapper.namespace_of(relation_id) {
            let counter = metrics::counter!(m::CHANGES_TOTAL, "namespace" => ns.to_owned());
            counter.increment(1);
            self.stages.changes.insert(relation_id, counter);
        }
    }

    async fn send_status(&mut self, stream: &mut ReplicationStream) -> Result<(), SessionError> {
        self.status_update(stream, false).await
    }

    /// A standby status update with the confirmed position, asking for a keepalive or not.
    async fn status_update(
        &mut self,
        stream: &mut ReplicationStream,
        reply_requested: bool,
    ) -> Result<(), SessionError> {
        let lsn = self.reportable();
        stream.send_status(lsn, lsn, lsn, reply_requested).await?;
        self.reported = lsn;
        self.status.set_confirmed_lsn(lsn.0);
        metrics::gauge!(m::CONFIRMED_LSN).set(lsn.0 as f64);
        Ok(())
    }

    /// The position to report to PostgreSQL: what is confirmed, but no further than every
    /// marker has been written (so that at start a marker behind the slot proves that Redis
    /// lost writes).
    fn reportable(&self) -> Lsn {
        let marked = self
            .publisher
            .as_ref()
            .map_or(self.marked_when_lent, Publisher::marked_through);
        self.confirmed.min(marked)
    }

    /// The publisher. Never called while a batch is in flight: the stream loop lets the
    /// flight land before anything else uses the publisher.
    fn publisher(&mut self) -> &mut Publisher {
        self.publisher.as_mut().expect(LENT)
    }
}

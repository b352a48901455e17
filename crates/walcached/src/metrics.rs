//! The daemon's metric names (exported by `metrics-exporter-prometheus` on `/metrics`).

/// Gauge: bytes of WAL between the server's flush position (sampled every heartbeat
/// interval) and what the daemon has received (0 when caught up).
pub const REPLICATION_LAG_BYTES: &str = "walcached_replication_lag_bytes";
/// Gauge: age in seconds, on the daemon's clock, of the oldest server-position sample the
/// daemon has not yet received and published (0 when caught up). Heartbeats stop once it
/// passes one heartbeat interval.
pub const REPLICATION_LAG_SECONDS: &str = "walcached_replication_lag_seconds";
/// Gauge: WAL retained by the slot, in bytes (from `pg_replication_slots`).
pub const SLOT_RETAINED_WAL_BYTES: &str = "walcached_slot_retained_wal_bytes";
/// Gauge: the confirmed flush LSN, as a number.
pub const CONFIRMED_LSN: &str = "walcached_confirmed_lsn";
/// Counter: row changes decoded. Labels: `namespace`.
pub const CHANGES_TOTAL: &str = "walcached_changes_total";
/// Counter: transactions committed (seen in the stream).
pub const TRANSACTIONS_TOTAL: &str = "walcached_transactions_total";
/// Counter: invalidation messages published. Labels: `kind` (`keys`, `tags`, `flush`,
/// `heartbeat`).
pub const MESSAGES_PUBLISHED_TOTAL: &str = "walcached_messages_published_total";
/// Counter: keys invalidated.
pub const KEYS_INVALIDATED_TOTAL: &str = "walcached_keys_invalidated_total";
/// Counter: namespace flushes. Labels: `reason` (`stream`: a TRUNCATE or a transaction too
/// large to list, `large_transaction`, `relation_mismatch`, `server_changed`, `catalog_drift`,
/// `ddl`: a statement announced by DDL capture, `ddl_unreadable`: an announcement that could not
/// be read, so every namespace, `oversized_change`: a row change longer than
/// `stream.max_frame_bytes`, read past unread, `oversized_message`: another replication message
/// that long, so every namespace), and the
/// marker reasons of [`crate::marker::Loss`]: `marker_missing`, `marker_behind`,
/// `marker_mismatch`, `flush_owed`, `rule_changed`, `slot_created`, `item_failed`).
pub const NAMESPACE_FLUSHES_TOTAL: &str = "walcached_namespace_flushes_total";
/// Histogram: seconds from a batch's first commit being received to its publication.
pub const PUBLISH_LATENCY_SECONDS: &str = "walcached_publish_latency_seconds";
/// Histogram: seconds the stream loop spends in each stage of its work, the stages being
/// sequential on one task (so their sums, against wall time, say where the time goes).
/// Labels: `stage`: `decode` (one replication message: decode, map to invalidations;
/// per message), `visibility` (the check that a batch's transactions are visible to new
/// snapshots: one PostgreSQL round trip; per batch), `publish` (the invalidation script and
/// PUBLISH: one Redis round trip while Redis answers; per batch), `status` (the standby
/// status update after a batch), `heartbeat` (per heartbeat), `recheck` (publishing
/// transactions that became visible late).
pub const STAGE_SECONDS: &str = "walcached_stage_seconds";
/// Histogram: transactions per published batch.
pub const BATCH_TRANSACTIONS: &str = "walcached_batch_transactions";
/// Counter: errors. Labels: `kind` (`postgres`, `redis`, `decode`, `config`).
pub const ERRORS_TOTAL: &str = "walcached_errors_total";
/// Counter: reconnects. Labels: `to` (`postgres`, `redis`).
pub const RECONNECTS_TOTAL: &str = "walcached_reconnects_total";
/// Counter: losses of writes Redis suffered, found through the markers (a restart from an
/// older snapshot, a failover to a replica that missed writes, `FLUSHALL`, a resync, an
/// eviction); each lost namespace or tag was flushed. Labels: `reason` (`marker_missing`,
/// `marker_behind`, `marker_mismatch`).
pub const REDIS_LOSSES_TOTAL: &str = "walcached_redis_losses_total";
/// Counter: namespaces whose keys could not be deleted one by one (an unreadable generation or
/// schema set) and were flushed instead. Labels: `namespace`.
pub const ITEM_FALLBACKS_TOTAL: &str = "walcached_item_fallbacks_total";
/// Counter: catalog drift found by the catalog check (every `stream.catalog_interval_ms`, and
/// once a statement announced by DDL capture or a Relation message is visible): a mapped
/// table re-created, truncated or rewritten without a row event, a partition gone, the
/// publication altered. Labels: `reason`; `unfit_table` and `publication` (drift the daemon
/// cannot repair) count once per namespace each time it goes out of service (see
/// [`NAMESPACES_OUT_OF_SERVICE`]), `identity_unfit` once per rule broken.
pub const CATALOG_DRIFTS_TOTAL: &str = "walcached_catalog_drifts_total";
/// Gauge: namespaces out of service: a rule of each has catalog drift the daemon cannot repair
/// (`walcached_catalog_drifts_total` reasons `unfit_table`, `publication`), so its changes are
/// missed. Heartbeats do not certify them (libraries bypass their caches for them) and
/// `/readyz` is not ready until a catalog check finds the drift fixed; then each is flushed and
/// back in service. 0 when all are in service.
pub const NAMESPACES_OUT_OF_SERVICE: &str = "walcached_namespaces_out_of_service";
/// Counter: the PostgreSQL server changed between sessions (another system identifier or
/// timeline: a failover or a restore); every namespace was flushed.
pub const SERVER_CHANGES_TOTAL: &str = "walcached_server_changes_total";
/// Counter: walsenders holding the slot whose daemon had gone silent, terminated by this
/// daemon to take the slot over.
pub const SLOT_TAKEOVERS_TOTAL: &str = "walcached_slot_takeovers_total";
/// Counter: replication slots PostgreSQL invalidated, recreated by the daemon (every
/// namespace flushed). Labels: `reason` (PostgreSQL's, e.g. `wal_removed`, `idle_timeout`).
pub const SLOT_RECREATIONS_TOTAL: &str = "walcached_slot_recreations_total";
/// Gauge: 1 when the daemon signs its messages (signing keys configured), 0 when it publishes
/// them unsigned.
pub const SIGNING_ENABLED: &str = "walcached_signing_enabled";
/// Counter: changes of the signing key file (`security.signing_keys_file`) the daemon found.
/// Labels: `outcome` (`reloaded`: its keys are in use now; `invalid`: it does not parse, or
/// `unreadable`: it cannot be read — the keys in use stay, and the error is logged once per
/// change).
pub const SIGNING_KEY_RELOADS_TOTAL: &str = "walcached_signing_key_reloads_total";
/// Gauge (with a signing key file only): 1 while the file's current content is in use, 0 while
/// it cannot be read or does not parse (the daemon keeps signing with the keys it had, so a
/// rotation written to the file is not taking effect).
pub const SIGNING_KEY_FILE_USABLE: &str = "walcached_signing_key_file_usable";
/// Gauge: 1 while streaming and caught up (heartbeats are being sent), else 0.
pub const CAUGHT_UP: &str = "walcached_caught_up";
/// Gauge: committed transactions whose changes are not yet visible to new snapshots, waiting
/// for their second invalidation (DESIGN contract 3).
pub const VISIBILITY_PENDING: &str = "walcached_visibility_pending";
/// Counter: second invalidations sent once a transaction became visible.
pub const VISIBILITY_REINVALIDATIONS_TOTAL: &str = "walcached_visibility_reinvalidations_total";
/// Counter: L2 value keys examined by the full refresh.
pub const REFRESH_KEYS_SCANNED_TOTAL: &str = "walcached_refresh_keys_scanned_total";
/// Counter: L2 keys deleted by the full refresh (stamped before their cycle began, or not
/// envelopes).
pub const REFRESH_KEYS_DELETED_TOTAL: &str = "walcached_refresh_keys_deleted_total";
/// Counter: tag versions (fields of the namespaces' tags hashes) pruned after completed
/// full-refresh cycles.
pub const REFRESH_TAG_VERSIONS_PRUNED_TOTAL: &str = "walcached_refresh_tag_versions_pruned_total";
/// Counter: full-refresh cycles completed.
pub const REFRESH_CYCLES_TOTAL: &str = "walcached_refresh_cycles_total";
/// Gauge: when the last full-refresh cycle completed, seconds since the Unix epoch on the
/// Redis server's clock.
pub const REFRESH_LAST_COMPLETED_TIMESTAMP_SECONDS: &str =
    "walcached_refresh_last_completed_timestamp_seconds";
/// Gauge: 1 while a full-refresh cycle runs, else 0.
pub const REFRESH_IN_PROGRESS: &str = "walcached_refresh_in_progress";

/// Every counter an alert watches, with each label value known in advance, registered at 0
/// (for `namespaces`, the rules' namespaces): a counter that first appears at 1 has no
/// `increase()` in Prometheus, so a one-off event (a failover, a lost Redis, a drift flush)
/// would never fire its alert. Call once the rules are known; counting starts from there.
pub fn register_at_zero(namespaces: &[String]) {
    for name in [
        SERVER_CHANGES_TOTAL,
        SLOT_TAKEOVERS_TOTAL,
        TRANSACTIONS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["postgres", "redis", "decode", "config"] {
        metrics::counter!(ERRORS_TOTAL, "kind" => kind).increment(0);
    }
    for to in ["postgres", "redis"] {
        metrics::counter!(RECONNECTS_TOTAL, "to" => to).increment(0);
    }
    for reason in ["marker_missing", "marker_behind", "marker_mismatch"] {
        metrics::counter!(REDIS_LOSSES_TOTAL, "reason" => reason).increment(0);
    }
    for reason in [
        "wal_removed",
        "rows_removed",
        "wal_level_insufficient",
        "idle_timeout",
    ] {
        metrics::counter!(SLOT_RECREATIONS_TOTAL, "reason" => reason).increment(0);
    }
    for reason in ["unfit_table", "publication", "identity_unfit"] {
        metrics::counter!(CATALOG_DRIFTS_TOTAL, "reason" => reason).increment(0);
    }
    for reason in [
        "stream",
        "large_transaction",
        "relation_mismatch",
        "unrenderable",
        "catalog_drift",
        "ddl",
        "ddl_unreadable",
        "oversized_change",
        "oversized_message",
        "admin",
        "marker_missing",
        "marker_behind",
        "marker_mismatch",
        "flush_owed",
        "rule_changed",
        "server_changed",
        "slot_created",
        "item_failed",
    ] {
        metrics::counter!(NAMESPACE_FLUSHES_TOTAL, "reason" => reason).increment(0);
    }
    for ns in namespaces {
        metrics::counter!(ITEM_FALLBACKS_TOTAL, "namespace" => ns.clone()).increment(0);
    }
}

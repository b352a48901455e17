//! Metric names: the contract with dashboards and alerts. All emitted through the `metrics`
//! facade; the application installs the exporter. Labels are low-cardinality (namespace, tier,
//! outcome, reason); a key or a value never appears in a label.

/// Counter: reads answered by a tier. Labels: `namespace`, `tier` (`l1`, `l2`).
pub const HITS_TOTAL: &str = "walcache_hits_total";
/// Counter: reads a tier could not answer. Labels: `namespace`, `tier` (`l1`, `l2`).
pub const MISSES_TOTAL: &str = "walcache_misses_total";
/// Counter: loader calls. Labels: `namespace`, `outcome` (`ok`, `error`, `stale_served`).
pub const LOADS_TOTAL: &str = "walcache_loads_total";
/// Histogram: loader latency in seconds. Labels: `namespace`.
pub const LOAD_DURATION_SECONDS: &str = "walcache_load_duration_seconds";
/// Counter: loads that bypassed the caches (and did not write them). Labels: `namespace`,
/// `reason` (`strict_not_live`, `redis_unavailable`, `lease_wait_timeout`, `no_redis`,
/// `negative_mismatch`, `out_of_service`: the daemon's heartbeats list the namespace as out of
/// service, so both tiers are bypassed).
pub const BYPASS_LOADS_TOTAL: &str = "walcache_bypass_loads_total";
/// Gauge: loads bypassing the caches right now, in this process. Labels: `namespace`. Their
/// sum over a handle's namespaces is at most
/// [`max_bypass_loads`](crate::WalcacheBuilder::max_bypass_loads); while Redis is down the
/// database sees the sum over the fleet.
pub const BYPASS_LOADS_IN_FLIGHT: &str = "walcache_bypass_loads_in_flight";
/// Histogram: seconds a bypassing load waited for its turn under
/// [`max_bypass_loads`](crate::WalcacheBuilder::max_bypass_loads) (0 while the cap is not
/// reached). Labels: `namespace`.
pub const BYPASS_WAIT_SECONDS: &str = "walcache_bypass_wait_seconds";
/// Histogram: Redis call latency in seconds. Labels: `op` (`get`: `Cache::get`'s read;
/// `lease`: the miss path's one script, which is also `try_get_with`'s L2 hit; `fill`, the
/// other scripts by name, `bypass_acquire` and `bypass_release`).
pub const L2_DURATION_SECONDS: &str = "walcache_l2_duration_seconds";
/// Counter: failed Redis calls. Labels: `op`, `kind` (`timeout`, `error`, `breaker_open`).
pub const L2_ERRORS_TOTAL: &str = "walcache_l2_errors_total";
/// Counter: L2 values that did not decode (a changed value type, or foreign bytes); each is
/// treated as a miss and overwritten. Labels: `namespace`.
pub const L2_UNDECODABLE_TOTAL: &str = "walcache_l2_undecodable_total";
/// Counter: fills that were discarded because an invalidation raced them. Labels: `namespace`,
/// `tier` (`l1`, `l2`).
pub const FILLS_DISCARDED_TOTAL: &str = "walcache_fills_discarded_total";
/// Counter: waits for another process's lease. Labels: `namespace`, `outcome` (`value`, `timeout`).
pub const LEASE_WAITS_TOTAL: &str = "walcache_lease_waits_total";
/// Counter: invalidation messages received. Labels: `channel` (`stream`, `app`), `kind`
/// (`keys`, `tags`, `flush`, `heartbeat`).
pub const INVALIDATIONS_RECEIVED_TOTAL: &str = "walcache_invalidations_received_total";
/// Counter: messages on the invalidation channels that were ignored whole (no sequence
/// consumed, no liveness, no flush). Labels: `channel` (`stream`, `app`), `reason`
/// (`undecodable`, `unsigned`, `unknown_key`, `bad_mac`: signing keys are configured and the
/// message does not verify; `stale`: sent longer ago than `max_clock_skew + heartbeat_timeout`
/// or too far ahead; `replayed`: not sent after the last message accepted from its epoch).
pub const MESSAGES_REJECTED_TOTAL: &str = "walcache_messages_rejected_total";
/// Counter: re-reads of a changed signing key file. Labels: `outcome` (`ok`, `error`: the file
/// does not parse, and the keys in force are kept).
pub const SIGNING_KEY_RELOADS_TOTAL: &str = "walcache_signing_key_reloads_total";
/// Counter: application-channel flushes of a namespace held back to the end of its window
/// (at most one applied per namespace per 100 ms; the window's last request is applied at its
/// end). Labels: `namespace`.
pub const APP_FLUSHES_COALESCED_TOTAL: &str = "walcache_app_flushes_coalesced_total";
/// Counter: messages on the invalidation channels that did not decode. No labels.
pub const UNDECODABLE_MESSAGES_TOTAL: &str = "walcache_undecodable_messages_total";
/// Counter: whole-L1 flushes because the stream stopped being trustworthy. Labels: `reason`
/// (`subscribed`, `reconnect`, `gap`, `epoch_change`, `heartbeat_silence`, `undecodable`).
pub const L1_FLUSHES_TOTAL: &str = "walcache_l1_flushes_total";
/// Gauge: 1 while the invalidation stream is live (L1 may be used), else 0.
pub const STREAM_LIVE: &str = "walcache_stream_live";
/// Counter: subscriber reconnect attempts. No labels.
pub const SUBSCRIBER_RECONNECTS_TOTAL: &str = "walcache_subscriber_reconnects_total";
/// Gauge: the circuit breaker around Redis: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "walcache_breaker_state";
/// Counter: breaker transitions. Labels: `to` (`closed`, `half_open`, `open`).
pub const BREAKER_TRANSITIONS_TOTAL: &str = "walcache_breaker_transitions_total";

/// The counters alerts take `increase()` of, with their known label values, registered at 0
/// when a handle is built: a counter that first appears at 1 has no increase in Prometheus,
/// so a process's first gap or heartbeat silence would never fire an alert.
pub(crate) fn register_at_zero() {
    for reason in [
        "subscribed",
        "reconnect",
        "gap",
        "epoch_change",
        "heartbeat_silence",
        "undecodable",
    ] {
        metrics::counter!(L1_FLUSHES_TOTAL, "reason" => reason).increment(0);
    }
    metrics::counter!(UNDECODABLE_MESSAGES_TOTAL).increment(0);
    metrics::counter!(SUBSCRIBER_RECONNECTS_TOTAL).increment(0);
    for channel in ["stream", "app"] {
        for reason in [
            "undecodable",
            "unsigned",
            "unknown_key",
            "bad_mac",
            "stale",
            "replayed",
        ] {
            metrics::counter!(MESSAGES_REJECTED_TOTAL, "channel" => channel, "reason" => reason)
                .increment(0);
        }
    }
}

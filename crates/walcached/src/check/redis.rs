//! The Redis checks: reachable, recent enough, an eviction policy that keeps control keys;
//! and what Redis remembers — its persistence settings, and the state of every marker
//! ([`crate::marker`]) against the slot: what the daemon will flush at its next start, and
//! why.

use std::collections::{BTreeMap, HashMap};

use walcache_cdc::client::APPLICATION_NAME;
use walcache_cdc::Lsn;

use super::{chain, Report, TIMEOUT};
use crate::config::redact_url;
use crate::config::Config;
use crate::marker::{self, Loss, Mark};

pub(super) async fn check_redis(config: &Config, report: &mut Report) {
    let url = redact_url(config.redis.url.expose());
    let client = match crate::connect::redis_client(config) {
        Ok(c) => c,
        Err(e) => {
            report.problem(&e.field, format!("{url:?}: {}", e.problem), None);
            return;
        }
    };
    let connected = tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            report.problem(
                "redis.url",
                format!("cannot connect to {url}: {}", chain(&e)),
                Some("check the host, port, database and credentials".to_owned()),
            );
            return;
        }
        Err(_) => {
            report.problem(
                "redis.url",
                format!("no connection to {url} within {TIMEOUT:?}"),
                Some("check the host, port and firewall".to_owned()),
            );
            return;
        }
    };
    let ping =
        tokio::time::timeout(TIMEOUT, redis::cmd("PING").query_async::<String>(&mut conn)).await;
    match ping {
        Ok(Ok(_)) => report.ok("redis.url", format!("connected to {url} (PING answered)")),
        Ok(Err(e)) => {
            report.problem(
                "redis.url",
                format!("PING to {url} failed: {}", chain(&e)),
                Some("check the credentials and that the user may run PING".to_owned()),
            );
            return;
        }
        Err(_) => {
            report.problem(
                "redis.url",
                format!("PING to {url} got no answer within {TIMEOUT:?}"),
                None,
            );
            return;
        }
    }
    let info = tokio::time::timeout(
        TIMEOUT,
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut conn),
    )
    .await;
    let (major, minor) = crate::publisher::MIN_REDIS_VERSION;
    match info
        .ok()
        .and_then(Result::ok)
        .as_deref()
        .and_then(crate::publisher::parse_redis_version)
    {
        Some(v) if v >= crate::publisher::MIN_REDIS_VERSION => {
            report.ok("redis version", format!("{}.{}", v.0, v.1));
        }
        Some(v) => report.problem(
            "redis version",
            format!(
                "is {}.{}: walcached needs {major}.{minor} or later (its invalidation scripts \
                 declare flags such as allow-oom, so that deletes still run when Redis is at \
                 maxmemory)",
                v.0, v.1
            ),
            Some(format!("upgrade Redis to {major}.{minor} or later")),
        ),
        None => report.warn(
            "redis version",
            "cannot read redis_version from INFO server",
            format!("make sure Redis is {major}.{minor} or later"),
        ),
    }
    let policy = tokio::time::timeout(
        TIMEOUT,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<HashMap<String, String>>(&mut conn),
    )
    .await;
    let subject = "redis maxmemory-policy";
    let policy = match policy {
        Ok(Ok(map)) => map.get("maxmemory-policy").cloned(),
        Ok(Err(e)) => {
            report.warn(
                subject,
                format!("cannot read it (CONFIG GET failed: {})", chain(&e)),
                "make sure it is noeviction or volatile-*: an allkeys-* policy evicts the \
                 keys correctness depends on (generations, schema sets, tag versions, markers)",
            );
            return;
        }
        Err(_) => {
            report.warn(
                subject,
                "CONFIG GET got no answer",
                "make sure it is noeviction or volatile-*",
            );
            return;
        }
    };
    match policy.as_deref() {
        Some(p) if p == "noeviction" || p.starts_with("volatile-") => {
            report.ok(
                subject,
                format!(
                    "{p}: every key correctness depends on (namespace generations, schema sets, \
                     tags hashes, markers) has no TTL, so this policy never evicts them"
                ),
            );
        }
        Some(p) => report.problem(
            subject,
            format!(
                "is {p}: under memory pressure Redis would evict keys without a TTL too, \
                 including the keys correctness depends on (namespace generations, schema \
                 sets, tags hashes, markers), and a cache could then serve values an \
                 invalidation already removed"
            ),
            Some(
                "CONFIG SET maxmemory-policy volatile-lru (and in redis.conf), or noeviction"
                    .to_owned(),
            ),
        ),
        None => report.warn(
            subject,
            "CONFIG GET returned nothing",
            "make sure it is noeviction or volatile-*",
        ),
    }
}

/// Report Redis's persistence and the markers. Connection failures were reported by the
/// checks before; this one then says nothing more.
pub(super) async fn check_redis_memory(config: &Config, report: &mut Report) {
    let Ok(client) = crate::connect::redis_client(config) else {
        return;
    };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection()).await
    else {
        return;
    };
    check_persistence(&mut conn, report).await;
    check_markers(config, &mut conn, report).await;
}

async fn check_persistence(conn: &mut redis::aio::MultiplexedConnection, report: &mut Report) {
    let subject = "redis persistence";
    let mut pipe = redis::pipe();
    for setting in ["save", "appendonly", "appendfsync"] {
        pipe.cmd("CONFIG").arg("GET").arg(setting);
    }
    let reply = tokio::time::timeout(
        TIMEOUT,
        pipe.query_async::<Vec<HashMap<String, String>>>(conn),
    )
    .await;
    let settings: HashMap<String, String> = match reply {
        Ok(Ok(maps)) => maps.into_iter().flatten().collect(),
        Ok(Err(e)) => {
            report.ok(
                subject,
                format!(
                    "cannot read it (CONFIG GET failed: {}); whatever a restart loses, the \
                     daemon finds through its markers and flushes",
                    chain(&e)
                ),
            );
            return;
        }
        Err(_) => return,
    };
    let get = |k: &str| settings.get(k).map_or("", String::as_str);
    let message = match (get("appendonly"), get("appendfsync"), get("save")) {
        ("yes", "always", _) => "AOF with appendfsync always: a restart loses no write".to_owned(),
        ("yes", fsync, _) => format!(
            "AOF with appendfsync {fsync}: a restart can lose the last second or so of writes; \
             the daemon finds the loss through its markers and flushes what it touched"
        ),
        (_, _, "") => "none (no AOF, no RDB snapshots): a restart empties Redis; the daemon \
                       finds the loss through its markers and flushes every namespace"
            .to_owned(),
        (_, _, save) => format!(
            "RDB snapshots only (save {save}): a restart goes back to the last snapshot, \
             bringing back values deleted since; the daemon finds the loss through its markers \
             and flushes every namespace it touched"
        ),
    };
    report.ok(subject, message);
}

/// The slot's confirmed position and the server identity markers are written against, or
/// `None` when PostgreSQL cannot say (reported elsewhere).
async fn slot_and_server(config: &Config) -> Option<(Option<Lsn>, String)> {
    let postgres = crate::connect::Postgres::from_config(config).ok()?;
    let client = postgres
        .connect(&format!("{APPLICATION_NAME}-check"))
        .await
        .ok()?;
    let server = crate::pipeline::control_identity(&client).await.ok()?;
    let row = client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.postgres.slot],
        )
        .await
        .ok()?;
    let slot = row
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .and_then(|l| u64::try_from(l).ok())
        .map(Lsn);
    Some((slot, server.to_string()))
}

async fn check_markers(
    config: &Config,
    conn: &mut redis::aio::MultiplexedConnection,
    report: &mut Report,
) {
    let Some((slot, server)) = slot_and_server(config).await else {
        return;
    };
    let naming = config.naming();
    for namespace in marker::targets(&config.rules) {
        let subject = format!("marker of namespace {namespace}");
        let fields = tokio::time::timeout(
            TIMEOUT,
            redis::cmd("HGETALL")
                .arg(naming.marker_key(&namespace))
                .query_async::<BTreeMap<String, String>>(conn),
        )
        .await;
        let Ok(Ok(fields)) = fields else {
            report.warn(
                subject,
                "cannot read it",
                "make sure the Redis user may run HGETALL on walcached's keys",
            );
            continue;
        };
        let mark = Mark::from_fields(&fields);
        let Some(slot) = slot else {
            report.ok(
                subject,
                "no slot yet: the daemon creates it and flushes every namespace at its first start",
            );
            continue;
        };
        let rule = marker::rule_hash(&config.rules, &namespace);
        let at = mark
            .as_ref()
            .and_then(|m| m.lsn)
            .map_or_else(|| "(none)".to_owned(), |l| l.to_string());
        match marker::judge(mark.as_ref(), slot, &server, &rule) {
            None => report.ok(
                subject,
                format!("at {at}, the slot at {slot}: nothing lost"),
            ),
            Some(loss) => {
                let why = match loss {
                    Loss::Missing => {
                        "there is no marker: Redis lost it (FLUSHALL, a restart \
                                      without persistence, an eviction) or the daemon never ran \
                                      against this Redis"
                    }
                    Loss::Behind => {
                        "the marker is behind the slot: Redis came back from before \
                                     deletes the daemon made (an older snapshot, a failover)"
                    }
                    Loss::Owed => "a flush is owed and was never published",
                    Loss::RuleChanged => {
                        "the rules that write to the namespace changed (its own, or \
                                           the tags bumped in it)"
                    }
                    Loss::ServerChanged => {
                        "the marker was written against another PostgreSQL \
                                            server or timeline"
                    }
                    _ => "it does not hold what the daemon wrote",
                };
                report.warn(
                    subject,
                    format!("at {at}, the slot at {slot}: {why}"),
                    "nothing to do: the daemon flushes it at start, before certifying it",
                );
            }
        }
    }
}

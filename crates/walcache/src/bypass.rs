//! The fleet-wide cap on loads that bypass the caches
//! ([`WalcacheBuilder::fleet_bypass_loads`](crate::WalcacheBuilder::fleet_bypass_loads)):
//! permits held in Redis, so that every process sharing it together runs at most so many.
//!
//! A permit is a member of one sorted set ([`Naming::bypass_permits_key`]), scored with when it
//! expires (ms on the Redis server's clock): a process that dies holding one loses it after the
//! permit's time-to-live, and the set itself expires once no permit is taken for as long. Taking
//! one first drops the expired; a full set answers "wait". When Redis cannot be asked (down,
//! breaker open, or the reason for bypassing is that Redis is unavailable) only the process's
//! own cap applies: a cap kept in Redis is gone with it.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use walcache_protocol::Naming;

use crate::error::Error;
use crate::handle::Shared;
use crate::l2::L2;

/// The longest pause between two asks for a permit while the fleet is at its cap.
const ASK_PAUSE_MAX: Duration = Duration::from_millis(50);

pub(crate) struct FleetCap {
    max: usize,
    key: String,
    /// How long a permit lasts if its holder never gives it back (the fill lease's time-to-live:
    /// the longest a load is expected to take).
    ttl: Duration,
    acquire: Script,
    release: Script,
}

impl FleetCap {
    pub(crate) fn new(max: usize, naming: &Naming, ttl: Duration) -> Self {
        FleetCap {
            max,
            key: naming.bypass_permits_key(),
            ttl,
            // KEYS: permits. ARGV: token, the cap, ttl (ms). 1 if taken, 0 if full.
            acquire: Script::new(
                r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1",
            ),
            release: Script::new(r"return redis.call('ZREM', KEYS[1], ARGV[1])"),
        }
    }

    /// Take a permit: `Some` once one is held, `None` if Redis cannot be asked (the caller goes
    /// on under its process's cap alone). Waits while the fleet is at its cap, asking again
    /// after a pause that grows to [`ASK_PAUSE_MAX`].
    pub(crate) async fn permit(&self, shared: &Arc<Shared>, l2: &L2) -> Option<FleetPermit> {
        let token = format!("{:032x}", rand::random::<u128>());
        let mut pause = Duration::from_millis(1);
        loop {
            match self.ask(l2, &token).await {
                Ok(true) => {
                    return Some(FleetPermit {
                        shared: Arc::clone(shared),
                        token: Some(token),
                    })
                }
                // A backoff between asks while others hold every permit.
                Ok(false) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ASK_PAUSE_MAX);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the fleet-wide bypass cap cannot be asked: the process's own cap applies");
                    return None;
                }
            }
        }
    }

    async fn ask(&self, l2: &L2, token: &str) -> Result<bool, Error> {
        let mut conn = l2.conn();
        let mut inv = self.acquire.prepare_invoke();
        inv.key(&self.key).arg(token).arg(self.max).arg(
            u64::try_from(self.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let taken: i64 = l2
            .call("bypass_acquire", async move {
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(taken == 1)
    }

    async fn give_back(&self, l2: &L2, token: &str) -> Result<(), Error> {
        let mut conn = l2.conn();
        let mut inv = self.release.prepare_invoke();
        inv.key(&self.key).arg(token);
        let _: i64 = l2
            .call("bypass_release", async move {
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }
}

/// A fleet-wide permit, given back when dropped (also when its caller drops the load).
pub(crate) struct FleetPermit {
    shared: Arc<Shared>,
    token: Option<String>,
}

impl Drop for FleetPermit {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        // On the handle's runtime, which drives the Redis connection.
        self.shared.runtime.spawn(async move {
            if let (Some(cap), Some(l2)) = (shared.fleet_bypass.as_ref(), shared.l2.as_ref()) {
                if let Err(e) = cap.give_back(l2, &token).await {
                    tracing::debug!(error = %e, "could not give a bypass permit back; it expires");
                }
            }
        });
    }
}

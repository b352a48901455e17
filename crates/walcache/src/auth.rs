//! Who may move this process's caches: the signing keys a handle accepts (and signs its
//! application messages with), and the checks every received message passes before it is
//! applied (wire v1.4, [`walcache_protocol::auth`]).
//!
//! A message is applied only if it decodes, carries a valid signature by an accepted key (when
//! keys are configured), was sent recently — its `sent_at_micros` is within
//! `max_clock_skew + heartbeat_timeout` before this process's clock and at most
//! `max_clock_skew` after — and, on the daemon's channel, was sent after the last message
//! accepted from the same epoch (a replay of an earlier heartbeat or data message is dropped).
//! Anything else is ignored whole — no sequence number consumed, no liveness, no flush — and
//! counted in `walcache_messages_rejected_total{channel, reason}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walcache_protocol::{AuthError, Keyring, Message};

use crate::error::Error;
use crate::metrics as m;

/// How often, at most, a key file is checked for changes.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a handle's keys come from.
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// No keys: messages are accepted unsigned (`allow_unsigned`), or there is no stream.
    None,
    /// Fixed keys (`signing_keys`, `signing_keys_env`).
    Fixed(Keyring),
    /// A file, re-read when it changes (`signing_keys_file`): a rotation needs no restart.
    File(PathBuf),
}

/// Why a received message was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    Auth(AuthError),
    /// Sent longer ago than the freshness window allows, or too far in the future.
    Stale,
    /// Not sent after the last message accepted from its epoch: a replay.
    Replayed,
}

impl Rejected {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Rejected::Auth(e) => e.label(),
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
        }
    }
}

/// The keys in force and the freshness window.
#[derive(Debug)]
pub(crate) struct Authenticator {
    source: KeySource,
    keys: RwLock<Option<Arc<Keyring>>>,
    /// The key file's modification time when it was last read, and when it was last checked.
    file_state: Mutex<(Option<SystemTime>, Option<Instant>)>,
    /// Messages sent earlier than this before now are dropped (`None`: no window, no stream).
    max_age: Option<Duration>,
    max_clock_skew: Duration,
}

fn read_key_file(path: &Path) -> Result<(Keyring, Option<SystemTime>), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::config(format!(
            "signing_keys_file {}: cannot read it ({e}); give a readable file of `id:hexsecret` \
             entries",
            path.display()
        ))
    })?;
    let keys = Keyring::parse(&text)
        .map_err(|e| Error::config(format!("signing_keys_file {}: {e}", path.display())))?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((keys, mtime))
}

/// Warn when a key file can be read by group or others (Unix).
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the signing key file can be read by other users: chmod 600 it");
            }
        }
    }
}

impl Authenticator {
    /// Load the keys (a key file is read now: a bad one fails `build()`). `max_age` is
    /// `max_clock_skew + heartbeat_timeout` with a stream, `None` without.
    pub(crate) fn new(
        source: KeySource,
        max_age: Option<Duration>,
        max_clock_skew: Duration,
    ) -> Result<Authenticator, Error> {
        let (keys, mtime) = match &source {
            KeySource::None => (None, None),
            KeySource::Fixed(k) => (Some(Arc::new(k.clone())), None),
            KeySource::File(path) => {
                warn_if_shared(path);
                let (k, mtime) = read_key_file(path)?;
                (Some(Arc::new(k)), mtime)
            }
        };
        Ok(Authenticator {
            source,
            keys: RwLock::new(keys),
            file_state: Mutex::new((mtime, Some(Instant::now()))),
            max_age,
            max_clock_skew,
        })
    }

    /// The keys in force, if any.
    pub(crate) fn keyring(&self) -> Option<Arc<Keyring>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-read a key file that changed (checked at most once a second). A file that no longer
    /// parses keeps the keys in force, with an error logged and counted.
    pub(crate) fn maybe_reload(&self) {
        let KeySource::File(path) = &self.source else {
            return;
        };
        let mut state = self.file_state.lock().unwrap_or_else(|p| p.into_inner());
        if state.1.is_some_and(|t| t.elapsed() < RELOAD_CHECK_EVERY) {
            return;
        }
        state.1 = Some(Instant::now());
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime == state.0 {
            return;
        }
        state.0 = mtime;
        match read_key_file(path) {
            Ok((keys, _)) => {
                tracing::info!(path = %path.display(), keys = ?keys.ids(), "signing keys reloaded");
                metrics::counter!(m::SIGNING_KEY_RELOADS_TOTAL, "outcome" => "ok").increment(1);
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keys));
            }
            Err(e) => {
                tracing::error!(error = %e, "the signing key file changed but cannot be used: keeping the keys in force");
                metrics::counter!(m::SIGNING_KEY_RELOADS_TOTAL, "outcome" => "error").increment(1);
            }
        }
    }

    /// Encode `message` for `channel`: signed when keys are configured.
    pub(crate) fn encode(&self, message: &Message, channel: &str) -> Vec<u8> {
        match self.keyring() {
            Some(keys) => keys.sign(message, channel),
            None => message.encode(),
        }
    }

    /// Whether messages must be signed (keys are configured): then a message that does not
    /// verify is ignored whole, and send times are checked.
    pub(crate) fn enforcing(&self) -> bool {
        self.keyring().is_some()
    }

    /// Decode `bytes` received on `channel`. With keys: check its signature, and its send time
    /// against this process's clock. Without: decode only (anyone could have sent it).
    pub(crate) fn open(&self, bytes: &[u8], channel: &str) -> Result<Message, Rejected> {
        self.maybe_reload();
        let Some(keys) = self.keyring() else {
            return Message::decode(bytes).map_err(|e| Rejected::Auth(AuthError::Decode(e)));
        };
        let message = keys.verify(bytes, channel).map_err(Rejected::Auth)?;
        if let Some(max_age) = self.max_age {
            let now = now_micros();
            let sent = message.sent_at_micros;
            let too_old = sent < now.saturating_sub(micros(max_age));
            let too_new = sent > now.saturating_add(micros(self.max_clock_skew));
            if too_old || too_new {
                return Err(Rejected::Stale);
            }
        }
        Ok(message)
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// This process's clock, µs since the Unix epoch (the send time of its messages).
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, micros)
}

/// Count a rejected message and say why, at most once per reason per channel per minute in
/// the log (a flood of forgeries must not flood the log).
pub(crate) fn count_rejected(channel: &'static str, why: &Rejected) {
    metrics::counter!(m::MESSAGES_REJECTED_TOTAL, "channel" => channel, "reason" => why.label())
        .increment(1);
    static LAST: Mutex<Vec<(&'static str, &'static str, Instant)>> = Mutex::new(Vec::new());
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let label = why.label();
    match last
        .iter_mut()
        .find(|(c, l, _)| *c == channel && *l == label)
    {
        Some((_, _, at)) if at.elapsed() < Duration::from_secs(60) => {}
        Some((_, _, at)) => {
            *at = Instant::now();
            tracing::warn!(channel, reason = label, detail = ?why, "invalidation message rejected and ignored");
        }
        None => {
            last.push((channel, label, Instant::now()));
            tracing::warn!(channel, reason = label, detail = ?why, "invalidation message rejected and ignored");
        }
    }
}

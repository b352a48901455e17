//! Signed messages (wire format v1.4, [`walcache_protocol::auth`]): the keys the daemon signs
//! with, where they come from, and their rotation without a restart.
//!
//! With keys configured, every message the daemon publishes on the sequenced channel — data
//! messages and heartbeats — is signed with the first key of its [`Keyring`], for that channel.
//! The keys come from one of two places, never both (a configuration error):
//!
//! - `security.signing_keys_file` (env `WALCACHED_SIGNING_KEYS_FILE`): a file of `id:hexsecret`
//!   entries ([`Keyring::parse`]). The daemon reads it again when its content changes (checked
//!   at most once per heartbeat interval, when a message is signed): rotation needs no
//!   restart. A file that no longer reads or parses keeps the keys in use, and is logged and
//!   counted once per change.
//! - `WALCACHED_SIGNING_KEYS`: the same text in the environment, read once at start; rotating
//!   it needs a restart.
//!
//! Without keys the daemon publishes unsigned messages (and says so once at start): services
//! then have to accept them explicitly (`WalcacheBuilder::allow_unsigned()`).
//!
//! Every message's `sent_at_micros` is strictly greater than the previous one's in the run
//! (receivers drop a message whose send time is not after the last one they accepted from the
//! epoch, to stop replays): the clock, or the last value plus one when the clock has not moved
//! on (or went back).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use walcache_protocol::{Keyring, Message};

use crate::metrics as m;
use crate::publisher::now_micros;

/// The environment variable holding signing keys (read once, at start).
pub const KEYS_ENV: &str = "WALCACHED_SIGNING_KEYS";
/// The environment variable naming the signing key file (`security.signing_keys_file`).
pub const KEYS_FILE_ENV: &str = "WALCACHED_SIGNING_KEYS_FILE";

/// Most bytes a signature adds to a message: its length (1 byte), the key id (1 byte of
/// length, at most [`walcache_protocol::auth::MAX_KEY_ID_BYTES`]) and the MAC.
pub const SIGNATURE_MAX_BYTES: usize =
    2 + walcache_protocol::auth::MAX_KEY_ID_BYTES + walcache_protocol::auth::MAC_LEN;

/// Where the signing keys came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `WALCACHED_SIGNING_KEYS`.
    Env,
    /// `security.signing_keys_file` (or `WALCACHED_SIGNING_KEYS_FILE`).
    File(PathBuf),
}

/// The signing keys loaded with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeys {
    /// The keys; the first signs.
    pub keyring: Keyring,
    /// Where they came from.
    pub source: KeySource,
}

/// Read and parse a key file.
///
/// # Errors
///
/// What is wrong with it (unreadable, not UTF-8, an entry that does not parse), naming the
/// entry by position and id, never a secret.
pub fn read_key_file(path: &Path) -> Result<Keyring, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_key_file(path, &bytes)
}

fn parse_key_file(path: &Path, bytes: &[u8]) -> Result<Keyring, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        format!(
            "{}: not UTF-8 text; write one `id:hexsecret` entry per line",
            path.display()
        )
    })?;
    Keyring::parse(text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The mode of `path` (e.g. `0o644`) when its group or others have any access to it;
/// `None` when only its owner has, where there are no unix permissions, or when the file
/// cannot be read.
pub fn loose_permissions(path: &Path) -> Option<u32> {
    mode_of(path).filter(|mode| mode & 0o077 != 0)
}

/// The file's permission bits (`0o640`), where unix has them.
pub fn mode_of(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::metadata(path).ok()?.permissions().mode() & 0o7777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Warn (once, now) when the secret file `path`, configured as `field`, can be read by its
/// group or others; `risk` says what such a reader could do. For every secret file the daemon
/// reads (signing keys, the PostgreSQL password, the admin token).
pub fn warn_if_loose(path: &Path, field: &str, risk: &str) {
    if let Some(mode) = loose_permissions(path) {
        tracing::warn!(
            file = %path.display(),
            mode = %format_args!("{mode:04o}"),
            "{field} is open to its group or to others: {risk}; `chmod 600` it (owned by the \
             daemon's user)"
        );
    }
}

/// What a reader of the signing key file could do.
const KEY_FILE_RISK: &str = "whoever reads it can forge invalidations";

/// What the key file held when it was last read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Its content's SHA-256.
    Content(Vec<u8>),
    /// It could not be read (the error's kind).
    Unreadable(std::io::ErrorKind),
}

/// The key file, read again when it changes.
#[derive(Debug)]
struct Watch {
    path: PathBuf,
    every: Duration,
    last_check: Option<Instant>,
    seen: Option<Seen>,
    /// The content last read is in use (it parsed).
    usable: bool,
}

/// Signs (or only encodes) the messages of one run, for one channel.
#[derive(Debug)]
pub struct Signer {
    keyring: Option<Keyring>,
    channel: String,
    last_sent_at: i64,
    watch: Option<Watch>,
}

impl Signer {
    /// Messages encoded without a signature.
    pub fn unsigned(channel: impl Into<String>) -> Signer {
        Signer {
            keyring: None,
            channel: channel.into(),
            last_sent_at: 0,
            watch: None,
        }
    }

    /// Messages signed with `keys` (`None`: unsigned) for `channel`; a key file is read again
    /// when its content changes, checked at most every `every` (the heartbeat interval).
    /// The file is read once more now, in case it changed since the configuration was loaded.
    pub fn new(keys: Option<&SigningKeys>, channel: impl Into<String>, every: Duration) -> Signer {
        let mut signer = Signer::unsigned(channel);
        let Some(keys) = keys else {
            return signer;
        };
        signer.keyring = Some(keys.keyring.clone());
        if let KeySource::File(path) = &keys.source {
            signer.watch = Some(Watch {
                path: path.clone(),
                every,
                last_check: None,
                seen: None,
                usable: true,
            });
            signer.poll();
        }
        signer
    }

    /// Log, once at start, how messages are signed (and a key file's loose permissions).
    pub fn log_start(&self) {
        metrics::gauge!(m::SIGNING_ENABLED).set(if self.keyring.is_some() { 1.0 } else { 0.0 });
        match (&self.keyring, &self.watch) {
            (None, _) => tracing::warn!(
                "no signing keys (security.signing_keys_file or WALCACHED_SIGNING_KEYS): \
                 publishing unsigned messages; every service must then accept them explicitly \
                 (WalcacheBuilder::allow_unsigned()), and anyone who can PUBLISH on the \
                 invalidation channel can forge invalidations and heartbeats"
            ),
            (Some(keyring), Some(watch)) => {
                tracing::info!(
                    key_id = keyring.signer().id(),
                    file = %watch.path.display(),
                    "signing messages (the key file is read again when it changes)"
                );
                warn_if_loose(&watch.path, "security.signing_keys_file", KEY_FILE_RISK);
                metrics::gauge!(m::SIGNING_KEY_FILE_USABLE).set(if watch.usable {
                    1.0
                } else {
                    0.0
                });
            }
            (Some(keyring), None) => tracing::info!(
                key_id = keyring.signer().id(),
                source = KEYS_ENV,
                "signing messages (keys from the environment: rotating them needs a restart; \
                 use security.signing_keys_file to rotate without one)"
            ),
        }
    }

    /// The id of the key messages are signed with now (`None`: unsigned).
    pub fn key_id(&self) -> Option<&str> {
        self.keyring.as_ref().map(|k| k.signer().id())
    }

    /// Stamp `message` with its send time (after every earlier one) and encode it, signed
    /// when keys are configured. The key file is checked first (at most once per interval).
    pub fn encode(&mut self, message: &mut Message) -> Vec<u8> {
        self.poll();
        let at = now_micros().max(self.last_sent_at.saturating_add(1));
        self.last_sent_at = at;
        message.sent_at_micros = at;
        match &self.keyring {
            Some(keyring) => keyring.sign(message, &self.channel),
            None => message.encode(),
        }
    }

    /// Read the key file again if the interval has passed; take its keys if its content
    /// changed and parses, else keep the keys in use (logged and counted once per change).
    fn poll(&mut self) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        if watch.last_check.is_some_and(|t| t.elapsed() < watch.every) {
            return;
        }
        watch.last_check = Some(Instant::now());
        let read = std::fs::read(&watch.path);
        let seen = match &read {
            Ok(bytes) => Seen::Content(Sha256::digest(bytes).to_vec()),
            Err(e) => Seen::Unreadable(e.kind()),
        };
        if watch.seen.as_ref() == Some(&seen) {
            return;
        }
        let first = watch.seen.is_none();
        watch.seen = Some(seen);
        let in_use = self.keyring.as_ref().map_or("", |k| k.signer().id());
        let parsed = match &read {
            Ok(bytes) => parse_key_file(&watch.path, bytes),
            Err(e) => Err(format!("cannot read {}: {e}", watch.path.display())),
        };
        watch.usable = parsed.is_ok();
        metrics::gauge!(m::SIGNING_KEY_FILE_USABLE).set(if watch.usable { 1.0 } else { 0.0 });
        match parsed {
            Ok(keyring) if first && self.keyring.as_ref() == Some(&keyring) => {}
            Ok(keyring) => {
                tracing::info!(
                    key_id = keyring.signer().id(),
                    previous_key_id = in_use,
                    key_ids = ?keyring.ids(),
                    file = %watch.path.display(),
                    "signing keys reloaded: signing with the first"
                );
                metrics::counter!(m::SIGNING_KEY_RELOADS_TOTAL, "outcome" => "reloaded")
                    .increment(1);
                if !first {
                    warn_if_loose(&watch.path, "security.signing_keys_file", KEY_FILE_RISK);
                }
                self.keyring = Some(keyring);
            }
            Err(problem) => {
                let outcome = if read.is_ok() {
                    "invalid"
                } else {
                    "unreadable"
                };
                tracing::error!(
                    error = %problem,
                    key_id = in_use,
                    "the signing key file changed but cannot be used: still signing with the \
                     key in use; fix the file (write it whole, then rename it into place)"
                );
                metrics::counter!(m::SIGNING_KEY_RELOADS_TOTAL, "outcome" => outcome).increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walcache_protocol::{AuthError, Body};

    const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn heartbeat(seq: u64) -> Message {
        Message::new(
            7,
            seq,
            Body::Heartbeat {
                last_data_seq: seq,
                details: None,
            },
        )
    }

    fn file_keys(path: &Path) -> SigningKeys {
        SigningKeys {
            keyring: read_key_file(path).expect("keys"),
            source: KeySource::File(path.to_owned()),
        }
    }

    #[test]
    fn send_times_strictly_increase_signed_or_not() {
        let keys = SigningKeys {
            keyring: Keyring::parse(K1).unwrap(),
            source: KeySource::Env,
        };
        for mut signer in [
            Signer::unsigned("wc:inval"),
            Signer::new(Some(&keys), "wc:inval", Duration::from_millis(1)),
        ] {
            let mut last = 0;
            for seq in 0..2000 {
                let mut m = heartbeat(seq);
                let bytes = signer.encode(&mut m);
                assert!(m.sent_at_micros > last, "{} after {last}", m.sent_at_micros);
                last = m.sent_at_micros;
                let decoded = Message::decode(&bytes).unwrap();
                assert_eq!(decoded.sent_at_micros, last);
                if signer.key_id().is_some() {
                    assert_eq!(keys.keyring.verify(&bytes, "wc:inval"), Ok(m.clone()));
                    assert_eq!(
                        keys.keyring.verify(&bytes, "wc:app"),
                        Err(AuthError::BadMac)
                    );
                } else {
                    assert_eq!(Message::decode_signed(&bytes).unwrap().1, None);
                }
            }
        }
    }

    #[test]
    fn the_key_file_is_read_again_when_it_changes_and_kept_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("# first\n{K1}\n")).unwrap();
        let keys = file_keys(&path);
        let mut signer = Signer::new(Some(&keys), "wc:inval", Duration::ZERO);
        assert_eq!(signer.key_id(), Some("k1"));
        let mut m = heartbeat(1);
        signer.encode(&mut m);
        assert_eq!(signer.key_id(), Some("k1"), "unchanged file, same key");

        std::fs::write(&path, format!("{K2}\n{K1}\n")).unwrap();
        signer.encode(&mut m);
        assert_eq!(signer.key_id(), Some("k2"), "the new first key signs");

        std::fs::write(&path, "k3:nothex\n").unwrap();
        signer.encode(&mut m);
        assert_eq!(
            signer.key_id(),
            Some("k2"),
            "a broken file keeps the key in use"
        );
        std::fs::remove_file(&path).unwrap();
        signer.encode(&mut m);
        assert_eq!(signer.key_id(), Some("k2"), "so does a missing one");

        std::fs::write(&path, format!("{K1}\n")).unwrap();
        signer.encode(&mut m);
        assert_eq!(signer.key_id(), Some("k1"), "fixed: taken");
    }

    #[test]
    fn the_key_file_is_checked_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, K1).unwrap();
        let keys = file_keys(&path);
        let mut signer = Signer::new(Some(&keys), "wc:inval", Duration::from_secs(3600));
        std::fs::write(&path, K2).unwrap();
        let mut m = heartbeat(1);
        signer.encode(&mut m);
        assert_eq!(
            signer.key_id(),
            Some("k1"),
            "not checked again within the interval"
        );
    }

    #[test]
    fn a_file_changed_since_loading_is_taken_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, K1).unwrap();
        let keys = file_keys(&path);
        std::fs::write(&path, K2).unwrap();
        let signer = Signer::new(Some(&keys), "wc:inval", Duration::from_secs(3600));
        assert_eq!(signer.key_id(), Some("k2"));
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_are_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, K1).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(loose_permissions(&path), None);
        assert_eq!(mode_of(&path), Some(0o600));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(loose_permissions(&path), Some(0o640));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(loose_permissions(&path), Some(0o604));
    }

    #[test]
    fn key_file_errors_name_the_file_and_never_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{K1}\n{K1}\n")).unwrap();
        let e = read_key_file(&path).unwrap_err();
        assert!(e.contains("twice") && e.contains("keys"), "{e}");
        assert!(!e.contains("0102030405"), "{e}");
        let e = read_key_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}

//! Signed messages (wire format v1.4): HMAC-SHA256 with a shared key, named by a key id.
//!
//! Whoever can `PUBLISH` on the invalidation channel controls every process's L1: a forged
//! heartbeat keeps stale entries alive, a forged flush empties every cache. With signing keys
//! configured, the daemon signs every message and services sign their application messages;
//! receivers drop whatever does not verify.
//!
//! **Trust model.** Every holder of a key can sign. That is acceptable because the same services
//! can already write values into L2; the key keeps out everyone else who can reach Redis.
//!
//! **What is signed.** The MAC covers every byte of the message up to its signature (the
//! header with its `sent_at_micros`, the body, and anything a later minor appends before the
//! signature), the channel it is published on and the key id:
//!
//! ```text
//! HMAC-SHA256(key, "walcache-msg-v1" || u64 LE len(channel) || channel
//!                  || u64 LE len(key id) || key id || message bytes before the signature)
//! ```
//!
//! so a message cannot be moved to another channel, and (receivers check `sent_at_micros` and
//! the sequence) cannot be replayed later. The signature is appended after the body as
//! `varint length, then key id (string), then the 32-byte MAC`: decoders older than v1.4 skip it
//! as bytes after the body.
//!
//! **Rotation** takes three steps, each after the previous one reached every process: receivers
//! accept the old and the new key; the daemon (and services) sign with the new one; receivers
//! drop the old one. A [`Keyring`] signs with its first key and accepts all of them.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::message::{put_string, put_varint, string_len, varint_len, Message, Reader};
use crate::DecodeError;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a MAC.
pub const MAC_LEN: usize = 32;
/// Fewest bytes of key material accepted (HMAC-SHA256's output size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest key id, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 32;
/// The most bytes a signature adds to a message: its length varint, the key id (with its
/// length) and the MAC.
pub const MAX_SIGNATURE_BYTES: usize = 1 + 1 + MAX_KEY_ID_BYTES + MAC_LEN;

const DOMAIN: &[u8] = b"walcache-msg-v1";

/// One signing key: an id carried in every message it signs, and the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A key or key list that cannot be used, with the reason and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SigningKeyError(String);

impl SigningKey {
    /// A key with id `id` (1..=32 bytes of `[A-Za-z0-9_.-]`) and at least 32 bytes of secret.
    ///
    /// # Errors
    ///
    /// [`SigningKeyError`] naming what is wrong (never the secret).
    pub fn new(id: &str, secret: impl Into<Vec<u8>>) -> Result<SigningKey, SigningKeyError> {
        let secret = secret.into();
        if !valid_id(id) {
            // The id is not shown: an entry written the wrong way round has its secret there.
            return Err(SigningKeyError(format!(
                "a signing key id is not 1 to {MAX_KEY_ID_BYTES} characters of [A-Za-z0-9_.-] \
                 (write each key as `id:hexsecret`)"
            )));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SigningKeyError(format!(
                "signing key {id:?}: its secret is {} bytes, at least {MIN_SECRET_BYTES} are \
                 needed (generate one with `openssl rand -hex 32`)",
                secret.len()
            )));
        }
        Ok(SigningKey {
            id: id.to_owned(),
            secret,
        })
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, channel: &str, signed: &[u8]) -> HmacSha256 {
        // Any key length is valid for HMAC: `new_from_slice` cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key");
        mac.update(DOMAIN);
        mac.update(&(channel.len() as u64).to_le_bytes());
        mac.update(channel.as_bytes());
        mac.update(&(self.id.len() as u64).to_le_bytes());
        mac.update(self.id.as_bytes());
        mac.update(signed);
        mac
    }
}

/// The keys a process signs with (the first) and accepts (all of them).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Keyring {
    keys: Vec<SigningKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(SigningKey::id).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl Keyring {
    /// A keyring of `keys`: signs with the first, accepts all.
    ///
    /// # Errors
    ///
    /// No key, or two keys with the same id.
    pub fn new(keys: Vec<SigningKey>) -> Result<Keyring, SigningKeyError> {
        if keys.is_empty() {
            return Err(SigningKeyError("no signing key given".to_owned()));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(SigningKeyError(format!(
                    "signing key id {:?} given twice",
                    k.id
                )));
            }
        }
        Ok(Keyring { keys })
    }

    /// Parse keys written as `id:hexsecret`, separated by commas, whitespace or newlines (the
    /// form of `WALCACHE_SIGNING_KEYS`, `WALCACHED_SIGNING_KEYS` and of a key file); `#`
    /// starts a comment to the end of its line. The first key signs.
    ///
    /// # Errors
    ///
    /// [`SigningKeyError`] naming the entry (by its position and id, never its secret) and the fix.
    pub fn parse(text: &str) -> Result<Keyring, SigningKeyError> {
        let mut keys = Vec::new();
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let Some((id, hex)) = entry.split_once(':').filter(|(id, _)| valid_id(id)) else {
                return Err(SigningKeyError(format!(
                    "signing key #{}: expected `id:hexsecret`, the id 1 to {MAX_KEY_ID_BYTES} \
                     characters of [A-Za-z0-9_.-] (e.g. `k1:` followed by the output of \
                     `openssl rand -hex 32`)",
                    i + 1
                )));
            };
            // Entries are named by position only: written the wrong way round, an entry has
            // its secret where the id goes.
            let secret = decode_hex(hex).ok_or_else(|| {
                SigningKeyError(format!(
                    "signing key #{}: the secret is not hexadecimal (an even number of \
                     [0-9a-fA-F]; write each key as `id:hexsecret`)",
                    i + 1
                ))
            })?;
            keys.push(SigningKey::new(id, secret)?);
        }
        Keyring::new(keys)
    }

    /// The key this keyring signs with.
    pub fn signer(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// The ids of the keys accepted, the signer first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(SigningKey::id).collect()
    }

    fn get(&self, id: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Encode `message` for `channel`, signed with the signer (v1.4).
    pub fn sign(&self, message: &Message, channel: &str) -> Vec<u8> {
        let key = self.signer();
        let mut out = message.encode();
        let mac = key.mac(channel, &out).finalize().into_bytes();
        let trailer = string_len(&key.id) + MAC_LEN;
        out.reserve(varint_len(trailer as u64) + trailer);
        put_varint(&mut out, trailer as u64);
        put_string(&mut out, &key.id);
        out.extend_from_slice(&mac);
        out
    }

    /// Decode `bytes` received on `channel` and check its signature against these keys.
    ///
    /// # Errors
    ///
    /// [`AuthError`]: a message that does not decode, carries no signature, is signed by a
    /// key this keyring does not hold, or whose MAC does not match (a forgery, another
    /// channel's message, or bytes changed on the way).
    pub fn verify(&self, bytes: &[u8], channel: &str) -> Result<Message, AuthError> {
        let (message, signature) = Message::decode_signed(bytes)?;
        let Some(sig) = signature else {
            return Err(AuthError::Unsigned);
        };
        let Some(key) = self.get(sig.key_id) else {
            // The sender chose it: at most the length of a real id.
            let shown: String = sig.key_id.chars().take(MAX_KEY_ID_BYTES).collect();
            return Err(AuthError::UnknownKey(shown));
        };
        key.mac(channel, &bytes[..sig.signed_len])
            .verify_slice(sig.mac)
            .map_err(|_| AuthError::BadMac)?;
        Ok(message)
    }
}

/// Why a message was not accepted as signed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The bytes are not a message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message carries no signature.
    #[error("the message is not signed")]
    Unsigned,
    /// Signed with a key this process does not hold.
    #[error("the message is signed with key {0:?}, which this process does not accept")]
    UnknownKey(String),
    /// The MAC does not match the message, the channel and the key.
    #[error(
        "the message's signature does not match (forged, changed, or sent on another channel)"
    )]
    BadMac,
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Decode(_) => "undecodable",
            AuthError::Unsigned => "unsigned",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadMac => "bad_mac",
        }
    }
}

/// A message's signature, as [`Message::decode_signed`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature<'a> {
    /// The signing key's id.
    pub key_id: &'a str,
    /// The MAC.
    pub mac: &'a [u8],
    /// How many leading bytes of the message the MAC covers.
    pub signed_len: usize,
}

impl Message {
    /// Decode a message ([`Message::decode`]) and find its signature (v1.4), if it carries
    /// one: the bytes after the body start with it.
    ///
    /// # Errors
    ///
    /// As [`Message::decode`]; a signature that starts but does not finish inside the bytes,
    /// or whose MAC is not 32 bytes, is [`DecodeError::Truncated`].
    pub fn decode_signed(bytes: &[u8]) -> Result<(Message, Option<Signature<'_>>), DecodeError> {
        let (message, body_end) = Message::decode_with_end(bytes)?;
        let rest = &bytes[body_end..];
        if rest.is_empty() {
            return Ok((message, None));
        }
        let mut r = Reader { buf: rest };
        let len = r.varint("signature length")?;
        let mut s = Reader {
            buf: r.bytes(len, "signature")?,
        };
        let key_id = s.str("signing key id")?;
        let mac = s.bytes(MAC_LEN as u64, "signature MAC")?;
        if !s.is_empty() {
            return Err(DecodeError::Truncated {
                what: "signature MAC",
            });
        }
        Ok((
            message,
            Some(Signature {
                key_id,
                mac,
                signed_len: body_end,
            }),
        ))
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Hex digits only (`u8::from_str_radix` alone would also take a leading `+`).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, HeartbeatDetails};

    fn keyring(spec: &str) -> Keyring {
        Keyring::parse(spec).expect("keyring")
    }

    const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn heartbeat() -> Message {
        let mut m = Message::new(
            7,
            3,
            Body::Heartbeat {
                last_data_seq: 3,
                details: Some(HeartbeatDetails::default()),
            },
        );
        m.sent_at_micros = 1_764_000_000_000_000;
        m
    }

    #[test]
    fn a_signed_message_verifies_on_its_channel_only_and_with_its_key_only() {
        let signer = keyring(K1);
        let bytes = signer.sign(&heartbeat(), "wc:inval");
        assert_eq!(signer.verify(&bytes, "wc:inval"), Ok(heartbeat()));
        assert_eq!(
            Message::decode(&bytes),
            Ok(heartbeat()),
            "an unsigned reader reads it"
        );
        assert_eq!(
            signer.verify(&bytes, "wc:app"),
            Err(AuthError::BadMac),
            "not on another channel"
        );
        assert_eq!(
            keyring(K2).verify(&bytes, "wc:inval"),
            Err(AuthError::UnknownKey("k1".into()))
        );
        let both = keyring(&format!("{K2},{K1}"));
        assert_eq!(both.verify(&bytes, "wc:inval"), Ok(heartbeat()));
        assert_eq!(both.signer().id(), "k2");
        assert_eq!(
            signer.verify(&heartbeat().encode(), "wc:inval"),
            Err(AuthError::Unsigned)
        );
    }

    #[test]
    fn every_byte_is_covered() {
        let signer = keyring(K1);
        let bytes = signer.sign(&heartbeat(), "wc:inval");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(signer.verify(&bad, "wc:inval").is_err(), "byte {i} flipped");
        }
        // Same key id, another secret: a forgery.
        let forger = keyring("k1:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
        let forged = forger.sign(&heartbeat(), "wc:inval");
        assert_eq!(signer.verify(&forged, "wc:inval"), Err(AuthError::BadMac));
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        for (spec, needle) in [
            ("", "no signing key"),
            ("k1", "id:hexsecret"),
            (
                "+0+1+2+3+4+5+6+7+8+9+a+b+c+d+e+f+0+1+2+3+4+5+6+7+8+9+a+b+c+d+e+f",
                "id:hexsecret",
            ),
            ("k1:abc", "hexadecimal"),
            ("k1:00", "at least 32"),
            ("bad id:00", "id:hexsecret"),
            (&format!("{K1},{K1}"), "twice"),
            (
                "k/1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "[A-Za-z0-9_.-]",
            ),
            (
                "k1:+0+1+2+3+4+5+6+7+8+9+a+b+c+d+e+f+0+1+2+3+4+5+6+7+8+9+a+b+c+d+e+f",
                "hexadecimal",
            ),
        ] {
            let e = Keyring::parse(spec).expect_err(spec).to_string();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains("0102030405"), "a secret in {e}");
        }
        let ring = keyring(&format!("# rotation\n{K1} # old\n  {K2}\n"));
        assert_eq!(ring.ids(), vec!["k1", "k2"]);
        assert!(!format!("{ring:?}").contains("0102"));
    }

    #[test]
    fn a_cut_signature_is_truncated_not_unsigned() {
        let bytes = keyring(K1).sign(&heartbeat(), "wc:inval");
        let unsigned = heartbeat().encode().len();
        for cut in unsigned + 1..bytes.len() {
            assert!(
                matches!(
                    Message::decode_signed(&bytes[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }
}

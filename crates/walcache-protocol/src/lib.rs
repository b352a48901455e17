//! The pieces of walcache that the library and the daemon must agree on byte for byte.
//!
//! - [`message`]: the invalidation [`Message`] and its versioned wire format. Decoding is bounded
//!   ([`MAX_MESSAGE_BYTES`]) and never panics on hostile bytes; within a major version, fields a
//!   newer minor version appends are skipped, so rolling upgrades do not flush caches.
//! - [`auth`]: signed messages (v1.4): HMAC-SHA256 with a [`Keyring`] of named keys, so that
//!   only holders of a key can move another process's caches.
//! - [`naming`]: the Redis key and channel names ([`Naming`]) and the rules for namespaces and tags
//!   ([`validate_namespace`], [`validate_tag`]).
//! - [`key`]: the typed key builder. The library builds a key from Rust values ([`ToKey`],
//!   [`key_of`]); the daemon builds it from PostgreSQL's text output of a row
//!   ([`ColumnType::parse_pg_text`], [`KeyTemplate`]). Both produce the same canonical string, or
//!   invalidations would silently miss.
//!
//! This crate does no I/O: no tokio, no Redis, no PostgreSQL.
//!
//! # Example
//!
//! ```
//! use walcache_protocol::{key_of, Body, KeyRef, Message, Naming};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let naming = Naming::default();
//! let key = key_of(&(7i64, "a:b"));
//! assert_eq!(key, "7:a%3Ab");
//! assert_eq!(naming.value_key("users", 3, 1, &key), "wc:{users}:g3:s1:7:a%3Ab");
//!
//! let msg = Message::new(0x5eed, 1, Body::Keys(vec![KeyRef::new("users", key)]));
//! let bytes = msg.encode();
//! assert_eq!(bytes.len(), msg.encoded_len());
//! assert_eq!(Message::decode(&bytes)?, msg);
//! # Ok(())
//! # }
//! ```

pub mod auth;
pub mod key;
pub mod message;
pub mod naming;
pub mod redact;

pub use auth::{AuthError, Keyring, Signature, SigningKey, SigningKeyError, MAX_SIGNATURE_BYTES};
pub use key::{
    key_of, ColumnType, KeyBuilder, KeyError, KeyPart, KeyTemplate, TemplateError, ToKey,
};
pub use message::{
    Body, DecodeError, HeartbeatDetails, KeyRef, Message, TagRef, FORMAT_MAJOR, FORMAT_MINOR,
    MAX_MESSAGE_BYTES,
};
pub use naming::{validate_namespace, validate_tag, NameError, Naming};

/// The longest fill lease a library may hold. A fill lands within this long of its value's
/// stamp or not at all, so the daemon's full refresh may prune a tag version older than a
/// completed cycle's start minus this: no value it could make stale survives the cycle.
pub const MAX_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

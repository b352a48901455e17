//! The v1.3 decoder, frozen: a copy of `Message::decode` as walcache-protocol shipped it with
//! wire format v1.3 (`crates/walcache-protocol/src/message.rs` at commit 22edd9d), trimmed to the
//! decode path — constants, types, `Message::decode`, `DecodeError` and the reader. Encoders,
//! constructors and unit tests were removed; what is left is verbatim. It stands for the
//! subscribers already deployed: never edit it to make a test pass.

// The copy keeps its original visibility and error fields, which this test crate does not all use.
#![allow(dead_code, unreachable_pub)]

use thiserror::Error;

/// The major format version this crate writes and the only one it decodes.
pub const FORMAT_MAJOR: u8 = 1;

/// Upper bound on an encoded message the decoder accepts; the daemon must split below it.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The two bytes every encoded message starts with.
pub const MAGIC: [u8; 2] = *b"WC";

const KIND_KEYS: u8 = 1;
const KIND_TAGS: u8 = 2;
const KIND_FLUSH: u8 = 3;
const KIND_HEARTBEAT: u8 = 4;

/// The longest varint the decoder accepts, in bytes.
const MAX_VARINT_BYTES: usize = 10;

/// One invalidation message: who sent it, where it sits in the sender's sequence, and what to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's epoch: random 64-bit per daemon run (or per library process on the app
    /// channel). A change of epoch means the sequence restarted.
    pub epoch: u64,
    /// Sequence number, 1-based, +1 per message on the sequenced channel; 0 on the unsequenced
    /// application channel.
    pub seq: u64,
    /// Commit LSN of the newest change covered (0 if none).
    pub lsn: u64,
    /// Commit time of the newest change covered, microseconds since the Unix epoch (0 if none).
    pub commit_time_micros: i64,
    /// When the sender encoded the message: microseconds since the Unix epoch on the *sender's*
    /// clock; 0 = unknown. A v1.0 message decodes with 0. Since v1.1.
    ///
    /// The sender sets it just before encoding ([`Message::encode`] does not read the clock).
    /// Sender and receiver clocks may disagree, so use it for diagnostics and lag estimates, never
    /// to order messages: `seq` does that.
    pub sent_at_micros: i64,
    /// What to drop.
    pub body: Body,
}

/// What a [`Message`] asks its receivers to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// Drop these keys.
    Keys(Vec<KeyRef>),
    /// Drop every entry carrying one of these tags in its namespace (the tags' versions were
    /// moved in Redis).
    Tags(Vec<TagRef>),
    /// Drop whole namespaces (their generation was bumped in Redis).
    Flush(Vec<String>),
    /// Liveness. Sent only while the daemon is streaming and caught up.
    Heartbeat {
        /// The `seq` of the last non-heartbeat message, so a lost final data message shows as a
        /// gap within one heartbeat interval.
        last_data_seq: u64,
        /// The daemon's state when it sent the heartbeat (since v1.1). `None`: the sender did
        /// not write them (always so for a v1.0 sender); a `None` heartbeat encodes exactly as
        /// a v1.0 heartbeat body.
        details: Option<HeartbeatDetails>,
    },
}

/// What a v1.1 or later daemon reports in a [`Body::Heartbeat`], besides `last_data_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeartbeatDetails {
    /// The daemon's replication lag when it sent the heartbeat: bytes of WAL between the server's
    /// position and the daemon's (0 = caught up).
    pub lag_bytes: u64,
    /// The daemon's full-refresh interval, in milliseconds; 0 = no refresh schedule.
    pub refresh_interval_ms: u64,
    /// The namespaces this heartbeat certifies: for each of them, every change committed before
    /// the daemon's sample of the server's WAL position has been invalidated. Namespace names
    /// (see [`crate::validate_namespace`]); the list may be empty.
    pub namespaces: Vec<String>,
    /// Namespaces the daemon's rules serve but that it cannot keep fresh right now (drift it
    /// cannot repair, such as another consumer's publication that no longer publishes a rule's
    /// table): every later change may be missed, so subscribers must bypass every cache tier
    /// for them until a heartbeat no longer lists them. Never also in `namespaces`. Since v1.2;
    /// empty when decoded from a v1.1 heartbeat.
    pub out_of_service: Vec<String>,
}

/// One tag inside a namespace, as carried by [`Body::Tags`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagRef {
    /// The namespace whose entries carrying the tag are dropped (see
    /// [`crate::validate_namespace`]); `None`: every namespace (a v1.2 or older sender, whose
    /// tags were not scoped to a namespace).
    pub namespace: Option<String>,
    /// The tag (see [`crate::validate_tag`]).
    pub tag: String,
}

/// One cache key inside a namespace, as carried by [`Body::Keys`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// The namespace (see [`crate::validate_namespace`]).
    pub namespace: String,
    /// The canonical key inside the namespace (see [`crate::KeyBuilder`]).
    pub key: String,
}

impl Message {
    /// Decode a message of any minor version of [`FORMAT_MAJOR`].
    ///
    /// A v1.0 message decodes with `sent_at_micros == 0` and heartbeat `details: None`; v1.1
    /// heartbeat details decode with an empty `out_of_service`; v1.2 tags with no namespace.
    /// Fields a minor newer than v1.3 appended (extra header bytes, extra body bytes, bytes
    /// after the body) are ignored.
    ///
    /// # Errors
    ///
    /// Any [`DecodeError`]: input longer than [`MAX_MESSAGE_BYTES`], a wrong magic, another major
    /// version, an unknown body kind, a length or count running past the end, a v1.1 or v1.2
    /// field that starts but does not end inside its section, a malformed varint, or a string that is not
    /// UTF-8. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let mut r = Reader { buf: bytes };
        match r.buf.split_first_chunk::<2>() {
            Some((magic, rest)) if *magic == MAGIC => r.buf = rest,
            Some(_) => return Err(DecodeError::BadMagic),
            None if MAGIC.starts_with(r.buf) => {
                return Err(DecodeError::Truncated { what: "magic" })
            }
            None => return Err(DecodeError::BadMagic),
        }
        let major = r.byte("format version")?;
        if major != FORMAT_MAJOR {
            return Err(DecodeError::UnsupportedMajor { major });
        }
        let _minor = r.byte("format version")?;

        let header_len = r.varint("header length")?;
        let mut h = Reader {
            buf: r.bytes(header_len, "header")?,
        };
        let epoch = u64::from_le_bytes(h.array::<8>("epoch")?);
        let seq = h.varint("seq")?;
        let lsn = h.varint("lsn")?;
        let commit_time_micros = unzigzag(h.varint("commit_time_micros")?);
        // v1.1: present if the header goes on; a v1.0 header ends here.
        let sent_at_micros = if h.is_empty() {
            0
        } else {
            unzigzag(h.varint("sent_at_micros")?)
        };
        // Anything left in `h` belongs to a newer minor version.

        let kind = r.byte("body kind")?;
        if !(KIND_KEYS..=KIND_HEARTBEAT).contains(&kind) {
            return Err(DecodeError::UnknownBodyKind { kind });
        }
        let body_len = r.varint("body length")?;
        let mut b = Reader {
            buf: r.bytes(body_len, "body")?,
        };
        let body = match kind {
            KIND_KEYS => {
                // Each key needs at least two bytes: two empty strings.
                let count = b.count(2, "key count")?;
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let namespace = b.string("namespace")?;
                    let key = b.string("key")?;
                    keys.push(KeyRef { namespace, key });
                }
                Body::Keys(keys)
            }
            KIND_TAGS => {
                let tags = b.strings("tag count", "tag")?;
                // v1.3: each tag's namespace, if the body goes on; a v1.2 body ends here.
                let mut namespaces = Vec::new();
                if !b.is_empty() {
                    for _ in 0..tags.len() {
                        let ns = b.string("tag namespace")?;
                        namespaces.push((!ns.is_empty()).then_some(ns));
                    }
                }
                namespaces.resize(tags.len(), None);
                Body::Tags(
                    tags.into_iter()
                        .zip(namespaces)
                        .map(|(tag, namespace)| TagRef { namespace, tag })
                        .collect(),
                )
            }
            KIND_FLUSH => Body::Flush(b.strings("namespace count", "namespace")?),
            _ => {
                let last_data_seq = b.varint("last_data_seq")?;
                // v1.1: present if the body goes on; a v1.0 heartbeat body ends here.
                let details = if b.is_empty() {
                    None
                } else {
                    let lag_bytes = b.varint("lag_bytes")?;
                    let refresh_interval_ms = b.varint("refresh_interval_ms")?;
                    let namespaces =
                        b.strings("certified namespace count", "certified namespace")?;
                    // v1.2: present if the body goes on; v1.1 details end here.
                    let out_of_service = if b.is_empty() {
                        Vec::new()
                    } else {
                        b.strings("out-of-service namespace count", "out-of-service namespace")?
                    };
                    Some(HeartbeatDetails {
                        lag_bytes,
                        refresh_interval_ms,
                        namespaces,
                        out_of_service,
                    })
                };
                Body::Heartbeat {
                    last_data_seq,
                    details,
                }
            }
        };
        // Anything left in `b` or `r` belongs to a newer minor version.
        Ok(Message {
            epoch,
            seq,
            lsn,
            commit_time_micros,
            sent_at_micros,
            body,
        })
    }
}

/// Why bytes could not be decoded as a [`Message`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than [`MAX_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The input's length.
        len: usize,
        /// The limit, [`MAX_MESSAGE_BYTES`].
        max: usize,
    },
    /// The input does not start with [`MAGIC`]: not a walcache message.
    #[error("not a walcache message: the first bytes are not the magic \"WC\"")]
    BadMagic,
    /// The message is in a major format version this decoder does not know.
    #[error("unsupported message format major version {major} (this decoder reads major version {FORMAT_MAJOR})")]
    UnsupportedMajor {
        /// The major version found.
        major: u8,
    },
    /// The input ended, a length ran past the end of its enclosing section, or a section ended
    /// inside a field (such as v1.1 heartbeat details or a v1.2 `out_of_service` cut short).
    #[error("message truncated: it ends inside the {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A varint is longer than 10 bytes or its value does not fit in a `u64`.
    #[error("malformed varint: longer than 10 bytes or larger than a u64")]
    VarintOverflow,
    /// A string is not valid UTF-8.
    #[error("a string in the message is not valid UTF-8")]
    InvalidUtf8,
    /// The body kind byte is not one this decoder knows.
    #[error("unknown message body kind {kind} (known kinds are 1 to 4)")]
    UnknownBodyKind {
        /// The kind byte found.
        kind: u8,
    },
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(DecodeError::Truncated { what })?;
        self.buf = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (a, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated { what })?;
        self.buf = rest;
        Ok(*a)
    }

    fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.buf.len())
            .ok_or(DecodeError::Truncated { what })?;
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..MAX_VARINT_BYTES {
            let b = *self.buf.get(i).ok_or(DecodeError::Truncated { what })?;
            if i == MAX_VARINT_BYTES - 1 && b > 1 {
                // The 10th byte may only carry bit 63 and must end the varint.
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = self.buf.get(i + 1..).unwrap_or_default();
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    /// A count of items each at least `min_item` bytes long, checked against the remaining bytes
    /// so that it is safe to pre-allocate.
    fn count(&mut self, min_item: usize, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.varint(what)?;
        usize::try_from(count)
            .ok()
            .filter(|&c| c <= self.buf.len() / min_item)
            .ok_or(DecodeError::Truncated { what })
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.varint(what)?;
        let bytes = self.bytes(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8)
    }

    fn strings(
        &mut self,
        count_what: &'static str,
        what: &'static str,
    ) -> Result<Vec<String>, DecodeError> {
        let count = self.count(1, count_what)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(self.string(what)?);
        }
        Ok(out)
    }
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

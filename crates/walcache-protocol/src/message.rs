//! The invalidation message and its versioned wire format.
//!
//! The daemon publishes one [`Message`] per batch on the sequenced invalidation channel; services
//! publish unsequenced messages (`seq == 0`) on the application channel. Every embedded library
//! decodes them with [`Message::decode`], which is bounded and never panics, whatever the bytes.
//!
//! # Wire format v1.4
//!
//! Fields marked `[v1.1]` were appended by minor version 1, `[v1.2]` by minor version 2,
//! `[v1.3]` by minor version 3, `[v1.4]` by minor version 4; everything else is v1.0.
//!
//! ```text
//! bytes 0..2  magic b"WC"
//! byte  2     major (1)      -> other major: DecodeError::UnsupportedMajor
//! byte  3     minor (4)      -> any minor accepted (newer minors may append fields; see "extra bytes")
//! varint      header_len, then header_len bytes of header:
//!               epoch: u64 little-endian, fixed 8 bytes
//!               seq: varint;  lsn: varint;  commit_time_micros: zigzag varint
//!   [v1.1]      sent_at_micros: zigzag varint           (absent in v1.0 -> 0)
//!               [any extra header bytes after these: ignored — a newer minor's fields]
//! byte        body kind: 1 Keys, 2 Tags, 3 Flush, 4 Heartbeat  (unknown -> DecodeError::UnknownBodyKind)
//! varint      body_len, then body_len bytes of body:
//!               Keys:  count varint, then count × (namespace: string, key: string)
//!               Tags:  count varint, then count × tag string
//!   [v1.3]        then, optionally (absent -> every namespace): count × namespace string,
//!                 the namespace of each tag in order ('' = every namespace)
//!               Flush: count varint, then count × string
//!               Heartbeat: last_data_seq varint
//!   [v1.1]        then, optionally and only as a whole (absent -> details None):
//!                 lag_bytes varint;  refresh_interval_ms varint;
//!                 namespaces: count varint, then count × string
//!   [v1.2]        then, optionally (absent -> empty):
//!                 out_of_service: count varint, then count × string
//!               [extra bytes after the known fields: ignored]
//! [v1.4] optionally (absent -> unsigned), right after the body:
//!             varint signature_len, then signature_len bytes: key id (string), MAC (32 bytes)
//!             (see [`crate::auth`]: HMAC-SHA256 over the channel, the key id and every byte
//!             before the signature)
//! [any bytes after the body (v1.3) or after the signature (v1.4): ignored]
//! varint = unsigned LEB128, at most 10 bytes, value must fit u64 (overlong/overflow -> VarintOverflow)
//! string = varint byte length + UTF-8 bytes (invalid UTF-8 -> InvalidUtf8)
//! ```
//!
//! Zigzag maps a signed value `n` to `(n << 1) ^ (n >> 63)`, so small magnitudes stay short.
//! The encoder always writes minimal varints; the decoder also accepts non-minimal ones as long as
//! they fit in 10 bytes and in a `u64`.
//!
//! The encoder writes minor 4 and always writes `sent_at_micros` (0 when unknown);
//! [`Message::encode`] writes no signature, [`Keyring::sign`](crate::Keyring::sign) appends one. It writes the
//! heartbeat details only when [`Body::Heartbeat`]'s `details` is `Some`, so a heartbeat without
//! details is exactly a v1.0 heartbeat body (still under minor byte 4); details are always
//! written whole, `out_of_service` included (a count of 0 when empty), so a later minor can
//! append after them.
//!
//! # Compatibility
//!
//! Within major version 1, a newer minor may only *append*: fields at the end of the header, fields
//! at the end of a body, or bytes after the body. This decoder skips all of those, so a rolling
//! upgrade of the daemon does not make old subscribers flush their caches. A new body kind or a new
//! major version is a breaking change: old decoders report [`DecodeError::UnknownBodyKind`] or
//! [`DecodeError::UnsupportedMajor`], and a subscriber treats that as a lost message.
//!
//! Between v1.0 and v1.1 in particular:
//!
//! - A v1.0 decoder reads a v1.1 message as the same message without the new fields: it skips
//!   `sent_at_micros` as extra header bytes and the heartbeat details as extra body bytes.
//! - This decoder reads a v1.0 message with `sent_at_micros == 0` and heartbeat `details: None`.
//! - Whether an appended field is present is decided by the length of its section, not by the
//!   minor byte: a v1.1 field is present when its section has bytes left where the field starts.
//!   A field that starts but does not finish inside its section (a `sent_at_micros` varint cut by
//!   the header's end, heartbeat details cut anywhere before the last namespace ends) is
//!   [`DecodeError::Truncated`], not skipped.
//! - A later minor that appends to the header or to a heartbeat body must therefore write every
//!   v1.1 field of that section first (a heartbeat always with details, 0/empty if unknown).
//!
//! Between v1.1 and v1.2 (the same rules, one field further):
//!
//! - A v1.1 (or v1.0) decoder reads a v1.2 heartbeat as the same heartbeat without
//!   `out_of_service`: the field is extra body bytes after the details it knows. Such a
//!   subscriber does not bypass an out-of-service namespace; it did not before either, and the
//!   namespace is no longer listed as certified.
//! - This decoder reads v1.1 details (the body ends after `namespaces`) with `out_of_service`
//!   empty: nothing is out of service, as a v1.1 daemon meant.
//! - `out_of_service` is present when the heartbeat body has bytes left after `namespaces`;
//!   cut short inside, it is [`DecodeError::Truncated`]. A later minor that appends to a
//!   heartbeat body must therefore write `out_of_service` first (empty if it has none).
//! - A namespace in `out_of_service` is never also in `namespaces`: a daemon does not certify
//!   what it cannot keep fresh. A decoder that finds both treats it as out of service.
//!
//! Between v1.2 and v1.3:
//!
//! - Tags are scoped to a namespace since v1.3 (their versions live in the namespace's hash
//!   slot). A v1.3 `Tags` body appends the namespace of each tag after the tags; a v1.2 (or
//!   older) decoder skips them and drops the tags in every namespace, which only drops more.
//! - This decoder reads a v1.2 `Tags` body with every [`TagRef::namespace`] `None`: the tag
//!   in every namespace, as a v1.2 sender meant. The namespaces are present when the body has
//!   bytes left after the tags; cut short inside, they are [`DecodeError::Truncated`].
//! - The encoder writes the namespaces when any tag has one (`''` for those that do not), so a
//!   body of tags without namespaces is exactly a v1.2 body.
//!
//! Between v1.3 and v1.4:
//!
//! - A v1.4 message may carry a signature right after its body. A v1.3 (or older) decoder
//!   skips it as bytes after the body, so signing breaks no older subscriber; such a
//!   subscriber also accepts unsigned messages, so it gains no protection either.
//! - A message without a signature is a v1.3 message under minor byte 4 (and decodes the same
//!   in every version). Whether a message is signed is decided by whether bytes follow the
//!   body; a signature cut short, or with a MAC that is not 32 bytes, is
//!   [`DecodeError::Truncated`] for [`Message::decode_signed`] (plain [`Message::decode`]
//!   ignores it, as older decoders do).
//! - A later minor must append inside the header or a body, never after the body: bytes after
//!   an unsigned body are read as a signature, and bytes after a signature are outside its
//!   MAC (unauthenticated). This decoder ignores what follows a complete signature.
//!
//! # Limits
//!
//! [`Message::decode`] refuses input longer than [`MAX_MESSAGE_BYTES`], and never allocates from a
//! count or length before checking that the remaining bytes could hold it. The daemon must split
//! batches so that every encoded message stays below the limit (see [`Message::encoded_len`] and
//! [`KeyRef::encoded_len`]).

use thiserror::Error;

/// The major format version this crate writes and the only one it decodes.
pub const FORMAT_MAJOR: u8 = 1;

/// The minor format version this crate writes (4: v1.4). Any minor of [`FORMAT_MAJOR`] is
/// decoded.
pub const FORMAT_MINOR: u8 = 4;

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

impl HeartbeatDetails {
    /// The bytes the details add to a heartbeat body.
    fn encoded_len(&self) -> usize {
        varint_len(self.lag_bytes)
            + varint_len(self.refresh_interval_ms)
            + varint_len(self.namespaces.len() as u64)
            + self.namespaces.iter().map(|s| string_len(s)).sum::<usize>()
            + varint_len(self.out_of_service.len() as u64)
            + self
                .out_of_service
                .iter()
                .map(|s| string_len(s))
                .sum::<usize>()
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.lag_bytes);
        put_varint(out, self.refresh_interval_ms);
        put_varint(out, self.namespaces.len() as u64);
        for s in &self.namespaces {
            put_string(out, s);
        }
        put_varint(out, self.out_of_service.len() as u64);
        for s in &self.out_of_service {
            put_string(out, s);
        }
    }
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

impl TagRef {
    /// A tag of one namespace.
    pub fn new(namespace: impl Into<String>, tag: impl Into<String>) -> TagRef {
        TagRef {
            namespace: Some(namespace.into()),
            tag: tag.into(),
        }
    }

    /// The bytes this tag adds to the body of a [`Body::Tags`] message whose tags carry their
    /// namespaces (not counting the growth of the count varint).
    pub fn encoded_len(&self) -> usize {
        string_len(&self.tag) + string_len(self.namespace.as_deref().unwrap_or(""))
    }
}

/// One cache key inside a namespace, as carried by [`Body::Keys`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// The namespace (see [`crate::validate_namespace`]).
    pub namespace: String,
    /// The canonical key inside the namespace (see [`crate::KeyBuilder`]).
    pub key: String,
}

impl KeyRef {
    /// A key reference from anything string-like.
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> KeyRef {
        KeyRef {
            namespace: namespace.into(),
            key: key.into(),
        }
    }

    /// The bytes this key adds to the body of a [`Body::Keys`] message (not counting the growth
    /// of the count and length varints), so a sender can split batches below
    /// [`MAX_MESSAGE_BYTES`] without re-encoding.
    pub fn encoded_len(&self) -> usize {
        string_len(&self.namespace) + string_len(&self.key)
    }
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Keys(_) => KIND_KEYS,
            Body::Tags(_) => KIND_TAGS,
            Body::Flush(_) => KIND_FLUSH,
            Body::Heartbeat { .. } => KIND_HEARTBEAT,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Body::Keys(keys) => {
                varint_len(keys.len() as u64) + keys.iter().map(KeyRef::encoded_len).sum::<usize>()
            }
            Body::Tags(tags) => {
                let scoped = tags.iter().any(|t| t.namespace.is_some());
                varint_len(tags.len() as u64)
                    + tags
                        .iter()
                        .map(|t| {
                            if scoped {
                                t.encoded_len()
                            } else {
                                string_len(&t.tag)
                            }
                        })
                        .sum::<usize>()
            }
            Body::Flush(items) => {
                varint_len(items.len() as u64) + items.iter().map(|s| string_len(s)).sum::<usize>()
            }
            Body::Heartbeat {
                last_data_seq,
                details,
            } => {
                varint_len(*last_data_seq)
                    + details.as_ref().map_or(0, HeartbeatDetails::encoded_len)
            }
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Body::Keys(keys) => {
                put_varint(out, keys.len() as u64);
                for k in keys {
                    put_string(out, &k.namespace);
                    put_string(out, &k.key);
                }
            }
            Body::Tags(tags) => {
                put_varint(out, tags.len() as u64);
                for t in tags {
                    put_string(out, &t.tag);
                }
                if tags.iter().any(|t| t.namespace.is_some()) {
                    for t in tags {
                        put_string(out, t.namespace.as_deref().unwrap_or(""));
                    }
                }
            }
            Body::Flush(items) => {
                put_varint(out, items.len() as u64);
                for s in items {
                    put_string(out, s);
                }
            }
            Body::Heartbeat {
                last_data_seq,
                details,
            } => {
                put_varint(out, *last_data_seq);
                if let Some(details) = details {
                    details.encode_into(out);
                }
            }
        }
    }
}

impl Message {
    /// A message with `lsn`, `commit_time_micros` and `sent_at_micros` set to 0.
    pub fn new(epoch: u64, seq: u64, body: Body) -> Message {
        Message {
            epoch,
            seq,
            lsn: 0,
            commit_time_micros: 0,
            sent_at_micros: 0,
            body,
        }
    }

    /// Whether this is a [`Body::Heartbeat`].
    pub fn is_heartbeat(&self) -> bool {
        matches!(self.body, Body::Heartbeat { .. })
    }

    /// Encode in the current format version ([`FORMAT_MAJOR`].[`FORMAT_MINOR`]): the header
    /// always with `sent_at_micros`, a heartbeat body with its details only when they are `Some`.
    ///
    /// Encoding never fails; it is the sender's job to keep [`Message::encoded_len`] at or below
    /// [`MAX_MESSAGE_BYTES`], or receivers will refuse the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Append the encoding to `out` (same bytes as [`Message::encode`]).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_MAJOR);
        out.push(FORMAT_MINOR);
        put_varint(out, self.header_len() as u64);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        put_varint(out, self.seq);
        put_varint(out, self.lsn);
        put_varint(out, zigzag(self.commit_time_micros));
        put_varint(out, zigzag(self.sent_at_micros));
        out.push(self.body.kind());
        put_varint(out, self.body.encoded_len() as u64);
        self.body.encode_into(out);
    }

    /// The exact length of [`Message::encode`]'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        let header = self.header_len();
        let body = self.body.encoded_len();
        MAGIC.len() + 2 + varint_len(header as u64) + header + 1 + varint_len(body as u64) + body
    }

    fn header_len(&self) -> usize {
        8 + varint_len(self.seq)
            + varint_len(self.lsn)
            + varint_len(zigzag(self.commit_time_micros))
            + varint_len(zigzag(self.sent_at_micros))
    }

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
        Message::decode_with_end(bytes).map(|(message, _)| message)
    }

    /// [`Message::decode`], and where the body ends (what follows is a v1.4 signature or a
    /// newer minor's bytes).
    pub(crate) fn decode_with_end(bytes: &[u8]) -> Result<(Message, usize), DecodeError> {
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
        // Anything left in `b` belongs to a newer minor version; what follows the body in `r`
        // is a v1.4 signature, or a newer minor's.
        let body_end = bytes.len() - r.buf.len();
        Ok((
            Message {
                epoch,
                seq,
                lsn,
                commit_time_micros,
                sent_at_micros,
                body,
            },
            body_end,
        ))
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
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn is_empty(&self) -> bool {
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

    pub(crate) fn bytes(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.buf.len())
            .ok_or(DecodeError::Truncated { what })?;
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
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
        self.str(what).map(str::to_owned)
    }

    pub(crate) fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.varint(what)?;
        let bytes = self.bytes(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
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

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) fn string_len(s: &str) -> usize {
    varint_len(s.len() as u64) + s.len()
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_varint(bytes: &[u8]) -> Result<u64, DecodeError> {
        Reader { buf: bytes }.varint("test")
    }

    #[test]
    fn varint_round_trip_and_length() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(read_varint(&out), Ok(v));
        }
    }

    #[test]
    fn varint_limits() {
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&max), Ok(u64::MAX));
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(read_varint(&overflow), Err(DecodeError::VarintOverflow));
        let too_long = [0x80; 11];
        assert_eq!(read_varint(&too_long), Err(DecodeError::VarintOverflow));
        // Non-minimal but within 10 bytes is accepted.
        assert_eq!(read_varint(&[0x80, 0x00]), Ok(0));
        assert_eq!(
            read_varint(&[0x80]),
            Err(DecodeError::Truncated { what: "test" })
        );
        assert_eq!(
            read_varint(&[]),
            Err(DecodeError::Truncated { what: "test" })
        );
    }

    #[test]
    fn zigzag_round_trip() {
        for n in [0, -1, 1, -2, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(n)), n);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
    }

    #[test]
    fn hostile_count_is_refused_before_allocation() {
        // Keys with a count of u64::MAX in a 10-byte body.
        let mut msg = Message::new(1, 1, Body::Keys(Vec::new())).encode();
        let len = msg.len();
        msg.truncate(len - 2); // drop body_len (1) and count (0)
        msg.push(10);
        msg.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(
            Message::decode(&msg),
            Err(DecodeError::Truncated { what: "key count" })
        );
    }

    #[test]
    fn short_inputs() {
        assert_eq!(
            Message::decode(b""),
            Err(DecodeError::Truncated { what: "magic" })
        );
        assert_eq!(
            Message::decode(b"W"),
            Err(DecodeError::Truncated { what: "magic" })
        );
        assert_eq!(Message::decode(b"X"), Err(DecodeError::BadMagic));
        assert_eq!(Message::decode(b"WX\x01\x00"), Err(DecodeError::BadMagic));
        assert_eq!(
            Message::decode(b"WC"),
            Err(DecodeError::Truncated {
                what: "format version"
            })
        );
        assert_eq!(
            Message::decode(b"WC\x02"),
            Err(DecodeError::UnsupportedMajor { major: 2 })
        );
    }
}

//! The streaming replication sub-protocol carried in CopyData messages.
//!
//! From the server: [`ReplicationMessage::XLogData`] (`w`, a chunk of decoded WAL: one pgoutput
//! message in logical replication) and [`ReplicationMessage::PrimaryKeepalive`] (`k`). From the
//! client: [`StandbyStatusUpdate`] (`r`), which reports the positions written, flushed and
//! applied; the flush position is what PostgreSQL stores as the slot's `confirmed_flush_lsn`.
//!
//! Decoding is strict and never panics: an unknown tag, a short payload or trailing bytes are a
//! [`DecodeError`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::lsn::Lsn;
use crate::pgoutput::LogicalMessage;
use crate::reader::Reader;
use crate::timestamp::PgTimestamp;

/// The bytes before an XLogData's payload: tag, two LSNs and a time.
pub const XLOGDATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;

/// A CopyData payload sent by the server during replication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationMessage {
    /// `w`: WAL data.
    XLogData(XLogData),
    /// `k`: a keepalive, possibly asking for an immediate status update.
    PrimaryKeepalive(PrimaryKeepalive),
    /// `w` longer than the connection's frame limit: its header and the first bytes of its
    /// output plugin message; the rest was read past without being kept.
    OversizedXLogData(OversizedXLogData),
}

/// The longest head kept of an [`OversizedXLogData`]: 1 KiB of the output plugin message,
/// which holds a pgoutput change's tag and relation OID (5 bytes) and a logical message's
/// flags, LSN and prefix (up to 1,010 bytes of prefix).
pub const OVERSIZED_HEAD_LEN: usize = 1024;

/// `w` whose payload exceeded the connection's frame limit
/// ([`crate::client::ReplicationConfig::max_frame_len`]). A wide row (a large value under
/// `REPLICA IDENTITY FULL`, a big `bytea`) can legitimately make one; so can a hostile server.
/// The connection keeps [`head`](Self::head) and reads past the rest without buffering it, so
/// a consumer learns *which* relation changed (see [`relation_id`](Self::relation_id)) and
/// can invalidate coarsely (the relation's whole namespace) instead of failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OversizedXLogData {
    /// The WAL position of the data's start.
    pub wal_start: Lsn,
    /// The current end of WAL on the server.
    pub wal_end: Lsn,
    /// The server's clock when it sent the message.
    pub send_time: PgTimestamp,
    /// The full length of the output plugin message, in bytes.
    pub len: usize,
    /// Its first bytes (at most [`OVERSIZED_HEAD_LEN`]).
    pub head: Bytes,
}

impl OversizedXLogData {
    /// The pgoutput message tag (`b'I'`, `b'U'`, `b'D'`, `b'M'`, ...), if any byte was kept.
    pub fn tag(&self) -> Option<u8> {
        self.head.first().copied()
    }

    /// The relation a pgoutput Insert, Update, Delete or Relation message is about (protocol
    /// version 1: the OID follows the tag); `None` for other messages.
    pub fn relation_id(&self) -> Option<u32> {
        match self.tag()? {
            b'I' | b'U' | b'D' | b'R' => {
                let oid = self.head.get(1..5)?;
                Some(u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]))
            }
            _ => None,
        }
    }

    /// The prefix of a pgoutput logical message (`M`, protocol version 1: tag, flags, LSN,
    /// prefix), when it fits in the head; `None` for other messages.
    pub fn message_prefix(&self) -> Option<&str> {
        if self.tag()? != b'M' {
            return None;
        }
        let rest = self.head.get(10..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// `w`: a chunk of WAL data; in logical replication, one output plugin message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// The WAL position of the data's start (0 for some logical messages).
    pub wal_start: Lsn,
    /// The current end of WAL on the server.
    pub wal_end: Lsn,
    /// The server's clock when it sent the message.
    pub send_time: PgTimestamp,
    /// The payload: a pgoutput message.
    pub data: Bytes,
}

impl XLogData {
    /// Decodes [`data`](Self::data) as a pgoutput message (a cheap clone of the bytes).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the payload is not a valid pgoutput version 1 message.
    pub fn logical_message(&self) -> Result<LogicalMessage, DecodeError> {
        LogicalMessage::decode(self.data.clone())
    }
}

/// `k`: a primary keepalive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The current end of WAL on the server.
    pub wal_end: Lsn,
    /// The server's clock when it sent the message.
    pub send_time: PgTimestamp,
    /// The server asks for a status update as soon as possible (or it may time out the
    /// connection after `wal_sender_timeout`).
    pub reply_requested: bool,
}

impl ReplicationMessage {
    /// Decodes one CopyData payload received during replication.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on an unknown tag, a short payload, or trailing bytes after a keepalive.
    pub fn decode(payload: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        match r.u8("CopyData tag")? {
            b'w' => Ok(ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(r.u64("XLogData start LSN")?),
                wal_end: Lsn(r.u64("XLogData end LSN")?),
                send_time: PgTimestamp(r.i64("XLogData send time")?),
                data: r.rest(),
            })),
            b'k' => {
                let keepalive = PrimaryKeepalive {
                    wal_end: Lsn(r.u64("keepalive end LSN")?),
                    send_time: PgTimestamp(r.i64("keepalive send time")?),
                    reply_requested: r.u8("keepalive reply flag")? != 0,
                };
                r.finish("primary keepalive")?;
                Ok(ReplicationMessage::PrimaryKeepalive(keepalive))
            }
            tag => Err(DecodeError::UnknownTag {
                what: "replication CopyData",
                tag,
            }),
        }
    }

    /// Decodes the head of a CopyData payload of `len` bytes that was too long to keep
    /// (see [`OversizedXLogData`]).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the head is not that of XLogData (only WAL data can be that long)
    /// or is shorter than its header.
    pub fn decode_oversized(head: Bytes, len: usize) -> Result<Self, DecodeError> {
        let mut r = Reader::new(head);
        match r.u8("CopyData tag")? {
            b'w' => Ok(ReplicationMessage::OversizedXLogData(OversizedXLogData {
                wal_start: Lsn(r.u64("XLogData start LSN")?),
                wal_end: Lsn(r.u64("XLogData end LSN")?),
                send_time: PgTimestamp(r.i64("XLogData send time")?),
                len: len.saturating_sub(XLOGDATA_HEADER_LEN),
                head: r.rest(),
            })),
            tag => Err(DecodeError::UnknownTag {
                what: "oversized replication CopyData",
                tag,
            }),
        }
    }

    /// Encodes the payload, appending to `out`: the inverse of [`decode`](Self::decode), for
    /// tests and tools. An [`OversizedXLogData`] encodes as its header and head only.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ReplicationMessage::XLogData(m) => {
                out.put_u8(b'w');
                out.put_u64(m.wal_start.0);
                out.put_u64(m.wal_end.0);
                out.put_i64(m.send_time.0);
                out.put_slice(&m.data);
            }
            ReplicationMessage::PrimaryKeepalive(m) => {
                out.put_u8(b'k');
                out.put_u64(m.wal_end.0);
                out.put_i64(m.send_time.0);
                out.put_u8(u8::from(m.reply_requested));
            }
            ReplicationMessage::OversizedXLogData(m) => {
                out.put_u8(b'w');
                out.put_u64(m.wal_start.0);
                out.put_u64(m.wal_end.0);
                out.put_i64(m.send_time.0);
                out.put_slice(&m.head);
            }
        }
    }
}

/// `r`: the standby status update the client sends.
///
/// PostgreSQL keeps WAL from the slot's `confirmed_flush_lsn` on, and moves it to
/// [`flush_lsn`](Self::flush_lsn): report there only what is durably applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// The last WAL position received and written, plus one.
    pub write_lsn: Lsn,
    /// The last WAL position durably processed, plus one: the position to resume from.
    pub flush_lsn: Lsn,
    /// The last WAL position applied, plus one.
    pub apply_lsn: Lsn,
    /// The client's clock when sending.
    pub client_time: PgTimestamp,
    /// Asks the server to answer at once with a keepalive.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// The payload's length: tag, three LSNs, a time and a flag.
    pub const LEN: usize = 1 + 8 * 4 + 1;

    /// Encodes the CopyData payload, appending to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(Self::LEN);
        out.put_u8(b'r');
        out.put_u64(self.write_lsn.0);
        out.put_u64(self.flush_lsn.0);
        out.put_u64(self.apply_lsn.0);
        out.put_i64(self.client_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }

    /// Decodes a payload written by [`encode`](Self::encode) (for tests and tools).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on another tag, a short payload or trailing bytes.
    pub fn decode(payload: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        match r.u8("standby status update tag")? {
            b'r' => {}
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "standby status update",
                    tag,
                })
            }
        }
        let update = StandbyStatusUpdate {
            write_lsn: Lsn(r.u64("status write LSN")?),
            flush_lsn: Lsn(r.u64("status flush LSN")?),
            apply_lsn: Lsn(r.u64("status apply LSN")?),
            client_time: PgTimestamp(r.i64("status time")?),
            reply_requested: r.u8("status reply flag")? != 0,
        };
        r.finish("standby status update")?;
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_xlogdata_and_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(1);
        b.put_u64(2);
        b.put_i64(3);
        b.put_slice(b"Bpayload");
        assert_eq!(
            ReplicationMessage::decode(b.freeze()).unwrap(),
            ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                send_time: PgTimestamp(3),
                data: Bytes::from_static(b"Bpayload"),
            })
        );

        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(10);
        b.put_i64(11);
        b.put_u8(1);
        assert_eq!(
            ReplicationMessage::decode(b.freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(10),
                send_time: PgTimestamp(11),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        assert!(ReplicationMessage::decode(Bytes::new()).is_err());
        assert!(matches!(
            ReplicationMessage::decode(Bytes::from_static(b"x")),
            Err(DecodeError::UnknownTag { tag: b'x', .. })
        ));
        assert!(matches!(
            ReplicationMessage::decode(Bytes::from_static(b"w\0\0\0")),
            Err(DecodeError::Truncated { .. })
        ));
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_slice(&[0; 18]);
        assert!(matches!(
            ReplicationMessage::decode(b.freeze()),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn status_update_layout() {
        let update = StandbyStatusUpdate {
            write_lsn: Lsn(0x0102),
            flush_lsn: Lsn(0x0304),
            apply_lsn: Lsn(0x0506),
            client_time: PgTimestamp(0x0708),
            reply_requested: true,
        };
        let mut out = BytesMut::new();
        update.encode(&mut out);
        assert_eq!(out.len(), StandbyStatusUpdate::LEN);
        assert_eq!(out[0], b'r');
        assert_eq!(&out[1..9], &0x0102u64.to_be_bytes());
        assert_eq!(&out[9..17], &0x0304u64.to_be_bytes());
        assert_eq!(&out[17..25], &0x0506u64.to_be_bytes());
        assert_eq!(&out[25..33], &0x0708i64.to_be_bytes());
        assert_eq!(out[33], 1);
        assert_eq!(StandbyStatusUpdate::decode(out.freeze()).unwrap(), update);
    }
}

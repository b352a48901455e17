//! The `pgoutput` logical decoding format, protocol version 1.
//!
//! [`LogicalMessage::decode`] turns the payload of one XLogData message into a typed message;
//! [`LogicalMessage::encode`] writes one back (for tests and tools). The format is
//! PostgreSQL's "Logical Replication Message Formats" (protocol chapter), version 1: no
//! streamed transactions, no two-phase commit.
//!
//! Decoding is strict: an unknown message or tuple tag, a truncated field, a negative length
//! or leftover bytes are a [`DecodeError`]. It never panics, and counts read from the input
//! never size an allocation beyond what the input itself could hold. Column values are
//! zero-copy slices of the input.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::lsn::Lsn;
use crate::reader::{bounded_capacity, Reader};
use crate::timestamp::PgTimestamp;

/// A PostgreSQL object id (of a relation or a type).
pub type Oid = u32;

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: the transaction commits.
    Commit(Commit),
    /// `O`: the transaction came from another replication origin.
    Origin(Origin),
    /// `R`: a relation's description; sent before its first change and after each schema change.
    Relation(Relation),
    /// `Y`: a non-built-in type's name.
    Type(Type),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a `pg_logical_emit_message` (needs the `messages` option).
    Message(Message),
}

/// `B`: the start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction id (32 bits; widen with the epoch to get an `xid8`).
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently always 0.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm once the transaction is applied.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// `O`: the replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// A relation's `REPLICA IDENTITY` (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing; UPDATE and DELETE carry no old values.
    Nothing,
    /// `f`: the full old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "replica identity",
                    tag,
                })
            }
        })
    }

    /// The `relreplident` byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// `R`: a relation's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid, which later change messages refer to.
    pub id: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    /// The relation's name.
    pub name: String,
    /// The replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// The published columns (generated columns excluded), in tuple order.
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Flags: bit 1 ([`Column::FLAG_KEY`]) marks a column of the replica identity key.
    pub flags: u8,
    /// The column's name.
    pub name: String,
    /// The column's type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

impl Column {
    /// The flag bit of a column that is part of the replica identity key.
    pub const FLAG_KEY: u8 = 1;

    /// Whether the column is part of the replica identity key (so present in a `K` old tuple).
    pub fn is_key(&self) -> bool {
        self.flags & Self::FLAG_KEY != 0
    }
}

/// `Y`: a type's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// The type's oid.
    pub id: Oid,
    /// The schema; empty for `pg_catalog`.
    pub namespace: String,
    /// The type's name.
    pub name: String,
}

/// `I`: an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation, described by an earlier [`Relation`].
    pub relation_id: Oid,
    /// The new row.
    pub new: TupleData,
}

/// `U`: an updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation, described by an earlier [`Relation`].
    pub relation_id: Oid,
    /// The old key (when a key column changed) or the full old row (`REPLICA IDENTITY FULL`).
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed values are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// `D`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation, described by an earlier [`Relation`].
    pub relation_id: Oid,
    /// The old key or the full old row.
    pub old: OldTuple,
}

/// The old values carried by an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity key columns; the others are [`ColumnValue::Null`].
    Key(TupleData),
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The values, whichever kind.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// `T`: truncated relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated relations.
    pub relation_ids: Vec<Oid>,
}

impl Truncate {
    /// Option bit of `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// Option bit of `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;
}

/// `M`: a logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Flags: bit 1 ([`Message::FLAG_TRANSACTIONAL`]) for a transactional message.
    pub flags: u8,
    /// The message's LSN.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content.
    pub content: Bytes,
}

impl Message {
    /// The flag bit of a transactional message (delivered between Begin and Commit).
    pub const FLAG_TRANSACTIONAL: u8 = 1;

    /// Whether the message is transactional.
    pub fn is_transactional(&self) -> bool {
        self.flags & Self::FLAG_TRANSACTIONAL != 0
    }
}

/// The values of one row, one per column of the relation, in column order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL (also a non-key column of a `K` old tuple).
    Null,
    /// `u`: an unchanged TOASTed value, not sent; the value is whatever it was.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(Bytes),
    /// `b`: the value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

impl ColumnValue {
    /// The text value as UTF-8, if this is a [`ColumnValue::Text`] holding valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

impl LogicalMessage {
    /// Decodes one pgoutput (protocol version 1) message, the data of one XLogData message.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on an unknown tag, truncated input, a negative length, a string that is
    /// unterminated or not UTF-8, or trailing bytes.
    pub fn decode(data: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let message = match r.u8("message tag")? {
            b'B' => LogicalMessage::Begin(Begin {
                final_lsn: Lsn(r.u64("Begin final LSN")?),
                commit_time: PgTimestamp(r.i64("Begin commit time")?),
                xid: r.u32("Begin xid")?,
            }),
            b'C' => LogicalMessage::Commit(Commit {
                flags: r.u8("Commit flags")?,
                commit_lsn: Lsn(r.u64("Commit LSN")?),
                end_lsn: Lsn(r.u64("Commit end LSN")?),
                commit_time: PgTimestamp(r.i64("Commit time")?),
            }),
            b'O' => LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(r.u64("Origin commit LSN")?),
                name: r.cstr("Origin name")?,
            }),
            b'R' => LogicalMessage::Relation(decode_relation(&mut r)?),
            b'Y' => LogicalMessage::Type(Type {
                id: r.u32("Type oid")?,
                namespace: r.cstr("Type namespace")?,
                name: r.cstr("Type name")?,
            }),
            b'I' => {
                let relation_id = r.u32("Insert relation oid")?;
                expect_tag(&mut r, b'N', "Insert new-tuple marker")?;
                LogicalMessage::Insert(Insert {
                    relation_id,
                    new: decode_tuple(&mut r)?,
                })
            }
            b'U' => {
                let relation_id = r.u32("Update relation oid")?;
                let (old, marker) = match r.u8("Update tuple marker")? {
                    b'K' => (
                        Some(OldTuple::Key(decode_tuple(&mut r)?)),
                        r.u8("Update new-tuple marker")?,
                    ),
                    b'O' => (
                        Some(OldTuple::Full(decode_tuple(&mut r)?)),
                        r.u8("Update new-tuple marker")?,
                    ),
                    other => (None, other),
                };
                if marker != b'N' {
                    return Err(DecodeError::UnknownTag {
                        what: "Update tuple marker",
                        tag: marker,
                    });
                }
                LogicalMessage::Update(Update {
                    relation_id,
                    old,
                    new: decode_tuple(&mut r)?,
                })
            }
            b'D' => {
                let relation_id = r.u32("Delete relation oid")?;
                let old = match r.u8("Delete tuple marker")? {
                    b'K' => OldTuple::Key(decode_tuple(&mut r)?),
                    b'O' => OldTuple::Full(decode_tuple(&mut r)?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "Delete tuple marker",
                            tag,
                        })
                    }
                };
                LogicalMessage::Delete(Delete { relation_id, old })
            }
            b'T' => {
                let count = r.len_i32("Truncate relation count")?;
                let options = r.u8("Truncate options")?;
                let mut relation_ids =
                    Vec::with_capacity(bounded_capacity(count, r.remaining(), 4));
                for _ in 0..count {
                    relation_ids.push(r.u32("Truncate relation oid")?);
                }
                LogicalMessage::Truncate(Truncate {
                    options,
                    relation_ids,
                })
            }
            b'M' => {
                let flags = r.u8("Message flags")?;
                let lsn = Lsn(r.u64("Message LSN")?);
                let prefix = r.cstr("Message prefix")?;
                let len = r.len_i32("Message content length")?;
                LogicalMessage::Message(Message {
                    flags,
                    lsn,
                    prefix,
                    content: r.bytes(len, "Message content")?,
                })
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "pgoutput message",
                    tag,
                })
            }
        };
        r.finish("pgoutput message")?;
        Ok(message)
    }

    /// Encodes the message in pgoutput protocol version 1, appending to `out`: the inverse of
    /// [`decode`](Self::decode), for tests and tools.
    ///
    /// Counts and lengths that do not fit the format's fields (more than 32767 columns, values
    /// of 2 GiB or more) are not representable; they are written truncated, as no PostgreSQL
    /// server could have sent them.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            LogicalMessage::Begin(m) => {
                out.put_u8(b'B');
                out.put_u64(m.final_lsn.0);
                out.put_i64(m.commit_time.0);
                out.put_u32(m.xid);
            }
            LogicalMessage::Commit(m) => {
                out.put_u8(b'C');
                out.put_u8(m.flags);
                out.put_u64(m.commit_lsn.0);
                out.put_u64(m.end_lsn.0);
                out.put_i64(m.commit_time.0);
            }
            LogicalMessage::Origin(m) => {
                out.put_u8(b'O');
                out.put_u64(m.commit_lsn.0);
                put_cstr(out, &m.name);
            }
            LogicalMessage::Relation(m) => {
                out.put_u8(b'R');
                out.put_u32(m.id);
                put_cstr(out, &m.namespace);
                put_cstr(out, &m.name);
                out.put_u8(m.replica_identity.as_byte());
                out.put_i16(len_i16(m.columns.len()));
                for column in &m.columns {
                    out.put_u8(column.flags);
                    put_cstr(out, &column.name);
                    out.put_u32(column.type_oid);
                    out.put_i32(column.type_modifier);
                }
            }
            LogicalMessage::Type(m) => {
                out.put_u8(b'Y');
                out.put_u32(m.id);
                put_cstr(out, &m.namespace);
                put_cstr(out, &m.name);
            }
            LogicalMessage::Insert(m) => {
                out.put_u8(b'I');
                out.put_u32(m.relation_id);
                out.put_u8(b'N');
                encode_tuple(out, &m.new);
            }
            LogicalMessage::Update(m) => {
                out.put_u8(b'U');
                out.put_u32(m.relation_id);
                if let Some(old) = &m.old {
                    encode_old(out, old);
                }
                out.put_u8(b'N');
                encode_tuple(out, &m.new);
            }
            LogicalMessage::Delete(m) => {
                out.put_u8(b'D');
                out.put_u32(m.relation_id);
                encode_old(out, &m.old);
            }
            LogicalMessage::Truncate(m) => {
                out.put_u8(b'T');
                out.put_i32(len_i32(m.relation_ids.len()));
                out.put_u8(m.options);
                for id in &m.relation_ids {
                    out.put_u32(*id);
                }
            }
            LogicalMessage::Message(m) => {
                out.put_u8(b'M');
                out.put_u8(m.flags);
                out.put_u64(m.lsn.0);
                put_cstr(out, &m.prefix);
                out.put_i32(len_i32(m.content.len()));
                out.put_slice(&m.content);
            }
        }
    }
}

fn expect_tag(r: &mut Reader, expected: u8, what: &'static str) -> Result<(), DecodeError> {
    match r.u8(what)? {
        tag if tag == expected => Ok(()),
        tag => Err(DecodeError::UnknownTag { what, tag }),
    }
}

fn decode_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("Relation oid")?;
    let namespace = r.cstr("Relation namespace")?;
    let name = r.cstr("Relation name")?;
    let replica_identity = ReplicaIdentity::from_byte(r.u8("Relation replica identity")?)?;
    let count = r.len_i16("Relation column count")?;
    // flags (1) + name (at least the NUL) + type oid (4) + type modifier (4)
    let mut columns = Vec::with_capacity(bounded_capacity(count, r.remaining(), 10));
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("Relation column flags")?,
            name: r.cstr("Relation column name")?,
            type_oid: r.u32("Relation column type oid")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = r.len_i16("TupleData column count")?;
    let mut values = Vec::with_capacity(bounded_capacity(count, r.remaining(), 1));
    for _ in 0..count {
        let value = match r.u8("TupleData column kind")? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => {
                let len = r.len_i32("TupleData text length")?;
                ColumnValue::Text(r.bytes(len, "TupleData text value")?)
            }
            b'b' => {
                let len = r.len_i32("TupleData binary length")?;
                ColumnValue::Binary(r.bytes(len, "TupleData binary value")?)
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "TupleData column kind",
                    tag,
                })
            }
        };
        values.push(value);
    }
    Ok(TupleData(values))
}

fn encode_old(out: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            out.put_u8(b'K');
            encode_tuple(out, tuple);
        }
        OldTuple::Full(tuple) => {
            out.put_u8(b'O');
            encode_tuple(out, tuple);
        }
    }
}

fn encode_tuple(out: &mut BytesMut, tuple: &TupleData) {
    out.put_i16(len_i16(tuple.0.len()));
    for value in &tuple.0 {
        match value {
            ColumnValue::Null => out.put_u8(b'n'),
            ColumnValue::UnchangedToast => out.put_u8(b'u'),
            ColumnValue::Text(bytes) => {
                out.put_u8(b't');
                out.put_i32(len_i32(bytes.len()));
                out.put_slice(bytes);
            }
            ColumnValue::Binary(bytes) => {
                out.put_u8(b'b');
                out.put_i32(len_i32(bytes.len()));
                out.put_slice(bytes);
            }
        }
    }
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn len_i16(len: usize) -> i16 {
    i16::try_from(len).unwrap_or(i16::MAX)
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Result<LogicalMessage, DecodeError> {
        LogicalMessage::decode(Bytes::copy_from_slice(bytes))
    }

    fn round_trip(message: LogicalMessage) {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        assert_eq!(LogicalMessage::decode(out.freeze()).unwrap(), message);
    }

    #[test]
    fn decodes_begin() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x0000_0001_0000_0002u64.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&b).unwrap(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0002),
                commit_time: PgTimestamp(42),
                xid: 7
            })
        );
    }

    #[test]
    fn decodes_insert_tuple_kinds() {
        let mut b = vec![b'I'];
        b.extend_from_slice(&16384u32.to_be_bytes());
        b.push(b'N');
        b.extend_from_slice(&4i16.to_be_bytes());
        b.push(b'n');
        b.push(b'u');
        b.push(b't');
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"42");
        b.push(b'b');
        b.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            decode(&b).unwrap(),
            LogicalMessage::Insert(Insert {
                relation_id: 16384,
                new: TupleData(vec![
                    ColumnValue::Null,
                    ColumnValue::UnchangedToast,
                    ColumnValue::Text(Bytes::from_static(b"42")),
                    ColumnValue::Binary(Bytes::new()),
                ])
            })
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            decode(b""),
            Err(DecodeError::Truncated { needed: 1, .. })
        ));
        assert!(matches!(
            decode(b"Z"),
            Err(DecodeError::UnknownTag { tag: b'Z', .. })
        ));
        // Begin one byte short.
        assert!(matches!(
            decode(&[b'B'; 20]),
            Err(DecodeError::Truncated { .. })
        ));
        // Begin with a trailing byte.
        assert!(matches!(
            decode(&[b'B'; 22]),
            Err(DecodeError::TrailingBytes { count: 1, .. })
        ));
        // Insert without the 'N' marker.
        assert!(matches!(
            decode(b"I\0\0\0\x01X\0\0"),
            Err(DecodeError::UnknownTag { tag: b'X', .. })
        ));
        // A text value claiming 2 GiB.
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xffab"),
            Err(DecodeError::Truncated { .. })
        ));
        // A negative text length.
        assert!(matches!(
            decode(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xfe"),
            Err(DecodeError::NegativeLength { len: -2, .. })
        ));
        // A negative column count.
        assert!(matches!(
            decode(b"I\0\0\0\x01N\xff\xff"),
            Err(DecodeError::NegativeLength { .. })
        ));
        // A huge truncate count with no oids: no allocation, just an error.
        assert!(matches!(
            decode(b"T\x7f\xff\xff\xff\0"),
            Err(DecodeError::Truncated { .. })
        ));
        // An unterminated relation name.
        assert!(matches!(
            decode(b"R\0\0\0\x01public"),
            Err(DecodeError::UnterminatedString { .. })
        ));
        // A relation name that is not UTF-8.
        assert!(matches!(
            decode(b"R\0\0\0\x01\xff\0"),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn round_trips_every_kind() {
        let tuple = TupleData(vec![
            ColumnValue::Text(Bytes::from_static(b"1")),
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            ColumnValue::Binary(Bytes::from_static(b"\0\x01")),
        ]);
        round_trip(LogicalMessage::Begin(Begin {
            final_lsn: Lsn(9),
            commit_time: PgTimestamp(-1),
            xid: u32::MAX,
        }));
        round_trip(LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time: PgTimestamp(3),
        }));
        round_trip(LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(5),
            name: "origin".into(),
        }));
        round_trip(LogicalMessage::Relation(Relation {
            id: 16384,
            namespace: String::new(),
            name: "users".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![Column {
                flags: Column::FLAG_KEY,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            }],
        }));
        round_trip(LogicalMessage::Type(Type {
            id: 90000,
            namespace: "public".into(),
            name: "mood".into(),
        }));
        round_trip(LogicalMessage::Insert(Insert {
            relation_id: 1,
            new: tuple.clone(),
        }));
        for old in [
            None,
            Some(OldTuple::Key(tuple.clone())),
            Some(OldTuple::Full(tuple.clone())),
        ] {
            round_trip(LogicalMessage::Update(Update {
                relation_id: 1,
                old,
                new: tuple.clone(),
            }));
        }
        round_trip(LogicalMessage::Delete(Delete {
            relation_id: 1,
            old: OldTuple::Key(tuple.clone()),
        }));
        round_trip(LogicalMessage::Truncate(Truncate {
            options: Truncate::CASCADE | Truncate::RESTART_IDENTITY,
            relation_ids: vec![1, 2, 3],
        }));
        round_trip(LogicalMessage::Message(Message {
            flags: Message::FLAG_TRANSACTIONAL,
            lsn: Lsn(77),
            prefix: "walcache".into(),
            content: Bytes::from_static(b"x"),
        }));
    }
}

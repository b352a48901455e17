//! `LogicalMessage::decode`: the pgoutput messages inside XLogData, from the server.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use walcache_cdc::pgoutput::{
    Begin, Column, ColumnValue, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin,
    Relation, ReplicaIdentity, Truncate, TupleData, Type, Update,
};
use walcache_cdc::{DecodeError, Lsn, PgTimestamp};

use crate::harness::check;
use crate::mutate::{arbitrary_bytes, mutated, mutations, Mutation};

const TAGS: &[u8] = b"BCORYIUDTM";

fn encode(message: &LogicalMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    message.encode(&mut out);
    out.to_vec()
}

fn decode(bytes: &[u8]) -> Result<LogicalMessage, DecodeError> {
    LogicalMessage::decode(Bytes::copy_from_slice(bytes))
}

/// A NUL-free string, short: pgoutput's C strings.
fn cstr() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,6}"
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn time() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

fn value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|v| ColumnValue::Text(v.into())),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|v| ColumnValue::Binary(v.into())),
    ]
}

fn tuple() -> impl Strategy<Value = TupleData> {
    prop::collection::vec(value(), 0..6).prop_map(TupleData)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop::sample::select(vec![
        ReplicaIdentity::Default,
        ReplicaIdentity::Nothing,
        ReplicaIdentity::Full,
        ReplicaIdentity::Index,
    ])
}

/// Every kind of pgoutput message, small.
pub(crate) fn message() -> impl Strategy<Value = LogicalMessage> {
    let column = (any::<u8>(), cstr(), any::<u32>(), any::<i32>()).prop_map(
        |(flags, name, type_oid, type_modifier)| Column {
            flags,
            name,
            type_oid,
            type_modifier,
        },
    );
    prop_oneof![
        (lsn(), time(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), time()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| {
                LogicalMessage::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (lsn(), cstr())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            cstr(),
            cstr(),
            replica_identity(),
            prop::collection::vec(column, 0..4)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), cstr(), cstr()).prop_map(|(id, namespace, name)| LogicalMessage::Type(
            Type {
                id,
                namespace,
                name
            }
        )),
        (any::<u32>(), tuple())
            .prop_map(|(relation_id, new)| LogicalMessage::Insert(Insert { relation_id, new })),
        (any::<u32>(), prop::option::of(old_tuple()), tuple()).prop_map(
            |(relation_id, old, new)| LogicalMessage::Update(Update {
                relation_id,
                old,
                new
            })
        ),
        (any::<u32>(), old_tuple())
            .prop_map(|(relation_id, old)| LogicalMessage::Delete(Delete { relation_id, old })),
        (any::<u8>(), prop::collection::vec(any::<u32>(), 0..6)).prop_map(
            |(options, relation_ids)| LogicalMessage::Truncate(Truncate {
                options,
                relation_ids
            })
        ),
        (
            any::<u8>(),
            lsn(),
            cstr(),
            prop::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(flags, lsn, prefix, content)| {
                LogicalMessage::Message(Message {
                    flags,
                    lsn,
                    prefix,
                    content: content.into(),
                })
            }),
    ]
}

/// What must hold for any input: decoding does not panic; what it accepts re-encodes to exactly
/// the input (pgoutput has no slack: one message, one encoding), and every vector it allocated
/// is bounded by the input's length, whatever the counts inside claimed.
fn assert_sound(input: &[u8]) -> Result<Option<LogicalMessage>, TestCaseError> {
    let Ok(message) = decode(input) else {
        return Ok(None);
    };
    prop_assert_eq!(
        encode(&message),
        input,
        "accepted bytes re-encode differently"
    );
    let tuples: Vec<&TupleData> = match &message {
        LogicalMessage::Insert(m) => vec![&m.new],
        LogicalMessage::Update(m) => m.old.iter().map(OldTuple::tuple).chain([&m.new]).collect(),
        LogicalMessage::Delete(m) => vec![m.old.tuple()],
        _ => Vec::new(),
    };
    for t in tuples {
        prop_assert!(t.0.capacity() <= input.len());
    }
    if let LogicalMessage::Relation(r) = &message {
        prop_assert!(r.columns.capacity() * 10 <= input.len());
    }
    if let LogicalMessage::Truncate(t) = &message {
        prop_assert!(t.relation_ids.capacity() * 4 <= input.len());
    }
    Ok(Some(message))
}

#[test]
fn pgoutput_arbitrary_bytes_never_panic_and_what_decodes_is_canonical() {
    // Half the inputs start with a real tag, or nearly nothing would get past the first byte.
    let input = prop_oneof![
        arbitrary_bytes(256),
        (prop::sample::select(TAGS.to_vec()), arbitrary_bytes(128)).prop_map(|(tag, mut rest)| {
            rest.insert(0, tag);
            rest
        }),
    ];
    check(
        module_path!(),
        "pgoutput_arbitrary_bytes_never_panic_and_what_decodes_is_canonical",
        input,
        |input| assert_sound(&input).map(drop),
    );
}

#[test]
fn pgoutput_valid_messages_round_trip_and_mutations_are_caught_or_canonical() {
    check(
        module_path!(),
        "pgoutput_valid_messages_round_trip_and_mutations_are_caught_or_canonical",
        (message(), mutations()),
        |(message, mutations)| {
            let valid = encode(&message);
            prop_assert_eq!(decode(&valid).unwrap(), message.clone());
            // Each mutation alone, with what it must do...
            for m in &mutations {
                let bad = mutated(&valid, std::slice::from_ref(m));
                let result = assert_sound(&bad)?;
                match m {
                    // A strict prefix is an error, never a shorter valid message.
                    Mutation::Truncate(_) => prop_assert!(result.is_none(), "{:?}", result),
                    // Bytes after a complete message are an error, counted.
                    Mutation::Extend(tail) => prop_assert!(
                        matches!(decode(&bad), Err(DecodeError::TrailingBytes { count, .. }) if count == tail.len()),
                        "{:?}",
                        decode(&bad)
                    ),
                    _ => {}
                }
            }
            // ...and all of them together.
            assert_sound(&mutated(&valid, &mutations)).map(drop)
        },
    );
}

/// A length or count field, set to any value: the exact error, before any allocation sized by
/// it.
#[derive(Debug, Clone)]
enum Claim {
    /// `T`: relation count (i32) over `n` oids.
    TruncateCount(i32, usize),
    /// `M`: content length (i32) over `n` bytes.
    MessageLength(i32, usize),
    /// `I`: tuple column count (i16) over `n` null columns.
    TupleCount(i16, usize),
    /// `I`: one text column's length (i32) over `n` bytes.
    TextLength(i32, usize),
    /// `R`: column count (i16) over `n` columns.
    RelationCount(i16, usize),
}

fn claimed_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MAX),
        Just(-1),
        Just(i32::MIN),
        0i32..8,
        any::<i32>()
    ]
}

fn claimed_i16() -> impl Strategy<Value = i16> {
    prop_oneof![
        Just(i16::MAX),
        Just(-1),
        Just(i16::MIN),
        0i16..8,
        any::<i16>()
    ]
}

fn claim() -> impl Strategy<Value = Claim> {
    let n = 0usize..6;
    prop_oneof![
        (claimed_i32(), n.clone()).prop_map(|(c, n)| Claim::TruncateCount(c, n)),
        (claimed_i32(), n.clone()).prop_map(|(c, n)| Claim::MessageLength(c, n)),
        (claimed_i16(), n.clone()).prop_map(|(c, n)| Claim::TupleCount(c, n)),
        (claimed_i32(), n.clone()).prop_map(|(c, n)| Claim::TextLength(c, n)),
        (claimed_i16(), n).prop_map(|(c, n)| Claim::RelationCount(c, n)),
    ]
}

impl Claim {
    /// The bytes, the claimed value and the actual item count.
    fn build(&self) -> (Vec<u8>, i64, usize) {
        let mut b = Vec::new();
        match *self {
            Claim::TruncateCount(count, n) => {
                b.push(b'T');
                b.extend_from_slice(&count.to_be_bytes());
                b.push(0);
                for i in 0..n {
                    b.extend_from_slice(&(i as u32).to_be_bytes());
                }
                (b, count.into(), n)
            }
            Claim::MessageLength(len, n) => {
                b.extend_from_slice(b"M\x01");
                b.extend_from_slice(&7u64.to_be_bytes());
                b.extend_from_slice(b"walcache\0");
                b.extend_from_slice(&len.to_be_bytes());
                b.extend(std::iter::repeat_n(b'x', n));
                (b, len.into(), n)
            }
            Claim::TupleCount(count, n) => {
                b.push(b'I');
                b.extend_from_slice(&1u32.to_be_bytes());
                b.push(b'N');
                b.extend_from_slice(&count.to_be_bytes());
                b.extend(std::iter::repeat_n(b'n', n));
                (b, count.into(), n)
            }
            Claim::TextLength(len, n) => {
                b.push(b'I');
                b.extend_from_slice(&1u32.to_be_bytes());
                b.push(b'N');
                b.extend_from_slice(&1i16.to_be_bytes());
                b.push(b't');
                b.extend_from_slice(&len.to_be_bytes());
                b.extend(std::iter::repeat_n(b'7', n));
                (b, len.into(), n)
            }
            Claim::RelationCount(count, n) => {
                b.push(b'R');
                b.extend_from_slice(&16384u32.to_be_bytes());
                b.extend_from_slice(b"public\0users\0d");
                b.extend_from_slice(&count.to_be_bytes());
                for _ in 0..n {
                    b.extend_from_slice(b"\x01id\0");
                    b.extend_from_slice(&23u32.to_be_bytes());
                    b.extend_from_slice(&(-1i32).to_be_bytes());
                }
                (b, count.into(), n)
            }
        }
    }
}

#[test]
fn pgoutput_claimed_lengths_get_the_exact_error_without_allocating_them() {
    check(
        module_path!(),
        "pgoutput_claimed_lengths_get_the_exact_error_without_allocating_them",
        claim(),
        |claim| {
            let (bytes, claimed, actual) = claim.build();
            let result = decode(&bytes);
            match usize::try_from(claimed) {
                Err(_) => prop_assert!(
                    matches!(result, Err(DecodeError::NegativeLength { len, .. }) if len == claimed),
                    "{:?}",
                    result
                ),
                Ok(c) if c > actual => prop_assert!(
                    matches!(result, Err(DecodeError::Truncated { .. })),
                    "{:?}",
                    result
                ),
                Ok(c) if c < actual => prop_assert!(
                    matches!(result, Err(DecodeError::TrailingBytes { .. })),
                    "{:?}",
                    result
                ),
                Ok(_) => {
                    prop_assert!(result.is_ok(), "{:?}", result);
                }
            }
            assert_sound(&bytes).map(drop)
        },
    );
}

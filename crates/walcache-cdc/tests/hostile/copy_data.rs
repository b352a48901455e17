//! `ReplicationMessage::decode`: the CopyData payloads of the replication stream (XLogData,
//! primary keepalives), and `StandbyStatusUpdate::decode`, their reply's decoder (for tools).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use walcache_cdc::protocol::{PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData};
use walcache_cdc::{DecodeError, Lsn, PgTimestamp};

use crate::harness::check;
use crate::mutate::{arbitrary_bytes, mutated, mutations, Mutation};

/// XLogData's fixed part: tag, start, end, send time.
const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;
/// A keepalive, whole: tag, end, send time, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

fn encode(message: &ReplicationMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    message.encode(&mut out);
    out.to_vec()
}

fn decode(bytes: &[u8]) -> Result<ReplicationMessage, DecodeError> {
    ReplicationMessage::decode(Bytes::copy_from_slice(bytes))
}

fn replication_message() -> impl Strategy<Value = ReplicationMessage> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            // The payload: a real pgoutput message or anything.
            prop_oneof![
                crate::pgoutput::message().prop_map(|m| {
                    let mut out = BytesMut::new();
                    m.encode(&mut out);
                    out.to_vec()
                }),
                prop::collection::vec(any::<u8>(), 0..32),
            ]
        )
            .prop_map(|(start, end, time, data)| {
                ReplicationMessage::XLogData(XLogData {
                    wal_start: Lsn(start),
                    wal_end: Lsn(end),
                    send_time: PgTimestamp(time),
                    data: data.into(),
                })
            }),
        (any::<u64>(), any::<i64>(), any::<bool>()).prop_map(|(end, time, reply)| {
            ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                wal_end: Lsn(end),
                send_time: PgTimestamp(time),
                reply_requested: reply,
            })
        }),
    ]
}

/// What must hold for any input: no panic; an XLogData is its header and then exactly the
/// rest of the frame (zero-copy, so no allocation at all); a keepalive is exactly 18 bytes and
/// re-encodes to the input but for the reply flag, which any non-zero byte sets. The nested
/// pgoutput decode of an XLogData's payload does not panic either.
fn assert_sound(input: &[u8]) -> Result<(), TestCaseError> {
    match decode(input) {
        Ok(ReplicationMessage::XLogData(x)) => {
            prop_assert!(input.len() >= XLOGDATA_HEADER);
            prop_assert_eq!(&x.data[..], &input[XLOGDATA_HEADER..]);
            prop_assert_eq!(encode(&ReplicationMessage::XLogData(x.clone())), input);
            let _ = x.logical_message();
        }
        Ok(keepalive @ ReplicationMessage::PrimaryKeepalive(_)) => {
            prop_assert_eq!(input.len(), KEEPALIVE_LEN);
            let again = encode(&keepalive);
            prop_assert_eq!(&again[..KEEPALIVE_LEN - 1], &input[..KEEPALIVE_LEN - 1]);
            prop_assert_eq!(
                again[KEEPALIVE_LEN - 1],
                u8::from(input[KEEPALIVE_LEN - 1] != 0)
            );
        }
        Ok(other) => prop_assert!(false, "a message kind this test does not know: {other:?}"),
        Err(_) => {}
    }
    if let Ok(update) = StandbyStatusUpdate::decode(Bytes::copy_from_slice(input)) {
        prop_assert_eq!(input.len(), StandbyStatusUpdate::LEN);
        let mut again = BytesMut::new();
        update.encode(&mut again);
        prop_assert_eq!(
            &again[..StandbyStatusUpdate::LEN - 1],
            &input[..StandbyStatusUpdate::LEN - 1]
        );
    }
    Ok(())
}

#[test]
fn copy_data_arbitrary_bytes_never_panic() {
    let input = prop_oneof![
        arbitrary_bytes(128),
        (prop::sample::select(b"wkr".to_vec()), arbitrary_bytes(64)).prop_map(|(tag, mut rest)| {
            rest.insert(0, tag);
            rest
        }),
    ];
    check(
        module_path!(),
        "copy_data_arbitrary_bytes_never_panic",
        input,
        |input| assert_sound(&input),
    );
}

#[test]
fn copy_data_valid_messages_round_trip_and_mutations_are_caught_or_canonical() {
    check(
        module_path!(),
        "copy_data_valid_messages_round_trip_and_mutations_are_caught_or_canonical",
        (replication_message(), mutations()),
        |(message, mutations)| {
            let valid = encode(&message);
            prop_assert_eq!(decode(&valid).unwrap(), message.clone());
            if let ReplicationMessage::XLogData(x) = &message {
                // The payload decodes exactly as it would alone.
                prop_assert_eq!(
                    format!("{:?}", x.logical_message()),
                    format!(
                        "{:?}",
                        walcache_cdc::pgoutput::LogicalMessage::decode(x.data.clone())
                    )
                );
            }
            for m in &mutations {
                let bad = mutated(&valid, std::slice::from_ref(m));
                assert_sound(&bad)?;
                match (m, &message) {
                    // A keepalive cut short is an error.
                    (Mutation::Truncate(_), ReplicationMessage::PrimaryKeepalive(_)) => {
                        prop_assert!(
                            matches!(decode(&bad), Err(DecodeError::Truncated { .. })),
                            "{:?}",
                            decode(&bad)
                        );
                    }
                    // An XLogData cut inside its header is an error; cut inside its payload, it
                    // is the same XLogData with a shorter payload: the frame's length is the
                    // payload's, so only the frame layer (and the payload's own decoder) can
                    // tell. pgoutput's decoder does (see the pgoutput properties).
                    (Mutation::Truncate(_), ReplicationMessage::XLogData(x)) => {
                        if bad.len() < XLOGDATA_HEADER {
                            prop_assert!(decode(&bad).is_err());
                        } else {
                            let ReplicationMessage::XLogData(y) = decode(&bad).unwrap() else {
                                unreachable!("an XLogData prefix is an XLogData");
                            };
                            prop_assert_eq!(&y.data[..], &x.data[..bad.len() - XLOGDATA_HEADER]);
                        }
                    }
                    (Mutation::Extend(tail), ReplicationMessage::PrimaryKeepalive(_)) => {
                        prop_assert!(
                            matches!(decode(&bad), Err(DecodeError::TrailingBytes { count, .. }) if count == tail.len()),
                            "{:?}",
                            decode(&bad)
                        );
                    }
                    _ => {}
                }
            }
            assert_sound(&mutated(&valid, &mutations))
        },
    );
}

#[test]
fn standby_status_updates_round_trip_and_prefixes_are_errors() {
    check(
        module_path!(),
        "standby_status_updates_round_trip_and_prefixes_are_errors",
        (
            any::<[u64; 3]>(),
            any::<i64>(),
            any::<bool>(),
            any::<prop::sample::Index>(),
        ),
        |([write, flush, apply], time, reply, cut)| {
            let update = StandbyStatusUpdate {
                write_lsn: Lsn(write),
                flush_lsn: Lsn(flush),
                apply_lsn: Lsn(apply),
                client_time: PgTimestamp(time),
                reply_requested: reply,
            };
            let mut out = BytesMut::new();
            update.encode(&mut out);
            let bytes = out.freeze();
            prop_assert_eq!(StandbyStatusUpdate::decode(bytes.clone()).unwrap(), update);
            let prefix = bytes.slice(..cut.index(bytes.len()));
            let result = StandbyStatusUpdate::decode(prefix);
            prop_assert!(
                matches!(result, Err(DecodeError::Truncated { .. })),
                "{:?}",
                result
            );
            Ok(())
        },
    );
}

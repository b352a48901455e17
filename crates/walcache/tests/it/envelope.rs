//! Hostile inputs for the L2 envelope's decoders (`walcache::envelope`, hidden; see
//! `crates/walcache/src/l2/envelope.rs`) and the codecs behind them: every read of a value key decodes
//! bytes that anything with write access to Redis could have put there. At least 10,000 cases
//! per property (more with `PROPTEST_CASES`), each in a child process with a capped address
//! space (see `harness`), no server needed. Fuzz targets for the same decoders are in `fuzz/`
//! at the repository root.

use walcache_testkit::hostile as harness;
use walcache_testkit::hostile::mutate;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use walcache::envelope::{
    negative_envelope, parse_envelope, split_value, stamp_of, value_envelope, Found,
};
use walcache::{Codec, Json, Postcard};

use harness::check;
use mutate::{arbitrary_bytes, mutated, mutations, Mutation};

/// The tag byte and the stamp.
const HEADER_LEN: usize = 9;
/// A value's fixed part: the header and the tags length.
const VALUE_HEADER_LEN: usize = 11;

/// What a value envelope is, written independently of the decoder (the table in `l2.rs`):
/// `Some((tags, payload))` when `bytes` is one.
fn spec_value(bytes: &[u8]) -> Option<(Vec<String>, &[u8])> {
    if bytes.first() != Some(&1) || bytes.len() < VALUE_HEADER_LEN {
        return None;
    }
    let tags_len = usize::from(u16::from_le_bytes([bytes[9], bytes[10]]));
    let rest = &bytes[VALUE_HEADER_LEN..];
    if rest.len() < tags_len {
        return None;
    }
    let (tags, payload) = rest.split_at(tags_len);
    let tags = if tags.is_empty() {
        Vec::new()
    } else {
        String::from_utf8(tags.to_vec())
            .ok()?
            .split('\n')
            .map(str::to_owned)
            .collect()
    };
    Some((tags, payload))
}

/// What must hold for any bytes: no panic; the classification is the documented one and keeps
/// the bytes whole; a value's parts and stamp are where the table says, and it re-encodes to
/// exactly the input (the envelope has no slack).
fn assert_sound(input: &[u8]) -> Result<(), TestCaseError> {
    let found = parse_envelope(input.to_vec());
    match (&found, spec_value(input)) {
        (Found::Value(bytes), Some((tags, payload))) => {
            prop_assert_eq!(bytes.as_slice(), input);
            let (decoded_tags, decoded_payload) = split_value(bytes)
                .ok_or_else(|| TestCaseError::fail("a Value that does not split"))?;
            prop_assert_eq!(&decoded_tags, &tags);
            prop_assert_eq!(decoded_payload, payload);
            let stamp =
                stamp_of(bytes).ok_or_else(|| TestCaseError::fail("a Value without a stamp"))?;
            prop_assert_eq!(
                stamp,
                u64::from_le_bytes(input[1..HEADER_LEN].try_into().unwrap())
            );
            prop_assert_eq!(value_envelope(payload, &tags, stamp), input);
        }
        (other, Some(_)) => prop_assert!(false, "a value envelope read as {other:?}"),
        (Found::Negative(bytes), None) => {
            prop_assert_eq!(bytes.as_slice(), input);
            prop_assert!(input.len() == HEADER_LEN && input[0] == 2);
            let stamp = stamp_of(bytes).ok_or_else(|| TestCaseError::fail("no stamp"))?;
            prop_assert_eq!(negative_envelope(stamp), input);
        }
        (Found::Lease, None) => prop_assert!(input.starts_with(&[0, b'L'])),
        (Found::Undecodable(bytes), None) => {
            prop_assert_eq!(bytes.as_slice(), input);
            let negative = input.len() == HEADER_LEN && input[0] == 2;
            let lease = input.starts_with(&[0, b'L']);
            prop_assert!(
                !negative && !lease,
                "a negative entry or a lease read as undecodable"
            );
        }
        (other, None) => prop_assert!(false, "parse_envelope never decides {other:?}"),
    }
    // split_value on anything (the load path calls it on values only) agrees with the spec.
    match (split_value(input), spec_value(input)) {
        (Some((tags, payload)), Some((spec_tags, spec_payload))) => {
            prop_assert_eq!(tags, spec_tags);
            prop_assert_eq!(payload, spec_payload);
        }
        (None, None) => {}
        // split_value does not look at the tag byte.
        (Some(_), None) => prop_assert!(input.first() != Some(&1)),
        (None, Some(_)) => prop_assert!(false, "split_value refuses a value"),
    }
    Ok(())
}

#[test]
fn envelope_arbitrary_bytes_never_panic_and_classify_as_documented() {
    let input = prop_oneof![
        arbitrary_bytes(128),
        // A real tag byte, then anything.
        (0u8..=2, arbitrary_bytes(96)).prop_map(|(tag, mut rest)| {
            rest.insert(0, tag);
            rest
        }),
        // A value header with a small tags length, then anything.
        (any::<u64>(), 0u16..24, arbitrary_bytes(48)).prop_map(|(stamp, tags_len, rest)| {
            let mut b = vec![1];
            b.extend_from_slice(&stamp.to_le_bytes());
            b.extend_from_slice(&tags_len.to_le_bytes());
            b.extend(rest);
            b
        }),
    ];
    check(
        module_path!(),
        "envelope_arbitrary_bytes_never_panic_and_classify_as_documented",
        input,
        |input| assert_sound(&input),
    );
}

/// Tags as `validate_tag` admits them: printable ASCII without whitespace.
fn tags() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[!-~]{1,8}", 0..4)
}

#[test]
fn envelope_valid_values_round_trip_and_mutations_are_caught_or_consistent() {
    check(
        module_path!(),
        "envelope_valid_values_round_trip_and_mutations_are_caught_or_consistent",
        (
            prop::collection::vec(any::<u8>(), 0..32),
            tags(),
            any::<u64>(),
            any::<bool>(),
            mutations(),
        ),
        |(payload, tags, stamp, negative, mutations)| {
            let valid = if negative {
                negative_envelope(stamp)
            } else {
                value_envelope(&payload, &tags, stamp)
            };
            prop_assert_eq!(stamp_of(&valid), Some(stamp));
            match parse_envelope(valid.clone()) {
                Found::Negative(_) if negative => {}
                Found::Value(bytes) if !negative => {
                    prop_assert_eq!(split_value(&bytes), Some((tags.clone(), &payload[..])));
                }
                other => prop_assert!(false, "{:?}", other),
            }
            let tags_end =
                VALUE_HEADER_LEN + valid.len().saturating_sub(VALUE_HEADER_LEN + payload.len());
            for m in &mutations {
                let bad = mutated(&valid, std::slice::from_ref(m));
                assert_sound(&bad)?;
                match m {
                    // A negative entry cut or extended is undecodable.
                    Mutation::Truncate(_) | Mutation::Extend(_) if negative => {
                        prop_assert!(matches!(parse_envelope(bad), Found::Undecodable(_)));
                    }
                    // A value cut inside its header or tags is undecodable. Cut inside its
                    // payload, it is the same value with a shorter payload: the envelope does
                    // not delimit the payload (Redis keeps the length), so the codec is what
                    // refuses it (see the codec property below).
                    Mutation::Truncate(_) => {
                        if bad.len() < tags_end {
                            prop_assert!(matches!(parse_envelope(bad), Found::Undecodable(_)));
                        } else {
                            prop_assert_eq!(
                                split_value(&bad),
                                Some((tags.clone(), &payload[..bad.len() - tags_end]))
                            );
                        }
                    }
                    _ => {}
                }
            }
            assert_sound(&mutated(&valid, &mutations))
        },
    );
}

/// A cached row, as an application might store it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    labels: Vec<String>,
    scores: Vec<i64>,
    parent: Option<u32>,
}

fn row() -> impl Strategy<Value = Row> {
    (
        any::<u64>(),
        ".{0,8}",
        prop::collection::vec(".{0,4}", 0..4),
        prop::collection::vec(any::<i64>(), 0..4),
        any::<Option<u32>>(),
    )
        .prop_map(|(id, name, labels, scores, parent)| Row {
            id,
            name,
            labels,
            scores,
            parent,
        })
}

/// The read path: envelope, then codec. `None` for anything that is not a value of `C`.
fn read<C: Codec>(codec: &C, bytes: &[u8]) -> Option<(Vec<String>, Row)> {
    let Found::Value(bytes) = parse_envelope(bytes.to_vec()) else {
        return None;
    };
    let (tags, payload) = split_value(&bytes)?;
    codec.decode::<Row>(payload).ok().map(|row| (tags, row))
}

#[test]
fn codec_payloads_round_trip_and_cut_or_hostile_payloads_are_errors() {
    check(
        module_path!(),
        "codec_payloads_round_trip_and_cut_or_hostile_payloads_are_errors",
        (
            row(),
            tags(),
            any::<u64>(),
            any::<prop::sample::Index>(),
            mutations(),
            any::<u64>(),
        ),
        |(row, tags, stamp, cut, mutations, claimed)| {
            for json in [false, true] {
                let payload = if json {
                    Json.encode(&row)
                } else {
                    Postcard.encode(&row)
                }
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let decode = |bytes: &[u8]| {
                    if json {
                        read(&Json, bytes)
                    } else {
                        read(&Postcard, bytes)
                    }
                };
                let envelope = value_envelope(&payload, &tags, stamp);
                prop_assert_eq!(decode(&envelope), Some((tags.clone(), row.clone())));
                // Cut anywhere (inside the payload too): refused, by the envelope or the codec.
                let cut_at = cut.index(envelope.len());
                prop_assert_eq!(decode(&envelope[..cut_at]), None, "cut at {}", cut_at);
                // Mutated: whatever decodes re-encodes to a value that decodes the same.
                let bad = mutated(&envelope, &mutations);
                if let Some((_, decoded)) = decode(&bad) {
                    let again = if json {
                        Json.encode(&decoded)
                    } else {
                        Postcard.encode(&decoded)
                    }
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(
                        decode(&value_envelope(&again, &[], 0)),
                        Some((Vec::new(), decoded))
                    );
                }
            }
            // A postcard sequence length claimed huge: an error, not an allocation of it.
            let mut payload = Vec::new();
            payload.extend_from_slice(&[0x01, 0x00, 0x00]); // id 1, name "", no labels
            let mut v = claimed | 0x8000_0000;
            while v >= 0x80 {
                payload.push((v as u8) | 0x80);
                v >>= 7;
            }
            payload.push(v as u8);
            payload.extend_from_slice(&[0x02, 0x04]);
            prop_assert!(Postcard.decode::<Row>(&payload).is_err());
            Ok(())
        },
    );
}

#[test]
fn the_address_space_cap_catches_a_huge_allocation() {
    harness::assert_cap_bites(
        module_path!(),
        "the_address_space_cap_catches_a_huge_allocation",
    );
}

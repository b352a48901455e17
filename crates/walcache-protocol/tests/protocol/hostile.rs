//! Hostile inputs for the wire format's decoders: `Message::decode`, `Message::decode_signed`
//! and `Keyring::verify`, which every process runs on whatever anyone published on the
//! invalidation channels. At least 10,000 cases per property (more with `PROPTEST_CASES`), each
//! in a child process with a capped address space (see `harness`). Fuzz targets for the same
//! decoders are in `fuzz/` at the repository root.

use walcache_testkit::hostile as harness;
use walcache_testkit::hostile::mutate;

use proptest::prelude::*;
use walcache_protocol::{
    AuthError, Body, DecodeError, Keyring, Message, MAX_MESSAGE_BYTES, MAX_SIGNATURE_BYTES,
};

use crate::wire_and_keys::arb_message;
use harness::check;
use mutate::{arbitrary_bytes, mutated, mutations, Mutation};

const CHANNEL: &str = "wc:inval";

fn keyring() -> Keyring {
    Keyring::parse(&format!("k1:{}", "ab".repeat(32))).expect("a valid key")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What must hold for any input: no panic; `decode_signed` accepts only what `decode` accepts,
/// with the same message; what decodes re-encodes to bytes that decode to the same message;
/// every vector decoded is bounded by the input's length; and what verifies is what decodes.
fn assert_sound(input: &[u8], keyring: &Keyring) -> Result<Option<Message>, TestCaseError> {
    let decoded = Message::decode(input);
    let signed = Message::decode_signed(input);
    match (&decoded, &signed) {
        (Ok(m), Ok((s, _))) => prop_assert_eq!(m, s),
        (Ok(_), Err(e)) => prop_assert!(
            matches!(
                e,
                DecodeError::Truncated { .. }
                    | DecodeError::VarintOverflow
                    | DecodeError::InvalidUtf8
            ),
            "a bad signature is reported as {:?}",
            e
        ),
        (Err(d), Err(s)) => prop_assert_eq!(d, s),
        (Err(d), Ok(_)) => prop_assert!(false, "decode_signed accepts what decode refuses: {d:?}"),
    }
    if let Ok((_, Some(sig))) = &signed {
        prop_assert!(sig.signed_len <= input.len());
        prop_assert_eq!(sig.mac.len(), 32);
    }
    let Ok(message) = decoded else {
        return Ok(None);
    };
    let reencoded = message.encode();
    prop_assert_eq!(Message::decode(&reencoded), Ok(message.clone()));
    if let Ok(verified) = keyring.verify(input, CHANNEL) {
        prop_assert_eq!(&verified, &message);
    }
    let capacity = match &message.body {
        Body::Keys(keys) => keys.capacity() * 2,
        Body::Tags(tags) => tags.capacity(),
        Body::Flush(namespaces) => namespaces.capacity(),
        Body::Heartbeat { details, .. } => details
            .as_ref()
            .map_or(0, |d| d.namespaces.capacity() + d.out_of_service.capacity()),
        _ => 0,
    };
    prop_assert!(
        capacity <= input.len(),
        "{} items from {} bytes",
        capacity,
        input.len()
    );
    Ok(Some(message))
}

#[test]
fn wire_arbitrary_bytes_never_panic_and_never_verify() {
    let keyring = keyring();
    // Most arbitrary bytes stop at the magic: also start some with a valid magic and major,
    // and some with a valid message's first bytes.
    let input = prop_oneof![
        arbitrary_bytes(256),
        (any::<u8>(), arbitrary_bytes(128)).prop_map(|(minor, rest)| {
            let mut b = vec![b'W', b'C', 1, minor];
            b.extend(rest);
            b
        }),
        (
            arb_message(),
            any::<prop::sample::Index>(),
            arbitrary_bytes(64)
        )
            .prop_map(|(m, cut, rest)| {
                let mut b = m.encode();
                b.truncate(cut.index(b.len()));
                b.extend(rest);
                b
            }),
    ];
    check(
        module_path!(),
        "wire_arbitrary_bytes_never_panic_and_never_verify",
        input,
        |input| {
            assert_sound(&input, &keyring)?;
            let verified = keyring.verify(&input, CHANNEL);
            prop_assert!(verified.is_err(), "{:?}", verified);
            Ok(())
        },
    );
}

#[test]
fn wire_valid_messages_round_trip_and_mutations_are_caught() {
    let keyring = keyring();
    check(
        module_path!(),
        "wire_valid_messages_round_trip_and_mutations_are_caught",
        (arb_message(), mutations()),
        |(message, mutations)| {
            let valid = message.encode();
            prop_assert_eq!(valid.len(), message.encoded_len());
            prop_assert_eq!(Message::decode(&valid), Ok(message.clone()));
            prop_assert_eq!(Message::decode_signed(&valid), Ok((message.clone(), None)));
            prop_assert_eq!(keyring.verify(&valid, CHANNEL), Err(AuthError::Unsigned));
            let signed = keyring.sign(&message, CHANNEL);
            prop_assert!(signed.len() <= valid.len() + 1 + MAX_SIGNATURE_BYTES);
            prop_assert_eq!(keyring.verify(&signed, CHANNEL), Ok(message.clone()));
            prop_assert_eq!(keyring.verify(&signed, "wc:app"), Err(AuthError::BadMac));
            // Older decoders skip the signature: plain decode still reads the message.
            prop_assert_eq!(Message::decode(&signed), Ok(message.clone()));

            for m in &mutations {
                // The unsigned encoding.
                let bad = mutated(&valid, std::slice::from_ref(m));
                assert_sound(&bad, &keyring)?;
                match m {
                    // Every strict prefix is an error: the body's length is written before it.
                    Mutation::Truncate(_) => prop_assert!(
                        matches!(Message::decode(&bad), Err(DecodeError::Truncated { .. })),
                        "{:?}",
                        Message::decode(&bad)
                    ),
                    // Bytes after the body are a newer minor's (or a signature): ignored by
                    // decode.
                    Mutation::Extend(_) => {
                        prop_assert_eq!(Message::decode(&bad), Ok(message.clone()));
                    }
                    _ => {}
                }

                // The signed encoding: the one change that still verifies is bytes appended
                // after the signature, outside the MAC, and it changes nothing decoded.
                let bad = mutated(&signed, std::slice::from_ref(m));
                assert_sound(&bad, &keyring)?;
                match keyring.verify(&bad, CHANNEL) {
                    Ok(m) => {
                        prop_assert!(bad.starts_with(&signed), "a changed message verified");
                        prop_assert_eq!(m, message.clone());
                    }
                    Err(_) => prop_assert_ne!(&bad, &signed),
                }
            }
            let bad = mutated(&signed, &mutations);
            assert_sound(&bad, &keyring)?;
            if keyring.verify(&bad, CHANNEL).is_ok() {
                prop_assert!(bad.starts_with(&signed), "a changed message verified");
            }
            Ok(())
        },
    );
}

/// A length or count in a message, set to any value.
#[derive(Debug, Clone)]
enum Claim {
    HeaderLength(u64),
    BodyLength(u64),
    /// A `Keys` count over `n` keys.
    KeyCount(u64, usize),
    /// A `Flush` count over `n` namespaces.
    FlushCount(u64, usize),
    /// A string's length over `n` bytes (a `Flush` of one namespace).
    StringLength(u64, usize),
    /// The signature's length over a signature of `n` bytes.
    SignatureLength(u64),
}

fn claimed() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(i64::MAX as u64),
        Just(MAX_MESSAGE_BYTES as u64 + 1),
        0u64..16,
        any::<u64>(),
    ]
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![
        claimed().prop_map(Claim::HeaderLength),
        claimed().prop_map(Claim::BodyLength),
        (claimed(), 0usize..6).prop_map(|(c, n)| Claim::KeyCount(c, n)),
        (claimed(), 0usize..6).prop_map(|(c, n)| Claim::FlushCount(c, n)),
        (claimed(), 0usize..12).prop_map(|(c, n)| Claim::StringLength(c, n)),
        claimed().prop_map(Claim::SignatureLength),
    ]
}

/// A message with a 9-byte v1.0 header (epoch, seq 0, lsn 0, time 0: 11 bytes) and `body` of
/// `kind`, with the header and body lengths given or, if `None`, the real ones.
fn frame(header_len: Option<u64>, kind: u8, body_len: Option<u64>, body: &[u8]) -> Vec<u8> {
    let header = [7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut b = b"WC\x01\x04".to_vec();
    put_varint(&mut b, header_len.unwrap_or(header.len() as u64));
    b.extend_from_slice(&header);
    b.push(kind);
    put_varint(&mut b, body_len.unwrap_or(body.len() as u64));
    b.extend_from_slice(body);
    b
}

#[test]
fn wire_claimed_lengths_get_the_exact_error_without_allocating_them() {
    let keyring = keyring();
    check(
        module_path!(),
        "wire_claimed_lengths_get_the_exact_error_without_allocating_them",
        claim(),
        |claim| {
            match claim {
                Claim::HeaderLength(len) => {
                    let bytes = frame(Some(len), 3, Some(1), &[0]);
                    let result = Message::decode(&bytes);
                    // After the header length: the header (11), kind, body length and body.
                    if len > 14 {
                        prop_assert_eq!(result, Err(DecodeError::Truncated { what: "header" }));
                    } else if len < 8 {
                        prop_assert_eq!(result, Err(DecodeError::Truncated { what: "epoch" }));
                    }
                    assert_sound(&bytes, &keyring)?;
                }
                Claim::BodyLength(len) => {
                    let body = [1, 1, b'a'];
                    let bytes = frame(None, 3, Some(len), &body);
                    let result = Message::decode(&bytes);
                    if len > body.len() as u64 {
                        prop_assert_eq!(result, Err(DecodeError::Truncated { what: "body" }));
                    } else if len == body.len() as u64 {
                        prop_assert_eq!(result.map(|m| m.body), Ok(Body::Flush(vec!["a".into()])));
                    } else {
                        prop_assert!(result.is_err(), "{:?}", result);
                    }
                    assert_sound(&bytes, &keyring)?;
                }
                Claim::KeyCount(count, n) => {
                    let mut body = Vec::new();
                    put_varint(&mut body, count);
                    for i in 0..n {
                        body.extend_from_slice(&[1, b'n', 1, b'0' + i as u8]);
                    }
                    let bytes = frame(None, 1, None, &body);
                    let result = Message::decode(&bytes);
                    if count > n as u64 {
                        prop_assert!(
                            matches!(
                                result,
                                Err(DecodeError::Truncated {
                                    what: "key count" | "namespace"
                                })
                            ),
                            "{:?}",
                            result
                        );
                    } else {
                        // Fewer than written: the rest is a newer minor's body bytes.
                        let Ok(Message {
                            body: Body::Keys(keys),
                            ..
                        }) = result
                        else {
                            return Err(TestCaseError::fail(format!("{result:?}")));
                        };
                        prop_assert_eq!(keys.len() as u64, count);
                    }
                    assert_sound(&bytes, &keyring)?;
                }
                Claim::FlushCount(count, n) => {
                    let mut body = Vec::new();
                    put_varint(&mut body, count);
                    for _ in 0..n {
                        body.extend_from_slice(&[1, b'n']);
                    }
                    let bytes = frame(None, 3, None, &body);
                    let result = Message::decode(&bytes);
                    if count > n as u64 {
                        prop_assert!(
                            matches!(
                                result,
                                Err(DecodeError::Truncated {
                                    what: "namespace count" | "namespace"
                                })
                            ),
                            "{:?}",
                            result
                        );
                    } else {
                        prop_assert_eq!(
                            result.map(|m| m.body),
                            Ok(Body::Flush(vec!["n".into(); count as usize]))
                        );
                    }
                    assert_sound(&bytes, &keyring)?;
                }
                Claim::StringLength(len, n) => {
                    let mut body = vec![1];
                    put_varint(&mut body, len);
                    body.extend(std::iter::repeat_n(b'x', n));
                    let bytes = frame(None, 3, None, &body);
                    let result = Message::decode(&bytes);
                    if len > n as u64 {
                        prop_assert_eq!(result, Err(DecodeError::Truncated { what: "namespace" }));
                    } else {
                        prop_assert_eq!(
                            result.map(|m| m.body),
                            Ok(Body::Flush(vec!["x".repeat(len as usize)]))
                        );
                    }
                    assert_sound(&bytes, &keyring)?;
                }
                Claim::SignatureLength(len) => {
                    let message = Message::new(7, 1, Body::Flush(vec!["users".into()]));
                    let signed = keyring.sign(&message, CHANNEL);
                    let unsigned_len = message.encoded_len();
                    let real = (signed.len() - unsigned_len - 1) as u64;
                    let mut bytes = signed[..unsigned_len].to_vec();
                    put_varint(&mut bytes, len);
                    bytes.extend_from_slice(&signed[unsigned_len + 1..]);
                    let result = Message::decode_signed(&bytes);
                    if len > real {
                        prop_assert_eq!(result, Err(DecodeError::Truncated { what: "signature" }));
                    } else if len == real {
                        prop_assert_eq!(keyring.verify(&bytes, CHANNEL), Ok(message.clone()));
                    } else {
                        prop_assert!(result.is_err(), "{:?}", result);
                    }
                    prop_assert_eq!(Message::decode(&bytes), Ok(message));
                    assert_sound(&bytes, &keyring)?;
                }
            }
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

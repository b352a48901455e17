// Integration tests of walcache-protocol: the wire format (golden bytes of v1.0, v1.1, v1.2 and
// v1.3, round trips, compatibility across minor versions in both directions, hostile input) and
// the key builder (PostgreSQL text output against Rust values).

use std::borrow::Cow;

use proptest::prelude::*;
use walcache_protocol::{
    key_of, Body, ColumnType, DecodeError, HeartbeatDetails, KeyError, KeyPart, KeyRef,
    KeyTemplate, Message, TagRef, FORMAT_MAJOR, FORMAT_MINOR, MAX_MESSAGE_BYTES,
};

use crate::v1_0_decoder as v1_0;
use crate::v1_1_decoder as v1_1;
use crate::v1_2_decoder as v1_2;

// ---------------------------------------------------------------------------------------------
// Helpers, written independently of the crate's own code.
// ---------------------------------------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd hex fixture");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn zigzag128(out: &mut Vec<u8>, n: i64) {
    leb128(
        out,
        if n < 0 {
            (!(n as u64)) * 2 + 1
        } else {
            (n as u64) * 2
        },
    );
}

fn lp_string(out: &mut Vec<u8>, s: &str) {
    leb128(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Which minor's layout [`encode_layout`] writes.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// No `sent_at_micros`, no heartbeat details, whatever the message holds.
    V1_0,
    /// `sent_at_micros` always, heartbeat details (without `out_of_service`) when `Some`.
    V1_1,
    /// As v1.1, and heartbeat details end with `out_of_service`.
    V1_2,
    /// As v1.2, and a Tags body ends with each tag's namespace ('' for none) when any tag has one.
    V1_3,
}

/// The header and (kind, body) sections of `m` in `layout`, without any extra bytes.
fn sections(m: &Message, layout: Layout) -> (Vec<u8>, u8, Vec<u8>) {
    let mut header = m.epoch.to_le_bytes().to_vec();
    leb128(&mut header, m.seq);
    leb128(&mut header, m.lsn);
    zigzag128(&mut header, m.commit_time_micros);
    if layout != Layout::V1_0 {
        zigzag128(&mut header, m.sent_at_micros);
    }

    let mut body = Vec::new();
    let kind = match &m.body {
        Body::Keys(keys) => {
            leb128(&mut body, keys.len() as u64);
            for k in keys {
                lp_string(&mut body, &k.namespace);
                lp_string(&mut body, &k.key);
            }
            1
        }
        Body::Tags(tags) => {
            leb128(&mut body, tags.len() as u64);
            for t in tags {
                lp_string(&mut body, &t.tag);
            }
            if layout == Layout::V1_3 && tags.iter().any(|t| t.namespace.is_some()) {
                for t in tags {
                    lp_string(&mut body, t.namespace.as_deref().unwrap_or(""));
                }
            }
            2
        }
        Body::Flush(items) => {
            leb128(&mut body, items.len() as u64);
            for s in items {
                lp_string(&mut body, s);
            }
            3
        }
        Body::Heartbeat {
            last_data_seq,
            details,
        } => {
            leb128(&mut body, *last_data_seq);
            if let (Layout::V1_1 | Layout::V1_2 | Layout::V1_3, Some(d)) = (layout, details) {
                leb128(&mut body, d.lag_bytes);
                leb128(&mut body, d.refresh_interval_ms);
                leb128(&mut body, d.namespaces.len() as u64);
                for s in &d.namespaces {
                    lp_string(&mut body, s);
                }
                if layout != Layout::V1_1 {
                    leb128(&mut body, d.out_of_service.len() as u64);
                    for s in &d.out_of_service {
                        lp_string(&mut body, s);
                    }
                }
            }
            4
        }
        other => panic!("unknown body {other:?}"),
    };
    (header, kind, body)
}

/// Magic, versions, the length-prefixed header, the kind, the length-prefixed body, trailing.
fn frame(minor: u8, header: &[u8], kind: u8, body: &[u8], trailing: &[u8]) -> Vec<u8> {
    let mut out = b"WC".to_vec();
    out.push(1);
    out.push(minor);
    leb128(&mut out, header.len() as u64);
    out.extend_from_slice(header);
    out.push(kind);
    leb128(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out.extend_from_slice(trailing);
    out
}

/// An independent encoder of `m` as a v1.0 sender wrote it (minor 0): drops the v1.1 (and later)
/// fields.
fn encode_v1_0(m: &Message) -> Vec<u8> {
    let (header, kind, body) = sections(m, Layout::V1_0);
    frame(0, &header, kind, &body, &[])
}

/// An independent encoder of `m` as a v1.1 sender wrote it (minor 1): no `out_of_service`, no
/// tag namespaces.
fn encode_v1_1(m: &Message) -> Vec<u8> {
    let (header, kind, body) = sections(m, Layout::V1_1);
    frame(1, &header, kind, &body, &[])
}

/// An independent encoder of `m` as a v1.2 sender wrote it (minor 2): no tag namespaces.
fn encode_v1_2(m: &Message) -> Vec<u8> {
    let (header, kind, body) = sections(m, Layout::V1_2);
    frame(2, &header, kind, &body, &[])
}

/// An independent encoder of format 1.x, minor >= 3: the v1.3 layout, then the fields a newer
/// minor would append. Appending to a Tags body, such a minor writes the tags' namespaces first,
/// '' for each when no tag has one (or the decoder would read its fields as namespaces).
fn encode_future(
    m: &Message,
    minor: u8,
    extra_header: &[u8],
    extra_body: &[u8],
    trailing: &[u8],
) -> Vec<u8> {
    assert!(
        extra_body.is_empty() || !matches!(m.body, Body::Heartbeat { details: None, .. }),
        "a minor after v1.3 writes heartbeat details before its own fields (see as_future_sender)"
    );
    let (mut header, kind, mut body) = sections(m, Layout::V1_3);
    if let Body::Tags(tags) = &m.body {
        if !extra_body.is_empty() && tags.iter().all(|t| t.namespace.is_none()) {
            for _ in tags {
                lp_string(&mut body, "");
            }
        }
    }
    header.extend_from_slice(extra_header);
    body.extend_from_slice(extra_body);
    frame(minor, &header, kind, &body, trailing)
}

/// `m` as a sender of a minor after v1.3 appending to the body would send it: such a sender
/// writes every v1.1, v1.2 and v1.3 field before its own, so its heartbeats always carry details
/// (with `out_of_service`, which the v1.2 layout always writes; [`encode_future`] writes the
/// namespaces of a Tags body).
fn as_future_sender(mut m: Message, appends_to_body: bool) -> Message {
    if let Body::Heartbeat { details, .. } = &mut m.body {
        if appends_to_body && details.is_none() {
            *details = Some(HeartbeatDetails::default());
        }
    }
    m
}

/// A tag in every namespace, as a v1.2 or older sender meant every tag.
fn unscoped(tag: impl Into<String>) -> TagRef {
    TagRef {
        namespace: None,
        tag: tag.into(),
    }
}

/// A Tags body of tags in every namespace: what a v1.2 or older sender could say.
fn unscoped_tags<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Body {
    Body::Tags(tags.into_iter().map(unscoped).collect())
}

/// The names of `tags`, without their namespaces: what a v1.2 or older decoder reads.
fn tag_names(tags: &[TagRef]) -> Vec<String> {
    tags.iter().map(|t| t.tag.clone()).collect()
}

/// What the frozen v1.0 decoder should make of `m`: the same message without the v1.1 (and
/// later) fields, tags reduced to their names.
fn as_v1_0(m: &Message) -> v1_0::Message {
    let body = match &m.body {
        Body::Keys(keys) => v1_0::Body::Keys(
            keys.iter()
                .map(|k| v1_0::KeyRef {
                    namespace: k.namespace.clone(),
                    key: k.key.clone(),
                })
                .collect(),
        ),
        Body::Tags(tags) => v1_0::Body::Tags(tag_names(tags)),
        Body::Flush(items) => v1_0::Body::Flush(items.clone()),
        Body::Heartbeat { last_data_seq, .. } => v1_0::Body::Heartbeat {
            last_data_seq: *last_data_seq,
        },
        other => panic!("unknown body {other:?}"),
    };
    v1_0::Message {
        epoch: m.epoch,
        seq: m.seq,
        lsn: m.lsn,
        commit_time_micros: m.commit_time_micros,
        body,
    }
}

/// What the frozen v1.1 decoder should make of `m`: the same message without `out_of_service`,
/// tags reduced to their names.
fn as_v1_1(m: &Message) -> v1_1::Message {
    let body = match &m.body {
        Body::Keys(keys) => v1_1::Body::Keys(
            keys.iter()
                .map(|k| v1_1::KeyRef {
                    namespace: k.namespace.clone(),
                    key: k.key.clone(),
                })
                .collect(),
        ),
        Body::Tags(tags) => v1_1::Body::Tags(tag_names(tags)),
        Body::Flush(items) => v1_1::Body::Flush(items.clone()),
        Body::Heartbeat {
            last_data_seq,
            details,
        } => v1_1::Body::Heartbeat {
            last_data_seq: *last_data_seq,
            details: details.as_ref().map(|d| v1_1::HeartbeatDetails {
                lag_bytes: d.lag_bytes,
                refresh_interval_ms: d.refresh_interval_ms,
                namespaces: d.namespaces.clone(),
            }),
        },
        other => panic!("unknown body {other:?}"),
    };
    v1_1::Message {
        epoch: m.epoch,
        seq: m.seq,
        lsn: m.lsn,
        commit_time_micros: m.commit_time_micros,
        sent_at_micros: m.sent_at_micros,
        body,
    }
}

/// What the frozen v1.2 decoder should make of `m`: the same message, tags reduced to their
/// names.
fn as_v1_2(m: &Message) -> v1_2::Message {
    let body = match &m.body {
        Body::Keys(keys) => v1_2::Body::Keys(
            keys.iter()
                .map(|k| v1_2::KeyRef {
                    namespace: k.namespace.clone(),
                    key: k.key.clone(),
                })
                .collect(),
        ),
        Body::Tags(tags) => v1_2::Body::Tags(tag_names(tags)),
        Body::Flush(items) => v1_2::Body::Flush(items.clone()),
        Body::Heartbeat {
            last_data_seq,
            details,
        } => v1_2::Body::Heartbeat {
            last_data_seq: *last_data_seq,
            details: details.as_ref().map(|d| v1_2::HeartbeatDetails {
                lag_bytes: d.lag_bytes,
                refresh_interval_ms: d.refresh_interval_ms,
                namespaces: d.namespaces.clone(),
                out_of_service: d.out_of_service.clone(),
            }),
        },
        other => panic!("unknown body {other:?}"),
    };
    v1_2::Message {
        epoch: m.epoch,
        seq: m.seq,
        lsn: m.lsn,
        commit_time_micros: m.commit_time_micros,
        sent_at_micros: m.sent_at_micros,
        body,
    }
}

/// What this decoder should make of `m` sent by a v1.2 sender: every tag in every namespace.
fn without_v1_3_fields(mut m: Message) -> Message {
    if let Body::Tags(tags) = &mut m.body {
        for t in tags {
            t.namespace = None;
        }
    }
    m
}

/// What this decoder should make of `m` sent by a v1.1 sender: `out_of_service` empty, and every
/// tag in every namespace.
fn without_v1_2_fields(m: Message) -> Message {
    let mut m = without_v1_3_fields(m);
    if let Body::Heartbeat {
        details: Some(d), ..
    } = &mut m.body
    {
        d.out_of_service.clear();
    }
    m
}

/// What this decoder should make of `m` sent by a v1.0 sender: the v1.1 (and later) fields at
/// their defaults.
fn without_v1_1_fields(m: Message) -> Message {
    let mut m = without_v1_2_fields(m);
    m.sent_at_micros = 0;
    if let Body::Heartbeat { details, .. } = &mut m.body {
        *details = None;
    }
    m
}

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,12}"
}

fn arb_details() -> impl Strategy<Value = HeartbeatDetails> {
    (
        prop_oneof![Just(0u64), any::<u64>()],
        prop_oneof![Just(0u64), Just(3_600_000), any::<u64>()],
        prop::collection::vec(arb_string(), 0..6),
        prop::collection::vec(arb_string(), 0..4),
    )
        .prop_map(
            |(lag_bytes, refresh_interval_ms, namespaces, out_of_service)| HeartbeatDetails {
                lag_bytes,
                refresh_interval_ms,
                namespaces,
                out_of_service,
            },
        )
}

/// A tag, in a namespace or (as a v1.2 sender wrote it) in every namespace; never in `Some("")`,
/// which is not a namespace (it encodes as "no namespace").
fn arb_tag_ref() -> impl Strategy<Value = TagRef> {
    (prop::option::of(".{1,12}"), arb_string())
        .prop_map(|(namespace, tag)| TagRef { namespace, tag })
}

fn arb_body() -> impl Strategy<Value = Body> {
    let s = arb_string;
    prop_oneof![
        prop::collection::vec((s(), s()), 0..6)
            .prop_map(|v| Body::Keys(v.into_iter().map(|(n, k)| KeyRef::new(n, k)).collect())),
        prop::collection::vec(arb_tag_ref(), 0..6).prop_map(Body::Tags),
        // As a v1.2 sender wrote them: no tag has a namespace.
        prop::collection::vec(s(), 0..6).prop_map(unscoped_tags),
        prop::collection::vec(s(), 0..6).prop_map(Body::Flush),
        (any::<u64>(), prop::option::of(arb_details())).prop_map(|(last_data_seq, details)| {
            Body::Heartbeat {
                last_data_seq,
                details,
            }
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        prop_oneof![Just(0u64), Just(1), any::<u64>()],
        any::<u64>(),
        any::<i64>(),
        prop_oneof![Just(0i64), Just(1_700_000_000_000_000), any::<i64>()],
        arb_body(),
    )
        .prop_map(
            |(epoch, seq, lsn, commit_time_micros, sent_at_micros, body)| Message {
                epoch,
                seq,
                lsn,
                commit_time_micros,
                sent_at_micros,
                body,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Wire format: golden fixtures.
// ---------------------------------------------------------------------------------------------

/// Fixtures written by the v1.0 encoder (minor 0). Frozen: never change these bytes; they decode
/// with `sent_at_micros == 0` and heartbeat `details: None`.
fn golden_v1_0() -> Vec<(Message, Vec<u8>)> {
    vec![
        (
            Message {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 1,
                lsn: 300,
                commit_time_micros: -2,
                sent_at_micros: 0,
                body: Body::Keys(vec![KeyRef::new("users", "7")]),
            },
            hex("5743 0100 0c efcdab8967452301 01 ac02 03  01 09 01 05 7573657273 01 37"),
        ),
        (
            Message::new(1, 2, unscoped_tags(["users", "orgs"])),
            hex("5743 0100 0b 0100000000000000 02 00 00  02 0c 02 05 7573657273 04 6f726773"),
        ),
        (
            Message {
                epoch: u64::MAX,
                seq: 3,
                lsn: 1,
                commit_time_micros: 64,
                sent_at_micros: 0,
                body: Body::Flush(vec!["users".into()]),
            },
            hex("5743 0100 0c ffffffffffffffff 03 01 8001  03 07 01 05 7573657273"),
        ),
        (
            Message::new(
                0,
                5,
                Body::Heartbeat {
                    last_data_seq: u64::MAX,
                    details: None,
                },
            ),
            hex("5743 0100 0b 0000000000000000 05 00 00  04 0a ffffffffffffffffff01"),
        ),
        (
            Message::new(42, 0, Body::Keys(vec![])),
            hex("5743 0100 0b 2a00000000000000 00 00 00  01 01 00"),
        ),
    ]
}

/// 2023-11-14 22:13:20 UTC, as microseconds since the Unix epoch.
const SENT_AT: i64 = 1_700_000_000_000_000;

/// Fixtures of the v1.1 encoder (minor 1), byte for byte what it wrote. Frozen: never change
/// these bytes; they decode with an empty `out_of_service`.
fn golden_v1_1() -> Vec<(Message, Vec<u8>)> {
    vec![
        // A heartbeat with details: lag 300 bytes, a refresh every hour, two namespaces.
        // sent_at: zigzag 3_400_000_000_000_000 = 80 80 f2 81 83 89 85 06.
        (
            Message {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 9,
                lsn: 0,
                commit_time_micros: 0,
                sent_at_micros: SENT_AT,
                body: Body::Heartbeat {
                    last_data_seq: 8,
                    details: Some(HeartbeatDetails {
                        lag_bytes: 300,
                        refresh_interval_ms: 3_600_000,
                        namespaces: vec!["users".into(), "orgs".into()],
                        out_of_service: vec![],
                    }),
                },
            },
            hex("5743 0101 13 efcdab8967452301 09 00 00 8080f28183898506 \
                 04 13 08 ac02 80dddb01 02 05 7573657273 04 6f726773"),
        ),
        // The first v1.0 fixture with a send time: one more header field, nothing else.
        (
            Message {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 1,
                lsn: 300,
                commit_time_micros: -2,
                sent_at_micros: SENT_AT + 123,
                body: Body::Keys(vec![KeyRef::new("users", "7")]),
            },
            hex("5743 0101 14 efcdab8967452301 01 ac02 03 f681f28183898506  01 09 01 05 7573657273 01 37"),
        ),
        // A heartbeat without details is the v1.0 heartbeat body, under minor 1; a negative
        // send time zigzags to 01.
        (
            Message {
                sent_at_micros: -1,
                ..Message::new(
                    0,
                    5,
                    Body::Heartbeat {
                        last_data_seq: u64::MAX,
                        details: None,
                    },
                )
            },
            hex("5743 0101 0c 0000000000000000 05 00 00 01  04 0a ffffffffffffffffff01"),
        ),
        // Empty details are still details: three zero bytes, and they decode as Some.
        (
            Message::new(
                42,
                6,
                Body::Heartbeat {
                    last_data_seq: 5,
                    details: Some(HeartbeatDetails::default()),
                },
            ),
            hex("5743 0101 0c 2a00000000000000 06 00 00 00  04 04 05 000000"),
        ),
    ]
}

/// Fixtures of the v1.2 encoder (minor 2), byte for byte what it wrote. Frozen: never change
/// these bytes; their Tags decode with every namespace `None` (every tag in every namespace).
fn golden_v1_2() -> Vec<(Message, Vec<u8>)> {
    vec![
        // One namespace certified, one out of service; a refresh every minute (60_000 =
        // e0 d4 03).
        (
            Message {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 10,
                lsn: 0,
                commit_time_micros: 0,
                sent_at_micros: SENT_AT,
                body: Body::Heartbeat {
                    last_data_seq: 9,
                    details: Some(HeartbeatDetails {
                        lag_bytes: 0,
                        refresh_interval_ms: 60_000,
                        namespaces: vec!["users".into()],
                        out_of_service: vec!["orgs".into()],
                    }),
                },
            },
            hex("5743 0102 13 efcdab8967452301 0a 00 00 8080f28183898506 \
                 04 12 09 00 e0d403 01 05 7573657273 01 04 6f726773"),
        ),
        // The first v1.1 fixture under v1.2: the details end with an empty out_of_service.
        (
            golden_v1_1().remove(0).0,
            hex("5743 0102 13 efcdab8967452301 09 00 00 8080f28183898506 \
                 04 14 08 ac02 80dddb01 02 05 7573657273 04 6f726773 00"),
        ),
        // Messages other than heartbeats with details only change the minor byte.
        (
            golden_v1_1().remove(1).0,
            hex("5743 0102 14 efcdab8967452301 01 ac02 03 f681f28183898506  01 09 01 05 7573657273 01 37"),
        ),
        (
            golden_v1_1().remove(2).0,
            hex("5743 0102 0c 0000000000000000 05 00 00 01  04 0a ffffffffffffffffff01"),
        ),
        // Empty details: four zero bytes now.
        (
            golden_v1_1().remove(3).0,
            hex("5743 0102 0c 2a00000000000000 06 00 00 00  04 05 05 00000000"),
        ),
        // Everything out of service, nothing certified.
        (
            Message::new(
                42,
                7,
                Body::Heartbeat {
                    last_data_seq: 6,
                    details: Some(HeartbeatDetails {
                        lag_bytes: 1,
                        refresh_interval_ms: 0,
                        namespaces: vec![],
                        out_of_service: vec!["users".into(), "orgs".into()],
                    }),
                },
            ),
            hex("5743 0102 0c 2a00000000000000 07 00 00 00  04 10 06 01 00 00 02 05 7573657273 04 6f726773"),
        ),
        // The v1.0 Tags fixture under v1.2: a zero send time ends the header, the body is the
        // same. (Added when v1.3 froze these fixtures; checked against the v1.2 encoder of commit 1f3e2b8.)
        (
            Message::new(1, 2, unscoped_tags(["users", "orgs"])),
            hex("5743 0102 0c 0100000000000000 02 00 00 00  02 0c 02 05 7573657273 04 6f726773"),
        ),
    ]
}

/// Fixtures of the v1.3 encoder (minor 3), byte for byte what it writes.
fn golden_v1_3() -> Vec<(Message, Vec<u8>)> {
    vec![
        // Two tags, each in a namespace: the tags, then their namespaces in the same order
        // ("orders" = 6f7264657273, "orgs:7" = 6f7267733a37).
        (
            Message {
                epoch: 0x0123_4567_89ab_cdef,
                seq: 11,
                lsn: 300,
                commit_time_micros: -2,
                sent_at_micros: SENT_AT,
                body: Body::Tags(vec![
                    TagRef::new("orders", "users"),
                    TagRef::new("users", "orgs:7"),
                ]),
            },
            hex("5743 0103 14 efcdab8967452301 0b ac02 03 8080f28183898506 \
                 02 1b 02 05 7573657273 06 6f7267733a37  06 6f7264657273 05 7573657273"),
        ),
        // One tag in every namespace, one in "users": the first namespace is '' (00).
        (
            Message::new(
                42,
                8,
                Body::Tags(vec![
                    unscoped("orgs"),
                    TagRef::new("users", "users:7"),
                ]),
            ),
            hex("5743 0103 0c 2a00000000000000 08 00 00 00 \
                 02 15 02 04 6f726773 07 75736572733a37  00 05 7573657273"),
        ),
        // Tags without namespaces: no namespaces at all, the v1.2 body (the last v1.2 fixture
        // but for the minor byte).
        (
            Message::new(1, 2, unscoped_tags(["users", "orgs"])),
            hex("5743 0103 0c 0100000000000000 02 00 00 00  02 0c 02 05 7573657273 04 6f726773"),
        ),
        // No tags: no namespaces either.
        (
            Message::new(42, 9, Body::Tags(vec![])),
            hex("5743 0103 0c 2a00000000000000 09 00 00 00  02 01 00"),
        ),
        // Other messages only change the minor byte: the first v1.2 fixture, and the second
        // v1.1 one.
        (
            golden_v1_2().remove(0).0,
            hex("5743 0103 13 efcdab8967452301 0a 00 00 8080f28183898506 \
                 04 12 09 00 e0d403 01 05 7573657273 01 04 6f726773"),
        ),
        (
            golden_v1_1().remove(1).0,
            hex("5743 0103 14 efcdab8967452301 01 ac02 03 f681f28183898506  01 09 01 05 7573657273 01 37"),
        ),
    ]
}

#[test]
fn golden_fixtures_encode_and_decode() {
    assert_eq!(FORMAT_MINOR, 3);
    for (msg, bytes) in golden_v1_3() {
        assert_eq!(msg.encode(), bytes, "encoding of {msg:?}");
        assert_eq!(msg.encoded_len(), bytes.len());
        let mut appended = b"prefix".to_vec();
        msg.encode_into(&mut appended);
        assert_eq!(appended[6..], bytes[..]);
        assert_eq!(Message::decode(&bytes), Ok(msg));
    }
}

#[test]
fn the_reference_encoder_writes_every_golden_fixture() {
    // The test's own encoders agree with the hand-written bytes of every version, so the
    // property tests that use them test the format, not the crate against itself.
    for (msg, bytes) in golden_v1_3() {
        assert_eq!(encode_future(&msg, 3, &[], &[], &[]), bytes, "{msg:?}");
    }
    for (msg, bytes) in golden_v1_2() {
        assert_eq!(encode_v1_2(&msg), bytes, "{msg:?}");
    }
    for (msg, bytes) in golden_v1_1() {
        assert_eq!(encode_v1_1(&msg), bytes, "{msg:?}");
    }
    for (msg, bytes) in golden_v1_0() {
        assert_eq!(encode_v1_0(&msg), bytes, "{msg:?}");
    }
}

#[test]
fn v1_2_golden_fixtures_still_decode_with_every_tag_in_every_namespace() {
    let mut tags = 0;
    for (msg, bytes) in golden_v1_2() {
        assert_eq!(bytes[3], 2);
        let decoded = Message::decode(&bytes).expect("a v1.2 fixture");
        if let Body::Tags(t) = &decoded.body {
            assert!(t.iter().all(|t| t.namespace.is_none()), "{t:?}");
            tags += 1;
        }
        assert_eq!(decoded, msg, "{bytes:02x?}");
        // And the frozen v1.2 decoder, of course.
        assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)));
    }
    assert!(tags > 0, "a v1.2 Tags fixture");
}

#[test]
fn v1_2_fixtures_reencode_changing_only_the_minor_byte() {
    // Nothing a v1.2 sender could say has a tag namespace, so v1.3 writes it as v1.2 did.
    for (msg, mut bytes) in golden_v1_2() {
        bytes[3] = 3;
        assert_eq!(msg.encode(), bytes, "{msg:?}");
    }
    // Nor does a v1.3 Tags body without namespaces differ from the v1.2 one.
    let (v1_2_msg, v1_2_bytes) = golden_v1_2().pop().unwrap();
    let (v1_3_msg, v1_3_bytes) = golden_v1_3().remove(2);
    assert_eq!(v1_2_msg, v1_3_msg);
    assert_eq!(v1_2_bytes[..3], v1_3_bytes[..3]);
    assert_eq!(v1_2_bytes[4..], v1_3_bytes[4..]);
}

#[test]
fn v1_1_golden_fixtures_still_decode_with_nothing_out_of_service() {
    for (msg, bytes) in golden_v1_1() {
        let decoded = Message::decode(&bytes).expect("a v1.1 fixture");
        if let Body::Heartbeat {
            details: Some(d), ..
        } = &decoded.body
        {
            assert!(d.out_of_service.is_empty(), "{d:?}");
        }
        assert_eq!(decoded, msg, "{bytes:02x?}");
        // And the frozen v1.1 decoder, of course.
        assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)));
    }
}

#[test]
fn the_v1_1_and_v1_0_decoders_read_every_v1_2_fixture() {
    for (msg, bytes) in golden_v1_2() {
        assert_eq!(bytes[3], 2);
        assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)), "{msg:?}");
        assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)), "{msg:?}");
    }
}

#[test]
fn the_older_decoders_read_every_v1_3_fixture_with_tags_in_every_namespace() {
    for (msg, bytes) in golden_v1_3() {
        assert_eq!(bytes[3], 3);
        assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)), "{msg:?}");
        assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)), "{msg:?}");
        assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)), "{msg:?}");
    }
    // Spelled out for the first fixture: its tags, in every namespace.
    let (_, bytes) = golden_v1_3().remove(0);
    let Ok(v1_2::Message {
        body: v1_2::Body::Tags(tags),
        ..
    }) = v1_2::Message::decode(&bytes)
    else {
        panic!("not tags: {:?}", v1_2::Message::decode(&bytes));
    };
    assert_eq!(tags, ["users", "orgs:7"]);
}

#[test]
fn v1_0_golden_fixtures_still_decode() {
    for (msg, bytes) in golden_v1_0() {
        assert_eq!(msg.sent_at_micros, 0);
        assert_eq!(Message::decode(&bytes), Ok(msg), "{bytes:02x?}");
    }
}

#[test]
fn v1_0_fixtures_reencode_with_a_zero_send_time_under_minor_3() {
    for (msg, v1_0_bytes) in golden_v1_0() {
        // Same bytes, but minor 3, a header one byte longer, and sent_at 0 ending the header.
        let header_len = usize::from(v1_0_bytes[4]);
        let mut want = v1_0_bytes[..5 + header_len].to_vec();
        want[3] = 3;
        want[4] += 1;
        want.push(0);
        want.extend_from_slice(&v1_0_bytes[5 + header_len..]);
        assert_eq!(msg.encode(), want, "{msg:?}");
        assert_eq!(msg.encoded_len(), v1_0_bytes.len() + 1);
    }
}

#[test]
fn golden_fixture_of_a_future_minor_still_decodes() {
    // Minor 7: after the v1.1 fields, the header grew by two bytes, the Keys body by one, and
    // three bytes follow.
    let bytes = hex(
        "5743 0107 16 efcdab8967452301 01 ac02 03 f681f28183898506 beef \
                     01 0a 01 05 7573657273 01 37 ff  010203",
    );
    let (want, _) = golden_v1_1().remove(1);
    assert_eq!(Message::decode(&bytes), Ok(want));

    // A minor-7 heartbeat: one more header byte, and two more body bytes after the details
    // and their (empty) v1.2 out_of_service.
    let bytes = hex(
        "5743 0107 14 efcdab8967452301 09 00 00 8080f28183898506 00 \
                     04 16 08 ac02 80dddb01 02 05 7573657273 04 6f726773 00 0102",
    );
    let (want, _) = golden_v1_1().remove(0);
    assert_eq!(Message::decode(&bytes), Ok(want.clone()));
    assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&want)));

    // A minor-7 Tags body: two more bytes after the tags' namespaces, and one after the body.
    let bytes = hex(
        "5743 0107 14 efcdab8967452301 0b ac02 03 8080f28183898506 \
                     02 1d 02 05 7573657273 06 6f7267733a37  06 6f7264657273 05 7573657273 beef  ff",
    );
    let (want, _) = golden_v1_3().remove(0);
    assert_eq!(Message::decode(&bytes), Ok(want.clone()));
    assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&want)));
    assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&want)));
    assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&want)));

    // Its tags without namespaces: it writes '' for each before its own bytes.
    let bytes = hex("5743 0107 0c 0100000000000000 02 00 00 00 \
                     02 10 02 05 7573657273 04 6f726773  00 00 beef");
    let (want, _) = golden_v1_3().remove(2);
    assert_eq!(Message::decode(&bytes), Ok(want.clone()));
    assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&want)));
    assert_eq!(encode_future(&want, 7, &[], &hex("beef"), &[]), bytes);
}

#[test]
fn a_later_minor_must_write_the_tag_namespaces_before_its_own_tags_fields() {
    // A minor-7 Tags body of the v1.2 era, two bytes straight after the tags: the v1.2 (and
    // older) decoders skip them; since v1.3 they are the start of the namespaces (the first a
    // string of one byte), and the body ends before the second.
    let bytes = hex("5743 0107 0c 0100000000000000 02 00 00 00 \
                     02 0e 02 05 7573657273 04 6f726773 0102");
    let (v1_2_view, _) = golden_v1_2().pop().unwrap();
    assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&v1_2_view)));
    assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&v1_2_view)));
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "tag namespace"
        })
    );
    // Bytes that happen to read as one string per tag are taken for namespaces: a v1.2-era
    // minor appending to a Tags body would be misread (there is none: v1.3 follows v1.2).
    let bytes = hex("5743 0107 0c 0100000000000000 02 00 00 00 \
                     02 10 02 05 7573657273 04 6f726773 01 61 01 62");
    assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&v1_2_view)));
    assert_eq!(
        Message::decode(&bytes).map(|m| m.body),
        Ok(Body::Tags(vec![
            TagRef::new("a", "users"),
            TagRef::new("b", "orgs")
        ]))
    );
}

#[test]
fn a_later_minor_must_write_out_of_service_before_its_own_heartbeat_fields() {
    // The minor-7 heartbeat of the v1.1 era, two bytes straight after the namespaces: the v1.1
    // decoder skipped them; since v1.2 they are the start of out_of_service (one string of two
    // bytes), which the body's end cuts short.
    let bytes = hex(
        "5743 0107 14 efcdab8967452301 09 00 00 8080f28183898506 00 \
                     04 15 08 ac02 80dddb01 02 05 7573657273 04 6f726773 0102",
    );
    let (v1_1_view, _) = golden_v1_1().remove(0);
    assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&v1_1_view)));
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "out-of-service namespace"
        })
    );
}

#[test]
fn a_later_minor_must_write_the_send_time_before_its_own_header_fields() {
    // Before v1.1 this decoded (the two bytes were a newer minor's, and skipped); since v1.1
    // they are the start of sent_at_micros, a varint the header's end cuts short.
    let bytes = hex(
        "5743 0107 0e efcdab8967452301 01 ac02 03 beef  01 0a 01 05 7573657273 01 37 ff  010203",
    );
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "sent_at_micros"
        })
    );
}

#[test]
fn partial_tag_namespaces_are_truncated_errors() {
    let (msg, _) = golden_v1_3().remove(0);
    let (header, kind, body) = sections(&msg, Layout::V1_3);
    // The tags end after "orgs:7": 02 05 users 06 orgs:7 = 14 bytes.
    let namespaces_start = 14;
    assert_eq!(
        Message::decode(&frame(3, &header, kind, &body[..namespaces_start], &[])),
        Ok(without_v1_3_fields(msg.clone())),
        "without the namespaces: every tag in every namespace"
    );
    for end in namespaces_start + 1..body.len() {
        // Cut anywhere inside the namespaces (bytes after the body to show they are not
        // borrowed): Truncated, not skipped; the older decoders never look.
        let bytes = frame(3, &header, kind, &body[..end], b"\x05users");
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::Truncated {
                what: "tag namespace"
            }),
            "body cut at {end} of {}",
            body.len()
        );
        assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)));
        assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)));
        assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)));
    }
    let tags_body = |hex_body: &str| Message::decode(&frame(3, &header, kind, &hex(hex_body), &[]));
    // A namespace's length running past the body's end.
    assert_eq!(
        tags_body("01 01 61 09 7573657273"),
        Err(DecodeError::Truncated {
            what: "tag namespace"
        })
    );
    // Malformed varints and strings among the namespaces.
    assert_eq!(
        tags_body("01 01 61 ffffffffffffffffff02"),
        Err(DecodeError::VarintOverflow)
    );
    assert_eq!(tags_body("01 01 61 02 c328"), Err(DecodeError::InvalidUtf8));
    // '' is no namespace, whether some tags have one or none does.
    let tags = |t: Vec<TagRef>| {
        Ok::<_, DecodeError>(Message {
            body: Body::Tags(t),
            ..msg.clone()
        })
    };
    assert_eq!(
        tags_body("02 01 61 01 62 00 00"),
        tags(vec![unscoped("a"), unscoped("b"),])
    );
    assert_eq!(
        tags_body("02 01 61 01 62 01 6e 00"),
        tags(vec![TagRef::new("n", "a"), unscoped("b"),])
    );
    // Bytes after the namespaces belong to a newer minor: ignored.
    assert_eq!(
        tags_body("01 01 61 01 6e 01 6f"),
        tags(vec![TagRef::new("n", "a")])
    );
}

#[test]
fn heartbeat_predicate() {
    for details in [None, Some(HeartbeatDetails::default())] {
        let hb = Message::new(
            1,
            2,
            Body::Heartbeat {
                last_data_seq: 1,
                details,
            },
        );
        assert!(hb.is_heartbeat());
    }
    assert!(!Message::new(1, 2, Body::Tags(vec![])).is_heartbeat());
}

#[test]
fn decode_errors() {
    let good = golden_v1_0().remove(0).1;
    assert_eq!(
        Message::decode(&vec![0; MAX_MESSAGE_BYTES + 1]),
        Err(DecodeError::TooLarge {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        })
    );
    assert_eq!(
        Message::decode(b"GET / HTTP/1.1"),
        Err(DecodeError::BadMagic)
    );

    let mut unknown_kind = good.clone();
    unknown_kind[4 + 1 + 12] = 9;
    assert_eq!(
        Message::decode(&unknown_kind),
        Err(DecodeError::UnknownBodyKind { kind: 9 })
    );

    let mut bad_utf8 = good.clone();
    let last = bad_utf8.len() - 1;
    bad_utf8[last] = 0xff;
    assert_eq!(Message::decode(&bad_utf8), Err(DecodeError::InvalidUtf8));

    // Every strict prefix fails with Truncated (or, for the empty prefix of the magic, too), in
    // every version.
    for good in [
        good,
        golden_v1_1().remove(0).1,
        golden_v1_2().remove(0).1,
        golden_v1_3().remove(0).1,
        golden_v1_3().remove(1).1,
    ] {
        for n in 0..good.len() {
            assert!(
                matches!(
                    Message::decode(&good[..n]),
                    Err(DecodeError::Truncated { .. })
                ),
                "prefix of {n} bytes: {:?}",
                Message::decode(&good[..n])
            );
        }
    }

    // A header too short for its fixed fields.
    let short_header = hex("5743 0100 04 01020304 01 01 00");
    assert_eq!(
        Message::decode(&short_header),
        Err(DecodeError::Truncated { what: "epoch" })
    );
    // An overlong varint as header length.
    let overlong = hex("5743 0100 8080808080808080808001");
    assert_eq!(Message::decode(&overlong), Err(DecodeError::VarintOverflow));
}

#[test]
fn malformed_send_times_are_errors() {
    let header = |sent_at: &str| {
        let mut h = hex("2a00000000000000 01 00 00");
        h.extend_from_slice(&hex(sent_at));
        frame(1, &h, 1, &[0], &[])
    };
    assert_eq!(
        Message::decode(&header("80")),
        Err(DecodeError::Truncated {
            what: "sent_at_micros"
        })
    );
    assert_eq!(
        Message::decode(&header("ffffffffffffffffff02")),
        Err(DecodeError::VarintOverflow)
    );
    assert_eq!(
        Message::decode(&header("8080808080808080808000")),
        Err(DecodeError::VarintOverflow)
    );
    // Extremes, and a non-minimal varint, are fine.
    let extreme = Message::decode(&header("ffffffffffffffffff01")).map(|m| m.sent_at_micros);
    assert_eq!(extreme, Ok(i64::MIN));
    let extreme = Message::decode(&header("feffffffffffffffff01")).map(|m| m.sent_at_micros);
    assert_eq!(extreme, Ok(i64::MAX));
    let padded = Message::decode(&header("8100")).map(|m| m.sent_at_micros);
    assert_eq!(padded, Ok(-1));
}

#[test]
fn partial_heartbeat_details_are_truncated_errors() {
    let (msg, _) = golden_v1_1().remove(0);
    let (header, kind, body) = sections(&msg, Layout::V1_1);
    let details_start = 1; // last_data_seq 8 takes one byte
                           // A body ending anywhere inside the details (with its length saying so, and bytes after
                           // the body to show they are not borrowed) is Truncated, naming the field it ends in.
    for end in details_start + 1..body.len() {
        let bytes = frame(1, &header, kind, &body[..end], b"\x05users");
        let what = match end {
            2 => "lag_bytes",
            3..=6 => "refresh_interval_ms",
            // From 8 on the count is there, but the bytes left cannot hold 2 strings until 10.
            7..=9 => "certified namespace count",
            _ => "certified namespace",
        };
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::Truncated { what }),
            "body cut at {end} of {}",
            body.len()
        );
    }
    // Lag and interval present, the namespace count's varint cut short.
    let bytes = frame(1, &header, kind, &hex("08 ac02 80dddb01 80"), &[]);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "certified namespace count"
        })
    );
    // A count the body could never hold is refused before allocating.
    let bytes = frame(
        1,
        &header,
        kind,
        &hex("08 00 00 ffffffffffffffffff01 00"),
        &[],
    );
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "certified namespace count"
        })
    );
    // Malformed varints and strings inside the details.
    let bytes = frame(1, &header, kind, &hex("08 ffffffffffffffffff02 00 00"), &[]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::VarintOverflow));
    let bytes = frame(1, &header, kind, &hex("08 00 00 01 02 c328"), &[]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::InvalidUtf8));
}

#[test]
fn partial_out_of_service_lists_are_truncated_errors() {
    let (msg, _) = golden_v1_2().remove(0);
    let (header, kind, body) = sections(&msg, Layout::V1_2);
    // The v1.1 part of the details ends after "users": 09 00 e0d403 01 05 users = 12 bytes.
    let oos_start = 12;
    assert_eq!(
        Message::decode(&frame(2, &header, kind, &body[..oos_start], &[])),
        Ok(without_v1_2_fields(msg.clone())),
        "without the field: nothing out of service"
    );
    for end in oos_start + 1..body.len() {
        let bytes = frame(2, &header, kind, &body[..end], b"\x04orgs");
        // The count alone: the bytes left cannot hold its one string.
        let what = if end == oos_start + 1 {
            "out-of-service namespace count"
        } else {
            "out-of-service namespace"
        };
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::Truncated { what }),
            "body cut at {end} of {}",
            body.len()
        );
    }
    // A count the body could never hold is refused before allocating.
    let bytes = frame(
        2,
        &header,
        kind,
        &hex("09 00 00 00 ffffffffffffffffff01"),
        &[],
    );
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "out-of-service namespace count"
        })
    );
    let bytes = frame(2, &header, kind, &hex("09 00 00 00 80"), &[]);
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::Truncated {
            what: "out-of-service namespace count"
        })
    );
    let bytes = frame(2, &header, kind, &hex("09 00 00 00 01 02 c328"), &[]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::InvalidUtf8));
}

#[test]
fn encoded_len_is_exact_at_varint_boundaries() {
    let edges_u64 = [0, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX];
    let edges_i64 = [
        0,
        -1,
        63,
        -64,
        64,
        -65,
        8191,
        -8192,
        8192,
        i64::MAX,
        i64::MIN,
    ];
    for &sent_at_micros in &edges_i64 {
        for &v in &edges_u64 {
            let namespaces =
                vec!["n".repeat(usize::try_from(v % 300).unwrap()); (v % 130) as usize];
            for details in [
                None,
                Some(HeartbeatDetails {
                    lag_bytes: v,
                    refresh_interval_ms: v.rotate_left(7),
                    out_of_service: namespaces.iter().take(3).cloned().collect(),
                    namespaces,
                }),
            ] {
                let msg = Message {
                    sent_at_micros,
                    ..Message::new(
                        v,
                        v,
                        Body::Heartbeat {
                            last_data_seq: v,
                            details,
                        },
                    )
                };
                let bytes = msg.encode();
                assert_eq!(msg.encoded_len(), bytes.len(), "{msg:?}");
                assert_eq!(Message::decode(&bytes).as_ref(), Ok(&msg));
            }
        }
    }

    // Tags, with the count and the lengths of tags and namespaces at their varint edges: none,
    // some and all of the tags in a namespace.
    for count in [0usize, 1, 2, 127, 128] {
        for len in [0usize, 1, 127, 128, 16_383, 16_384] {
            if count * len > MAX_MESSAGE_BYTES / 4 {
                continue;
            }
            for scoped in [0, 1, 2] {
                let tags: Vec<TagRef> = (0..count)
                    .map(|i| TagRef {
                        // Never Some(""): that is no namespace.
                        namespace: (scoped == 2 || (scoped == 1 && i % 2 == 1))
                            .then(|| "n".repeat(len.max(1))),
                        tag: "t".repeat(len),
                    })
                    .collect();
                let msg = Message::new(len as u64, count as u64, Body::Tags(tags.clone()));
                let bytes = msg.encode();
                assert_eq!(msg.encoded_len(), bytes.len(), "{count} × {len}, {scoped}");
                assert_eq!(bytes, encode_future(&msg, 3, &[], &[], &[]));
                assert_eq!(Message::decode(&bytes).as_ref(), Ok(&msg));
                // TagRef::encoded_len is what a tag adds to a body whose tags carry namespaces.
                let (_, _, body) = sections(&msg, Layout::V1_3);
                let mut count_varint = Vec::new();
                leb128(&mut count_varint, count as u64);
                if tags.iter().any(|t| t.namespace.is_some()) {
                    assert_eq!(
                        body.len(),
                        count_varint.len() + tags.iter().map(TagRef::encoded_len).sum::<usize>()
                    );
                } else {
                    // Without namespaces, each tag is one byte ('') shorter than that.
                    assert_eq!(
                        body.len() + count,
                        count_varint.len() + tags.iter().map(TagRef::encoded_len).sum::<usize>()
                    );
                }
            }
        }
    }
}

#[test]
fn a_message_at_the_size_limit_decodes() {
    let mut msg = Message::new(1, 1, unscoped_tags([""]));
    msg.sent_at_micros = SENT_AT;
    let overhead = msg.encoded_len();
    // The string's length varint grows from 1 to 3 bytes.
    let tag = "x".repeat(MAX_MESSAGE_BYTES - overhead - 2 - 2);
    msg.body = unscoped_tags([tag]);
    let bytes = msg.encode();
    assert_eq!(bytes.len(), MAX_MESSAGE_BYTES);
    assert_eq!(Message::decode(&bytes), Ok(msg));

    // The same for a tag in a namespace, beside a tag in every namespace (''), the namespace
    // filling it.
    let tags =
        |namespace: String| Body::Tags(vec![TagRef::new(namespace, "users:7"), unscoped("orgs")]);
    let mut msg = Message::new(1, 1, tags("n".into()));
    msg.sent_at_micros = SENT_AT;
    let overhead = msg.encoded_len();
    // The namespace grows by n - 1 bytes, its length varint and the body's by 2 each.
    let filler = TagRef::new(
        "x".repeat(MAX_MESSAGE_BYTES - overhead + 1 - 2 - 2),
        "users:7",
    );
    assert_eq!(
        filler.encoded_len(),
        TagRef::new("n", "users:7").encoded_len() + (MAX_MESSAGE_BYTES - overhead - 2)
    );
    msg.body = tags(filler.namespace.clone().unwrap());
    let bytes = msg.encode();
    assert_eq!(bytes.len(), MAX_MESSAGE_BYTES);
    assert_eq!(msg.encoded_len(), MAX_MESSAGE_BYTES);
    assert_eq!(Message::decode(&bytes), Ok(msg.clone()));
    assert_eq!(
        v1_2::Message::decode(&bytes).map(|m| m.body),
        Ok(v1_2::Body::Tags(vec!["users:7".into(), "orgs".into()]))
    );
    // One byte more is refused.
    msg.body = tags(format!("{}x", filler.namespace.unwrap()));
    assert_eq!(msg.encoded_len(), MAX_MESSAGE_BYTES + 1);
    assert_eq!(
        Message::decode(&msg.encode()),
        Err(DecodeError::TooLarge {
            len: MAX_MESSAGE_BYTES + 1,
            max: MAX_MESSAGE_BYTES
        })
    );

    // The same for a heartbeat whose certified namespaces fill it.
    let details = |namespaces| HeartbeatDetails {
        lag_bytes: 1 << 40,
        refresh_interval_ms: 3_600_000,
        namespaces,
        out_of_service: vec!["orgs".into()],
    };
    let mut msg = Message::new(
        1,
        1,
        Body::Heartbeat {
            last_data_seq: 1,
            details: Some(details(vec![String::new()])),
        },
    );
    msg.sent_at_micros = SENT_AT;
    let overhead = msg.encoded_len();
    msg.body = Body::Heartbeat {
        last_data_seq: 1,
        details: Some(details(vec![
            "x".repeat(MAX_MESSAGE_BYTES - overhead - 2 - 2)
        ])),
    };
    let bytes = msg.encode();
    assert_eq!(bytes.len(), MAX_MESSAGE_BYTES);
    assert_eq!(Message::decode(&bytes), Ok(msg));
}

#[test]
fn error_messages_are_helpful() {
    let msg = DecodeError::UnsupportedMajor { major: 2 }.to_string();
    assert!(msg.contains('2') && msg.contains("major"), "{msg}");
    let msg = DecodeError::Truncated { what: "header" }.to_string();
    assert!(msg.contains("header"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Wire format: across minor versions, with the frozen v1.0, v1.1 and v1.2 decoders.
// ---------------------------------------------------------------------------------------------

/// One message of every kind, each with a send time, heartbeats with and without details (with
/// and without namespaces out of service), and tags with and without namespaces.
fn every_kind() -> Vec<Message> {
    let with = |body| Message {
        lsn: 0x16_b374_d848,
        commit_time_micros: SENT_AT - 2_500,
        sent_at_micros: SENT_AT,
        ..Message::new(0x5eed, 17, body)
    };
    let mut all: Vec<Message> = golden_v1_2()
        .into_iter()
        .chain(golden_v1_3())
        .map(|(m, _)| m)
        .collect();
    all.extend([
        with(Body::Keys(vec![
            KeyRef::new("users", "7"),
            KeyRef::new("orgs", "by_name:a%3Ab"),
        ])),
        with(unscoped_tags(["users", "orgs:7"])),
        with(Body::Tags(vec![
            TagRef::new("orders", "users"),
            TagRef::new("users", "orgs:7"),
        ])),
        with(Body::Tags(vec![
            TagRef::new("é", "ü"),
            unscoped("users"),
            TagRef::new("users", ""),
        ])),
        with(Body::Flush(vec!["users".into()])),
        with(Body::Heartbeat {
            last_data_seq: 16,
            details: None,
        }),
        with(Body::Heartbeat {
            last_data_seq: 16,
            details: Some(HeartbeatDetails {
                lag_bytes: u64::MAX,
                refresh_interval_ms: 0,
                namespaces: vec!["users".into(), "orgs".into(), "é".into()],
                out_of_service: vec!["ü".into()],
            }),
        }),
        Message {
            sent_at_micros: i64::MIN,
            ..with(Body::Keys(vec![]))
        },
    ]);
    all
}

#[test]
fn the_older_decoders_read_every_kind() {
    for msg in every_kind() {
        let bytes = msg.encode();
        assert_eq!(bytes[3], 3);
        assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)), "{msg:?}");
        assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)), "{msg:?}");
        assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)), "{msg:?}");
    }
}

#[test]
fn v1_2_encodings_of_every_kind_decode_with_every_tag_in_every_namespace() {
    for msg in every_kind() {
        let bytes = encode_v1_2(&msg);
        assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)), "{msg:?}");
        assert_eq!(Message::decode(&bytes), Ok(without_v1_3_fields(msg)));
    }
}

#[test]
fn v1_1_encodings_of_every_kind_decode_with_nothing_out_of_service() {
    for msg in every_kind() {
        let bytes = encode_v1_1(&msg);
        assert_eq!(Message::decode(&bytes), Ok(without_v1_2_fields(msg)));
    }
}

#[test]
fn this_decoder_reads_every_v1_0_fixture_with_defaults() {
    for (msg, bytes) in golden_v1_0() {
        assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)));
        let decoded = Message::decode(&bytes).expect("a v1.0 fixture");
        assert_eq!(decoded.sent_at_micros, 0);
        if let Body::Heartbeat { details, .. } = &decoded.body {
            assert_eq!(details, &None);
        }
        assert_eq!(decoded, msg);
    }
    // And v1.0 encodings of the messages lose exactly the v1.1 (and later) fields.
    for msg in every_kind() {
        let bytes = encode_v1_0(&msg);
        assert_eq!(Message::decode(&bytes), Ok(without_v1_1_fields(msg)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(msg in arb_message()) {
        let bytes = msg.encode();
        prop_assert_eq!(bytes.len(), msg.encoded_len());
        prop_assert_eq!(&bytes, &encode_future(&msg, 3, &[], &[], &[]));
        prop_assert_eq!(Message::decode(&bytes), Ok(msg));
    }

    #[test]
    fn the_v1_0_decoder_reads_current_encodings(msg in arb_message()) {
        prop_assert_eq!(v1_0::Message::decode(&msg.encode()), Ok(as_v1_0(&msg)));
    }

    #[test]
    fn the_v1_1_decoder_reads_current_encodings(msg in arb_message()) {
        prop_assert_eq!(v1_1::Message::decode(&msg.encode()), Ok(as_v1_1(&msg)));
    }

    #[test]
    fn the_v1_2_decoder_reads_current_encodings(msg in arb_message()) {
        prop_assert_eq!(v1_2::Message::decode(&msg.encode()), Ok(as_v1_2(&msg)));
    }

    #[test]
    fn v1_2_encodings_decode_with_every_tag_in_every_namespace(msg in arb_message()) {
        let bytes = encode_v1_2(&msg);
        prop_assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)));
        prop_assert_eq!(Message::decode(&bytes), Ok(without_v1_3_fields(msg)));
    }

    #[test]
    fn v1_1_encodings_decode_with_nothing_out_of_service(msg in arb_message()) {
        let bytes = encode_v1_1(&msg);
        prop_assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)));
        prop_assert_eq!(Message::decode(&bytes), Ok(without_v1_2_fields(msg)));
    }

    #[test]
    fn v1_0_encodings_decode_with_defaults(msg in arb_message()) {
        let bytes = encode_v1_0(&msg);
        prop_assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)));
        prop_assert_eq!(Message::decode(&bytes), Ok(without_v1_1_fields(msg)));
    }

    #[test]
    fn future_minor_fields_are_ignored(
        msg in arb_message(),
        minor in 1..=u8::MAX,
        extra_header in prop::collection::vec(any::<u8>(), 0..24),
        extra_body in prop::collection::vec(any::<u8>(), 0..24),
        trailing in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let msg = as_future_sender(msg, !extra_body.is_empty());
        let bytes = encode_future(&msg, minor, &extra_header, &extra_body, &trailing);
        prop_assert_eq!(v1_0::Message::decode(&bytes), Ok(as_v1_0(&msg)));
        prop_assert_eq!(v1_1::Message::decode(&bytes), Ok(as_v1_1(&msg)));
        prop_assert_eq!(v1_2::Message::decode(&bytes), Ok(as_v1_2(&msg)));
        prop_assert_eq!(Message::decode(&bytes), Ok(msg));
    }

    #[test]
    fn minor_7_with_everything_extra(msg in arb_message()) {
        let msg = as_future_sender(msg, true);
        let bytes = encode_future(&msg, 7, &[7, 7, 7], &[0x80, 0x01], b"tail");
        prop_assert_eq!(Message::decode(&bytes), Ok(msg));
    }

    #[test]
    fn other_majors_are_rejected(msg in arb_message(), major in any::<u8>()) {
        prop_assume!(major != FORMAT_MAJOR);
        let mut bytes = msg.encode();
        bytes[2] = major;
        prop_assert_eq!(Message::decode(&bytes), Err(DecodeError::UnsupportedMajor { major }));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let _ = v1_0::Message::decode(&bytes);
        let _ = v1_1::Message::decode(&bytes);
        let _ = v1_2::Message::decode(&bytes);
        let mut prefixed = b"WC\x01".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = Message::decode(&prefixed);
        let _ = v1_0::Message::decode(&prefixed);
    }

    #[test]
    fn arbitrary_tags_bodies_never_panic(
        header in prop::collection::vec(any::<u8>(), 8..24),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = frame(3, &header, 2, &body, &[]);
        if let Ok(decoded) = Message::decode(&bytes) {
            if let Body::Tags(tags) = &decoded.body {
                // '' decodes as no namespace.
                prop_assert!(tags.iter().all(|t| t.namespace.as_deref() != Some("")), "{:?}", tags);
            }
            prop_assert_eq!(Message::decode(&decoded.encode()), Ok(decoded));
        }
    }

    #[test]
    fn arbitrary_heartbeat_bodies_never_panic(
        header in prop::collection::vec(any::<u8>(), 8..24),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = frame(1, &header, 4, &body, &[]);
        if let Ok(decoded) = Message::decode(&bytes) {
            prop_assert_eq!(Message::decode(&decoded.encode()), Ok(decoded));
        }
    }

    #[test]
    fn mutated_encodings_never_panic(
        msg in arb_message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = msg.encode();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let _ = v1_0::Message::decode(&bytes);
        let _ = v1_1::Message::decode(&bytes);
        let _ = v1_2::Message::decode(&bytes);
        if let Ok(decoded) = Message::decode(&bytes) {
            // Whatever decodes re-encodes and decodes to itself.
            prop_assert_eq!(Message::decode(&decoded.encode()), Ok(decoded));
        }
    }

    #[test]
    fn truncations_of_valid_encodings_are_errors(msg in arb_message(), cut in any::<prop::sample::Index>()) {
        let bytes = msg.encode();
        let n = cut.index(bytes.len());
        prop_assert!(Message::decode(&bytes[..n]).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Key builder: PostgreSQL text output against Rust values.
// ---------------------------------------------------------------------------------------------

/// Asserts the daemon's part (from PostgreSQL text) equals the library's (from a Rust value),
/// both as a part and as canonical bytes.
fn same(ty: ColumnType, pg_text: &str, rust: &dyn Fn() -> String, part: KeyPart<'_>) {
    let parsed = ty
        .parse_pg_text(pg_text)
        .unwrap_or_else(|e| panic!("{} {pg_text:?}: {e}", ty.name()));
    assert_eq!(parsed, part, "{} {pg_text:?}", ty.name());
    assert_eq!(key_of(&parsed), rust(), "{} {pg_text:?}", ty.name());
}

/// 2024-02-29 13:14:15.123456 UTC, computed by hand: 2024-01-01 is day 19723 (1704067200 / 86400),
/// then 31 days of January and 28 of February.
const LEAP_DAY_MICROS: i64 =
    (19_723 + 31 + 28) * 86_400_000_000 + (13 * 3600 + 14 * 60 + 15) * 1_000_000 + 123_456;

#[test]
fn pg_text_matches_rust_values() {
    same(
        ColumnType::Bool,
        "t",
        &|| key_of(&true),
        KeyPart::Bool(true),
    );
    same(
        ColumnType::Bool,
        "f",
        &|| key_of(&false),
        KeyPart::Bool(false),
    );
    same(
        ColumnType::Int2,
        "-32768",
        &|| key_of(&i16::MIN),
        KeyPart::Int(-32768),
    );
    same(
        ColumnType::Int4,
        "2147483647",
        &|| key_of(&i32::MAX),
        KeyPart::Int(2_147_483_647),
    );
    same(
        ColumnType::Int8,
        "-9223372036854775808",
        &|| key_of(&i64::MIN),
        KeyPart::Int(i64::MIN),
    );
    same(ColumnType::Int8, "0", &|| key_of(&0u8), KeyPart::Int(0));
    same(
        ColumnType::Oid,
        "4294967295",
        &|| key_of(&u32::MAX),
        KeyPart::Int(4_294_967_295),
    );
    for ty in [ColumnType::Text, ColumnType::Varchar, ColumnType::Name] {
        same(
            ty,
            "a:b c%~é",
            &|| key_of("a:b c%~é"),
            KeyPart::Text("a:b c%~é".into()),
        );
        same(ty, "", &|| key_of(""), KeyPart::Text("".into()));
    }
    let uuid = 0xa0ee_bc99_9c0b_4ef8_bb6d_6bb9_bd38_0a11_u128;
    let uuid_key = || "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_owned();
    same(
        ColumnType::Uuid,
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        &uuid_key,
        KeyPart::Uuid(uuid),
    );
    same(
        ColumnType::Uuid,
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        &uuid_key,
        KeyPart::Uuid(uuid),
    );
    assert_eq!(key_of(&KeyPart::Uuid(uuid)), uuid_key());
    same(
        ColumnType::Bytea,
        "\\x0aff",
        &|| key_of(&[0x0au8, 0xff][..]),
        KeyPart::Bytes(Cow::Owned(vec![0x0a, 0xff])),
    );
    same(
        ColumnType::Bytea,
        "\\x0AFF",
        &|| "0aff".to_owned(),
        KeyPart::Bytes(vec![0x0a, 0xff].into()),
    );
    same(
        ColumnType::Bytea,
        "\\x",
        &|| key_of(&Vec::<u8>::new()),
        KeyPart::Bytes(vec![].into()),
    );
    same(
        ColumnType::Timestamptz,
        "2024-02-29 13:14:15.123456+00",
        &|| LEAP_DAY_MICROS.to_string(),
        KeyPart::Timestamp(LEAP_DAY_MICROS),
    );
    same(
        ColumnType::Timestamptz,
        "2024-02-29 18:44:15.123456+05:30",
        &|| LEAP_DAY_MICROS.to_string(),
        KeyPart::Timestamp(LEAP_DAY_MICROS),
    );
    same(
        ColumnType::Timestamp,
        "2024-02-29 13:14:15.123456",
        &|| LEAP_DAY_MICROS.to_string(),
        KeyPart::Timestamp(LEAP_DAY_MICROS),
    );
    same(
        ColumnType::Timestamp,
        "1969-12-31 23:59:59.999999",
        &|| "-1".to_owned(),
        KeyPart::Timestamp(-1),
    );
    same(
        ColumnType::Timestamptz,
        "infinity",
        &|| "inf".to_owned(),
        KeyPart::Timestamp(i64::MAX),
    );
    same(
        ColumnType::Timestamp,
        "-infinity",
        &|| "-inf".to_owned(),
        KeyPart::Timestamp(i64::MIN),
    );
    same(
        ColumnType::Date,
        "2024-02-29",
        &|| "2024-02-29".to_owned(),
        KeyPart::Date(19_782),
    );
    same(
        ColumnType::Date,
        "0001-01-01 BC",
        &|| "d-719528".to_owned(),
        KeyPart::Date(-719_528),
    );
    same(
        ColumnType::Date,
        "infinity",
        &|| "inf".to_owned(),
        KeyPart::Date(i32::MAX),
    );
    same(
        ColumnType::Numeric,
        "1.500",
        &|| key_of(&KeyPart::numeric("1.5").unwrap()),
        KeyPart::numeric("1.5").unwrap(),
    );
    same(
        ColumnType::Numeric,
        "-0.000",
        &|| "0".to_owned(),
        KeyPart::numeric("0").unwrap(),
    );
    same(
        ColumnType::Numeric,
        "NaN",
        &|| "NaN".to_owned(),
        KeyPart::numeric("NaN").unwrap(),
    );
    same(
        ColumnType::Numeric,
        "-Infinity",
        &|| "-Infinity".to_owned(),
        KeyPart::Numeric("-Infinity".into()),
    );
    same(
        ColumnType::Numeric,
        "18446744073709551615",
        &|| key_of(&u64::MAX),
        KeyPart::Numeric("18446744073709551615".into()),
    );
    // Integers in a numeric column key like the same Rust integers.
    same(
        ColumnType::Numeric,
        "42.00",
        &|| key_of(&42i64),
        KeyPart::Numeric("42".into()),
    );
}

#[test]
fn the_library_and_the_daemon_agree_on_templates() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(key_of(&(7i64, "a:b")), "7:a%3Ab");
    let key = KeyTemplate::parse("{tenant}:{id}")?.render(|c| {
        Ok::<_, KeyError>(match c {
            "tenant" => ColumnType::Int8.parse_pg_text("7")?,
            _ => ColumnType::Text.parse_pg_text("a:b")?,
        })
    })?;
    assert_eq!(key, "7:a%3Ab");

    let template = KeyTemplate::parse("by_email:{email}")?;
    let key = template.render(|_| ColumnType::Text.parse_pg_text("Ann@Example.com"))?;
    assert_eq!(key, format!("by_email:{}", key_of("Ann@Example.com")));
    Ok(())
}

#[test]
fn malformed_pg_text_is_refused() {
    let cases: &[(ColumnType, &[&str])] = &[
        (ColumnType::Bool, &["", "true", "T", "1", "t "]),
        (
            ColumnType::Int2,
            &["", "32768", "-32769", "1.0", "+1", " 1", "-", "1e3"],
        ),
        (ColumnType::Int4, &["2147483648", "0x10", "١"]),
        (
            ColumnType::Int8,
            &["9223372036854775808", "-9223372036854775809", "--1"],
        ),
        (ColumnType::Oid, &["-1", "4294967296", ""]),
        (
            ColumnType::Uuid,
            &[
                "",
                "a0eebc999c0b4ef8bb6d6bb9bd380a11",
                "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
                "a0eebc99+9c0b-4ef8-bb6d-6bb9bd380a11",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1é",
            ],
        ),
        (
            ColumnType::Bytea,
            &["", "0aff", "\\x0", "\\xzz", "\\000", "\\x0aé"],
        ),
        (
            ColumnType::Timestamp,
            &[
                "",
                "2024-02-29",
                "2024-02-30 00:00:00",
                "2024-02-29 13:14:15+00",
                "2024-02-29T13:14:15",
                "Infinity",
                "294277-01-01 00:00:00",
            ],
        ),
        (
            ColumnType::Timestamptz,
            &[
                "2024-02-29 13:14:15",
                "2024-02-29 13:14:15 UTC",
                "2024-02-29 13:14:15+0",
            ],
        ),
        (
            ColumnType::Date,
            &[
                "",
                "2024-2-29",
                "2023-02-29",
                "29.02.2024",
                "2024-02-29 00:00:00",
            ],
        ),
        (
            ColumnType::Numeric,
            &["", "1e5", "+1", "1,5", "inf", "nan", " 1", "."],
        ),
    ];
    for (ty, inputs) in cases {
        for input in *inputs {
            let err = ty.parse_pg_text(input).expect_err(input);
            // The value itself is never part of the message (it may be user data).
            let msg = err.to_string();
            assert!(msg.contains(ty.name()), "{msg}");
            if input.len() > 2 {
                assert!(!msg.contains(input), "{msg} leaks {input:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Key builder: property tests.
// ---------------------------------------------------------------------------------------------

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn month_len(y: i64, m: u32) -> i64 {
    [
        31,
        if is_leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(m - 1) as usize]
}

/// Days since 1970-01-01 to (astronomical year, month, day), by counting from 2000-01-01, which
/// starts a 400-year cycle of 146097 days. Deliberately unlike the crate's closed formula.
fn slow_civil(days: i64) -> (i64, u32, u32) {
    let mut d = days - 10_957;
    let mut y = 2000 + 400 * d.div_euclid(146_097);
    d = d.rem_euclid(146_097);
    loop {
        let len = if is_leap(y) { 366 } else { 365 };
        if d < len {
            break;
        }
        d -= len;
        y += 1;
    }
    let mut m = 1;
    while d >= month_len(y, m) {
        d -= month_len(y, m);
        m += 1;
    }
    (y, m, d as u32 + 1)
}

/// PostgreSQL's ISO output of a date: at least four year digits, " BC" for years <= 0.
fn pg_date(days: i64) -> (String, &'static str) {
    let (y, m, d) = slow_civil(days);
    let (shown, bc) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
    (format!("{shown:04}-{m:02}-{d:02}"), bc)
}

/// PostgreSQL's ISO output of a timestamp (`offset_secs` None for `timestamp`).
fn pg_timestamp(utc_micros: i64, offset_secs: Option<i32>) -> String {
    let local = i128::from(utc_micros) + i128::from(offset_secs.unwrap_or(0)) * 1_000_000;
    let day_micros = 86_400_000_000i128;
    let days = local.div_euclid(day_micros) as i64;
    let rem = local.rem_euclid(day_micros) as i64;
    let (date, bc) = pg_date(days);
    let secs = rem / 1_000_000;
    let frac = rem % 1_000_000;
    let mut s = format!(
        "{date} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        s.push_str(format!(".{frac:06}").trim_end_matches('0'));
    }
    if let Some(off) = offset_secs {
        let a = off.unsigned_abs();
        s.push_str(&format!(
            "{}{:02}",
            if off < 0 { '-' } else { '+' },
            a / 3600
        ));
        if a % 3600 != 0 {
            s.push_str(&format!(":{:02}", a / 60 % 60));
        }
        if a % 60 != 0 {
            s.push_str(&format!(":{:02}", a % 60));
        }
    }
    s.push_str(bc);
    s
}

/// PostgreSQL's range starts at 4714-11-24 BC; the top is kept below i64::MAX.
const MIN_MICROS: i64 = -210_866_803_200_000_000;
const MAX_MICROS: i64 = 9_223_000_000_000_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ints_round_trip_through_text(i in any::<i64>(), s in any::<i16>(), m in any::<i32>(), o in any::<u32>(), u in any::<u64>()) {
        let (ti, ts, tm, to, tu) = (i.to_string(), s.to_string(), m.to_string(), o.to_string(), u.to_string());
        prop_assert_eq!(ColumnType::Int8.parse_pg_text(&ti), Ok(KeyPart::Int(i)));
        prop_assert_eq!(key_of(&i), ti.clone());
        prop_assert_eq!(ColumnType::Int2.parse_pg_text(&ts), Ok(KeyPart::Int(s.into())));
        prop_assert_eq!(key_of(&s), ts.clone());
        prop_assert_eq!(ColumnType::Int4.parse_pg_text(&tm), Ok(KeyPart::Int(m.into())));
        prop_assert_eq!(ColumnType::Oid.parse_pg_text(&to), Ok(KeyPart::Int(o.into())));
        prop_assert_eq!(key_of(&o), to.clone());
        prop_assert_eq!(key_of(&u), tu.clone());
        prop_assert_eq!(key_of(&ColumnType::Numeric.parse_pg_text(&tu).unwrap()), tu.clone());
    }

    #[test]
    fn text_escaping_is_safe_and_reversible(s in any::<String>()) {
        let escaped = key_of(&s);
        let bytes = escaped.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                prop_assert!(i + 2 < bytes.len(), "{}", escaped);
                let pair = &bytes[i + 1..i + 3];
                prop_assert!(pair.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')), "{escaped}");
                i += 3;
            } else {
                prop_assert!(b.is_ascii_alphanumeric() || b"_.-@+".contains(&b), "{escaped}");
                i += 1;
            }
        }
        prop_assert_eq!(unescape(&escaped), Some(s.clone()));
        prop_assert_eq!(&ColumnType::Text.parse_pg_text(&s).map(|p| key_of(&p)), &Ok(escaped));
    }

    #[test]
    fn text_escaping_is_injective(a in any::<String>(), b in any::<String>()) {
        prop_assume!(a != b);
        prop_assert_ne!(key_of(&a), key_of(&b));
        // Nor can two text columns joined by ':' forge each other.
        prop_assert_ne!(key_of(&(a.as_str(), b.as_str())), key_of(&(b.as_str(), a.as_str())));
    }

    #[test]
    fn timestamps_parse_back_to_their_micros(micros in MIN_MICROS..MAX_MICROS, offset in -57_599i32..=57_599) {
        let plain = pg_timestamp(micros, None);
        prop_assert_eq!(ColumnType::Timestamp.parse_pg_text(&plain), Ok(KeyPart::Timestamp(micros)), "{}", plain);
        let utc = pg_timestamp(micros, Some(0));
        prop_assert_eq!(ColumnType::Timestamptz.parse_pg_text(&utc), Ok(KeyPart::Timestamp(micros)), "{}", utc);
        let zoned = pg_timestamp(micros, Some(offset));
        prop_assert_eq!(ColumnType::Timestamptz.parse_pg_text(&zoned), Ok(KeyPart::Timestamp(micros)), "{}", zoned);
        prop_assert_eq!(key_of(&KeyPart::Timestamp(micros)), micros.to_string());
    }

    #[test]
    fn dates_parse_back_to_their_days(days in -2_440_588i32..=2_145_042_905) {
        let (date, bc) = pg_date(days.into());
        let text = format!("{date}{bc}");
        prop_assert_eq!(ColumnType::Date.parse_pg_text(&text), Ok(KeyPart::Date(days)), "{}", text);
        let (y, _, _) = slow_civil(days.into());
        let want = if (1..=9999).contains(&y) { date } else { format!("d{days}") };
        prop_assert_eq!(key_of(&KeyPart::Date(days)), want);
    }

    #[test]
    fn numeric_canonical_form_ignores_padding(
        neg in any::<bool>(),
        int in "[0-9]{0,30}",
        frac in "[0-9]{0,30}",
        lead in 0usize..4,
        trail in 0usize..4,
    ) {
        prop_assume!(!(int.is_empty() && frac.is_empty()));
        let sign = if neg { "-" } else { "" };
        let plain = format!("{sign}{int}.{frac}");
        let padded = format!("{sign}{}{int}.{frac}{}", "0".repeat(lead), "0".repeat(trail));
        let a = KeyPart::numeric(&plain).unwrap();
        let b = ColumnType::Numeric.parse_pg_text(&padded).unwrap();
        prop_assert_eq!(&a, &b);
        let canon = key_of(&a);
        // Canonical is a fixed point, and never carries redundant zeros or a bare sign.
        prop_assert_eq!(KeyPart::numeric(&canon).unwrap(), KeyPart::Numeric(Cow::Borrowed(canon.as_str())));
        prop_assert!(!canon.ends_with('.') && canon != "-0");
        prop_assert!(!(canon.contains('.') && canon.ends_with('0')));
        let digits = canon.trim_start_matches('-');
        prop_assert!(!(digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")));
    }

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>(), t in "[-0-9:. +BCinfty\\\\xa-fA-F]{0,40}") {
        for &ty in ColumnType::ALL {
            for input in [s.as_str(), t.as_str()] {
                if let Ok(part) = ty.parse_pg_text(input) {
                    // Whatever parses has a canonical form free of separators.
                    let key = key_of(&part);
                    prop_assert!(!key.contains(':') && !key.contains('{'), "{} {:?}", ty.name(), key);
                }
            }
        }
    }

    #[test]
    fn arbitrary_templates_never_panic(s in any::<String>(), t in "[{}a-z_:]{0,20}") {
        for input in [s.as_str(), t.as_str()] {
            if let Ok(template) = KeyTemplate::parse(input) {
                prop_assert!(template.columns().count() > 0);
                let rendered = template.render(|c| Ok::<_, KeyError>(KeyPart::Text(Cow::Owned(c.to_owned()))));
                prop_assert!(rendered.is_ok());
            }
        }
    }
}

#[test]
fn the_readme_example_keys_match_their_templates() {
    let by_email = walcache_protocol::KeyTemplate::parse("by_email:{email}").unwrap();
    let rendered = by_email
        .render(|_| {
            Ok::<_, walcache_protocol::KeyError>(walcache_protocol::KeyPart::Text("a@x.org".into()))
        })
        .unwrap();
    assert_eq!(
        rendered,
        walcache_protocol::key_of(&("by_email", "a@x.org"))
    );
}

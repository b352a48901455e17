//! The envelope: the bytes a value key holds (the table in the `l2` module's docs), built
//! and read here, and the lease token a fill writes first.

const TAG_VALUE: u8 = 0x01;
const TAG_NEGATIVE: u8 = 0x02;
const TAG_LEASE: u8 = 0x00;
/// Tag byte and stamp: the part every envelope kind shares (the daemon's refresh reads it).
pub(super) const HEADER_LEN: usize = 9;
/// A value envelope's fixed part: the header and the tags length.
pub(super) const VALUE_HEADER_LEN: usize = HEADER_LEN + 2;
/// Tags are printable ASCII without whitespace, so a newline separates them unambiguously.
const TAG_SEPARATOR: u8 = b'\n';

/// What a read of a value key found.
#[derive(Debug)]
pub enum Found {
    /// No such key.
    Miss,
    /// A value envelope, whole (see [`split_value`]).
    Value(Vec<u8>),
    /// A value one of whose tags was invalidated after its stamp, whole: a miss, and a fill
    /// may replace exactly these bytes.
    Superseded(Vec<u8>),
    /// A cached "not found", whole.
    Negative(Vec<u8>),
    /// A fill lease: another process is loading the value.
    Lease,
    /// Bytes that are not an envelope; kept so that a fill may replace exactly them.
    Undecodable(Vec<u8>),
}

/// Classifies what a value key holds: a value (well-formed: see [`split_value`]), a cached
/// "not found", a lease, or undecodable bytes. Never [`Found::Miss`] or [`Found::Superseded`],
/// which only a read decides.
pub fn parse_envelope(bytes: Vec<u8>) -> Found {
    match bytes.first() {
        Some(&TAG_VALUE) if split_value(&bytes).is_some() => Found::Value(bytes),
        Some(&TAG_NEGATIVE) if bytes.len() == HEADER_LEN => Found::Negative(bytes),
        Some(&TAG_LEASE) if bytes.get(1) == Some(&b'L') => Found::Lease,
        _ => Found::Undecodable(bytes),
    }
}

/// The tags and the codec's bytes inside a value envelope; `None` if it is malformed.
pub fn split_value(envelope: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let len_bytes = envelope.get(HEADER_LEN..VALUE_HEADER_LEN)?;
    let tags_len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
    let tags = envelope.get(VALUE_HEADER_LEN..VALUE_HEADER_LEN + tags_len)?;
    let payload = envelope.get(VALUE_HEADER_LEN + tags_len..)?;
    let tags = if tags.is_empty() {
        Vec::new()
    } else {
        tags.split(|b| *b == TAG_SEPARATOR)
            .map(|t| std::str::from_utf8(t).ok().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?
    };
    Some((tags, payload))
}

/// The stamp of an envelope ([`Found::Value`] or [`Found::Negative`] bytes), µs since the
/// Unix epoch on the Redis server's clock.
pub fn stamp_of(envelope: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = envelope.get(1..HEADER_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Whether a value stamped `stamp` is current: each of its tags was last invalidated before
/// it (`versions`, µs; 0 for a tag never invalidated or pruned).
pub(crate) fn tags_current(stamp: u64, versions: &[u64]) -> bool {
    versions.iter().all(|v| *v < stamp)
}

/// A value envelope stamped `stamp` (µs, from the lease). Tags longer than 64 KiB in total are
/// a caller error, refused earlier (see `MAX_TAG_BYTES` in the cache).
pub fn value_envelope(payload: &[u8], tags: &[String], stamp: u64) -> Vec<u8> {
    let tags_len: usize = tags
        .iter()
        .map(|t| t.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    let tags_len_u16 = u16::try_from(tags_len).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(VALUE_HEADER_LEN + tags_len + payload.len());
    out.push(TAG_VALUE);
    out.extend_from_slice(&stamp.to_le_bytes());
    out.extend_from_slice(&tags_len_u16.to_le_bytes());
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            out.push(TAG_SEPARATOR);
        }
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// A cached "not found" stamped `stamp` (µs, from the lease).
pub fn negative_envelope(stamp: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.push(TAG_NEGATIVE);
    out.extend_from_slice(&stamp.to_le_bytes());
    out
}

pub(crate) fn new_lease() -> Vec<u8> {
    let token: u128 = rand::random();
    let mut out = vec![TAG_LEASE, b'L'];
    out.extend_from_slice(format!("{token:032x}").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_undecodable() {
        match parse_envelope(value_envelope(b"abc", &[], 7)) {
            Found::Value(v) => assert_eq!(split_value(&v), Some((vec![], &b"abc"[..]))),
            other => panic!("unexpected {other:?}"),
        }
        let tags = vec!["users".to_owned(), "orders:7".to_owned()];
        match parse_envelope(value_envelope(b"", &tags, 1_700_000_000_000_000)) {
            Found::Value(v) => {
                assert_eq!(stamp_of(&v), Some(1_700_000_000_000_000));
                assert_eq!(split_value(&v), Some((tags, &b""[..])));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A tags length that runs past the end is not a value.
        let mut bad = value_envelope(b"", &[], 0);
        bad[9] = 200;
        assert!(matches!(parse_envelope(bad), Found::Undecodable(_)));
        assert!(matches!(
            parse_envelope(negative_envelope(5)),
            Found::Negative(_)
        ));
        assert!(matches!(parse_envelope(new_lease()), Found::Lease));
        for garbage in [
            &b""[..],
            b"\x01short",
            b"\x00X",
            b"hello",
            b"\x02123456789extra",
        ] {
            assert!(
                matches!(parse_envelope(garbage.to_vec()), Found::Undecodable(_)),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn a_value_is_current_only_if_every_tag_was_invalidated_before_its_stamp() {
        assert!(tags_current(100, &[]));
        assert!(tags_current(100, &[0, 99]));
        assert!(
            !tags_current(100, &[0, 100]),
            "an invalidation at the stamp wins"
        );
        assert!(!tags_current(100, &[101]));
    }
}

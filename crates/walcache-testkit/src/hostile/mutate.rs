//! Mutations of valid encodings: what a corrupting link, a buggy peer or an attacker does to
//! bytes that were once right.

use proptest::prelude::*;
use proptest::sample::Index;

/// One change to an encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit.
    FlipBit(Index, u8),
    /// Overwrite one byte.
    SetByte(Index, u8),
    /// Keep a strict prefix (possibly empty).
    Truncate(Index),
    /// Append bytes (at least one).
    Extend(Vec<u8>),
    /// Insert bytes somewhere inside.
    Insert(Index, Vec<u8>),
    /// Remove up to 8 bytes somewhere inside.
    Remove(Index, u8),
    /// Overwrite up to 10 bytes at some offset with an extreme value (a length field set huge,
    /// negative or to the longest varint): `0xff` bytes, `0x7f 0xff...` (big-endian
    /// `i32::MAX`), or `0xff... 0x01` (the longest LEB128 varint, `u64::MAX`).
    Huge(Index, HugeKind),
}

/// The extreme values [`Mutation::Huge`] writes.
#[derive(Debug, Clone, Copy)]
pub enum HugeKind {
    /// `n` bytes of `0xff`: `u16/u32/u64::MAX`, or `-1` signed.
    AllOnes(u8),
    /// `0x7f` then `n - 1` bytes of `0xff`: `i16/i32/i64::MAX` big-endian.
    MaxSigned(u8),
    /// The 10-byte LEB128 encoding of `u64::MAX`.
    MaxVarint,
}

impl HugeKind {
    fn bytes(self) -> Vec<u8> {
        match self {
            HugeKind::AllOnes(n) => vec![0xff; usize::from(n)],
            HugeKind::MaxSigned(n) => {
                let mut v = vec![0xff; usize::from(n)];
                v[0] = 0x7f;
                v
            }
            HugeKind::MaxVarint => {
                let mut v = vec![0xff; 9];
                v.push(0x01);
                v
            }
        }
    }
}

fn huge_kind() -> impl Strategy<Value = HugeKind> {
    let width = prop::sample::select(vec![1u8, 2, 4, 8]);
    prop_oneof![
        width.clone().prop_map(HugeKind::AllOnes),
        width.prop_map(HugeKind::MaxSigned),
        Just(HugeKind::MaxVarint),
    ]
}

/// Any mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1u8..=8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), huge_kind()).prop_map(|(i, k)| Mutation::Huge(i, k)),
    ]
}

/// One to three mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=3)
}

impl Mutation {
    /// Applies the mutation. Mutations of an empty input other than [`Mutation::Extend`] and
    /// [`Mutation::Insert`] leave it empty.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        match self {
            Mutation::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::SetByte(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Mutation::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
            Mutation::Extend(tail) => bytes.extend_from_slice(tail),
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                let end = (at + usize::from(*n)).min(len);
                bytes.drain(at..end);
            }
            Mutation::Huge(i, kind) if len > 0 => {
                let at = i.index(len);
                for (offset, b) in kind.bytes().into_iter().enumerate() {
                    match bytes.get_mut(at + offset) {
                        Some(slot) => *slot = b,
                        None => bytes.push(b),
                    }
                }
            }
            _ => {}
        }
    }
}

/// `bytes` after `mutations`, in order.
pub fn mutated(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        m.apply(&mut out);
    }
    out
}

/// Arbitrary bytes, mostly short (where decoders' branches are), sometimes up to `max`.
pub fn arbitrary_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..48),
        1 => prop::collection::vec(any::<u8>(), 0..max),
    ]
}

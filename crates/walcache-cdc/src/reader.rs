//! A bounds-checked cursor over a received message.

use bytes::Bytes;

use crate::error::DecodeError;

/// Reads big-endian integers, C strings and byte runs from a [`Bytes`], failing with a
/// [`DecodeError`] instead of panicking when the input is short. Byte runs are zero-copy slices.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(DecodeError::Truncated {
                what,
                needed: len,
                remaining: self.buf.len(),
            });
        }
        Ok(self.buf.split_to(len))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.bytes(N, what)?;
        let mut out = [0; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A length or count field: a signed 32-bit value that must not be negative.
    pub(crate) fn len_i32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let len = self.i32(what)?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            what,
            len: i64::from(len),
        })
    }

    /// A count field: a signed 16-bit value that must not be negative.
    pub(crate) fn len_i16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let len = self.i16(what)?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            what,
            len: i64::from(len),
        })
    }

    /// A NUL-terminated UTF-8 string (the terminator is consumed, not returned).
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { what })?;
        let raw = self.buf.split_to(end + 1);
        let text = std::str::from_utf8(&raw[..end])
            .map_err(|source| DecodeError::InvalidUtf8 { what, source })?;
        Ok(text.to_owned())
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails unless the whole input was consumed.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what,
                count: self.buf.len(),
            })
        }
    }
}

/// A `Vec` capacity for `count` items of at least `min_item_len` bytes each, capped by what the
/// remaining input could possibly hold, so a hostile count cannot force a large allocation.
pub(crate) fn bounded_capacity(count: usize, remaining: usize, min_item_len: usize) -> usize {
    count.min(remaining / min_item_len.max(1))
}

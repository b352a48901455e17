//! Log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
///
/// Displayed and parsed in PostgreSQL's `X/Y` form (two hexadecimal halves of the 64-bit
/// value, upper then lower), as in `pg_current_wal_lsn()` and `pg_replication_slots`.
///
/// ```
/// use walcache_cdc::Lsn;
///
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn, Lsn(0x16_B374_D848));
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, PostgreSQL's `InvalidXLogRecPtr`; as a start position it means "from the slot's
    /// confirmed position".
    pub const INVALID: Lsn = Lsn(0);

    /// The raw 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is [`Lsn::INVALID`].
    pub const fn is_invalid(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A string is not an LSN in PostgreSQL's `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN: expected two hexadecimal numbers of at most 8 digits separated by '/'")]
pub struct ParseLsnError(());

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s.split_once('/').ok_or(ParseLsnError(()))?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ParseLsnError(()));
            }
            u32::from_str_radix(part, 16).map_err(|_| ParseLsnError(()))
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!("0/16B3748".parse(), Ok(Lsn(0x16B_3748)));
        assert_eq!("ffffffff/ffffffff".parse(), Ok(Lsn(u64::MAX)));
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "+1/0",
            "123456789/0",
            "g/0",
            " 0/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn round_trips() {
        for v in [
            0,
            1,
            0xFFFF_FFFF,
            0x1_0000_0000,
            0xDEAD_BEEF_0000_0001,
            u64::MAX,
        ] {
            assert_eq!(Lsn(v).to_string().parse(), Ok(Lsn(v)));
        }
    }
}

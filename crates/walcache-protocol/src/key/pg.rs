//! PostgreSQL column types and the parsing of their text output into [`KeyPart`]s.

use std::borrow::Cow;

use super::calendar::{days_from_civil, days_in_month};
use super::{KeyError, KeyPart};

/// PostgreSQL column types with a canonical key form. float4/float8, bpchar, json and others have
/// none and are refused.
///
/// Floats are refused because equal values can print differently across versions and settings;
/// bpchar because its padding makes `'a'` and `'a '` equal in SQL but not in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ColumnType {
    /// `bool` (OID 16).
    Bool,
    /// `int2` / `smallint` (OID 21).
    Int2,
    /// `int4` / `integer` (OID 23).
    Int4,
    /// `int8` / `bigint` (OID 20).
    Int8,
    /// `oid` (OID 26).
    Oid,
    /// `text` (OID 25).
    Text,
    /// `varchar` (OID 1043).
    Varchar,
    /// `name` (OID 19).
    Name,
    /// `uuid` (OID 2950).
    Uuid,
    /// `bytea` (OID 17).
    Bytea,
    /// `timestamp` without time zone (OID 1114).
    Timestamp,
    /// `timestamptz` (OID 1184).
    Timestamptz,
    /// `date` (OID 1082).
    Date,
    /// `numeric` (OID 1700).
    Numeric,
}

const ALL: [ColumnType; 14] = [
    ColumnType::Bool,
    ColumnType::Int2,
    ColumnType::Int4,
    ColumnType::Int8,
    ColumnType::Oid,
    ColumnType::Text,
    ColumnType::Varchar,
    ColumnType::Name,
    ColumnType::Uuid,
    ColumnType::Bytea,
    ColumnType::Timestamp,
    ColumnType::Timestamptz,
    ColumnType::Date,
    ColumnType::Numeric,
];

impl ColumnType {
    /// Every supported type.
    pub const ALL: &'static [ColumnType] = &ALL;

    /// The type with this PostgreSQL type OID, or `None` if it has no canonical key form.
    pub fn from_oid(oid: u32) -> Option<ColumnType> {
        ALL.into_iter().find(|t| t.oid() == oid)
    }

    /// The PostgreSQL type OID.
    pub fn oid(self) -> u32 {
        match self {
            ColumnType::Bool => 16,
            ColumnType::Int2 => 21,
            ColumnType::Int4 => 23,
            ColumnType::Int8 => 20,
            ColumnType::Oid => 26,
            ColumnType::Text => 25,
            ColumnType::Varchar => 1043,
            ColumnType::Name => 19,
            ColumnType::Uuid => 2950,
            ColumnType::Bytea => 17,
            ColumnType::Timestamp => 1114,
            ColumnType::Timestamptz => 1184,
            ColumnType::Date => 1082,
            ColumnType::Numeric => 1700,
        }
    }

    /// The PostgreSQL type name: `"int8"`, `"timestamptz"`, …
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::Int2 => "int2",
            ColumnType::Int4 => "int4",
            ColumnType::Int8 => "int8",
            ColumnType::Oid => "oid",
            ColumnType::Text => "text",
            ColumnType::Varchar => "varchar",
            ColumnType::Name => "name",
            ColumnType::Uuid => "uuid",
            ColumnType::Bytea => "bytea",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Date => "date",
            ColumnType::Numeric => "numeric",
        }
    }

    /// Parse PostgreSQL's text output (under the pinned session settings `DateStyle=ISO`,
    /// `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`) into a [`KeyPart`].
    ///
    /// | type | accepted text | part |
    /// |---|---|---|
    /// | bool | `t`, `f` | `Bool` |
    /// | int2, int4, int8, oid | decimal within the type's range | `Int` |
    /// | text, varchar, name | anything, as is | `Text` |
    /// | uuid | hyphenated hex, any case | `Uuid` |
    /// | bytea | `\x` + hex digits, any case | `Bytes` |
    /// | timestamp | `YYYY-MM-DD HH:MM:SS[.ffffff][ BC]`, `infinity`, `-infinity` | `Timestamp` |
    /// | timestamptz | as timestamp, with an offset `+00`, `-05:30` or `+05:30:15` before ` BC`; the offset is applied | `Timestamp` (UTC) |
    /// | date | `YYYY-MM-DD[ BC]`, `infinity`, `-infinity` | `Date` |
    /// | numeric | see [`KeyPart::numeric`], plus `NaN`, `Infinity`, `-Infinity` | `Numeric` |
    ///
    /// Years have at least four digits (PostgreSQL pads them), up to seven.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidValue`] naming the type and the problem, never the value. Never panics.
    pub fn parse_pg_text<'a>(self, text: &'a str) -> Result<KeyPart<'a>, KeyError> {
        let parsed: Result<KeyPart<'a>, Reason> = match self {
            ColumnType::Bool => match text {
                "t" => Ok(KeyPart::Bool(true)),
                "f" => Ok(KeyPart::Bool(false)),
                _ => Err("expected 't' or 'f'"),
            },
            ColumnType::Int2 => parse_int::<i16>(text, true).map(|v| KeyPart::Int(v.into())),
            ColumnType::Int4 => parse_int::<i32>(text, true).map(|v| KeyPart::Int(v.into())),
            ColumnType::Int8 => parse_int::<i64>(text, true).map(KeyPart::Int),
            ColumnType::Oid => parse_int::<u32>(text, false).map(|v| KeyPart::Int(v.into())),
            ColumnType::Text | ColumnType::Varchar | ColumnType::Name => {
                Ok(KeyPart::Text(Cow::Borrowed(text)))
            }
            ColumnType::Uuid => parse_uuid(text).map(KeyPart::Uuid),
            ColumnType::Bytea => parse_bytea(text).map(|b| KeyPart::Bytes(Cow::Owned(b))),
            ColumnType::Timestamp => parse_timestamp(text, false).map(KeyPart::Timestamp),
            ColumnType::Timestamptz => parse_timestamp(text, true).map(KeyPart::Timestamp),
            ColumnType::Date => parse_date(text).map(KeyPart::Date),
            ColumnType::Numeric => KeyPart::numeric(text).map_err(|e| match e {
                KeyError::InvalidValue { reason, .. } => reason,
                _ => "not a numeric",
            }),
        };
        parsed.map_err(|reason| KeyError::InvalidValue {
            ty: self.name(),
            reason,
        })
    }
}

type Reason = &'static str;

fn parse_int<T: std::str::FromStr>(text: &str, signed: bool) -> Result<T, Reason> {
    let digits = match text.strip_prefix('-') {
        Some(rest) if signed => rest,
        _ => text,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if signed {
            "expected a decimal integer"
        } else {
            "expected an unsigned decimal integer"
        });
    }
    text.parse::<T>().map_err(|_| "out of range")
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn parse_uuid(text: &str) -> Result<u128, Reason> {
    const REASON: Reason = "expected 32 hex digits hyphenated 8-4-4-4-12";
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return Err(REASON);
    }
    let mut value = 0u128;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return Err(REASON);
            }
        } else {
            value = (value << 4) | u128::from(hex_val(b).ok_or(REASON)?);
        }
    }
    Ok(value)
}

fn parse_bytea(text: &str) -> Result<Vec<u8>, Reason> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or("expected the hex format '\\x…' (bytea_output=hex)")?
        .as_bytes();
    if hex.len() % 2 != 0 {
        return Err("odd number of hex digits");
    }
    hex.chunks_exact(2)
        .map(|pair| match (hex_val(pair[0]), hex_val(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err("expected hex digits"),
        })
        .collect()
}

const MICROS_PER_SECOND: i128 = 1_000_000;
const MICROS_PER_DAY: i128 = 86_400 * MICROS_PER_SECOND;

/// A cursor over the ASCII text of a date or timestamp.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn eat(&mut self, b: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == b => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        match self.rest.strip_prefix(s.as_bytes()) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Between `min` and `max` decimal digits (`max` ≤ 9, so the value fits); returns the value
    /// and the number of digits.
    fn digits(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let n = self
            .rest
            .iter()
            .take(max + 1)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if n < min || n > max {
            return None;
        }
        let (digits, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some((
            digits
                .iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0')),
            n,
        ))
    }

    fn fixed(&mut self, n: usize) -> Option<u32> {
        self.digits(n, n).map(|(v, _)| v)
    }
}

/// `YYYY-MM-DD` (4 to 7 year digits): the year as printed, month and day.
fn parse_ymd(c: &mut Cursor<'_>) -> Result<(u32, u32, u32), Reason> {
    const REASON: Reason = "expected YYYY-MM-DD";
    let (year, _) = c.digits(4, 7).ok_or(REASON)?;
    if !c.eat(b'-') {
        return Err(REASON);
    }
    let month = c.fixed(2).ok_or(REASON)?;
    if !c.eat(b'-') {
        return Err(REASON);
    }
    let day = c.fixed(2).ok_or(REASON)?;
    Ok((year, month, day))
}

/// Days since 1970-01-01 of a printed date, `bc` applied.
fn days_of(year: u32, month: u32, day: u32, bc: bool) -> Result<i64, Reason> {
    if year == 0 {
        return Err("year 0 does not exist (1 BC precedes 1 AD)");
    }
    let year = if bc {
        1 - i64::from(year)
    } else {
        i64::from(year)
    };
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    Ok(days_from_civil(year, month, day))
}

fn parse_date(text: &str) -> Result<i32, Reason> {
    match text {
        "infinity" => return Ok(i32::MAX),
        "-infinity" => return Ok(i32::MIN),
        _ => {}
    }
    let mut c = Cursor {
        rest: text.as_bytes(),
    };
    let (year, month, day) = parse_ymd(&mut c)?;
    let bc = c.eat_str(" BC");
    if !c.rest.is_empty() {
        return Err("expected YYYY-MM-DD, optionally followed by ' BC'");
    }
    let days = days_of(year, month, day, bc)?;
    i32::try_from(days)
        .ok()
        .filter(|&d| d != i32::MAX && d != i32::MIN)
        .ok_or("out of range")
}

fn parse_timestamp(text: &str, with_zone: bool) -> Result<i64, Reason> {
    match text {
        "infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    const TIME: Reason = "expected HH:MM:SS[.ffffff] after the date";
    let mut c = Cursor {
        rest: text.as_bytes(),
    };
    let (year, month, day) = parse_ymd(&mut c)?;
    if !c.eat(b' ') {
        return Err(TIME);
    }
    let hour = c.fixed(2).ok_or(TIME)?;
    if !c.eat(b':') {
        return Err(TIME);
    }
    let minute = c.fixed(2).ok_or(TIME)?;
    if !c.eat(b':') {
        return Err(TIME);
    }
    let second = c.fixed(2).ok_or(TIME)?;
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time out of range");
    }
    let mut micros = 0u32;
    if c.eat(b'.') {
        let (frac, n) = c
            .digits(1, 6)
            .ok_or("expected 1 to 6 fraction digits after '.'")?;
        micros = frac * 10u32.pow(6 - n as u32);
    }
    let mut offset_seconds = 0i128;
    if with_zone {
        const ZONE: Reason = "expected a UTC offset such as +00, -05:30 or +05:30:15";
        let sign = if c.eat(b'+') {
            1
        } else if c.eat(b'-') {
            -1
        } else {
            return Err(ZONE);
        };
        let oh = c.fixed(2).ok_or(ZONE)?;
        let mut om = 0;
        let mut os = 0;
        if c.eat(b':') {
            om = c.fixed(2).ok_or(ZONE)?;
            if c.eat(b':') {
                os = c.fixed(2).ok_or(ZONE)?;
            }
        }
        if om > 59 || os > 59 {
            return Err("UTC offset out of range");
        }
        offset_seconds = sign * i128::from(oh * 3600 + om * 60 + os);
    }
    let bc = c.eat_str(" BC");
    if !c.rest.is_empty() {
        return Err(if with_zone {
            "unexpected text after the UTC offset"
        } else {
            "unexpected text after the time"
        });
    }
    let days = days_of(year, month, day, bc)?;
    let local = i128::from(days) * MICROS_PER_DAY
        + i128::from(hour * 3600 + minute * 60 + second) * MICROS_PER_SECOND
        + i128::from(micros);
    // The text shows local time at the offset: UTC = local - offset.
    let utc = local - offset_seconds * MICROS_PER_SECOND;
    i64::try_from(utc)
        .ok()
        .filter(|&t| t != i64::MAX && t != i64::MIN)
        .ok_or("out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_and_names_are_consistent() {
        for &t in ColumnType::ALL {
            assert_eq!(ColumnType::from_oid(t.oid()), Some(t));
        }
        assert_eq!(ColumnType::from_oid(700), None); // float4
        assert_eq!(ColumnType::from_oid(701), None); // float8
        assert_eq!(ColumnType::from_oid(1042), None); // bpchar
        assert_eq!(ColumnType::from_oid(114), None); // json
        assert_eq!(ColumnType::Int8.name(), "int8");
        assert_eq!(ColumnType::Timestamptz.name(), "timestamptz");
    }

    #[test]
    fn timestamps() {
        let ts = |s| parse_timestamp(s, false);
        let tz = |s| parse_timestamp(s, true);
        assert_eq!(ts("1970-01-01 00:00:00"), Ok(0));
        assert_eq!(ts("1970-01-01 00:00:00.5"), Ok(500_000));
        assert_eq!(ts("1969-12-31 23:59:59.999999"), Ok(-1));
        assert_eq!(tz("1970-01-01 00:00:00+00"), Ok(0));
        assert_eq!(tz("1970-01-01 05:30:00+05:30"), Ok(0));
        assert_eq!(tz("1969-12-31 19:00:00-05"), Ok(0));
        assert_eq!(tz("1970-01-01 05:30:15+05:30:15"), Ok(0));
        assert_eq!(ts("0001-12-31 00:00:00 BC"), Ok(-62_135_683_200_000_000));
        assert_eq!(tz("0001-12-31 00:00:00+00 BC"), Ok(-62_135_683_200_000_000));
        assert_eq!(ts("infinity"), Ok(i64::MAX));
        assert_eq!(tz("-infinity"), Ok(i64::MIN));
        for bad in [
            "",
            "1970-01-01",
            "1970-01-01 24:00:00",
            "1970-01-01 00:60:00",
            "1970-02-30 00:00:00",
            "1970-13-01 00:00:00",
            "0000-01-01 00:00:00",
            "1970-01-01 00:00:00.",
            "1970-01-01 00:00:00.1234567",
            "1970-01-01T00:00:00",
            "1970-01-01 00:00:00 ",
            "1970-01-01 00:00:00+00",
            "70-01-01 00:00:00",
            "9999999-12-31 00:00:00",
            "Infinity",
        ] {
            assert!(ts(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "1970-01-01 00:00:00",
            "1970-01-01 00:00:00+0",
            "1970-01-01 00:00:00+00:6",
            "1970-01-01 00:00:00+00:60",
            "1970-01-01 00:00:00 BC+00",
            "1970-01-01 00:00:00Z",
        ] {
            assert!(tz(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Ok(0));
        assert_eq!(parse_date("2024-02-29"), Ok(19_782));
        assert_eq!(parse_date("0001-01-01 BC"), Ok(-719_528));
        assert_eq!(parse_date("5874897-12-31"), Ok(2_145_042_905));
        assert_eq!(parse_date("infinity"), Ok(i32::MAX));
        assert_eq!(parse_date("-infinity"), Ok(i32::MIN));
        for bad in [
            "2023-02-29",
            "2024-00-10",
            "2024-1-10",
            "2024-01-10 AD",
            "9999999-12-31",
        ] {
            assert!(parse_date(bad).is_err(), "{bad:?}");
        }
    }
}

//! The typed key builder: one canonical key string per cached thing.
//!
//! The library builds keys from Rust values ([`ToKey`], [`key_of`]); the daemon builds them from
//! PostgreSQL's text output of a row ([`ColumnType::parse_pg_text`] and [`KeyTemplate::render`]),
//! with its session pinned to `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3` and
//! `bytea_output=hex`. Both go through [`KeyPart::write_canonical`], so they produce identical
//! bytes for equal values — if they did not, invalidations would go to the wrong key and nothing
//! would say so.
//!
//! # Canonical forms
//!
//! | value | canonical form |
//! |---|---|
//! | `Null` | `~` |
//! | `Bool` | `t` / `f` |
//! | `Int` | decimal: `-5`, `0` |
//! | `Text` | escaped, see below |
//! | `Uuid` | lowercase, hyphenated 8-4-4-4-12 |
//! | `Bytes` | lowercase hex without prefix (empty for no bytes) |
//! | `Timestamp` | decimal microseconds since 1970-01-01 00:00 UTC; `inf` / `-inf` |
//! | `Date` | `YYYY-MM-DD` for years 0001..=9999, else `d` + day number (`d-800000`); `inf` / `-inf` |
//! | `Numeric` | canonical decimal (see [`KeyPart::numeric`]) |
//!
//! Text keeps the bytes `[A-Za-z0-9]` and `_ . - @ +`; every other byte of its UTF-8 encoding is
//! written as `%` and two uppercase hex digits. So `:`, `%`, `~`, braces, spaces and non-ASCII are
//! always escaped, and a value can neither forge a separator nor the NULL form.
//!
//! # Example
//!
//! ```
//! use walcache_protocol::{key_of, ColumnType, KeyError, KeyTemplate};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The library, from Rust values: tuples are joined by ':'.
//! assert_eq!(key_of(&(7i64, "a:b")), "7:a%3Ab");
//!
//! // The daemon, from a row's PostgreSQL text output: the same bytes.
//! let template = KeyTemplate::parse("{tenant}:{id}")?;
//! let key = template.render(|c| {
//!     Ok::<_, KeyError>(match c {
//!         "tenant" => ColumnType::Int8.parse_pg_text("7")?,
//!         _ => ColumnType::Text.parse_pg_text("a:b")?,
//!     })
//! })?;
//! assert_eq!(key, "7:a%3Ab");
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::fmt::Write as _;

use thiserror::Error;

pub(crate) mod calendar;
mod pg;
mod template;

pub use pg::ColumnType;
pub use template::{KeyTemplate, TemplateError};

/// One value inside a key, in a form with exactly one canonical string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyPart<'a> {
    /// SQL NULL (or Rust `None`): `~`.
    Null,
    /// A boolean: `t` or `f`.
    Bool(bool),
    /// Any integer type that fits an `i64`: decimal.
    Int(i64),
    /// Text: escaped.
    Text(Cow<'a, str>),
    /// A UUID as a 128-bit big-endian number: lowercase hyphenated.
    Uuid(u128),
    /// Binary data: lowercase hex.
    Bytes(Cow<'a, [u8]>),
    /// Microseconds since 1970-01-01T00:00:00 UTC (timestamptz), or of the naive value
    /// (timestamp); ±infinity as `i64::MAX` / `i64::MIN`.
    Timestamp(i64),
    /// Days since 1970-01-01 (date); ±infinity as `i32::MAX` / `i32::MIN`.
    Date(i32),
    /// A decimal, kept in canonical form (construct via [`KeyPart::numeric`]).
    Numeric(Cow<'a, str>),
}

impl<'a> KeyPart<'a> {
    /// A numeric value in canonical form.
    ///
    /// Accepts an optional `-`, digits, and an optional `.` followed by digits (at least one digit
    /// overall), or exactly `NaN`, `Infinity` or `-Infinity`. Canonicalises: leading zeros of the
    /// integer part are stripped (one `0` kept), trailing zeros of the fraction and a bare `.` are
    /// stripped, and negative zero becomes `0`. So `"001.500"` and `"1.5"` give the same key, as
    /// `1.500 = 1.5` in PostgreSQL.
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidValue`] for anything else (exponents, `+`, spaces, …).
    pub fn numeric(s: &'a str) -> Result<KeyPart<'a>, KeyError> {
        let parts = NumericParts::parse(s).map_err(|reason| KeyError::InvalidValue {
            ty: "numeric",
            reason,
        })?;
        if parts.is_canonical(s) {
            Ok(KeyPart::Numeric(Cow::Borrowed(s)))
        } else {
            let mut out = String::with_capacity(s.len() + 1);
            parts.write(&mut out);
            Ok(KeyPart::Numeric(Cow::Owned(out)))
        }
    }

    /// Append this value's canonical form to `out`.
    ///
    /// A `Numeric` built directly (not through [`KeyPart::numeric`]) is canonicalised here too;
    /// if it is not a valid numeric at all it is written escaped like text, so it still cannot
    /// forge a separator.
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            KeyPart::Null => out.push('~'),
            KeyPart::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            KeyPart::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            KeyPart::Text(s) => escape_text(s, out),
            KeyPart::Uuid(u) => write_uuid(*u, out),
            KeyPart::Bytes(b) => write_hex(b, out),
            KeyPart::Timestamp(i64::MAX) => out.push_str("inf"),
            KeyPart::Timestamp(i64::MIN) => out.push_str("-inf"),
            KeyPart::Timestamp(t) => out.push_str(itoa::Buffer::new().format(*t)),
            KeyPart::Date(i32::MAX) => out.push_str("inf"),
            KeyPart::Date(i32::MIN) => out.push_str("-inf"),
            KeyPart::Date(d) => {
                let (y, m, day) = calendar::civil_from_days(i64::from(*d));
                if (1..=9999).contains(&y) {
                    let _ = write!(out, "{y:04}-{m:02}-{day:02}");
                } else {
                    out.push('d');
                    push_display(out, d);
                }
            }
            KeyPart::Numeric(s) => match NumericParts::parse(s) {
                Ok(parts) => parts.write(out),
                Err(_) => escape_text(s, out),
            },
        }
    }

    /// This value's canonical form as a new string.
    pub fn to_canonical(&self) -> String {
        let mut out = String::new();
        self.write_canonical(&mut out);
        out
    }

    /// The same value, owning its data.
    pub fn into_owned(self) -> KeyPart<'static> {
        match self {
            KeyPart::Null => KeyPart::Null,
            KeyPart::Bool(b) => KeyPart::Bool(b),
            KeyPart::Int(i) => KeyPart::Int(i),
            KeyPart::Text(s) => KeyPart::Text(Cow::Owned(s.into_owned())),
            KeyPart::Uuid(u) => KeyPart::Uuid(u),
            KeyPart::Bytes(b) => KeyPart::Bytes(Cow::Owned(b.into_owned())),
            KeyPart::Timestamp(t) => KeyPart::Timestamp(t),
            KeyPart::Date(d) => KeyPart::Date(d),
            KeyPart::Numeric(s) => KeyPart::Numeric(Cow::Owned(s.into_owned())),
        }
    }
}

/// Why a value or a key could not be built.
///
/// Messages never include the value itself: it may be user data.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// A value is not valid for its type.
    #[error("invalid {ty} value: {reason}")]
    InvalidValue {
        /// The PostgreSQL type name, e.g. `"int8"`.
        ty: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key template names a column the row does not have.
    #[error("unknown column {name:?} in key template")]
    UnknownColumn {
        /// The column name.
        name: String,
    },
    /// A column's type has no canonical key form (float4/float8, bpchar, json, …).
    #[error("column type {type_name} has no canonical key form and cannot be used in a key")]
    UnsupportedType {
        /// The type's name or OID, as the caller knows it.
        type_name: String,
    },
}

/// Builds one canonical key: literal segments are written verbatim, values canonically.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    buf: String,
}

impl KeyBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        KeyBuilder { buf: String::new() }
    }

    /// Append a literal segment verbatim (for separators and fixed text of templates).
    pub fn literal(&mut self, s: &str) -> &mut Self {
        self.buf.push_str(s);
        self
    }

    /// Append an integer in its canonical form (the same bytes as [`KeyPart::Int`]); the
    /// fast path for integer keys.
    #[inline]
    pub fn int(&mut self, i: i64) -> &mut Self {
        self.buf.push_str(itoa::Buffer::new().format(i));
        self
    }

    /// Append a value in its canonical form.
    pub fn part(&mut self, p: &KeyPart<'_>) -> &mut Self {
        p.write_canonical(&mut self.buf);
        self
    }

    /// The key built so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// The finished key.
    pub fn finish(self) -> String {
        self.buf
    }

    /// Empty the builder, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Rust values usable as cache keys.
///
/// Implemented for `i8`, `i16`, `i32`, `i64`, `u8`, `u16`, `u32` (as `Int`), `u64` (`Int` if it
/// fits an `i64`, else a `Numeric` decimal — the same digits), `bool`, `str`, `String`, `[u8]` and
/// `Vec<u8>` (as `Bytes`), `&T`, `Option<T>` (`None` is `Null`), [`KeyPart`], and tuples of 2 to 4
/// elements joined by the literal `:` (so `(a, b)` equals the template `"{a}:{b}"`).
pub trait ToKey {
    /// Append this value's key form to `key`.
    fn write_key(&self, key: &mut KeyBuilder);
}

/// Convenience: the canonical key string of a value.
pub fn key_of<K: ToKey + ?Sized>(k: &K) -> String {
    let mut b = KeyBuilder::new();
    k.write_key(&mut b);
    b.finish()
}

macro_rules! int_to_key {
    ($($t:ty),*) => {$(
        impl ToKey for $t {
            #[inline]
            fn write_key(&self, key: &mut KeyBuilder) {
                key.int(i64::from(*self));
            }
        }
    )*};
}
int_to_key!(i8, i16, i32, i64, u8, u16, u32);

impl ToKey for u64 {
    fn write_key(&self, key: &mut KeyBuilder) {
        match i64::try_from(*self) {
            Ok(i) => key.part(&KeyPart::Int(i)),
            Err(_) => key.part(&KeyPart::Numeric(Cow::Owned(self.to_string()))),
        };
    }
}

impl ToKey for bool {
    fn write_key(&self, key: &mut KeyBuilder) {
        key.part(&KeyPart::Bool(*self));
    }
}

impl ToKey for str {
    fn write_key(&self, key: &mut KeyBuilder) {
        key.part(&KeyPart::Text(Cow::Borrowed(self)));
    }
}

impl ToKey for String {
    fn write_key(&self, key: &mut KeyBuilder) {
        self.as_str().write_key(key);
    }
}

impl ToKey for [u8] {
    fn write_key(&self, key: &mut KeyBuilder) {
        key.part(&KeyPart::Bytes(Cow::Borrowed(self)));
    }
}

impl ToKey for Vec<u8> {
    fn write_key(&self, key: &mut KeyBuilder) {
        self.as_slice().write_key(key);
    }
}

impl<T: ToKey + ?Sized> ToKey for &T {
    fn write_key(&self, key: &mut KeyBuilder) {
        (**self).write_key(key);
    }
}

impl<T: ToKey> ToKey for Option<T> {
    fn write_key(&self, key: &mut KeyBuilder) {
        match self {
            Some(v) => v.write_key(key),
            None => {
                key.part(&KeyPart::Null);
            }
        }
    }
}

impl ToKey for KeyPart<'_> {
    fn write_key(&self, key: &mut KeyBuilder) {
        key.part(self);
    }
}

macro_rules! tuple_to_key {
    ($first:ident $(, $rest:ident)+) => {
        impl<$first: ToKey $(, $rest: ToKey)+> ToKey for ($first, $($rest),+) {
            #[allow(non_snake_case)]
            fn write_key(&self, key: &mut KeyBuilder) {
                let ($first, $($rest),+) = self;
                $first.write_key(key);
                $(
                    key.literal(":");
                    $rest.write_key(key);
                )+
            }
        }
    };
}
tuple_to_key!(A, B);
tuple_to_key!(A, B, C);
tuple_to_key!(A, B, C, D);

fn push_display(out: &mut String, v: &dyn std::fmt::Display) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{v}");
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn is_safe_text_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@' | b'+')
}

fn escape_text(s: &str, out: &mut String) {
    if s.bytes().all(is_safe_text_byte) {
        out.push_str(s);
        return;
    }
    out.reserve(s.len() + 8);
    for b in s.bytes() {
        if is_safe_text_byte(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0x0f)]));
        }
    }
}

fn write_hex(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX_LOWER[usize::from(b >> 4)]));
        out.push(char::from(HEX_LOWER[usize::from(b & 0x0f)]));
    }
}

fn write_uuid(u: u128, out: &mut String) {
    let bytes = u.to_be_bytes();
    for (i, chunk) in [
        &bytes[0..4],
        &bytes[4..6],
        &bytes[6..8],
        &bytes[8..10],
        &bytes[10..16],
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        write_hex(chunk, out);
    }
}

/// A validated numeric, split into the pieces of its canonical form.
enum NumericParts<'s> {
    Special(&'s str),
    Finite {
        negative: bool,
        /// Integer digits without leading zeros; empty means zero.
        int: &'s str,
        /// Fraction digits without trailing zeros.
        frac: &'s str,
    },
}

impl<'s> NumericParts<'s> {
    fn parse(s: &'s str) -> Result<Self, &'static str> {
        if matches!(s, "NaN" | "Infinity" | "-Infinity") {
            return Ok(NumericParts::Special(s));
        }
        let (negative, unsigned) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(int) || !all_digits(frac) {
            return Err(
                "expected an optional '-', digits and an optional '.' with digits (no exponent, no '+'), or NaN/Infinity/-Infinity",
            );
        }
        if int.is_empty() && frac.is_empty() {
            return Err("no digits");
        }
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let negative = negative && !(int.is_empty() && frac.is_empty());
        Ok(NumericParts::Finite {
            negative,
            int,
            frac,
        })
    }

    fn write(&self, out: &mut String) {
        match *self {
            NumericParts::Special(s) => out.push_str(s),
            NumericParts::Finite {
                negative,
                int,
                frac,
            } => {
                if negative {
                    out.push('-');
                }
                out.push_str(if int.is_empty() { "0" } else { int });
                if !frac.is_empty() {
                    out.push('.');
                    out.push_str(frac);
                }
            }
        }
    }

    /// Whether `s` is exactly the canonical form of these parts.
    fn is_canonical(&self, s: &str) -> bool {
        match *self {
            NumericParts::Special(_) => true,
            NumericParts::Finite {
                negative,
                int,
                frac,
            } => {
                let pieces = [
                    if negative { "-" } else { "" },
                    if int.is_empty() { "0" } else { int },
                    if frac.is_empty() { "" } else { "." },
                    frac,
                ];
                let mut rest = s;
                for piece in pieces {
                    match rest.strip_prefix(piece) {
                        Some(r) => rest = r,
                        None => return false,
                    }
                }
                rest.is_empty()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> String {
        match KeyPart::numeric(s).unwrap() {
            KeyPart::Numeric(c) => c.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numeric_canonical() {
        for (input, want) in [
            ("0", "0"),
            ("-0", "0"),
            ("-0.000", "0"),
            ("000", "0"),
            ("1.500", "1.5"),
            ("1.", "1"),
            (".5", "0.5"),
            ("-.5", "-0.5"),
            ("00.10", "0.1"),
            (".50", "0.5"),
            ("0.5", "0.5"),
            ("-12.34", "-12.34"),
            ("100", "100"),
            ("100.0", "100"),
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
            ("-Infinity", "-Infinity"),
            ("18446744073709551616", "18446744073709551616"),
        ] {
            assert_eq!(num(input), want, "{input}");
            // Borrowed exactly when already canonical.
            let borrowed = matches!(
                KeyPart::numeric(input),
                Ok(KeyPart::Numeric(Cow::Borrowed(_)))
            );
            assert_eq!(borrowed, input == want, "{input}");
        }
        for bad in [
            "", "-", ".", "-.", "+1", "1e5", "1E5", " 1", "1 ", "1.2.3", "nan", "inf", "--1", "1-",
            "0x10", "١",
        ] {
            assert!(KeyPart::numeric(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_canonical_numeric_variant_is_canonicalised_or_escaped() {
        assert_eq!(
            KeyPart::Numeric(Cow::Borrowed("01.50")).to_canonical(),
            "1.5"
        );
        assert_eq!(
            KeyPart::Numeric(Cow::Borrowed("1:2")).to_canonical(),
            "1%3A2"
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(KeyPart::Null.to_canonical(), "~");
        assert_eq!(KeyPart::Bool(true).to_canonical(), "t");
        assert_eq!(KeyPart::Bool(false).to_canonical(), "f");
        assert_eq!(KeyPart::Int(-5).to_canonical(), "-5");
        assert_eq!(
            KeyPart::Text(Cow::Borrowed("a:b %~{}é_.-@+Z9")).to_canonical(),
            "a%3Ab%20%25%7E%7B%7D%C3%A9_.-@+Z9"
        );
        assert_eq!(
            KeyPart::Uuid(0x0123_4567_89AB_CDEF_0123_4567_89AB_CDEF).to_canonical(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert_eq!(
            KeyPart::Bytes(Cow::Borrowed(&[0x0a, 0xff])).to_canonical(),
            "0aff"
        );
        assert_eq!(KeyPart::Bytes(Cow::Borrowed(&[])).to_canonical(), "");
        assert_eq!(KeyPart::Timestamp(i64::MAX).to_canonical(), "inf");
        assert_eq!(KeyPart::Timestamp(i64::MIN).to_canonical(), "-inf");
        assert_eq!(KeyPart::Timestamp(-1).to_canonical(), "-1");
        assert_eq!(KeyPart::Date(0).to_canonical(), "1970-01-01");
        assert_eq!(KeyPart::Date(19782).to_canonical(), "2024-02-29");
        assert_eq!(KeyPart::Date(-719162).to_canonical(), "0001-01-01");
        assert_eq!(KeyPart::Date(-719163).to_canonical(), "d-719163");
        assert_eq!(KeyPart::Date(2932896).to_canonical(), "9999-12-31");
        assert_eq!(KeyPart::Date(2932897).to_canonical(), "d2932897");
        assert_eq!(KeyPart::Date(i32::MAX).to_canonical(), "inf");
        assert_eq!(KeyPart::Date(i32::MIN).to_canonical(), "-inf");
    }

    #[test]
    fn to_key_impls() {
        assert_eq!(key_of(&5u8), "5");
        assert_eq!(key_of(&-5i8), "-5");
        assert_eq!(key_of(&u64::MAX), "18446744073709551615");
        assert_eq!(key_of(&(i64::MAX as u64)), "9223372036854775807");
        assert_eq!(key_of(&None::<i32>), "~");
        assert_eq!(key_of(&Some("x y")), "x%20y");
        assert_eq!(key_of(&String::from("a")), "a");
        assert_eq!(key_of("a"), "a");
        assert_eq!(key_of(&vec![1u8, 2]), "0102");
        assert_eq!(key_of(&(1, true, "x", None::<u8>)), "1:t:x:~");
        assert_eq!(key_of(&(1, 2, 3)), "1:2:3");
        assert_eq!(key_of(&&&7i32), "7");
        assert_eq!(key_of(&KeyPart::Null), "~");
    }

    #[test]
    fn builder() {
        let mut b = KeyBuilder::new();
        b.literal("by_email:")
            .part(&KeyPart::Text(Cow::Borrowed("a@b.c")));
        assert_eq!(b.as_str(), "by_email:a@b.c");
        b.clear();
        assert_eq!(b.as_str(), "");
        b.part(&KeyPart::Int(1));
        assert_eq!(b.finish(), "1");
    }
}

//! Key templates such as `by_email:{email}` or `{tenant}:{id}`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::{KeyBuilder, KeyPart};

/// The longest PostgreSQL identifier (NAMEDATALEN - 1); longer names are truncated by the server,
/// so a template naming one could never match a column.
const MAX_COLUMN_BYTES: usize = 63;

/// A key template such as `"by_email:{email}"` or `"{tenant}:{id}"`: literal text plus `{column}`
/// placeholders (`"{{"` and `"}}"` are literal braces).
///
/// Literal text is written verbatim and each placeholder as its value's canonical form, so
/// `"{a}:{b}"` renders exactly like the Rust tuple `(a, b)` through [`crate::key_of`].
///
/// Two placeholders must be separated by literal text containing at least one character that no
/// canonical value contains — anything outside `[A-Za-z0-9_.-@+%~]`, such as `:` — or two different
/// rows could render the same key (`"{a}{b}"` gives `"123"` for both `(1, 23)` and `(12, 3)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Column(String),
}

/// Why a key template could not be parsed. Offsets are in bytes from the template's start.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template is empty.
    #[error("key template is empty")]
    Empty,
    /// A `{` has no matching `}`.
    #[error(
        "unclosed '{{' at byte {offset} of the key template (write '{{{{' for a literal brace)"
    )]
    Unclosed {
        /// Where the `{` is.
        offset: usize,
    },
    /// A `}` has no matching `{`.
    #[error(
        "unmatched '}}' at byte {offset} of the key template (write '}}}}' for a literal brace)"
    )]
    Unmatched {
        /// Where the `}` is.
        offset: usize,
    },
    /// A placeholder `{}` names no column.
    #[error("empty column name '{{}}' at byte {offset} of the key template")]
    EmptyColumn {
        /// Where the placeholder starts.
        offset: usize,
    },
    /// A placeholder's column name is not a PostgreSQL identifier.
    #[error("invalid column name {name:?} at byte {offset} of the key template: a column must be a PostgreSQL identifier of at most 63 bytes, [A-Za-z_][A-Za-z0-9_$]*")]
    InvalidColumn {
        /// The name found.
        name: String,
        /// Where the placeholder starts.
        offset: usize,
    },
    /// The template has no `{column}` placeholder, so it would name the same key for every row.
    #[error("key template has no {{column}} placeholder")]
    NoPlaceholder,
    /// Two placeholders are not separated by a character that values never contain.
    #[error("ambiguous key template: the placeholder at byte {offset} must be separated from the previous one by a character such as ':' (anything outside [A-Za-z0-9_.-@+%~])")]
    AmbiguousSeparator {
        /// Where the second placeholder starts.
        offset: usize,
    },
}

fn is_column_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_COLUMN_BYTES
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

/// Whether a literal between two placeholders contains a byte no canonical value can contain.
fn separates(literal: &str) -> bool {
    literal
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"_.-@+%~".contains(&b)))
}

impl KeyTemplate {
    /// Parse a template.
    ///
    /// # Errors
    ///
    /// A [`TemplateError`] saying what is wrong and where: an empty template, an unclosed or
    /// unbalanced brace, an empty or invalid column name (it must be a PostgreSQL identifier,
    /// `[A-Za-z_][A-Za-z0-9_$]*`), no placeholder at all, or two placeholders without a separator.
    pub fn parse(s: &str) -> Result<KeyTemplate, TemplateError> {
        if s.is_empty() {
            return Err(TemplateError::Empty);
        }
        let bytes = s.as_bytes();
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut has_column = false;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'{' => {
                    let offset = i;
                    let name_start = i + 1;
                    let name_end = s[name_start..]
                        .find('}')
                        .map(|n| name_start + n)
                        .ok_or(TemplateError::Unclosed { offset })?;
                    let name = &s[name_start..name_end];
                    if name.is_empty() {
                        return Err(TemplateError::EmptyColumn { offset });
                    }
                    if !is_column_name(name) {
                        return Err(TemplateError::InvalidColumn {
                            name: name.to_owned(),
                            offset,
                        });
                    }
                    if has_column && !separates(&literal) {
                        return Err(TemplateError::AmbiguousSeparator { offset });
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Column(name.to_owned()));
                    has_column = true;
                    i = name_end + 1;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'}' => return Err(TemplateError::Unmatched { offset: i }),
                _ => {
                    let end = s[i..].find(['{', '}']).map_or(bytes.len(), |n| i + n);
                    literal.push_str(&s[i..end]);
                    i = end;
                }
            }
        }
        if !has_column {
            return Err(TemplateError::NoPlaceholder);
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(KeyTemplate {
            source: s.to_owned(),
            segments,
        })
    }

    /// The column names the template uses, each once, in order of first appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> + '_ {
        self.segments
            .iter()
            .enumerate()
            .filter_map(move |(i, seg)| match seg {
                Segment::Column(name)
                    if !self.segments[..i]
                        .iter()
                        .any(|s| matches!(s, Segment::Column(n) if n == name)) =>
                {
                    Some(name.as_str())
                }
                _ => None,
            })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render with a lookup from column name to value; errors from the lookup are returned.
    ///
    /// # Errors
    ///
    /// The first error `lookup` returns.
    pub fn render<'v, E>(
        &self,
        lookup: impl FnMut(&str) -> Result<KeyPart<'v>, E>,
    ) -> Result<String, E> {
        let mut key = KeyBuilder::new();
        self.render_into(&mut key, lookup)?;
        Ok(key.finish())
    }

    /// Like [`KeyTemplate::render`], appending to `key` (which is not cleared first), so one
    /// builder can be reused across rows.
    ///
    /// # Errors
    ///
    /// The first error `lookup` returns; `key` then holds a partial key.
    pub fn render_into<'v, E>(
        &self,
        key: &mut KeyBuilder,
        mut lookup: impl FnMut(&str) -> Result<KeyPart<'v>, E>,
    ) -> Result<(), E> {
        for seg in &self.segments {
            match seg {
                Segment::Literal(s) => {
                    key.literal(s);
                }
                Segment::Column(name) => {
                    key.part(&lookup(name)?);
                }
            }
        }
        Ok(())
    }
}

impl FromStr for KeyTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyTemplate::parse(s)
    }
}

impl fmt::Display for KeyTemplate {
    /// The template as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::KeyError;

    #[test]
    fn parses() {
        let t = KeyTemplate::parse("by_email:{email}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["email"]);
        assert_eq!(t.source(), "by_email:{email}");
        let t = KeyTemplate::parse("{{x}}:{a}:{b}:{a}:é").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["a", "b"]);
        let key = t
            .render(|c| Ok::<_, KeyError>(KeyPart::Text(Cow::Owned(c.to_uppercase()))))
            .unwrap();
        assert_eq!(key, "{x}:A:B:A:é");
        assert!(KeyTemplate::parse("{_x$1}").is_ok());
        assert!(KeyTemplate::parse("{a}~:{b}").is_ok());
    }

    #[test]
    fn errors() {
        use TemplateError::*;
        let cases: &[(&str, TemplateError)] = &[
            ("", Empty),
            ("abc", NoPlaceholder),
            ("{{a}}", NoPlaceholder),
            ("x{a", Unclosed { offset: 1 }),
            ("{a}}", Unmatched { offset: 3 }),
            ("a}", Unmatched { offset: 1 }),
            ("x:{}", EmptyColumn { offset: 2 }),
            (
                "{1a}",
                InvalidColumn {
                    name: "1a".into(),
                    offset: 0,
                },
            ),
            (
                "{a{b}",
                InvalidColumn {
                    name: "a{b".into(),
                    offset: 0,
                },
            ),
            (
                "{a b}",
                InvalidColumn {
                    name: "a b".into(),
                    offset: 0,
                },
            ),
            ("{a}{b}", AmbiguousSeparator { offset: 3 }),
            ("{a}-_{b}", AmbiguousSeparator { offset: 5 }),
        ];
        for (input, want) in cases {
            assert_eq!(KeyTemplate::parse(input).as_ref(), Err(want), "{input:?}");
        }
        let long = format!("{{{}}}", "a".repeat(64));
        assert!(matches!(
            KeyTemplate::parse(&long),
            Err(InvalidColumn { .. })
        ));
        let msg = KeyTemplate::parse("x{a").unwrap_err().to_string();
        assert!(msg.contains("byte 1"), "{msg}");
    }

    #[test]
    fn lookup_errors_propagate() {
        let t = KeyTemplate::parse("{id}").unwrap();
        let err = t
            .render(|c| Err::<KeyPart<'_>, _>(KeyError::UnknownColumn { name: c.to_owned() }))
            .unwrap_err();
        assert_eq!(
            err,
            KeyError::UnknownColumn {
                name: "id".to_owned()
            }
        );
    }
}

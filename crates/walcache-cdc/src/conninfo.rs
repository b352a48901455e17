//! Takes the TLS parameters tokio-postgres's parser rejects (`sslmode=verify-ca`,
//! `sslmode=verify-full`, `sslrootcert`, `sslcert`, `sslkey`) out of a libpq connection
//! string, URL or `key=value` form, leaving the rest for tokio-postgres.

use crate::error::Error;

/// The parameters taken out, as written (last occurrence wins, as in libpq).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Extracted {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
    pub(crate) sslcert: Option<String>,
    pub(crate) sslkey: Option<String>,
}

impl Extracted {
    /// Records `key=value` if it is one of ours; says whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => self.sslcert = Some(value),
            "sslkey" => self.sslkey = Some(value),
            _ => return false,
        }
        true
    }
}

/// Splits `s` into the string without `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, and
/// their values.
///
/// A string this parser cannot follow (an unterminated quote, a key without `=`) is returned
/// unchanged, for tokio-postgres to report.
pub(crate) fn extract(s: &str) -> Result<(String, Extracted), Error> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        extract_url(s)
    } else {
        Ok(extract_key_value(s).unwrap_or_else(|| (s.to_owned(), Extracted::default())))
    }
}

fn extract_url(s: &str) -> Result<(String, Extracted), Error> {
    let mut extracted = Extracted::default();
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), extracted));
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !extracted.take(&percent_decode(key)?, percent_decode(value)?) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, extracted))
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let invalid = || Error::Config {
        reason: "invalid percent-encoding in the connection URL",
        source: None,
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(invalid)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// libpq's `key=value` syntax: whitespace-separated pairs, optional whitespace around `=`,
/// values optionally single-quoted, backslash escaping the next character. `None` when the
/// string does not follow it.
fn extract_key_value(s: &str) -> Option<(String, Extracted)> {
    let mut extracted = Extracted::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()?.1 {
                    '\'' => break,
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?.1);
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        if !extracted.take(&key, value) {
            kept.push(&s[start..end]);
        }
    }
    Some((kept.join(" "), extracted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (String, Option<String>, Option<String>) {
        let (rest, e) = extract(s).unwrap();
        (rest, e.sslmode, e.sslrootcert)
    }

    #[test]
    fn key_value() {
        assert_eq!(
            run("host=h sslmode=verify-full user=u sslrootcert='/a b/c\\'d.pem' dbname = x"),
            (
                "host=h user=u dbname = x".to_owned(),
                Some("verify-full".to_owned()),
                Some("/a b/c'd.pem".to_owned())
            )
        );
        assert_eq!(
            run("host=h password='se cret' sslmode = require"),
            (
                "host=h password='se cret'".to_owned(),
                Some("require".to_owned()),
                None
            )
        );
        // Not parseable here: left for tokio-postgres to report.
        assert_eq!(
            run("host=h password='open sslmode=require"),
            (
                "host=h password='open sslmode=require".to_owned(),
                None,
                None
            )
        );
    }

    #[test]
    fn url() {
        assert_eq!(
            run("postgres://u@h:5/db?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Ftmp%2Fca.pem"),
            (
                "postgres://u@h:5/db?connect_timeout=3".to_owned(),
                Some("verify-ca".to_owned()),
                Some("/tmp/ca.pem".to_owned())
            )
        );
        assert_eq!(
            run("postgresql://u@h/db?sslmode=require"),
            (
                "postgresql://u@h/db".to_owned(),
                Some("require".to_owned()),
                None
            )
        );
        assert!(extract("postgres://h/?sslrootcert=%zz").is_err());
    }

    #[test]
    fn client_certificate() {
        let (rest, e) = extract(
            "postgres://u@h/db?sslcert=%2Fetc%2Fc.crt&connect_timeout=3&sslkey=%2Fetc%2Fc.key",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h/db?connect_timeout=3");
        assert_eq!(e.sslcert.as_deref(), Some("/etc/c.crt"));
        assert_eq!(e.sslkey.as_deref(), Some("/etc/c.key"));
        let (rest, e) = extract("host=h sslkey='/a b/c.key' user=u sslcert = /c.crt").unwrap();
        assert_eq!(rest, "host=h user=u");
        assert_eq!(e.sslcert.as_deref(), Some("/c.crt"));
        assert_eq!(e.sslkey.as_deref(), Some("/a b/c.key"));
    }
}

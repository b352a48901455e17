//! Connection strings with their secrets taken out, for logs, errors and `Debug`.
//!
//! Both forms libpq reads are handled, and Redis URLs:
//!
//! - URLs, `scheme://user:password@host:port/db?param=value`: the password of the user info,
//!   and the values of the query parameters `password` and `sslpassword` (libpq's names; any
//!   case, percent-encoded or not; a value ends at the next `&`, as libpq splits). Parameters
//!   go first; then the user info ends at the **last** `@` left, so a password holding an
//!   unencoded `@`, `/`, `?` or `#` is still covered; an `@` in another query value then
//!   hides the host as well, which errs on the side of saying less.
//! - Key/value strings, `host=db password='s3 cret' user=app`: the values of `password` and
//!   `sslpassword`, quoted (with `\'` and `\\` escapes) or not.
//!
//! Every secret becomes `<redacted>`; everything else is kept as written.

/// The parameters whose values are secrets: libpq's `password` and `sslpassword` (the key
/// file's passphrase).
const SECRET_PARAMETERS: &[&str] = &["password", "sslpassword"];

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// `url` without its secrets (see the module documentation); never fails.
///
/// ```
/// use walcache_protocol::redact::redact_connection_string as redact;
/// assert_eq!(redact("postgres://app:p@ss@db:5432/app"), "postgres://app:<redacted>@db:5432/app");
/// assert_eq!(redact("redis://db:6379/?password=x"), "redis://db:6379/?password=<redacted>");
/// assert_eq!(redact("host=db password='a b' user=app"), "host=db password=<redacted> user=app");
/// ```
pub fn redact_connection_string(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => {
            format!("{scheme}://{}", redact_url_rest(rest))
        }
        // Not a URL: libpq's key/value form, or a URL with a mistyped scheme.
        _ => redact_mistyped_userinfo(&redact_parameters(&redact_key_values(url))),
    }
}

/// Not a URL (a mistyped `scheme//`, a missing scheme) but user info after all: what lies
/// between the first `:` and the last `@` is taken for a password (in a key/value string that
/// holds both, more is hidden than needed: saying less, never more).
fn redact_mistyped_userinfo(s: &str) -> String {
    match (s.find(':'), s.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            format!("{}{REDACTED}{}", &s[..=colon], &s[at..])
        }
        _ => s.to_owned(),
    }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-` and `.`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// The part of a URL after `scheme://`. Query parameters first, so that an `@` in a secret
/// parameter's value is gone before the user info is looked for.
fn redact_url_rest(rest: &str) -> String {
    let rest = redact_parameters(rest);
    let Some(at) = rest.rfind('@') else {
        return rest;
    };
    let (userinfo, tail) = (&rest[..at], &rest[at + 1..]);
    let head = match userinfo.split_once(':') {
        Some((user, _)) if !user.contains(['/', '?', '#']) => format!("{user}:{REDACTED}"),
        // The last '@' is in the query, after a ':': which part is what is unknown.
        Some(_) => REDACTED.to_owned(),
        // A user alone, or an '@' in a parameter without a ':' before it.
        None => userinfo.to_owned(),
    };
    format!("{head}@{tail}")
}

/// Every `?name=value` and `&name=value` whose name is a secret parameter, with the value
/// redacted up to the next `&` (libpq splits parameters there only), wherever it is in `s`.
fn redact_parameters(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    for (at, _) in s.match_indices(['?', '&']) {
        if at < copied {
            continue; // inside a value already redacted
        }
        let Some((name, _)) = s[at + 1..].split_once('=') else {
            break;
        };
        if name.contains(['?', '&']) || !is_secret(&percent_decode(name)) {
            continue;
        }
        let value = at + 1 + name.len() + 1;
        let end = s[value..].find('&').map_or(s.len(), |e| value + e);
        out.push_str(&s[copied..value]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&s[copied..]);
    out
}

/// libpq's `key = value` form; quoted values may hold spaces and `\'`.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        if rest.is_empty() {
            return out;
        }
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            return out;
        };
        let key = rest[..eq].trim_end();
        let secret = is_secret(key);
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        let value_start = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let value_len = value_len(rest);
        out.push_str(if secret { REDACTED } else { &rest[..value_len] });
        rest = &rest[value_len..];
    }
}

/// The length of the value at the start of `s`: a quoted one up to its closing quote (or the
/// end), an unquoted one up to whitespace. libpq quotes with `'`; a `"` (which libpq does not
/// take, and users write anyway) is treated alike, so that no part of such a value shows.
fn value_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    if let Some(quote) = s.chars().next().filter(|c| *c == '\'' || *c == '"') {
        chars.next();
        let mut escaped = false;
        for (i, c) in chars {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                c if c == quote => return i + 1,
                _ => {}
            }
        }
        return s.len();
    }
    let mut escaped = false;
    for (i, c) in chars {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            c if c.is_whitespace() => return i,
            _ => {}
        }
    }
    s.len()
}

fn is_secret(name: &str) -> bool {
    SECRET_PARAMETERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name.trim()))
}

/// `%XX` sequences decoded (invalid ones kept as they are); for comparing parameter names.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_connection_string as redact;

    #[test]
    fn urls() {
        for (input, want) in [
            (
                "postgres://u:secret@h:5432/d",
                "postgres://u:<redacted>@h:5432/d",
            ),
            ("redis://h:6379/", "redis://h:6379/"),
            ("postgres://u@h/d", "postgres://u@h/d"),
            ("redis://:pw@h/", "redis://:<redacted>@h/"),
            // An unencoded '@', '/', '?' or '#' in the password.
            ("postgres://u:p@s/s?w#d@h/d", "postgres://u:<redacted>@h/d"),
            (
                "postgres://u@h/d?sslmode=require&PassWord=x&application_name=a",
                "postgres://u@h/d?sslmode=require&PassWord=<redacted>&application_name=a",
            ),
            (
                "postgres://h/d?pass%77ord=x&sslpassword=y",
                "postgres://h/d?pass%77ord=<redacted>&sslpassword=<redacted>",
            ),
            (
                "rediss://h:6379/0?password=s3cr@t",
                "rediss://h:6379/0?password=<redacted>",
            ),
            ("rediss://h?password=", "rediss://h?password=<redacted>"),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn key_values() {
        for (input, want) in [
            (
                "host=h password=secret user=u",
                "host=h password=<redacted> user=u",
            ),
            (
                "host=h password = 'se cr\\'et' user=u",
                "host=h password = <redacted> user=u",
            ),
            ("password='unterminated", "password=<redacted>"),
            ("sslpassword=x", "sslpassword=<redacted>"),
            (
                "host=h password=\"se cret\" dbname=d",
                "host=h password=<redacted> dbname=d",
            ),
            // A mistyped scheme: still user info.
            ("redis//:s3cret@h:6379/", "redis//:<redacted>@h:6379/"),
            ("app:s3cret@db/app", "app:<redacted>@db/app"),
            ("dbname=d", "dbname=d"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    mod generated {
        use proptest::prelude::*;

        use super::redact;

        /// A password of any characters (the URL's special ones included), long enough not to
        /// occur by chance in the rest of the string.
        fn password() -> impl Strategy<Value = String> {
            "[ -~\u{a0}-\u{17f}]{8,24}"
        }

        fn percent_encode(s: &str) -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(10_000))]

            /// Wherever a password sits in a URL, encoded or not, it is not in the output.
            #[test]
            fn no_password_survives_in_a_url(
                scheme in prop::sample::select(vec!["postgres", "postgresql", "redis", "rediss"]),
                user in "[a-z]{0,8}",
                pw in password(),
                encoded in any::<bool>(),
                host in "[a-z]{1,8}(:[0-9]{1,5})?",
                db in "[a-z]{0,8}",
                in_query in prop::sample::select(vec![None, Some("password"), Some("sslpassword"), Some("PASSWORD"), Some("pass%77ord")]),
                // A mistyped scheme separator must not expose the password either.
                sep in prop::sample::select(vec!["://", "://", "//", ":/", ""]),
                raw_value in any::<bool>(),
                extra in "(&application_name=[a-z@:]{0,8})?",
            ) {
                // Unencoded in the query, a value ends at '&' (libpq's split), so it has none.
                let (pw, encoded) = match in_query {
                    Some(_) if raw_value => (pw.replace('&', ""), false),
                    Some(_) => (pw, true),
                    None => (pw, encoded),
                };
                prop_assume!(pw.chars().count() >= 6);
                let pw_text = if encoded { percent_encode(&pw) } else { pw.clone() };
                // With no separator, `scheme` + user + ':' + a password starting with '/' is a
                // plain `scheme…://password@` URL (the password's text is then a user name):
                // no redactor can tell, so such an input is not a case of this property.
                prop_assume!(!(sep.is_empty() && pw_text.starts_with('/')));
                let url = match in_query {
                    None => format!("{scheme}{sep}{user}:{pw_text}@{host}/{db}?sslmode=require{extra}"),
                    Some(name) => format!("{scheme}{sep}{user}@{host}/{db}?sslmode=require&{name}={pw_text}{extra}"),
                };
                let out = redact(&url);
                prop_assert!(!out.contains(&pw_text), "{url} -> {out}");
                prop_assert!(out.contains("<redacted>"), "{url} -> {out}");
                // The parts that are not secret are kept, unless an '@' later in the query
                // hides them (saying less, never more).
                if !extra.contains('@') && sep == "://" {
                    prop_assert!(out.contains(&host), "{url} -> {out}");
                }
            }

            /// libpq's key/value form, with the password quoted as libpq reads it.
            #[test]
            fn no_password_survives_in_key_values(
                pw in password(),
                key in prop::sample::select(vec!["password", "sslpassword", "Password"]),
                spaced in any::<bool>(),
                double in any::<bool>(),
                before in "(host=[a-z]{1,8} )?",
                after in "( dbname=[a-z]{1,8})?",
            ) {
                let q = if double { '"' } else { '\'' };
                let quoted = format!("{q}{}{q}", pw.replace('\\', "\\\\").replace(q, &format!("\\{q}")));
                let eq = if spaced { " = " } else { "=" };
                let s = format!("{before}{key}{eq}{quoted}{after}");
                let out = redact(&s);
                prop_assert!(!out.contains(&pw), "{s} -> {out}");
                prop_assert!(out.ends_with(&after), "{s} -> {out}");
            }
        }
    }
}

//! `parse_connection_string` (and `ReplicationConfig::from_str`, on top of it): libpq
//! connection strings, URL and `key=value`, from configuration and the environment. Not bytes
//! from the network, but text an operator (or a templating mistake) controls, fed to a
//! hand-written parser (`conninfo`) and then to tokio-postgres's.

use std::path::Path;

use proptest::prelude::*;
use walcache_cdc::client::{parse_connection_string, ReplicationConfig, SslMode};
use walcache_cdc::Error;

use crate::harness::check;
use crate::mutate::{mutated, mutations};

const MODES: [SslMode; 5] = [
    SslMode::Disable,
    SslMode::Prefer,
    SslMode::Require,
    SslMode::VerifyCa,
    SslMode::VerifyFull,
];

/// Strings made of the characters the parsers branch on, and anything else now and then.
fn conninfo_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(vec![
            "postgres://", "postgresql://", "host", "user", "dbname", "port", "password",
            "sslmode", "sslrootcert", "hostaddr", "options", "=", " ", "'", "\\", "%", "%2F",
            "%zz", "%e", "?", "&", "@", ":", "/", "verify-full", "allow", "system", "5432",
            "127.0.0.1", "[::1]", ",", "\t", "é", "\u{0}",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

/// No panic, and the error, if any, is one of the two a string can cause.
fn assert_sound(s: &str) -> Result<(), TestCaseError> {
    match parse_connection_string(s) {
        Ok(_) | Err(Error::Config { .. } | Error::Unsupported(_)) => {}
        Err(other) => prop_assert!(false, "unexpected error kind for {s:?}: {other:?}"),
    }
    match s.parse::<ReplicationConfig>() {
        Ok(_) | Err(Error::Config { .. } | Error::Unsupported(_)) => {}
        Err(other) => prop_assert!(false, "unexpected error kind for {s:?}: {other:?}"),
    }
    Ok(())
}

#[test]
fn conninfo_arbitrary_strings_never_panic() {
    check(
        module_path!(),
        "conninfo_arbitrary_strings_never_panic",
        prop_oneof![conninfo_like(), any::<String>()],
        |s| assert_sound(&s),
    );
}

/// A `key=value` value, quoted and escaped as libpq reads it.
fn quote(value: &str) -> String {
    let mut out = String::from("'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Percent-encodes every byte but the unreserved ones.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn conninfo_valid_strings_keep_their_tls_parameters_and_mutations_never_panic() {
    check(
        module_path!(),
        "conninfo_valid_strings_keep_their_tls_parameters_and_mutations_never_panic",
        (
            prop::sample::select(MODES.to_vec()),
            // A root certificate path: anything but NUL (which no path holds) and "system".
            "[^\u{0}]{1,12}".prop_filter("not the system store", |p| p != "system"),
            "[a-z][a-z0-9_]{0,8}",
            any::<bool>(),
            mutations(),
        ),
        |(mode, root, user, url, mutations)| {
            let s = if url {
                format!(
                    "postgres://{user}@db.example:5433/app?sslmode={mode}&connect_timeout=3&sslrootcert={}",
                    percent_encode(&root)
                )
            } else {
                format!(
                    "host=db.example port=5433 sslmode = {mode} user={user} sslrootcert={} dbname=app",
                    quote(&root)
                )
            };
            let parsed = parse_connection_string(&s)
                .map_err(|e| TestCaseError::fail(format!("{s:?} does not parse: {e:?}")))?;
            prop_assert_eq!(parsed.ssl_mode, mode);
            prop_assert_eq!(parsed.root_cert.as_deref(), Some(Path::new(&root)));
            prop_assert_eq!(parsed.pg.get_user(), Some(user.as_str()));
            prop_assert_eq!(parsed.pg.get_ports(), &[5433]);
            prop_assert_eq!(parsed.pg.get_dbname(), Some("app"));
            let config: ReplicationConfig = s.parse().map_err(|e| {
                TestCaseError::fail(format!("{s:?} is no replication config: {e:?}"))
            })?;
            prop_assert_eq!(config.get_ssl_mode(), mode);
            prop_assert_eq!(config.get_root_cert(), Some(Path::new(&root)));
            prop_assert_eq!(config.get_port(), 5433);
            // Damaged (on UTF-8 boundaries or not: lossily), it parses or fails, typed.
            let damaged = mutated(s.as_bytes(), &mutations);
            assert_sound(&String::from_utf8_lossy(&damaged))
        },
    );
}

//! The configuration's tests: parsing, overrides, every error, the shipped files.
use super::*;
use std::collections::HashMap;

const GOOD: &str = r#"
[postgres]
url = "postgres://walcached@127.0.0.1:5432/app"

[redis]
url = "redis://127.0.0.1:6379/"

[[rules]]
table = "public.users"
namespace = "users"
keys = ["{id}", "by_email:{email}"]
tags = ["users"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &HashMap::new())
}

#[test]
fn a_good_config_parses_with_defaults() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.postgres.slot, "walcached");
    assert_eq!(c.stream.batch_max_keys, 1000);
    assert_eq!(
        c.rules[0].qualified_table(),
        ("public".into(), "users".into())
    );
}

#[test]
fn environment_overrides_fields() {
    let env: HashMap<String, String> = [
        ("WALCACHED_REDIS_URL", "redis://10.0.0.1:6380/"),
        ("WALCACHED_STREAM_BATCH_MAX_KEYS", "50"),
        ("WALCACHED_POSTGRES_PASSWORD", "hunter2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let c = Config::parse(GOOD, &env).expect("valid");
    assert_eq!(c.redis.url.expose(), "redis://10.0.0.1:6380/");
    assert_eq!(c.stream.batch_max_keys, 50);
    assert!(!format!("{c:?}").contains("hunter2"), "secrets never print");
    let bad: HashMap<String, String> = [(
        "WALCACHED_STREAM_BATCH_MAX_KEYS".to_owned(),
        "many".to_owned(),
    )]
    .into();
    let e = Config::parse(GOOD, &bad).expect_err("not a number");
    assert_eq!(e.field, "WALCACHED_STREAM_BATCH_MAX_KEYS");
}

#[test]
fn errors_name_the_field_the_value_and_the_fix() {
    let cases = [
        (
            GOOD.replace("namespace = \"users\"", "namespace = \"Users!\""),
            "rules[0].namespace",
        ),
        (GOOD.replace("\"{id}\"", "\"{id\""), "rules[0].keys[0]"),
        (
            GOOD.replace("redis://127.0.0.1:6379/", "http://x"),
            "redis.url",
        ),
        (
            GOOD.replace("postgres://walcached@127.0.0.1:5432/app", "nonsense://"),
            "postgres.url",
        ),
        (
            GOOD.replace("tags = [\"users\"]", "tags = [\"has space\"]"),
            "rules[0].tags[0]",
        ),
        (GOOD.replace("public.users", "a.b.c"), "rules[0].table"),
        (
            format!("{GOOD}\n[stream]\nmax_frame_bytes = 65536\n"),
            "stream.max_frame_bytes",
        ),
        (
            GOOD.replace(
                "tags = [\"users\"]",
                "tags = [\"users\"]\ntag_namespaces = [\"orders\", \"Bad Name\"]",
            ),
            "rules[0].tag_namespaces[1]",
        ),
        (
            GOOD.replace("tags = [\"users\"]", "tag_namespaces = [\"orders\"]"),
            "rules[0].tag_namespaces",
        ),
        (
            format!("{GOOD}\n[stream]\nmax_message_bytes = 10\n"),
            "stream.max_message_bytes",
        ),
    ];
    for (text, field) in cases {
        let e = parse(&text).expect_err(field);
        assert_eq!(e.field, field, "{e}");
    }
    let e = parse(&GOOD.replace("keys = [", "kees = [")).expect_err("unknown field");
    assert!(e.to_string().contains("kees"), "{e}");
    let secret = GOOD
        .replace("walcached@", "walcached:pw123@")
        .replace("5432/app", "5432/app?x=");
    let c = parse(&secret);
    if let Err(e) = &c {
        assert!(!e.to_string().contains("pw123"), "{e}");
    }
}

#[test]
fn tag_namespaces_are_optional_and_parsed() {
    let c = parse(GOOD).expect("valid");
    assert!(c.rules[0].tag_namespaces.is_empty(), "default: none");
    let c = parse(&GOOD.replace(
        "tags = [\"users\"]",
        "tags = [\"users\"]\ntag_namespaces = [\"orders\", \"carts\"]",
    ))
    .expect("valid");
    assert_eq!(c.rules[0].tag_namespaces, ["orders", "carts"]);
    let e = parse(&GOOD.replace(
        "tags = [\"users\"]",
        "tags = [\"users\"]\ntag_namespaces = [\"Bad Name\"]",
    ))
    .expect_err("invalid namespace");
    assert!(e.problem.contains("\"Bad Name\""), "names the value: {e}");
    assert!(
        e.problem.contains("tag_namespaces = ["),
        "says the fix: {e}"
    );
}

const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn with_key_file(path: &Path) -> String {
    format!(
        "{GOOD}\n[security]\nsigning_keys_file = {:?}\n",
        path.to_str().unwrap()
    )
}

#[test]
fn signing_keys_come_from_the_file_or_the_environment() {
    use crate::signing::KeySource;
    let c = parse(GOOD).expect("valid");
    assert!(c.security.signing_keys.is_none(), "default: unsigned");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("# rotation\n{K2}\n{K1}\n")).unwrap();
    let c = parse(&with_key_file(&path)).expect("valid");
    let keys = c.security.signing_keys.as_ref().expect("keys");
    assert_eq!(keys.keyring.ids(), ["k2", "k1"]);
    assert_eq!(keys.source, KeySource::File(path.clone()));
    assert!(!format!("{c:?}").contains("1f1e1d"), "secrets never print");

    let c = Config::parse(
        GOOD,
        &env(&[("WALCACHED_SIGNING_KEYS", &format!("{K1}, {K2}"))]),
    )
    .expect("valid");
    let keys = c.security.signing_keys.as_ref().expect("keys");
    assert_eq!(keys.keyring.signer().id(), "k1");
    assert_eq!(keys.source, KeySource::Env);

    let c = Config::parse(
        GOOD,
        &env(&[("WALCACHED_SIGNING_KEYS_FILE", path.to_str().unwrap())]),
    )
    .expect("valid");
    assert_eq!(
        c.security.signing_keys.expect("keys").source,
        KeySource::File(path.clone())
    );
}

#[test]
fn bad_signing_keys_are_errors_naming_the_field_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    for (text, needle) in [
        ("k1:0011\n", "at least 32"),
        ("k1:zz\n", "hexadecimal"),
        (&format!("{K1}\n{K1}\n") as &str, "twice"),
        ("# nothing yet\n", "no signing key"),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n",
            "id:hexsecret",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = parse(&with_key_file(&path)).expect_err(text);
        assert_eq!(e.field, "security.signing_keys_file", "{e}");
        assert!(e.problem.contains(needle), "{text}: {e}");
        assert!(e.problem.contains("keys"), "names the file: {e}");
        assert!(!e.to_string().contains("0102030405"), "a secret in {e}");
    }
    let e = parse(&with_key_file(&dir.path().join("missing"))).expect_err("missing");
    assert_eq!(e.field, "security.signing_keys_file", "{e}");
    assert!(e.problem.contains("cannot read"), "{e}");

    let e = Config::parse(GOOD, &env(&[("WALCACHED_SIGNING_KEYS", "k1:00")])).expect_err("short");
    assert_eq!(e.field, "WALCACHED_SIGNING_KEYS", "{e}");
    assert!(e.problem.contains("at least 32"), "{e}");

    std::fs::write(&path, K1).unwrap();
    let e = Config::parse(
        &with_key_file(&path),
        &env(&[("WALCACHED_SIGNING_KEYS", K2)]),
    )
    .expect_err("both");
    assert_eq!(e.field, "WALCACHED_SIGNING_KEYS", "{e}");
    assert!(e.problem.contains("security.signing_keys_file"), "{e}");
    assert!(!e.to_string().contains("1f1e1d"), "a secret in {e}");
}

#[test]
fn the_shipped_configurations_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    // The ConfigMap's walcached.toml: the block indented under `walcached.toml: |`.
    let k8s = read("deploy/k8s/walcached.yaml");
    let (_, block) = k8s
        .split_once("walcached.toml: |\n")
        .expect("the ConfigMap");
    let configmap: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or_default()))
        .collect();
    // Secrets are mounted at run time: the key file's path is taken away here.
    let env: HashMap<String, String> =
        [("WALCACHED_SIGNING_KEYS_FILE".to_owned(), String::new())].into();
    for (name, text) in [
        (
            "deploy/compose/walcached.toml",
            read("deploy/compose/walcached.toml"),
        ),
        ("examples/walcached.toml", read("examples/walcached.toml")),
        ("deploy/k8s/walcached.yaml ConfigMap", configmap),
    ] {
        let config = Config::parse(&text, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!config.rules.is_empty(), "{name}");
    }
}

#[test]
fn urls_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@h:5432/d"),
        "postgres://u:<redacted>@h:5432/d"
    );
    assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
    // Passwords holding '@', in the query, and in libpq's key/value form: the
    // configuration's Debug (and so every log of it) shows none of them.
    for (pg, redis) in [
        (
            "postgres://walcached:p@ss/w0rd@127.0.0.1:5432/app",
            "redis://:r3d@is@127.0.0.1:6379/",
        ),
        (
            "postgres://walcached@127.0.0.1:5432/app?password=p@ss/w0rd",
            "redis://127.0.0.1:6379/?password=r3d@is",
        ),
        (
            "host=127.0.0.1 user=walcached password='p@ss/w0rd' dbname=app",
            "redis://127.0.0.1:6379/",
        ),
    ] {
        let text = GOOD
            .replace("postgres://walcached@127.0.0.1:5432/app", pg)
            .replace("redis://127.0.0.1:6379/", redis);
        let config = Config::parse(&text, &HashMap::<String, String>::new())
            .unwrap_or_else(|e| panic!("{pg}: {e}"));
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("p@ss/w0rd") && !debug.contains("r3d@is"),
            "{debug}"
        );
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}

#[test]
fn the_admin_token_is_trimmed_an_empty_variable_is_unset_and_errors_name_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", "f".repeat(40))).unwrap();
    let text = format!(
        "{GOOD}\n[http]\nadmin_token_file = {:?}\n",
        file.display().to_string()
    );
    let token = |vars: &[(&str, &str)]| {
        Config::parse(&text, &env(vars)).map(|c| c.http.admin_token.map(|t| t.expose().to_owned()))
    };
    // A trailing newline in the variable (a Secret made from a file) is not part of it.
    let padded = format!("{}\n", "e".repeat(40));
    assert_eq!(
        token(&[("WALCACHED_HTTP_ADMIN_TOKEN", &padded)]).unwrap(),
        Some("e".repeat(40))
    );
    // Empty: unset, so the file's token is used.
    assert_eq!(
        token(&[("WALCACHED_HTTP_ADMIN_TOKEN", "")]).unwrap(),
        Some("f".repeat(40))
    );
    // Too short from the variable: the error names the variable, not the file.
    let e = token(&[("WALCACHED_HTTP_ADMIN_TOKEN", "short")]).unwrap_err();
    assert_eq!(e.field, "WALCACHED_HTTP_ADMIN_TOKEN", "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_field() {
    let e = parse(&format!("{GOOD}\n[stream]\nmax_frame_bytes = -5\n")).unwrap_err();
    assert!(e.field.starts_with("stream.max_frame_bytes (line "), "{e}");
    let e = parse(&GOOD.replace("keys = [", "keys = 3 # [")).unwrap_err();
    assert!(e.field.starts_with("rules.keys (line "), "{e}");
}

#[test]
fn a_client_certificate_with_tls_disabled_is_an_error() {
    let url =
        "postgres://walcached@127.0.0.1:5432/app?sslmode=disable&sslcert=/c.pem&sslkey=/k.pem";
    let e = parse(&GOOD.replace("postgres://walcached@127.0.0.1:5432/app", url)).unwrap_err();
    assert_eq!(e.field, "postgres.url", "{e}");
    assert!(e.to_string().contains("sslmode=disable"), "{e}");
}

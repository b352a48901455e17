//! Signed daemon messages (issue 14, wire v1.4) with real servers: every message the daemon
//! publishes on the sequenced channel is signed for it, send times strictly increase, the key
//! file rotates without a restart, a broken key file is refused at start and ignored (keeping
//! the key in use) while running, and without keys messages are unsigned as before.

use std::path::{Path, PathBuf};

use walcache_protocol::{AuthError, Body, Keyring, Message};
use walcache_testkit::wait_until;
use walcached::pipeline::RunOptions;

use crate::cli::{outcome, walcached};
use crate::support::{config, users_stack, Daemon, Listener, TestLog, DEADLINE, USERS_RULE};

const K1: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "k2:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
/// A piece of K1's and of K2's secrets: never in a log line or an error.
const SECRETS: [&str; 2] = ["0102030405060708", "1e1d1c1b1a191817"];
const CHANNEL: &str = "wc:inval";

/// A key file holding `text`, readable by its owner only.
fn key_file(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("signing-keys");
    std::fs::write(&path, text).expect("write the key file");
    set_mode(&path, 0o600);
    path
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Replace the key file's content the way an operator should: write a new file, rename it
/// into place.
fn replace_key_file(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write the new key file");
    set_mode(&next, 0o600);
    std::fs::rename(&next, path).expect("rename the new key file into place");
}

/// `toml` with `security.signing_keys_file = path`.
fn with_key_file(toml: &str, path: &Path) -> String {
    format!(
        "{toml}\n[security]\nsigning_keys_file = {:?}\n",
        path.to_str().expect("utf-8 temp path")
    )
}

fn keyring(spec: &str) -> Keyring {
    Keyring::parse(spec).expect("keyring")
}

/// The id of the key a published message is signed with (`None`: unsigned).
fn key_id(bytes: &[u8]) -> Option<String> {
    let (_, signature) = Message::decode_signed(bytes).expect("a valid message");
    signature.map(|s| s.key_id.to_owned())
}

/// Every message so far verifies with `accepted` on the invalidation channel (and decodes to
/// what an unsigned reader reads), and on no other channel; all of one epoch, their send
/// times strictly increasing. Returns the key id of each, in order.
fn assert_signed(listener: &Listener, accepted: &Keyring) -> Vec<String> {
    let raw = listener.raw();
    assert!(!raw.is_empty(), "no message");
    let mut ids = Vec::new();
    let mut last_sent = 0;
    for (message, bytes) in &raw {
        assert_eq!(
            accepted.verify(bytes, CHANNEL).as_ref(),
            Ok(message),
            "{message:?}"
        );
        assert_eq!(
            accepted.verify(bytes, "wc:app"),
            Err(AuthError::BadMac),
            "signed for {CHANNEL} only: {message:?}"
        );
        assert!(
            message.sent_at_micros > last_sent,
            "send time {} not after {last_sent}: {message:?}",
            message.sent_at_micros
        );
        last_sent = message.sent_at_micros;
        ids.push(key_id(bytes).expect("signed"));
    }
    assert_eq!(listener.epochs().len(), 1, "one run, one epoch");
    ids
}

/// The data messages' sequence numbers are 1, 2, 3, ... with no gap, and every heartbeat
/// carries the last data sequence number before it.
fn assert_no_gap(listener: &Listener) {
    let mut last_data = 0;
    for (message, _) in listener.raw() {
        match message.body {
            Body::Heartbeat { last_data_seq, .. } => {
                assert_eq!(last_data_seq, last_data, "{message:?}");
            }
            _ => {
                assert_eq!(message.seq, last_data + 1, "a gap before {message:?}");
                last_data = message.seq;
            }
        }
    }
}

/// Wait until a message signed with `id` arrives after the first `after` messages.
async fn wait_signed_with(listener: &Listener, after: usize, id: &str) {
    wait_until(&format!("a message signed with {id}"), DEADLINE, || async {
        listener
            .raw()
            .iter()
            .skip(after)
            .any(|(_, bytes)| key_id(bytes).as_deref() == Some(id))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// With keys configured, every message the daemon publishes — the flush of a new slot, keys,
/// tags, heartbeats — is signed with the first key for the invalidation channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_signed_for_the_invalidation_channel() {
    let (pg, redis, dbname, db) = users_stack().await;
    let dir = tempfile::tempdir().unwrap();
    // k2 is listed (accepted by services) but k1, first, signs.
    let path = key_file(&dir, &format!("# signing keys\n{K1}\n{K2} # next\n"));
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&with_key_file(
        &config(&pg, &dbname, &redis, USERS_RULE),
        &path,
    ))
    .await;
    listener.wait_heartbeat().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    db.execute("UPDATE users SET name = 'Ada L.' WHERE id = 1", &[])
        .await
        .unwrap();
    listener
        .wait_keys(&["users/1", "users/by_email:a@x.org"])
        .await;
    let before = listener.heartbeats();
    wait_until("two more heartbeats", DEADLINE, || async {
        listener.heartbeats() >= before + 2
    })
    .await
    .unwrap();
    daemon.stop().await;

    let ids = assert_signed(&listener, &keyring(&format!("{K1},{K2}")));
    assert!(ids.iter().all(|id| id == "k1"), "{ids:?}");
    assert_no_gap(&listener);
    let kinds: Vec<&'static str> = listener
        .raw()
        .iter()
        .map(|(m, _)| match m.body {
            Body::Keys(_) => "keys",
            Body::Tags(_) => "tags",
            Body::Flush(_) => "flush",
            Body::Heartbeat { .. } => "heartbeat",
            _ => "other",
        })
        .collect();
    for kind in ["flush", "keys", "tags", "heartbeat"] {
        assert!(kinds.contains(&kind), "no {kind} message: {kinds:?}");
    }
    // A receiver holding only k2 does not accept k1's messages.
    let (_, bytes) = &listener.raw()[0];
    assert_eq!(
        keyring(K2).verify(bytes, CHANNEL),
        Err(AuthError::UnknownKey("k1".into()))
    );
}

/// Rotation: putting a new key first in the file makes later messages signed with it, in the
/// same run (one epoch) and with no gap in the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_first_key_in_the_file_signs_without_a_restart() {
    let (pg, redis, dbname, db) = users_stack().await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(&dir, &format!("{K1}\n"));
    let listener = Listener::start(&redis).await;
    let log = TestLog::default();
    let daemon = Daemon::spawn_logging_to(
        &with_key_file(&config(&pg, &dbname, &redis, USERS_RULE), &path),
        RunOptions::default(),
        log.dispatch(),
    );
    listener.wait_heartbeat().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    let before = listener.raw().len();

    // Step two of a rotation: services accept k1 and k2; the daemon now signs with k2.
    replace_key_file(&path, &format!("{K2}\n{K1}\n"));
    wait_signed_with(&listener, before, "k2").await;
    db.execute("INSERT INTO users VALUES (2, 'b@x.org', 'Bob')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/2"]).await;
    listener.wait_heartbeat().await;
    daemon.stop().await;

    let ids = assert_signed(&listener, &keyring(&format!("{K1},{K2}")));
    let switch = ids
        .iter()
        .position(|id| id == "k2")
        .expect("signed with k2");
    assert!(switch >= before, "k2 before the file changed: {ids:?}");
    assert!(ids[..switch].iter().all(|id| id == "k1"), "{ids:?}");
    assert!(ids[switch..].iter().all(|id| id == "k2"), "{ids:?}");
    assert_no_gap(&listener);
    let reloads = log.lines("INFO", "signing keys reloaded");
    assert_eq!(reloads.len(), 1, "{reloads:?}");
    assert!(reloads[0].contains("k2"), "names the new key: {reloads:?}");
    let text = log.text();
    for secret in SECRETS {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
    }
}

/// A key file that does not parse is a configuration error at start (exit 2), naming the
/// field, the entry and the fix, never the secret.
#[tokio::test]
async fn a_bad_key_file_is_a_configuration_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let toml = |path: &Path| {
        with_key_file(
            &format!(
                "[postgres]\nurl = \"postgres://u@127.0.0.1:1/db\"\n\n[redis]\n\
                 url = \"redis://127.0.0.1:1/\"\n\n[http]\nlisten = \"\"\n{USERS_RULE}"
            ),
            path,
        )
    };
    for (text, needle) in [
        (format!("{K1}\nk2:0011\n"), "at least 32"),
        (format!("{K1}\n{K1}\n"), "twice"),
        ("k1:not-hex\n".to_owned(), "hexadecimal"),
        ("# no key yet\n".to_owned(), "no signing key"),
    ] {
        let path = key_file(&dir, &text);
        for subcommand in ["run", "check"] {
            let (code, _, stderr) = outcome(&walcached(subcommand, &toml(&path)).await);
            assert_eq!(code, 2, "{subcommand} {text:?}: {stderr}");
            assert!(
                stderr.contains("security.signing_keys_file") && stderr.contains(needle),
                "{subcommand} {text:?}: {stderr}"
            );
            assert!(stderr.contains("id:hexsecret"), "says the fix: {stderr}");
            for secret in SECRETS {
                assert!(!stderr.contains(secret), "a secret in {stderr}");
            }
        }
    }
    let (code, _, stderr) = outcome(&walcached("run", &toml(&dir.path().join("missing"))).await);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("security.signing_keys_file") && stderr.contains("cannot read"),
        "{stderr}"
    );

    // `check` reports the key ids and the file's permissions (the servers are unreachable:
    // exit 3, but the signing lines are there).
    let path = key_file(&dir, &format!("{K2}\n{K1}\n"));
    set_mode(&path, 0o644);
    let (code, stdout, stderr) = outcome(&walcached("check", &toml(&path)).await);
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let line = |needle: &str| {
        stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line:\n{stdout}"))
            .to_owned()
    };
    let signed = line("security.signing_keys_file");
    assert!(
        signed.starts_with("ok") && signed.contains("signed with key k2") && signed.contains("k1"),
        "{signed}"
    );
    let mode = line("signing key file permissions");
    assert!(
        mode.starts_with("warning") && mode.contains("0644") && mode.contains("chmod 600"),
        "{mode}"
    );
    set_mode(&path, 0o600);
    let (_, stdout, _) = outcome(&walcached("check", &toml(&path)).await);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("signing key file permissions")),
        "{stdout}"
    );
    for secret in SECRETS {
        assert!(!stdout.contains(secret), "a secret in {stdout}");
    }
}

/// A key file that stops parsing while the daemon runs keeps the key in use, logged once per
/// change (not once per check); a fixed file is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_file_broken_while_running_keeps_the_key_in_use() {
    let (pg, redis, dbname, db) = users_stack().await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(&dir, &format!("{K1}\n"));
    // Open to the group: warned about at start.
    set_mode(&path, 0o640);
    let listener = Listener::start(&redis).await;
    let log = TestLog::default();
    let daemon = Daemon::spawn_logging_to(
        &with_key_file(&config(&pg, &dbname, &redis, USERS_RULE), &path),
        RunOptions::default(),
        log.dispatch(),
    );
    listener.wait_heartbeat().await;
    assert_eq!(
        log.lines("WARN", "open to its group").len(),
        1,
        "{}",
        log.text()
    );

    // Made unparseable (a duplicate key): still k1.
    replace_key_file(&path, &format!("{K1}\n{K1}\n"));
    wait_until("the broken file is noticed", DEADLINE, || async {
        !log.lines("ERROR", "cannot be used").is_empty()
    })
    .await
    .unwrap();
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    // Many more checks of the file (one per heartbeat interval at most, at each message):
    // the unchanged broken file is not reported again.
    let before = listener.heartbeats();
    wait_until("ten more heartbeats", DEADLINE, || async {
        listener.heartbeats() >= before + 10
    })
    .await
    .unwrap();
    let errors = log.lines("ERROR", "cannot be used");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("twice"), "says why: {errors:?}");

    // Gone (an editor's rename in progress): another change, one more error, still k1.
    std::fs::remove_file(&path).unwrap();
    wait_until("the missing file is noticed", DEADLINE, || async {
        log.lines("ERROR", "cannot be used").len() == 2
    })
    .await
    .unwrap();
    listener.wait_heartbeat().await;
    let ids = assert_signed(&listener, &keyring(K1));
    assert!(ids.iter().all(|id| id == "k1"), "{ids:?}");

    // Fixed: taken.
    let before = listener.raw().len();
    replace_key_file(&path, &format!("{K2}\n"));
    wait_signed_with(&listener, before, "k2").await;
    daemon.stop().await;
    assert_signed(&listener, &keyring(&format!("{K1},{K2}")));
    assert_no_gap(&listener);
    assert_eq!(log.lines("ERROR", "cannot be used").len(), 2);
    let text = log.text();
    for secret in SECRETS {
        assert!(!text.contains(secret), "a secret in the log:\n{text}");
    }
}

/// Without keys, messages are unsigned (v1.3 bytes under minor 4) and decode as before; the
/// daemon says once at start that services must then accept unsigned messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_messages_are_unsigned() {
    let (pg, redis, dbname, db) = users_stack().await;
    let listener = Listener::start(&redis).await;
    let log = TestLog::default();
    let daemon = Daemon::spawn_logging_to(
        &config(&pg, &dbname, &redis, USERS_RULE),
        RunOptions::default(),
        log.dispatch(),
    );
    listener.wait_heartbeat().await;
    db.execute("INSERT INTO users VALUES (1, 'a@x.org', 'Ada')", &[])
        .await
        .unwrap();
    listener.wait_keys(&["users/1"]).await;
    listener.wait_heartbeat().await;
    daemon.stop().await;

    let mut last_sent = 0;
    for (message, bytes) in listener.raw() {
        let (decoded, signature) = Message::decode_signed(&bytes).expect("decodes");
        assert_eq!(signature, None, "unsigned: {message:?}");
        assert_eq!(decoded, message);
        assert_eq!(bytes, message.encode(), "exactly the unsigned encoding");
        assert_eq!(
            keyring(K1).verify(&bytes, CHANNEL),
            Err(AuthError::Unsigned)
        );
        assert!(message.sent_at_micros > last_sent, "{message:?}");
        last_sent = message.sent_at_micros;
    }
    assert_no_gap(&listener);
    let warnings = log.lines("WARN", "allow_unsigned()");
    assert_eq!(warnings.len(), 1, "{}", log.text());
}

/// A service handle holding the daemon's key goes live on its signed heartbeats; one holding
/// only another key does not, until the daemon signs with that key (rotation step two), and a
/// handle accepting both keys stays live across the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_go_live_only_on_heartbeats_signed_with_a_key_they_hold() {
    let (pg, redis, dbname, _db) = users_stack().await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(&dir, &format!("{K1}\n"));
    let listener = Listener::start(&redis).await;
    let daemon = Daemon::start(&with_key_file(
        &config(&pg, &dbname, &redis, USERS_RULE),
        &path,
    ))
    .await;
    let handle = |keys: &str| {
        walcache::Walcache::builder()
            .signing_keys(keyring(keys))
            .redis_url(redis.url())
            .heartbeat_timeout(std::time::Duration::from_secs(2))
            .build()
    };
    let both = handle(&format!("{K1},{K2}")).await.expect("handle");
    let new_only = handle(K2).await.expect("handle");
    wait_until("the handle holding k1 is live", DEADLINE, || async {
        both.is_live()
    })
    .await
    .unwrap();
    let before = listener.heartbeats();
    wait_until("ten more heartbeats", DEADLINE, || async {
        assert!(!new_only.is_live(), "live on heartbeats signed with k1");
        listener.heartbeats() >= before + 10
    })
    .await
    .unwrap();

    let before = listener.raw().len();
    replace_key_file(&path, &format!("{K2}\n{K1}\n"));
    wait_until("the handle holding k2 only is live", DEADLINE, || async {
        assert!(
            both.is_live(),
            "the handle accepting both keys lost liveness"
        );
        new_only.is_live()
    })
    .await
    .unwrap();
    // The handle and this listener are separate subscribers: the listener may hear the
    // k2-signed heartbeat the handle went live on a moment later.
    wait_until(
        "the listener hears a message signed with k2",
        DEADLINE,
        || async {
            listener
                .raw()
                .iter()
                .skip(before)
                .any(|(_, bytes)| key_id(bytes).as_deref() == Some("k2"))
        },
    )
    .await
    .expect("live on k2's heartbeats");
    assert!(both.is_live());
    daemon.stop().await;
}

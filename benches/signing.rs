//! What signing costs per message (wire v1.4): encode against encode + sign on the daemon's
//! side, decode against verify (decode + HMAC) on each subscriber's, for a heartbeat with
//! details and for Keys messages of 10 and 500 keys (one transaction's worth, and a batch).
//!
//! Run with: `cargo run --release -p walcache-benches --bin signing`. One core, no I/O: the
//! figures are CPU per message, which a subscriber pays once per message whatever its caches.

use std::hint::black_box;
use std::time::{Duration, Instant};

use walcache_protocol::{Body, HeartbeatDetails, KeyRef, Keyring, Message};

const CHANNEL: &str = "wc:inval";

/// Messages per second of `f`, over at least `budget` of wall time.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0_u64;
    while start.elapsed() < budget {
        for _ in 0..256 {
            f();
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn message(body: Body) -> Message {
    let mut m = Message::new(0x5eed, 41, body);
    m.lsn = 0x16_b374_d848;
    m.sent_at_micros = 1_764_000_000_000_000;
    m
}

fn main() {
    let budget = if walcache_benches::quick() {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(2)
    };
    let keys =
        Keyring::parse("k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .expect("keys");
    let heartbeat = message(Body::Heartbeat {
        last_data_seq: 41,
        details: Some(HeartbeatDetails {
            lag_bytes: 0,
            refresh_interval_ms: 3_600_000,
            namespaces: vec!["users".into(), "orders".into()],
            out_of_service: vec![],
        }),
    });
    let keys_of = |n: usize| {
        message(Body::Keys(
            (0..n)
                .map(|i| KeyRef::new("users", format!("{}", 1_000_000 + i)))
                .collect(),
        ))
    };
    println!("| message | bytes (signed) | encode /s | encode + sign /s | decode /s | verify /s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, m) in [
        ("heartbeat with details", heartbeat),
        ("Keys, 10 keys", keys_of(10)),
        ("Keys, 500 keys", keys_of(500)),
    ] {
        let signed = keys.sign(&m, CHANNEL);
        let plain = m.encode();
        assert_eq!(keys.verify(&signed, CHANNEL).as_ref(), Ok(&m));
        let encode = rate(budget, || {
            black_box(black_box(&m).encode());
        });
        let sign = rate(budget, || {
            black_box(keys.sign(black_box(&m), CHANNEL));
        });
        let decode = rate(budget, || {
            black_box(Message::decode(black_box(&plain)).expect("decodes"));
        });
        let verify = rate(budget, || {
            black_box(keys.verify(black_box(&signed), CHANNEL).expect("verifies"));
        });
        println!(
            "| {name} | {} ({}) | {encode:.0} | {sign:.0} | {decode:.0} | {verify:.0} |",
            plain.len(),
            signed.len()
        );
    }
    if walcache_benches::quick() {
        println!("\n(quick mode: these figures do not count)");
    }
}

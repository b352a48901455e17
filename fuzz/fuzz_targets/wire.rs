//! Invalidation messages as anyone who can PUBLISH on the channels sends them:
//! `Message::decode`, `Message::decode_signed` and `Keyring::verify`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walcache_protocol::{Keyring, Message};

fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::parse(&format!("k1:{}", "ab".repeat(32))).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode(data);
    match Message::decode_signed(data) {
        Ok((message, _)) => assert_eq!(decoded.as_ref(), Ok(&message)),
        Err(e) => assert!(decoded.is_ok() || decoded == Err(e)),
    }
    if let Ok(message) = &decoded {
        assert_eq!(Message::decode(&message.encode()).as_ref(), Ok(message));
    }
    if let Ok(message) = keyring().verify(data, "wc:inval") {
        assert_eq!(decoded, Ok(message));
    }
});

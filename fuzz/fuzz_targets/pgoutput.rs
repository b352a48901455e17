//! pgoutput messages (the payload of XLogData), as the replication stream delivers them.
//! Whatever decodes must re-encode to exactly the input: pgoutput has no slack.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walcache_cdc::pgoutput::LogicalMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = LogicalMessage::decode(Bytes::copy_from_slice(data)) {
        let mut out = BytesMut::new();
        message.encode(&mut out);
        assert_eq!(&out[..], data, "accepted bytes re-encode differently");
    }
});

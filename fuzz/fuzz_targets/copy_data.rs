//! CopyData payloads of the replication stream (XLogData, primary keepalives; the standby
//! status update's decoder too), and the pgoutput message inside an XLogData.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walcache_cdc::protocol::{ReplicationMessage, StandbyStatusUpdate};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(message) = ReplicationMessage::decode(bytes.clone()) {
        if let ReplicationMessage::XLogData(x) = &message {
            let _ = x.logical_message();
            let mut out = BytesMut::new();
            message.encode(&mut out);
            assert_eq!(&out[..], data, "an XLogData re-encodes differently");
        }
    }
    let _ = StandbyStatusUpdate::decode(bytes);
});

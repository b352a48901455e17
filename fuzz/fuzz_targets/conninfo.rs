//! libpq connection strings (URL and `key=value`): the hand-written `sslmode`/`sslrootcert`
//! extraction, then tokio-postgres's parser, then the replication configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcache_cdc::client::{parse_connection_string, ReplicationConfig};

fuzz_target!(|s: &str| {
    let _ = parse_connection_string(s);
    let _ = s.parse::<ReplicationConfig>();
});

//! What a value key in Redis holds, as the read path decodes it: the envelope
//! (`walcache::envelope`, hidden), then each codec on its payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use walcache::envelope::{parse_envelope, split_value, stamp_of, value_envelope, Found};
use walcache::{Codec, Json, Postcard};

/// A cached row, as an application might store it.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    labels: Vec<String>,
    scores: Vec<i64>,
    parent: Option<u32>,
}

fuzz_target!(|data: &[u8]| {
    let _ = stamp_of(data);
    if let Found::Value(bytes) = parse_envelope(data.to_vec()) {
        let (tags, payload) = split_value(&bytes).expect("a Value splits");
        let stamp = stamp_of(&bytes).expect("a Value has a stamp");
        assert_eq!(value_envelope(payload, &tags, stamp), data, "no slack");
        let _ = Postcard.decode::<Row>(payload);
        let _ = Json.decode::<Row>(payload);
        let _ = Postcard.decode::<Map>(payload);
        let _ = Json.decode::<Map>(payload);
    }
});

/// A map of lists, for the codecs' sequence and map lengths.
type Map = std::collections::BTreeMap<String, Vec<Option<String>>>;

//! Integration tests of walcache-protocol: the wire format (against frozen copies of the v1.0,
//! v1.1, v1.2 and v1.3 decoders, too), signed messages (v1.4) and the key builder, and the key
//! builder against a real PostgreSQL's text output; and hostile inputs for the decoders
//! (`hostile`: property tests of at least 10,000 cases each).

mod hostile;
mod postgres_text;
mod v1_0_decoder;
mod v1_1_decoder;
mod v1_2_decoder;
mod v1_3_decoder;
mod wire_and_keys;

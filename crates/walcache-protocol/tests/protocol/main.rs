//! Integration tests of walcache-protocol: the wire format (against a frozen copy of the v1.0
//! decoder, too) and the key builder, and the key builder against a real PostgreSQL's text output.

mod postgres_text;
mod v1_0_decoder;
mod wire_and_keys;

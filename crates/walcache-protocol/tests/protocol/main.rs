//! Integration tests of walcache-protocol: the wire format and the key builder, and the key
//! builder against a real PostgreSQL's text output.

mod postgres_text;
mod wire_and_keys;

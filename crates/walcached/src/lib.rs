//! # walcached
//!
//! The walcache daemon: it follows PostgreSQL's logical replication stream (pgoutput), maps
//! each committed row change to cache keys with the configured rules, deletes those keys from
//! Redis and announces them on the invalidation channel — in one script per batch, so no
//! subscriber hears of a key before L2 has dropped it — and only then confirms the position to
//! PostgreSQL. A crash replays from the slot; nothing committed goes without its invalidation.
//!
//! With signing keys configured ([`signing`]), every message it publishes is signed (wire
//! v1.4), so that services can drop whatever someone else publishes on the channel.

pub mod check;
pub mod client;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod ddl_capture;
pub mod http;
pub mod mapping;
pub mod marker;
pub mod metrics;
pub mod pipeline;
pub mod publication;
pub mod publisher;
pub mod refresh;
pub mod signing;
pub mod slot;
pub mod status;
pub mod xid;

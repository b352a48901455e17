//! PostgreSQL logical replication for walcache's daemon, `walcached`.
//!
//! - [`pgoutput`]: the decoder (and encoder) of the `pgoutput` plugin's messages, protocol
//!   version 1: transactions, relations, row changes, truncations and logical messages.
//! - [`protocol`]: the replication sub-protocol inside CopyData: XLogData, primary keepalives
//!   and standby status updates.
//! - [`client`]: the replication connection on postgres-protocol: startup in
//!   `replication=database` mode with pinned session formats, trust/password/md5/SCRAM-SHA-256
//!   authentication, TLS (libpq's `sslmode`s, on rustls), TCP keepalives and
//!   `TCP_USER_TIMEOUT` against dead peers, simple queries and replication commands, and the
//!   streaming loop.
//! - [`Lsn`] and [`PgTimestamp`]: WAL positions and the protocol's timestamps.
//!
//! Everything read from the server is decoded with bounds checks: hostile or corrupt bytes give
//! a [`DecodeError`] or an [`Error`], never a panic, and no allocation is sized by an untrusted
//! count beyond what the received bytes can hold.
//!
//! # Example
//!
//! ```no_run
//! use walcache_cdc::client::{ReplicationClient, ReplicationConfig, StartReplication};
//! use walcache_cdc::pgoutput::LogicalMessage;
//! use walcache_cdc::protocol::ReplicationMessage;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config: ReplicationConfig = "host=127.0.0.1 user=walcached dbname=app".parse()?;
//! let mut client = ReplicationClient::connect(&config).await?;
//! let slot = client.create_logical_slot("walcached", false).await?;
//! let mut stream = client
//!     .start_replication(&StartReplication::new("walcached", ["walcache"]).start_lsn(slot.consistent_point))
//!     .await?;
//! while let Some(event) = stream.next_event().await? {
//!     match event {
//!         ReplicationMessage::XLogData(data) => {
//!             if let LogicalMessage::Commit(commit) = data.logical_message()? {
//!                 // ... once the transaction's invalidations are applied:
//!                 stream.send_status(commit.end_lsn, commit.end_lsn, commit.end_lsn, false).await?;
//!             }
//!         }
//!         ReplicationMessage::PrimaryKeepalive(keepalive) if keepalive.reply_requested => {
//!             // Report the last applied position (not keepalive.wal_end, unless nothing is
//!             // in flight).
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
mod conninfo;
mod error;
mod lsn;
pub mod pgoutput;
pub mod protocol;
mod reader;
mod timestamp;
mod tls;

pub use crate::error::{DbError, DecodeError, Error};
pub use crate::lsn::{Lsn, ParseLsnError};
pub use crate::timestamp::PgTimestamp;

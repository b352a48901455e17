//! The replication connection: startup in `replication=database` mode, authentication, simple
//! queries (replication commands and plain SQL), and the CopyBoth stream of
//! `START_REPLICATION`.
//!
//! tokio-postgres has no replication mode, so this module speaks the frontend/backend protocol
//! itself on postgres-protocol's message codecs and SCRAM implementation. postgres-protocol's
//! [`Message::parse`] knows no CopyBothResponse (`W`): frames are framed here first (tag byte
//! and length), `W` and CopyData (`d`) are handled here and every other message goes to
//! [`Message::parse`].
//!
//! # Session settings
//!
//! The startup packet pins the session's text formats ([`SESSION_PARAMETERS`]:
//! `client_encoding=UTF8`, `DateStyle=ISO`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `bytea_output=hex`) so that the text values pgoutput sends are in the canonical forms the
//! key builder expects, and sets `application_name` to [`APPLICATION_NAME`].
//!
//! # Dead peers
//!
//! A server that vanishes without a FIN or RST (a pulled cable, a firewall that drops packets,
//! a frozen VM) must not leave the socket waiting forever. Every connection gets TCP keepalives
//! and, on Linux and Android, `TCP_USER_TIMEOUT` ([`ReplicationConfig::keepalives_idle`] and
//! the settings after it; defaults [`DEFAULT_KEEPALIVES_IDLE`], [`DEFAULT_KEEPALIVES_INTERVAL`],
//! [`DEFAULT_KEEPALIVES_RETRIES`], [`DEFAULT_TCP_USER_TIMEOUT`]), so a dead peer is detected
//! within about 25 s whether the connection is idle or has data in flight.
//! [`parse_connection_string`] puts the same defaults into the tokio-postgres configuration it
//! returns, so SQL sessions opened from it get them too.
//!
//! # Limits
//!
//! - Frames are bounded ([`ReplicationConfig::max_frame_len`], [`DEFAULT_MAX_FRAME_LEN`] =
//!   64 MiB by default), so a hostile server or a man in the middle cannot make the client
//!   allocate without limit: memory is reserved as bytes arrive, never from an announced
//!   length. WAL data can legitimately be longer (a pgoutput message is built in one buffer of
//!   up to 1 GiB: a wide row under `REPLICA IDENTITY FULL`); such a CopyData is returned as
//!   [`ReplicationMessage::OversizedXLogData`] with its head (which names the relation), and
//!   the rest is read past in 1 MiB chunks without being kept. Any other frame over the limit
//!   ends the connection with [`Error::FrameTooLarge`].
//! - Unix-socket hosts are unsupported.
//! - GSSAPI, SSPI and Kerberos authentication are unsupported; trust, cleartext password, md5
//!   and SCRAM-SHA-256 (without channel binding, also over TLS) work.
//!
//! # TLS
//!
//! rustls with the ring provider, negotiated as libpq does by default
//! (`sslnegotiation=postgres`): an SSLRequest, the server's one-byte answer, the handshake,
//! then the startup inside TLS. [`SslMode`] lists what each `sslmode` checks; the default is
//! `prefer`, as in libpq. Supported in connection strings: `sslmode` (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`), `sslrootcert=PATH` (a PEM file of one or more CA
//! certificates, read at each connect), and `sslcert=PATH` with `sslkey=PATH` (a client
//! certificate and its unencrypted private key for mutual TLS, PEM, read at each connect; see
//! [`ClientCert`]). Not supported: `sslmode=allow`, `sslnegotiation=direct`,
//! `sslrootcert=system`, `sslpassword` (encrypted keys), `sslcrl`, `channel_binding=require`,
//! the `PGSSL*` environment variables, `~/.postgresql/root.crt` and
//! `~/.postgresql/postgresql.crt`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{
    DataRowBody, ErrorResponseBody, Message, NoticeResponseBody,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{DbError, Error};
use crate::lsn::Lsn;
use crate::protocol::{
    ReplicationMessage, StandbyStatusUpdate, OVERSIZED_HEAD_LEN, XLOGDATA_HEADER_LEN,
};
use crate::timestamp::PgTimestamp;
pub use crate::tls::{
    client_config as tls_client_config, client_config_with_cert as tls_client_config_with_cert,
    ClientCert, ClientCertPem, SslMode,
};
use crate::tls::{Stream, TlsSetup};

/// The `application_name` of every replication connection. Fixed, so that
/// `synchronous_standby_names` can be checked against it.
pub const APPLICATION_NAME: &str = "walcached";

/// Session settings sent in the startup packet.
pub const SESSION_PARAMETERS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

/// The default maximum length of one protocol message body kept in memory: 64 MiB. Longer
/// WAL data is read past ([`ReplicationMessage::OversizedXLogData`]); any other longer frame
/// is an error ([`Error::FrameTooLarge`]).
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 << 20;

/// The default connect timeout, covering TCP connect, authentication and startup.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default idle time before the first TCP keepalive probe (libpq's `keepalives_idle`):
/// 10 s.
///
/// With [`DEFAULT_KEEPALIVES_INTERVAL`] and [`DEFAULT_KEEPALIVES_RETRIES`], an idle connection
/// to a peer that vanished without a word is dropped within 10 + 3 × 5 = 25 s (sooner on Linux,
/// where [`DEFAULT_TCP_USER_TIMEOUT`] also ends unanswered probes after 20 s), instead of the
/// 2 h 11 min of the usual system defaults. Probes are answered by the peer's kernel, so a busy
/// but healthy server, a long query or a quiet stream never trips them; their cost is one
/// small packet per idle connection every 10 s.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(10);

/// The default interval between unanswered TCP keepalive probes (libpq's
/// `keepalives_interval`): 5 s. See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);

/// The default number of unanswered TCP keepalive probes before the connection is dropped
/// (libpq's `keepalives_count`): 3, so one or two lost probes do not end a healthy
/// connection. See [`DEFAULT_KEEPALIVES_IDLE`].
pub const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;

/// The default `TCP_USER_TIMEOUT` (libpq's `tcp_user_timeout`; Linux and Android only): 20 s.
///
/// Keepalives only probe idle connections. When data is in flight (a status update, a query)
/// and the peer is gone, the kernel retransmits instead, with exponential backoff, for about
/// 15 minutes by default (`tcp_retries2`). This timeout drops the connection once sent data has
/// stayed unacknowledged for 20 s, which still leaves room for several retransmissions over a
/// lossy link; with keepalives on, it also ends unanswered probes after 20 s. Together with the
/// keepalive defaults, a dead peer is detected within about 25 s, data in flight or not.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// tokio-postgres's own `keepalives_idle` default (2 h), which it cannot tell from an explicit
/// `keepalives_idle=7200`: both are taken as "not set".
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

mod config;
mod connection;

use connection::{
    configure_dead_peer_detection, db_error, decode_row, negotiate_tls, protocol, Connection, Frame,
};

pub use config::{
    apply_tcp_defaults, parse_connection_string, ParsedConnectionString, ReplicationConfig,
};

/// The reply to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database connected to.
    pub dbname: Option<String>,
}

/// The reply to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot_name: String,
    /// The position from which the slot streams: every transaction committed after it.
    pub consistent_point: Lsn,
    /// The exported snapshot, if one was requested (never by this client).
    pub snapshot_name: Option<String>,
    /// The output plugin.
    pub output_plugin: Option<String>,
}

/// What `START_REPLICATION` streams: a logical slot, from a position, through pgoutput
/// (protocol version 1) for some publications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReplication {
    slot: String,
    publications: Vec<String>,
    start_lsn: Lsn,
    messages: bool,
}

impl StartReplication {
    /// Streams `slot` for `publications`, from the slot's confirmed position, with logical
    /// messages.
    pub fn new<I, S>(slot: impl Into<String>, publications: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StartReplication {
            slot: slot.into(),
            publications: publications.into_iter().map(Into::into).collect(),
            start_lsn: Lsn::INVALID,
            messages: true,
        }
    }

    /// The position to start from. Default: [`Lsn::INVALID`], which means the slot's
    /// `confirmed_flush_lsn`; the server never streams from before it anyway.
    pub fn start_lsn(mut self, lsn: Lsn) -> Self {
        self.start_lsn = lsn;
        self
    }

    /// Whether to receive `pg_logical_emit_message` messages (pgoutput's `messages` option,
    /// PostgreSQL 14 and later). Default: `true`.
    pub fn messages(mut self, messages: bool) -> Self {
        self.messages = messages;
        self
    }

    /// The `START_REPLICATION` command.
    fn command(&self) -> String {
        let publications = self
            .publications
            .iter()
            .map(|name| quote_ident(name))
            .collect::<Vec<_>>()
            .join(",");
        let mut sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {}",
            quote_ident(&self.slot),
            self.start_lsn,
            quote_literal(&publications)
        );
        if self.messages {
            sql.push_str(", messages 'true'");
        }
        sql.push(')');
        sql
    }
}

/// One row of a simple query's result, in text format: `None` is NULL.
pub type SimpleRow = Vec<Option<String>>;

/// A replication connection in command mode.
///
/// [`start_replication`](Self::start_replication) consumes it and returns the
/// [`ReplicationStream`]; [`ReplicationStream::stop`] gives it back.
#[derive(Debug)]
pub struct ReplicationClient {
    conn: Connection,
}

impl ReplicationClient {
    /// Connects, authenticates and waits until the session is ready.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectTimeout`], [`Error::Io`], [`Error::Db`] (for instance `28P01` for a
    /// wrong password, `28000` without a `pg_hba.conf` entry), [`Error::Authentication`] when
    /// a password is needed but not configured or SCRAM fails, [`Error::Unsupported`] for
    /// other authentication methods; for TLS, [`Error::TlsRefused`] when the server does not
    /// do TLS and the ssl mode requires it, [`Error::Tls`] when the handshake or the
    /// certificate check fails, [`Error::RootCert`] when the root certificate cannot be
    /// loaded, [`Error::ClientCert`] when the client certificate or key cannot be used,
    /// [`Error::Config`] for `verify-ca`/`verify-full` without a root certificate.
    pub async fn connect(config: &ReplicationConfig) -> Result<Self, Error> {
        match tokio::time::timeout(config.connect_timeout, Self::connect_inner(config)).await {
            // With TLS 1.3 the server checks the client certificate after the client's side of
            // the handshake is done: its rejection (an alert such as `UnknownCA`) arrives on
            // the first read, as an I/O error wrapping rustls's. It is a TLS failure, not a
            // flaky socket.
            Ok(Err(Error::Io(e))) if e.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                Err(Error::Tls(e))
            }
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout),
        }
    }

    async fn connect_inner(config: &ReplicationConfig) -> Result<Self, Error> {
        // Configuration errors (a missing root certificate) come before any network I/O.
        let tls = match config.ssl_mode {
            SslMode::Disable => None,
            mode => Some(TlsSetup::new(
                mode,
                config.root_cert.as_deref(),
                config.client_cert.as_ref(),
                &config.host,
            )?),
        };
        let tcp = match config.hostaddr {
            Some(addr) => TcpStream::connect((addr, config.port)).await?,
            None => TcpStream::connect((config.host.as_str(), config.port)).await?,
        };
        tcp.set_nodelay(true)?;
        configure_dead_peer_detection(&tcp, config)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => negotiate_tls(tcp, tls, config).await?,
        };
        let mut conn = Connection::new(stream, config.max_frame_len);
        let mut params = vec![
            ("user", config.user.as_str()),
            ("database", config.dbname.as_str()),
            ("replication", "database"),
            ("application_name", APPLICATION_NAME),
        ];
        params.extend_from_slice(SESSION_PARAMETERS);
        frontend::startup_message(params, &mut conn.write_buf)
            .map_err(|_| Error::InvalidArgument("user or database name contains a NUL byte"))?;
        conn.send().await?;
        conn.authenticate(config).await?;
        loop {
            match conn.read_message().await? {
                Message::BackendKeyData(body) => conn.backend_pid = Some(body.process_id()),
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => return Err(db_error(&body)),
                _ => return Err(protocol("unexpected message during startup")),
            }
        }
        tracing::debug!(
            host = %config.host,
            port = config.port,
            pid = conn.backend_pid,
            tls = conn.stream.is_tls(),
            "replication connection ready"
        );
        Ok(ReplicationClient { conn })
    }

    /// A parameter the server reported (`ParameterStatus`), such as `server_version`,
    /// `DateStyle` or `TimeZone`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.parameters.get(name).map(String::as_str)
    }

    /// The server process id of this connection (from `BackendKeyData`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid
    }

    /// Whether the connection is encrypted (TLS).
    pub fn is_tls(&self) -> bool {
        self.conn.stream.is_tls()
    }

    /// Runs `sql` with the simple query protocol and returns the rows of all its statements,
    /// in text format. Accepts replication commands (`IDENTIFY_SYSTEM`, `SHOW`,
    /// `CREATE_REPLICATION_SLOT`...) and, in a `replication=database` session, plain SQL; not
    /// `COPY` nor `START_REPLICATION` (use [`start_replication`](Self::start_replication)).
    ///
    /// # Errors
    ///
    /// [`Error::Db`] when a statement fails (the connection stays usable),
    /// [`Error::InvalidArgument`] when `sql` contains a NUL byte, and connection errors.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, Error> {
        self.conn.query(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.conn.read_message().await? {
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::DataRow(body) => rows.push(decode_row(&body)?),
                Message::ErrorResponse(body) => error = Some(db_error(&body)),
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(error) => Err(error),
                        None => Ok(rows),
                    }
                }
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(Error::Unsupported("COPY through simple_query"))
                }
                _ => return Err(protocol("unexpected message in a simple query")),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    ///
    /// As [`simple_query`](Self::simple_query); [`Error::UnexpectedReply`] when the reply does
    /// not have the documented shape.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, Error> {
        const WHAT: &str = "IDENTIFY_SYSTEM";
        let rows = self.simple_query(WHAT).await?;
        let row = single_row(rows, 4, WHAT)?;
        Ok(IdentifySystem {
            system_id: column(&row, 0, WHAT)?.to_owned(),
            timeline: column(&row, 1, WHAT)?
                .parse()
                .map_err(|_| Error::UnexpectedReply(WHAT))?,
            xlog_pos: column(&row, 2, WHAT)?
                .parse()
                .map_err(|_| Error::UnexpectedReply(WHAT))?,
            dbname: row.get(3).cloned().flatten(),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput NOEXPORT_SNAPSHOT`. A
    /// temporary slot is dropped when the connection ends.
    ///
    /// # Errors
    ///
    /// As [`simple_query`](Self::simple_query), for instance `42710` when the slot exists.
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, Error> {
        const WHAT: &str = "CREATE_REPLICATION_SLOT";
        let sql = format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(name),
            if temporary { " TEMPORARY" } else { "" }
        );
        let row = single_row(self.simple_query(&sql).await?, 4, WHAT)?;
        Ok(CreatedSlot {
            slot_name: column(&row, 0, WHAT)?.to_owned(),
            consistent_point: column(&row, 1, WHAT)?
                .parse()
                .map_err(|_| Error::UnexpectedReply(WHAT))?,
            snapshot_name: row.get(2).cloned().flatten(),
            output_plugin: row.get(3).cloned().flatten(),
        })
    }

    /// `DROP_REPLICATION_SLOT name`.
    ///
    /// # Errors
    ///
    /// As [`simple_query`](Self::simple_query), for instance `42704` when there is no such
    /// slot or `55006` while another connection uses it.
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), Error> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
            .await
            .map(drop)
    }

    /// Starts streaming: `START_REPLICATION SLOT ... LOGICAL ...` with pgoutput protocol
    /// version 1.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] when the server refuses (no such slot or publication: `42704`; slot in
    /// use: `55006`), and connection errors. The connection is consumed either way.
    pub async fn start_replication(
        mut self,
        options: &StartReplication,
    ) -> Result<ReplicationStream, Error> {
        self.conn.query(&options.command()).await?;
        match self.conn.read_frame().await? {
            Frame::CopyBothResponse => {
                tracing::debug!(slot = %options.slot, start = %options.start_lsn, "replication started");
                Ok(ReplicationStream {
                    conn: self.conn,
                    server_done: false,
                    client_done: false,
                })
            }
            Frame::Message(Message::ErrorResponse(body)) => Err(db_error(&body)),
            _ => Err(protocol("unexpected reply to START_REPLICATION")),
        }
    }

    /// Ends the session politely (a Terminate message) and closes the socket.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the message cannot be sent.
    pub async fn close(mut self) -> Result<(), Error> {
        frontend::terminate(&mut self.conn.write_buf);
        self.conn.send().await?;
        self.conn.stream.shutdown().await?;
        Ok(())
    }
}

/// A running `START_REPLICATION`: receives [`ReplicationMessage`]s and sends status updates.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: Connection,
    /// The server sent CopyDone.
    server_done: bool,
    /// This side sent CopyDone.
    client_done: bool,
}

impl ReplicationStream {
    /// The next message from the server, or `None` once the server has ended the stream
    /// (CopyDone).
    ///
    /// Cancel-safe: bytes read before the future is dropped stay buffered, so it can be used in
    /// `tokio::select!`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for an undecodable CopyData payload, [`Error::Db`] when the server
    /// ends replication with an error, [`Error::FrameTooLarge`], and connection errors.
    pub async fn next_event(&mut self) -> Result<Option<ReplicationMessage>, Error> {
        if self.server_done {
            return Ok(None);
        }
        match self.conn.read_frame().await? {
            Frame::CopyData(payload) => Ok(Some(ReplicationMessage::decode(payload)?)),
            Frame::OversizedCopyData { head, len } => {
                Ok(Some(ReplicationMessage::decode_oversized(head, len)?))
            }
            Frame::Message(Message::CopyDone) => {
                self.server_done = true;
                Ok(None)
            }
            Frame::Message(Message::ErrorResponse(body)) => Err(db_error(&body)),
            _ => Err(protocol("unexpected message during replication")),
        }
    }

    /// Sends a standby status update stamped with the current time: positions written,
    /// flushed (what the slot's `confirmed_flush_lsn` moves to) and applied.
    ///
    /// Not cancel-safe: if the future is dropped before it completes, drop the stream too.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the message cannot be sent.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), Error> {
        self.send_status_update(&StandbyStatusUpdate {
            write_lsn: write,
            flush_lsn: flush,
            apply_lsn: apply,
            client_time: PgTimestamp::now(),
            reply_requested,
        })
        .await
    }

    /// Sends a prepared standby status update; see [`send_status`](Self::send_status).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the message cannot be sent.
    pub async fn send_status_update(&mut self, update: &StandbyStatusUpdate) -> Result<(), Error> {
        let buf = &mut self.conn.write_buf;
        buf.put_u8(b'd');
        // The payload is 34 bytes: the length always fits.
        buf.put_i32(4 + StandbyStatusUpdate::LEN as i32);
        update.encode(buf);
        self.conn.send().await
    }

    /// The server process id of this connection.
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.backend_pid
    }

    /// Ends streaming (CopyDone), discards what the server still sends until it finishes the
    /// command, and returns the connection in command mode.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] when the server reports an error, and connection errors.
    pub async fn stop(mut self) -> Result<ReplicationClient, Error> {
        if !self.client_done {
            frontend::copy_done(&mut self.conn.write_buf);
            self.conn.send().await?;
            self.client_done = true;
        }
        let mut error = None;
        loop {
            match self.conn.read_frame().await? {
                Frame::CopyData(_) | Frame::OversizedCopyData { .. } => {}
                Frame::Message(message) => match message {
                    Message::CopyDone
                    | Message::CommandComplete(_)
                    | Message::RowDescription(_)
                    | Message::DataRow(_) => {}
                    Message::ErrorResponse(body) => error = Some(db_error(&body)),
                    Message::ReadyForQuery(_) => {
                        return match error {
                            Some(error) => Err(error),
                            None => Ok(ReplicationClient { conn: self.conn }),
                        }
                    }
                    _ => return Err(protocol("unexpected message while stopping replication")),
                },
                Frame::CopyBothResponse => {
                    return Err(protocol("unexpected CopyBothResponse while stopping"))
                }
            }
        }
    }
}

fn single_row(
    rows: Vec<SimpleRow>,
    min_columns: usize,
    what: &'static str,
) -> Result<SimpleRow, Error> {
    match <[SimpleRow; 1]>::try_from(rows) {
        Ok([row]) if row.len() >= min_columns => Ok(row),
        _ => Err(Error::UnexpectedReply(what)),
    }
}

fn column<'a>(row: &'a SimpleRow, index: usize, what: &'static str) -> Result<&'a str, Error> {
    row.get(index)
        .and_then(Option::as_deref)
        .ok_or(Error::UnexpectedReply(what))
}

/// `"name"`, with embedded double quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded single quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests;

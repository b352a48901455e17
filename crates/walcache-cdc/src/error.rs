//! Error types: [`DecodeError`] for bytes that do not decode, [`Error`] for the connection.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::tls::SslMode;

/// Bytes received from PostgreSQL (a pgoutput message or a replication CopyData payload) do
/// not decode.
///
/// Decoding never panics and never allocates more than the input could hold, whatever the bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("truncated {what}: needed {needed} bytes, {remaining} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// A tag byte (message type, tuple marker, column kind...) has no known meaning.
    #[error("unknown {what} tag {tag:#04x}")]
    UnknownTag {
        /// What the tag identifies.
        what: &'static str,
        /// The byte received.
        tag: u8,
    },
    /// A length or count field is negative.
    #[error("negative {what}: {len}")]
    NegativeLength {
        /// The field.
        what: &'static str,
        /// The value received.
        len: i64,
    },
    /// A string field has no NUL terminator.
    #[error("unterminated string in {what}")]
    UnterminatedString {
        /// The field.
        what: &'static str,
    },
    /// A string field is not UTF-8 (the connection asks for `client_encoding=UTF8`).
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        what: &'static str,
        /// Where the bytes stop being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },
    /// Bytes remain after a complete message.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes {
        /// The message.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
}

/// An error reported by the server (an `ErrorResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    /// `S`: the severity (`ERROR`, `FATAL`, `PANIC`), localized.
    pub severity: String,
    /// `C`: the SQLSTATE code, such as `42704` or `28P01`.
    pub code: String,
    /// `M`: the primary message.
    pub message: String,
    /// `D`: the detail, if any.
    pub detail: Option<String>,
    /// `H`: the hint, if any.
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// An error of the replication connection.
///
/// [`is_retryable`](Error::is_retryable) tells whether reconnecting may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the socket failed.
    #[error("I/O error on the replication connection")]
    Io(#[source] io::Error),
    /// The server closed the connection.
    #[error("the server closed the replication connection")]
    Closed,
    /// Connecting took longer than the configured connect timeout.
    #[error("connecting to PostgreSQL timed out")]
    ConnectTimeout,
    /// The server reported an error.
    #[error("PostgreSQL reported an error")]
    Db(#[source] Box<DbError>),
    /// The server's bytes do not follow the protocol (unexpected message, bad framing).
    #[error("protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: &'static str,
        /// The underlying parse error, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// A CopyData payload did not decode.
    #[error("undecodable replication message")]
    Decode(#[from] DecodeError),
    /// The server announced a message larger than the configured maximum frame length.
    #[error("message of {len} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// Authentication could not be carried out (no password configured, SCRAM failure).
    #[error("authentication failed: {reason}")]
    Authentication {
        /// What failed.
        reason: &'static str,
        /// The SCRAM error, if any.
        #[source]
        source: Option<io::Error>,
    },
    /// The server asked for, or the configuration names, something this client does not do.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The configuration is invalid.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: &'static str,
        /// The connection-string parse error, if any.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// The server refused TLS (it answered `N` to the SSLRequest) and the ssl mode requires
    /// it.
    #[error(
        "the server does not accept TLS connections (it refused the SSLRequest) and \
         sslmode={mode} requires TLS: enable ssl on the server or lower sslmode"
    )]
    TlsRefused {
        /// The configured mode (`require`, `verify-ca` or `verify-full`).
        mode: SslMode,
    },
    /// The TLS handshake failed: the server's certificate does not verify (unknown CA,
    /// expired, wrong host name for `verify-full`), the server rejected the client
    /// certificate (an alert such as `UnknownCA` or `CertificateRequired`, received while
    /// connecting), or the peers do not agree on TLS. The source is an [`io::Error`] wrapping
    /// the `rustls::Error`.
    #[error("TLS handshake with the server failed")]
    Tls(#[source] io::Error),
    /// The root certificate file (`sslrootcert`) cannot be used.
    #[error("cannot load the root certificate {}: {reason}", path.display())]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The client certificate (`sslcert`) or its private key (`sslkey`) cannot be used: the
    /// file cannot be read, holds no certificate or no key, the key is encrypted or of a kind
    /// the TLS library does not take, or it does not belong to the certificate. The message
    /// names the file and the problem, never the key's content.
    #[error("cannot load the client {what} {}: {reason}", path.display())]
    ClientCert {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and the fix.
        reason: &'static str,
        /// The underlying error, if any (never one quoting the key).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An argument cannot be sent (for example a query containing a NUL byte).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A reply had an unexpected shape (for example a missing column in `IDENTIFY_SYSTEM`).
    #[error("unexpected reply to {0}")]
    UnexpectedReply(&'static str),
}

impl Error {
    /// Whether reconnecting and retrying may succeed: I/O errors, a closed connection, a
    /// timeout, and server errors of class 08 (connection exception), 53 (insufficient
    /// resources), 55 (object in use, such as an active replication slot), 57 (operator
    /// intervention, such as a shutdown) and 58 (system error).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io(_) | Error::Closed | Error::ConnectTimeout => true,
            Error::Db(db) => ["08", "53", "55", "57", "58"]
                .iter()
                .any(|class| db.code.starts_with(class)),
            _ => false,
        }
    }

    /// The server's error, when this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Error::Db(db) => Some(db),
            _ => None,
        }
    }

    /// The SQLSTATE code of a server error.
    pub fn code(&self) -> Option<&str> {
        self.as_db_error().map(|db| db.code.as_str())
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Io(error)
    }
}

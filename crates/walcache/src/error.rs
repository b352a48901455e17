//! The library's one error type.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What went wrong, coarsely; match on it to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A builder setting is invalid. The message names the setting, the value and the fix.
    Config,
    /// The caller's loader returned an error; [`Error::loader_error`] gives it back typed.
    Loader,
    /// Redis answered with an error, or the connection failed.
    Redis,
    /// A Redis call did not answer within the configured timeout.
    Timeout,
    /// The circuit breaker around Redis is open: the call was not attempted.
    BreakerOpen,
    /// A value could not be encoded or decoded by the cache's codec.
    Codec,
    /// A key, tag or namespace is not valid.
    InvalidName,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Loader => "the loader failed",
            ErrorKind::Redis => "redis error",
            ErrorKind::Timeout => "redis call timed out",
            ErrorKind::BreakerOpen => "circuit breaker around redis is open",
            ErrorKind::Codec => "codec error",
            ErrorKind::InvalidName => "invalid name",
        })
    }
}

/// The error of every fallible walcache call: a [`ErrorKind`], a message and an optional source.
///
/// Cheap to clone: single-flight hands one load's outcome to every caller that waited for it.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Option<Arc<str>>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            message: None,
            source: None,
        }
    }

    pub(crate) fn with_message(mut self, message: impl Into<Arc<str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub(crate) fn config(message: impl Into<Arc<str>>) -> Self {
        Error::new(ErrorKind::Config).with_message(message)
    }

    pub(crate) fn loader<E: StdError + Send + Sync + 'static>(e: E) -> Self {
        Error::new(ErrorKind::Loader).with_source(e)
    }

    pub(crate) fn redis(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            Error::new(ErrorKind::Timeout).with_source(e)
        } else {
            Error::new(ErrorKind::Redis).with_source(e)
        }
    }

    pub(crate) fn timeout() -> Self {
        Error::new(ErrorKind::Timeout)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again later can help (Redis trouble, timeouts, an open breaker, a loader
    /// failure); configuration and codec errors stay until the code or config changes.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Redis | ErrorKind::Timeout | ErrorKind::BreakerOpen | ErrorKind::Loader
        )
    }

    /// The loader's own error, if this error came from the loader and has type `E`.
    pub fn loader_error<E: StdError + 'static>(&self) -> Option<&E> {
        if self.kind != ErrorKind::Loader {
            return None;
        }
        self.source.as_deref()?.downcast_ref::<E>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{}: {m}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

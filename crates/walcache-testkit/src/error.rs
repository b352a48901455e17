//! The testkit's error type.

use std::io;
use std::path::PathBuf;

/// Why a test server could not be prepared, started or reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server binary is not installed.
    #[error("{binary} not found: install it with `apt-get install -y {package}`")]
    MissingBinary {
        /// The program that was looked for, e.g. `redis-server`.
        binary: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A program could not be executed at all.
    #[error("could not run {program}")]
    Spawn {
        /// The program (and, when it ran through `setpriv`, the user it ran as).
        program: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A helper program ran but exited unsuccessfully.
    #[error("{program} exited with {status}:\n{output}")]
    Command {
        /// The program that failed.
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error and output.
        output: String,
    },
    /// A server was started but never became ready.
    #[error("{server} did not start: {reason}\n--- end of its log ---\n{log_tail}")]
    Startup {
        /// `"redis-server"` or `"postgres"`.
        server: &'static str,
        /// What went wrong (exited early, deadline passed, ...).
        reason: String,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// A file-system operation failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. `"creating directory"`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Running as root, no unprivileged user could be found or created for PostgreSQL.
    #[error("PostgreSQL refuses to run as root and no unprivileged user is available: {reason}")]
    NoUnprivilegedUser {
        /// Why the user could not be found or created.
        reason: String,
    },
    /// A [`PgOptions`](crate::PgOptions) value the server cannot start with.
    #[error("invalid PostgreSQL server option: {reason}")]
    InvalidOption {
        /// What is wrong with it.
        reason: String,
    },
    /// Another process held the template lock for too long.
    #[error("timed out waiting for the initdb template lock {}", path.display())]
    TemplateLock {
        /// The lock file.
        path: PathBuf,
    },
    /// A PostgreSQL client operation failed.
    #[error("PostgreSQL client error")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The testkit's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

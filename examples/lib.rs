//! What the examples share: the servers they run against, and errors printed with their causes.
//!
//! - [`Servers::from_env`]: `DATABASE_URL` and `REDIS_URL`, each on its own. A variable that is
//!   set names the server to use; for one that is not, a private server is started for the
//!   run (the test kit's, on a free loopback port) and stopped at the end. Either way the
//!   example prints which servers it uses.
//! - [`Failed`] and [`Context`]: an error that says what was being done ("connecting to Redis
//!   at redis://127.0.0.1:6379/ (from REDIS_URL)"), with the error underneath as its source.
//! - [`exit_code`]: prints an error and its chain of causes with `Display`, one line each.

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;

use walcache_testkit::{PgServer, RedisServer};

/// An error with what was being done when it happened; the error underneath is its
/// [`source`](StdError::source).
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct Failed {
    context: String,
    #[source]
    source: Box<dyn StdError + Send + Sync + 'static>,
}

impl Failed {
    /// `source`, while doing `context`.
    pub fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Failed {
        Failed {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Adds what was being done to an error: `.context(|| format!("connecting to {url}"))`.
pub trait Context<T> {
    /// Wraps the error in a [`Failed`] saying `context`.
    ///
    /// # Errors
    ///
    /// The wrapped error, if `self` is one.
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Failed>;
}

impl<T, E> Context<T> for Result<T, E>
where
    E: StdError + Send + Sync + 'static,
{
    fn context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T, Failed> {
        self.map_err(|e| Failed::new(context(), e))
    }
}

/// Prints `error` and every cause under it, with `Display`, one line each:
///
/// ```text
/// error: connecting to Redis at redis://127.0.0.1:6379/ (from REDIS_URL)
///   caused by: connection error: subscribing to the invalidation channels
///   caused by: Connection refused (os error 111)
/// ```
///
/// A cause whose text the line above already ends with (some errors print their source in
/// their own message) is not repeated.
pub fn print_error(error: &(dyn StdError + 'static)) {
    for line in error_lines(error) {
        eprintln!("{line}");
    }
}

/// The lines [`print_error`] prints.
pub fn error_lines(error: &(dyn StdError + 'static)) -> Vec<String> {
    let mut lines = vec![format!("error: {error}")];
    let mut above = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !above.ends_with(&text) {
            lines.push(format!("  caused by: {text}"));
        }
        above = text;
        cause = e.source();
    }
    lines
}

/// The process's exit code for `result`: success, or 1 after [`print_error`].
pub fn exit_code(result: Result<(), Box<dyn StdError>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(e.as_ref());
            ExitCode::FAILURE
        }
    }
}

/// Where a server came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The environment variable of that name.
    Env(&'static str),
    /// Started for this run, stopped at its end.
    Private,
}

/// A server URL and where it came from. `Display` shows the URL without its password.
#[derive(Debug, Clone)]
pub struct ServerUrl {
    url: String,
    origin: Origin,
}

impl ServerUrl {
    /// The URL, password included: for connecting, never for printing.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where it came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = redact(&self.url);
        match self.origin {
            Origin::Env(var) => write!(f, "{url} (from {var})"),
            Origin::Private => write!(f, "{url} (private, started for this run)"),
        }
    }
}

/// `url` without its secrets (the password of its user info, `password=` parameters, libpq's
/// key/value form): the daemon's and the library's redaction, for printing.
pub fn redact(url: &str) -> String {
    walcache_protocol::redact::redact_connection_string(url)
}

/// The PostgreSQL and Redis an example runs against (see the [crate docs](crate)). Private
/// servers stop when this is dropped.
#[derive(Debug)]
pub struct Servers {
    /// PostgreSQL: a database to create tables in.
    pub database: ServerUrl,
    /// Redis.
    pub redis: ServerUrl,
    _pg: Option<PgServer>,
    _redis: Option<RedisServer>,
}

impl Servers {
    /// `DATABASE_URL` and `REDIS_URL`, each on its own; for a variable that is not set (or
    /// empty), a private server (a new database named after `database` on a private
    /// PostgreSQL). Prints which servers are used.
    ///
    /// # Errors
    ///
    /// A variable that is not valid UTF-8, or a private server that cannot start (PostgreSQL
    /// or Redis not installed: the message says what to install).
    pub async fn from_env(database: &str) -> Result<Servers, Failed> {
        let (database, pg) = match env_url("DATABASE_URL")? {
            Some(url) => (url, None),
            None => {
                let pg = PgServer::start().context(|| {
                    "starting a private PostgreSQL (DATABASE_URL is not set)".to_owned()
                })?;
                let name = pg
                    .create_database(database)
                    .await
                    .context(|| "creating a database on the private PostgreSQL".to_owned())?;
                let url = ServerUrl {
                    url: pg.url(&name),
                    origin: Origin::Private,
                };
                (url, Some(pg))
            }
        };
        let (redis, redis_server) = match env_url("REDIS_URL")? {
            Some(url) => (url, None),
            None => {
                let server = RedisServer::start()
                    .context(|| "starting a private Redis (REDIS_URL is not set)".to_owned())?;
                let url = ServerUrl {
                    url: server.url(),
                    origin: Origin::Private,
                };
                (url, Some(server))
            }
        };
        println!("PostgreSQL: {database}");
        println!("Redis:      {redis}");
        let unset: Vec<&str> = [
            (pg.is_some(), "DATABASE_URL"),
            (redis_server.is_some(), "REDIS_URL"),
        ]
        .into_iter()
        .filter_map(|(private, var)| private.then_some(var))
        .collect();
        if !unset.is_empty() {
            println!("            (set {} to use yours)", unset.join(" and "));
        }
        Ok(Servers {
            database,
            redis,
            _pg: pg,
            _redis: redis_server,
        })
    }

    /// A connection to [`database`](Self::database) (plain TCP; its driver runs on a task of
    /// its own).
    ///
    /// # Errors
    ///
    /// When PostgreSQL cannot be reached or refuses the connection: the message names the URL.
    pub async fn connect_postgres(&self) -> Result<tokio_postgres::Client, Failed> {
        let (client, connection) =
            tokio_postgres::connect(self.database.url(), tokio_postgres::NoTls)
                .await
                .context(|| format!("connecting to PostgreSQL at {}", self.database))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                print_error(&Failed::new("the PostgreSQL connection ended", e));
            }
        });
        Ok(client)
    }
}

/// The variable `name`, if set and not empty.
fn env_url(name: &'static str) -> Result<Option<ServerUrl>, Failed> {
    match std::env::var(name) {
        Ok(url) if url.is_empty() => Ok(None),
        Ok(url) => Ok(Some(ServerUrl {
            url,
            origin: Origin::Env(name),
        })),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(Failed::new(format!("reading {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_printed_urls() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/app?sslmode=require"),
            "postgres://app:<redacted>@db.example:5432/app?sslmode=require"
        );
        assert_eq!(
            redact("redis://:s3cret@127.0.0.1:6379/"),
            "redis://:<redacted>@127.0.0.1:6379/"
        );
        assert_eq!(
            redact("postgres://app@db/app?password=s3cret&sslmode=require"),
            "postgres://app@db/app?password=<redacted>&sslmode=require"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("connection refused")]
        struct Io;
        #[derive(Debug, thiserror::Error)]
        #[error("error connecting to server: connection refused")]
        struct Db(#[source] Io);
        let e = Failed::new("connecting to PostgreSQL at postgres://x", Db(Io));
        assert_eq!(
            error_lines(&e),
            [
                "error: connecting to PostgreSQL at postgres://x",
                "  caused by: error connecting to server: connection refused",
            ]
        );
    }
}

//! Where and how to connect: [`ReplicationConfig`] and the libpq connection strings it is
//! parsed from.

use super::*;

/// Where and how to open a replication connection.
///
/// The password is redacted in `Debug`.
#[derive(Clone)]
pub struct ReplicationConfig {
    pub(super) host: String,
    pub(super) hostaddr: Option<IpAddr>,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: Option<Vec<u8>>,
    pub(super) dbname: String,
    pub(super) connect_timeout: Duration,
    pub(super) max_frame_len: usize,
    pub(super) ssl_mode: SslMode,
    pub(super) root_cert: Option<PathBuf>,
    pub(super) client_cert: Option<ClientCert>,
    pub(super) keepalives: bool,
    pub(super) keepalives_idle: Duration,
    pub(super) keepalives_interval: Duration,
    pub(super) keepalives_retries: u32,
    pub(super) tcp_user_timeout: Duration,
}

impl fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_frame_len", &self.max_frame_len)
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .field("keepalives", &self.keepalives)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_retries", &self.keepalives_retries)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .finish()
    }
}

impl ReplicationConfig {
    /// A configuration for `user` on database `dbname` at `host:port` (TCP), without password.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        dbname: impl Into<String>,
    ) -> Self {
        ReplicationConfig {
            host: host.into(),
            hostaddr: None,
            port,
            user: user.into(),
            password: None,
            dbname: dbname.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            ssl_mode: SslMode::default(),
            root_cert: None,
            client_cert: None,
            keepalives: true,
            keepalives_idle: DEFAULT_KEEPALIVES_IDLE,
            keepalives_interval: DEFAULT_KEEPALIVES_INTERVAL,
            keepalives_retries: DEFAULT_KEEPALIVES_RETRIES,
            tcp_user_timeout: DEFAULT_TCP_USER_TIMEOUT,
        }
    }

    /// The password, for cleartext, md5 or SCRAM-SHA-256 authentication. Default: none.
    pub fn password(mut self, password: impl Into<Vec<u8>>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How long connecting, authenticating and starting the session may take. Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`] (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest message body kept in memory, in bytes. Default: [`DEFAULT_MAX_FRAME_LEN`]
    /// (64 MiB). Longer WAL data arrives as
    /// [`ReplicationMessage::OversizedXLogData`](crate::protocol::ReplicationMessage::OversizedXLogData);
    /// any other longer message ends the connection ([`Error::FrameTooLarge`]).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Whether to use TLS and what to verify (libpq's `sslmode`). Default:
    /// [`SslMode::Prefer`].
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self
    }

    /// The CA certificate(s) the server's certificate must chain to (libpq's `sslrootcert`):
    /// a PEM file, read at each connect. Needed by [`SslMode::VerifyCa`] and
    /// [`SslMode::VerifyFull`]; with [`SslMode::Prefer`] or [`SslMode::Require`] it makes the
    /// chain verified too, as in libpq. Default: none.
    pub fn root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_cert = Some(path.into());
        self
    }

    /// A client certificate and its private key, presented when the server asks for one
    /// (mutual TLS; libpq's `sslcert` and `sslkey`): PEM files, read at each connect. For a
    /// role the server authenticates with `cert` in `pg_hba.conf` (the certificate's CN is the
    /// role), or `clientcert=verify-full`. See [`ClientCert`] for the files' shapes. Ignored
    /// with [`SslMode::Disable`], and with [`SslMode::Prefer`] against a server without TLS.
    /// Default: none.
    ///
    /// Connecting fails with [`Error::ClientCert`] (naming the file and the problem) when a
    /// file cannot be used, before any network I/O; without a certificate, a server that
    /// requires one refuses the connection ([`Error::Db`] with SQLSTATE `28000`, or
    /// [`Error::Tls`] when the server rejects the handshake).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(ClientCert::new(cert, key));
        self
    }

    /// The IP address to connect to instead of resolving the host (libpq's `hostaddr`); the
    /// host stays the name [`SslMode::VerifyFull`] checks. Default: none.
    pub fn hostaddr(mut self, addr: IpAddr) -> Self {
        self.hostaddr = Some(addr);
        self
    }

    /// Whether to send TCP keepalive probes on an idle connection (libpq's `keepalives`).
    /// Default: `true`. See [`DEFAULT_KEEPALIVES_IDLE`] for why.
    pub fn keepalives(mut self, on: bool) -> Self {
        self.keepalives = on;
        self
    }

    /// Idle time before the first keepalive probe (libpq's `keepalives_idle`); zero leaves the
    /// system default. Default: [`DEFAULT_KEEPALIVES_IDLE`] (10 s).
    pub fn keepalives_idle(mut self, idle: Duration) -> Self {
        self.keepalives_idle = idle;
        self
    }

    /// Time between unanswered keepalive probes (libpq's `keepalives_interval`); zero leaves
    /// the system default. Default: [`DEFAULT_KEEPALIVES_INTERVAL`] (5 s). Not set on systems
    /// without `TCP_KEEPINTVL`.
    pub fn keepalives_interval(mut self, interval: Duration) -> Self {
        self.keepalives_interval = interval;
        self
    }

    /// Unanswered keepalive probes before the connection is dropped (libpq's
    /// `keepalives_count`); zero leaves the system default. Default:
    /// [`DEFAULT_KEEPALIVES_RETRIES`] (3). Not set on systems without `TCP_KEEPCNT`.
    pub fn keepalives_retries(mut self, retries: u32) -> Self {
        self.keepalives_retries = retries;
        self
    }

    /// How long sent data may stay unacknowledged before the connection is dropped
    /// (`TCP_USER_TIMEOUT`, libpq's `tcp_user_timeout`; Linux and Android only, ignored
    /// elsewhere); zero leaves the system default. Default: [`DEFAULT_TCP_USER_TIMEOUT`] (20 s).
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.tcp_user_timeout = timeout;
        self
    }

    /// Whether TCP keepalives are on.
    pub fn get_keepalives(&self) -> bool {
        self.keepalives
    }

    /// The keepalive idle time (zero: the system default).
    pub fn get_keepalives_idle(&self) -> Duration {
        self.keepalives_idle
    }

    /// The keepalive probe interval (zero: the system default).
    pub fn get_keepalives_interval(&self) -> Duration {
        self.keepalives_interval
    }

    /// The keepalive probe count (zero: the system default).
    pub fn get_keepalives_retries(&self) -> u32 {
        self.keepalives_retries
    }

    /// The `TCP_USER_TIMEOUT` (zero: the system default).
    pub fn get_tcp_user_timeout(&self) -> Duration {
        self.tcp_user_timeout
    }

    /// The configured ssl mode.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The configured root certificate file.
    pub fn get_root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// The configured client certificate and key.
    pub fn get_client_cert(&self) -> Option<&ClientCert> {
        self.client_cert.as_ref()
    }

    /// The host connected to (and, for [`SslMode::VerifyFull`], the name checked).
    pub fn get_host(&self) -> &str {
        &self.host
    }

    /// The port connected to.
    pub fn get_port(&self) -> u16 {
        self.port
    }

    /// Takes host, hostaddr, port, user, password, database name, connect timeout, ssl mode
    /// (`disable`, `prefer` or `require`, all tokio-postgres knows), TCP keepalive settings and
    /// TCP user timeout from a tokio-postgres configuration (parsed from a URL or a `key=value`
    /// string). Keepalive and user-timeout settings the configuration leaves unset (or zero)
    /// keep this crate's defaults, as in [`apply_tcp_defaults`]; `keepalives=0` turns
    /// keepalives off. `options` are not taken: no session setting of the SQL sessions (a
    /// `statement_timeout`, say) reaches the replication connection. The first host is used; the
    /// port defaults to 5432 and the database to the user's name; the first `hostaddr`, if
    /// any, is where to connect (without a host, it is the host too). For `verify-ca`,
    /// `verify-full`, `sslrootcert`, `sslcert` and `sslkey`, which tokio-postgres's parser
    /// rejects, parse with [`parse_connection_string`] or set them with
    /// [`ssl_mode`](Self::ssl_mode), [`root_cert`](Self::root_cert) and
    /// [`client_cert`](Self::client_cert).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without a user; [`Error::Unsupported`] for a Unix-socket host,
    /// `sslnegotiation=direct` or `channel_binding=require`.
    pub fn from_pg_config(config: &tokio_postgres::Config) -> Result<Self, Error> {
        use tokio_postgres::config::{ChannelBinding, SslMode as PgSslMode, SslNegotiation};
        let ssl_mode = match config.get_ssl_mode() {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require => SslMode::Require,
            _ => return Err(Error::Unsupported("this sslmode")),
        };
        if config.get_ssl_negotiation() == SslNegotiation::Direct {
            return Err(Error::Unsupported("sslnegotiation=direct"));
        }
        if config.get_channel_binding() == ChannelBinding::Require {
            return Err(Error::Unsupported("channel_binding=require"));
        }
        let hostaddr = config.get_hostaddrs().first().copied();
        let host = match config.get_hosts().first() {
            None => hostaddr.map_or_else(|| "localhost".to_owned(), |addr| addr.to_string()),
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            // `Host::Unix`, which exists on Unix only.
            #[allow(unreachable_patterns)]
            Some(_) => return Err(Error::Unsupported("Unix-socket hosts")),
        };
        let user = config.get_user().ok_or(Error::Config {
            reason: "the connection string has no user: add user=NAME",
            source: None,
        })?;
        let mut out = ReplicationConfig::new(
            host,
            config.get_ports().first().copied().unwrap_or(5432),
            user,
            config.get_dbname().unwrap_or(user),
        );
        if let Some(password) = config.get_password() {
            out = out.password(password);
        }
        if let Some(timeout) = config.get_connect_timeout() {
            out = out.connect_timeout(*timeout);
        }
        let mut tcp = config.clone();
        apply_tcp_defaults(&mut tcp);
        out.keepalives = tcp.get_keepalives();
        out.keepalives_idle = tcp.get_keepalives_idle();
        out.keepalives_interval = tcp
            .get_keepalives_interval()
            .unwrap_or(DEFAULT_KEEPALIVES_INTERVAL);
        out.keepalives_retries = tcp
            .get_keepalives_retries()
            .unwrap_or(DEFAULT_KEEPALIVES_RETRIES);
        out.tcp_user_timeout = tcp
            .get_tcp_user_timeout()
            .copied()
            .unwrap_or(DEFAULT_TCP_USER_TIMEOUT);
        out.hostaddr = hostaddr;
        Ok(out.ssl_mode(ssl_mode))
    }
}

/// Fills this crate's dead-peer defaults into a tokio-postgres configuration wherever it has
/// none: `keepalives_idle` [`DEFAULT_KEEPALIVES_IDLE`], `keepalives_interval`
/// [`DEFAULT_KEEPALIVES_INTERVAL`], `keepalives_retries` [`DEFAULT_KEEPALIVES_RETRIES`] and
/// `tcp_user_timeout` [`DEFAULT_TCP_USER_TIMEOUT`]. Settings already there are kept, and so is
/// `keepalives=0` (keepalives off).
///
/// "None" includes zero, which tokio-postgres's parser drops (libpq reads it as "the system
/// default"), and a `keepalives_idle` of exactly 2 h, which tokio-postgres cannot tell from
/// its own default.
pub fn apply_tcp_defaults(pg: &mut tokio_postgres::Config) {
    if pg.get_keepalives_idle() == TOKIO_POSTGRES_KEEPALIVES_IDLE
        || pg.get_keepalives_idle().is_zero()
    {
        pg.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if pg.get_keepalives_interval().is_none_or(|d| d.is_zero()) {
        pg.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if pg.get_keepalives_retries().is_none_or(|n| n == 0) {
        pg.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    if pg.get_tcp_user_timeout().is_none_or(|d| d.is_zero()) {
        pg.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
}

/// A parsed connection string: what tokio-postgres understands, and the TLS parameters it
/// does not.
#[derive(Debug, Clone)]
pub struct ParsedConnectionString {
    /// Everything but `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (its own ssl mode is `require` when
    /// [`ssl_mode`](Self::ssl_mode) needs TLS, `prefer` or `disable` otherwise, so that a
    /// tokio-postgres connection made from it with a TLS connector insists on TLS too), with
    /// this crate's TCP keepalive and user-timeout defaults wherever the string sets none
    /// ([`apply_tcp_defaults`]).
    pub pg: tokio_postgres::Config,
    /// `sslmode`; [`SslMode::Prefer`] when absent.
    pub ssl_mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey` (always both or neither).
    pub client_cert: Option<ClientCert>,
}

/// Parses a libpq-style URL (`postgres://...?sslmode=verify-full&sslrootcert=/ca.pem`) or
/// `key=value` string (`host=h sslmode=verify-ca sslrootcert='/ca.pem'`), accepting all of
/// [`SslMode`], `sslrootcert`, and `sslcert` with `sslkey` (a client certificate, see
/// [`ClientCert`]), which tokio-postgres's own parser rejects, and filling in the TCP
/// keepalive and user-timeout defaults ([`apply_tcp_defaults`]). The files are not read here.
///
/// # Errors
///
/// [`Error::Config`] when the string does not parse, names an unknown ssl mode, or has
/// `sslcert` without `sslkey` or the reverse; [`Error::Unsupported`] for `sslmode=allow` or
/// `sslrootcert=system`.
pub fn parse_connection_string(s: &str) -> Result<ParsedConnectionString, Error> {
    let (rest, extracted) = crate::conninfo::extract(s)?;
    let mut pg = tokio_postgres::Config::from_str(&rest).map_err(|source| Error::Config {
        reason: "the connection string does not parse",
        source: Some(source),
    })?;
    let ssl_mode = match extracted.sslmode.as_deref() {
        Some(mode) => mode.parse()?,
        None => SslMode::Prefer,
    };
    pg.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    apply_tcp_defaults(&mut pg);
    let root_cert = match extracted.sslrootcert {
        Some(path) if path == "system" => return Err(Error::Unsupported("sslrootcert=system")),
        Some(path) => Some(PathBuf::from(path)),
        None => None,
    };
    let client_cert = match (extracted.sslcert, extracted.sslkey) {
        (Some(cert), Some(key)) => Some(ClientCert::new(cert, key)),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::Config {
                reason: "sslcert and sslkey go together: set both (the client certificate and \
                         its private key, PEM files) or neither",
                source: None,
            })
        }
    };
    Ok(ParsedConnectionString {
        pg,
        ssl_mode,
        root_cert,
        client_cert,
    })
}

impl FromStr for ReplicationConfig {
    type Err = Error;

    /// Parses a libpq-style URL or `key=value` string (without `replication=`, which is always
    /// `database`) with [`parse_connection_string`], then as
    /// [`from_pg_config`](ReplicationConfig::from_pg_config), with all of [`SslMode`],
    /// `sslrootcert`, `sslcert` and `sslkey`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = parse_connection_string(s)?;
        let mut config = Self::from_pg_config(&parsed.pg)?.ssl_mode(parsed.ssl_mode);
        config.root_cert = parsed.root_cert;
        config.client_cert = parsed.client_cert;
        Ok(config)
    }
}

//! A private PostgreSQL cluster for one test (or one test binary).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use crate::error::{Error, Result};
use crate::privilege::{effective_uid, RunAs};
use crate::process::{
    create_server_dir, file_len, find_program, free_port, log_tail, mentions_address_in_use,
    output_text, process_alive, program_name, run, signal, PG_DIR_PREFIX,
};
use crate::tls::TestCerts;

/// The role `initdb -U` creates.
const SUPERUSER: &str = "postgres";
/// How many fresh ports [`PgServer::start`] tries.
const START_ATTEMPTS: usize = 5;
/// How long the server may take to accept connections (crash recovery included).
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`PgServer::start_again`] retries while its port is still taken.
const PORT_BUSY_DEADLINE: Duration = Duration::from_secs(10);
/// How long to wait for another process building the template.
const TEMPLATE_LOCK_DEADLINE: Duration = Duration::from_secs(180);
/// Overrides `pg_config --bindir`.
const BINDIR_ENV: &str = "WALCACHE_TESTKIT_PG_BINDIR";
/// Overrides where the initdb template is cached (default: `$TMPDIR/walcache-testkit-UID`).
const CACHE_DIR_ENV: &str = "WALCACHE_TESTKIT_DIR";
/// Bump to invalidate existing templates when [`initdb_template`] changes what it writes.
/// (v2: every row frozen, so that [`PgOptions::next_xid`] may move to any xid.)
const TEMPLATE_FORMAT: &str = "walcache-testkit pg template v2";
/// The databases [`initdb_template`] runs `VACUUM FREEZE` in. Each run also freezes the shared
/// catalogs (`pg_database`, `pg_authid`, ...), the only ones `initdb` writes after its own
/// `VACUUM FREEZE` of `template1`; `template0` and `postgres` are copies of the frozen
/// `template1`.
const FREEZE_DATABASES: &[&str] = &["template1", "postgres"];
/// Transaction ids per `pg_xact` (commit log) segment: 2 status bits per xid, so 4 xids a byte,
/// 8192-byte pages, 32 pages a segment (`CLOG_XACTS_PER_PAGE * SLRU_PAGES_PER_SEGMENT` in
/// PostgreSQL's `clog.c` and `slru.h`); `pg_resetwal`'s documentation gives the same figure
/// (a safe `-x` is a multiple of 1048576, 0x100000).
const XIDS_PER_CLOG_SEGMENT: u32 = 8192 * 4 * 32;
/// Bytes in a `pg_xact` segment: 32 pages of 8192 bytes.
const CLOG_SEGMENT_BYTES: usize = 8192 * 32;
/// The first xid PostgreSQL assigns to a transaction (`FirstNormalTransactionId`); 0 to 2 are
/// special.
const FIRST_NORMAL_XID: u32 = 3;
/// `initdb`'s arguments besides `-D`; part of the template's cache key.
const INITDB_ARGS: &[&str] = &[
    "--no-sync",
    "--no-instructions",
    "-U",
    SUPERUSER,
    "-A",
    "trust",
    "-E",
    "UTF8",
    "--locale=C",
    // 1 MB WAL segments instead of 16 MB: the template, copied for every server, shrinks by
    // 40% and so does the copy's time.
    "--wal-segsize=1",
];
/// Trust every local and loopback connection, replication included.
const PG_HBA: &str = "\
# walcache-testkit: a throw-away cluster reachable only from this machine.
local   all             all                                     trust
local   replication     all                                     trust
host    all             all             127.0.0.1/32            trust
host    replication     all             127.0.0.1/32            trust
";
/// Prepended to [`PG_HBA`] by [`PgServer::start_with_tls`]: the entries TLS connections match.
const PG_HBA_TLS: &str = "\
# walcache-testkit: TLS connections (plain ones still match the host lines below).
hostssl all             all             127.0.0.1/32            trust
hostssl replication     all             127.0.0.1/32            trust
";

/// A private PostgreSQL cluster (`wal_level = logical`) on a free loopback port, stopped on drop.
///
/// `initdb` runs once per machine into a cached template (under
/// `$TMPDIR/walcache-testkit-UID`, or `$WALCACHE_TESTKIT_DIR`); each server copies it into its
/// own temporary directory, so a start costs a copy and a server start (about 0.1 s). When the tests run as root, PostgreSQL's programs run as the
/// `postgres` user (or `$WALCACHE_TESTKIT_PG_USER`, or a `walcache-test` system user created on
/// demand). The postmaster is a child of the test process, in its process group.
///
/// Settings: `listen_addresses = '127.0.0.1'`, a private `unix_socket_directories`,
/// `wal_level = logical`, `max_replication_slots = 16`, `max_wal_senders = 16`, `fsync = off`,
/// `full_page_writes = off`, `max_connections = 100`, `shared_buffers = 32MB`; `pg_hba.conf`
/// trusts local and 127.0.0.1 connections, replication included. `synchronous_commit` stays
/// `on`: with `fsync = off` a commit costs only a `write`, whereas `off` would delay logical
/// decoding of each commit by up to `wal_writer_delay` and let [`stop`](Self::stop) lose commits.
///
/// Every row of the template is frozen, and [`start_with`](Self::start_with) can start the
/// cluster in another transaction-id epoch or just before an xid wrap ([`PgOptions`]).
///
/// # Example
///
/// ```no_run
/// # async fn example() -> walcache_testkit::Result<()> {
/// let pg = walcache_testkit::PgServer::start()?;
/// let db = pg.create_database("orders").await?;
/// let client = pg.connect(&db).await?;
/// client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    bin_dir: PathBuf,
    run_as: &'static RunAs,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    tls: Option<TestCerts>,
    dir: TempDir,
}

/// How to start a [`PgServer`], for [`PgServer::start_with`]: `PgOptions::new()` (or
/// `default()`) is what [`PgServer::start`] does.
///
/// The transaction-id options apply `pg_resetwal` (`-e`, `-x`) to the server's copy of the
/// template before its first start, so they cost a few milliseconds. Every row of the template
/// is frozen, so any starting xid is safe: nothing in the cluster refers to an xid that could
/// look "in the future" from there. `pg_resetwal -x` also sets the cluster's oldest xid
/// 2,000,000,000 below the new one, which puts the wraparound warnings over 100 million xids
/// ahead (the hard limit is 2^31 past the oldest xid): a test may cross the 2^32 boundary
/// into the next epoch freely.
///
/// # Example
///
/// ```no_run
/// # fn example() -> walcache_testkit::Result<()> {
/// use walcache_testkit::{PgOptions, PgServer};
///
/// // Every xid8 in epoch 1: pg_current_xact_id() returns 2^32 + the 32-bit xid.
/// let in_epoch_1 = PgServer::start_with(PgOptions::new().xid_epoch(1))?;
/// // 500 xids before the wrap from epoch 0 to epoch 1.
/// let near_the_wrap = PgServer::start_with(PgOptions::new().next_xid(u32::MAX - 500))?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    tls: bool,
    cert_auth_users: Vec<String>,
    xid_epoch: Option<u32>,
    next_xid: Option<u32>,
}

impl PgOptions {
    /// The defaults: no TLS, the template's xid epoch (0) and next xid (a few hundred).
    pub fn new() -> Self {
        Self::default()
    }

    /// TLS as with [`PgServer::start_with_tls`].
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// TLS, and `user` must authenticate with a client certificate signed by the server's CA
    /// whose common name is `user` (make one with
    /// [`TestCerts::client_cert`](crate::TestCerts::client_cert) on
    /// [`PgServer::tls_certs`]): `pg_hba.conf` gets `hostssl all USER 127.0.0.1/32 cert`
    /// (replication too) and `hostnossl ... reject` for that user, and `ssl_ca_file` is set so
    /// that the server asks clients for a certificate. Other roles keep `trust`. The role is
    /// not created: `CREATE ROLE user LOGIN REPLICATION` as the superuser (whose
    /// [`connect`](PgServer::connect) stays plain). May be given for several users. `user`:
    /// ASCII letters, digits, `_`, `-` and `.`.
    pub fn cert_auth_user(mut self, user: impl Into<String>) -> Self {
        self.tls = true;
        self.cert_auth_users.push(user.into());
        self
    }

    /// The epoch of the next transaction id (`pg_resetwal -e`): the high 32 bits of every
    /// xid8 (`pg_current_xact_id()`, `pg_current_snapshot()`) the cluster hands out, until the
    /// 32-bit xid wraps and the epoch goes up by one. 0 to `u32::MAX - 1`.
    pub fn xid_epoch(mut self, epoch: u32) -> Self {
        self.xid_epoch = Some(epoch);
        self
    }

    /// The next 32-bit transaction id to assign (`pg_resetwal -x`), within the epoch (the
    /// template's, 0, or [`xid_epoch`](Self::xid_epoch)'s). 3 (`FirstNormalTransactionId`) to
    /// `u32::MAX`; `u32::MAX - n` leaves `n + 1` xids before the wrap to the next epoch (after
    /// `u32::MAX` comes 3 of the next epoch: 0 to 2 are special and skipped).
    pub fn next_xid(mut self, xid: u32) -> Self {
        self.next_xid = Some(xid);
        self
    }

    /// Whether `pg_resetwal` has anything to do.
    fn resets_xids(&self) -> bool {
        self.xid_epoch.is_some() || self.next_xid.is_some()
    }

    fn validate(&self) -> Result<()> {
        for user in &self.cert_auth_users {
            crate::tls::check_user(user)?;
        }
        if self.xid_epoch == Some(u32::MAX) {
            return Err(Error::InvalidOption {
                reason: "xid_epoch must be below u32::MAX (pg_resetwal -e rejects -1)".to_owned(),
            });
        }
        if let Some(xid) = self.next_xid {
            if xid < FIRST_NORMAL_XID {
                return Err(Error::InvalidOption {
                    reason: format!(
                        "next_xid {xid} is a special xid: it must be at least {FIRST_NORMAL_XID}"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Why one attempt to start failed.
enum Attempt {
    /// The port was taken: try again.
    PortInUse(Error),
    /// Anything else.
    Fatal(Error),
}

impl PgServer {
    /// Creates a cluster from the cached template (running `initdb` first if there is none
    /// yet), starts it on a free port on 127.0.0.1 and waits until it accepts connections.
    ///
    /// If the port is taken by the time the server binds it, it retries on another port, up
    /// to 5 times.
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] when PostgreSQL is not installed, [`Error::Startup`] with the
    /// end of the server log, [`Error::Command`] when `initdb` or `cp` fails,
    /// [`Error::NoUnprivilegedUser`] when running as root without a usable user.
    pub fn start() -> Result<PgServer> {
        Self::start_with(PgOptions::new())
    }

    /// As [`start`](Self::start), with TLS: a CA and a server certificate for
    /// `IP:127.0.0.1, DNS:localhost, DNS:127.0.0.1` made with `openssl` ([`TestCerts`]) in the
    /// server's directory, `ssl = on`, and `hostssl` entries in `pg_hba.conf` (trust, replication
    /// included). Plain connections are still accepted, so [`connect`](Self::connect) and the
    /// URLs work unchanged; clients verify the server with [`ca_cert_path`](Self::ca_cert_path).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); [`Error::MissingBinary`] or [`Error::Command`] when
    /// `openssl` is missing or fails.
    pub fn start_with_tls() -> Result<PgServer> {
        Self::start_with(PgOptions::new().tls(true))
    }

    /// As [`start`](Self::start), with [`PgOptions`]: TLS, or a chosen xid epoch and next
    /// xid (applied with `pg_resetwal` before the first start).
    ///
    /// # Errors
    ///
    /// As [`start_with_tls`](Self::start_with_tls); [`Error::InvalidOption`] for an xid the
    /// cluster cannot start at; [`Error::MissingBinary`] or [`Error::Command`] when
    /// `pg_resetwal` is missing or fails.
    pub fn start_with(options: PgOptions) -> Result<PgServer> {
        options.validate()?;
        let tls = options.tls || !options.cert_auth_users.is_empty();
        let bin_dir = bin_dir()?;
        let run_as = RunAs::get()?;
        let template = template(&bin_dir, run_as)?;

        let dir = create_server_dir(PG_DIR_PREFIX)?;
        set_mode(dir.path(), 0o700)?;
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        let log_path = dir.path().join("postgres.log");
        run(Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&template)
            .arg(&data_dir))?;
        fs::create_dir(&socket_dir).map_err(|e| Error::io("creating", &socket_dir, e))?;
        let certs = if tls {
            let tls_dir = dir.path().join("tls");
            fs::create_dir(&tls_dir).map_err(|e| Error::io("creating", &tls_dir, e))?;
            let certs = TestCerts::generate(&tls_dir)?;
            let hba = data_dir.join("pg_hba.conf");
            let mut cert_auth = String::new();
            for user in &options.cert_auth_users {
                cert_auth.push_str(&format!(
                    "# walcache-testkit: {user} authenticates with a client certificate.\n\
                     hostssl   all         {user} 127.0.0.1/32 cert\n\
                     hostssl   replication {user} 127.0.0.1/32 cert\n\
                     hostnossl all         {user} 127.0.0.1/32 reject\n\
                     hostnossl replication {user} 127.0.0.1/32 reject\n"
                ));
            }
            fs::write(&hba, format!("{cert_auth}{PG_HBA_TLS}{PG_HBA}"))
                .map_err(|e| Error::io("writing", &hba, e))?;
            Some(certs)
        } else {
            None
        };
        let client_ca = certs
            .as_ref()
            .filter(|_| !options.cert_auth_users.is_empty());
        write_settings(&data_dir, &socket_dir, certs.as_ref(), client_ca)?;
        if let Some(xid) = options.next_xid {
            create_clog_segment(&data_dir, xid)?;
        }
        // The key must belong to the server's user (mode 0600), like the rest of the directory.
        run_as.chown_recursive(dir.path())?;
        if options.resets_xids() {
            reset_xids(&bin_dir, run_as, &data_dir, &options)?;
        }

        let mut server = PgServer {
            port: 0,
            bin_dir,
            run_as,
            data_dir,
            socket_dir,
            log_path,
            child: None,
            tls: certs,
            dir,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(Attempt::PortInUse(error)) => last_error = Some(error),
                Err(Attempt::Fatal(error)) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Startup {
            server: "postgres",
            reason: "no start attempt was made".to_owned(),
            log_tail: String::new(),
        }))
    }

    /// The TCP port the server listens on (on 127.0.0.1); it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server's certificate, for a server started
    /// with [`start_with_tls`](Self::start_with_tls); `None` otherwise.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(TestCerts::ca_cert_path)
    }

    /// The server's certificates, for a server started with
    /// [`start_with_tls`](Self::start_with_tls).
    pub fn tls_certs(&self) -> Option<&TestCerts> {
        self.tls.as_ref()
    }

    /// The superuser role, always `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// A URL for `database`: `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// A key=value connection string for `database`:
    /// `host=127.0.0.1 port=PORT user=postgres dbname=DATABASE`.
    pub fn conn_string(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname={database}",
            self.port
        )
    }

    /// [`conn_string`](Self::conn_string) plus `replication=database`, for libpq tools such as
    /// `psql` and `pg_recvlogical` that speak the replication protocol.
    pub fn replication_conn_string(&self, database: &str) -> String {
        format!("{} replication=database", self.conn_string(database))
    }

    /// Connects to `database` as the superuser, spawning the connection task on the current
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] when the connection fails (for instance while the server is
    /// stopped).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string(database), tokio_postgres::NoTls).await?;
        // The task ends when the client is dropped or the server goes away; its error, if any,
        // also surfaces on the client's next call.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates a database with a unique name (`prefix`, a counter and the process id) and
    /// returns the name. The name is quoted, so keep `prefix` lowercase ASCII for easy use in
    /// URLs.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] when connecting or `CREATE DATABASE` fails.
    pub async fn create_database(&self, prefix: &str) -> Result<String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{prefix}{}x{}",
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        let client = self.connect("postgres").await?;
        let quoted = name.replace('"', "\"\"");
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
        Ok(name)
    }

    /// Consumes `count` transaction ids, in as many committed transactions (one `DO` block
    /// that assigns an xid and commits, `count` times), and returns the xmax of a snapshot
    /// taken afterwards (`pg_snapshot_xmax(pg_current_snapshot())`, an xid8: epoch × 2^32 +
    /// xid). That is the next xid the cluster will assign, provided no other session is
    /// assigning xids or holding one. About 30 µs per xid.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] when connecting or the statements fail.
    pub async fn consume_xids(&self, count: u32) -> Result<u64> {
        let client = self.connect("postgres").await?;
        if count > 0 {
            // A DO block may COMMIT when it is the only statement of an autocommit query.
            client
                .batch_execute(&format!(
                    "DO $$ BEGIN FOR i IN 1..{count} LOOP \
                     PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$"
                ))
                .await?;
        }
        next_xid8(&client).await
    }

    /// Stops the server at once (immediate shutdown mode, a simulated crash: the next
    /// start runs crash recovery; committed data survives). Stopping a stopped server does
    /// nothing.
    pub fn stop(&mut self) {
        self.stop_with_mode(ShutdownMode::Immediate);
    }

    /// Starts a stopped server again with the same data directory and port, retrying for up
    /// to 10 s while the port is still taken, and waits until it accepts connections. Does
    /// nothing if it is running.
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] with the end of the server log.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.reap();
        let deadline = Instant::now() + PORT_BUSY_DEADLINE;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(Attempt::PortInUse(error)) if Instant::now() >= deadline => return Err(error),
                Err(Attempt::PortInUse(_)) => std::thread::sleep(Duration::from_millis(20)),
                Err(Attempt::Fatal(error)) => return Err(error),
            }
        }
    }

    /// A clean restart: a fast-mode shutdown (`pg_ctl stop -m fast`), then [`start_again`](Self::start_again).
    /// Use it after changing settings that need a restart (`ALTER SYSTEM SET ...`).
    ///
    /// # Errors
    ///
    /// As [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> Result<()> {
        self.stop_with_mode(ShutdownMode::Fast);
        self.start_again()
    }

    /// Whether the postmaster process is alive (it may still be starting or stopping).
    pub fn is_running(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|child| process_alive(child.id()))
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log (its standard output and error).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// PostgreSQL's binary directory (`pg_config --bindir`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The `psql` next to the server binaries.
    pub fn psql_path(&self) -> PathBuf {
        self.bin_dir.join("psql")
    }

    /// The temporary directory holding the data directory, socket directory and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn_and_wait(&mut self) -> std::result::Result<(), Attempt> {
        let log_start = file_len(&self.log_path);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Attempt::Fatal(Error::io("opening", &self.log_path, e)))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Attempt::Fatal(Error::io("opening", &self.log_path, e)))?;
        let pid_file = self.data_dir.join("postmaster.pid");
        let mut command = self.run_as.command(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(|source| {
            Attempt::Fatal(Error::Spawn {
                program: program_name(&command),
                source,
            })
        })?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            // The postmaster writes "ready" into its pid file once it accepts connections;
            // this is what `pg_ctl start -w` waits for. `setpriv` execs, so the child's pid is
            // the postmaster's, and a stale pid file from an earlier run never matches.
            if postmaster_ready(&pid_file, pid) {
                return Ok(());
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(format!("it exited with {status}")),
                _ => None,
            };
            let timed_out = Instant::now() >= deadline;
            if exited.is_some() || timed_out {
                self.stop_with_mode(ShutdownMode::Immediate);
                let tail = log_tail(&self.log_path, log_start);
                let port_in_use = mentions_address_in_use(&tail);
                let error = Error::Startup {
                    server: "postgres",
                    reason: exited.unwrap_or_else(|| {
                        format!("not ready after {READY_DEADLINE:?} on port {}", self.port)
                    }),
                    log_tail: tail,
                };
                return Err(if port_in_use {
                    Attempt::PortInUse(error)
                } else {
                    Attempt::Fatal(error)
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Signals the postmaster to shut down (what `pg_ctl stop -m MODE` does, without its
    /// 100 ms polling) and waits for it to exit.
    fn stop_with_mode(&mut self, mode: ShutdownMode) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            // The postmaster may run as another user; only root or that user can signal it,
            // and we are one of them.
            let signalled = signal(child.id(), mode.signal());
            if !signalled {
                // Errors mean the process is already gone.
                let _ = child.kill();
            }
        }
        self.reap();
    }

    /// Waits for an exited (or exiting) postmaster and forgets it.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PostgreSQL's shutdown modes that the testkit uses.
#[derive(Debug, Clone, Copy)]
enum ShutdownMode {
    /// Roll back open transactions, disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once, like a crash; the next start runs recovery.
    Immediate,
}

impl ShutdownMode {
    fn signal(self) -> &'static str {
        match self {
            ShutdownMode::Fast => "INT",
            ShutdownMode::Immediate => "QUIT",
        }
    }
}

/// Whether the pid file in the data directory belongs to `pid` and says "ready".
fn postmaster_ready(pid_file: &Path, pid: u32) -> bool {
    let Ok(contents) = fs::read_to_string(pid_file) else {
        return false;
    };
    let lines: Vec<&str> = contents.lines().collect();
    // Line 1: the postmaster's pid; line 8: its status (PostgreSQL 10 and later): `ready`, or
    // `standby` for a hot standby (a data directory with `standby.signal`), which accepts
    // read-only connections.
    lines.first().and_then(|l| l.trim().parse::<u32>().ok()) == Some(pid)
        && lines
            .get(7)
            .is_some_and(|status| matches!(status.trim(), "ready" | "standby"))
}

/// Writes the per-server settings into `postgresql.auto.conf`, which PostgreSQL reads last;
/// with `client_ca`, `ssl_ca_file` (the server then asks clients for a certificate).
fn write_settings(
    data_dir: &Path,
    socket_dir: &Path,
    tls: Option<&TestCerts>,
    client_ca: Option<&TestCerts>,
) -> Result<()> {
    let quote = |path: &Path| path.display().to_string().replace('\'', "''");
    let socket_dir = quote(socket_dir);
    let mut settings = format!(
        "# Written by walcache-testkit.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{socket_dir}'\n\
         wal_level = logical\n\
         max_replication_slots = 16\n\
         max_wal_senders = 16\n\
         fsync = off\n\
         synchronous_commit = on\n\
         full_page_writes = off\n\
         max_connections = 100\n\
         shared_buffers = 32MB\n"
    );
    if let Some(certs) = tls {
        settings.push_str(&format!(
            "ssl = on\n\
             ssl_cert_file = '{}'\n\
             ssl_key_file = '{}'\n",
            quote(certs.server_cert_path()),
            quote(certs.server_key_path()),
        ));
    }
    if let Some(certs) = client_ca {
        settings.push_str(&format!(
            "ssl_ca_file = '{}'\n",
            quote(certs.ca_cert_path())
        ));
    }
    let path = data_dir.join("postgresql.auto.conf");
    fs::write(&path, settings).map_err(|e| Error::io("writing", &path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("setting the permissions of", path, e))
}

/// Creates the zero-filled `pg_xact` segment holding `xid`'s commit status, unless it exists.
///
/// PostgreSQL reads the commit-log page of its next xid at start-up and fails ("could not
/// access status of transaction") if the segment is missing; `initdb` makes only segment
/// `0000`. Segments are named by their number in (at least) 4 upper-case hex digits:
/// xid 4294966000 is in segment 4294966000 / 1048576 = 4095, file `0FFF`. A zero status means
/// "in progress", which is right for xids not assigned yet. The caller gives the file to the
/// server's user (mode 0600 like the rest of the data directory).
fn create_clog_segment(data_dir: &Path, xid: u32) -> Result<()> {
    let path = data_dir
        .join("pg_xact")
        .join(format!("{:04X}", xid / XIDS_PER_CLOG_SEGMENT));
    if path.exists() {
        return Ok(());
    }
    fs::write(&path, vec![0u8; CLOG_SEGMENT_BYTES]).map_err(|e| Error::io("writing", &path, e))?;
    set_mode(&path, 0o600)
}

/// Runs `pg_resetwal` on a copied, never-started data directory (the template was shut down
/// cleanly, as `pg_resetwal` requires) to set the next xid's epoch and value.
fn reset_xids(bin_dir: &Path, run_as: &RunAs, data_dir: &Path, options: &PgOptions) -> Result<()> {
    let pg_resetwal = bin_dir.join("pg_resetwal");
    if !pg_resetwal.is_file() {
        return Err(Error::MissingBinary {
            binary: "pg_resetwal".to_owned(),
            package: "postgresql".to_owned(),
        });
    }
    let mut command = run_as.command(pg_resetwal);
    // pg_resetwal applies -e before -x, so -x sets the xid within the new epoch.
    if let Some(epoch) = options.xid_epoch {
        command.arg("-e").arg(epoch.to_string());
    }
    if let Some(xid) = options.next_xid {
        command.arg("-x").arg(xid.to_string());
    }
    run(command
        .arg("-D")
        .arg(data_dir)
        .current_dir(data_dir)
        .stdin(Stdio::null()))
    .map(drop)
}

/// PostgreSQL's binary directory: `$WALCACHE_TESTKIT_PG_BINDIR`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Result<PathBuf> {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = BIN_DIR.get() {
        return Ok(dir.clone());
    }
    let missing = |binary: &str| Error::MissingBinary {
        binary: binary.to_owned(),
        package: "postgresql".to_owned(),
    };
    let dir = if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        PathBuf::from(dir)
    } else if let Some(pg_config) = find_program("pg_config") {
        let output = run(Command::new(pg_config).arg("--bindir"))?;
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    } else {
        newest_debian_bin_dir().ok_or_else(|| missing("pg_config"))?
    };
    for binary in ["initdb", "postgres", "pg_ctl"] {
        if !dir.join(binary).is_file() {
            return Err(missing(binary));
        }
    }
    Ok(BIN_DIR.get_or_init(|| dir).clone())
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// The cached initdb template for these binaries and this user, built if missing.
///
/// Concurrency: a lock file (created with `create_new`, holding the builder's pid, removed
/// when the builder dies) keeps concurrent test processes from all running `initdb`; the
/// template is built in a staging directory and renamed into place, so a reader never sees a
/// half-built template even if the lock is wrongly judged stale.
fn template(bin_dir: &Path, run_as: &RunAs) -> Result<PathBuf> {
    let cache = match std::env::var_os(CACHE_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        // Per user: another user's cache is not ours to write.
        None => std::env::temp_dir().join(format!(
            "walcache-testkit-{}",
            effective_uid().map_or_else(|| "unknown".to_owned(), |uid| uid.to_string())
        )),
    };
    fs::create_dir_all(&cache).map_err(|e| Error::io("creating", &cache, e))?;
    // The server's user must be able to traverse it; fails harmlessly if another user owns it.
    let _ = fs::set_permissions(&cache, fs::Permissions::from_mode(0o755));

    let postgres_mtime = fs::metadata(bin_dir.join("postgres"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = fnv1a(&[
        TEMPLATE_FORMAT,
        &bin_dir.display().to_string(),
        &postgres_mtime.to_string(),
        &INITDB_ARGS.join(" "),
        PG_HBA,
        &run_as.describe(),
    ]);
    let template = cache.join(format!("pg-template-{key:016x}"));
    let is_ready = || template.join("PG_VERSION").is_file();
    if is_ready() {
        return Ok(template);
    }

    let lock_path = cache.join(format!("pg-template-{key:016x}.lock"));
    let Some(_lock) = LockFile::acquire(&lock_path, &is_ready)? else {
        return Ok(template); // built by another process while we waited
    };
    if is_ready() {
        return Ok(template);
    }
    let staging = cache.join(format!(
        "pg-staging-{key:016x}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let built = initdb_template(bin_dir, run_as, &staging);
    let result = built.and_then(|()| match fs::rename(&staging, &template) {
        Ok(()) => Ok(()),
        // Someone else's template won the race: theirs is as good as ours.
        Err(_) if is_ready() => Ok(()),
        Err(e) => Err(Error::io("moving the initdb template into", &template, e)),
    });
    let _ = fs::remove_dir_all(&staging); // left over on failure or lost race
    result.map(|()| template)
}

/// Runs `initdb` into `staging`, freezes every row ([`freeze`]) and writes the shared
/// `pg_hba.conf`.
fn initdb_template(bin_dir: &Path, run_as: &RunAs, staging: &Path) -> Result<()> {
    fs::create_dir(staging).map_err(|e| Error::io("creating", staging, e))?;
    set_mode(staging, 0o700)?;
    run_as.chown_recursive(staging)?;
    run(run_as
        .command(bin_dir.join("initdb"))
        .args(INITDB_ARGS)
        .arg("-D")
        .arg(staging)
        .current_dir(staging)
        .stdin(Stdio::null()))?;
    for database in FREEZE_DATABASES {
        freeze(bin_dir, run_as, staging, database)?;
    }
    let hba = staging.join("pg_hba.conf");
    fs::write(&hba, PG_HBA).map_err(|e| Error::io("writing", &hba, e))?;
    run_as.chown_recursive(&hba)
}

/// Runs `VACUUM FREEZE` in `database` of the stopped cluster in `data_dir`, in single-user
/// mode (no postmaster, no port; it ends with a shutdown checkpoint, so the cluster stays
/// cleanly shut down for `pg_resetwal`).
///
/// `initdb` leaves rows written after its own `VACUUM FREEZE` (those of `pg_database`, for
/// one) with plain xmins in the 700s. Started 2^31 or more xids later, or with the next xid
/// just below 2^32 (`pg_resetwal -x`), those xids look "in the future" and the rows vanish:
/// the `postgres` database "does not exist". Frozen rows are visible from any xid.
fn freeze(bin_dir: &Path, run_as: &RunAs, data_dir: &Path, database: &str) -> Result<()> {
    let mut command = run_as.command(bin_dir.join("postgres"));
    command
        .arg("--single")
        .arg("-D")
        .arg(data_dir)
        // Stop at the first error (exit code 1) instead of reading on.
        .args(["-c", "exit_on_error=on", database])
        .current_dir(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = program_name(&command);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin sends EOF: the backend then exits.
        stdin
            .write_all(b"VACUUM FREEZE;\n")
            .map_err(|e| Error::io("writing to single-user postgres in", data_dir, e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for single-user postgres in", data_dir, e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            program,
            status: output.status.to_string(),
            output: output_text(&output),
        })
    }
}

/// A lock file held by this process; removed on drop.
struct LockFile {
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock, or returns `None` as soon as `done` holds (the work was done by the
    /// holder). A lock whose holder has died is taken over.
    fn acquire(path: &Path, done: &dyn Fn() -> bool) -> Result<Option<LockFile>> {
        let deadline = Instant::now() + TEMPLATE_LOCK_DEADLINE;
        loop {
            if done() {
                return Ok(None);
            }
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    let lock = LockFile {
                        path: path.to_owned(),
                    };
                    write!(file, "{}", std::process::id())
                        .map_err(|e| Error::io("writing", path, e))?;
                    return Ok(Some(lock));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(path) {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                }
                Err(e) => return Err(Error::io("creating the lock file", path, e)),
            }
            if Instant::now() >= deadline {
                return Err(Error::TemplateLock {
                    path: path.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether the process that wrote the lock file is gone. A lock without a pid yet is stale
/// only once it is a few seconds old (its writer may be between `create_new` and `write`).
fn lock_is_stale(path: &Path) -> bool {
    match fs::read_to_string(path) {
        Ok(contents) => match contents.trim().parse::<u32>() {
            Ok(pid) => !process_alive(pid),
            Err(_) => File::open(path)
                .and_then(|f| f.metadata())
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(5)),
        },
        Err(_) => false, // removed meanwhile: the next create_new will tell
    }
}

/// 64-bit FNV-1a over the parts (with separators): a hash that stays the same across Rust
/// versions, unlike `DefaultHasher`.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The next transaction id `client`'s server will assign, as an xid8 (its epoch in the high
/// 32 bits): the xmax of a fresh snapshot. Assigns none.
///
/// # Errors
///
/// The query failing.
pub async fn next_xid8(client: &tokio_postgres::Client) -> Result<u64> {
    let row = client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

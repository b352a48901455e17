//! A private `redis-server` for one test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{Error, Result};
use crate::process::{
    create_server_dir, file_len, find_program, free_port, log_tail, mentions_address_in_use,
    process_alive, REDIS_DIR_PREFIX, REDIS_PID_FILE,
};
use crate::tls::TestCerts;

/// How many fresh ports [`RedisServer::start`] tries.
const START_ATTEMPTS: usize = 5;
/// How long a single start may take to answer `PING`.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Overrides where `redis-server` is looked for.
const BINARY_ENV: &str = "WALCACHE_TESTKIT_REDIS_SERVER";

/// A private `redis-server` on a free loopback port, with no automatic persistence (an explicit
/// `SAVE` writes a snapshot that the next start loads) and its working
/// directory and log in a temporary directory.
///
/// The server is stopped (killed and waited for) on drop; [`stop`](Self::stop) and
/// [`start_again`](Self::start_again) simulate an outage, coming back on the same port.
/// The server runs as a child process in the test's process group, so a test runner that kills
/// the group (nextest on timeout, ctrl-c) kills the server too.
///
/// # Example
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = walcache_testkit::RedisServer::start()?;
/// let mut conn = redis.client().get_connection()?;
/// redis::cmd("SET").arg("k").arg("v").exec(&mut conn)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    child: Option<Child>,
    tls: Option<TestCerts>,
    /// With `--tls-auth-clients yes`: the test kit's own client certificate and key.
    client_identity: Option<(PathBuf, PathBuf)>,
    dir: TempDir,
}

/// The common name of the client certificate [`RedisServer::client`] presents to a server
/// started with [`RedisServer::start_with_tls_client_auth`].
pub const TESTKIT_CLIENT_USER: &str = "walcache-testkit";

/// Why one attempt to start failed.
enum Attempt {
    /// Worth another try: the port was taken, or the server died early.
    Retry(Error),
    /// Not worth another try.
    Fatal(Error),
}

impl RedisServer {
    /// Starts a server on a free port on 127.0.0.1 and waits until it answers `PING`.
    ///
    /// If the port is taken by the time the server binds it, or the server dies while
    /// starting, it retries on another port, up to 5 times.
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] when `redis-server` is not installed (set
    /// `WALCACHE_TESTKIT_REDIS_SERVER` to use a binary outside `$PATH`), [`Error::Startup`] with
    /// the end of the server's log when no attempt succeeded, [`Error::Io`] for file-system
    /// failures.
    pub fn start() -> Result<RedisServer> {
        Self::start_with(false, false)
    }

    /// As [`start`](Self::start), serving TLS only (`--port 0 --tls-port PORT`), with a CA and
    /// a server certificate for `IP:127.0.0.1, DNS:localhost, DNS:127.0.0.1` made with `openssl`
    /// ([`TestCerts`]) and no client certificates required (`--tls-auth-clients no`).
    /// [`url`](Self::url) and [`tls_url`](Self::tls_url) are then
    /// `rediss://127.0.0.1:PORT/`, and [`client`](Self::client) trusts
    /// [`ca_cert_path`](Self::ca_cert_path).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start); [`Error::MissingBinary`] or [`Error::Command`] when
    /// `openssl` is missing or fails; [`Error::Startup`] when `redis-server` was built without
    /// TLS.
    pub fn start_with_tls() -> Result<RedisServer> {
        Self::start_with(true, false)
    }

    /// As [`start_with_tls`](Self::start_with_tls), and clients must present a certificate
    /// signed by the test CA (`--tls-auth-clients yes`, `--tls-ca-cert-file`): make one with
    /// [`TestCerts::client_cert`] on [`tls_certs`](Self::tls_certs). A client without one is
    /// refused during the handshake. [`client`](Self::client) presents its own (common name
    /// `walcache-testkit`, [`testkit_client_cert`](Self::testkit_client_cert)).
    ///
    /// # Errors
    ///
    /// As [`start_with_tls`](Self::start_with_tls).
    pub fn start_with_tls_client_auth() -> Result<RedisServer> {
        Self::start_with(true, true)
    }

    fn start_with(tls: bool, client_auth: bool) -> Result<RedisServer> {
        let binary = match std::env::var_os(BINARY_ENV) {
            Some(path) => PathBuf::from(path),
            None => find_program("redis-server").ok_or_else(|| Error::MissingBinary {
                binary: "redis-server".to_owned(),
                package: "redis-server".to_owned(),
            })?,
        };
        let dir = create_server_dir(REDIS_DIR_PREFIX)?;
        let tls = if tls {
            Some(TestCerts::generate(dir.path())?)
        } else {
            None
        };
        let client_identity = match &tls {
            Some(certs) if client_auth => Some(certs.client_cert(TESTKIT_CLIENT_USER)?),
            _ => None,
        };
        let mut server = RedisServer {
            port: 0,
            binary,
            child: None,
            tls,
            client_identity,
            dir,
        };
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait(Instant::now() + READY_DEADLINE) {
                Ok(()) => return Ok(server),
                Err(Attempt::Retry(error)) => last_error = Some(error),
                Err(Attempt::Fatal(error)) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Startup {
            server: "redis-server",
            reason: "no start attempt was made".to_owned(),
            log_tail: String::new(),
        }))
    }

    /// The TCP port the server listens on (on 127.0.0.1); it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL: `redis://127.0.0.1:PORT/`, or `rediss://127.0.0.1:PORT/` for a
    /// server started with [`start_with_tls`](Self::start_with_tls).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:PORT/` for a server started with
    /// [`start_with_tls`](Self::start_with_tls); `None` otherwise.
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|_| format!("rediss://127.0.0.1:{}/", self.port))
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

    /// Whether clients must present a certificate
    /// ([`start_with_tls_client_auth`](Self::start_with_tls_client_auth)).
    pub fn requires_client_cert(&self) -> bool {
        self.client_identity.is_some()
    }

    /// The certificate and key [`client`](Self::client) presents, for a server started with
    /// [`start_with_tls_client_auth`](Self::start_with_tls_client_auth).
    pub fn testkit_client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// A client for the server (no connection is made until one is asked for); for a TLS
    /// server, one that trusts only the test CA (and presents the test kit's client
    /// certificate when the server requires one).
    ///
    /// # Panics
    ///
    /// When the CA certificate (or client certificate) written at start can no longer be read.
    pub fn client(&self) -> redis::Client {
        client_for(self.port, self.tls.as_ref(), self.client_identity.as_ref())
            .expect("the test CA is readable and valid")
    }

    /// The server's temporary directory (working directory and `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Kills the server and waits for it to exit. Connections fail from then on, until
    /// [`start_again`](Self::start_again). Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone; there is nothing else to do.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port, retrying for up to 10 s while the port
    /// is still taken, and waits until it answers `PING`. Does nothing if it is running.
    ///
    /// The server starts empty — it has no persistence — unless a `SAVE` wrote a snapshot into
    /// its directory: then it starts from that snapshot, as a Redis with RDB persistence does
    /// after a crash (what was written since is gone).
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] with the end of the log when it did not come back within 10 s.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.stop(); // reap a server that died on its own
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match self.spawn_and_wait(deadline) {
                Ok(()) => return Ok(()),
                Err(Attempt::Retry(error)) if Instant::now() >= deadline => return Err(error),
                Err(Attempt::Retry(_)) => std::thread::sleep(Duration::from_millis(20)),
                Err(Attempt::Fatal(error)) => return Err(error),
            }
        }
    }

    /// Whether the server process is alive (it may still be starting or stopping).
    pub fn is_running(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|child| process_alive(child.id()))
    }

    fn spawn_and_wait(&mut self, deadline: Instant) -> std::result::Result<(), Attempt> {
        let log = self.log_path();
        let log_start = file_len(&log);
        let stderr_path = self.dir.path().join("redis.stderr");
        let stderr = File::create(&stderr_path)
            .map_err(|e| Attempt::Fatal(Error::io("creating", &stderr_path, e)))?;
        let mut command = Command::new(&self.binary);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(certs) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(certs.server_cert_path())
                .arg("--tls-key-file")
                .arg(certs.server_key_path())
                .arg("--tls-ca-cert-file")
                .arg(certs.ca_cert_path())
                .args(["--tls-auth-clients"])
                .arg(if self.client_identity.is_some() {
                    "yes"
                } else {
                    "no"
                }),
        };
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command.spawn().map_err(|source| {
            Attempt::Fatal(Error::Spawn {
                program: self.binary.display().to_string(),
                source,
            })
        })?;
        // For the sweep of directories left by killed test processes; best effort.
        let _ = std::fs::write(self.dir.path().join(REDIS_PID_FILE), child.id().to_string());
        self.child = Some(child);

        let failure = |reason: String, retry: bool, this: &mut RedisServer| {
            this.stop();
            let mut tail = log_tail(&log, log_start);
            let stderr = log_tail(&stderr_path, 0);
            if !stderr.starts_with("(nothing") {
                tail = format!("{tail}\n--- stderr ---\n{stderr}");
            }
            let retry = retry || mentions_address_in_use(&tail);
            let error = Error::Startup {
                server: "redis-server",
                reason,
                log_tail: tail,
            };
            if retry {
                Attempt::Retry(error)
            } else {
                Attempt::Fatal(error)
            }
        };

        loop {
            let child = self.child.as_mut().expect("spawned above");
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failure(format!("it exited with {status}"), true, self));
            }
            // Ask the server for its pid: a PONG from some other server that owns the port
            // must not count.
            if answering_pid(self.port, self.tls.as_ref(), self.client_identity.as_ref())
                == Some(pid)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failure(
                    format!("it did not answer PING on port {}", self.port),
                    false,
                    self,
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A client for the server on `port`, trusting only the test CA when there is one, and
/// presenting `identity` (certificate and key files).
fn client_for(
    port: u16,
    tls: Option<&TestCerts>,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<redis::Client> {
    let Some(certs) = tls else {
        return Ok(redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .expect("a redis://127.0.0.1:PORT/ URL is always valid"));
    };
    // redis-rs builds its rustls configuration with the process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_tls = match identity {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(cert).map_err(|e| Error::io("reading", cert, e))?,
            client_key: std::fs::read(key).map_err(|e| Error::io("reading", key, e))?,
        }),
        None => None,
    };
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert: Some(certs.ca_pem()?),
    };
    redis::Client::build_with_tls(format!("rediss://127.0.0.1:{port}/"), certificates).map_err(
        |e| Error::Io {
            action: "building a TLS client for the CA",
            path: certs.ca_cert_path().to_owned(),
            source: std::io::Error::other(e),
        },
    )
}

/// The `process_id` of the server answering `PING` on `port`, if one does.
fn answering_pid(
    port: u16,
    tls: Option<&TestCerts>,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Option<u32> {
    let client = client_for(port, tls, identity).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let pong: String = redis::cmd("PING").query(&mut conn).ok()?;
    if pong != "PONG" {
        return None;
    }
    let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

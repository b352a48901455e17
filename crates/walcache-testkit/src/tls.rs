//! Test certificates made with the `openssl` command-line tool.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::process::{find_program, run};
use crate::unique_prefix;

/// The server certificate's extensions: valid for 127.0.0.1 and localhost, as a TLS server.
///
/// 127.0.0.1 is there twice. As an IP address entry for clients that follow RFC 6125 (rustls,
/// libpq from PostgreSQL 15 on); and as a DNS name entry for libpq 14 and older, which
/// compares a host given as an IP address with the DNS name entries only (it rejects the
/// certificate with "server certificate for \"localhost\" does not match host name
/// \"127.0.0.1\"" otherwise). Clients that check IP addresses properly skip a DNS name entry
/// that is an address.
const SERVER_EXTENSIONS: &str = "\
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
";

/// A client certificate's extensions: a TLS client.
const CLIENT_EXTENSIONS: &str = "\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
";

/// The private key format of a client certificate made by [`TestCerts::client_cert_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientKeyFormat {
    /// An ECDSA P-256 key in PKCS#8 (`-----BEGIN PRIVATE KEY-----`), what `openssl req`
    /// writes.
    #[default]
    Pkcs8,
    /// An ECDSA P-256 key in SEC1 (`-----BEGIN EC PRIVATE KEY-----`).
    Sec1,
    /// An RSA 2048 key in PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`).
    Pkcs1,
}

impl ClientKeyFormat {
    fn file_suffix(self) -> &'static str {
        match self {
            ClientKeyFormat::Pkcs8 => "pkcs8",
            ClientKeyFormat::Sec1 => "sec1",
            ClientKeyFormat::Pkcs1 => "pkcs1",
        }
    }
}

/// A name no other CA of this machine's test processes has, so that a client trusting
/// another test CA fails with "unknown issuer" rather than a bad signature.
fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}n{nanos}", unique_prefix())
}

/// A throw-away certificate authority and a server certificate it signed, made with the
/// `openssl` command-line tool (ECDSA P-256, valid for ten years).
///
/// The server certificate's subjectAltName is `IP:127.0.0.1, DNS:localhost, DNS:127.0.0.1`
/// (the last for libpq 14 and older, which match an address against DNS names only). Files,
/// in the directory given to [`generate`](Self::generate): `ca.crt`, `ca.key`, `server.crt`,
/// `server.key` (the keys with mode 0600), and the client certificates made by
/// [`client_cert`](Self::client_cert).
///
/// [`PgServer::start_with_tls`](crate::PgServer::start_with_tls) and
/// [`RedisServer::start_with_tls`](crate::RedisServer::start_with_tls) make their own; make
/// another one to test a client against the wrong CA.
#[derive(Debug, Clone)]
pub struct TestCerts {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

impl TestCerts {
    /// Writes a new CA and server certificate into `dir` (which must exist).
    ///
    /// # Errors
    ///
    /// [`Error::MissingBinary`] without `openssl`, [`Error::Command`] when it fails,
    /// [`Error::Io`] for file-system failures.
    pub fn generate(dir: &Path) -> Result<TestCerts> {
        let openssl = openssl_program()?;
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.crt");
        let server_key = dir.join("server.key");
        let server_csr = dir.join("server.csr");
        let server_cert = dir.join("server.crt");
        let extensions = dir.join("server.ext");
        let openssl = |args: &[&str]| {
            let mut command = Command::new(&openssl);
            command
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .env("OPENSSL_CONF", "/dev/null");
            command
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        run(openssl(&["req", "-x509", "-nodes", "-days", "3650"])
            .args(ec)
            .arg("-subj")
            .arg(format!("/CN=walcache-testkit CA {}", unique_name()))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_cert))?;
        run(openssl(&["req", "-new", "-nodes"])
            .args(ec)
            .args(["-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_csr))?;
        fs::write(&extensions, SERVER_EXTENSIONS)
            .map_err(|e| Error::io("writing", &extensions, e))?;
        run(
            openssl(&["x509", "-req", "-days", "3650", "-set_serial", "2"])
                .arg("-in")
                .arg(&server_csr)
                .arg("-CA")
                .arg(&ca_cert)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&server_cert),
        )?;
        for key in [&ca_key, &server_key] {
            fs::set_permissions(key, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("setting the permissions of", key, e))?;
        }
        for scratch in [&server_csr, &extensions] {
            let _ = fs::remove_file(scratch);
        }
        Ok(TestCerts {
            dir: dir.to_owned(),
            ca_cert,
            ca_key,
            server_cert,
            server_key,
        })
    }

    /// Makes a client certificate signed by the CA, with common name `user` (what
    /// PostgreSQL's `cert` authentication takes as the role), and an ECDSA P-256 key in
    /// PKCS#8: [`client_cert_with`](Self::client_cert_with) with
    /// [`ClientKeyFormat::Pkcs8`]. Returns the certificate's and the key's paths.
    ///
    /// # Errors
    ///
    /// As [`client_cert_with`](Self::client_cert_with).
    pub fn client_cert(&self, user: &str) -> Result<(PathBuf, PathBuf)> {
        self.client_cert_with(user, ClientKeyFormat::Pkcs8)
    }

    /// Makes a client certificate signed by the CA, with common name `user` and a key in
    /// `format`, as `client-USER-FORMAT.crt` and `client-USER-FORMAT.key` (mode 0600) in the
    /// certificates' directory (made again if called again). Returns the certificate's and the
    /// key's paths.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] when `user` is empty or has characters other than ASCII
    /// letters, digits, `_`, `-` and `.`; [`Error::MissingBinary`] or [`Error::Command`]
    /// when `openssl` is missing or fails; [`Error::Io`] for file-system failures.
    pub fn client_cert_with(
        &self,
        user: &str,
        format: ClientKeyFormat,
    ) -> Result<(PathBuf, PathBuf)> {
        check_user(user)?;
        let openssl = openssl_program()?;
        let dir = &self.dir;
        let stem = format!("client-{user}-{}", format.file_suffix());
        let key = dir.join(format!("{stem}.key"));
        let csr = dir.join(format!("{stem}.csr"));
        let cert = dir.join(format!("{stem}.crt"));
        let extensions = dir.join(format!("{stem}.ext"));
        let openssl = |args: &[&str]| {
            let mut command = Command::new(&openssl);
            command
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null())
                .env("OPENSSL_CONF", "/dev/null");
            command
        };
        let new_key: &[&str] = match format {
            ClientKeyFormat::Pkcs8 | ClientKeyFormat::Sec1 => {
                &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
            }
            ClientKeyFormat::Pkcs1 => &["-newkey", "rsa:2048"],
        };
        run(openssl(&["req", "-new", "-nodes"])
            .args(new_key)
            .arg("-subj")
            .arg(format!("/CN={user}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        // `openssl req` writes PKCS#8; `pkey -traditional` rewrites it as SEC1 or PKCS#1.
        if format != ClientKeyFormat::Pkcs8 {
            let converted = dir.join(format!("{stem}.key.new"));
            run(openssl(&["pkey", "-traditional"])
                .arg("-in")
                .arg(&key)
                .arg("-out")
                .arg(&converted))?;
            fs::rename(&converted, &key).map_err(|e| Error::io("renaming", &converted, e))?;
        }
        fs::write(&extensions, CLIENT_EXTENSIONS)
            .map_err(|e| Error::io("writing", &extensions, e))?;
        run(openssl(&["x509", "-req", "-days", "3650", "-set_serial"])
            .arg(next_serial())
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca_cert)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&cert))?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("setting the permissions of", &key, e))?;
        for scratch in [&csr, &extensions] {
            let _ = fs::remove_file(scratch);
        }
        Ok((cert, key))
    }

    /// The CA certificate (PEM): the root a client should trust.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// The server certificate (PEM).
    pub fn server_cert_path(&self) -> &Path {
        &self.server_cert
    }

    /// The server's private key (PEM, mode 0600).
    pub fn server_key_path(&self) -> &Path {
        &self.server_key
    }

    /// The CA's private key (PEM, mode 0600).
    pub fn ca_key_path(&self) -> &Path {
        &self.ca_key
    }

    /// The CA certificate's PEM bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        fs::read(&self.ca_cert).map_err(|e| Error::io("reading", &self.ca_cert, e))
    }
}

fn openssl_program() -> Result<PathBuf> {
    find_program("openssl").ok_or_else(|| Error::MissingBinary {
        binary: "openssl".to_owned(),
        package: "openssl".to_owned(),
    })
}

/// A user name usable as a common name, a file name and a `pg_hba.conf` entry as it is.
pub(crate) fn check_user(user: &str) -> Result<()> {
    let ok = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            reason: format!(
                "client certificate user {user:?}: use ASCII letters, digits, `_`, `-` and `.`"
            ),
        })
    }
}

/// A serial number for a client certificate: distinct within the process and, with the time,
/// across processes (the server certificate has serial 2).
fn next_serial() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "0x{:x}{:04x}",
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

//! TLS for the replication connection: libpq's `sslmode`s on rustls (ring provider).
//!
//! The negotiation is PostgreSQL's classic one (`sslnegotiation=postgres`): an SSLRequest on
//! the fresh TCP connection, a one-byte answer (`S` or `N`), then the TLS handshake and the
//! normal startup inside TLS. See [`SslMode`] for what each mode checks, and [`ClientCert`]
//! for client certificates (mutual TLS, libpq's `sslcert` and `sslkey`).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// libpq's `sslmode`: whether the replication connection uses TLS and what it checks.
///
/// | mode | TLS | certificate chain | host name |
/// |---|---|---|---|
/// | `disable` | never | - | - |
/// | `prefer` (default) | if the server accepts it, else plain | only with a root certificate | no |
/// | `require` | always | only with a root certificate | no |
/// | `verify-ca` | always | against the root certificate | no |
/// | `verify-full` | always | against the root certificate | yes |
///
/// As in libpq, `prefer` and `require` verify the chain when a root certificate
/// ([`ReplicationConfig::root_cert`](crate::client::ReplicationConfig::root_cert),
/// `sslrootcert=PATH`) is configured, and encrypt without authenticating the server
/// otherwise. Unlike libpq, no default root certificate is looked for
/// (`~/.postgresql/root.crt` is ignored): `verify-ca` and `verify-full` need an explicit one.
/// `allow` is not supported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server accepts it (it answers `S` to the SSLRequest), plain TCP when it
    /// refuses (`N`). A failed TLS handshake is an error, not a reason to retry without TLS.
    #[default]
    Prefer,
    /// TLS or an error ([`Error::TlsRefused`]).
    Require,
    /// TLS, with the server's certificate chain verified against the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate's subjectAltName must match the host: a DNS name
    /// for a host name, an IP address for an IP host. The common name is not consulted.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling: `disable`, `prefer`, `require`, `verify-ca`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the server's certificate chain must verify against a root certificate.
    fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;

    /// Parses libpq's spelling.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for `allow`, [`Error::Config`] for anything else unknown.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(Error::Unsupported("sslmode=allow")),
            _ => Err(Error::Config {
                reason: "sslmode must be disable, prefer, require, verify-ca or verify-full",
                source: None,
            }),
        }
    }
}

/// A client certificate and its private key, for servers that authenticate clients by
/// certificate (mutual TLS): libpq's `sslcert` and `sslkey`, or
/// [`ReplicationConfig::client_cert`](crate::client::ReplicationConfig::client_cert).
///
/// Both are PEM files, read at each connect (so a renewed certificate is picked up by the next
/// connection):
///
/// - the certificate file: the client certificate first, then any intermediate CA
///   certificates (`-----BEGIN CERTIFICATE-----` blocks);
/// - the key file: one unencrypted private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`),
///   PKCS#1 RSA (`-----BEGIN RSA PRIVATE KEY-----`) or SEC1 EC
///   (`-----BEGIN EC PRIVATE KEY-----`); RSA, ECDSA P-256/P-384 and Ed25519 keys work.
///   Encrypted keys (`sslpassword`) are not supported.
///
/// PostgreSQL's `cert` authentication maps the certificate's common name (CN) to the role
/// (the user name, unless `pg_ident.conf` maps it); the server needs `ssl_ca_file` to ask for
/// client certificates at all. A key file readable by its group or others is logged as a
/// warning (once per file and process) naming the file and `chmod 600`: libpq refuses such a
/// file, this client only warns. Unlike libpq, `~/.postgresql/postgresql.crt` is never looked
/// for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
}

/// A client certificate and key as PEM bytes, checked ([`ClientCert::read_pem`]), for clients
/// that take PEM (redis-rs's `ClientTlsConfig`). `Debug` shows neither.
#[derive(Clone)]
pub struct ClientCertPem {
    /// The certificate file's content.
    pub cert: Vec<u8>,
    /// The key file's content: a secret.
    pub key: Vec<u8>,
}

impl fmt::Debug for ClientCertPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertPem")
            .field("cert", &format_args!("<{} bytes>", self.cert.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientCert {
    /// The certificate (chain) file and its private key file, both PEM.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        ClientCert {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// Reads and checks both files as a connection would, without connecting: for a
    /// configuration check at start-up. Warns about a key file open to its group or others.
    ///
    /// # Errors
    ///
    /// [`Error::ClientCert`] naming the file and what is wrong: unreadable, no certificate,
    /// no key or an encrypted one, a key of a kind the TLS library does not take, a key that
    /// does not belong to the certificate.
    pub fn check(&self) -> Result<(), Error> {
        self.read_pem().map(drop)
    }

    /// Both files' content, checked as by [`check`](Self::check).
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check).
    pub fn read_pem(&self) -> Result<ClientCertPem, Error> {
        let (pem, _) = self.load()?;
        Ok(pem)
    }

    /// Reads, parses and checks both files.
    fn load(&self) -> Result<(ClientCertPem, Identity), Error> {
        let cert_error =
            |reason: &'static str, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
                Error::ClientCert {
                    what: "certificate",
                    path: self.cert.clone(),
                    reason,
                    source,
                }
            };
        // Key errors carry no source: a PEM or DER parser's message could quote the key.
        let key_error = |reason: &'static str| Error::ClientCert {
            what: "private key",
            path: self.key.clone(),
            reason,
            source: None,
        };
        let cert_pem = std::fs::read(&self.cert)
            .map_err(|e| cert_error("cannot read the file", Some(e.into())))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error("invalid PEM", Some(e.into())))?;
        if chain.is_empty() {
            return Err(cert_error(
                "no CERTIFICATE block in the file: give the client certificate (PEM) here and \
                 its private key in the key file",
                None,
            ));
        }
        let key_pem = match std::fs::read(&self.key) {
            Ok(pem) => pem,
            Err(e) => {
                return Err(Error::ClientCert {
                    what: "private key",
                    path: self.key.clone(),
                    reason: "cannot read the file",
                    source: Some(e.into()),
                })
            }
        };
        warn_if_readable_by_others(&self.key);
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(key) => key,
            Err(_) if contains(&key_pem, b"ENCRYPTED PRIVATE KEY") => {
                return Err(key_error(
                    "the key is encrypted, which is not supported (sslpassword): store it \
                     unencrypted with mode 0600, e.g. `openssl pkey -in KEY -out KEY.plain`",
                ))
            }
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(key_error(
                    "no private key in the file: expected PEM `BEGIN PRIVATE KEY` (PKCS#8), \
                     `BEGIN RSA PRIVATE KEY` (PKCS#1) or `BEGIN EC PRIVATE KEY` (SEC1)",
                ))
            }
            Err(_) => return Err(key_error("invalid PEM")),
        };
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => key_error(
                    "the key does not belong to the certificate: give the key the certificate \
                     was issued for",
                ),
                rustls::Error::InvalidCertificate(_) => {
                    cert_error("the first certificate does not parse", Some(e.into()))
                }
                _ => {
                    key_error("unusable key: expected an RSA, ECDSA (P-256, P-384) or Ed25519 key")
                }
            },
        )?;
        drop(certified);
        Ok((
            ClientCertPem {
                cert: cert_pem,
                key: key_pem,
            },
            Identity { chain, key },
        ))
    }
}

/// A parsed client certificate chain and key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Logs a warning, once per file and process, when `key` is open to its group or others.
fn warn_if_readable_by_others(key: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(key) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return;
        }
        static WARNED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
        let first = WARNED
            .get_or_init(Mutex::default)
            .lock()
            .map_or(true, |mut warned| warned.insert(key.to_owned()));
        if first {
            tracing::warn!(
                file = %key.display(),
                mode = %format_args!("{mode:04o}"),
                "the client certificate's private key file is open to its group or to others: \
                 `chmod 600` it (owned by this process's user); libpq refuses such a file"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = key;
}

/// The connection's byte stream: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the stream is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the TLS handshake needs: a connector configured for the mode and the name to verify.
pub(crate) struct TlsSetup {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl TlsSetup {
    /// Loads the root certificate (if any) and builds the rustls configuration for `mode`
    /// (which must not be [`SslMode::Disable`]).
    pub(crate) fn new(
        mode: SslMode,
        root_cert: Option<&Path>,
        client_cert: Option<&ClientCert>,
        host: &str,
    ) -> Result<Self, Error> {
        let config = client_config_with_cert(mode, root_cert, client_cert)?;
        let check_name = mode == SslMode::VerifyFull;
        let server_name = match ServerName::try_from(host.to_owned()) {
            Ok(name) => name,
            Err(_) if check_name => {
                return Err(Error::Config {
                    reason: "sslmode=verify-full needs a host that is a DNS name or an IP address",
                    source: None,
                })
            }
            // The name only serves for SNI and verification, and neither happens: an IP
            // address sends no SNI.
            Err(_) => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
        };
        Ok(TlsSetup {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the handshake on `tcp` (after the server's `S`).
    ///
    /// # Errors
    ///
    /// [`Error::Tls`] when rustls rejects the handshake (untrusted certificate, wrong host
    /// name, protocol error), [`Error::Io`] when the socket fails.
    pub(crate) async fn handshake(self, tcp: TcpStream) -> Result<Stream, Error> {
        match self.connector.connect(self.server_name, tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(error) if error.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                Err(Error::Tls(error))
            }
            Err(error) => Err(Error::Io(error)),
        }
    }
}

fn rustls_config(
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    identity: Option<Identity>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PgVerifier {
        roots,
        check_name,
        provider: Arc::clone(&provider),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| Error::Config {
            reason: "the TLS provider supports no safe protocol version",
            source: None,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        // Checked by `ClientCert::load` with the same provider.
        Some(Identity { chain, key }) => {
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| Error::Config {
                    reason: "the client certificate and key cannot be used together",
                    source: None,
                })
        }
    }
}

/// The rustls client configuration for `mode`, with libpq's certificate checks (the same
/// as the replication connection's), for other PostgreSQL connections of the same
/// deployment — e.g. `tokio-postgres-rustls` for plain SQL sessions.
///
/// # Errors
///
/// [`Error::Config`] for `verify-ca`/`verify-full` without a root certificate,
/// [`Error::RootCert`] when the file cannot be read or holds no certificate.
pub fn client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
) -> Result<rustls::ClientConfig, Error> {
    client_config_with_cert(mode, root_cert, None)
}

/// As [`client_config`], presenting `client_cert` when the server asks for a client
/// certificate (mutual TLS, libpq's `sslcert` and `sslkey`).
///
/// # Errors
///
/// As [`client_config`]; [`Error::ClientCert`] when the certificate or key file cannot be
/// used (see [`ClientCert::check`]).
pub fn client_config_with_cert(
    mode: SslMode,
    root_cert: Option<&Path>,
    client_cert: Option<&ClientCert>,
) -> Result<rustls::ClientConfig, Error> {
    let roots = match root_cert {
        Some(path) => Some(Arc::new(load_root_cert(path)?)),
        None if mode.verifies_chain() => {
            return Err(Error::Config {
                reason: "sslmode=verify-ca and sslmode=verify-full need a root certificate: \
                         set sslrootcert=PATH (the CA certificate, PEM)",
                source: None,
            })
        }
        None => None,
    };
    let identity = match client_cert {
        Some(client_cert) => Some(client_cert.load()?.1),
        None => None,
    };
    rustls_config(roots, mode == SslMode::VerifyFull, identity)
}

/// Reads every certificate of a PEM file into a root store.
fn load_root_cert(path: &Path) -> Result<RootCertStore, Error> {
    let failure = |reason: &'static str,
                   source: Option<Box<dyn std::error::Error + Send + Sync>>| {
        Error::RootCert {
            path: PathBuf::from(path),
            reason,
            source,
        }
    };
    let pem = std::fs::read(path).map_err(|e| failure("cannot read the file", Some(e.into())))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| failure("invalid PEM", Some(e.into())))?;
        roots
            .add(cert)
            .map_err(|e| failure("unusable certificate", Some(e.into())))?;
    }
    if roots.is_empty() {
        return Err(failure("no CERTIFICATE block in the file", None));
    }
    Ok(roots)
}

/// libpq's checks: the chain when there are roots, the name for `verify-full`; the handshake
/// signatures always (so the peer holds the certificate's key).
#[derive(Debug)]
struct PgVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

//! TLS for the replication connection: libpq's `sslmode`s on rustls (ring provider).
//!
//! The negotiation is PostgreSQL's classic one (`sslnegotiation=postgres`): an SSLRequest on
//! the fresh TCP connection, a one-byte answer (`S` or `N`), then the TLS handshake and the
//! normal startup inside TLS. See [`SslMode`] for what each mode checks.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
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
    pub(crate) fn new(mode: SslMode, root_cert: Option<&Path>, host: &str) -> Result<Self, Error> {
        let config = client_config(mode, root_cert)?;
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
) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PgVerifier {
        roots,
        check_name,
        provider: Arc::clone(&provider),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| Error::Config {
            reason: "the TLS provider supports no safe protocol version",
            source: None,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
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
    rustls_config(roots, mode == SslMode::VerifyFull)
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

//! TLS for NBD over rustls: the server's `NBD_OPT_STARTTLS` acceptor, the
//! client's upgrade, and the userspace proxy that lets the kernel use a TLS
//! connection.
//!
//! ```text
//!  server                                   client
//!  TlsServerConfig::from_dir(DIR, verify)   TlsClientConfig::from_params(&uri.tls_params)
//!        │ implements TlsAccept                   │ implements client::TlsUpgrade
//!  ServerBuilder::tls(mode, Arc<_>)         ClientOptions::from_uri (nbds://) sets it up
//!        │                                        │
//!  greeting ─► STARTTLS ─► ACK ─► TLS handshake ─► options afresh ─► GO ─► transmission
//! ```
//!
//! The protocol rules (FORCEDTLS/SELECTIVETLS, no plaintext bytes behind
//! `NBD_OPT_STARTTLS`, negotiation state forgotten after the upgrade, no
//! downgrade for a client that requires TLS) live in the sans-IO core
//! ([`nbdx_proto::server`], [`nbdx_proto::client`]); this module only turns
//! a plaintext stream into a TLS stream.
//!
//! Credentials are PEM files named as nbdkit and qemu name them, in one
//! directory: [`CA_CERT`], [`SERVER_CERT`], [`SERVER_KEY`], [`CLIENT_CERT`],
//! [`CLIENT_KEY`], and optionally [`CA_CRL`]. Keys may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC), not
//! encrypted. TLS 1.3 and 1.2 are offered ("MUST support TLS version 1.2"),
//! nothing older. The crypto provider is `ring`.
//!
//! Pre-shared keys (nbdkit `--tls-psk`, libnbd `tls-psk-file=`) need the
//! cargo feature `psk`: rustls has no external PSK, so that mode runs over
//! OpenSSL (`PskServerConfig`, `PskClientConfig`).

pub(crate) mod client;
mod pem;
pub mod proxy;
#[cfg(feature = "psk")]
mod psk;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use client::{TlsClientConfig, DEFAULT_SERVER_NAME};
pub use nbdx_proto::server::TlsMode;
#[cfg(feature = "psk")]
pub use psk::{PskClientConfig, PskKeys, PskServerConfig};
pub use server::TlsServerConfig;

/// The CA certificate(s) a peer's certificate must chain to.
pub const CA_CERT: &str = "ca-cert.pem";
/// Optional revocation list(s) for the certificates [`CA_CERT`] signed.
pub const CA_CRL: &str = "ca-crl.pem";
/// The server's certificate chain.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The client's certificate chain (for servers that verify their peers).
pub const CLIENT_CERT: &str = "client-cert.pem";
/// The client's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// TLS could not be set up. Messages are one line and name the file at
/// fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A credentials file is missing, unreadable or malformed.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file (or directory).
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The credentials were read but do not make a valid configuration.
    #[error("{0}")]
    Config(String),
    /// Something rustls (or nbdx) cannot do.
    #[error("{0}")]
    Unsupported(String),
}

impl TlsError {
    pub(crate) fn file(path: &Path, problem: impl Into<String>) -> Self {
        Self::File { path: path.to_owned(), problem: problem.into() }
    }
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::other(e)
    }
}

/// For an I/O error that is a TLS failure, a one-line explanation; alerts
/// that refuse our certificate say so (with TLS 1.3 the server's verdict on
/// a client certificate arrives after the handshake, at the first read).
pub(crate) fn explain_io_error(e: &std::io::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let hint = match tls {
        rustls::Error::AlertReceived(A::CertificateRequired) => " (the server requires a client certificate)",
        rustls::Error::AlertReceived(
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::CertificateRevoked | A::AccessDenied,
        ) => " (the server refused our client certificate)",
        _ => "",
    };
    Some(format!("{tls}{hint}"))
}

/// The crypto provider of every nbdx TLS configuration.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions nbdx offers: TLS 1.3 and 1.2.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

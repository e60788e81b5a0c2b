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

/// Reading certificates, keys and revocation lists from PEM files, with
/// errors that say which file is wrong and how.
mod pem {
    use std::io;
    use std::path::Path;

    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
    use rustls::RootCertStore;

    use super::TlsError;

    /// Why a file could not be used, in words.
    fn describe(e: pem::Error) -> String {
        match e {
            pem::Error::Io(e) => describe_io(&e),
            pem::Error::NoItemsFound => "no PEM section of the expected kind".to_owned(),
            other => format!("not valid PEM ({other})"),
        }
    }

    pub(crate) fn describe_io(e: &io::Error) -> String {
        match e.kind() {
            io::ErrorKind::NotFound => "no such file".to_owned(),
            io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        }
    }

    /// Every certificate in `path` (a chain, or a set of CA certificates).
    pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let fail = |e| TlsError::file(path, describe(e));
        let certs = CertificateDer::pem_file_iter(path).map_err(fail)?.collect::<Result<Vec<_>, _>>().map_err(fail)?;
        if certs.is_empty() {
            return Err(TlsError::file(path, "no certificate (-----BEGIN CERTIFICATE-----) in it"));
        }
        Ok(certs)
    }

    /// The first private key in `path`.
    pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::file(
                path,
                "no unencrypted private key (PKCS#8 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY') in it",
            ),
            e => TlsError::file(path, describe(e)),
        })
    }

    /// A trust store of the CA certificates in `path`.
    pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in certs(path)? {
            store.add(cert).map_err(|e| TlsError::file(path, format!("not a usable CA certificate ({e})")))?;
        }
        Ok(store)
    }

    /// The revocation lists in `path`, or none when the file does not exist.
    pub(crate) fn optional_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let fail = |e| TlsError::file(path, describe(e));
        let crls = CertificateRevocationListDer::pem_file_iter(path)
            .map_err(fail)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        if crls.is_empty() {
            return Err(TlsError::file(path, "no revocation list (-----BEGIN X509 CRL-----) in it"));
        }
        Ok(crls)
    }

    /// Fails unless `dir` is a readable directory.
    pub(crate) fn check_dir(dir: &Path) -> Result<(), TlsError> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(TlsError::file(dir, "not a directory")),
            Err(e) => Err(TlsError::file(dir, describe_io(&e))),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }

        #[test]
        fn a_missing_file_is_named_with_the_reason() {
            let dir = tempfile::tempdir().unwrap();
            let e = certs(&dir.path().join("ca-cert.pem")).unwrap_err();
            assert_eq!(e.to_string(), format!("{}/ca-cert.pem: no such file", dir.path().display()));
        }

        #[test]
        fn a_file_without_certificates_is_refused() {
            let dir = tempfile::tempdir().unwrap();
            let p = write(&dir, "c.pem", "hello\n");
            assert!(certs(&p)
                .unwrap_err()
                .to_string()
                .ends_with("c.pem: no certificate (-----BEGIN CERTIFICATE-----) in it"));
        }

        #[test]
        fn broken_pem_is_refused_as_such() {
            let dir = tempfile::tempdir().unwrap();
            let p = write(&dir, "c.pem", "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n");
            assert!(certs(&p).unwrap_err().to_string().contains("not valid PEM"), "{:?}", certs(&p));
        }

        #[test]
        fn an_encrypted_key_is_refused_with_the_accepted_kinds() {
            let dir = tempfile::tempdir().unwrap();
            let p = write(
                &dir,
                "k.pem",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            );
            assert!(key(&p).unwrap_err().to_string().contains("no unencrypted private key"));
        }

        #[test]
        fn a_missing_crl_file_is_no_crl_and_a_file_is_not_a_directory() {
            let dir = tempfile::tempdir().unwrap();
            assert!(optional_crls(&dir.path().join("ca-crl.pem")).unwrap().is_empty());
            let p = write(&dir, "f", "");
            assert!(check_dir(&p).unwrap_err().to_string().ends_with("not a directory"));
            assert!(check_dir(&dir.path().join("none")).unwrap_err().to_string().ends_with("no such file"));
            check_dir(dir.path()).unwrap();
        }
    }
}

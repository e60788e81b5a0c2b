//! The server side: [`TlsServerConfig`], the acceptor the server calls after
//! it acknowledged `NBD_OPT_STARTTLS`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

use super::{pem, provider, TlsError, CA_CERT, CA_CRL, SERVER_CERT, SERVER_KEY, VERSIONS};
use crate::server::{BoxStream, TlsAccept};

/// A server's TLS credentials and policy; cheap to clone. Plug it into
/// [`ServerBuilder::tls`](crate::server::ServerBuilder::tls):
///
/// ```no_run
/// # use std::sync::Arc;
/// use nbdx::tls::{TlsMode, TlsServerConfig};
/// # fn demo(exports: Vec<nbdx::Export>) -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsServerConfig::from_dir("/etc/pki/nbdx".as_ref(), false)?;
/// let server = exports
///     .into_iter()
///     .fold(nbdx::server::Server::builder(), |b, e| b.export(e))
///     .tls(TlsMode::Require, Arc::new(tls))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsServerConfig {
    config: Arc<rustls::ServerConfig>,
    verify_peer: bool,
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig").field("verify_peer", &self.verify_peer).finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// Reads `server-cert.pem` and `server-key.pem` from `dir` (the names
    /// nbdkit and qemu use). With `verify_peer`, clients must present a
    /// certificate that chains to `dir/ca-cert.pem` (and is not revoked by
    /// `dir/ca-crl.pem`, when that file exists); without it, no client
    /// certificate is asked for.
    pub fn from_dir(dir: &Path, verify_peer: bool) -> Result<Self, TlsError> {
        pem::check_dir(dir)?;
        let chain = pem::certs(&dir.join(SERVER_CERT))?;
        let key = pem::key(&dir.join(SERVER_KEY))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_peer {
            let ca = dir.join(CA_CERT);
            let roots = Arc::new(pem::roots(&ca)?);
            let crls = pem::optional_crls(&dir.join(CA_CRL))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .with_crls(crls)
                .build()
                .map_err(|e| TlsError::file(&ca, format!("cannot verify clients with it ({e})")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Config(format!("{}, {}: {e}", dir.join(SERVER_CERT).display(), dir.join(SERVER_KEY).display()))
        })?;
        // No resumption: every connection proves its client certificate
        // again, and NBD connections are few and long-lived.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self { config: Arc::new(config), verify_peer })
    }

    /// Whether clients must present a certificate signed by the CA.
    pub fn verify_peer(&self) -> bool {
        self.verify_peer
    }

    /// The rustls configuration, to inspect or reuse.
    pub fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
}

#[async_trait]
impl TlsAccept for TlsServerConfig {
    async fn accept(&self, stream: BoxStream) -> std::io::Result<BoxStream> {
        let tls = TlsAcceptor::from(self.config.clone()).accept(stream).await?;
        let (_, session) = tls.get_ref();
        tracing::debug!(
            version = ?session.protocol_version(),
            suite = ?session.negotiated_cipher_suite().map(|s| s.suite()),
            client_certificate = session.peer_certificates().is_some(),
            "TLS established"
        );
        Ok(Box::new(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a server certificate signed by it, as PEM.
    fn issue() -> (String, String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    fn error(d: &tempfile::TempDir, verify_peer: bool) -> String {
        TlsServerConfig::from_dir(d.path(), verify_peer).unwrap_err().to_string()
    }

    #[test]
    fn a_certificate_and_its_key_make_a_server_with_or_without_peer_verification() {
        let (ca, cert, key) = issue();
        let d = dir(&[(CA_CERT, &ca), (SERVER_CERT, &cert), (SERVER_KEY, &key)]);
        assert!(!TlsServerConfig::from_dir(d.path(), false).unwrap().verify_peer());
        assert!(TlsServerConfig::from_dir(d.path(), true).unwrap().verify_peer());
    }

    #[test]
    fn a_missing_key_or_certificate_is_named() {
        let (_, cert, key) = issue();
        assert!(error(&dir(&[(SERVER_CERT, &cert)]), false).ends_with("server-key.pem: no such file"));
        assert!(error(&dir(&[(SERVER_KEY, &key)]), false).ends_with("server-cert.pem: no such file"));
    }

    #[test]
    fn verifying_peers_needs_the_ca_certificate() {
        let (_, cert, key) = issue();
        let d = dir(&[(SERVER_CERT, &cert), (SERVER_KEY, &key)]);
        assert!(error(&d, true).ends_with("ca-cert.pem: no such file"));
        TlsServerConfig::from_dir(d.path(), false).unwrap();
    }

    #[test]
    fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
        let (_, cert, _) = issue();
        let (_, _, other_key) = issue();
        let e = error(&dir(&[(SERVER_CERT, &cert), (SERVER_KEY, &other_key)]), false);
        assert!(e.contains("server-cert.pem") && e.contains("server-key.pem"), "{e}");
    }
}

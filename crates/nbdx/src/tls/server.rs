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

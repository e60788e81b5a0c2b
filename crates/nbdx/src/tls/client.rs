//! The client side: [`TlsClientConfig`], which turns the plaintext stream
//! into TLS once the server acknowledged `NBD_OPT_STARTTLS`, and the
//! configuration an `nbds://` URI asks for.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::{pem, provider, TlsError, CA_CERT, CLIENT_CERT, CLIENT_KEY, VERSIONS};
use crate::client::{Stream, TlsUpgrade, UpgradeFuture};
use crate::uri::{TlsParams, TlsType};

/// The name verified when the connection has no host name (Unix sockets)
/// and no `tls-hostname=` was given.
pub const DEFAULT_SERVER_NAME: &str = "localhost";

/// A client's TLS trust and credentials; cheap to clone. Plug it into
/// [`ClientOptions::tls_upgrade`](crate::client::ClientOptions::tls_upgrade)
/// with [`TlsMode::Require`](crate::client::TlsMode::Require);
/// [`ClientOptions::from_uri`](crate::client::ClientOptions::from_uri) does
/// both for `nbds://` URIs.
#[derive(Clone)]
pub struct TlsClientConfig {
    config: Arc<rustls::ClientConfig>,
    verify_peer: bool,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig").field("verify_peer", &self.verify_peer).finish_non_exhaustive()
    }
}

impl TlsClientConfig {
    /// Trust and credentials from a directory, or the system's CAs.
    ///
    /// * `dir` given: the server's certificate must chain to
    ///   `dir/ca-cert.pem` (the system's CAs when that file is absent), and
    ///   `dir/client-cert.pem` with `dir/client-key.pem`, when present, are
    ///   offered to servers that ask for a client certificate.
    /// * `dir` absent: the system's CAs (`/etc/ssl/certs` and friends, as
    ///   OpenSSL finds them), no client certificate.
    /// * `verify_peer` false: any server certificate is accepted (the
    ///   connection is encrypted but the server is not authenticated); a
    ///   warning is logged.
    pub fn from_dir(dir: Option<&Path>, verify_peer: bool) -> Result<Self, TlsError> {
        if let Some(dir) = dir {
            pem::check_dir(dir)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_peer {
            builder.with_root_certificates(trust(dir)?)
        } else {
            tracing::warn!(
                "TLS: server certificates are not verified (tls-verify-peer=0): encrypted, not authenticated"
            );
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
        };
        let (cert, key) = match dir {
            Some(d) => (d.join(CLIENT_CERT), d.join(CLIENT_KEY)),
            None => return Ok(Self::new(builder.with_no_client_auth(), verify_peer)),
        };
        let config = match (cert.exists(), key.exists()) {
            (false, false) => builder.with_no_client_auth(),
            (true, true) => builder
                .with_client_auth_cert(pem::certs(&cert)?, pem::key(&key)?)
                .map_err(|e| TlsError::Config(format!("{}, {}: {e}", cert.display(), key.display())))?,
            (true, false) => return Err(TlsError::file(&key, format!("no such file (needed with {CLIENT_CERT})"))),
            (false, true) => return Err(TlsError::file(&cert, format!("no such file (needed with {CLIENT_KEY})"))),
        };
        Ok(Self::new(config, verify_peer))
    }

    /// The X.509 configuration URI query parameters ask for:
    /// `tls-certificates`, `tls-verify-peer` (alias `tls-verification`).
    /// `tls-hostname` is applied by
    /// [`ClientOptions::from_uri`](crate::client::ClientOptions::from_uri).
    /// `tls-type=anon` is refused (rustls has no anonymous TLS), and so are
    /// pre-shared keys (`tls-type=psk`, `tls-psk-file`), which
    /// `ClientOptions::from_uri` hands to `PskClientConfig` (feature `psk`).
    pub fn from_params(params: &TlsParams) -> Result<Self, TlsError> {
        match params.kind {
            Some(TlsType::Anon) => {
                return Err(TlsError::Unsupported("tls-type=anon: anonymous TLS is not supported".into()))
            }
            Some(TlsType::Psk) => return Err(psk_unsupported()),
            Some(TlsType::X509) | None if params.psk_file.is_some() => return Err(psk_unsupported()),
            Some(TlsType::X509) | None => {}
        }
        Self::from_dir(params.certificates.as_deref(), params.verify_peer.unwrap_or(true))
    }

    fn new(config: rustls::ClientConfig, verify_peer: bool) -> Self {
        Self { config: Arc::new(config), verify_peer }
    }

    /// Whether the server's certificate is verified.
    pub fn verify_peer(&self) -> bool {
        self.verify_peer
    }

    /// The rustls configuration, to inspect or reuse.
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }
}

fn psk_unsupported() -> TlsError {
    let why = if cfg!(feature = "psk") { "use PskClientConfig" } else { "nbdx was built without the psk feature" };
    TlsError::Unsupported(format!("TLS with pre-shared keys (tls-psk-file, tls-type=psk): {why}"))
}

/// The CAs of `dir/ca-cert.pem`, else the system's.
fn trust(dir: Option<&Path>) -> Result<RootCertStore, TlsError> {
    if let Some(ca) = dir.map(|d| d.join(CA_CERT)).filter(|ca| ca.exists()) {
        return pem::roots(&ca);
    }
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(TlsError::Config(format!(
            "no system CA certificates found{why}; give a directory with {CA_CERT} (tls-certificates=DIR)"
        )));
    }
    Ok(store)
}

impl TlsUpgrade for TlsClientConfig {
    fn upgrade<'a>(&'a self, stream: Stream, server_name: &'a str) -> UpgradeFuture<'a> {
        Box::pin(async move {
            let name = if server_name.is_empty() { DEFAULT_SERVER_NAME } else { server_name };
            let name = ServerName::try_from(name.to_owned()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("invalid TLS server name {name:?}"))
            })?;
            let tls = TlsConnector::from(self.config.clone()).connect(name, stream).await?;
            let (_, session) = tls.get_ref();
            tracing::debug!(version = ?session.protocol_version(), "TLS established");
            Ok(Stream::other(tls))
        })
    }
}

/// The upgrade `nbds://` URIs get: the configuration is read from the
/// files once, when first needed (or checked before connecting).
pub(crate) struct UriTls {
    params: TlsParams,
    user: Option<String>,
    built: OnceLock<Result<Arc<dyn TlsUpgrade>, TlsError>>,
}

impl UriTls {
    /// TLS as `params` ask, for the URI's `user` (the PSK identity unless
    /// `tls-username=` names one).
    pub(crate) fn new(params: TlsParams, user: Option<String>) -> Self {
        Self { params, user, built: OnceLock::new() }
    }

    fn build(&self) -> Result<Arc<dyn TlsUpgrade>, TlsError> {
        let psk = self.params.kind == Some(TlsType::Psk) || self.params.psk_file.is_some();
        if !psk {
            return Ok(Arc::new(TlsClientConfig::from_params(&self.params)?));
        }
        #[cfg(feature = "psk")]
        {
            let file = self.params.psk_file.as_deref().ok_or_else(|| {
                TlsError::Config("tls-type=psk needs tls-psk-file=FILE (username:hexkey lines)".into())
            })?;
            let user = self.params.username.clone().or_else(|| self.user.clone());
            let user = user.unwrap_or_else(super::psk::default_user);
            Ok(Arc::new(super::psk::PskClientConfig::from_file(file, &user)?))
        }
        #[cfg(not(feature = "psk"))]
        {
            let _ = &self.user;
            Err(psk_unsupported())
        }
    }

    fn get(&self) -> Result<&Arc<dyn TlsUpgrade>, TlsError> {
        self.built.get_or_init(|| self.build()).as_ref().map_err(Clone::clone)
    }
}

impl TlsUpgrade for UriTls {
    fn check(&self) -> io::Result<()> {
        self.get().map(drop).map_err(io::Error::from)
    }

    fn upgrade<'a>(&'a self, stream: Stream, server_name: &'a str) -> UpgradeFuture<'a> {
        match self.get() {
            Ok(c) => c.upgrade(stream, server_name),
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }
}

/// Accepts any server certificate, but still checks that the server holds
/// its key (the handshake signatures).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS end to end, in process: nbdx client and server over rustls with
//! certificates made at test time, the STARTTLS injection attack, and the
//! userspace proxy the kernel hand-over uses; then the client against
//! nbdkit and qemu-nbd with TLS.

#[path = "tls/injection.rs"]
mod injection;
#[path = "tls/peers.rs"]
mod peers;
#[path = "tls/proxy.rs"]
mod proxy;
#[cfg(feature = "psk")]
#[path = "tls/psk.rs"]
mod psk;
#[path = "tls/sessions.rs"]
mod sessions;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nbdx::client::{Client, ClientResult};
use nbdx::server::Server;
use nbdx::tls::{TlsMode, TlsServerConfig};
use nbdx::{Export, MemoryDevice};

/// Every test ends within this, or fails.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test took longer than 30 s")
}

/// A server on a Unix socket in a temporary directory.
struct Running {
    server: Server,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// Exports named `names`, 8 MiB RAM disks each; `tls_only` are TLS-only.
fn exports(names: &[&str], tls_only: &[&str]) -> Vec<Export> {
    names.iter().map(|n| Export::new(*n, MemoryDevice::new(8 << 20)).with_tls_only(tls_only.contains(n))).collect()
}

/// Serves `exports` with TLS `mode`, credentials from `certs` (none for
/// `TlsMode::Off`).
fn serve(mode: TlsMode, certs: Option<(&Path, bool)>, exports: Vec<Export>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let mut builder = exports.into_iter().fold(Server::builder(), |b, e| b.export(e));
    if let Some((certs, verify_peer)) = certs {
        builder = builder.tls(mode, Arc::new(TlsServerConfig::from_dir(certs, verify_peer).unwrap()));
    }
    let server = builder.build().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });
    Running { server, socket, _dir: dir }
}

impl Running {
    /// `scheme://` URI of `export` with extra query parameters.
    fn uri(&self, scheme: &str, export: &str, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "&" };
        format!("{scheme}:///{export}?socket={}{sep}{params}", self.socket.display())
    }

    /// An `nbds+unix://` URI of `export` trusting the CA in `client_dir`.
    fn nbds(&self, export: &str, client_dir: &Path) -> String {
        self.uri("nbds+unix", export, &format!("tls-certificates={}", client_dir.display()))
    }
}

/// Writes a pattern, reads it back, and disconnects.
async fn round_trip(client: ClientResult<Client>) {
    let c = client.expect("connect");
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    c.write(4096, &data, false).await.unwrap();
    let mut back = vec![0u8; data.len()];
    c.read(4096, &mut back).await.unwrap();
    assert!(back == data, "read back what was written");
    c.disconnect().await;
}

/// Certificates made at test time (rcgen), written as nbdkit/qemu name them.
mod pki {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    /// A certificate authority.
    pub struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// A certificate and its key, PEM-encoded.
    pub struct Issued {
        pub cert: String,
        pub key: String,
    }

    impl Ca {
        pub fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            Self { issuer }
        }

        pub fn pem(&self) -> String {
            self.issuer.pem()
        }

        fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Issued {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names.clone()).unwrap();
            params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            Issued { cert: cert.pem(), key: key.serialize_pem() }
        }

        /// A server certificate for `names` (DNS names or IP addresses).
        pub fn server(&self, names: &[&str]) -> Issued {
            self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
        }

        /// A client certificate.
        pub fn client(&self, name: &str) -> Issued {
            self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A server's directory: `ca-cert.pem` (of `ca`) and a server certificate
    /// for localhost and 127.0.0.1 signed by `signer`.
    pub fn server_dir(ca: &Ca, signer: &Ca) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let issued = signer.server(&["localhost", "127.0.0.1"]);
        write(dir.path(), "ca-cert.pem", &ca.pem());
        write(dir.path(), "server-cert.pem", &issued.cert);
        write(dir.path(), "server-key.pem", &issued.key);
        dir
    }

    /// A client's directory: `ca-cert.pem` (of `ca`), and a client
    /// certificate signed by `signer` if there is one.
    pub fn client_dir(ca: &Ca, signer: Option<&Ca>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca-cert.pem", &ca.pem());
        if let Some(signer) = signer {
            let issued = signer.client("alice");
            write(dir.path(), "client-cert.pem", &issued.cert);
            write(dir.path(), "client-key.pem", &issued.key);
        }
        dir
    }
}

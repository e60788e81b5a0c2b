//! Certificates made at test time (rcgen), written as nbdkit/qemu name them.

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

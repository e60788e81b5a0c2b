//! Reading certificates, keys and revocation lists from PEM files, with
//! errors that say which file is wrong and how.

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
        let p =
            write(&dir, "k.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
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

//! TLS with pre-shared keys, as nbdkit `--tls-psk` and libnbd
//! `tls-psk-file=` do it, over OpenSSL (cargo feature `psk`).
//!
//! rustls implements no external PSK, so this one mode uses OpenSSL through
//! the `openssl`/`tokio-openssl` crates. The keys file is GnuTLS `psktool`'s
//! format, one `username:hexkey` line per user:
//!
//! ```text
//! alice:9f0bd1d6ecf2c2f05b9e3e7f6c35d2f8a3c8c91b5a6a0a9e7f25fd1d0b5e0c31
//! ```
//!
//! TLS 1.3 (a SHA-256 suite, as OpenSSL requires for PSKs from its callbacks)
//! and TLS 1.2 with ECDHE-PSK suites (forward secrecy) are offered. The
//! identity is the user name; the server looks its key up in the file.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVersion};

use super::TlsError;
use crate::client::{Stream, TlsUpgrade, UpgradeFuture};
use crate::server::{BoxStream, TlsAccept};

/// TLS 1.2 suites offered with PSKs: key exchange with ECDHE.
const TLS12_SUITES: &str =
    "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-AES256-CBC-SHA";
/// TLS 1.3 suites: OpenSSL's PSK callbacks need SHA-256 ones.
const TLS13_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

/// The keys of a `psktool` file: user name → key.
#[derive(Clone)]
pub struct PskKeys {
    keys: HashMap<String, Vec<u8>>,
}

impl fmt::Debug for PskKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&String> = self.keys.keys().collect();
        users.sort();
        f.debug_struct("PskKeys").field("users", &users).finish_non_exhaustive()
    }
}

impl PskKeys {
    /// Reads `path` (`username:hexkey` lines; blank lines are skipped).
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|e| TlsError::file(path, super::pem::describe_io(&e)))?;
        let mut keys = HashMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let bad = |why: &str| TlsError::file(path, format!("line {}: {why}", n + 1));
            let (user, hex) = line.trim_end().split_once(':').ok_or_else(|| bad("expected username:hexkey"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let key = decode_hex(hex).ok_or_else(|| bad("the key is not an even number of hex digits"))?;
            if key.is_empty() || key.len() > 256 {
                return Err(bad("keys are 1 to 256 bytes"));
            }
            keys.insert(user.to_owned(), key);
        }
        if keys.is_empty() {
            return Err(TlsError::file(path, "no keys in it"));
        }
        Ok(Self { keys })
    }

    /// The key of `user`.
    pub fn get(&self, user: &str) -> Option<&[u8]> {
        self.keys.get(user).map(Vec::as_slice)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

fn ssl_error(e: openssl::error::ErrorStack) -> TlsError {
    TlsError::Config(format!("OpenSSL: {e}"))
}

fn context(method: SslMethod) -> Result<openssl::ssl::SslContextBuilder, TlsError> {
    let mut b = SslContext::builder(method).map_err(ssl_error)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(ssl_error)?;
    b.set_cipher_list(TLS12_SUITES).map_err(ssl_error)?;
    b.set_ciphersuites(TLS13_SUITES).map_err(ssl_error)?;
    Ok(b)
}

/// Copies `key` into OpenSSL's buffer; its length, or 0 (refuse) if it
/// does not fit.
fn put(key: &[u8], out: &mut [u8]) -> usize {
    match out.get_mut(..key.len()) {
        Some(dst) => {
            dst.copy_from_slice(key);
            key.len()
        }
        None => 0,
    }
}

/// The server side: accepts clients whose identity is a user of the keys
/// file and who hold that user's key.
#[derive(Clone)]
pub struct PskServerConfig {
    ctx: SslContext,
}

impl fmt::Debug for PskServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskServerConfig").finish_non_exhaustive()
    }
}

impl PskServerConfig {
    /// Reads the keys of `path` (nbdkit `--tls-psk=FILE`).
    pub fn from_file(path: &Path) -> Result<Self, TlsError> {
        let keys = Arc::new(PskKeys::from_file(path)?);
        let mut b = context(SslMethod::tls_server())?;
        // No resumption: every connection proves its key.
        b.set_num_tickets(0).map_err(ssl_error)?;
        b.set_psk_server_callback(move |_, identity, out| {
            let user = identity.and_then(|i| std::str::from_utf8(i).ok()).unwrap_or_default();
            let found = keys.get(user).map_or(0, |k| put(k, out));
            if found == 0 {
                tracing::info!(user, "TLS-PSK: unknown user");
            }
            Ok(found)
        });
        Ok(Self { ctx: b.build() })
    }
}

#[async_trait]
impl TlsAccept for PskServerConfig {
    async fn accept(&self, stream: BoxStream) -> io::Result<BoxStream> {
        let ssl = Ssl::new(&self.ctx).map_err(io::Error::other)?;
        let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(io::Error::other)?;
        Pin::new(&mut tls).accept().await.map_err(|e| io::Error::other(format!("TLS-PSK handshake: {e}")))?;
        tracing::debug!(version = tls.ssl().version_str(), "TLS-PSK established");
        Ok(Box::new(tls))
    }
}

/// The client side: identifies as `user` with that user's key.
#[derive(Clone)]
pub struct PskClientConfig {
    ctx: SslContext,
    user: String,
}

impl fmt::Debug for PskClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskClientConfig").field("user", &self.user).finish_non_exhaustive()
    }
}

impl PskClientConfig {
    /// Takes `user`'s key from `path` (libnbd `tls-psk-file=FILE`,
    /// `tls-username=USER`).
    pub fn from_file(path: &Path, user: &str) -> Result<Self, TlsError> {
        let keys = PskKeys::from_file(path)?;
        let key = keys.get(user).ok_or_else(|| TlsError::file(path, format!("no key for user {user:?}")))?.to_vec();
        let identity = user.as_bytes().to_vec();
        let mut b = context(SslMethod::tls_client())?;
        b.set_psk_client_callback(move |_, _hint, identity_out, key_out| {
            // The identity is a NUL-terminated string.
            match identity_out.get_mut(..=identity.len()) {
                Some(dst) => {
                    dst[..identity.len()].copy_from_slice(&identity);
                    dst[identity.len()] = 0;
                    Ok(put(&key, key_out))
                }
                None => Ok(0),
            }
        });
        Ok(Self { ctx: b.build(), user: user.to_owned() })
    }

    /// The user name (PSK identity).
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl TlsUpgrade for PskClientConfig {
    fn upgrade<'a>(&'a self, stream: Stream, _server_name: &'a str) -> UpgradeFuture<'a> {
        Box::pin(async move {
            let ssl = Ssl::new(&self.ctx).map_err(io::Error::other)?;
            let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(io::Error::other)?;
            Pin::new(&mut tls).connect().await.map_err(|e| io::Error::other(format!("TLS-PSK: {e}")))?;
            tracing::debug!(version = tls.ssl().version_str(), "TLS-PSK established");
            Ok(Stream::other(tls))
        })
    }
}

/// The user name when neither `tls-username=` nor the URI names one: the
/// local login, as libnbd does.
pub(crate) fn default_user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "root".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Result<PskKeys, TlsError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.psk");
        std::fs::write(&p, text).unwrap();
        PskKeys::from_file(&p)
    }

    #[test]
    fn psktool_lines_give_one_key_per_user() {
        let k = keys("alice:00ff10\n\nbob:abcd\n").unwrap();
        assert_eq!(k.get("alice"), Some(&[0, 0xff, 0x10][..]));
        assert_eq!(k.get("bob"), Some(&[0xab, 0xcd][..]));
        assert_eq!(k.get("carol"), None);
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        let e = keys("alice:00\nbob\n").unwrap_err().to_string();
        assert!(e.ends_with("keys.psk: line 2: expected username:hexkey"), "{e}");
        assert!(keys("alice:0g").unwrap_err().to_string().contains("line 1: the key is not"));
        assert!(keys(":00").unwrap_err().to_string().contains("empty user name"));
        assert!(keys("\n").unwrap_err().to_string().ends_with("no keys in it"));
    }
}

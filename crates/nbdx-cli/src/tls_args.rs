//! The TLS flags of `nbdx serve`, flattened into its arguments.
//!
//! ```text
//! --tls=off|on|require     NOTLS (default), SELECTIVETLS, FORCEDTLS (proto.md "TLS support")
//! --tls-certificates DIR   server-cert.pem, server-key.pem; ca-cert.pem with --tls-verify-peer
//! --tls-verify-peer        clients must present a certificate signed by DIR/ca-cert.pem
//! --tls-only NAME          under --tls=on, export NAME needs TLS (repeatable)
//! --tls-psk FILE           pre-shared keys (psktool's username:hexkey lines) instead of certificates
//! ```
//!
//! Misuse (TLS on without credentials, `--tls-only` without `--tls=on`, an
//! unknown export name) is a usage error, exit status 2; credentials that
//! cannot be read or used are an error, exit status 1.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use nbdx::server::TlsAccept;
use nbdx::tls::{TlsMode, TlsServerConfig};

/// `--tls`: when clients must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum TlsPolicy {
    /// Plaintext only: NBD_OPT_STARTTLS is refused.
    #[default]
    Off,
    /// TLS offered; plaintext clients may use every export not marked --tls-only.
    On,
    /// TLS required: nothing but NBD_OPT_STARTTLS is answered in plaintext.
    Require,
}

/// TLS flags of `nbdx serve`.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// TLS policy: off, on (offered; exports named by --tls-only need it) or
    /// require (no export is listed, described or opened without TLS).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = TlsPolicy::Off)]
    tls: TlsPolicy,
    /// Directory holding server-cert.pem and server-key.pem (PEM; as nbdkit
    /// and qemu name them), and ca-cert.pem for --tls-verify-peer.
    #[arg(long, value_name = "DIR")]
    tls_certificates: Option<PathBuf>,
    /// Require a client certificate signed by DIR/ca-cert.pem (revocations
    /// in DIR/ca-crl.pem, if present, are honoured).
    #[arg(long)]
    tls_verify_peer: bool,
    /// With --tls=on, only TLS clients may use export NAME (repeatable).
    #[arg(long = "tls-only", value_name = "NAME")]
    tls_only: Vec<String>,
    /// Authenticate clients with pre-shared keys instead of certificates:
    /// FILE holds username:hexkey lines (psktool's format, as nbdkit --tls-psk).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tls_certificates", "tls_verify_peer"])]
    tls_psk: Option<PathBuf>,
}

/// Why the TLS flags cannot be used.
#[derive(Debug)]
pub(crate) enum TlsArgsError {
    /// The flags contradict each other: exit status 2.
    Usage(String),
    /// The credentials are unusable: exit status 1.
    Credentials(String),
}

/// The server's TLS mode and acceptor, if TLS is on.
pub(crate) type Acceptor = Option<(TlsMode, Arc<dyn TlsAccept>)>;

impl TlsArgs {
    /// Whether export `name` is to be served to TLS clients only.
    pub(crate) fn is_tls_only(&self, name: &str) -> bool {
        self.tls_only.iter().any(|n| n == name)
    }

    /// The URI scheme a client needs for export `name`.
    pub(crate) fn scheme(&self, name: &str) -> &'static str {
        match self.tls {
            TlsPolicy::Require => "nbds",
            TlsPolicy::On if self.is_tls_only(name) => "nbds",
            _ => "nbd",
        }
    }

    /// Checks the flags against the export names, then reads the
    /// credentials.
    pub(crate) fn acceptor(&self, exports: &[&str]) -> Result<Acceptor, TlsArgsError> {
        let usage = |m: String| Err(TlsArgsError::Usage(m));
        if let Some(unknown) = self.tls_only.iter().find(|n| !exports.contains(&n.as_str())) {
            return usage(format!("--tls-only {unknown:?}: no such export"));
        }
        let mode = match self.tls {
            TlsPolicy::Off => {
                let certs = self.tls_certificates.is_some() || self.tls_psk.is_some();
                if certs || self.tls_verify_peer || !self.tls_only.is_empty() {
                    let flags = "--tls-certificates, --tls-psk, --tls-verify-peer and --tls-only";
                    return usage(format!("{flags} need --tls=on or --tls=require"));
                }
                return Ok(None);
            }
            TlsPolicy::On => TlsMode::On,
            TlsPolicy::Require => TlsMode::Require,
        };
        if let Some(keys) = &self.tls_psk {
            return Ok(Some((mode, psk(keys)?)));
        }
        let Some(dir) = &self.tls_certificates else {
            let flag = if mode == TlsMode::On { "on" } else { "require" };
            return usage(format!("--tls={flag} needs --tls-certificates DIR or --tls-psk FILE"));
        };
        let config = TlsServerConfig::from_dir(dir, self.tls_verify_peer)
            .map_err(|e| TlsArgsError::Credentials(format!("TLS: {e}")))?;
        Ok(Some((mode, Arc::new(config))))
    }
}

#[cfg(feature = "psk")]
fn psk(keys: &std::path::Path) -> Result<Arc<dyn TlsAccept>, TlsArgsError> {
    let config =
        nbdx::tls::PskServerConfig::from_file(keys).map_err(|e| TlsArgsError::Credentials(format!("TLS: {e}")))?;
    Ok(Arc::new(config))
}

#[cfg(not(feature = "psk"))]
fn psk(_: &std::path::Path) -> Result<Arc<dyn TlsAccept>, TlsArgsError> {
    Err(TlsArgsError::Credentials("--tls-psk: this nbdx was built without the psk feature (OpenSSL)".into()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn parse(args: &[&str]) -> TlsArgs {
        Cli::try_parse_from([&["nbdx"], args].concat()).unwrap().tls
    }

    fn usage(args: &[&str]) -> String {
        match parse(args).acceptor(&["a", "b"]) {
            Err(TlsArgsError::Usage(m)) => m,
            other => panic!("want a usage error, got {other:?}", other = other.map(|a| a.map(|(m, _)| m))),
        }
    }

    #[test]
    fn tls_is_off_by_default_and_clients_use_nbd_uris() {
        let a = parse(&[]);
        assert!(a.acceptor(&["a"]).unwrap().is_none());
        assert_eq!(a.scheme("a"), "nbd");
    }

    #[test]
    fn tls_on_or_require_without_certificates_is_a_usage_error() {
        assert_eq!(usage(&["--tls=require"]), "--tls=require needs --tls-certificates DIR or --tls-psk FILE");
        assert_eq!(usage(&["--tls", "on"]), "--tls=on needs --tls-certificates DIR or --tls-psk FILE");
    }

    #[test]
    fn tls_flags_without_tls_and_unknown_tls_only_exports_are_usage_errors() {
        assert!(usage(&["--tls-verify-peer"]).contains("need --tls=on"));
        assert!(usage(&["--tls-only", "a"]).contains("need --tls=on"));
        assert!(usage(&["--tls-psk", "keys"]).contains("need --tls=on"));
        let both = Cli::try_parse_from(["nbdx", "--tls=on", "--tls-psk", "k", "--tls-certificates", "d"]);
        assert!(both.is_err(), "certificates or keys, not both");
        assert_eq!(usage(&["--tls=on", "--tls-only", "zzz"]), "--tls-only \"zzz\": no such export");
    }

    #[test]
    fn missing_credentials_are_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join("nbdx-cli-no-such-tls-dir");
        let a = parse(&["--tls=require", "--tls-certificates", dir.to_str().unwrap()]);
        match a.acceptor(&["a"]) {
            Err(TlsArgsError::Credentials(m)) => assert_eq!(m, format!("TLS: {}: no such file", dir.display())),
            other => panic!("{:?}", other.map(|a| a.map(|(m, _)| m))),
        }
    }

    #[test]
    fn tls_only_exports_need_nbds_under_on_and_everything_does_under_require() {
        let on = parse(&["--tls=on", "--tls-only", "b"]);
        assert_eq!((on.scheme("a"), on.scheme("b")), ("nbd", "nbds"));
        assert!(on.is_tls_only("b") && !on.is_tls_only("a"));
        assert_eq!(parse(&["--tls=require"]).scheme("a"), "nbds");
    }
}

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

/// The server's TLS mode and acceptor, if TLS is on.
pub(crate) type Acceptor = Option<(TlsMode, Arc<dyn TlsAccept>)>;

impl TlsArgs {
    /// Whether export `name` is to be served to TLS clients only.
    pub(crate) fn is_tls_only(&self, name: &str) -> bool {
        self.tls_only.iter().any(|n| n == name)
    }

    /// The URI a client needs for `export`: `plain` (an `nbd://` or
    /// `nbd+unix://` URI) with the `nbds` scheme when TLS is required.
    pub(crate) fn uri(&self, plain: String, export: &str) -> String {
        let tls = self.tls == TlsPolicy::Require || (self.tls == TlsPolicy::On && self.is_tls_only(export));
        match plain.strip_prefix("nbd") {
            Some(rest) if tls => format!("nbds{rest}"),
            _ => plain,
        }
    }

    /// What is wrong with the flags, given the export names (a usage
    /// error), if anything.
    pub(crate) fn misuse(&self, exports: &[String]) -> Option<String> {
        if let Some(unknown) = self.tls_only.iter().find(|n| !exports.contains(n)) {
            return Some(format!("--tls-only {unknown:?}: no such export"));
        }
        let credentials = self.tls_certificates.is_some() || self.tls_psk.is_some();
        match self.tls {
            TlsPolicy::Off if credentials || self.tls_verify_peer || !self.tls_only.is_empty() => {
                let flags = "--tls-certificates, --tls-psk, --tls-verify-peer and --tls-only";
                Some(format!("{flags} need --tls=on or --tls=require"))
            }
            TlsPolicy::On | TlsPolicy::Require if !credentials => {
                let mode = if self.tls == TlsPolicy::On { "on" } else { "require" };
                Some(format!("--tls={mode} needs --tls-certificates DIR or --tls-psk FILE"))
            }
            _ => None,
        }
    }

    /// Reads the credentials (after [`misuse`](Self::misuse) found nothing).
    pub(crate) fn acceptor(&self) -> Result<Acceptor, String> {
        let mode = match self.tls {
            TlsPolicy::Off => return Ok(None),
            TlsPolicy::On => TlsMode::On,
            TlsPolicy::Require => TlsMode::Require,
        };
        let acceptor: Arc<dyn TlsAccept> = match (&self.tls_psk, &self.tls_certificates) {
            (Some(keys), _) => psk(keys)?,
            (None, Some(dir)) => {
                Arc::new(TlsServerConfig::from_dir(dir, self.tls_verify_peer).map_err(|e| format!("TLS: {e}"))?)
            }
            (None, None) => return Err("TLS needs --tls-certificates DIR or --tls-psk FILE".into()),
        };
        Ok(Some((mode, acceptor)))
    }
}

#[cfg(feature = "psk")]
fn psk(keys: &std::path::Path) -> Result<Arc<dyn TlsAccept>, String> {
    Ok(Arc::new(nbdx::tls::PskServerConfig::from_file(keys).map_err(|e| format!("TLS: {e}"))?))
}

#[cfg(not(feature = "psk"))]
fn psk(_: &std::path::Path) -> Result<Arc<dyn TlsAccept>, String> {
    Err("--tls-psk: this nbdx was built without the psk feature (OpenSSL)".into())
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
        parse(args).misuse(&["a".into(), "b".into()]).expect("a usage error")
    }

    #[test]
    fn tls_is_off_by_default_and_clients_use_nbd_uris() {
        let a = parse(&[]);
        assert_eq!(a.misuse(&["a".into()]), None);
        assert!(a.acceptor().unwrap().is_none());
        assert_eq!(a.uri("nbd://localhost:10809/a".into(), "a"), "nbd://localhost:10809/a");
    }

    #[test]
    fn tls_on_or_require_without_credentials_is_a_usage_error() {
        assert_eq!(usage(&["--tls=require"]), "--tls=require needs --tls-certificates DIR or --tls-psk FILE");
        assert_eq!(usage(&["--tls", "on"]), "--tls=on needs --tls-certificates DIR or --tls-psk FILE");
    }

    #[test]
    fn tls_flags_without_tls_and_unknown_tls_only_exports_are_usage_errors() {
        assert!(usage(&["--tls-verify-peer"]).contains("need --tls=on"));
        assert!(usage(&["--tls-only", "a"]).contains("need --tls=on"));
        assert!(usage(&["--tls-psk", "keys"]).contains("need --tls=on"));
        assert_eq!(
            usage(&["--tls=on", "--tls-certificates", "d", "--tls-only", "zzz"]),
            "--tls-only \"zzz\": no such export"
        );
        let both = Cli::try_parse_from(["nbdx", "--tls=on", "--tls-psk", "k", "--tls-certificates", "d"]);
        assert!(both.is_err(), "certificates or keys, not both");
    }

    #[test]
    fn missing_credentials_are_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join("nbdx-cli-no-such-tls-dir");
        let a = parse(&["--tls=require", "--tls-certificates", dir.to_str().unwrap()]);
        assert_eq!(a.misuse(&["a".into()]), None);
        let e = a.acceptor().map(|_| ()).unwrap_err();
        assert_eq!(e, format!("TLS: {}: no such file", dir.display()));
    }

    #[test]
    fn tls_only_exports_need_nbds_under_on_and_everything_does_under_require() {
        let on = parse(&["--tls=on", "--tls-only", "b"]);
        assert_eq!(on.uri("nbd+unix:///a?socket=s".into(), "a"), "nbd+unix:///a?socket=s");
        assert_eq!(on.uri("nbd+unix:///b?socket=s".into(), "b"), "nbds+unix:///b?socket=s");
        assert!(on.is_tls_only("b") && !on.is_tls_only("a"));
        assert_eq!(parse(&["--tls=require"]).uri("nbd://h:1/".into(), ""), "nbds://h:1/");
    }
}

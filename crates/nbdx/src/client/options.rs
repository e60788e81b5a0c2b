//! [`ClientOptions`]: what to negotiate and how long to wait.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nbdx_proto::consts::BASE_ALLOCATION;
use nbdx_proto::limits::DEFAULT_MAX_PAYLOAD;
use nbdx_proto::Limits;

use super::target::Stream;
use crate::uri::NbdUri;

/// Default bound on every wait during connection and negotiation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default bound on the wait for one transmission reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// `NBD_OPT_STARTTLS` first; fail if the server cannot do TLS.
    Require,
}

/// The future returned by [`TlsUpgrade::upgrade`].
pub type UpgradeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + 'a>>;

/// Turns the plaintext stream into a TLS session after the server
/// acknowledged `NBD_OPT_STARTTLS`: [`crate::tls::TlsClientConfig`]. A
/// client with [`TlsMode::Require`] and no upgrade fails before connecting.
pub trait TlsUpgrade: Send + Sync {
    /// Checks, before connecting, that the upgrade can be attempted at all
    /// (credentials readable); the default accepts.
    fn check(&self) -> io::Result<()> {
        Ok(())
    }

    /// Runs the TLS handshake over `stream`; `server_name` is the name to
    /// verify the certificate against (empty when the connection has none,
    /// as over a Unix socket).
    fn upgrade<'a>(&'a self, stream: Stream, server_name: &'a str) -> UpgradeFuture<'a>;
}

/// What to ask of the server. `ClientOptions::default()` asks for the
/// default export with extended headers (falling back to structured
/// replies), `base:allocation`, no TLS, and a 30 s timeout.
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) export_name: String,
    pub(crate) structured_replies: bool,
    pub(crate) extended_headers: bool,
    pub(crate) meta_contexts: Vec<String>,
    pub(crate) tls: TlsMode,
    pub(crate) tls_upgrade: Option<Arc<dyn TlsUpgrade>>,
    pub(crate) tls_hostname: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) max_request: u32,
    pub(crate) limits: Limits,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("export_name", &self.export_name)
            .field("structured_replies", &self.structured_replies)
            .field("extended_headers", &self.extended_headers)
            .field("meta_contexts", &self.meta_contexts)
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_request", &self.max_request)
            .finish_non_exhaustive()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            export_name: String::new(),
            structured_replies: true,
            extended_headers: true,
            meta_contexts: vec![BASE_ALLOCATION.to_owned()],
            tls: TlsMode::Disable,
            tls_upgrade: None,
            tls_hostname: None,
            timeout: DEFAULT_TIMEOUT,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            max_request: DEFAULT_MAX_PAYLOAD,
            limits: Limits::default(),
        }
    }
}

impl ClientOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Export name and TLS from a URI. `nbds://` and `nbds+unix://`
    /// require TLS, configured from the `tls-*` parameters
    /// ([`TlsClientConfig::from_params`](crate::tls::TlsClientConfig::from_params),
    /// read when connecting) and verified against `tls-hostname`, else the
    /// URI's host, else `localhost`. `nbd://` and `nbd+unix://` stay
    /// plaintext: there is no opportunistic upgrade, and `tls-*` parameters
    /// on them are ignored (with a warning).
    pub fn from_uri(uri: &NbdUri) -> Self {
        let mut o = Self::new().export_name(&uri.export_name);
        if uri.tls {
            o.tls = TlsMode::Require;
            o.tls_hostname = uri.tls_params.hostname.clone();
            o.tls_upgrade = Some(Arc::new(crate::tls::client::UriTls::new(uri.tls_params.clone(), uri.user.clone())));
        } else if uri.tls_params != crate::uri::TlsParams::default() {
            tracing::warn!("tls-* parameters are ignored: {} is plaintext (use nbds:// for TLS)", uri.scheme());
        }
        o
    }

    /// The name to verify the server's certificate against, instead of the
    /// host connected to (`tls-hostname=` in a URI).
    pub fn tls_hostname(mut self, name: impl Into<String>) -> Self {
        self.tls_hostname = Some(name.into());
        self
    }

    /// The export to open (default: the empty name, the server's default).
    pub fn export_name(mut self, name: impl Into<String>) -> Self {
        self.export_name = name.into();
        self
    }

    /// Whether to ask for structured replies (default on). Off also turns
    /// off extended headers and metadata contexts, which need them.
    pub fn structured_replies(mut self, on: bool) -> Self {
        self.structured_replies = on;
        self
    }

    /// Whether to ask for extended headers first (default on).
    pub fn extended_headers(mut self, on: bool) -> Self {
        self.extended_headers = on;
        self
    }

    /// Metadata contexts to select (default `base:allocation`; empty for none).
    pub fn meta_contexts<S: Into<String>>(mut self, contexts: impl IntoIterator<Item = S>) -> Self {
        self.meta_contexts = contexts.into_iter().map(Into::into).collect();
        self
    }

    /// TLS policy.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self
    }

    /// The TLS implementation used at `NBD_OPT_STARTTLS`.
    pub fn tls_upgrade(mut self, upgrade: Arc<dyn TlsUpgrade>) -> Self {
        self.tls_upgrade = Some(upgrade);
        self
    }

    /// Bound on connecting and on each negotiation step (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bound on the wait for each transmission reply (default 120 s;
    /// `None` waits for ever). When it passes, the connection is declared
    /// dead and every request in flight fails.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Largest read or write request to send (default 32 MiB); larger calls
    /// are split. The server's advertised maximum also applies.
    pub fn max_request_size(mut self, bytes: u32) -> Self {
        self.max_request = bytes.max(512);
        self
    }

    /// Limits on what the server may send during negotiation.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The export name in force.
    pub fn name(&self) -> &str {
        &self.export_name
    }

    /// What this connection asks for; the kernel hand-over asks for nothing
    /// the kernel cannot speak.
    pub(crate) fn wants(&self, handover: bool) -> Wants {
        let structured = self.structured_replies && !handover;
        Wants {
            structured,
            extended: structured && self.extended_headers,
            contexts: if structured { self.meta_contexts.clone() } else { Vec::new() },
        }
    }
}

/// The protocol features a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wants {
    pub structured: bool,
    pub extended: bool,
    pub contexts: Vec<String>,
}

//! [`ClientError`]: every way a client call can fail, split by who is at
//! fault and whether the connection survives.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use nbdx_proto::{Errno, OptType, ProtocolError, RepType};

use crate::device::DeviceError;

/// Result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;

/// A failed client call. Messages are one line, fit for a terminal.
///
/// A failed request ([`Server`](Self::Server)), a request refused before
/// sending ([`InvalidRequest`](Self::InvalidRequest)) and refused options
/// leave the connection usable; see [`is_fatal`](Self::is_fatal).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Where we tried to connect.
        target: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// Reading from or writing to the socket failed.
    #[error("connection error: {0}")]
    Io(Arc<io::Error>),
    /// The server closed the connection.
    #[error("server closed the connection{0}")]
    Disconnected(&'static str),
    /// The server broke the protocol; the connection is dead.
    #[error("server broke the NBD protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// One request failed at the server; the connection lives.
    #[error("server error: {errno} ({}){}{message}", errno.description(), if message.is_empty() { "" } else { ": " })]
    Server {
        /// The error value (normalized to the NBD set).
        errno: Errno,
        /// The server's message, possibly empty.
        message: String,
        /// For `NBD_REPLY_TYPE_ERROR_OFFSET`, where the error happened.
        offset: Option<u64>,
    },
    /// `NBD_REP_ERR_UNKNOWN`: the server has no such export.
    #[error("export '{name}' not found on server{}{message}", if message.is_empty() { "" } else { ": " })]
    ExportNotFound {
        /// The export name asked for.
        name: String,
        /// The server's message, possibly empty.
        message: String,
    },
    /// `NBD_REP_ERR_TLS_REQD`: the server wants TLS first.
    #[error("server requires TLS (use an nbds:// or nbds+unix:// URI)")]
    TlsRequired,
    /// TLS was required but this client cannot provide it.
    #[error("TLS not supported: {0}")]
    TlsUnsupported(&'static str),
    /// TLS was required and could not be set up: credentials unusable, the
    /// server does not offer TLS, or the TLS handshake failed. The
    /// connection is never continued in plaintext.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server refused an option with an error reply.
    #[error("server refused {option}: {reply}{}{message}", if message.is_empty() { "" } else { ": " })]
    Refused {
        /// The option.
        option: OptType,
        /// The error reply (`NBD_REP_ERR_*`).
        reply: RepType,
        /// The server's message, possibly empty.
        message: String,
    },
    /// The server lacks something this call needs.
    #[error("not supported by the server: {0}")]
    Unsupported(String),
    /// The request breaks what the server advertised; it was not sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server did not answer in time; the connection is dead.
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What we were waiting for.
        waiting_for: &'static str,
        /// The timeout in force.
        after: Duration,
    },
    /// A malformed NBD URI.
    #[error(transparent)]
    Uri(#[from] crate::uri::UriError),
    /// The connection was closed by [`disconnect`](super::Client::disconnect)
    /// or dropped.
    #[error("connection is closed")]
    Closed,
}

impl ClientError {
    /// Whether the connection (or negotiation) is unusable after this
    /// error. A failed request, a refused option or a call the server
    /// cannot serve leave it usable.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::Server { .. }
                | Self::InvalidRequest(_)
                | Self::Unsupported(_)
                | Self::ExportNotFound { .. }
                | Self::Refused { .. }
        )
    }

    /// For a per-request server error, its errno.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn io(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return Self::Disconnected("");
        }
        if let Some(tls) = crate::tls::explain_io_error(&e) {
            return Self::Tls(tls);
        }
        Self::Io(Arc::new(e))
    }
}

impl From<nbdx_proto::client::ReplyError> for ClientError {
    fn from(e: nbdx_proto::client::ReplyError) -> Self {
        Self::Server { errno: e.errno, message: e.message, offset: e.offset }
    }
}

impl From<ClientError> for DeviceError {
    /// Server errors keep their errno; client-side validation becomes
    /// `NBD_EINVAL`; a dead connection becomes `NBD_EIO`, or
    /// `NBD_ESHUTDOWN` once closed.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Server { errno, message, .. } => DeviceError::new(errno, message),
            ClientError::InvalidRequest(m) => DeviceError::invalid(m),
            ClientError::Unsupported(_) => DeviceError::new(Errno::ENOTSUP, e.to_string()),
            ClientError::Closed => DeviceError::new(Errno::ESHUTDOWN, e.to_string()),
            other => DeviceError::io(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_cause() {
        let cases = [
            (
                ClientError::ExportNotFound { name: "x".into(), message: String::new() },
                "export 'x' not found on server",
            ),
            (
                ClientError::Server { errno: Errno::ENOSPC, message: "full".into(), offset: None },
                "server error: NBD_ENOSPC (No space left on device): full",
            ),
            (ClientError::Disconnected(""), "server closed the connection"),
            (
                ClientError::Refused { option: OptType::GO, reply: RepType::ERR_POLICY, message: String::new() },
                "server refused NBD_OPT_GO: NBD_REP_ERR_POLICY",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn server_errors_keep_their_errno_as_device_errors() {
        let e = ClientError::Server { errno: Errno::EPERM, message: "ro".into(), offset: None };
        assert!(!e.is_fatal());
        assert_eq!(DeviceError::from(e).errno(), Errno::EPERM);
        assert_eq!(DeviceError::from(ClientError::Closed).errno(), Errno::ESHUTDOWN);
        assert!(ClientError::Closed.is_fatal());
    }
}

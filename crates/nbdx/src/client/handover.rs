//! Negotiation for the kernel: the socket is handed over before any
//! transmission I/O, with the export's size and flags.
//!
//! The Linux NBD driver speaks only simple replies with compact headers, so
//! this negotiation asks for no structured replies, extended headers or
//! metadata contexts, whatever the options say.

use nbdx_proto::client::Connected;

use super::error::{ClientError, ClientResult};
use super::negotiate::Negotiation;
use super::options::{ClientOptions, TlsMode};
use super::target::{Socket, Target};

/// A negotiated connection for the kernel.
#[derive(Debug)]
pub struct Handover {
    /// The socket, in blocking mode, positioned at the start of transmission.
    pub socket: Socket,
    /// Size, transmission flags, block sizes of the export.
    pub export: Connected,
}

/// Connects, negotiates up to `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`) in
/// the kernel's protocol subset, and returns the socket untouched since.
pub async fn connect_for_handover(target: &Target, opts: &ClientOptions) -> ClientResult<Handover> {
    if opts.tls == TlsMode::Require {
        return Err(ClientError::Unsupported("handing a TLS connection to the kernel".into()));
    }
    let stream = target.connect(opts.timeout).await?;
    let (stream, export) = Negotiation::begin(stream, opts, "", true).await?.finish().await?;
    Ok(Handover { socket: stream.into_socket()?, export })
}

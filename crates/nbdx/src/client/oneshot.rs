//! Negotiation-only entry points: queries that end with `NBD_OPT_ABORT`,
//! and the hand-over to the kernel, which ends before transmission.
//!
//! The Linux NBD driver speaks only simple replies with compact headers, so
//! the hand-over asks for no structured replies, extended headers or
//! metadata contexts, whatever the options say.

use nbdx_proto::client::Connected;

use super::error::{ClientError, ClientResult};
use super::info::{ExportEntry, ExportInfo};
use super::negotiate::Negotiation;
use super::options::{ClientOptions, TlsMode};
use super::target::{Socket, Stream, Target};

/// The exports the server advertises (`NBD_OPT_LIST`).
pub async fn list_exports(target: &Target, opts: &ClientOptions) -> ClientResult<Vec<ExportEntry>> {
    let mut n = Negotiation::start(target, opts).await?;
    let result = n.list_exports().await;
    let _ = n.abort().await;
    result
}

/// Details of the export named in `opts` (`NBD_OPT_INFO`, with the
/// metadata contexts it lists). A server without `NBD_OPT_INFO` (or not
/// fixed newstyle) is asked by opening the export and closing it again.
pub async fn info(target: &Target, opts: &ClientOptions) -> ClientResult<ExportInfo> {
    let mut n = Negotiation::start(target, opts).await?;
    match n.info(opts.name()).await {
        Err(ClientError::Unsupported(why)) => {
            tracing::debug!(why, "no NBD_OPT_INFO; opening the export instead");
            let client = n.go().await?;
            let info = client.info().clone();
            client.disconnect().await;
            Ok(info)
        }
        result => {
            let _ = n.abort().await;
            result
        }
    }
}

/// The metadata contexts of the export named in `opts` that match
/// `queries` (all when empty), by `NBD_OPT_LIST_META_CONTEXT`.
pub async fn list_meta_contexts(target: &Target, opts: &ClientOptions, queries: &[&str]) -> ClientResult<Vec<String>> {
    let mut n = Negotiation::start(target, opts).await?;
    let result = n.list_meta_contexts(opts.name(), queries).await;
    let _ = n.abort().await;
    result
}

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
        return Err(ClientError::TlsUnsupported(
            "the kernel speaks no TLS: use nbdx::tls::proxy::connect_for_handover, which relays through a proxy",
        ));
    }
    let stream = target.connect(opts.timeout).await?;
    handover_over(stream, opts).await
}

/// Like [`connect_for_handover`], over a stream that is already open: one
/// end of a socketpair to an in-process server, say. The stream must be a
/// plain TCP or Unix socket.
pub async fn handover_over(stream: Stream, opts: &ClientOptions) -> ClientResult<Handover> {
    if opts.tls == TlsMode::Require {
        return Err(ClientError::Unsupported("handing a TLS connection to the kernel".into()));
    }
    let (stream, export) = Negotiation::begin(stream, opts, "", true).await?.finish().await?;
    Ok(Handover { socket: stream.into_socket()?, export })
}

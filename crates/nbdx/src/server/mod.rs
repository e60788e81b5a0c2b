//! The tokio NBD server.
//!
//! ```no_run
//! use nbdx::{device::MemoryDevice, server::Server, Export};
//! // (MemoryDevice: a sparse RAM disk; any `Device` works.)
//!
//! # async fn demo() -> std::io::Result<()> {
//! let server = Server::builder()
//!     .export(Export::new("", MemoryDevice::new(64 << 20)))
//!     .build()
//!     .expect("valid exports");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! server.serve(listener).await // until server.shutdown() is called
//! # }
//! ```
//!
//! Each accepted connection runs the handshake (bounded by
//! [`ServerOptions::handshake_timeout`]), opens nothing until `NBD_OPT_GO`
//! or `NBD_OPT_EXPORT_NAME` selects an export, then serves requests
//! concurrently (see `connection.rs` for the pipeline). [`Server::shutdown`]
//! starts a lame-duck shutdown: no new connections, `NBD_REP_ERR_SHUTDOWN` /
//! `NBD_ESHUTDOWN` for new work, in-flight requests finish, devices are
//! flushed, and [`Server::serve`] returns once every connection is gone or
//! the grace period ran out.

mod connection;
mod exec;
mod handshake;
mod io;
mod listener;
mod options;
mod pool;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use nbdx_proto::server::{ServerConfig, TlsMode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use io::{BoxStream, Stream};
pub use listener::Listener;
pub use options::{ServerBuilder, ServerOptions};

use crate::Export;
use pool::{BufferPool, GlobalBudget};

/// Upgrades a plaintext stream to TLS after `NBD_OPT_STARTTLS` was
/// acknowledged (implemented over rustls by the `tls` module).
#[async_trait]
pub trait TlsAccept: Send + Sync + 'static {
    /// Runs the server side of the TLS handshake on `stream`.
    async fn accept(&self, stream: BoxStream) -> std::io::Result<BoxStream>;
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer violated the protocol; the connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(#[from] nbdx_proto::ProtocolError),
    /// The handshake took longer than allowed.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A server's exports are not servable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No export was given.
    #[error("no exports to serve")]
    NoExports,
    /// Two exports have the same name.
    #[error("export name {0:?} is used twice")]
    DuplicateName(String),
    /// An export name or description breaks the spec's string rules.
    #[error("export {0:?}: {1}")]
    InvalidString(String, &'static str),
    /// A device declared size constraints the spec forbids.
    #[error("export {0:?}: {1}")]
    InvalidBlockSize(String, &'static str),
    /// TLS was requested without an acceptor.
    #[error("TLS mode {0:?} needs TLS credentials")]
    TlsWithoutCredentials(TlsMode),
}

pub(crate) struct Inner {
    pub(crate) exports: Vec<Export>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) options: ServerOptions,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) pool: Arc<BufferPool>,
    pub(crate) global_budget: GlobalBudget,
    pub(crate) tls: Option<Arc<dyn TlsAccept>>,
}

/// An NBD server: exports, options, and the state shared by its connections.
/// Cheap to clone; clones share connections and shutdown.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("exports", &self.inner.exports).field("options", &self.inner.options).finish()
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with default options for `exports` (the first is the default).
    pub fn new(exports: Vec<Export>) -> Result<Self, ServerError> {
        exports.into_iter().fold(Self::builder(), ServerBuilder::export).build()
    }

    /// The exports served.
    pub fn exports(&self) -> &[Export] {
        &self.inner.exports
    }

    /// A token that starts the lame-duck shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Bytes of request buffers reserved across all connections.
    #[cfg(test)]
    pub(crate) fn budget_in_use(&self) -> usize {
        self.inner.global_budget.in_use()
    }

    /// Starts the lame-duck shutdown.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Serves one already-connected client until it disconnects.
    pub async fn serve_connection<S: Stream>(&self, stream: S) -> Result<(), ConnectionError> {
        let inner = &*self.inner;
        let negotiated =
            tokio::time::timeout(inner.options.handshake_timeout, handshake::negotiate(inner, stream)).await;
        match negotiated.map_err(|_| ConnectionError::HandshakeTimeout)?? {
            handshake::Outcome::Closed => Ok(()),
            handshake::Outcome::Transmission { stream, negotiated, leftover } => {
                let export = &inner.exports[negotiated.export_index];
                let span = tracing::info_span!("export", name = %export.name());
                let contexts: Vec<&str> = negotiated.meta_contexts.iter().map(|c| c.kind.name()).collect();
                tracing::info!(
                    parent: &span,
                    size = negotiated.size,
                    replies = ?negotiated.mode,
                    tls = negotiated.tls,
                    meta_contexts = ?contexts,
                    block_size_requested = negotiated.block_size_requested,
                    flags = ?negotiated.flags,
                    "export opened"
                );
                connection::run(inner, stream, leftover, negotiated, export).instrument(span).await
            }
        }
    }

    /// Accepts and serves clients on `listener` until [`shutdown`](Self::shutdown),
    /// then waits (at most the grace period) for connections to finish.
    pub async fn serve(&self, listener: impl Into<Listener>) -> std::io::Result<()> {
        listener::serve(self.clone(), listener.into()).await
    }

    /// Waits until every connection has ended, at most the grace period
    /// after shutdown. Returns whether all ended in time.
    pub async fn wait(&self) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(self.inner.options.grace_period, self.inner.tracker.wait()).await.is_ok()
    }
}

/// Serves `exports` (the first is the default) to one connected client: the
/// seed's `Serve`.
pub async fn serve<S: Stream>(stream: S, exports: Vec<Export>) -> Result<(), ConnectionError> {
    let server = Server::new(exports).map_err(|e| ConnectionError::Io(std::io::Error::other(e)))?;
    server.serve_connection(stream).await
}

/// Listens on `addr` (`host:port` for TCP, or a path for a Unix socket) and
/// serves `exports` until `shutdown` is cancelled: the seed's `ListenAndServe`.
pub async fn listen_and_serve(addr: &str, exports: Vec<Export>, shutdown: CancellationToken) -> std::io::Result<()> {
    let server = Server::new(exports).map_err(std::io::Error::other)?;
    let listener = Listener::bind(addr).await?;
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        token.cancel();
    });
    server.serve(listener).await
}

#[cfg(test)]
mod tests;

//! Server settings and the builder that validates exports.

use std::sync::Arc;
use std::time::Duration;

use nbdx_proto::codec::check_string;
use nbdx_proto::limits::{Limits, DEFAULT_MAX_IN_FLIGHT, HANDSHAKE_TIMEOUT_MS};
use nbdx_proto::server::{ServerConfig, TlsMode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pool::{BufferPool, GlobalBudget};
use super::{Inner, Server, ServerError, TlsAccept};
use crate::Export;

/// Tunables of a server. `ServerOptions::default()` is what `nbdx serve`
/// uses; the flag named with a field overrides it there. Every limit exists
/// so that no peer can make the server crash, stall or balloon (see
/// `docs/security.md`); the handshake's own limits are in [`Limits`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Requests one connection may have in flight (64, `--max-in-flight`).
    /// Beyond it the server stops reading that connection until replies
    /// are sent (`proto.md` "Transmission": replies may come in any order,
    /// so the client must cope with a bounded window).
    pub max_in_flight: usize,
    /// Bytes of request buffers one connection may hold: write payloads,
    /// read data, block status replies (64 MiB; always at least one request
    /// of the maximum payload, 2^25 from "Size constraints").
    pub connection_budget: usize,
    /// Bytes of request buffers all connections together may hold (512 MiB).
    pub global_budget: usize,
    /// Time allowed for the whole handshake, TLS included (10 s,
    /// `--handshake-timeout`); a silent or slow client is dropped
    /// ("Termination of the session during option haggling": the server
    /// MAY disconnect a client that does not get the hint).
    pub handshake_timeout: Duration,
    /// Time a peer may stall in the middle of a message, or in reading its
    /// replies, before the connection is dropped (30 s, `--stall-timeout`).
    /// A message that has started must also keep arriving at 64 KiB/s on
    /// average, so dribbling it (slowloris) ends the same way.
    pub stall_timeout: Duration,
    /// Connections served at once; further clients are closed at once
    /// without a greeting (1024, `--max-connections`).
    pub max_connections: usize,
    /// After shutdown, how long connections get to finish their requests
    /// in flight before the server stops waiting (5 s, `--shutdown-grace`).
    pub grace_period: Duration,
    /// Whether `NBD_OPT_LIST` is answered.
    pub allow_list: bool,
    /// Whether the empty export name selects the first export.
    pub default_export: bool,
    /// Handshake limits.
    pub limits: Limits,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            connection_budget: 64 << 20,
            global_budget: 512 << 20,
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
            stall_timeout: Duration::from_secs(30),
            max_connections: 1024,
            grace_period: Duration::from_secs(5),
            allow_list: true,
            default_export: true,
            limits: Limits::default(),
        }
    }
}

/// Builds a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    exports: Vec<Export>,
    options: ServerOptions,
    tls: Option<(TlsMode, Arc<dyn TlsAccept>)>,
    shutdown: Option<CancellationToken>,
}

impl ServerBuilder {
    /// Adds an export; the first one added is the default.
    pub fn export(mut self, export: Export) -> Self {
        self.exports.push(export);
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Enables TLS (`TlsMode::On` or `TlsMode::Require`) with `acceptor`.
    pub fn tls(mut self, mode: TlsMode, acceptor: Arc<dyn TlsAccept>) -> Self {
        self.tls = Some((mode, acceptor));
        self
    }

    /// Uses `token` to trigger shutdown (a child of it, to be precise).
    pub fn shutdown_token(mut self, token: &CancellationToken) -> Self {
        self.shutdown = Some(token.child_token());
        self
    }

    /// Validates the exports and builds the server.
    pub fn build(self) -> Result<Server, ServerError> {
        if self.exports.is_empty() {
            return Err(ServerError::NoExports);
        }
        let mut metas = Vec::with_capacity(self.exports.len());
        for e in &self.exports {
            let meta = e.meta();
            for s in [&meta.name, &meta.description] {
                check_string(s.as_bytes()).map_err(|_| {
                    ServerError::InvalidString(
                        meta.name.clone(),
                        "names and descriptions must be UTF-8 without NUL, at most 4096 bytes",
                    )
                })?;
            }
            meta.block_size.validate().map_err(|why| ServerError::InvalidBlockSize(meta.name.clone(), why))?;
            if metas.iter().any(|m: &nbdx_proto::server::ExportMeta| m.name == meta.name) {
                return Err(ServerError::DuplicateName(meta.name));
            }
            metas.push(meta);
        }
        let (mode, acceptor) = match self.tls {
            Some((TlsMode::Off, _)) | None => (TlsMode::Off, None),
            Some((mode, acceptor)) => (mode, Some(acceptor)),
        };
        let mut config = ServerConfig::new(metas);
        config.tls = mode;
        config.allow_list = self.options.allow_list;
        config.default_export = self.options.default_export;
        config.limits = self.options.limits.clone();
        let options = ServerOptions {
            max_in_flight: self.options.max_in_flight.max(1),
            connection_budget: self.options.connection_budget.max(nbdx_proto::limits::DEFAULT_MAX_PAYLOAD as usize),
            ..self.options
        };
        Ok(Server {
            inner: Arc::new(Inner {
                exports: self.exports,
                config: Arc::new(config),
                global_budget: GlobalBudget::new(options.global_budget),
                options,
                shutdown: self.shutdown.unwrap_or_default(),
                tracker: TaskTracker::new(),
                pool: BufferPool::new(),
                tls: acceptor,
            }),
        })
    }
}

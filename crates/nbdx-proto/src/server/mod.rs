//! Server side: the handshake state machine and transmission-phase request
//! validation.
//!
//! The handshake works on [`ExportMeta`], a description of each export that
//! needs no device: listing, `NBD_OPT_INFO` and meta context queries never
//! open anything. Only a successful `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`)
//! yields [`Negotiated`], which names the chosen export; the driver opens the
//! device for it then.

mod handshake;
mod options;
mod transmission;

use std::sync::Arc;

use bytes::Bytes;

pub use handshake::{ServerHandshake, ServerStep, TlsUpgrade};
pub use transmission::{Command, Incoming, PayloadAction, TransmissionContext};

use crate::codec::option_reply::BlockSize;
use crate::codec::reply::ReplyMode;
use crate::error::ProtocolError;
use crate::flags::TransmissionFlags;
use crate::limits::Limits;

/// How the server treats TLS ("TLS support" in `proto.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// NOTLS: `NBD_OPT_STARTTLS` gets `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// SELECTIVETLS: TLS is available; exports marked `tls_only` need it.
    On,
    /// FORCEDTLS: every option but `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT`
    /// gets `NBD_REP_ERR_TLS_REQD` until TLS is up.
    Require,
}

/// What negotiation needs to know about one export. Building it must not
/// touch the device's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMeta {
    /// Export name (may be empty).
    pub name: String,
    /// Description for `NBD_REP_SERVER` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags the export supports. Negotiation adds
    /// `NBD_FLAG_HAS_FLAGS`, and removes `NBD_FLAG_SEND_DF` without
    /// structured replies and `NBD_FLAG_SEND_FAST_ZERO` without
    /// `NBD_FLAG_SEND_WRITE_ZEROES`, as the flag definitions require.
    pub flags: TransmissionFlags,
    /// Size constraints, advertised with `NBD_INFO_BLOCK_SIZE` and enforced.
    pub block_size: BlockSize,
    /// Under [`TlsMode::On`], whether this export needs TLS.
    pub tls_only: bool,
}

impl ExportMeta {
    /// An export with default block sizes and no optional features.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            size,
            flags: TransmissionFlags::HAS_FLAGS,
            block_size: BlockSize::default(),
            tls_only: false,
        }
    }

    /// The transmission flags sent for this export on a connection that did
    /// (or did not) negotiate structured replies.
    pub fn transmission_flags(&self, chunks: bool) -> TransmissionFlags {
        let mut f = self.flags | TransmissionFlags::HAS_FLAGS;
        f.remove(TransmissionFlags::SEND_RESIZE | TransmissionFlags::BLOCK_STATUS_PAYLOAD);
        if !chunks {
            f.remove(TransmissionFlags::SEND_DF);
        }
        if !f.contains(TransmissionFlags::SEND_WRITE_ZEROES) {
            f.remove(TransmissionFlags::SEND_FAST_ZERO);
        }
        if f.contains(TransmissionFlags::READ_ONLY) {
            // Writes are refused with NBD_EPERM; advertising ways to write
            // would only invite them.
            f.remove(
                TransmissionFlags::SEND_TRIM
                    | TransmissionFlags::SEND_WRITE_ZEROES
                    | TransmissionFlags::SEND_FAST_ZERO
                    | TransmissionFlags::SEND_FUA,
            );
        }
        f
    }
}

/// Server-wide negotiation settings shared by all connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The exports; the first is the default.
    pub exports: Vec<ExportMeta>,
    /// Whether the empty name selects the first export when no export is
    /// named "" (the seed's "the first one is the default").
    pub default_export: bool,
    /// TLS policy.
    pub tls: TlsMode,
    /// Whether `NBD_OPT_LIST` is answered (else `NBD_REP_ERR_POLICY`).
    pub allow_list: bool,
    /// Whether `NBD_OPT_EXTENDED_HEADERS` is accepted.
    pub extended_headers: bool,
    /// Whether `NBD_OPT_STRUCTURED_REPLY` is accepted.
    pub structured_replies: bool,
    /// Handshake limits.
    pub limits: Limits,
}

impl ServerConfig {
    /// A plaintext configuration serving `exports`, first one the default.
    pub fn new(exports: Vec<ExportMeta>) -> Self {
        Self {
            exports,
            default_export: true,
            tls: TlsMode::Off,
            allow_list: true,
            extended_headers: true,
            structured_replies: true,
            limits: Limits::default(),
        }
    }

    /// Finds an export by name. An exact match wins; otherwise the empty
    /// name selects the first export if [`default_export`](Self::default_export).
    pub fn lookup(&self, name: &str) -> Option<usize> {
        self.exports
            .iter()
            .position(|e| e.name == name)
            .or_else(|| (name.is_empty() && self.default_export && !self.exports.is_empty()).then_some(0))
    }
}

/// A metadata context selected with `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetaContext {
    /// The id the server assigned.
    pub id: u32,
    /// Which context it is.
    pub kind: ContextKind,
}

/// Metadata contexts nbdx serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContextKind {
    /// `base:allocation`.
    BaseAllocation,
}

impl ContextKind {
    /// The context's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::BaseAllocation => crate::consts::BASE_ALLOCATION,
        }
    }
}

/// The outcome of a successful handshake: everything transmission needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the chosen export in [`ServerConfig::exports`].
    pub export_index: usize,
    /// Its canonical name.
    pub export_name: String,
    /// Export size.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: TransmissionFlags,
    /// Reply layout.
    pub mode: ReplyMode,
    /// Size constraints in force.
    pub block_size: BlockSize,
    /// Whether the client asked for `NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO`.
    pub block_size_requested: bool,
    /// Metadata contexts usable with `NBD_CMD_BLOCK_STATUS`.
    pub meta_contexts: Vec<MetaContext>,
    /// Whether TLS is in use.
    pub tls: bool,
    /// Bytes to send before the first transmission reply (the `NBD_REP_ACK`
    /// or `NBD_OPT_EXPORT_NAME` answer).
    pub output: Bytes,
}

impl Negotiated {
    /// The context that validates this connection's requests.
    pub fn transmission(&self) -> TransmissionContext {
        TransmissionContext {
            size: self.size,
            flags: self.flags,
            mode: self.mode,
            block_size: self.block_size,
            meta_contexts: self.meta_contexts.clone(),
            max_discard_payload: crate::limits::MAX_DISCARD_PAYLOAD,
        }
    }
}

/// A handshake that must end: the error, and bytes (an error reply) to send
/// before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct HandshakeFailure {
    /// What went wrong.
    pub error: ProtocolError,
    /// Output still to flush, possibly empty.
    pub output: Bytes,
}

/// Convenience: a shared configuration.
pub type SharedConfig = Arc<ServerConfig>;

#[cfg(test)]
mod tests;

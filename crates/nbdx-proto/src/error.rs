//! Errors, split by who is at fault and what must happen next.
//!
//! * [`ProtocolError`]: the peer broke a mandatory rule of `proto.md` (or
//!   framing is lost). The connection ends; where the spec allows, the right
//!   `NBD_REP_ERR_*` has already been queued first.
//! * [`DecodeError`]: a message body is malformed. Inside an option payload it
//!   becomes `NBD_REP_ERR_INVALID` and negotiation goes on; elsewhere it is
//!   wrapped in a [`ProtocolError`].
//! * [`Errno`](crate::Errno): a per-request failure, sent on the wire; the
//!   connection lives.

use crate::consts::{Cmd, OptType, RepType, ReplyType};

/// A message body that does not match its declared layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the layout needs.
    #[error("message truncated: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes were needed.
        needed: usize,
    },
    /// Bytes left over after the layout was complete.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A string longer than the spec's 4096-byte limit.
    #[error("string of {0} bytes exceeds the 4096-byte limit")]
    StringTooLong(usize),
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// A string containing NUL, which strings MUST NOT contain.
    #[error("string contains NUL")]
    ContainsNul,
    /// A field with a value its layout forbids.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The peer violated the protocol; the connection must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The server did not start with `NBDMAGIC`.
    #[error("peer is not an NBD server (bad initial magic {0:#018x})")]
    NotNbd(u64),
    /// The server speaks oldstyle negotiation, which nbdx does not.
    #[error("server uses oldstyle negotiation, which is not supported")]
    Oldstyle,
    /// A magic number was wrong where one was expected: framing is lost.
    #[error("bad magic {found:#x} (expected {expected:#x}): framing lost")]
    BadMagic {
        /// What the spec requires here.
        expected: u64,
        /// What arrived.
        found: u64,
    },
    /// The client set flags the server did not offer or the spec does not define.
    #[error("client sent unknown or unoffered flags {0:#x}")]
    BadClientFlags(u32),
    /// Data arrived after `NBD_OPT_STARTTLS` before the TLS handshake.
    #[error("client sent data after NBD_OPT_STARTTLS before the TLS handshake")]
    DataAfterStartTls,
    /// The client asked for an export it may not have with `NBD_OPT_EXPORT_NAME`,
    /// which cannot return an error.
    #[error("NBD_OPT_EXPORT_NAME for {0:?} refused: {1}")]
    ExportNameRefused(String, &'static str),
    /// The client misbehaved for too long ("the server MAY initiate a hard
    /// disconnect" on a denial of service).
    #[error("too many options: {0}")]
    TooManyOptions(&'static str),
    /// An option longer than the server is willing to skip.
    #[error("option {opt} of {len} bytes is too long")]
    OptionTooLong {
        /// The option.
        opt: OptType,
        /// Its claimed length.
        len: u32,
    },
    /// A request payload larger than the server is willing to consume.
    #[error("{cmd} payload of {len} bytes is too large")]
    PayloadTooLarge {
        /// The command.
        cmd: Cmd,
        /// Its claimed payload length.
        len: u64,
    },
    /// The server replied to an option we did not send.
    #[error("server replied to {got} while {sent} was pending")]
    WrongOptionReply {
        /// The option sent.
        sent: OptType,
        /// The option the reply named.
        got: OptType,
    },
    /// A reply type that makes no sense for the pending option.
    #[error("unexpected reply {rep} to {opt}")]
    UnexpectedReply {
        /// The option.
        opt: OptType,
        /// The reply type.
        rep: RepType,
    },
    /// A reply payload larger than the client accepts.
    #[error("reply of {0} bytes exceeds the limit")]
    ReplyTooLarge(u64),
    /// More option replies than the client accepts for one option.
    #[error("server sent too many replies to one option")]
    TooManyReplies,
    /// The server sent `NBD_REP_ACK` to GO/INFO without `NBD_INFO_EXPORT`.
    #[error("server accepted the export without sending NBD_INFO_EXPORT")]
    MissingExportInfo,
    /// A reply chunk named a cookie with no request in flight.
    #[error("reply for unknown cookie {0:#x}")]
    UnknownCookie(u64),
    /// A reply chunk of a type that does not fit the request or negotiation.
    #[error("unexpected chunk {kind} for {cmd}")]
    UnexpectedChunk {
        /// The chunk type.
        kind: ReplyType,
        /// The request it answered.
        cmd: Cmd,
    },
    /// A reply chunk whose contents break the spec.
    #[error("invalid reply chunk: {0}")]
    InvalidChunk(&'static str),
    /// A message body did not decode.
    #[error("malformed message: {0}")]
    Malformed(#[from] DecodeError),
    /// Anything else the spec forbids.
    #[error("{0}")]
    Violation(&'static str),
}

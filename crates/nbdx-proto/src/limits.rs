//! Named limits, each with the part of `proto.md` it derives from.
//!
//! Every length a peer claims is compared with one of these before anything
//! is allocated for it. The defaults live in [`Limits`], which both state
//! machines take so that users can override what they need.

/// "Conventions": a string "MUST be no longer than 4096 bytes".
pub const MAX_STRING_LEN: usize = 4096;

/// "Size constraints": a server SHOULD support a maximum payload of at least
/// 2^25 bytes, and any payload up to 2^25 "SHOULD NOT be considered a denial
/// of service attack". nbdx advertises exactly this by default.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 25;

/// "Size constraints": default preferred block size, 2^12.
pub const DEFAULT_PREFERRED_BLOCK: u32 = 4096;

/// "Size constraints": the minimum block size MUST NOT be larger than 2^16.
pub const MAX_MINIMUM_BLOCK: u32 = 1 << 16;

/// Largest option payload the server reads into memory. The biggest legal
/// option is `NBD_OPT_SET_META_CONTEXT` with a 4096-byte name and a few
/// 4096-byte queries; 64 KiB leaves room for 14 such queries.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// Options longer than [`MAX_OPTION_LEN`] but no longer than this are skipped
/// without being stored and answered with `NBD_REP_ERR_TOO_BIG`; longer ones
/// are treated as a denial of service ("Termination of the session during
/// option haggling": the server MAY initiate a hard disconnect).
pub const MAX_OPTION_DISCARD: u32 = 1 << 20;

/// Options that end in an error, in a row, before the server gives up on a
/// client that "does not get the hint" (same section).
pub const MAX_FAILED_OPTIONS_IN_ROW: u32 = 32;

/// Options of any outcome in one handshake.
pub const MAX_OPTIONS_PER_HANDSHAKE: u32 = 1024;

/// Handshake time limit in milliseconds (applied by the I/O drivers: the
/// sans-IO core has no clock). A silent or slow client is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Largest option reply payload a client accepts. `NBD_REP_SERVER` can carry a
/// 4096-byte name plus a 4096-byte description; `NBD_REP_INFO` is smaller.
pub const MAX_OPTION_REPLY_LEN: u32 = 3 * MAX_STRING_LEN as u32;

/// Option replies one option may produce at the client before it considers
/// the server malicious (endless `NBD_REP_SERVER` or `NBD_REP_INFO` replies).
pub const MAX_OPTION_REPLIES: u32 = 16 * 1024;

/// "Metadata querying": servers SHOULD NOT send more than 2^20 extents in one
/// chunk. nbdx servers send at most this many (a shorter answer is allowed).
pub const MAX_EXTENTS_PER_CHUNK: usize = 1 << 16;

/// A client accepts at most the spec's 2^20 extents per block status chunk.
pub const MAX_EXTENTS_ACCEPTED: usize = 1 << 20;

/// Write payloads that fail validation are read and thrown away so that the
/// connection survives; above this size the server closes instead ("Size
/// constraints": either side MAY disconnect on payloads deemed a DoS).
pub const MAX_DISCARD_PAYLOAD: u64 = 2 * DEFAULT_MAX_PAYLOAD as u64;

/// Requests one connection may have in flight at the server.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Tunable limits for both state machines. `Limits::default()` gives the
/// constants above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_OPTION_LEN`].
    pub max_option_len: u32,
    /// See [`MAX_OPTION_DISCARD`].
    pub max_option_discard: u32,
    /// See [`MAX_FAILED_OPTIONS_IN_ROW`].
    pub max_failed_options_in_row: u32,
    /// See [`MAX_OPTIONS_PER_HANDSHAKE`].
    pub max_options: u32,
    /// See [`MAX_OPTION_REPLY_LEN`].
    pub max_option_reply_len: u32,
    /// See [`MAX_OPTION_REPLIES`].
    pub max_option_replies: u32,
    /// See [`MAX_DISCARD_PAYLOAD`].
    pub max_discard_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_option_len: MAX_OPTION_LEN,
            max_option_discard: MAX_OPTION_DISCARD,
            max_failed_options_in_row: MAX_FAILED_OPTIONS_IN_ROW,
            max_options: MAX_OPTIONS_PER_HANDSHAKE,
            max_option_reply_len: MAX_OPTION_REPLY_LEN,
            max_option_replies: MAX_OPTION_REPLIES,
            max_discard_payload: MAX_DISCARD_PAYLOAD,
        }
    }
}

//! Flag fields of the protocol ("Flag fields" in `proto.md`).
//!
//! Decoding always uses `from_bits_retain`, so bits the spec does not define
//! survive and can be rejected on purpose (the server MUST drop a client that
//! sets unknown client flags; unknown command flags get `NBD_EINVAL`).

use bitflags::bitflags;

bitflags! {
    /// Handshake flags (16 bits, server → client).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct HandshakeFlags: u16 {
        /// `NBD_FLAG_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// Client flags (32 bits, client → server).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ClientFlags: u32 {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_C_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// Transmission flags (16 bits), sent with the export size.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct TransmissionFlags: u16 {
        /// `NBD_FLAG_HAS_FLAGS`: MUST always be 1.
        const HAS_FLAGS = 1 << 0;
        /// `NBD_FLAG_READ_ONLY`.
        const READ_ONLY = 1 << 1;
        /// `NBD_FLAG_SEND_FLUSH`.
        const SEND_FLUSH = 1 << 2;
        /// `NBD_FLAG_SEND_FUA`.
        const SEND_FUA = 1 << 3;
        /// `NBD_FLAG_ROTATIONAL`.
        const ROTATIONAL = 1 << 4;
        /// `NBD_FLAG_SEND_TRIM`.
        const SEND_TRIM = 1 << 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`.
        const SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_FLAG_SEND_DF`.
        const SEND_DF = 1 << 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`.
        const CAN_MULTI_CONN = 1 << 8;
        /// `NBD_FLAG_SEND_RESIZE` (experimental, never set by nbdx).
        const SEND_RESIZE = 1 << 9;
        /// `NBD_FLAG_SEND_CACHE`.
        const SEND_CACHE = 1 << 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`.
        const SEND_FAST_ZERO = 1 << 11;
        /// `NBD_FLAG_BLOCK_STATUS_PAYLOAD` (extended headers only).
        const BLOCK_STATUS_PAYLOAD = 1 << 12;
    }
}

bitflags! {
    /// Command flags (16 bits) of a request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CmdFlags: u16 {
        /// `NBD_CMD_FLAG_FUA`.
        const FUA = 1 << 0;
        /// `NBD_CMD_FLAG_NO_HOLE`.
        const NO_HOLE = 1 << 1;
        /// `NBD_CMD_FLAG_DF`.
        const DF = 1 << 2;
        /// `NBD_CMD_FLAG_REQ_ONE`.
        const REQ_ONE = 1 << 3;
        /// `NBD_CMD_FLAG_FAST_ZERO`.
        const FAST_ZERO = 1 << 4;
        /// `NBD_CMD_FLAG_PAYLOAD_LEN` (extended headers only).
        const PAYLOAD_LEN = 1 << 5;
    }
}

bitflags! {
    /// Structured and extended reply flags (16 bits).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct ReplyFlags: u16 {
        /// `NBD_REPLY_FLAG_DONE`: final chunk of this reply.
        const DONE = 1 << 0;
    }
}

bitflags! {
    /// Status flags of the `base:allocation` metadata context.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct AllocationFlags: u32 {
        /// `NBD_STATE_HOLE`: not allocated in the backend.
        const HOLE = 1 << 0;
        /// `NBD_STATE_ZERO`: reads as zeroes.
        const ZERO = 1 << 1;
    }
}

impl AllocationFlags {
    /// The word `nbdinfo --map` prints for these flags.
    pub fn description(self) -> &'static str {
        match (self.contains(Self::HOLE), self.contains(Self::ZERO)) {
            (false, false) => "data",
            (true, false) => "hole",
            (false, true) => "zero",
            (true, true) => "hole,zero",
        }
    }
}

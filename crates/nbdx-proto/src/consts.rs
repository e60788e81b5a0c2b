//! Every numeric constant of the NBD wire protocol, by its name in `proto.md`.
//!
//! Enumerations are *open*: a value the spec does not name (a new option from a
//! newer client, an unknown reply type from a newer server) is still
//! representable, so decoding never has to fail just because a number is new.
//! Whether an unknown value is an error is decided by the state machines, where
//! the spec says so (for example `NBD_REP_ERR_UNSUP` for an unknown option).

/// Defines an open enumeration: a transparent newtype over the wire integer
/// with associated constants named as in the spec, a `name()` lookup and a
/// `Debug`/`Display` that prints the spec name (or the number when unknown).
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($repr:ty) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:expr => $spec:literal,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[repr(transparent)]
        $vis struct $name(pub $repr);

        impl $name {
            $(
                $(#[$vmeta])*
                pub const $variant: Self = Self($value);
            )*

            /// Every value the spec names, in declaration order.
            pub const KNOWN: &'static [Self] = &[$(Self::$variant),*];

            /// The spec's name for this value, or `None` when it is not one
            /// the spec (as implemented here) defines.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(v if v == $value => Some($spec),)*
                    _ => None,
                }
            }

            /// Whether the spec names this value.
            pub const fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Display::fmt(self, f)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

/// `INIT_PASSWD`, ASCII `NBDMAGIC`: first 64 bits the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// ASCII `IHAVEOPT`: newstyle magic, sent by the server after `NBDMAGIC` and
/// by the client before every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// `cliserv_magic` of the oldstyle negotiation (which nbdx does not speak).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every fixed-newstyle option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: compact request header.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`: extended request header.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC` (formerly `NBD_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_EXTENDED_REPLY_MAGIC`.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;
/// The IANA-assigned NBD port.
pub const DEFAULT_PORT: u16 = 10809;

open_enum! {
    /// Option types of the handshake phase (`NBD_OPT_*`).
    pub struct OptType(u32) {
        /// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission (no error path).
        EXPORT_NAME = 1 => "NBD_OPT_EXPORT_NAME",
        /// `NBD_OPT_ABORT`: soft disconnect during negotiation.
        ABORT = 2 => "NBD_OPT_ABORT",
        /// `NBD_OPT_LIST`: list exports.
        LIST = 3 => "NBD_OPT_LIST",
        /// `NBD_OPT_PEEK_EXPORT`: withdrawn, not in use.
        PEEK_EXPORT = 4 => "NBD_OPT_PEEK_EXPORT",
        /// `NBD_OPT_STARTTLS`: upgrade the session to TLS.
        STARTTLS = 5 => "NBD_OPT_STARTTLS",
        /// `NBD_OPT_INFO`: describe an export without entering transmission.
        INFO = 6 => "NBD_OPT_INFO",
        /// `NBD_OPT_GO`: describe an export and enter transmission.
        GO = 7 => "NBD_OPT_GO",
        /// `NBD_OPT_STRUCTURED_REPLY`: use structured replies.
        STRUCTURED_REPLY = 8 => "NBD_OPT_STRUCTURED_REPLY",
        /// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
        LIST_META_CONTEXT = 9 => "NBD_OPT_LIST_META_CONTEXT",
        /// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts.
        SET_META_CONTEXT = 10 => "NBD_OPT_SET_META_CONTEXT",
        /// `NBD_OPT_EXTENDED_HEADERS`: use 32-byte request and reply headers.
        EXTENDED_HEADERS = 11 => "NBD_OPT_EXTENDED_HEADERS",
    }
}

open_enum! {
    /// Option reply types (`NBD_REP_*`); errors have bit 31 set.
    pub struct RepType(u32) {
        /// `NBD_REP_ACK`: option accepted / list finished.
        ACK = 1 => "NBD_REP_ACK",
        /// `NBD_REP_SERVER`: one export of an `NBD_OPT_LIST`.
        SERVER = 2 => "NBD_REP_SERVER",
        /// `NBD_REP_INFO`: one piece of export information.
        INFO = 3 => "NBD_REP_INFO",
        /// `NBD_REP_META_CONTEXT`: one metadata context.
        META_CONTEXT = 4 => "NBD_REP_META_CONTEXT",
        /// `NBD_REP_ERR_UNSUP`: option unknown to this server.
        ERR_UNSUP = (1 << 31) + 1 => "NBD_REP_ERR_UNSUP",
        /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
        ERR_POLICY = (1 << 31) + 2 => "NBD_REP_ERR_POLICY",
        /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
        ERR_INVALID = (1 << 31) + 3 => "NBD_REP_ERR_INVALID",
        /// `NBD_REP_ERR_PLATFORM`: not supported on this platform/build.
        ERR_PLATFORM = (1 << 31) + 4 => "NBD_REP_ERR_PLATFORM",
        /// `NBD_REP_ERR_TLS_REQD`: TLS must be initiated first.
        ERR_TLS_REQD = (1 << 31) + 5 => "NBD_REP_ERR_TLS_REQD",
        /// `NBD_REP_ERR_UNKNOWN`: the export is not available.
        ERR_UNKNOWN = (1 << 31) + 6 => "NBD_REP_ERR_UNKNOWN",
        /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
        ERR_SHUTDOWN = (1 << 31) + 7 => "NBD_REP_ERR_SHUTDOWN",
        /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request `NBD_INFO_BLOCK_SIZE`.
        ERR_BLOCK_SIZE_REQD = (1 << 31) + 8 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
        ERR_TOO_BIG = (1 << 31) + 9 => "NBD_REP_ERR_TOO_BIG",
        /// `NBD_REP_ERR_EXT_HEADER_REQD`: extended headers required (or no downgrade).
        ERR_EXT_HEADER_REQD = (1 << 31) + 10 => "NBD_REP_ERR_EXT_HEADER_REQD",
    }
}

impl RepType {
    /// Whether this is an error reply (bit 31 set).
    pub const fn is_error(self) -> bool {
        self.0 & (1 << 31) != 0
    }
}

open_enum! {
    /// Information types carried in `NBD_REP_INFO` (`NBD_INFO_*`).
    pub struct InfoType(u16) {
        /// `NBD_INFO_EXPORT`: size and transmission flags (mandatory).
        EXPORT = 0 => "NBD_INFO_EXPORT",
        /// `NBD_INFO_NAME`: canonical export name.
        NAME = 1 => "NBD_INFO_NAME",
        /// `NBD_INFO_DESCRIPTION`: human-readable description.
        DESCRIPTION = 2 => "NBD_INFO_DESCRIPTION",
        /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum sizes.
        BLOCK_SIZE = 3 => "NBD_INFO_BLOCK_SIZE",
    }
}

open_enum! {
    /// Request types of the transmission phase (`NBD_CMD_*`).
    pub struct Cmd(u16) {
        /// `NBD_CMD_READ`.
        READ = 0 => "NBD_CMD_READ",
        /// `NBD_CMD_WRITE`.
        WRITE = 1 => "NBD_CMD_WRITE",
        /// `NBD_CMD_DISC`: soft disconnect, no reply.
        DISC = 2 => "NBD_CMD_DISC",
        /// `NBD_CMD_FLUSH`.
        FLUSH = 3 => "NBD_CMD_FLUSH",
        /// `NBD_CMD_TRIM`.
        TRIM = 4 => "NBD_CMD_TRIM",
        /// `NBD_CMD_CACHE`.
        CACHE = 5 => "NBD_CMD_CACHE",
        /// `NBD_CMD_WRITE_ZEROES`.
        WRITE_ZEROES = 6 => "NBD_CMD_WRITE_ZEROES",
        /// `NBD_CMD_BLOCK_STATUS`.
        BLOCK_STATUS = 7 => "NBD_CMD_BLOCK_STATUS",
        /// `NBD_CMD_RESIZE` (experimental `RESIZE` extension; not implemented).
        RESIZE = 8 => "NBD_CMD_RESIZE",
    }
}

open_enum! {
    /// Structured/extended reply chunk types (`NBD_REPLY_TYPE_*`).
    pub struct ReplyType(u16) {
        /// `NBD_REPLY_TYPE_NONE`: final chunk without payload.
        NONE = 0 => "NBD_REPLY_TYPE_NONE",
        /// `NBD_REPLY_TYPE_OFFSET_DATA`: data at an offset.
        OFFSET_DATA = 1 => "NBD_REPLY_TYPE_OFFSET_DATA",
        /// `NBD_REPLY_TYPE_OFFSET_HOLE`: zeroes at an offset.
        OFFSET_HOLE = 2 => "NBD_REPLY_TYPE_OFFSET_HOLE",
        /// `NBD_REPLY_TYPE_BLOCK_STATUS`: 32-bit extents of one context.
        BLOCK_STATUS = 5 => "NBD_REPLY_TYPE_BLOCK_STATUS",
        /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`: 64-bit extents (extended headers only).
        BLOCK_STATUS_EXT = 6 => "NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
        /// `NBD_REPLY_TYPE_ERROR`: error for the whole request.
        ERROR = (1 << 15) + 1 => "NBD_REPLY_TYPE_ERROR",
        /// `NBD_REPLY_TYPE_ERROR_OFFSET`: error at an offset.
        ERROR_OFFSET = (1 << 15) + 2 => "NBD_REPLY_TYPE_ERROR_OFFSET",
    }
}

impl ReplyType {
    /// Whether this is an error chunk type (bit 15 set).
    pub const fn is_error(self) -> bool {
        self.0 & (1 << 15) != 0
    }
}

open_enum! {
    /// Error values of the transmission phase (`NBD_E*`). Only these may go on
    /// the wire; see [`Errno::from_os_error`] for the mapping from OS errors.
    pub struct Errno(u32) {
        /// `NBD_EPERM` (1): operation not permitted.
        EPERM = 1 => "NBD_EPERM",
        /// `NBD_EIO` (5): input/output error.
        EIO = 5 => "NBD_EIO",
        /// `NBD_ENOMEM` (12): cannot allocate memory.
        ENOMEM = 12 => "NBD_ENOMEM",
        /// `NBD_EINVAL` (22): invalid argument.
        EINVAL = 22 => "NBD_EINVAL",
        /// `NBD_ENOSPC` (28): no space left on device.
        ENOSPC = 28 => "NBD_ENOSPC",
        /// `NBD_EOVERFLOW` (75): value too large.
        EOVERFLOW = 75 => "NBD_EOVERFLOW",
        /// `NBD_ENOTSUP` (95): operation not supported.
        ENOTSUP = 95 => "NBD_ENOTSUP",
        /// `NBD_ESHUTDOWN` (108): server is shutting down.
        ESHUTDOWN = 108 => "NBD_ESHUTDOWN",
    }
}

impl Errno {
    /// Maps a Linux `errno` value to the NBD error that may go on the wire.
    ///
    /// Per "Error values": `EDQUOT` and `EFBIG` become `NBD_ENOSPC`; values
    /// the spec does not define become `NBD_EIO`. The raw OS number is never
    /// forwarded.
    pub const fn from_os_error(errno: i32) -> Self {
        match errno {
            1 | 13 | 30 => Self::EPERM, // EPERM, EACCES, EROFS
            12 => Self::ENOMEM,
            22 => Self::EINVAL,
            27 | 28 | 122 => Self::ENOSPC, // EFBIG, ENOSPC, EDQUOT
            75 => Self::EOVERFLOW,
            95 | 38 => Self::ENOTSUP, // EOPNOTSUPP, ENOSYS
            108 => Self::ESHUTDOWN,
            _ => Self::EIO,
        }
    }

    /// Normalizes a value received from a peer: "The client SHOULD treat an
    /// unexpected error value as if it had been `NBD_EINVAL`".
    pub const fn normalize(self) -> Self {
        if self.is_known() {
            self
        } else {
            Self::EINVAL
        }
    }

    /// A short human description, as `strerror` would give.
    pub const fn description(self) -> &'static str {
        match self.0 {
            1 => "Operation not permitted",
            5 => "Input/output error",
            12 => "Cannot allocate memory",
            22 => "Invalid argument",
            28 => "No space left on device",
            75 => "Value too large",
            95 => "Operation not supported",
            108 => "Server is shutting down",
            _ => "Unknown error",
        }
    }
}

/// Name of the one metadata context the spec defines.
pub const BASE_ALLOCATION: &str = "base:allocation";

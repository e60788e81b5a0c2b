//! Attribute enums of the `nbd` family, one per nesting level:
//!
//! ```text
//! NbdAttr                 NBD_ATTR_*
//! ├─ Sockets(Vec<SockItem>)       SockItem     NBD_SOCK_ITEM
//! │                               └─ SockAttr  NBD_SOCK_*
//! └─ DeviceList(Vec<DeviceItem>)  DeviceItem   NBD_DEVICE_ITEM
//!                                 └─ DeviceAttr NBD_DEVICE_*
//! ```
//!
//! Every level keeps attributes it does not know as `Unknown(nla_type, value)`
//! (the raw `nla_type`, flag bits included), so a newer kernel's additions
//! survive parsing and re-encode byte for byte.
//!
//! Nested attributes this crate sends (`NBD_ATTR_SOCKETS`, `NBD_SOCK_ITEM`)
//! carry `NLA_F_NESTED`, as strict netlink validation expects; the kernel
//! parses nbd requests liberally, where the flag is optional. The device list
//! is encoded without the flag, exactly as the kernel sends it
//! (`nla_nest_start_noflag`).

use bytes::BufMut;

use crate::consts::*;
use crate::nla::{self, emit_all, encoded_len_all, parse_all, DecodeError, Nla, NLA_F_NESTED, NLA_TYPE_MASK};

/// A top-level attribute (`NBD_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAttr {
    /// `NBD_ATTR_INDEX`.
    Index(u32),
    /// `NBD_ATTR_SIZE_BYTES`.
    SizeBytes(u64),
    /// `NBD_ATTR_BLOCK_SIZE_BYTES`.
    BlockSizeBytes(u64),
    /// `NBD_ATTR_TIMEOUT` (seconds).
    Timeout(u64),
    /// `NBD_ATTR_SERVER_FLAGS`.
    ServerFlags(u64),
    /// `NBD_ATTR_CLIENT_FLAGS`.
    ClientFlags(u64),
    /// `NBD_ATTR_SOCKETS`.
    Sockets(Vec<SockItem>),
    /// `NBD_ATTR_DEAD_CONN_TIMEOUT` (seconds).
    DeadConnTimeout(u64),
    /// `NBD_ATTR_DEVICE_LIST`.
    DeviceList(Vec<DeviceItem>),
    /// `NBD_ATTR_BACKEND_IDENTIFIER`.
    BackendIdentifier(String),
    /// Any other `nla_type`, with its value as received.
    Unknown(u16, Vec<u8>),
}

/// An entry of `NBD_ATTR_SOCKETS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockItem {
    /// `NBD_SOCK_ITEM`.
    Item(Vec<SockAttr>),
    /// Any other `nla_type`, with its value as received.
    Unknown(u16, Vec<u8>),
}

/// An attribute inside `NBD_SOCK_ITEM` (`NBD_SOCK_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAttr {
    /// `NBD_SOCK_FD`.
    Fd(u32),
    /// Any other `nla_type`, with its value as received.
    Unknown(u16, Vec<u8>),
}

/// An entry of `NBD_ATTR_DEVICE_LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceItem {
    /// `NBD_DEVICE_ITEM`.
    Item(Vec<DeviceAttr>),
    /// Any other `nla_type`, with its value as received.
    Unknown(u16, Vec<u8>),
}

/// An attribute inside `NBD_DEVICE_ITEM` (`NBD_DEVICE_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAttr {
    /// `NBD_DEVICE_INDEX`.
    Index(u32),
    /// `NBD_DEVICE_CONNECTED` (0 or 1).
    Connected(u8),
    /// Any other `nla_type`, with its value as received.
    Unknown(u16, Vec<u8>),
}

impl SockItem {
    /// An `NBD_SOCK_ITEM` holding one `NBD_SOCK_FD`.
    pub fn fd(fd: u32) -> Self {
        SockItem::Item(vec![SockAttr::Fd(fd)])
    }
}

impl Nla for NbdAttr {
    fn kind(&self) -> u16 {
        match self {
            NbdAttr::Index(_) => NBD_ATTR_INDEX,
            NbdAttr::SizeBytes(_) => NBD_ATTR_SIZE_BYTES,
            NbdAttr::BlockSizeBytes(_) => NBD_ATTR_BLOCK_SIZE_BYTES,
            NbdAttr::Timeout(_) => NBD_ATTR_TIMEOUT,
            NbdAttr::ServerFlags(_) => NBD_ATTR_SERVER_FLAGS,
            NbdAttr::ClientFlags(_) => NBD_ATTR_CLIENT_FLAGS,
            NbdAttr::Sockets(_) => NBD_ATTR_SOCKETS | NLA_F_NESTED,
            NbdAttr::DeadConnTimeout(_) => NBD_ATTR_DEAD_CONN_TIMEOUT,
            NbdAttr::DeviceList(_) => NBD_ATTR_DEVICE_LIST,
            NbdAttr::BackendIdentifier(_) => NBD_ATTR_BACKEND_IDENTIFIER,
            NbdAttr::Unknown(kind, _) => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            NbdAttr::Index(_) => 4,
            NbdAttr::SizeBytes(_)
            | NbdAttr::BlockSizeBytes(_)
            | NbdAttr::Timeout(_)
            | NbdAttr::ServerFlags(_)
            | NbdAttr::ClientFlags(_)
            | NbdAttr::DeadConnTimeout(_) => 8,
            NbdAttr::Sockets(items) => encoded_len_all(items),
            NbdAttr::DeviceList(items) => encoded_len_all(items),
            // NLA_STRING with its terminating NUL, as libnl's nla_put_string sends it.
            NbdAttr::BackendIdentifier(s) => s.len() + 1,
            NbdAttr::Unknown(_, value) => value.len(),
        }
    }

    fn emit_value(&self, out: &mut dyn BufMut) {
        match self {
            NbdAttr::Index(v) => out.put_u32_ne(*v),
            NbdAttr::SizeBytes(v)
            | NbdAttr::BlockSizeBytes(v)
            | NbdAttr::Timeout(v)
            | NbdAttr::ServerFlags(v)
            | NbdAttr::ClientFlags(v)
            | NbdAttr::DeadConnTimeout(v) => out.put_u64_ne(*v),
            NbdAttr::Sockets(items) => emit_all(items, out),
            NbdAttr::DeviceList(items) => emit_all(items, out),
            NbdAttr::BackendIdentifier(s) => {
                out.put_slice(s.as_bytes());
                out.put_u8(0);
            }
            NbdAttr::Unknown(_, value) => out.put_slice(value),
        }
    }

    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind & NLA_TYPE_MASK {
            NBD_ATTR_INDEX => NbdAttr::Index(nla::u32_value("NBD_ATTR_INDEX", value)?),
            NBD_ATTR_SIZE_BYTES => NbdAttr::SizeBytes(nla::u64_value("NBD_ATTR_SIZE_BYTES", value)?),
            NBD_ATTR_BLOCK_SIZE_BYTES => NbdAttr::BlockSizeBytes(nla::u64_value("NBD_ATTR_BLOCK_SIZE_BYTES", value)?),
            NBD_ATTR_TIMEOUT => NbdAttr::Timeout(nla::u64_value("NBD_ATTR_TIMEOUT", value)?),
            NBD_ATTR_SERVER_FLAGS => NbdAttr::ServerFlags(nla::u64_value("NBD_ATTR_SERVER_FLAGS", value)?),
            NBD_ATTR_CLIENT_FLAGS => NbdAttr::ClientFlags(nla::u64_value("NBD_ATTR_CLIENT_FLAGS", value)?),
            NBD_ATTR_SOCKETS => NbdAttr::Sockets(parse_all(value)?),
            NBD_ATTR_DEAD_CONN_TIMEOUT => {
                NbdAttr::DeadConnTimeout(nla::u64_value("NBD_ATTR_DEAD_CONN_TIMEOUT", value)?)
            }
            NBD_ATTR_DEVICE_LIST => NbdAttr::DeviceList(parse_all(value)?),
            NBD_ATTR_BACKEND_IDENTIFIER => {
                NbdAttr::BackendIdentifier(nla::string_value("NBD_ATTR_BACKEND_IDENTIFIER", value)?)
            }
            _ => NbdAttr::Unknown(kind, value.to_vec()),
        })
    }
}

impl Nla for SockItem {
    fn kind(&self) -> u16 {
        match self {
            SockItem::Item(_) => NBD_SOCK_ITEM | NLA_F_NESTED,
            SockItem::Unknown(kind, _) => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            SockItem::Item(attrs) => encoded_len_all(attrs),
            SockItem::Unknown(_, value) => value.len(),
        }
    }

    fn emit_value(&self, out: &mut dyn BufMut) {
        match self {
            SockItem::Item(attrs) => emit_all(attrs, out),
            SockItem::Unknown(_, value) => out.put_slice(value),
        }
    }

    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind & NLA_TYPE_MASK {
            NBD_SOCK_ITEM => SockItem::Item(parse_all(value)?),
            _ => SockItem::Unknown(kind, value.to_vec()),
        })
    }
}

impl Nla for SockAttr {
    fn kind(&self) -> u16 {
        match self {
            SockAttr::Fd(_) => NBD_SOCK_FD,
            SockAttr::Unknown(kind, _) => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            SockAttr::Fd(_) => 4,
            SockAttr::Unknown(_, value) => value.len(),
        }
    }

    fn emit_value(&self, out: &mut dyn BufMut) {
        match self {
            SockAttr::Fd(fd) => out.put_u32_ne(*fd),
            SockAttr::Unknown(_, value) => out.put_slice(value),
        }
    }

    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind & NLA_TYPE_MASK {
            NBD_SOCK_FD => SockAttr::Fd(nla::u32_value("NBD_SOCK_FD", value)?),
            _ => SockAttr::Unknown(kind, value.to_vec()),
        })
    }
}

impl Nla for DeviceItem {
    fn kind(&self) -> u16 {
        match self {
            DeviceItem::Item(_) => NBD_DEVICE_ITEM,
            DeviceItem::Unknown(kind, _) => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            DeviceItem::Item(attrs) => encoded_len_all(attrs),
            DeviceItem::Unknown(_, value) => value.len(),
        }
    }

    fn emit_value(&self, out: &mut dyn BufMut) {
        match self {
            DeviceItem::Item(attrs) => emit_all(attrs, out),
            DeviceItem::Unknown(_, value) => out.put_slice(value),
        }
    }

    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind & NLA_TYPE_MASK {
            NBD_DEVICE_ITEM => DeviceItem::Item(parse_all(value)?),
            _ => DeviceItem::Unknown(kind, value.to_vec()),
        })
    }
}

impl Nla for DeviceAttr {
    fn kind(&self) -> u16 {
        match self {
            DeviceAttr::Index(_) => NBD_DEVICE_INDEX,
            DeviceAttr::Connected(_) => NBD_DEVICE_CONNECTED,
            DeviceAttr::Unknown(kind, _) => *kind,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            DeviceAttr::Index(_) => 4,
            DeviceAttr::Connected(_) => 1,
            DeviceAttr::Unknown(_, value) => value.len(),
        }
    }

    fn emit_value(&self, out: &mut dyn BufMut) {
        match self {
            DeviceAttr::Index(index) => out.put_u32_ne(*index),
            DeviceAttr::Connected(connected) => out.put_u8(*connected),
            DeviceAttr::Unknown(_, value) => out.put_slice(value),
        }
    }

    fn parse(kind: u16, value: &[u8]) -> Result<Self, DecodeError> {
        Ok(match kind & NLA_TYPE_MASK {
            NBD_DEVICE_INDEX => DeviceAttr::Index(nla::u32_value("NBD_DEVICE_INDEX", value)?),
            NBD_DEVICE_CONNECTED => DeviceAttr::Connected(nla::u8_value("NBD_DEVICE_CONNECTED", value)?),
            _ => DeviceAttr::Unknown(kind, value.to_vec()),
        })
    }
}

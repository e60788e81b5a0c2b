//! Generic netlink messages of the `nbd` family: `struct genlmsghdr`
//! (`include/uapi/linux/genetlink.h`) followed by [`NbdAttr`]s.
//!
//! ```text
//!  0     1         2          4
//!  ┌─────┬─────────┬──────────┬──────────────────────────┐
//!  │ cmd │ version │ reserved │ NBD_ATTR_* attributes ... │
//!  └─────┴─────────┴──────────┴──────────────────────────┘
//! ```
//!
//! This is the payload of a netlink message (`nlmsghdr`); the netlink header,
//! sequence numbers and acknowledgements belong to the transport (neli).

use bytes::BufMut;

use crate::attr::{DeviceAttr, DeviceItem, NbdAttr};
use crate::consts::NBD_GENL_VERSION;
use crate::nla::{emit_all, encoded_len_all, parse_all, DecodeError};

/// Size of `struct genlmsghdr` (`GENL_HDRLEN`).
pub const GENL_HDRLEN: usize = 4;

/// A generic netlink message of the `nbd` family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenlMessage {
    /// `genlmsghdr.cmd`: one of the `NBD_CMD_*` constants.
    pub cmd: u8,
    /// `genlmsghdr.version`: [`NBD_GENL_VERSION`] for everything sent.
    pub version: u8,
    /// The attributes, in order.
    pub attrs: Vec<NbdAttr>,
}

/// One entry of an `NBD_CMD_STATUS` reply.
///
/// `connected` is the kernel's `NBD_DEVICE_CONNECTED`: true while the device
/// holds a configuration, which is the case from CONNECT until DISCONNECT,
/// also while all its sockets are dead (waiting for RECONFIGURE), and also
/// while any process merely has `/dev/nbdN` open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceStatus {
    /// Device index (`NBD_DEVICE_INDEX`).
    pub index: u32,
    /// Whether the device has a configuration (`NBD_DEVICE_CONNECTED`).
    pub connected: bool,
}

impl GenlMessage {
    /// A message of the current family version.
    pub fn new(cmd: u8, attrs: Vec<NbdAttr>) -> Self {
        Self { cmd, version: NBD_GENL_VERSION, attrs }
    }

    /// Length of the encoded message.
    pub fn encoded_len(&self) -> usize {
        GENL_HDRLEN + encoded_len_all(&self.attrs)
    }

    /// Writes [`GenlMessage::encoded_len`] bytes.
    pub fn encode(&self, out: &mut dyn BufMut) {
        out.put_u8(self.cmd);
        out.put_u8(self.version);
        out.put_u16_ne(0);
        emit_all(&self.attrs, out);
    }

    /// The encoded message in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Parses a message; unknown attributes are kept as `Unknown`.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let Some((&[cmd, version, _, _], attrs)) = buf.split_first_chunk::<GENL_HDRLEN>() else {
            return Err(DecodeError::Truncated { what: "genlmsghdr", needed: GENL_HDRLEN, available: buf.len() });
        };
        Ok(Self { cmd, version, attrs: parse_all(attrs)? })
    }

    /// The first `NBD_ATTR_INDEX`, if any (CONNECT reply, LINK_DEAD event).
    pub fn index(&self) -> Option<u32> {
        self.attrs.iter().find_map(|attr| match attr {
            NbdAttr::Index(index) => Some(*index),
            _ => None,
        })
    }

    /// The devices of every `NBD_ATTR_DEVICE_LIST` (STATUS reply), in order.
    ///
    /// Unknown attributes are skipped; an `NBD_DEVICE_ITEM` without index or
    /// connected state is an error.
    pub fn device_statuses(&self) -> Result<Vec<DeviceStatus>, DecodeError> {
        let items = self.attrs.iter().flat_map(|attr| match attr {
            NbdAttr::DeviceList(items) => items.as_slice(),
            _ => &[],
        });
        let mut devices = Vec::new();
        for item in items {
            let DeviceItem::Item(attrs) = item else { continue };
            let mut index = None;
            let mut connected = None;
            for attr in attrs {
                match attr {
                    DeviceAttr::Index(i) => index = Some(*i),
                    DeviceAttr::Connected(c) => connected = Some(*c != 0),
                    DeviceAttr::Unknown(..) => {}
                }
            }
            devices.push(DeviceStatus {
                index: index.ok_or(DecodeError::MissingAttribute("NBD_DEVICE_INDEX"))?,
                connected: connected.ok_or(DecodeError::MissingAttribute("NBD_DEVICE_CONNECTED"))?,
            });
        }
        Ok(devices)
    }
}

#[cfg(all(test, target_endian = "little"))]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::*;

    #[test]
    fn a_message_shorter_than_the_generic_header_is_truncated() {
        assert_eq!(
            GenlMessage::decode(&[5, 1]),
            Err(DecodeError::Truncated { what: "genlmsghdr", needed: 4, available: 2 })
        );
    }

    #[test]
    fn index_is_the_first_index_attribute() {
        let msg = GenlMessage::new(NBD_CMD_LINK_DEAD, vec![NbdAttr::Timeout(3), NbdAttr::Index(7)]);
        assert_eq!(msg.index(), Some(7));
        assert_eq!(GenlMessage::new(NBD_CMD_STATUS, vec![]).index(), None);
    }

    #[test]
    fn a_device_item_without_index_is_an_error() {
        let msg = GenlMessage::new(
            NBD_CMD_STATUS,
            vec![NbdAttr::DeviceList(vec![DeviceItem::Item(vec![DeviceAttr::Connected(1)])])],
        );
        assert_eq!(msg.device_statuses(), Err(DecodeError::MissingAttribute("NBD_DEVICE_INDEX")));
    }

    #[test]
    fn an_empty_device_list_has_no_devices() {
        let msg = GenlMessage::new(NBD_CMD_STATUS, vec![NbdAttr::DeviceList(vec![])]);
        assert_eq!(msg.device_statuses(), Ok(vec![]));
    }
}

//! Golden bytes, computed by hand from `include/uapi/linux/nbd-netlink.h`,
//! `include/uapi/linux/genetlink.h` and the `nlattr` layout (little-endian
//! host: netlink integers are in host byte order).

use super::*;
use crate::attr::{SockAttr, SockItem};
use crate::consts::*;

/// NBD_CMD_CONNECT of /dev/nbd3 with every attribute and two sockets.
#[rustfmt::skip]
const CONNECT_TWO_SOCKETS: [u8; 120] = [
    0x01, 0x01, 0x00, 0x00,                         // genlmsghdr: cmd 1 (CONNECT), version 1
    0x08, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, // NBD_ATTR_INDEX (1), len 8: 3
    0x0c, 0x00, 0x02, 0x00,                         // NBD_ATTR_SIZE_BYTES (2), len 12
    0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, //   1 GiB
    0x0c, 0x00, 0x03, 0x00,                         // NBD_ATTR_BLOCK_SIZE_BYTES (3), len 12
    0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   4096
    0x0c, 0x00, 0x04, 0x00,                         // NBD_ATTR_TIMEOUT (4), len 12
    0x1e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   30 s
    0x0c, 0x00, 0x05, 0x00,                         // NBD_ATTR_SERVER_FLAGS (5), len 12
    0x05, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   HAS_FLAGS | SEND_FLUSH | CAN_MULTI_CONN
    0x0c, 0x00, 0x06, 0x00,                         // NBD_ATTR_CLIENT_FLAGS (6), len 12
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   NBD_CFLAG_DISCONNECT_ON_CLOSE
    0x1c, 0x00, 0x07, 0x80,                         // NBD_ATTR_SOCKETS (7) | NLA_F_NESTED, len 28
    0x0c, 0x00, 0x01, 0x80,                         //   NBD_SOCK_ITEM (1) | NLA_F_NESTED, len 12
    0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, //     NBD_SOCK_FD (1), len 8: fd 5
    0x0c, 0x00, 0x01, 0x80,                         //   NBD_SOCK_ITEM (1) | NLA_F_NESTED, len 12
    0x08, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, //     NBD_SOCK_FD (1), len 8: fd 6
    0x0c, 0x00, 0x08, 0x00,                         // NBD_ATTR_DEAD_CONN_TIMEOUT (8), len 12
    0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //   10 s
    0x07, 0x00, 0x0a, 0x00, b'a', b'b', 0x00, 0x00, // NBD_ATTR_BACKEND_IDENTIFIER (10), len 7: "ab\0", 1 pad
];

/// NBD_CMD_STATUS reply for nbd0 (connected) and nbd1, as populate_nbd_status
/// builds it: nests opened with nla_nest_start_noflag (no NLA_F_NESTED).
#[rustfmt::skip]
const STATUS_TWO_DEVICES: [u8; 48] = [
    0x05, 0x01, 0x00, 0x00,                         // genlmsghdr: cmd 5 (STATUS), version 1
    0x2c, 0x00, 0x09, 0x00,                         // NBD_ATTR_DEVICE_LIST (9), len 44
    0x14, 0x00, 0x01, 0x00,                         //   NBD_DEVICE_ITEM (1), len 20
    0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, //     NBD_DEVICE_INDEX (1): 0
    0x05, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, //     NBD_DEVICE_CONNECTED (2), len 5: 1, 3 pad
    0x14, 0x00, 0x01, 0x00,                         //   NBD_DEVICE_ITEM (1), len 20
    0x08, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, //     NBD_DEVICE_INDEX (1): 1
    0x05, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, //     NBD_DEVICE_CONNECTED (2), len 5: 0, 3 pad
];

/// A STATUS reply from an imagined newer kernel: an unknown device attribute
/// (3), an unknown top-level attribute (11) and an unknown nested one (12).
#[rustfmt::skip]
const STATUS_WITH_UNKNOWN: [u8; 64] = [
    0x05, 0x01, 0x00, 0x00,                         // genlmsghdr: cmd 5 (STATUS), version 1
    0x24, 0x00, 0x09, 0x00,                         // NBD_ATTR_DEVICE_LIST (9), len 36
    0x20, 0x00, 0x01, 0x00,                         //   NBD_DEVICE_ITEM (1), len 32
    0x08, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, //     NBD_DEVICE_INDEX (1): 2
    0x05, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, //     NBD_DEVICE_CONNECTED (2): 1, 3 pad
    0x0c, 0x00, 0x03, 0x00,                         //     unknown NBD_DEVICE_* 3, len 12
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, //       (a u64: 1 MiB)
    0x0c, 0x00, 0x0b, 0x00,                         // unknown NBD_ATTR_* 11, len 12
    0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04,
    0x0c, 0x00, 0x0c, 0x80,                         // unknown NBD_ATTR_* 12 | NLA_F_NESTED, len 12
    0x08, 0x00, 0x01, 0x00, 0x2a, 0x00, 0x00, 0x00,
];

fn connect_two_sockets() -> GenlMessage {
    GenlMessage::new(
        NBD_CMD_CONNECT,
        vec![
            NbdAttr::Index(3),
            NbdAttr::SizeBytes(1 << 30),
            NbdAttr::BlockSizeBytes(4096),
            NbdAttr::Timeout(30),
            NbdAttr::ServerFlags(0x105),
            NbdAttr::ClientFlags(NBD_CFLAG_DISCONNECT_ON_CLOSE),
            NbdAttr::Sockets(vec![SockItem::fd(5), SockItem::fd(6)]),
            NbdAttr::DeadConnTimeout(10),
            NbdAttr::BackendIdentifier("ab".into()),
        ],
    )
}

#[test]
fn connect_with_two_sockets_encodes_to_the_golden_bytes() {
    let msg = connect_two_sockets();
    assert_eq!(msg.encoded_len(), CONNECT_TWO_SOCKETS.len());
    assert_eq!(msg.to_bytes(), CONNECT_TWO_SOCKETS);
}

#[test]
fn connect_golden_bytes_parse_back_to_the_same_message() {
    let msg = GenlMessage::decode(&CONNECT_TWO_SOCKETS).unwrap();
    assert_eq!(msg, connect_two_sockets());
    let NbdAttr::Sockets(items) = &msg.attrs[6] else { panic!("attribute 6 is {:?}", msg.attrs[6]) };
    assert_eq!(items[1], SockItem::Item(vec![SockAttr::Fd(6)]));
}

#[test]
fn status_reply_with_two_devices_parses_to_their_states() {
    let msg = GenlMessage::decode(&STATUS_TWO_DEVICES).unwrap();
    assert_eq!((msg.cmd, msg.version), (NBD_CMD_STATUS, NBD_GENL_VERSION));
    assert_eq!(
        msg.device_statuses().unwrap(),
        vec![DeviceStatus { index: 0, connected: true }, DeviceStatus { index: 1, connected: false }]
    );
}

#[test]
fn status_reply_reencodes_byte_for_byte() {
    let msg = GenlMessage::decode(&STATUS_TWO_DEVICES).unwrap();
    assert_eq!(
        msg.attrs,
        vec![NbdAttr::DeviceList(vec![
            DeviceItem::Item(vec![DeviceAttr::Index(0), DeviceAttr::Connected(1)]),
            DeviceItem::Item(vec![DeviceAttr::Index(1), DeviceAttr::Connected(0)]),
        ])]
    );
    assert_eq!(msg.to_bytes(), STATUS_TWO_DEVICES);
}

#[test]
fn unknown_attributes_are_kept_at_every_level_and_reencode_unchanged() {
    let msg = GenlMessage::decode(&STATUS_WITH_UNKNOWN).unwrap();
    assert_eq!(
        msg.attrs,
        vec![
            NbdAttr::DeviceList(vec![DeviceItem::Item(vec![
                DeviceAttr::Index(2),
                DeviceAttr::Connected(1),
                DeviceAttr::Unknown(3, vec![0, 0, 0x10, 0, 0, 0, 0, 0]),
            ])]),
            NbdAttr::Unknown(11, vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]),
            NbdAttr::Unknown(12 | crate::nla::NLA_F_NESTED, vec![8, 0, 1, 0, 0x2a, 0, 0, 0]),
        ]
    );
    assert_eq!(msg.device_statuses().unwrap(), vec![DeviceStatus { index: 2, connected: true }]);
    assert_eq!(msg.to_bytes(), STATUS_WITH_UNKNOWN);
}

#[test]
fn link_dead_event_carries_the_device_index() {
    let bytes = [0x04, 0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00];
    let msg = GenlMessage::decode(&bytes).unwrap();
    assert_eq!((msg.cmd, msg.index()), (NBD_CMD_LINK_DEAD, Some(5)));
}

#[test]
fn every_truncation_of_a_reply_is_an_error_or_a_shorter_message() {
    for len in 0..STATUS_WITH_UNKNOWN.len() {
        let prefix = &STATUS_WITH_UNKNOWN[..len];
        if let Ok(msg) = GenlMessage::decode(prefix) {
            assert!(msg.encoded_len() <= len + 3, "prefix of {len} bytes decoded to more: {msg:?}");
        }
    }
}

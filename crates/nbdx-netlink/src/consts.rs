//! Kernel constants of the NBD driver, by their names and numbers in
//! `include/uapi/linux/nbd-netlink.h` and `include/uapi/linux/nbd.h`.
//!
//! The numbers were checked against the kernel headers (not against
//! `shared/spec/netlink-proto.md`, which does not give them): every
//! enumeration starts with an `*_UNSPEC` = 0 entry, so the first real value
//! is 1.

/// `NBD_GENL_FAMILY_NAME`: name of the generic netlink family.
pub const NBD_GENL_FAMILY_NAME: &str = "nbd";
/// `NBD_GENL_VERSION`: version of the family, sent in every `genlmsghdr`.
pub const NBD_GENL_VERSION: u8 = 0x1;
/// `NBD_GENL_MCAST_GROUP_NAME`: multicast group of `NBD_CMD_LINK_DEAD`.
pub const NBD_GENL_MCAST_GROUP_NAME: &str = "nbd_mc_group";

// Commands (`genlmsghdr.cmd`).

/// `NBD_CMD_CONNECT`: configure a device and start it.
pub const NBD_CMD_CONNECT: u8 = 1;
/// `NBD_CMD_DISCONNECT`: send `NBD_CMD_DISC` and tear the device down.
pub const NBD_CMD_DISCONNECT: u8 = 2;
/// `NBD_CMD_RECONFIGURE`: replace dead sockets, change timeouts, size or client flags.
pub const NBD_CMD_RECONFIGURE: u8 = 3;
/// `NBD_CMD_LINK_DEAD`: multicast from the kernel when a socket of a device died.
pub const NBD_CMD_LINK_DEAD: u8 = 4;
/// `NBD_CMD_STATUS`: list devices and whether each has a configuration.
pub const NBD_CMD_STATUS: u8 = 5;

// Top-level attributes (`NBD_ATTR_*`).

/// `NBD_ATTR_INDEX` (`NLA_U32`): device index, the N of `/dev/nbdN`.
pub const NBD_ATTR_INDEX: u16 = 1;
/// `NBD_ATTR_SIZE_BYTES` (`NLA_U64`): export size in bytes.
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
/// `NBD_ATTR_BLOCK_SIZE_BYTES` (`NLA_U64`): logical block size, a power of two.
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
/// `NBD_ATTR_TIMEOUT` (`NLA_U64`): per-request timeout in seconds; 0 = none.
pub const NBD_ATTR_TIMEOUT: u16 = 4;
/// `NBD_ATTR_SERVER_FLAGS` (`NLA_U64`): transmission flags from the handshake.
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
/// `NBD_ATTR_CLIENT_FLAGS` (`NLA_U64`): `NBD_CFLAG_*` behaviour flags.
pub const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
/// `NBD_ATTR_SOCKETS` (`NLA_NESTED`): list of `NBD_SOCK_ITEM`.
pub const NBD_ATTR_SOCKETS: u16 = 7;
/// `NBD_ATTR_DEAD_CONN_TIMEOUT` (`NLA_U64`): seconds to wait for a reconnect.
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
/// `NBD_ATTR_DEVICE_LIST` (`NLA_NESTED`): list of `NBD_DEVICE_ITEM` (STATUS reply).
pub const NBD_ATTR_DEVICE_LIST: u16 = 9;
/// `NBD_ATTR_BACKEND_IDENTIFIER` (`NLA_STRING`): opaque backend name.
pub const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;

// Inside NBD_ATTR_SOCKETS.

/// `NBD_SOCK_ITEM` (nested): one socket.
pub const NBD_SOCK_ITEM: u16 = 1;
/// `NBD_SOCK_FD` (`NLA_U32`): a file descriptor of the sending process.
pub const NBD_SOCK_FD: u16 = 1;

// Inside NBD_ATTR_DEVICE_LIST.

/// `NBD_DEVICE_ITEM` (nested): one device.
pub const NBD_DEVICE_ITEM: u16 = 1;
/// `NBD_DEVICE_INDEX` (`NLA_U32`): device index.
pub const NBD_DEVICE_INDEX: u16 = 1;
/// `NBD_DEVICE_CONNECTED` (`NLA_U8`): 1 while the device has a configuration.
pub const NBD_DEVICE_CONNECTED: u16 = 2;

// Client flags (`NBD_ATTR_CLIENT_FLAGS`), from include/uapi/linux/nbd.h.

/// `NBD_CFLAG_DESTROY_ON_DISCONNECT`: remove the device when it disconnects.
pub const NBD_CFLAG_DESTROY_ON_DISCONNECT: u64 = 1 << 0;
/// `NBD_CFLAG_DISCONNECT_ON_CLOSE`: disconnect when the last opener closes it.
pub const NBD_CFLAG_DISCONNECT_ON_CLOSE: u64 = 1 << 1;

/// ioctl request numbers of `include/uapi/linux/nbd.h`, `_IO(0xab, n)`.
pub mod ioctl {
    /// `_IO(type, nr)` of `include/uapi/asm-generic/ioctl.h`: no direction,
    /// no size, so the number is `type << 8 | nr`.
    pub const fn io(ty: u32, nr: u32) -> u32 {
        (ty << 8) | nr
    }

    /// The ioctl type byte of the NBD driver.
    pub const NBD_IOCTL_TYPE: u32 = 0xab;
    /// `NBD_SET_SOCK` = `_IO(0xab, 0)`: add a connected socket (argument: fd).
    pub const NBD_SET_SOCK: u32 = io(NBD_IOCTL_TYPE, 0);
    /// `NBD_SET_BLKSIZE` = `_IO(0xab, 1)`: block size in bytes.
    pub const NBD_SET_BLKSIZE: u32 = io(NBD_IOCTL_TYPE, 1);
    /// `NBD_SET_SIZE` = `_IO(0xab, 2)`: size in bytes.
    pub const NBD_SET_SIZE: u32 = io(NBD_IOCTL_TYPE, 2);
    /// `NBD_DO_IT` = `_IO(0xab, 3)`: start the device; blocks until it disconnects.
    pub const NBD_DO_IT: u32 = io(NBD_IOCTL_TYPE, 3);
    /// `NBD_CLEAR_SOCK` = `_IO(0xab, 4)`: shut the sockets down, fail queued requests.
    pub const NBD_CLEAR_SOCK: u32 = io(NBD_IOCTL_TYPE, 4);
    /// `NBD_CLEAR_QUE` = `_IO(0xab, 5)`: kept for compatibility, a no-op today.
    pub const NBD_CLEAR_QUE: u32 = io(NBD_IOCTL_TYPE, 5);
    /// `NBD_PRINT_DEBUG` = `_IO(0xab, 6)`: a no-op today; not used by this crate.
    pub const NBD_PRINT_DEBUG: u32 = io(NBD_IOCTL_TYPE, 6);
    /// `NBD_SET_SIZE_BLOCKS` = `_IO(0xab, 7)`: size in blocks; not used by this crate.
    pub const NBD_SET_SIZE_BLOCKS: u32 = io(NBD_IOCTL_TYPE, 7);
    /// `NBD_DISCONNECT` = `_IO(0xab, 8)`: send `NBD_CMD_DISC` on every socket.
    pub const NBD_DISCONNECT: u32 = io(NBD_IOCTL_TYPE, 8);
    /// `NBD_SET_TIMEOUT` = `_IO(0xab, 9)`: request timeout in seconds.
    pub const NBD_SET_TIMEOUT: u32 = io(NBD_IOCTL_TYPE, 9);
    /// `NBD_SET_FLAGS` = `_IO(0xab, 10)`: transmission flags.
    pub const NBD_SET_FLAGS: u32 = io(NBD_IOCTL_TYPE, 10);
}

#[cfg(test)]
mod tests {
    use super::ioctl::*;

    #[test]
    fn ioctl_numbers_match_the_io_macro_of_the_kernel() {
        assert_eq!(NBD_SET_SOCK, 0xab00);
        assert_eq!(NBD_DO_IT, 0xab03);
        assert_eq!(NBD_DISCONNECT, 0xab08);
        assert_eq!(NBD_SET_FLAGS, 0xab0a);
    }
}

//! What a caller asks the kernel for: [`ConnectRequest`] and
//! [`ReconfigureRequest`], checked and turned into attributes.
//!
//! Sockets are borrowed: the kernel takes its own reference to each socket
//! (`sockfd_lookup`) while handling the request, so the caller may close its
//! descriptors as soon as the call returns; the kernel keeps the connection
//! until the device disconnects or the socket dies.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nbdx_proto::TransmissionFlags;

use crate::attr::{NbdAttr, SockItem};
use crate::consts::{NBD_CFLAG_DESTROY_ON_DISCONNECT, NBD_CFLAG_DISCONNECT_ON_CLOSE};
use crate::error::{Error, Result};

/// `NBD_ATTR_CLIENT_FLAGS`: how the kernel treats the device (`NBD_CFLAG_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClientFlags {
    /// `NBD_CFLAG_DESTROY_ON_DISCONNECT`: remove `/dev/nbdN` after disconnecting.
    pub destroy_on_disconnect: bool,
    /// `NBD_CFLAG_DISCONNECT_ON_CLOSE`: disconnect when the last opener closes it.
    pub disconnect_on_close: bool,
}

impl ClientFlags {
    /// The flag word sent to the kernel.
    pub fn bits(self) -> u64 {
        let mut bits = 0;
        if self.destroy_on_disconnect {
            bits |= NBD_CFLAG_DESTROY_ON_DISCONNECT;
        }
        if self.disconnect_on_close {
            bits |= NBD_CFLAG_DISCONNECT_ON_CLOSE;
        }
        bits
    }
}

/// `NBD_CMD_CONNECT`: hand negotiated connections to the kernel.
///
/// Build it with [`ConnectRequest::new`] and set the public fields.
#[derive(Debug, Clone)]
pub struct ConnectRequest<'fd> {
    /// The device to use, or `None` for any free one (the kernel picks the
    /// lowest unconfigured index, or creates a new device).
    pub index: Option<u32>,
    /// Export size in bytes (from `NBD_INFO_EXPORT` / `NBD_OPT_GO`).
    pub size_bytes: u64,
    /// Logical block size: a power of two from 512 to the page size; `None`
    /// keeps the kernel default (1024 bytes).
    pub block_size: Option<u64>,
    /// Transmission flags of the export; `NBD_FLAG_READ_ONLY`,
    /// `NBD_FLAG_SEND_FLUSH`, `NBD_FLAG_SEND_FUA`, `NBD_FLAG_SEND_TRIM`,
    /// `NBD_FLAG_SEND_WRITE_ZEROES`, `NBD_FLAG_ROTATIONAL` and
    /// `NBD_FLAG_CAN_MULTI_CONN` change what the kernel does.
    pub server_flags: TransmissionFlags,
    /// `NBD_CFLAG_*`.
    pub client_flags: ClientFlags,
    /// Per-request timeout; `None` sends nothing (kernel default 30 s, then
    /// the request fails and, with one socket, the device shuts down).
    pub timeout: Option<Duration>,
    /// How long requests wait for RECONFIGURE when every socket is dead;
    /// `None` fails them at once.
    pub dead_conn_timeout: Option<Duration>,
    /// Shown in `/sys/block/nbdN/backend`; once set, RECONFIGURE must repeat it.
    pub backend: Option<String>,
    /// Connected sockets, after the handshake; more than one needs
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub sockets: Vec<BorrowedFd<'fd>>,
}

impl<'fd> ConnectRequest<'fd> {
    /// A request for any free device with default timeouts and no flags.
    pub fn new(size_bytes: u64, sockets: Vec<BorrowedFd<'fd>>) -> Self {
        Self {
            index: None,
            size_bytes,
            block_size: None,
            server_flags: TransmissionFlags::HAS_FLAGS,
            client_flags: ClientFlags::default(),
            timeout: None,
            dead_conn_timeout: None,
            backend: None,
            sockets,
        }
    }

    /// Checks what the kernel would refuse with a bare `EINVAL`.
    pub fn validate(&self, operation: &str) -> Result<()> {
        if self.sockets.is_empty() {
            return Err(Error::invalid(operation, "at least one socket is required"));
        }
        if self.sockets.len() > 1 && !self.server_flags.contains(TransmissionFlags::CAN_MULTI_CONN) {
            return Err(Error::invalid(
                operation,
                format!("{} sockets need a server that advertises NBD_FLAG_CAN_MULTI_CONN", self.sockets.len()),
            ));
        }
        if let Some(block_size) = self.block_size {
            check_block_size(operation, block_size)?;
        }
        if i64::try_from(self.size_bytes).is_err() {
            return Err(Error::invalid(operation, "size exceeds the kernel's 63-bit limit"));
        }
        Ok(())
    }

    /// The attributes of `NBD_CMD_CONNECT`, in attribute-number order.
    pub fn to_attrs(&self) -> Vec<NbdAttr> {
        let mut attrs = Vec::with_capacity(9);
        attrs.extend(self.index.map(NbdAttr::Index));
        attrs.push(NbdAttr::SizeBytes(self.size_bytes));
        attrs.extend(self.block_size.map(NbdAttr::BlockSizeBytes));
        attrs.extend(self.timeout.map(|t| NbdAttr::Timeout(whole_seconds(t))));
        attrs.push(NbdAttr::ServerFlags(u64::from(self.server_flags.bits())));
        attrs.push(NbdAttr::ClientFlags(self.client_flags.bits()));
        attrs.push(sockets_attr(&self.sockets));
        attrs.extend(self.dead_conn_timeout.map(|t| NbdAttr::DeadConnTimeout(whole_seconds(t))));
        attrs.extend(self.backend.clone().map(NbdAttr::BackendIdentifier));
        attrs
    }
}

/// `NBD_CMD_RECONFIGURE`: give a running device new sockets or settings.
///
/// Each socket replaces one *dead* socket of the device; a socket offered
/// while none is dead is dropped by the kernel without an error.
#[derive(Debug, Clone)]
pub struct ReconfigureRequest<'fd> {
    /// The device.
    pub index: u32,
    /// Replacement sockets (may be empty to change only settings).
    pub sockets: Vec<BorrowedFd<'fd>>,
    /// New per-request timeout.
    pub timeout: Option<Duration>,
    /// New dead-connection timeout.
    pub dead_conn_timeout: Option<Duration>,
    /// New client flags (all of them are replaced).
    pub client_flags: Option<ClientFlags>,
    /// New size in bytes.
    pub size_bytes: Option<u64>,
    /// New block size.
    pub block_size: Option<u64>,
    /// Must equal the backend given at CONNECT, if one was given.
    pub backend: Option<String>,
}

impl<'fd> ReconfigureRequest<'fd> {
    /// A request that hands `index` new sockets and changes nothing else.
    pub fn new(index: u32, sockets: Vec<BorrowedFd<'fd>>) -> Self {
        Self {
            index,
            sockets,
            timeout: None,
            dead_conn_timeout: None,
            client_flags: None,
            size_bytes: None,
            block_size: None,
            backend: None,
        }
    }

    /// Checks what the kernel would refuse with a bare `EINVAL`.
    pub fn validate(&self, operation: &str) -> Result<()> {
        match self.block_size {
            Some(block_size) => check_block_size(operation, block_size),
            None => Ok(()),
        }
    }

    /// The attributes of `NBD_CMD_RECONFIGURE`, in attribute-number order.
    pub fn to_attrs(&self) -> Vec<NbdAttr> {
        let mut attrs = vec![NbdAttr::Index(self.index)];
        attrs.extend(self.size_bytes.map(NbdAttr::SizeBytes));
        attrs.extend(self.block_size.map(NbdAttr::BlockSizeBytes));
        attrs.extend(self.timeout.map(|t| NbdAttr::Timeout(whole_seconds(t))));
        attrs.extend(self.client_flags.map(|f| NbdAttr::ClientFlags(f.bits())));
        if !self.sockets.is_empty() {
            attrs.push(sockets_attr(&self.sockets));
        }
        attrs.extend(self.dead_conn_timeout.map(|t| NbdAttr::DeadConnTimeout(whole_seconds(t))));
        attrs.extend(self.backend.clone().map(NbdAttr::BackendIdentifier));
        attrs
    }
}

/// The kernel counts timeouts in whole seconds, 0 meaning "none": round up so
/// that a short nonzero timeout never turns into "no timeout".
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn sockets_attr(sockets: &[BorrowedFd<'_>]) -> NbdAttr {
    // A file descriptor is a non-negative int: it always fits NBD_SOCK_FD's u32.
    NbdAttr::Sockets(sockets.iter().map(|fd| SockItem::fd(fd.as_raw_fd().unsigned_abs())).collect())
}

fn check_block_size(operation: &str, block_size: u64) -> Result<()> {
    if block_size < 512 || !block_size.is_power_of_two() {
        return Err(Error::invalid(
            operation,
            format!("block size {block_size} is not a power of two of at least 512"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn connect_attributes_follow_the_request() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut req = ConnectRequest::new(1 << 20, vec![a.as_fd(), b.as_fd()]);
        req.index = Some(2);
        req.block_size = Some(4096);
        req.server_flags |= TransmissionFlags::CAN_MULTI_CONN;
        req.timeout = Some(Duration::from_millis(1500));
        req.backend = Some("x".into());
        req.validate("NBD_CMD_CONNECT").unwrap();
        assert_eq!(
            req.to_attrs(),
            vec![
                NbdAttr::Index(2),
                NbdAttr::SizeBytes(1 << 20),
                NbdAttr::BlockSizeBytes(4096),
                NbdAttr::Timeout(2),
                NbdAttr::ServerFlags(0x101),
                NbdAttr::ClientFlags(0),
                NbdAttr::Sockets(vec![
                    SockItem::fd(a.as_raw_fd().unsigned_abs()),
                    SockItem::fd(b.as_raw_fd().unsigned_abs())
                ]),
                NbdAttr::BackendIdentifier("x".into()),
            ]
        );
    }

    #[test]
    fn two_sockets_without_multi_conn_are_refused_before_the_kernel_sees_them() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let req = ConnectRequest::new(4096, vec![a.as_fd(), b.as_fd()]);
        let err = req.validate("NBD_CMD_CONNECT").unwrap_err();
        assert!(err.to_string().contains("NBD_FLAG_CAN_MULTI_CONN"), "{err}");
    }

    #[test]
    fn a_request_without_sockets_is_refused() {
        assert!(ConnectRequest::new(4096, vec![]).validate("NBD_CMD_CONNECT").is_err());
    }

    #[test]
    fn block_sizes_must_be_powers_of_two_of_at_least_512() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for (block_size, ok) in [(256, false), (512, true), (1000, false), (4096, true)] {
            let mut req = ConnectRequest::new(4096, vec![a.as_fd()]);
            req.block_size = Some(block_size);
            assert_eq!(req.validate("NBD_CMD_CONNECT").is_ok(), ok, "block size {block_size}");
        }
    }

    #[test]
    fn reconfigure_without_sockets_sends_no_socket_list() {
        let mut req = ReconfigureRequest::new(3, vec![]);
        req.dead_conn_timeout = Some(Duration::from_secs(5));
        assert_eq!(req.to_attrs(), vec![NbdAttr::Index(3), NbdAttr::DeadConnTimeout(5)]);
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(7)), 7);
    }
}

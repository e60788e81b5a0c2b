//! [`NbdNetlink`]: the commands of the generic netlink family `nbd` over a
//! socket the caller owns.
//!
//! neli does the transport: the netlink socket, `nlmsghdr` framing, sequence
//! numbers, acknowledgements and error messages, and resolving the family and
//! multicast group ids through `nlctrl`. The `genlmsghdr` and attributes are
//! encoded by [`GenlMessage`], so every byte the kernel sees is covered by the
//! golden tests of this crate.
//!
//! Every call blocks until the kernel has answered (CONNECT returns once the
//! device is started). From async code, run them with `spawn_blocking`.

use std::io;

use neli::consts::{nl::NlmF, socket::NlFamily};
use neli::err::{RouterError, SocketError};
use neli::nl::NlPayload;
use neli::router::synchronous::NlRouter;
use neli::types::Buffer;
use neli::utils::Groups;

use crate::consts::*;
use crate::error::{libc_errno, Error, Result};
use crate::message::{DeviceStatus, GenlMessage};
use crate::monitor::LinkDeadMonitor;
use crate::nla::DecodeError;
use crate::request::{ConnectRequest, ReconfigureRequest};

/// A handle on the kernel's `nbd` generic netlink family.
///
/// It owns one netlink socket (and neli's receive thread); there is no global
/// state, so several handles may coexist. Commands that change devices need
/// `CAP_SYS_ADMIN`; STATUS and the link-dead subscription do not.
pub struct NbdNetlink {
    router: NlRouter,
    family_id: u16,
    mcast_group: Option<u32>,
}

impl std::fmt::Debug for NbdNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdNetlink")
            .field("family_id", &self.family_id)
            .field("mcast_group", &self.mcast_group)
            .finish_non_exhaustive()
    }
}

impl NbdNetlink {
    /// Opens a generic netlink socket and resolves the family `nbd` and its
    /// multicast group `nbd_mc_group`.
    ///
    /// Fails with [`Error::ModuleNotLoaded`] when the family is not registered
    /// (module not loaded, or a kernel older than 4.12 that only has ioctls).
    pub fn open() -> Result<Self> {
        let (router, _multicast) =
            NlRouter::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| transport("socket", e))?;
        let family_id = router.resolve_genl_family(NBD_GENL_FAMILY_NAME).map_err(resolve_error)?;
        let mcast_group = match router.resolve_nl_mcast_group(NBD_GENL_FAMILY_NAME, NBD_GENL_MCAST_GROUP_NAME) {
            Ok(id) => Some(id),
            // A family without the group: commands work, notifications do not.
            Err(RouterError::Msg(_)) => None,
            Err(other) => return Err(resolve_error(other)),
        };
        Ok(Self { router, family_id, mcast_group })
    }

    /// The family id the kernel assigned to `nbd` (`nlmsghdr.nlmsg_type`).
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// The id of the multicast group `nbd_mc_group`, if the kernel has it.
    pub fn multicast_group(&self) -> Option<u32> {
        self.mcast_group
    }

    /// `NBD_CMD_CONNECT`: configures and starts a device with sockets that
    /// already finished the handshake; returns the device index.
    ///
    /// Returns once the kernel has started the device; the block device may
    /// still show size 0 for a moment (see [`crate::wait_until_ready`]).
    pub fn connect(&self, request: &ConnectRequest<'_>) -> Result<u32> {
        const OP: &str = "NBD_CMD_CONNECT";
        request.validate(OP)?;
        let msg = GenlMessage::new(NBD_CMD_CONNECT, request.to_attrs());
        let replies = self.transact(OP, request.index, &msg).map_err(|e| match e {
            Error::Kernel { errno: libc_errno::EINVAL, .. } => Error::invalid(
                OP,
                "refused by the kernel (index out of range or going down, socket without shutdown support, \
                 or size/block size out of range; see the kernel log)",
            ),
            other => other,
        })?;
        replies
            .iter()
            .find(|reply| reply.cmd == NBD_CMD_CONNECT)
            .and_then(GenlMessage::index)
            .ok_or(Error::Malformed(DecodeError::MissingAttribute("NBD_ATTR_INDEX")))
    }

    /// `NBD_CMD_RECONFIGURE`: hands a running device replacement sockets
    /// (each replaces one dead socket) and/or new settings.
    pub fn reconfigure(&self, request: &ReconfigureRequest<'_>) -> Result<()> {
        const OP: &str = "NBD_CMD_RECONFIGURE";
        request.validate(OP)?;
        let msg = GenlMessage::new(NBD_CMD_RECONFIGURE, request.to_attrs());
        match self.transact(OP, Some(request.index), &msg) {
            Ok(_) => Ok(()),
            // The kernel says EINVAL for a missing device, an unconfigured one
            // and a backend mismatch alike: ask STATUS which one it was.
            Err(Error::Kernel { errno: libc_errno::EINVAL, .. }) => Err(self.diagnose_einval(OP, request.index)),
            Err(other) => Err(other),
        }
    }

    /// `NBD_CMD_DISCONNECT`: sends `NBD_CMD_DISC` to the server on every
    /// socket, fails outstanding requests and drops the configuration.
    ///
    /// The device reports "not connected" once nobody holds `/dev/nbdN` open.
    pub fn disconnect(&self, index: u32) -> Result<()> {
        const OP: &str = "NBD_CMD_DISCONNECT";
        let msg = GenlMessage::new(NBD_CMD_DISCONNECT, vec![crate::attr::NbdAttr::Index(index)]);
        match self.transact(OP, Some(index), &msg) {
            Ok(_) => Ok(()),
            // "couldn't find device at index" or "device at index is going down".
            Err(Error::Kernel { errno: libc_errno::EINVAL, .. }) => {
                Err(Error::NoSuchDevice { operation: OP.to_owned(), index })
            }
            Err(other) => Err(other),
        }
    }

    /// `NBD_CMD_STATUS` of one device or, with `None`, of all devices.
    ///
    /// An index with no device yields an empty list, as the kernel answers.
    pub fn status(&self, index: Option<u32>) -> Result<Vec<DeviceStatus>> {
        const OP: &str = "NBD_CMD_STATUS";
        let msg = GenlMessage::new(NBD_CMD_STATUS, index.map(crate::attr::NbdAttr::Index).into_iter().collect());
        let mut devices = Vec::new();
        for reply in self.transact(OP, index, &msg)? {
            devices.extend(reply.device_statuses()?);
        }
        Ok(devices)
    }

    /// Subscribes to `NBD_CMD_LINK_DEAD` on a new socket of its own; see
    /// [`LinkDeadMonitor`].
    pub fn subscribe_link_dead(&self) -> Result<LinkDeadMonitor> {
        let group = self.mcast_group.ok_or_else(|| {
            Error::Netlink(format!("family {NBD_GENL_FAMILY_NAME} has no multicast group {NBD_GENL_MCAST_GROUP_NAME}"))
        })?;
        LinkDeadMonitor::subscribe(self.family_id, group)
    }

    /// Sends `msg` with `NLM_F_ACK` and collects the replies until the ack.
    fn transact(&self, operation: &str, index: Option<u32>, msg: &GenlMessage) -> Result<Vec<GenlMessage>> {
        let payload = NlPayload::Payload(Buffer::from(msg.to_bytes()));
        let receiver = self
            .router
            .send::<u16, Buffer, u16, Buffer>(self.family_id, NlmF::ACK, payload)
            .map_err(|e| transport(operation, e))?;
        let mut replies = Vec::new();
        for reply in receiver {
            match reply {
                Ok(reply) => {
                    if let Some(payload) = reply.get_payload() {
                        replies.push(GenlMessage::decode(payload.as_ref())?);
                    }
                }
                Err(RouterError::Nlmsgerr(err)) => return Err(Error::from_errno(operation, index, -*err.error())),
                Err(other) => return Err(transport(operation, other)),
            }
        }
        Ok(replies)
    }

    fn diagnose_einval(&self, operation: &str, index: u32) -> Error {
        let operation = operation.to_owned();
        match self.status(Some(index)) {
            Ok(devices) if devices.is_empty() => Error::NoSuchDevice { operation, index },
            Ok(devices) if devices.iter().all(|d| !d.connected) => Error::NotConnected { operation, index },
            _ => Error::InvalidRequest {
                operation,
                reason: format!(
                    "refused by the kernel for /dev/nbd{index}: backend identifier differs from the one given \
                     at connect, device not set up through netlink, or size/block size out of range"
                ),
            },
        }
    }
}

/// A transport failure: keeps the OS error when there is one.
fn transport<T: std::fmt::Debug, P: std::fmt::Debug>(operation: &str, err: RouterError<T, P>) -> Error {
    match err {
        RouterError::Nlmsgerr(e) => Error::from_errno(operation, None, -*e.error()),
        RouterError::Socket(SocketError::Io(io)) => match io.raw_os_error() {
            Some(errno) => Error::from_errno(operation, None, errno),
            None => Error::Io(io::Error::new(io.kind(), io.to_string())),
        },
        RouterError::Io(kind) => Error::Io(io::Error::new(kind, format!("{operation}: netlink I/O failed"))),
        other => Error::Netlink(format!("{operation}: {other}")),
    }
}

/// Resolving the family or group: "not found" means the module is not loaded.
fn resolve_error<T: std::fmt::Debug, P: std::fmt::Debug>(err: RouterError<T, P>) -> Error {
    match err {
        RouterError::Nlmsgerr(e) if -*e.error() == libc_errno::ENOENT => Error::ModuleNotLoaded,
        // neli reports a reply without a family id as a message, not an errno.
        RouterError::Msg(_) => Error::ModuleNotLoaded,
        other => transport("CTRL_CMD_GETFAMILY", other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_can_move_into_spawn_blocking() {
        send_and_sync::<NbdNetlink>();
        send_and_sync::<LinkDeadMonitor>();
        send::<crate::IoctlConnection>();
    }
}

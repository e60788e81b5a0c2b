//! [`LinkDeadMonitor`]: the `NBD_CMD_LINK_DEAD` notifications of the
//! multicast group `nbd_mc_group`.
//!
//! The kernel multicasts `NBD_CMD_LINK_DEAD` with the device's
//! `NBD_ATTR_INDEX` when a socket of a device dies (the server closed it, a
//! send or receive failed, or a request timed out on a multi-socket device),
//! unless a disconnect was requested. The device keeps its configuration:
//! with a dead-connection timeout, requests wait that long for
//! `NBD_CMD_RECONFIGURE` to bring a new socket.
//!
//! # Use from tokio
//!
//! The monitor is a blocking reader with an optional timeout
//! ([`LinkDeadMonitor::next_event`]). Either move it into
//! `tokio::task::spawn_blocking` and loop there, or register its descriptor
//! with `tokio::io::unix::AsyncFd` and call the non-blocking
//! [`LinkDeadMonitor::try_next_event`] whenever it is readable:
//!
//! ```ignore
//! let mut fd = AsyncFd::with_interest(monitor, Interest::READABLE)?;
//! loop {
//!     let mut ready = fd.readable_mut().await?;
//!     match ready.get_inner_mut().try_next_event()? {
//!         Some(index) => reconnect(index).await,
//!         None => ready.clear_ready(),
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use neli::consts::socket::NlFamily;
use neli::err::SocketError;
use neli::socket::synchronous::NlSocketHandle;
use neli::types::Buffer;
use neli::utils::Groups;

use crate::consts::NBD_CMD_LINK_DEAD;
use crate::error::{Error, Result};
use crate::message::GenlMessage;

/// A subscription to `NBD_CMD_LINK_DEAD`; yields device indices.
///
/// Events that arrive while nobody reads are queued by the kernel in the
/// socket's receive buffer; if it overflows, reading fails with `ENOBUFS`
/// ([`Error::Io`]) and the caller should check every device with STATUS.
pub struct LinkDeadMonitor {
    socket: NlSocketHandle,
    family_id: u16,
    pending: VecDeque<u32>,
}

impl std::fmt::Debug for LinkDeadMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkDeadMonitor")
            .field("fd", &self.socket.as_raw_fd())
            .field("family_id", &self.family_id)
            .field("pending", &self.pending)
            .finish()
    }
}

impl LinkDeadMonitor {
    /// Opens a netlink socket and joins multicast group `group` of family `family_id`.
    pub(crate) fn subscribe(family_id: u16, group: u32) -> Result<Self> {
        let socket = NlSocketHandle::connect(NlFamily::Generic, None, Groups::empty()).map_err(socket_error)?;
        socket.add_mcast_membership(Groups::new_groups(&[group])).map_err(socket_error)?;
        Ok(Self { socket, family_id, pending: VecDeque::new() })
    }

    /// Waits for the next link-dead event and returns the device index;
    /// `Ok(None)` when `timeout` (if any) passed without one.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<u32>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(index) = self.pending.pop_front() {
                return Ok(Some(index));
            }
            let wait = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            if self.poll_readable(wait)? {
                self.receive()?;
            } else if wait.is_some_and(|w| w.is_zero()) {
                return Ok(None);
            }
        }
    }

    /// Returns a queued or already received event without blocking.
    pub fn try_next_event(&mut self) -> Result<Option<u32>> {
        self.next_event(Some(Duration::ZERO))
    }

    /// Waits up to `wait` (forever for `None`) for the socket to be readable.
    /// `false` on timeout or interruption by a signal.
    fn poll_readable(&self, wait: Option<Duration>) -> Result<bool> {
        let timeout_ms = match wait {
            None => -1,
            // Round up: a remaining 0.3 ms must not become a busy 0 ms poll.
            Some(w) => i32::try_from(w.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let mut pfd = libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is one valid, initialised pollfd that outlives the call,
        // and nfds is 1; poll only writes its `revents`.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(err.into()) };
        }
        Ok(ready > 0)
    }

    /// Reads one datagram and queues the link-dead events in it.
    fn receive(&mut self) -> Result<()> {
        let (messages, _groups) = self.socket.recv::<u16, Buffer>().map_err(socket_error)?;
        for message in messages {
            let message = message.map_err(socket_error)?;
            if *message.nl_type() != self.family_id {
                continue;
            }
            let Some(payload) = message.get_payload() else { continue };
            let event = GenlMessage::decode(payload.as_ref())?;
            if event.cmd == NBD_CMD_LINK_DEAD {
                self.pending.extend(event.index());
            }
        }
        Ok(())
    }
}

impl Iterator for LinkDeadMonitor {
    type Item = Result<u32>;

    /// Blocks until the next event; never ends by itself.
    fn next(&mut self) -> Option<Result<u32>> {
        self.next_event(None).transpose()
    }
}

impl AsFd for LinkDeadMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `self.socket`, which lives as long
        // as the returned borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) }
    }
}

impl AsRawFd for LinkDeadMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

fn socket_error(err: SocketError) -> Error {
    match err {
        SocketError::Io(io) => match io.raw_os_error() {
            Some(errno) => Error::Io(io::Error::from_raw_os_error(errno)),
            None => Error::Io(io::Error::new(io.kind(), io.to_string())),
        },
        other => Error::Netlink(format!("link-dead subscription: {other}")),
    }
}

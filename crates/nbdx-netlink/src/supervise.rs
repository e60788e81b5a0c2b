//! [`Supervisor`]: keeps a netlink-attached device alive across server
//! restarts.
//!
//! ```text
//!  server dies ─► kernel: socket dead, NBD_CMD_LINK_DEAD(index) ─► Supervisor
//!                 requests wait (dead-connection timeout)            │ reconnect(n) until the server is back
//!  kernel: the new sockets replace the dead ones ◄─ RECONFIGURE ◄────┘ (backoff 100 ms .. 5 s)
//! ```
//!
//! The kernel sends one `NBD_CMD_LINK_DEAD` per socket that dies, so the
//! supervisor counts the events of its device and asks for that many new
//! connections (at most the device's connection count). A replacement
//! offered while no socket is dead is dropped by the kernel, so a stale
//! count costs a handshake, nothing more. The supervisor returns when the
//! device is no longer attached (checked at least every `poll` interval),
//! typically after a DISCONNECT by `nbdx detach`.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::monitor::LinkDeadMonitor;
use crate::netlink::NbdNetlink;
use crate::request::ReconfigureRequest;

/// First delay between reconnect attempts; it doubles up to [`Supervisor::max_retry`].
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Watches one device and hands it new sockets when its links die.
#[derive(Debug)]
pub struct Supervisor<'a> {
    netlink: &'a NbdNetlink,
    monitor: LinkDeadMonitor,
    index: u32,
    connections: usize,
    backend: Option<String>,
    /// How often the supervisor checks that the device is still attached.
    pub poll: Duration,
    /// Longest delay between two reconnect attempts.
    pub max_retry: Duration,
}

impl<'a> Supervisor<'a> {
    /// Supervises device `index`, which has `connections` sockets and was
    /// connected with the backend identifier `backend`. Subscribe `monitor`
    /// before CONNECT, so that no event is missed.
    pub fn new(
        netlink: &'a NbdNetlink,
        monitor: LinkDeadMonitor,
        index: u32,
        connections: usize,
        backend: Option<String>,
    ) -> Self {
        Self {
            netlink,
            monitor,
            index,
            connections: connections.max(1),
            backend,
            poll: Duration::from_secs(1),
            max_retry: Duration::from_secs(5),
        }
    }

    /// Runs until `attached` says the device is gone. `reconnect(n)` opens
    /// and negotiates `n` new connections to the server.
    pub fn run(
        &mut self,
        mut reconnect: impl FnMut(usize) -> Result<Vec<OwnedFd>>,
        mut attached: impl FnMut() -> bool,
    ) -> Result<()> {
        let mut dead = 0;
        let mut retry = FIRST_RETRY;
        loop {
            if !attached() {
                return Ok(());
            }
            if dead == 0 {
                dead = self.dead_links(self.poll)?;
                if dead > 0 {
                    tracing::warn!(index = self.index, dead, "connection to the server lost; reconnecting");
                }
                continue;
            }
            match reconnect(dead) {
                Ok(sockets) => match self.hand_over(&sockets) {
                    Ok(()) => {
                        tracing::warn!(index = self.index, sockets = sockets.len(), "reconnected to the server");
                        dead = 0;
                        retry = FIRST_RETRY;
                        continue;
                    }
                    Err(Error::NotConnected { .. } | Error::NoSuchDevice { .. }) => return Ok(()),
                    Err(err) => tracing::warn!(index = self.index, %err, "handing new sockets to the kernel failed"),
                },
                Err(err) => tracing::info!(index = self.index, %err, ?retry, "server not reachable yet"),
            }
            // The wait between attempts also collects further deaths.
            dead = (dead + self.dead_links(retry)?).min(self.connections);
            retry = (retry * 2).min(self.max_retry);
        }
    }

    /// Waits up to `wait` for link-dead events and returns how many sockets
    /// of this device died (all of them when events were lost).
    fn dead_links(&mut self, wait: Duration) -> Result<usize> {
        let mut dead = 0;
        let mut next = self.monitor.next_event(Some(wait));
        loop {
            match next {
                Ok(Some(index)) if index == self.index => dead += 1,
                Ok(Some(_)) => {}
                Ok(None) => return Ok(dead.min(self.connections)),
                // The receive buffer overflowed: events were lost.
                Err(Error::Io(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(index = self.index, "link-dead events were lost; reconnecting every socket");
                    dead = self.connections;
                }
                Err(err) => return Err(err),
            }
            next = self.monitor.try_next_event();
        }
    }

    fn hand_over(&self, sockets: &[OwnedFd]) -> Result<()> {
        let mut request = ReconfigureRequest::new(self.index, sockets.iter().map(AsFd::as_fd).collect());
        request.backend = self.backend.clone();
        self.netlink.reconfigure(&request)
    }
}

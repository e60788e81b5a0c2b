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

/// What the supervisor knows: sockets to replace, and the next delay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    dead: usize,
    retry: Duration,
    connections: usize,
    max_retry: Duration,
}

impl Plan {
    fn new(connections: usize, max_retry: Duration) -> Self {
        Self { dead: 0, retry: FIRST_RETRY, connections, max_retry }
    }

    /// One `NBD_CMD_LINK_DEAD`: one more socket to replace (at most all).
    fn link_died(&mut self) {
        self.dead = (self.dead + 1).min(self.connections);
    }

    /// Events were lost: replace every socket (extras are dropped by the kernel).
    fn events_lost(&mut self) {
        self.dead = self.connections;
    }

    /// The kernel took the new sockets.
    fn reconnected(&mut self) {
        self.dead = 0;
        self.retry = FIRST_RETRY;
    }

    /// An attempt failed: returns how long to wait before the next one.
    fn failed(&mut self) -> Duration {
        let wait = self.retry;
        self.retry = (self.retry * 2).min(self.max_retry);
        wait
    }
}

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
        let mut plan = Plan::new(self.connections, self.max_retry);
        loop {
            if !attached() {
                return Ok(());
            }
            if plan.dead == 0 {
                self.collect(&mut plan, self.poll)?;
                if plan.dead > 0 {
                    tracing::warn!(index = self.index, dead = plan.dead, "connection to the server lost; reconnecting");
                }
                continue;
            }
            match reconnect(plan.dead) {
                Ok(sockets) => match self.hand_over(&sockets) {
                    Ok(()) => {
                        tracing::warn!(index = self.index, sockets = sockets.len(), "reconnected to the server");
                        plan.reconnected();
                        continue;
                    }
                    Err(Error::NotConnected { .. } | Error::NoSuchDevice { .. }) => return Ok(()),
                    Err(err) => tracing::warn!(index = self.index, %err, "handing new sockets to the kernel failed"),
                },
                Err(err) => tracing::info!(index = self.index, %err, retry = ?plan.retry, "server not reachable yet"),
            }
            // The wait between attempts also collects further deaths.
            let wait = plan.failed();
            self.collect(&mut plan, wait)?;
        }
    }

    /// Waits up to `wait` for link-dead events and counts those of this
    /// device into `plan`.
    fn collect(&mut self, plan: &mut Plan, wait: Duration) -> Result<()> {
        let mut next = self.monitor.next_event(Some(wait));
        loop {
            match next {
                Ok(Some(index)) if index == self.index => plan.link_died(),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                // The receive buffer overflowed: events were lost.
                Err(Error::Io(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!(index = self.index, "link-dead events were lost; reconnecting every socket");
                    plan.events_lost();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dead_link_asks_for_one_socket_up_to_the_connection_count() {
        let mut plan = Plan::new(2, Duration::from_secs(5));
        plan.link_died();
        assert_eq!(plan.dead, 1);
        plan.link_died();
        plan.link_died();
        assert_eq!(plan.dead, 2, "never more sockets than the device has");
        plan.reconnected();
        assert_eq!(plan.dead, 0);
    }

    #[test]
    fn lost_events_ask_for_every_socket() {
        let mut plan = Plan::new(4, Duration::from_secs(5));
        plan.link_died();
        plan.events_lost();
        assert_eq!(plan.dead, 4);
    }

    #[test]
    fn retries_back_off_to_the_maximum_and_restart_after_a_reconnect() {
        let mut plan = Plan::new(1, Duration::from_millis(500));
        let waits: Vec<_> = (0..5).map(|_| plan.failed().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        plan.reconnected();
        assert_eq!(plan.failed(), FIRST_RETRY);
    }
}

//! Linux kernel hook-up for NBD: hand negotiated connections to the kernel's
//! NBD driver so that an export appears as `/dev/nbdN`.
//!
//! # The hand-off
//!
//! On Linux the NBD *handshake* runs in userspace and the *transmission*
//! phase in the kernel. A client connects, negotiates (`NBD_OPT_GO`: size,
//! transmission flags, block sizes) and then gives the connected sockets to
//! the driver, which from then on sends `NBD_CMD_READ`/`WRITE`/`FLUSH`/... on
//! them by itself:
//!
//! ```text
//!  userspace                                   kernel (nbd.ko)
//!  ─────────                                   ───────────────
//!  connect, handshake (nbdx-proto)
//!  NbdNetlink::connect ── NBD_CMD_CONNECT ───► takes a reference to each socket,
//!    size, flags, sockets                      starts /dev/nbdN, replies NBD_ATTR_INDEX
//!  wait_until_ready ◄── /sys/block/nbdN/size ─ capacity set
//!                                              ... block I/O ⇄ server ...
//!  LinkDeadMonitor ◄── NBD_CMD_LINK_DEAD ───── a socket died (server gone)
//!  reconnect, handshake
//!  NbdNetlink::reconfigure ─ RECONFIGURE ────► new socket replaces the dead one
//!  NbdNetlink::disconnect ── DISCONNECT ─────► NBD_CMD_DISC to the server, teardown
//!  NbdNetlink::status ────── STATUS ─────────► NBD_ATTR_DEVICE_LIST
//! ```
//!
//! The generic netlink family `nbd` (Linux 4.12+) is the interface; the
//! older ioctls of `/dev/nbdN` ([`connect_ioctl`], [`IoctlDevice`]) remain as
//! a fallback where the family is missing. They need a thread blocked in
//! `NBD_DO_IT` for the lifetime of the device and cannot reconnect.
//!
//! # Layers
//!
//! * [`consts`]: kernel names and numbers (`NBD_ATTR_*`, `NBD_CMD_*`, ioctls).
//! * [`nla`], [`attr`], [`message`]: the sans-IO codec: one attribute enum
//!   per nesting level, unknown attributes kept, golden-byte tests.
//! * `NbdNetlink` (Linux): commands over a netlink socket the caller owns
//!   (transport by neli); `LinkDeadMonitor` for the multicast events.
//! * `ioctl` and `sysfs` (Linux): the fallback, device names, readiness.
//! * [`configure`] (Linux): a negotiated connection (`nbdx::client::Handover`)
//!   becomes `/dev/nbdN`, with size, flags and block sizes from the handshake;
//!   [`Driver`] picks netlink or the ioctls.
//! * [`loopback`] (Linux): an in-process `nbdx` device served over
//!   socketpairs and attached; detached when dropped.
//! * [`Supervisor`] (Linux): reconnects a device whose server went away and
//!   hands the kernel the new sockets (RECONFIGURE).
//!
//! Everything that touches the OS is compiled on Linux only; the codec and
//! the error type build everywhere.

#![deny(missing_docs)]

pub mod attr;
pub mod consts;
mod error;
pub mod message;
pub mod nla;

#[cfg(target_os = "linux")]
mod configure;
#[cfg(target_os = "linux")]
mod ioctl;
#[cfg(target_os = "linux")]
mod loopback;
#[cfg(target_os = "linux")]
mod monitor;
#[cfg(target_os = "linux")]
mod netlink;
#[cfg(target_os = "linux")]
mod request;
#[cfg(target_os = "linux")]
mod supervise;
#[cfg(target_os = "linux")]
mod sysfs;

pub use error::{Error, Result};
pub use message::{DeviceStatus, GenlMessage};
pub use nla::DecodeError;

#[cfg(target_os = "linux")]
pub use configure::{
    configure, configure_ioctl, configure_with, connect_request, driver_loaded, kernel_block_size, page_size,
    Attachment, ConfigureOptions, Driver, Interface, DEFAULT_READY_TIMEOUT,
};
#[cfg(target_os = "linux")]
pub use ioctl::{connect_ioctl, disconnect_ioctl, IoctlConnection, IoctlDevice};
#[cfg(target_os = "linux")]
pub use loopback::{loopback, Loopback, LoopbackOptions};
#[cfg(target_os = "linux")]
pub use monitor::LinkDeadMonitor;
#[cfg(target_os = "linux")]
pub use netlink::NbdNetlink;
#[cfg(target_os = "linux")]
pub use request::{ClientFlags, ConnectRequest, ReconfigureRequest};
#[cfg(target_os = "linux")]
pub use supervise::Supervisor;
#[cfg(target_os = "linux")]
pub use sysfs::{
    backend, device_path, limit_request_size, list_devices, parse_device, pid, read_only, size_bytes, wait_until_ready,
    wait_until_stopped,
};

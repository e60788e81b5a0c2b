//! nbdx: serve block devices over the Network Block Device protocol, talk to
//! any NBD server, and (with `nbdx-netlink`) attach exports to the Linux
//! kernel.
//!
//! The protocol logic lives in the sans-IO crate [`nbdx_proto`]; this crate
//! drives it with tokio and provides the [`Device`](device::Device)
//! abstraction and its implementations.

#![deny(missing_docs)]

pub mod device;
mod export;
pub mod layer;

pub use export::Export;
pub use nbdx_proto as proto;
pub mod server;

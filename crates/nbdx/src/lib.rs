//! nbdx: serve block devices over the Network Block Device protocol, talk to
//! any NBD server, and (with `nbdx-netlink`) attach exports to the Linux
//! kernel.
//!
//! The protocol logic lives in the sans-IO crate [`nbdx_proto`]; this crate
//! drives it with tokio and provides the [`Device`](device::Device)
//! abstraction and its implementations.

#![deny(missing_docs)]

pub mod client;
pub mod copy;
pub mod device;
mod export;
pub mod layer;
pub mod server;
pub mod source;
pub mod uri;

pub use device::{FileDevice, MemoryDevice, NullDevice};
pub use export::Export;
pub use nbdx_proto as proto;
pub use source::Source;

//! nbdx: serve block devices over the Network Block Device protocol, talk to
//! any NBD server, and (with `nbdx-netlink`) attach exports to the Linux
//! kernel.
//!
//! The protocol logic lives in the sans-IO crate [`nbdx_proto`] (re-exported
//! as [`proto`]); this crate drives it with tokio and provides the
//! [`Device`](device::Device) abstraction, its implementations and layers.
//!
//! # Serving a device
//!
//! Anything that implements [`Device`](device::Device) (size, capabilities,
//! `read`; writes, flush, trim, zeroes, block status are optional) can be
//! served. Capabilities say what the server advertises; it emulates what a
//! device supports only at [`Support::Emulate`](device::Support::Emulate).
//!
//! ```no_run
//! use nbdx::device::{Caps, Device, DeviceResult};
//! use nbdx::{async_trait, server::Server, Export};
//!
//! struct Ones(u64);
//!
//! #[async_trait]
//! impl Device for Ones {
//!     fn size(&self) -> u64 { self.0 }
//!     fn caps(&self) -> Caps { Caps { read_only: true, ..Caps::default() } }
//!     async fn read(&self, _offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
//!         buf.fill(0xff);
//!         Ok(())
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::new(vec![Export::new("ones", Ones(1 << 30))])?;
//! let listener = tokio::net::UnixListener::bind("/tmp/ones.sock")?;
//! server.serve(listener).await?; // until server.shutdown()
//! # Ok(()) }
//! ```
//!
//! [`Server::serve_connection`](server::Server::serve_connection) serves
//! one already connected stream instead (a socketpair, stdin/stdout, a TLS
//! stream); the examples in `crates/nbdx/examples/` serve a computed device
//! (`custom_device`) and proxy a remote export behind a copy-on-write
//! layer (`proxy`).
//!
//! # The life of a connection
//!
//! ```text
//!  Listener::{Tcp,Unix} ──accept──► conn span {id, peer}
//!        │                      (or serve_connection(stream))
//!        ▼
//!  handshake (nbdx_proto::server::ServerHandshake, within handshake_timeout)
//!    greeting ─► options: LIST, INFO, GO, STRUCTURED_REPLY, EXTENDED_HEADERS,
//!    │           SET/LIST_META_CONTEXT, STARTTLS (TlsAccept upgrades the stream)
//!    ├─ ABORT / EOF ───────────────────────────────────────────────► closed
//!    ▼ GO or EXPORT_NAME: export span {name}, "export opened" (negotiated options)
//!  transmission
//!    reader ─ classify ─► Device call (task per request, or inline when
//!    │                    Caps::immediate) ─► reply ─► writer (batched, vectored)
//!    ├─ NBD_CMD_DISC / EOF ─► finish in-flight, flush ─────────────► closed
//!    └─ Server::shutdown ─► lame duck: NBD_ESHUTDOWN for new requests,
//!                           in-flight finish within grace_period ──► closed
//! ```
//!
//! Requests are logged at `debug` level (`tracing`), connections and the
//! negotiated options at `info`; with no subscriber enabled for them they
//! cost one cached level check each.
//!
//! # Modules
//!
//! * [`device`]: the `Device` trait, [`MemoryDevice`], [`FileDevice`],
//!   [`NullDevice`], the capability model.
//! * [`layer`]: wrapper devices (copy-on-write, delay, error injection,
//!   request log, readahead) and the `--layer` spellings.
//! * [`server`]: the concurrent tokio server, its options and shutdown.
//! * [`client`]: the client (multi-conn, a remote export as a `Device`,
//!   a blocking front-end, the hand-over to the kernel).
//! * [`source`]: the SOURCE syntax of the command line; [`uri`]: NBD URIs.

#![deny(missing_docs)]

pub mod client;
pub mod copy;
pub mod device;
mod export;
pub mod layer;
pub mod server;
pub mod source;
pub mod tls;
pub mod uri;

/// The attribute [`Device`](device::Device) implementations use, re-exported
/// so that they need no dependency of their own on `async-trait`.
pub use async_trait::async_trait;
pub use device::{FileDevice, MemoryDevice, NullDevice};
pub use export::Export;
pub use nbdx_proto as proto;
pub use source::Source;

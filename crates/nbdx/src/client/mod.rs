//! The NBD client: negotiation, transmission, multi-conn, a [`Device`]
//! adapter, a blocking front-end and the kernel hand-over, all driving the
//! sans-IO core in [`nbdx_proto::client`].
//!
//! ```text
//!  Target ──connect──► Negotiation ──go──► Client ─┬─ read/write/flush/trim/
//!  (uri::NbdUri)        │ list_exports          │   │  write_zeroes/cache/
//!                       │ info                  │   │  block_status/extents
//!                       │ list_meta_contexts    │   └─ disconnect
//!                       └ abort                 │
//!  MultiConn::connect ── N × (Negotiation ─► go) ┘   RemoteDevice(Client): Device
//!  connect_for_handover ── Negotiation (kernel subset) ─► Handover { socket, export }
//!  blocking::Client ── the same calls, each on the client's own runtime
//! ```
//!
//! Per connection, callers write their requests under a lock and a reader
//! task completes them from a cookie table, so any number of requests can
//! be in flight and replies may come in any order. Errors say whose fault
//! they are ([`ClientError`]); a server that breaks the protocol, stalls
//! past the timeout or goes away fails every waiting request.
//!
//! [`Device`]: crate::device::Device

mod api;
pub mod blocking;
mod conn;
mod device;
mod error;
mod info;
mod multi;
mod negotiate;
mod oneshot;
mod options;
mod reader;
mod rules;
mod target;

pub use api::{Client, READ_WINDOW_BYTES, WINDOW};
pub use device::RemoteDevice;
pub use error::{ClientError, ClientResult};
pub use info::{ExportEntry, ExportInfo};
pub use multi::MultiConn;
pub(crate) use negotiate::check_tls;
pub use negotiate::Negotiation;
pub use oneshot::{connect_for_handover, handover_over, info, list_exports, list_meta_contexts, Handover};
pub use options::{ClientOptions, TlsMode, TlsUpgrade, UpgradeFuture, DEFAULT_REQUEST_TIMEOUT, DEFAULT_TIMEOUT};
pub use target::{AsyncStream, Socket, Stream, Target};

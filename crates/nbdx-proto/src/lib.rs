//! Sans-IO core of the Network Block Device protocol.
//!
//! This crate does no I/O, has no async runtime and no clock. It turns bytes
//! into typed messages and decisions, and decisions into bytes; drivers (the
//! tokio server and client in the `nbdx` crate, the fuzz targets, the tests)
//! move the bytes. The protocol is `proto.md` of the NBD project, with the
//! `EXTENDED_HEADERS` extension; doc comments quote it by name.
//!
//! ```text
//!              server                                   client
//!   ┌────────────────────────────┐            ┌─────────────────────────────┐
//!   │ ServerHandshake::new       │──greeting─►│ ClientHandshake             │
//!   │   (NBDMAGIC IHAVEOPT flags)│◄─c. flags──│   .receive_greeting         │
//!   │                            │            │ Negotiating                 │
//!   │ handle_input ◄─── options ─┼────────────┼── send(OptRequest)          │
//!   │   NeedInput ── replies ────┼───────────►│ PendingOption.handle_reply  │
//!   │   StartTls ──► TlsUpgrade  │   (TLS)    │   StartTls ──► TlsPending   │
//!   │     .established (fresh)   │            │     .established (fresh)    │
//!   │   Abort                    │            │ Negotiating.abort           │
//!   │   Transmission(Negotiated) │◄── GO ─────┤   Connected                 │
//!   └────────────┬───────────────┘            └──────────────┬──────────────┘
//!                ▼  transmission                              ▼
//!   TransmissionContext::classify(RequestHeader)   RequestHeader::encode
//!     → Incoming { payload action, Command | Errno }  PendingReply per cookie
//!   encode_ok / encode_error / encode_read_header     ReplyHeader::decode
//!   encode_block_status (normalized extents)          chunk_payload / data /
//!                                                     payload / finish
//! ```
//!
//! Layers: [`consts`] and [`flags`] (wire numbers) → [`codec`] (messages) →
//! [`server`] / [`client`] (state machines and validation). Errors are split
//! by fault: [`ProtocolError`] ends a connection, [`Errno`] fails one request.
//! Every peer-supplied length is checked against [`limits`] before anything
//! is allocated for it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod codec;
pub mod consts;
pub mod error;
pub mod flags;
pub mod limits;
pub mod server;

pub use codec::handshake::{InfoRequest, MetaContextRequest, OptRequest};
pub use codec::option_reply::{BlockSize, Info, OptReply, OptReplyHeader};
pub use codec::reply::{ChunkHeader, ChunkPayload, Extent, ReplyHeader, ReplyMode};
pub use codec::request::{HeaderMode, RequestHeader};
pub use consts::{Cmd, Errno, InfoType, OptType, RepType, ReplyType};
pub use error::{DecodeError, ProtocolError};
pub use flags::{AllocationFlags, ClientFlags, CmdFlags, HandshakeFlags, ReplyFlags, TransmissionFlags};
pub use limits::Limits;

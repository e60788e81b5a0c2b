//! Client side: the handshake state machine and reply tracking for the
//! transmission phase.
//!
//! ```text
//! ClientHandshake ──receive_greeting──► Negotiating ──send(opt)──► PendingOption
//!                                        ▲    │                       │ handle_reply
//!                                        │    │ export_name           ├──► More(PendingOption)
//!                                        │    ▼                       ├──► Done(Negotiating, OptionResult)
//!                                        │  PendingExportName         ├──► StartTls(TlsPending) ─established─┐
//!                                        │    │                       └──► Connected ◄── (GO acked)       │
//!                                        │    └──────────────────────────► Connected                      │
//!                                        └─────────────── fresh state, TLS on ◄───────────────────────────┘
//! ```
//!
//! Only `Negotiating` can send options and only `Connected` describes a
//! transmission phase, so an option after `NBD_OPT_GO` or I/O before it
//! cannot be expressed.

mod negotiate;
mod transmission;

pub use negotiate::{
    ClientHandshake, Connected, Negotiating, OptionProgress, OptionResult, PendingExportName, PendingOption, TlsPending,
};
pub use transmission::{ChunkOutcome, PendingReply, ReplyError};

#[cfg(test)]
mod tests;

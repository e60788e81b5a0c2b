//! The server's handshake state machine: framing of client flags and options,
//! limits, and the hand-off to TLS or transmission.
//!
//! The machine is consumed by value at each step, so a finished or upgrading
//! handshake cannot be fed more input by mistake:
//!
//! ```text
//! ServerHandshake::new ──► handle_input ──► NeedInput(ServerHandshake) ──┐
//!        ▲                      │  ▲                                     │
//!        │                      │  └─────────────────────────────────────┘
//!        │                      ├──► StartTls(TlsUpgrade) ── established() ─┐
//!        │                      ├──► Transmission(Negotiated)               │
//!        │                      ├──► Abort(bytes)                           │
//!        │                      └──► Err(HandshakeFailure)                  │
//!        └──────────────── fresh state, TLS on ◄────────────────────────────┘
//! ```

use bytes::{Buf, Bytes, BytesMut};

use super::options::Outcome;
use super::{HandshakeFailure, MetaContext, Negotiated, SharedConfig};
use crate::codec::handshake::{decode_client_flags, Greeting, OptionHeader};
use crate::codec::option_reply::OptReply;
use crate::consts::{OptType, RepType};
use crate::error::ProtocolError;
use crate::flags::{ClientFlags, HandshakeFlags};

/// Where the framing of client input stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionPayload(OptionHeader),
    Discard { opt: OptType, remaining: u32 },
}

/// Negotiated state that `NBD_OPT_STARTTLS` forgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Negotiation {
    pub structured: bool,
    pub extended: bool,
    /// Export index and contexts from the last `NBD_OPT_SET_META_CONTEXT`.
    pub meta: Option<(usize, Vec<MetaContext>)>,
}

/// Server side of the handshake. Feed it client bytes with
/// [`handle_input`](Self::handle_input) and send what
/// [`take_output`](Self::take_output) returns, in that order, until a
/// terminal [`ServerStep`].
#[derive(Debug)]
pub struct ServerHandshake {
    pub(super) config: SharedConfig,
    pub(super) tls: bool,
    pub(super) fixed: bool,
    pub(super) no_zeroes: bool,
    pub(super) neg: Negotiation,
    pub(super) out: BytesMut,
    pub(super) shutting_down: bool,
    phase: Phase,
    options: u32,
    failed_in_row: u32,
}

/// Result of feeding input to the handshake.
#[derive(Debug)]
#[must_use]
pub enum ServerStep {
    /// Send [`ServerHandshake::take_output`], then read more input.
    NeedInput(ServerHandshake),
    /// `NBD_OPT_STARTTLS` was acknowledged: send the output, run the TLS
    /// handshake, then continue with [`TlsUpgrade::established`].
    StartTls(TlsUpgrade),
    /// Negotiation is over: send [`Negotiated::output`], open the chosen
    /// export and enter transmission.
    Transmission(Negotiated),
    /// The client sent `NBD_OPT_ABORT`: send these bytes (the ack), then close.
    Abort(Bytes),
}

impl ServerHandshake {
    /// Starts a handshake; the greeting is queued as output.
    pub fn new(config: SharedConfig) -> Self {
        let mut out = BytesMut::with_capacity(64);
        Greeting { flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES }.encode(&mut out);
        Self {
            config,
            tls: false,
            fixed: false,
            no_zeroes: false,
            neg: Negotiation::default(),
            out,
            shutting_down: false,
            phase: Phase::ClientFlags,
            options: 0,
            failed_in_row: 0,
        }
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// Whether TLS has been established on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Enters lame-duck mode: later options (other than `NBD_OPT_ABORT`)
    /// get `NBD_REP_ERR_SHUTDOWN`.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    /// Number of bytes the machine needs before it can make progress.
    pub fn wants(&self) -> usize {
        match self.phase {
            Phase::ClientFlags => 4,
            Phase::OptionHeader => OptionHeader::LEN,
            Phase::OptionPayload(h) => h.len as usize,
            Phase::Discard { remaining, .. } => remaining.min(64 * 1024) as usize,
        }
    }

    /// Consumes as many complete messages from `input` as it holds. Bytes
    /// after a final message stay in `input` (they belong to transmission).
    pub fn handle_input(mut self, input: &mut BytesMut) -> Result<ServerStep, HandshakeFailure> {
        loop {
            match self.phase {
                Phase::ClientFlags => {
                    if input.len() < 4 {
                        return Ok(ServerStep::NeedInput(self));
                    }
                    let flags = decode_client_flags(&input.split_to(4)).map_err(|e| self.fail(e.into()))?;
                    // "the server MUST drop the TCP connection if the client
                    // sets an unknown flag, or a flag that does not match
                    // something advertised by the server"
                    if !ClientFlags::all().contains(flags) {
                        return Err(self.fail(ProtocolError::BadClientFlags(flags.bits())));
                    }
                    self.fixed = flags.contains(ClientFlags::FIXED_NEWSTYLE);
                    self.no_zeroes = flags.contains(ClientFlags::NO_ZEROES);
                    self.phase = Phase::OptionHeader;
                }
                Phase::OptionHeader => {
                    if input.len() < OptionHeader::LEN {
                        return Ok(ServerStep::NeedInput(self));
                    }
                    let header = OptionHeader::decode(&input.split_to(OptionHeader::LEN)).map_err(|e| self.fail(e))?;
                    self.options += 1;
                    if self.options > self.config.limits.max_options {
                        return Err(self.fail(ProtocolError::TooManyOptions("per-handshake limit reached")));
                    }
                    self.phase = if header.len <= self.config.limits.max_option_len {
                        Phase::OptionPayload(header)
                    } else if header.len <= self.config.limits.max_option_discard && header.opt != OptType::EXPORT_NAME
                    {
                        Phase::Discard { opt: header.opt, remaining: header.len }
                    } else {
                        return Err(self.fail(ProtocolError::OptionTooLong { opt: header.opt, len: header.len }));
                    };
                }
                Phase::Discard { opt, remaining } => {
                    let n = input.len().min(remaining as usize);
                    input.advance(n);
                    let remaining = remaining - n as u32;
                    if remaining > 0 {
                        self.phase = Phase::Discard { opt, remaining };
                        return Ok(ServerStep::NeedInput(self));
                    }
                    self.phase = Phase::OptionHeader;
                    self.reply_error(opt, RepType::ERR_TOO_BIG, "option is too large");
                    self.count_failure()?;
                }
                Phase::OptionPayload(header) => {
                    if input.len() < header.len as usize {
                        return Ok(ServerStep::NeedInput(self));
                    }
                    let payload = input.split_to(header.len as usize);
                    self.phase = Phase::OptionHeader;
                    match self.process(header.opt, &payload, input) {
                        Outcome::Success => self.failed_in_row = 0,
                        Outcome::Failure => self.count_failure()?,
                        Outcome::Fatal(e) => return Err(self.fail(e)),
                        Outcome::Abort => return Ok(ServerStep::Abort(self.take_output())),
                        Outcome::StartTls => return Ok(ServerStep::StartTls(TlsUpgrade { hs: self })),
                        Outcome::Transmission(mut negotiated) => {
                            negotiated.output = self.take_output();
                            return Ok(ServerStep::Transmission(negotiated));
                        }
                    }
                }
            }
        }
    }

    fn count_failure(&mut self) -> Result<(), HandshakeFailure> {
        self.failed_in_row += 1;
        if self.failed_in_row > self.config.limits.max_failed_options_in_row {
            return Err(self.fail(ProtocolError::TooManyOptions("too many failed options in a row")));
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, error: ProtocolError) -> HandshakeFailure {
        HandshakeFailure { error, output: self.take_output() }
    }

    pub(super) fn reply(&mut self, opt: OptType, reply: OptReply) {
        reply.encode(opt, &mut self.out);
    }

    pub(super) fn reply_error(&mut self, opt: OptType, rep: RepType, message: &str) {
        self.reply(opt, OptReply::Error { rep, message: message.to_owned() });
    }
}

/// A handshake waiting for the TLS handshake after `NBD_OPT_STARTTLS`.
#[derive(Debug)]
#[must_use]
pub struct TlsUpgrade {
    hs: ServerHandshake,
}

impl TlsUpgrade {
    /// The `NBD_REP_ACK` to send in plaintext before the TLS handshake.
    pub fn take_output(&mut self) -> Bytes {
        self.hs.take_output()
    }

    /// TLS is up: negotiation starts afresh ("the server MUST NOT preserve
    /// any negotiation state ... issued before this command").
    pub fn established(self) -> ServerHandshake {
        let mut hs = self.hs;
        hs.tls = true;
        hs.neg = Negotiation::default();
        hs.phase = Phase::OptionHeader;
        hs
    }
}

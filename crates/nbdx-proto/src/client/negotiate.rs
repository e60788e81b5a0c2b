//! The client's handshake states, consumed by value.

use bytes::{Bytes, BytesMut};

use crate::codec::handshake::{encode_client_flags, Greeting, OptRequest};
use crate::codec::option_reply::{BlockSize, ExportNameReply, Info, OptReply, OptReplyHeader};
use crate::codec::reply::ReplyMode;
use crate::consts::{OptType, RepType};
use crate::error::ProtocolError;
use crate::flags::{ClientFlags, HandshakeFlags, TransmissionFlags};
use crate::limits::Limits;

/// A client that has connected and waits for the server greeting.
#[derive(Debug, Clone, Default)]
pub struct ClientHandshake {
    limits: Limits,
}

impl ClientHandshake {
    /// A handshake with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handshake with custom limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self { limits }
    }

    /// Length of the greeting to read.
    pub const GREETING_LEN: usize = Greeting::LEN;

    /// Processes the 18-byte greeting; returns the negotiating state and the
    /// client flags to send.
    pub fn receive_greeting(self, greeting: &[u8]) -> Result<(Negotiating, Bytes), ProtocolError> {
        let g = Greeting::decode(greeting)?;
        let fixed = g.flags.contains(HandshakeFlags::FIXED_NEWSTYLE);
        let no_zeroes = g.flags.contains(HandshakeFlags::NO_ZEROES);
        let mut flags = ClientFlags::empty();
        flags.set(ClientFlags::FIXED_NEWSTYLE, fixed);
        flags.set(ClientFlags::NO_ZEROES, no_zeroes);
        let mut out = BytesMut::with_capacity(4);
        encode_client_flags(flags, &mut out);
        let neg = Negotiating {
            fixed,
            no_zeroes,
            tls: false,
            structured: false,
            extended: false,
            meta: None,
            limits: self.limits,
        };
        Ok((neg, out.freeze()))
    }
}

/// Negotiating: options may be sent, one at a time.
#[derive(Debug, Clone)]
pub struct Negotiating {
    fixed: bool,
    no_zeroes: bool,
    tls: bool,
    structured: bool,
    extended: bool,
    /// Export name and `(id, name)` contexts of the last successful
    /// `NBD_OPT_SET_META_CONTEXT`.
    meta: Option<(String, Vec<(u32, String)>)>,
    limits: Limits,
}

impl Negotiating {
    /// Whether the server speaks fixed newstyle (else only
    /// `NBD_OPT_EXPORT_NAME` may be sent).
    pub fn fixed_newstyle(&self) -> bool {
        self.fixed
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether structured replies were negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Whether extended headers were negotiated.
    pub fn extended(&self) -> bool {
        self.extended
    }

    /// The reply layout transmission would use now.
    pub fn mode(&self) -> ReplyMode {
        if self.extended {
            ReplyMode::Extended
        } else if self.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        }
    }

    /// Contexts selected by the last successful `NBD_OPT_SET_META_CONTEXT`.
    pub fn meta_contexts(&self) -> &[(u32, String)] {
        self.meta.as_ref().map_or(&[], |(_, c)| c.as_slice())
    }

    /// Sends an option; returns the bytes to write and the state waiting for
    /// its replies. `NBD_OPT_EXPORT_NAME` goes through
    /// [`export_name`](Self::export_name) and `NBD_OPT_ABORT` through
    /// [`abort`](Self::abort) instead, since they are answered differently.
    pub fn send(mut self, req: OptRequest) -> (PendingOption, Bytes) {
        let mut out = BytesMut::with_capacity(16 + req.payload_len());
        req.encode(&mut out);
        if let OptRequest::SetMetaContext(_) = req {
            // "replaces all previously-set metadata contexts (including when
            // this command fails)"
            self.meta = None;
        }
        let pending = PendingOption { neg: self, req, replies: Vec::new() };
        (pending, out.freeze())
    }

    /// Ends negotiation with `NBD_OPT_EXPORT_NAME` (for servers without `NBD_OPT_GO`).
    pub fn export_name(self, name: &str) -> (PendingExportName, Bytes) {
        let mut out = BytesMut::new();
        OptRequest::ExportName(name.to_owned()).encode(&mut out);
        (PendingExportName { neg: self, name: name.to_owned() }, out.freeze())
    }

    /// Soft disconnect: the bytes of `NBD_OPT_ABORT`. The server's reply, if
    /// any, need not be awaited.
    pub fn abort(self) -> Bytes {
        let mut out = BytesMut::new();
        OptRequest::Abort.encode(&mut out);
        out.freeze()
    }

    fn connected(self, name: String, infos: &[OptReply], size: u64, flags: TransmissionFlags) -> Connected {
        let mut c = Connected {
            mode: self.mode(),
            meta_contexts: match self.meta {
                Some((export, contexts)) if export == name && self.mode() != ReplyMode::Simple => contexts,
                _ => Vec::new(),
            },
            export_name: name,
            canonical_name: None,
            description: None,
            size,
            flags,
            block_size: None,
            tls: self.tls,
        };
        for r in infos {
            match r {
                OptReply::Info(Info::Name(n)) => c.canonical_name = Some(n.clone()),
                OptReply::Info(Info::Description(d)) => c.description = Some(d.clone()),
                OptReply::Info(Info::BlockSize(b)) if b.validate().is_ok() => c.block_size = Some(*b),
                _ => {}
            }
        }
        c
    }
}

/// What the replies to one option said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionResult {
    /// The option.
    pub opt: OptType,
    /// Non-final replies (`NBD_REP_SERVER`, `NBD_REP_INFO`, `NBD_REP_META_CONTEXT`).
    pub replies: Vec<OptReply>,
    /// The final error, if the option failed.
    pub error: Option<(RepType, String)>,
}

/// Waiting for the replies to one option.
#[derive(Debug)]
pub struct PendingOption {
    neg: Negotiating,
    req: OptRequest,
    replies: Vec<OptReply>,
}

/// The state after one reply.
#[derive(Debug)]
#[must_use]
pub enum OptionProgress {
    /// More replies follow.
    More(PendingOption),
    /// The option is finished; negotiation continues.
    Done(Negotiating, OptionResult),
    /// `NBD_OPT_STARTTLS` was accepted: upgrade now.
    StartTls(TlsPending),
    /// `NBD_OPT_GO` succeeded.
    Connected(Connected),
}

impl PendingOption {
    /// The option in flight.
    pub fn opt(&self) -> OptType {
        self.req.opt()
    }

    /// Checks a reply header and returns how many payload bytes to read.
    pub fn payload_len(&self, h: &OptReplyHeader) -> Result<usize, ProtocolError> {
        if h.opt != self.opt() {
            return Err(ProtocolError::WrongOptionReply { sent: self.opt(), got: h.opt });
        }
        if h.len > self.neg.limits.max_option_reply_len {
            return Err(ProtocolError::ReplyTooLarge(h.len.into()));
        }
        Ok(h.len as usize)
    }

    /// Processes one reply (header already checked with
    /// [`payload_len`](Self::payload_len), payload read in full).
    pub fn handle_reply(mut self, h: OptReplyHeader, payload: &[u8]) -> Result<OptionProgress, ProtocolError> {
        self.payload_len(&h)?;
        let opt = self.opt();
        let reply = OptReply::decode(h.rep, payload)?;
        let expected_partial = match opt {
            OptType::LIST => RepType::SERVER,
            OptType::INFO | OptType::GO => RepType::INFO,
            OptType::LIST_META_CONTEXT | OptType::SET_META_CONTEXT => RepType::META_CONTEXT,
            _ => RepType(0),
        };
        match reply {
            OptReply::Error { rep, message } => Ok(OptionProgress::Done(
                self.neg,
                OptionResult { opt, replies: self.replies, error: Some((rep, message)) },
            )),
            OptReply::Ack => self.acked(),
            r if r.rep() == expected_partial || (matches!(r, OptReply::Unknown { .. }) && !opt.is_known()) => {
                if self.replies.len() as u32 >= self.neg.limits.max_option_replies {
                    return Err(ProtocolError::TooManyReplies);
                }
                self.replies.push(r);
                Ok(OptionProgress::More(self))
            }
            r => Err(ProtocolError::UnexpectedReply { opt, rep: r.rep() }),
        }
    }

    fn acked(mut self) -> Result<OptionProgress, ProtocolError> {
        let opt = self.opt();
        match &self.req {
            OptRequest::StartTls => return Ok(OptionProgress::StartTls(TlsPending { neg: self.neg })),
            OptRequest::StructuredReply => self.neg.structured = true,
            OptRequest::ExtendedHeaders => self.neg.extended = true,
            OptRequest::SetMetaContext(r) => {
                let contexts = self
                    .replies
                    .iter()
                    .filter_map(|r| match r {
                        OptReply::MetaContext { id, name } => Some((*id, name.clone())),
                        _ => None,
                    })
                    .collect();
                self.neg.meta = Some((r.export.clone(), contexts));
            }
            OptRequest::Info(_) | OptRequest::Go(_) => {
                let export = self.replies.iter().find_map(|r| match r {
                    OptReply::Info(Info::Export { size, flags }) => Some((*size, *flags)),
                    _ => None,
                });
                let Some((size, flags)) = export else {
                    return Err(ProtocolError::MissingExportInfo);
                };
                if let OptRequest::Go(req) = &self.req {
                    let name = req.name.clone();
                    return Ok(OptionProgress::Connected(self.neg.connected(name, &self.replies, size, flags)));
                }
            }
            _ => {}
        }
        Ok(OptionProgress::Done(self.neg, OptionResult { opt, replies: self.replies, error: None }))
    }
}

/// Waiting for the answer to `NBD_OPT_EXPORT_NAME`.
#[derive(Debug)]
pub struct PendingExportName {
    neg: Negotiating,
    name: String,
}

impl PendingExportName {
    /// How many bytes the answer has (the server closes instead if it refuses).
    pub fn reply_len(&self) -> usize {
        if self.neg.no_zeroes {
            ExportNameReply::SHORT_LEN
        } else {
            ExportNameReply::PADDED_LEN
        }
    }

    /// Processes the answer.
    pub fn handle_reply(self, buf: &[u8]) -> Result<Connected, ProtocolError> {
        if buf.len() != self.reply_len() {
            return Err(
                crate::error::DecodeError::Truncated { needed: self.reply_len().saturating_sub(buf.len()) }.into()
            );
        }
        let r = ExportNameReply::decode(&buf[..ExportNameReply::SHORT_LEN])?;
        Ok(self.neg.connected(self.name, &[], r.size, r.flags))
    }
}

/// `NBD_OPT_STARTTLS` was acknowledged; run the TLS handshake, then call
/// [`established`](Self::established).
#[derive(Debug)]
#[must_use]
pub struct TlsPending {
    neg: Negotiating,
}

impl TlsPending {
    /// TLS is up: all negotiated state is forgotten, as the server forgets it.
    pub fn established(self) -> Negotiating {
        Negotiating { tls: true, structured: false, extended: false, meta: None, ..self.neg }
    }
}

/// The outcome of a successful negotiation: what transmission needs, and
/// what can be handed to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The export name the client asked for.
    pub export_name: String,
    /// `NBD_INFO_NAME`, when the server sent it.
    pub canonical_name: Option<String>,
    /// `NBD_INFO_DESCRIPTION`, when the server sent it.
    pub description: Option<String>,
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// `NBD_INFO_BLOCK_SIZE`, when the server sent a valid one.
    pub block_size: Option<BlockSize>,
    /// Reply layout.
    pub mode: ReplyMode,
    /// Contexts usable with `NBD_CMD_BLOCK_STATUS`, as `(id, name)`.
    pub meta_contexts: Vec<(u32, String)>,
    /// Whether TLS is in use.
    pub tls: bool,
}

impl Connected {
    /// The size constraints to obey: advertised ones, or the spec's defaults
    /// for "maximum interoperability" (minimum 1, preferred 4096, maximum 2^25).
    pub fn effective_block_size(&self) -> BlockSize {
        self.block_size.unwrap_or_default()
    }

    /// Id of the `base:allocation` context, if negotiated.
    pub fn base_allocation_id(&self) -> Option<u32> {
        self.meta_contexts.iter().find(|(_, n)| n == crate::consts::BASE_ALLOCATION).map(|(id, _)| *id)
    }
}

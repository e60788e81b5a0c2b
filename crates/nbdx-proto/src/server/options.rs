//! What the server answers to each option ("Option types" in `proto.md`).
//!
//! Export details are only produced through [`Clearance`], which exists only
//! when TLS policy allows disclosure: under FORCEDTLS no plaintext code path
//! can list, describe or open an export.

use bytes::BytesMut;

use super::handshake::ServerHandshake;
use super::{ContextKind, MetaContext, Negotiated, TlsMode};
use crate::codec::handshake::{InfoRequest, MetaContextRequest, OptRequest};
use crate::codec::option_reply::{ExportNameReply, Info, OptReply};
use crate::codec::reply::ReplyMode;
use crate::consts::{InfoType, OptType, RepType};
use crate::error::ProtocolError;

/// What one option did to the negotiation.
#[derive(Debug)]
pub(super) enum Outcome {
    Success,
    Failure,
    Fatal(ProtocolError),
    Abort,
    StartTls,
    Transmission(Negotiated),
}

/// Proof that export details may be disclosed on this connection. Only
/// [`ServerHandshake::clearance`] makes one.
struct Clearance(());

/// The id nbdx gives `base:allocation` in `NBD_OPT_SET_META_CONTEXT`.
const BASE_ALLOCATION_ID: u32 = 1;

impl ServerHandshake {
    /// Under FORCEDTLS without TLS there is no clearance at all.
    fn clearance(&self) -> Option<Clearance> {
        (self.tls || self.config.tls != TlsMode::Require).then_some(Clearance(()))
    }

    /// Finds an export the client may see: unknown or TLS-only-without-TLS
    /// gives the error reply type to use.
    fn export(&self, _c: &Clearance, name: &str) -> Result<usize, (RepType, String)> {
        let idx =
            self.config.lookup(name).ok_or_else(|| (RepType::ERR_UNKNOWN, format!("export '{name}' not found")))?;
        if self.config.exports[idx].tls_only && !self.tls {
            return Err((RepType::ERR_TLS_REQD, format!("export '{name}' requires TLS")));
        }
        Ok(idx)
    }

    fn chunks(&self) -> bool {
        self.neg.structured || self.neg.extended
    }

    pub(super) fn process(&mut self, opt: OptType, payload: &[u8], rest: &BytesMut) -> Outcome {
        if self.shutting_down && opt != OptType::ABORT {
            if opt == OptType::EXPORT_NAME {
                return Outcome::Fatal(ProtocolError::ExportNameRefused(String::new(), "server is shutting down"));
            }
            return self.refuse(opt, RepType::ERR_SHUTDOWN, "server is shutting down");
        }
        let Some(clearance) = self.clearance() else {
            return match opt {
                OptType::STARTTLS | OptType::ABORT => self.dispatch(opt, payload, rest, None),
                // EXPORT_NAME cannot return an error: the session MUST end.
                OptType::EXPORT_NAME => Outcome::Fatal(ProtocolError::ExportNameRefused(String::new(), "TLS required")),
                _ => self.refuse(opt, RepType::ERR_TLS_REQD, "TLS is required"),
            };
        };
        self.dispatch(opt, payload, rest, Some(clearance))
    }

    fn dispatch(&mut self, opt: OptType, payload: &[u8], rest: &BytesMut, c: Option<Clearance>) -> Outcome {
        let req = match OptRequest::decode(opt, payload) {
            Ok(req) => req,
            Err(e) if opt == OptType::EXPORT_NAME => return Outcome::Fatal(e.into()),
            Err(e) => return self.refuse(opt, RepType::ERR_INVALID, &e.to_string()),
        };
        match (req, c) {
            (OptRequest::Abort, _) => {
                self.reply(opt, OptReply::Ack);
                Outcome::Abort
            }
            (OptRequest::StartTls, _) => self.start_tls(rest),
            (_, None) => self.refuse(opt, RepType::ERR_TLS_REQD, "TLS is required"),
            (OptRequest::ExportName(name), Some(c)) => self.export_name(&c, name),
            (OptRequest::List, Some(c)) => self.list(&c),
            (OptRequest::Info(r), Some(c)) => self.info(&c, opt, r).map_or_else(|o| o, |_| Outcome::Success),
            (OptRequest::Go(r), Some(c)) => match self.info(&c, opt, r) {
                Ok(n) => Outcome::Transmission(n),
                Err(o) => o,
            },
            (OptRequest::StructuredReply, Some(_)) if self.config.structured_replies => {
                if self.neg.extended {
                    // "unable to downgrade to structured replies ... if
                    // extended headers have already been enabled"
                    return self.refuse(opt, RepType::ERR_EXT_HEADER_REQD, "extended headers already negotiated");
                }
                self.neg.structured = true;
                self.reply(opt, OptReply::Ack);
                Outcome::Success
            }
            (OptRequest::ExtendedHeaders, Some(_)) if self.config.extended_headers => {
                self.neg.extended = true;
                self.reply(opt, OptReply::Ack);
                Outcome::Success
            }
            (OptRequest::ListMetaContext(r), Some(c)) => self.meta_context(&c, opt, r, false),
            (OptRequest::SetMetaContext(r), Some(c)) => self.meta_context(&c, opt, r, true),
            (_, Some(_)) => self.refuse(opt, RepType::ERR_UNSUP, "option not supported"),
        }
    }

    fn refuse(&mut self, opt: OptType, rep: RepType, message: &str) -> Outcome {
        self.reply_error(opt, rep, message);
        Outcome::Failure
    }

    fn start_tls(&mut self, rest: &BytesMut) -> Outcome {
        let opt = OptType::STARTTLS;
        if self.config.tls == TlsMode::Off || !self.fixed {
            return self.refuse(opt, RepType::ERR_POLICY, "TLS is not available");
        }
        if self.tls {
            return self.refuse(opt, RepType::ERR_INVALID, "TLS is already active");
        }
        if !rest.is_empty() {
            // Bytes queued behind STARTTLS would be processed as if they had
            // come over TLS: refuse the session, process nothing.
            return Outcome::Fatal(ProtocolError::DataAfterStartTls);
        }
        self.reply(opt, OptReply::Ack);
        Outcome::StartTls
    }

    fn export_name(&mut self, c: &Clearance, name: String) -> Outcome {
        if self.neg.extended {
            return Outcome::Fatal(ProtocolError::ExportNameRefused(
                name,
                "NBD_OPT_EXPORT_NAME after extended headers",
            ));
        }
        let idx = match self.export(c, &name) {
            Ok(idx) => idx,
            Err((RepType::ERR_TLS_REQD, _)) => {
                return Outcome::Fatal(ProtocolError::ExportNameRefused(name, "export requires TLS"))
            }
            Err(_) => return Outcome::Fatal(ProtocolError::ExportNameRefused(name, "no such export")),
        };
        let n = self.negotiated(c, idx, false);
        ExportNameReply { size: n.size, flags: n.flags }.encode(self.no_zeroes, &mut self.out);
        Outcome::Transmission(n)
    }

    fn list(&mut self, _c: &Clearance) -> Outcome {
        let opt = OptType::LIST;
        if !self.config.allow_list {
            return self.refuse(opt, RepType::ERR_POLICY, "listing exports is disabled");
        }
        let config = self.config.clone();
        let tls = self.tls;
        for e in config.exports.iter().filter(|e| tls || !e.tls_only) {
            self.reply(opt, OptReply::Server { name: e.name.clone(), details: e.description.clone() });
        }
        self.reply(opt, OptReply::Ack);
        Outcome::Success
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`: the same replies; GO also enters
    /// transmission.
    fn info(&mut self, c: &Clearance, opt: OptType, req: InfoRequest) -> Result<Negotiated, Outcome> {
        let idx = self.export(c, &req.name).map_err(|(rep, msg)| self.refuse(opt, rep, &msg))?;
        let block_size_requested = req.requests.contains(&InfoType::BLOCK_SIZE);
        let n = self.negotiated(c, idx, block_size_requested);
        let export = &self.config.clone().exports[idx];
        self.reply(opt, OptReply::Info(Info::Export { size: n.size, flags: n.flags }));
        if req.requests.contains(&InfoType::NAME) {
            self.reply(opt, OptReply::Info(Info::Name(export.name.clone())));
        }
        if req.requests.contains(&InfoType::DESCRIPTION) && !export.description.is_empty() {
            self.reply(opt, OptReply::Info(Info::Description(export.description.clone())));
        }
        // Sent even unrequested: clients ignore what they did not ask for,
        // and those that asked learn the constraints we enforce.
        self.reply(opt, OptReply::Info(Info::BlockSize(export.block_size)));
        self.reply(opt, OptReply::Ack);
        Ok(n)
    }

    fn negotiated(&self, _c: &Clearance, idx: usize, block_size_requested: bool) -> Negotiated {
        let e = &self.config.exports[idx];
        let mode = if self.neg.extended {
            ReplyMode::Extended
        } else if self.neg.structured {
            ReplyMode::Structured
        } else {
            ReplyMode::Simple
        };
        let meta_contexts = match &self.neg.meta {
            Some((i, contexts)) if *i == idx && self.chunks() => contexts.clone(),
            _ => Vec::new(),
        };
        Negotiated {
            export_index: idx,
            export_name: e.name.clone(),
            size: e.size,
            flags: e.transmission_flags(self.chunks()),
            mode,
            block_size: e.block_size,
            block_size_requested,
            meta_contexts,
            tls: self.tls,
            output: bytes::Bytes::new(),
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` (`set == false`) and
    /// `NBD_OPT_SET_META_CONTEXT` (`set == true`).
    fn meta_context(&mut self, c: &Clearance, opt: OptType, req: MetaContextRequest, set: bool) -> Outcome {
        if set {
            // "Issuing this command replaces all previously-set metadata
            // contexts (including when this command fails)"
            self.neg.meta = None;
        }
        if !self.chunks() {
            return self.refuse(opt, RepType::ERR_INVALID, "structured replies must be negotiated first");
        }
        let idx = match self.export(c, &req.export) {
            Ok(idx) => idx,
            Err((rep, msg)) => return self.refuse(opt, rep, &msg),
        };
        let mut found: Vec<ContextKind> = Vec::new();
        if req.queries.is_empty() && !set {
            // "If zero queries are sent, then the server MUST return all the
            // metadata contexts that are available"
            found.push(ContextKind::BaseAllocation);
        }
        for q in &req.queries {
            let Some((namespace, leaf)) = q.split_once(':') else {
                return self.refuse(opt, RepType::ERR_INVALID, "query lacks a namespace");
            };
            // Unknown namespaces and leaf names MUST be ignored; "base:" is a
            // wildcard for LIST and ignored by SET.
            let hit = namespace == "base" && (leaf == "allocation" || (leaf.is_empty() && !set));
            if hit && !found.contains(&ContextKind::BaseAllocation) {
                found.push(ContextKind::BaseAllocation);
            }
        }
        let contexts: Vec<MetaContext> =
            found.into_iter().map(|kind| MetaContext { id: if set { BASE_ALLOCATION_ID } else { 0 }, kind }).collect();
        for m in &contexts {
            self.reply(opt, OptReply::MetaContext { id: m.id, name: m.kind.name().to_owned() });
        }
        self.reply(opt, OptReply::Ack);
        if set {
            self.neg.meta = Some((idx, contexts));
        }
        Outcome::Success
    }
}

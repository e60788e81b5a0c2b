//! Handshake messages sent by the server first and by the client: the
//! greeting, client flags, and option requests ("Fixed newstyle negotiation"
//! and "Option types" in `proto.md`).

use bytes::{BufMut, Bytes};

use super::{clamp_string, Reader};
use crate::consts::{InfoType, OptType, CLISERV_MAGIC, IHAVEOPT, NBDMAGIC};
use crate::error::{DecodeError, ProtocolError};
use crate::flags::{ClientFlags, HandshakeFlags};

/// The server's first message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags offered by the server.
    pub flags: HandshakeFlags,
}

impl Greeting {
    /// Encoded length.
    pub const LEN: usize = 18;

    /// Appends the greeting.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u64(NBDMAGIC);
        buf.put_u64(IHAVEOPT);
        buf.put_u16(self.flags.bits());
    }

    /// Decodes the greeting. Oldstyle servers and non-NBD peers are errors.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(buf);
        let magic = r.u64()?;
        if magic != NBDMAGIC {
            return Err(ProtocolError::NotNbd(magic));
        }
        match r.u64()? {
            IHAVEOPT => {}
            CLISERV_MAGIC => return Err(ProtocolError::Oldstyle),
            found => return Err(ProtocolError::BadMagic { expected: IHAVEOPT, found }),
        }
        let flags = HandshakeFlags::from_bits_retain(r.u16()?);
        r.finish()?;
        Ok(Self { flags })
    }
}

/// The client's 32-bit flags, sent once after the greeting.
pub fn encode_client_flags(flags: ClientFlags, buf: &mut impl BufMut) {
    buf.put_u32(flags.bits());
}

/// Decodes the client flags, keeping unknown bits for the caller to refuse.
pub fn decode_client_flags(buf: &[u8]) -> Result<ClientFlags, DecodeError> {
    let mut r = Reader::new(buf);
    let bits = r.u32()?;
    r.finish()?;
    Ok(ClientFlags::from_bits_retain(bits))
}

/// Header of one option: `IHAVEOPT`, option type, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option.
    pub opt: OptType,
    /// Length of the payload that follows.
    pub len: u32,
}

impl OptionHeader {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Appends the header.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u64(IHAVEOPT);
        buf.put_u32(self.opt.0);
        buf.put_u32(self.len);
    }

    /// Decodes a header; a wrong magic means framing is lost.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(buf);
        let magic = r.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadMagic { expected: IHAVEOPT, found: magic });
        }
        let opt = OptType(r.u32()?);
        let len = r.u32()?;
        r.finish()?;
        Ok(Self { opt, len })
    }
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfoRequest {
    /// Export name; empty selects the default export.
    pub name: String,
    /// Information requests (`NBD_INFO_*`).
    pub requests: Vec<InfoType>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaContextRequest {
    /// Export the contexts are for.
    pub export: String,
    /// Queries, each `namespace:leaf`.
    pub queries: Vec<String>,
}

/// One option request with its decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptRequest {
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// `NBD_OPT_EXTENDED_HEADERS`.
    ExtendedHeaders,
    /// Any other option, with its raw payload.
    Other {
        /// The option type.
        opt: OptType,
        /// The raw payload.
        data: Bytes,
    },
}

impl OptRequest {
    /// The option type of this request.
    pub fn opt(&self) -> OptType {
        match self {
            Self::ExportName(_) => OptType::EXPORT_NAME,
            Self::Abort => OptType::ABORT,
            Self::List => OptType::LIST,
            Self::StartTls => OptType::STARTTLS,
            Self::Info(_) => OptType::INFO,
            Self::Go(_) => OptType::GO,
            Self::StructuredReply => OptType::STRUCTURED_REPLY,
            Self::ListMetaContext(_) => OptType::LIST_META_CONTEXT,
            Self::SetMetaContext(_) => OptType::SET_META_CONTEXT,
            Self::ExtendedHeaders => OptType::EXTENDED_HEADERS,
            Self::Other { opt, .. } => *opt,
        }
    }

    /// Length of the payload (without the 16-byte header).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::ExportName(name) => clamp_string(name).len(),
            Self::Info(r) | Self::Go(r) => 4 + clamp_string(&r.name).len() + 2 + 2 * r.requests.len(),
            Self::ListMetaContext(r) | Self::SetMetaContext(r) => {
                4 + clamp_string(&r.export).len()
                    + 4
                    + r.queries.iter().map(|q| 4 + clamp_string(q).len()).sum::<usize>()
            }
            Self::Other { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Appends header and payload.
    pub fn encode(&self, buf: &mut impl BufMut) {
        OptionHeader { opt: self.opt(), len: self.payload_len() as u32 }.encode(buf);
        match self {
            Self::ExportName(name) => buf.put_slice(clamp_string(name).as_bytes()),
            Self::Info(r) | Self::Go(r) => {
                put_string32(buf, &r.name);
                buf.put_u16(r.requests.len() as u16);
                for i in &r.requests {
                    buf.put_u16(i.0);
                }
            }
            Self::ListMetaContext(r) | Self::SetMetaContext(r) => {
                put_string32(buf, &r.export);
                buf.put_u32(r.queries.len() as u32);
                for q in &r.queries {
                    put_string32(buf, q);
                }
            }
            Self::Other { data, .. } => buf.put_slice(data),
            _ => {}
        }
    }

    /// Decodes the payload of option `opt`. An error here is answered with
    /// `NBD_REP_ERR_INVALID` (or ends the session for `NBD_OPT_EXPORT_NAME`,
    /// which cannot return errors).
    pub fn decode(opt: OptType, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let req = match opt {
            OptType::EXPORT_NAME => Self::ExportName(r.string(payload.len())?),
            // "a server SHOULD ignore any data sent by the client"
            OptType::ABORT => {
                r.rest();
                Self::Abort
            }
            OptType::LIST => Self::List,
            OptType::STARTTLS => Self::StartTls,
            OptType::STRUCTURED_REPLY => Self::StructuredReply,
            OptType::EXTENDED_HEADERS => Self::ExtendedHeaders,
            OptType::INFO | OptType::GO => {
                // "32 bits, length of name; MUST be no larger than the option
                // data length - 6"
                let name_len = r.u32()? as usize;
                if name_len > payload.len().saturating_sub(6) {
                    return Err(DecodeError::Invalid("export name length exceeds option length"));
                }
                let name = r.string(name_len)?;
                let count = r.u16()? as usize;
                if r.remaining() != 2 * count {
                    return Err(DecodeError::Invalid("information request count does not match length"));
                }
                let requests = (0..count).map(|_| r.u16().map(InfoType)).collect::<Result<_, _>>()?;
                let req = InfoRequest { name, requests };
                if opt == OptType::GO {
                    Self::Go(req)
                } else {
                    Self::Info(req)
                }
            }
            OptType::LIST_META_CONTEXT | OptType::SET_META_CONTEXT => {
                let export = r.string32()?;
                let count = r.u32()? as usize;
                // Each query needs at least its 4-byte length: bound the count
                // by what is left before allocating for it.
                if count > r.remaining() / 4 {
                    return Err(DecodeError::Invalid("query count exceeds option length"));
                }
                let mut queries = Vec::with_capacity(count);
                for _ in 0..count {
                    queries.push(r.string32()?);
                }
                let req = MetaContextRequest { export, queries };
                if opt == OptType::SET_META_CONTEXT {
                    Self::SetMetaContext(req)
                } else {
                    Self::ListMetaContext(req)
                }
            }
            _ => Self::Other { opt, data: Bytes::copy_from_slice(r.rest()) },
        };
        if matches!(req, Self::List | Self::StartTls | Self::StructuredReply | Self::ExtendedHeaders)
            && r.remaining() > 0
        {
            // "The client MUST NOT send any additional data with the option"
            return Err(DecodeError::Invalid("option does not take data"));
        }
        r.finish()?;
        Ok(req)
    }
}

/// Appends a string preceded by its 32-bit length.
pub(crate) fn put_string32(buf: &mut impl BufMut, s: &str) {
    let s = clamp_string(s);
    buf.put_u32(s.len() as u32);
    buf.put_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::assert_prefixes_fail;

    fn roundtrip(req: OptRequest) {
        let mut buf = Vec::new();
        req.encode(&mut buf);
        assert_eq!(buf.len(), OptionHeader::LEN + req.payload_len());
        let hdr = OptionHeader::decode(&buf[..16]).unwrap();
        assert_eq!(hdr.opt, req.opt());
        assert_eq!(hdr.len as usize, buf.len() - 16);
        let payload = &buf[16..];
        assert_eq!(OptRequest::decode(hdr.opt, payload).unwrap(), req);
        // Options whose payload has structure must refuse every truncation.
        if matches!(
            req,
            OptRequest::Info(_) | OptRequest::Go(_) | OptRequest::ListMetaContext(_) | OptRequest::SetMetaContext(_)
        ) {
            assert_prefixes_fail(payload, &req, |p| OptRequest::decode(hdr.opt, p));
        }
    }

    #[test]
    fn every_option_request_round_trips() {
        let info = InfoRequest { name: "disk\u{e9}".into(), requests: vec![InfoType::NAME, InfoType::BLOCK_SIZE] };
        let meta = MetaContextRequest {
            export: "e".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
        };
        for req in [
            OptRequest::ExportName("exp".into()),
            OptRequest::ExportName(String::new()),
            OptRequest::Abort,
            OptRequest::List,
            OptRequest::StartTls,
            OptRequest::Info(info.clone()),
            OptRequest::Go(info),
            OptRequest::Go(InfoRequest::default()),
            OptRequest::StructuredReply,
            OptRequest::ListMetaContext(meta.clone()),
            OptRequest::SetMetaContext(meta),
            OptRequest::SetMetaContext(MetaContextRequest::default()),
            OptRequest::ExtendedHeaders,
            OptRequest::Other { opt: OptType(99), data: Bytes::from_static(b"xyz") },
        ] {
            roundtrip(req);
        }
    }

    #[test]
    fn greeting_has_golden_bytes_and_refuses_every_prefix() {
        let g = Greeting { flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES };
        let mut buf = Vec::new();
        g.encode(&mut buf);
        assert_eq!(buf, b"NBDMAGICIHAVEOPT\x00\x03");
        assert_prefixes_fail(&buf, &g, Greeting::decode);
    }

    #[test]
    fn greeting_of_an_oldstyle_server_is_reported_as_such() {
        let mut buf = b"NBDMAGIC".to_vec();
        buf.extend_from_slice(&CLISERV_MAGIC.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(Greeting::decode(&buf), Err(ProtocolError::Oldstyle));
        assert!(matches!(Greeting::decode(b"HTTP/1.1 200 OK\r\n\r\n"), Err(ProtocolError::NotNbd(_))));
    }

    #[test]
    fn option_header_has_golden_bytes_and_checks_its_magic() {
        let h = OptionHeader { opt: OptType::GO, len: 0x0102 };
        let mut buf = Vec::new();
        h.encode(&mut buf);
        assert_eq!(buf, b"IHAVEOPT\x00\x00\x00\x07\x00\x00\x01\x02");
        assert_prefixes_fail(&buf, &h, OptionHeader::decode);
        buf[0] = b'X';
        assert!(matches!(OptionHeader::decode(&buf), Err(ProtocolError::BadMagic { .. })));
    }

    #[test]
    fn go_with_a_name_longer_than_the_option_is_invalid() {
        let payload = [0, 0, 0, 9, b'a', 0, 0];
        assert!(OptRequest::decode(OptType::GO, &payload).is_err());
    }

    #[test]
    fn go_with_trailing_bytes_after_the_requests_is_invalid() {
        let payload = [0, 0, 0, 0, 0, 1, 0, 3, 0];
        assert!(OptRequest::decode(OptType::GO, &payload).is_err());
    }

    #[test]
    fn list_with_data_is_invalid_but_abort_with_data_is_ignored() {
        assert!(OptRequest::decode(OptType::LIST, b"x").is_err());
        assert!(OptRequest::decode(OptType::STARTTLS, b"x").is_err());
        assert_eq!(OptRequest::decode(OptType::ABORT, b"x"), Ok(OptRequest::Abort));
    }

    #[test]
    fn meta_context_query_count_is_bounded_by_the_payload() {
        let mut payload = vec![0, 0, 0, 0];
        payload.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            OptRequest::decode(OptType::SET_META_CONTEXT, &payload),
            Err(DecodeError::Invalid("query count exceeds option length"))
        );
    }

    #[test]
    fn client_flags_keep_unknown_bits() {
        let f = decode_client_flags(&[0x80, 0, 0, 3]).unwrap();
        assert!(f.contains(ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES));
        assert_eq!(f.bits(), 0x8000_0003);
        assert!(decode_client_flags(&[0, 0, 3]).is_err());
    }
}

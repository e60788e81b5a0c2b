//! Server answers during negotiation: option replies ("Option reply types")
//! and the legacy `NBD_OPT_EXPORT_NAME` answer.

use bytes::{BufMut, Bytes};

use super::handshake::put_string32;
use super::{check_string, clamp_string, Reader};
use crate::consts::{InfoType, OptType, RepType, OPT_REPLY_MAGIC};
use crate::error::{DecodeError, ProtocolError};
use crate::flags::TransmissionFlags;

/// Header of an option reply: magic, option, reply type, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReplyHeader {
    /// The option this answers.
    pub opt: OptType,
    /// The reply type.
    pub rep: RepType,
    /// Length of the payload that follows.
    pub len: u32,
}

impl OptReplyHeader {
    /// Encoded length.
    pub const LEN: usize = 20;

    /// Appends the header.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u64(OPT_REPLY_MAGIC);
        buf.put_u32(self.opt.0);
        buf.put_u32(self.rep.0);
        buf.put_u32(self.len);
    }

    /// Decodes a header; a wrong magic means framing is lost.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(buf);
        let magic = r.u64()?;
        if magic != OPT_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic { expected: OPT_REPLY_MAGIC, found: magic });
        }
        let h = Self { opt: OptType(r.u32()?), rep: RepType(r.u32()?), len: r.u32()? };
        r.finish()?;
        Ok(h)
    }
}

/// The three size constraints of `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize {
    /// Minimum block size: smallest addressable length and alignment.
    pub minimum: u32,
    /// Preferred block size: smallest efficient aligned size.
    pub preferred: u32,
    /// Maximum payload size of one request.
    pub maximum: u32,
}

impl BlockSize {
    /// Checks the rules of "Size constraints": minimum a power of two no
    /// larger than 2^16; preferred a power of two at least max(minimum, 512);
    /// maximum at least preferred.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.minimum.is_power_of_two() || self.minimum > crate::limits::MAX_MINIMUM_BLOCK {
            return Err("minimum block size must be a power of 2 no larger than 65536");
        }
        if !self.preferred.is_power_of_two() || self.preferred < self.minimum.max(512) {
            return Err("preferred block size must be a power of 2 of at least max(minimum, 512)");
        }
        if self.maximum < self.preferred {
            return Err("maximum payload must be at least the preferred block size");
        }
        Ok(())
    }
}

impl Default for BlockSize {
    /// The spec's defaults: 1, 4096, 2^25.
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: crate::limits::DEFAULT_PREFERRED_BLOCK,
            maximum: crate::limits::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Payload of an `NBD_REP_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`: canonical name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
    /// An information type this implementation does not know.
    Unknown {
        /// Its type.
        kind: InfoType,
        /// Its raw payload after the type.
        data: Bytes,
    },
}

/// One option reply with its decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptReply {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: an export name and optional details.
    Server {
        /// Export name.
        name: String,
        /// Human-readable details (the description).
        details: String,
    },
    /// `NBD_REP_INFO`.
    Info(Info),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id (zero in `NBD_OPT_LIST_META_CONTEXT` replies).
        id: u32,
        /// Context name.
        name: String,
    },
    /// Any reply with bit 31 set, with its optional message.
    Error {
        /// The error type.
        rep: RepType,
        /// Message for humans (may be empty).
        message: String,
    },
    /// A non-error reply type this implementation does not know.
    Unknown {
        /// Its type.
        rep: RepType,
        /// Its raw payload.
        data: Bytes,
    },
}

impl OptReply {
    /// The reply type.
    pub fn rep(&self) -> RepType {
        match self {
            Self::Ack => RepType::ACK,
            Self::Server { .. } => RepType::SERVER,
            Self::Info(_) => RepType::INFO,
            Self::MetaContext { .. } => RepType::META_CONTEXT,
            Self::Error { rep, .. } | Self::Unknown { rep, .. } => *rep,
        }
    }

    /// Length of the payload.
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Ack => 0,
            Self::Server { name, details } => 4 + clamp_string(name).len() + clamp_string(details).len(),
            Self::Info(info) => match info {
                Info::Export { .. } => 12,
                Info::Name(s) | Info::Description(s) => 2 + clamp_string(s).len(),
                Info::BlockSize(_) => 14,
                Info::Unknown { data, .. } => 2 + data.len(),
            },
            Self::MetaContext { name, .. } => 4 + clamp_string(name).len(),
            Self::Error { message, .. } => clamp_string(message).len(),
            Self::Unknown { data, .. } => data.len(),
        }
    }

    /// Appends header and payload as a reply to `opt`.
    pub fn encode(&self, opt: OptType, buf: &mut impl BufMut) {
        OptReplyHeader { opt, rep: self.rep(), len: self.payload_len() as u32 }.encode(buf);
        match self {
            Self::Ack => {}
            Self::Server { name, details } => {
                put_string32(buf, name);
                buf.put_slice(clamp_string(details).as_bytes());
            }
            Self::Info(info) => match info {
                Info::Export { size, flags } => {
                    buf.put_u16(InfoType::EXPORT.0);
                    buf.put_u64(*size);
                    buf.put_u16(flags.bits());
                }
                Info::Name(s) | Info::Description(s) => {
                    let kind = if matches!(info, Info::Name(_)) { InfoType::NAME } else { InfoType::DESCRIPTION };
                    buf.put_u16(kind.0);
                    buf.put_slice(clamp_string(s).as_bytes());
                }
                Info::BlockSize(b) => {
                    buf.put_u16(InfoType::BLOCK_SIZE.0);
                    buf.put_u32(b.minimum);
                    buf.put_u32(b.preferred);
                    buf.put_u32(b.maximum);
                }
                Info::Unknown { kind, data } => {
                    buf.put_u16(kind.0);
                    buf.put_slice(data);
                }
            },
            Self::MetaContext { id, name } => {
                buf.put_u32(*id);
                buf.put_slice(clamp_string(name).as_bytes());
            }
            Self::Error { message, .. } => buf.put_slice(clamp_string(message).as_bytes()),
            Self::Unknown { data, .. } => buf.put_slice(data),
        }
    }

    /// Decodes the payload of a reply of type `rep`.
    pub fn decode(rep: RepType, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let reply = match rep {
            RepType::ACK => Self::Ack,
            RepType::SERVER => {
                let name_len = r.u32()? as usize;
                let name = r.string(name_len)?;
                let details = check_string(r.rest())?.to_owned();
                Self::Server { name, details }
            }
            RepType::INFO => {
                let kind = InfoType(r.u16()?);
                let info = match kind {
                    InfoType::EXPORT => {
                        Info::Export { size: r.u64()?, flags: TransmissionFlags::from_bits_retain(r.u16()?) }
                    }
                    InfoType::NAME => Info::Name(check_string(r.rest())?.to_owned()),
                    InfoType::DESCRIPTION => Info::Description(check_string(r.rest())?.to_owned()),
                    InfoType::BLOCK_SIZE => {
                        Info::BlockSize(BlockSize { minimum: r.u32()?, preferred: r.u32()?, maximum: r.u32()? })
                    }
                    kind => Info::Unknown { kind, data: Bytes::copy_from_slice(r.rest()) },
                };
                Self::Info(info)
            }
            RepType::META_CONTEXT => {
                let id = r.u32()?;
                let name = check_string(r.rest())?.to_owned();
                if !name.contains(':') {
                    return Err(DecodeError::Invalid("metadata context name lacks a namespace"));
                }
                Self::MetaContext { id, name }
            }
            rep if rep.is_error() => Self::Error {
                rep,
                // Messages are for humans only: keep what is readable.
                message: String::from_utf8_lossy(&payload[..payload.len().min(crate::limits::MAX_STRING_LEN)])
                    .replace('\0', ""),
            },
            rep => Self::Unknown { rep, data: Bytes::copy_from_slice(r.rest()) },
        };
        if !rep.is_error() {
            r.finish()?;
        }
        Ok(reply)
    }
}

/// The answer to a successful `NBD_OPT_EXPORT_NAME`: size, flags and, unless
/// `NBD_FLAG_C_NO_ZEROES` was negotiated, 124 bytes of zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
}

impl ExportNameReply {
    /// Length without the zero padding.
    pub const SHORT_LEN: usize = 10;
    /// Length with the 124 bytes of zero padding.
    pub const PADDED_LEN: usize = 134;

    /// Appends the reply, padded unless `no_zeroes`.
    pub fn encode(&self, no_zeroes: bool, buf: &mut impl BufMut) {
        buf.put_u64(self.size);
        buf.put_u16(self.flags.bits());
        if !no_zeroes {
            buf.put_bytes(0, 124);
        }
    }

    /// Decodes the first 10 bytes (the caller skips any padding).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let reply = Self { size: r.u64()?, flags: TransmissionFlags::from_bits_retain(r.u16()?) };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::assert_prefixes_fail;

    fn roundtrip(reply: OptReply) {
        let mut buf = Vec::new();
        reply.encode(OptType::GO, &mut buf);
        let h = OptReplyHeader::decode(&buf[..OptReplyHeader::LEN]).unwrap();
        assert_eq!(h.rep, reply.rep());
        assert_eq!(h.len as usize, reply.payload_len());
        assert_eq!(h.len as usize, buf.len() - OptReplyHeader::LEN);
        let payload = &buf[OptReplyHeader::LEN..];
        assert_eq!(OptReply::decode(h.rep, payload).unwrap(), reply);
    }

    #[test]
    fn every_option_reply_round_trips() {
        for reply in [
            OptReply::Ack,
            OptReply::Server { name: "a".into(), details: "the a disk".into() },
            OptReply::Server { name: String::new(), details: String::new() },
            OptReply::Info(Info::Export {
                size: 1 << 40,
                flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH,
            }),
            OptReply::Info(Info::Name("n".into())),
            OptReply::Info(Info::Description("d".into())),
            OptReply::Info(Info::BlockSize(BlockSize::default())),
            OptReply::Info(Info::Unknown { kind: InfoType(77), data: Bytes::from_static(b"??") }),
            OptReply::MetaContext { id: 3, name: "base:allocation".into() },
            OptReply::Error { rep: RepType::ERR_UNKNOWN, message: "no such export".into() },
            OptReply::Unknown { rep: RepType(42), data: Bytes::from_static(b"x") },
        ] {
            roundtrip(reply);
        }
    }

    #[test]
    fn fixed_size_replies_refuse_every_truncation() {
        for reply in [
            OptReply::Info(Info::Export { size: 5, flags: TransmissionFlags::HAS_FLAGS }),
            OptReply::Info(Info::BlockSize(BlockSize::default())),
        ] {
            let mut buf = Vec::new();
            reply.encode(OptType::GO, &mut buf);
            assert_prefixes_fail(&buf[20..], &reply, |p| OptReply::decode(reply.rep(), p));
        }
    }

    #[test]
    fn info_export_has_golden_bytes() {
        let mut buf = Vec::new();
        OptReply::Info(Info::Export {
            size: 0x1000,
            flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY,
        })
        .encode(OptType::GO, &mut buf);
        let mut golden = vec![0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 12];
        golden.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 3]);
        assert_eq!(buf, golden);
    }

    #[test]
    fn export_name_reply_is_padded_unless_no_zeroes() {
        let r = ExportNameReply { size: 1, flags: TransmissionFlags::HAS_FLAGS };
        let mut a = Vec::new();
        r.encode(false, &mut a);
        assert_eq!(a.len(), ExportNameReply::PADDED_LEN);
        let mut b = Vec::new();
        r.encode(true, &mut b);
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        assert_prefixes_fail(&b, &r, ExportNameReply::decode);
    }

    #[test]
    fn block_size_rules_follow_the_spec() {
        assert!(BlockSize::default().validate().is_ok());
        let bad = |minimum, preferred, maximum| BlockSize { minimum, preferred, maximum }.validate().is_err();
        assert!(bad(3, 4096, 1 << 20));
        assert!(bad(1 << 17, 1 << 17, 1 << 20));
        assert!(bad(512, 256, 1 << 20));
        assert!(bad(4096, 4096, 1024));
    }

    #[test]
    fn option_reply_header_checks_its_magic() {
        let mut buf = Vec::new();
        OptReply::Ack.encode(OptType::LIST, &mut buf);
        let h = OptReplyHeader::decode(&buf).unwrap();
        assert_prefixes_fail(&buf, &h, OptReplyHeader::decode);
        buf[7] ^= 1;
        assert!(matches!(OptReplyHeader::decode(&buf), Err(ProtocolError::BadMagic { .. })));
    }
}

//! Transmission replies: simple replies, structured reply chunks and extended
//! reply chunks, with the payloads of each chunk type.
//!
//! Headers and small payloads are encoded here; bulk read data is never
//! copied through this module: the server writes the chunk header from
//! [`encode_data_header`] and then the data buffer itself.

use bytes::BufMut;

use super::{clamp_string, Reader};
use crate::consts::{Errno, ReplyType, EXTENDED_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};
use crate::error::{DecodeError, ProtocolError};
use crate::flags::ReplyFlags;

/// Which reply layout the server uses, fixed by negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReplyMode {
    /// Simple replies only (neither option negotiated).
    #[default]
    Simple,
    /// `NBD_OPT_STRUCTURED_REPLY`: structured chunks (and simple replies
    /// for requests without payload).
    Structured,
    /// `NBD_OPT_EXTENDED_HEADERS`: extended chunks only.
    Extended,
}

impl ReplyMode {
    /// The request header layout that goes with this reply mode.
    pub fn header_mode(self) -> super::request::HeaderMode {
        match self {
            Self::Extended => super::request::HeaderMode::Extended,
            _ => super::request::HeaderMode::Compact,
        }
    }

    /// Whether chunks (structured or extended) may be sent.
    pub fn chunks(self) -> bool {
        self != Self::Simple
    }
}

/// A simple reply: magic, error, cookie (data follows for a good read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// Error value (zero on success). Raw: a client normalizes unknown values.
    pub error: u32,
    /// Cookie of the request.
    pub cookie: u64,
}

impl SimpleReply {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Appends the reply header.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u32(SIMPLE_REPLY_MAGIC);
        buf.put_u32(self.error);
        buf.put_u64(self.cookie);
    }
}

/// Header of a structured or extended reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Reply flags (`NBD_REPLY_FLAG_DONE`).
    pub flags: ReplyFlags,
    /// Chunk type.
    pub kind: ReplyType,
    /// Cookie of the request.
    pub cookie: u64,
    /// Offset of the request (extended chunks only; zero otherwise).
    pub offset: u64,
    /// Payload length.
    pub length: u64,
}

impl ChunkHeader {
    /// Length of a structured chunk header.
    pub const STRUCTURED_LEN: usize = 20;
    /// Length of an extended chunk header.
    pub const EXTENDED_LEN: usize = 32;

    /// Appends the header in the layout of `mode` (which must use chunks).
    pub fn encode(&self, mode: ReplyMode, buf: &mut impl BufMut) {
        if mode == ReplyMode::Extended {
            buf.put_u32(EXTENDED_REPLY_MAGIC);
            buf.put_u16(self.flags.bits());
            buf.put_u16(self.kind.0);
            buf.put_u64(self.cookie);
            buf.put_u64(self.offset);
            buf.put_u64(self.length);
        } else {
            buf.put_u32(STRUCTURED_REPLY_MAGIC);
            buf.put_u16(self.flags.bits());
            buf.put_u16(self.kind.0);
            buf.put_u64(self.cookie);
            buf.put_u32(self.length.min(u64::from(u32::MAX)) as u32);
        }
    }

    /// Whether this is the final chunk of its reply.
    pub fn done(&self) -> bool {
        self.flags.contains(ReplyFlags::DONE)
    }
}

/// Any reply header a client can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// A simple reply.
    Simple(SimpleReply),
    /// A structured or extended chunk.
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// Decodes the header at the start of `buf`. Returns `Ok(None)` when more
    /// bytes are needed, else the header and how many bytes it took. A magic
    /// the negotiated mode does not allow means framing is lost.
    pub fn decode(mode: ReplyMode, buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let need = match (mode, magic) {
            (ReplyMode::Simple | ReplyMode::Structured, SIMPLE_REPLY_MAGIC) => SimpleReply::LEN,
            (ReplyMode::Structured, STRUCTURED_REPLY_MAGIC) => ChunkHeader::STRUCTURED_LEN,
            (ReplyMode::Extended, EXTENDED_REPLY_MAGIC) => ChunkHeader::EXTENDED_LEN,
            _ => {
                let expected = match mode {
                    ReplyMode::Simple => SIMPLE_REPLY_MAGIC,
                    ReplyMode::Structured => STRUCTURED_REPLY_MAGIC,
                    ReplyMode::Extended => EXTENDED_REPLY_MAGIC,
                };
                return Err(ProtocolError::BadMagic { expected: expected.into(), found: magic.into() });
            }
        };
        if buf.len() < need {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[4..need]);
        let header = if need == SimpleReply::LEN {
            Self::Simple(SimpleReply { error: r.u32()?, cookie: r.u64()? })
        } else {
            let flags = ReplyFlags::from_bits_retain(r.u16()?);
            let kind = ReplyType(r.u16()?);
            let cookie = r.u64()?;
            let (offset, length) =
                if need == ChunkHeader::EXTENDED_LEN { (r.u64()?, r.u64()?) } else { (0, u64::from(r.u32()?)) };
            Self::Chunk(ChunkHeader { flags, kind, cookie, offset, length })
        };
        Ok(Some((header, need)))
    }
}

/// One block status descriptor. In compact chunks both fields are 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length of the extent (nonzero).
    pub length: u64,
    /// Status flags defined by the metadata context.
    pub flags: u64,
}

/// The payload of a chunk other than `NBD_REPLY_TYPE_OFFSET_DATA` (whose data
/// is read straight into the destination; see [`decode_data_offset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkPayload {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    Hole {
        /// Absolute offset of the hole.
        offset: u64,
        /// Hole size (nonzero).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` or `_EXT`.
    BlockStatus {
        /// Metadata context id.
        context_id: u32,
        /// Consecutive extents.
        extents: Vec<Extent>,
    },
    /// Any error chunk.
    Error {
        /// Error value (normalized with [`Errno::normalize`]).
        errno: Errno,
        /// Message for humans.
        message: String,
        /// Offset, for `NBD_REPLY_TYPE_ERROR_OFFSET`.
        offset: Option<u64>,
    },
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_DATA` chunk header for `len` data bytes
/// at `data_offset` (the data itself follows, written by the caller).
pub fn encode_data_header(
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    data_offset: u64,
    len: u64,
    done: bool,
    buf: &mut impl BufMut,
) {
    ChunkHeader { flags: done_flag(done), kind: ReplyType::OFFSET_DATA, cookie, offset: req_offset, length: 8 + len }
        .encode(mode, buf);
    buf.put_u64(data_offset);
}

/// Appends a chunk with a small payload (anything but data).
pub fn encode_chunk(
    mode: ReplyMode,
    cookie: u64,
    req_offset: u64,
    payload: &ChunkPayload,
    done: bool,
    buf: &mut impl BufMut,
) {
    let extended = mode == ReplyMode::Extended;
    let (kind, length) = match payload {
        ChunkPayload::None => (ReplyType::NONE, 0),
        ChunkPayload::Hole { .. } => (ReplyType::OFFSET_HOLE, 12),
        ChunkPayload::BlockStatus { extents, .. } if extended => (ReplyType::BLOCK_STATUS_EXT, 8 + 16 * extents.len()),
        ChunkPayload::BlockStatus { extents, .. } => (ReplyType::BLOCK_STATUS, 4 + 8 * extents.len()),
        ChunkPayload::Error { message, offset, .. } => {
            let kind = if offset.is_some() { ReplyType::ERROR_OFFSET } else { ReplyType::ERROR };
            (kind, 6 + clamp_string(message).len() + if offset.is_some() { 8 } else { 0 })
        }
    };
    ChunkHeader {
        flags: done_flag(done || kind == ReplyType::NONE),
        kind,
        cookie,
        offset: req_offset,
        length: length as u64,
    }
    .encode(mode, buf);
    match payload {
        ChunkPayload::None => {}
        ChunkPayload::Hole { offset, length } => {
            buf.put_u64(*offset);
            buf.put_u32(*length);
        }
        ChunkPayload::BlockStatus { context_id, extents } => {
            buf.put_u32(*context_id);
            if extended {
                buf.put_u32(extents.len() as u32);
                for e in extents {
                    buf.put_u64(e.length);
                    buf.put_u64(e.flags);
                }
            } else {
                for e in extents {
                    buf.put_u32(e.length.min(u64::from(u32::MAX)) as u32);
                    buf.put_u32(e.flags as u32);
                }
            }
        }
        ChunkPayload::Error { errno, message, offset } => {
            let message = clamp_string(message);
            buf.put_u32(errno.0);
            buf.put_u16(message.len() as u16);
            buf.put_slice(message.as_bytes());
            if let Some(off) = offset {
                buf.put_u64(*off);
            }
        }
    }
}

fn done_flag(done: bool) -> ReplyFlags {
    if done {
        ReplyFlags::DONE
    } else {
        ReplyFlags::empty()
    }
}

/// Decodes the 8-byte offset that starts an `NBD_REPLY_TYPE_OFFSET_DATA` payload.
pub fn decode_data_offset(buf: [u8; 8]) -> u64 {
    u64::from_be_bytes(buf)
}

impl ChunkPayload {
    /// Decodes the payload of a chunk of type `kind` (not `OFFSET_DATA`).
    /// `extended` tells which block status layout is allowed.
    pub fn decode(kind: ReplyType, extended: bool, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload);
        let out = match kind {
            ReplyType::NONE => Self::None,
            ReplyType::OFFSET_HOLE => {
                let offset = r.u64()?;
                let length = r.u32()?;
                if length == 0 {
                    return Err(DecodeError::Invalid("hole size MUST be nonzero"));
                }
                Self::Hole { offset, length }
            }
            ReplyType::BLOCK_STATUS if !extended => {
                let context_id = r.u32()?;
                if r.remaining() == 0 || r.remaining() % 8 != 0 {
                    return Err(DecodeError::Invalid("block status length MUST be 4 + a positive multiple of 8"));
                }
                let mut extents = Vec::with_capacity(r.remaining() / 8);
                while r.remaining() > 0 {
                    let length = u64::from(r.u32()?);
                    let flags = u64::from(r.u32()?);
                    extents.push(Extent { length, flags });
                }
                Self::BlockStatus { context_id, extents }
            }
            ReplyType::BLOCK_STATUS_EXT if extended => {
                let context_id = r.u32()?;
                let count = r.u32()? as usize;
                if count == 0 || r.remaining() != count.saturating_mul(16) {
                    return Err(DecodeError::Invalid("descriptor count does not match chunk length"));
                }
                let mut extents = Vec::with_capacity(count);
                for _ in 0..count {
                    extents.push(Extent { length: r.u64()?, flags: r.u64()? });
                }
                Self::BlockStatus { context_id, extents }
            }
            kind if kind.is_error() => {
                let errno = Errno(r.u32()?);
                if errno.0 == 0 {
                    return Err(DecodeError::Invalid("error chunk with error value 0"));
                }
                let msg_len = r.u16()? as usize;
                let message = String::from_utf8_lossy(r.take(msg_len)?).into_owned();
                let offset = match kind {
                    ReplyType::ERROR_OFFSET => Some(r.u64()?),
                    ReplyType::ERROR => None,
                    // Unknown error types: the rest is structure we do not know.
                    _ => {
                        r.rest();
                        None
                    }
                };
                Self::Error { errno: errno.normalize(), message, offset }
            }
            _ => return Err(DecodeError::Invalid("chunk type not valid here")),
        };
        r.finish()?;
        if let Self::BlockStatus { extents, .. } = &out {
            if extents.iter().any(|e| e.length == 0) {
                return Err(DecodeError::Invalid("extent length MUST be nonzero"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing::assert_prefixes_fail;

    fn chunk_roundtrip(mode: ReplyMode, payload: ChunkPayload) {
        let mut buf = Vec::new();
        encode_chunk(mode, 7, 4096, &payload, true, &mut buf);
        let (h, n) = ReplyHeader::decode(mode, &buf).unwrap().unwrap();
        let ReplyHeader::Chunk(h) = h else { panic!("not a chunk") };
        assert!(h.done());
        assert_eq!(h.cookie, 7);
        assert_eq!(h.length as usize, buf.len() - n);
        if mode == ReplyMode::Extended {
            assert_eq!(h.offset, 4096);
        }
        let body = &buf[n..];
        let extended = mode == ReplyMode::Extended;
        assert_eq!(ChunkPayload::decode(h.kind, extended, body).unwrap(), payload);
        // A compact block status payload is framed only by the header length
        // (a shorter list is a valid message), so only the others must refuse
        // every truncation of their payload.
        let framed_by_header = matches!(payload, ChunkPayload::BlockStatus { .. }) && !extended;
        if payload != ChunkPayload::None && !framed_by_header {
            assert_prefixes_fail(body, &payload, |p| ChunkPayload::decode(h.kind, extended, p));
        }
        for k in 0..n {
            assert_eq!(ReplyHeader::decode(mode, &buf[..k]).unwrap(), None, "header prefix {k}");
        }
    }

    #[test]
    fn every_chunk_round_trips_in_both_chunk_modes() {
        for mode in [ReplyMode::Structured, ReplyMode::Extended] {
            for p in [
                ChunkPayload::None,
                ChunkPayload::Hole { offset: 512, length: 4096 },
                ChunkPayload::BlockStatus {
                    context_id: 1,
                    extents: vec![Extent { length: 4096, flags: 3 }, Extent { length: 512, flags: 0 }],
                },
                ChunkPayload::Error { errno: Errno::EIO, message: "disk on fire".into(), offset: None },
                ChunkPayload::Error { errno: Errno::ENOSPC, message: String::new(), offset: Some(8192) },
            ] {
                chunk_roundtrip(mode, p);
            }
        }
    }

    #[test]
    fn simple_reply_has_golden_bytes_and_decodes() {
        let mut buf = Vec::new();
        SimpleReply { error: 22, cookie: 9 }.encode(&mut buf);
        assert_eq!(buf, [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]);
        let (h, n) = ReplyHeader::decode(ReplyMode::Simple, &buf).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(h, ReplyHeader::Simple(SimpleReply { error: 22, cookie: 9 }));
        assert!(ReplyHeader::decode(ReplyMode::Extended, &buf).is_err());
    }

    #[test]
    fn data_chunk_header_has_golden_bytes() {
        let mut buf = Vec::new();
        encode_data_header(ReplyMode::Structured, 1, 0, 0x200, 3, true, &mut buf);
        assert_eq!(
            buf,
            [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 2, 0]
        );
    }

    #[test]
    fn structured_chunks_are_refused_in_simple_mode_and_vice_versa() {
        let mut buf = Vec::new();
        encode_chunk(ReplyMode::Structured, 1, 0, &ChunkPayload::None, true, &mut buf);
        assert!(ReplyHeader::decode(ReplyMode::Simple, &buf).is_err());
        assert!(ReplyHeader::decode(ReplyMode::Extended, &buf).is_err());
    }

    #[test]
    fn block_status_with_zero_length_extent_or_bad_count_is_invalid() {
        let mut p = vec![0, 0, 0, 1];
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(ChunkPayload::decode(ReplyType::BLOCK_STATUS, false, &p).is_err());
        let mut e = vec![0, 0, 0, 1, 0, 0, 0, 2];
        e.extend_from_slice(&[0; 16]);
        assert!(ChunkPayload::decode(ReplyType::BLOCK_STATUS_EXT, true, &e).is_err());
        assert!(ChunkPayload::decode(ReplyType::BLOCK_STATUS_EXT, false, &e).is_err());
    }

    #[test]
    fn error_message_longer_than_the_chunk_is_invalid() {
        let p = [0, 0, 0, 5, 0, 9, b'a'];
        assert!(ChunkPayload::decode(ReplyType::ERROR, false, &p).is_err());
    }

    #[test]
    fn unknown_error_values_are_normalized_to_einval() {
        let p = [0, 0, 0, 99, 0, 0];
        let c = ChunkPayload::decode(ReplyType::ERROR, false, &p).unwrap();
        assert!(matches!(c, ChunkPayload::Error { errno: Errno::EINVAL, .. }));
    }

    #[test]
    fn unknown_error_chunk_types_decode_as_errors() {
        let p = [0, 0, 0, 5, 0, 1, b'x', 1, 2, 3];
        let c = ChunkPayload::decode(ReplyType(0x8000 + 77), false, &p).unwrap();
        assert!(matches!(c, ChunkPayload::Error { errno: Errno::EIO, .. }));
    }
}
